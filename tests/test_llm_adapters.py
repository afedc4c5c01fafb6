"""Each official SDK over real HTTP against a local server shaped like the provider's documented API."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from llm_fake_server import INPUT_TOKENS, OUTPUT_TOKENS, TEXT, FakeLLMServer

from autopack.config import get_settings
from autopack.errors import ConfigError
from autopack.llm import (
    LLMBoundaryError,
    ProviderAuthError,
    ProviderRequestError,
    ProviderTransientError,
    RetryPolicy,
    get_provider,
)
from autopack.llm.anthropic_provider import AnthropicProvider
from autopack.llm.base import LLMRequest
from autopack.llm.gemini_provider import GeminiProvider
from autopack.llm.openai_provider import OpenAIProvider
from autopack.llm.sdk import SDKProvider

KEY = "sk-test-0123456789abcdef"

PROVIDERS = {
    "anthropic": (AnthropicProvider, "", "max_tokens"),
    "openai": (OpenAIProvider, "/v1", "max_completion_tokens"),
    "gemini": (GeminiProvider, "", "maxOutputTokens"),
}
TRUNCATION_REASON = {"anthropic": "max_tokens", "openai": "length", "gemini": "MAX_TOKENS"}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    srv = FakeLLMServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def fake(server: FakeLLMServer) -> FakeLLMServer:
    server.modes.clear()
    server.requests.clear()
    server.echo_key_in_errors = None
    return server


def make(name: str, server: FakeLLMServer, sleeps: list[float], *, retries: int = 3, base_url: str | None = None) -> SDKProvider:
    cls, suffix, _ = PROVIDERS[name]
    return cls(api_key=KEY, base_url=base_url or server.url + suffix, timeout=10,
               policy=RetryPolicy(max_retries=retries, base_delay=0.5, max_delay=4), sleep=sleeps.append)


REQUEST = LLMRequest(system="You are the builder.", prompt="Write pkg/a.py", max_tokens=300)
names = pytest.mark.parametrize("name", list(PROVIDERS))


@names
def test_normal_response(name: str, fake: FakeLLMServer) -> None:
    response = make(name, fake, []).complete(REQUEST)
    assert response.text == TEXT
    assert response.provider == name
    assert response.output_tokens == OUTPUT_TOKENS
    assert response.input_tokens is not None and response.input_tokens >= INPUT_TOKENS
    assert response.finish_reason == "stop" and not response.truncated
    assert response.retries == 0


@names
def test_ceiling_and_key_are_sent(name: str, fake: FakeLLMServer) -> None:
    make(name, fake, []).complete(REQUEST)
    sent = fake.requests[-1]
    field = PROVIDERS[name][2]
    body = sent["json"].get("generationConfig", sent["json"])
    assert body[field] == 300
    assert any(KEY in value for value in sent["headers"].values())


@names
def test_truncated_response(name: str, fake: FakeLLMServer) -> None:
    fake.modes.append("truncated")
    response = make(name, fake, []).complete(REQUEST)
    assert response.truncated
    assert response.stop_reason == TRUNCATION_REASON[name]
    assert response.finish_reason == "length"
    assert response.output_tokens == 300


@names
def test_rate_limit_then_success_retries_with_backoff(name: str, fake: FakeLLMServer) -> None:
    fake.modes += ["429", "ok"]
    sleeps: list[float] = []
    response = make(name, fake, sleeps).complete(REQUEST)
    assert response.text == TEXT and response.retries == 1
    assert sleeps == [0.5]
    assert len(fake.requests) == 2


@names
def test_server_errors_retry_a_bounded_number_of_times(name: str, fake: FakeLLMServer) -> None:
    fake.modes += ["500"] * 5
    sleeps: list[float] = []
    with pytest.raises(ProviderTransientError) as info:
        make(name, fake, sleeps, retries=2).complete(REQUEST)
    assert sleeps == [0.5, 1.0]
    assert len(fake.requests) == 3
    assert "gave up after 3 attempts" in info.value.one_line()


@names
@pytest.mark.parametrize("status", ["401", "403"])
def test_auth_errors_do_not_retry_and_never_show_the_key(name: str, status: str, fake: FakeLLMServer) -> None:
    fake.modes.append(status)
    fake.echo_key_in_errors = KEY
    sleeps: list[float] = []
    with pytest.raises(ProviderAuthError) as info:
        make(name, fake, sleeps).complete(REQUEST)
    line = info.value.one_line()
    assert KEY not in line and "\n" not in line
    assert f"HTTP {status}" in line and PROVIDERS[name][0].key_env in line
    assert sleeps == [] and len(fake.requests) == 1
    assert info.value.exit_code == 1


@names
@pytest.mark.parametrize("status", ["400", "422"])
def test_validation_errors_do_not_retry(name: str, status: str, fake: FakeLLMServer) -> None:
    fake.modes.append(status)
    sleeps: list[float] = []
    with pytest.raises(ProviderRequestError) as info:
        make(name, fake, sleeps).complete(REQUEST)
    assert sleeps == [] and len(fake.requests) == 1
    assert "\n" not in info.value.one_line()


@names
def test_context_window_errors_are_llm_boundary(name: str, fake: FakeLLMServer) -> None:
    fake.modes.append("boundary")
    with pytest.raises(LLMBoundaryError):
        make(name, fake, []).complete(REQUEST)
    assert len(fake.requests) == 1


@names
def test_connection_errors_are_transient(name: str, fake: FakeLLMServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    suffix = PROVIDERS[name][1]
    sleeps: list[float] = []
    with pytest.raises(ProviderTransientError):
        make(name, fake, sleeps, retries=1, base_url=f"http://127.0.0.1:{port}{suffix}").complete(REQUEST)
    assert sleeps == [0.5]


def test_openai_total_only_usage_is_not_split(fake: FakeLLMServer) -> None:
    fake.modes.append("total_only")
    response = make("openai", fake, []).complete(REQUEST)
    assert (response.input_tokens, response.output_tokens) == (None, None)
    assert response.total_tokens == INPUT_TOKENS + OUTPUT_TOKENS


def test_openai_reports_reasoning_and_cached_tokens(fake: FakeLLMServer) -> None:
    response = make("openai", fake, []).complete(REQUEST)
    assert (response.reasoning_tokens, response.cached_tokens) == (2, 3)


def test_anthropic_input_counts_the_whole_prompt(fake: FakeLLMServer) -> None:
    response = make("anthropic", fake, []).complete(REQUEST)
    assert response.input_tokens == INPUT_TOKENS + 4 and response.cached_tokens == 4


@pytest.mark.parametrize(("provider", "env", "cls"), [("anthropic", "ANTHROPIC_API_KEY", AnthropicProvider),
                                                      ("openai", "OPENAI_API_KEY", OpenAIProvider),
                                                      ("gemini", "GEMINI_API_KEY", GeminiProvider)])
def test_get_provider_picks_by_setting(provider: str, env: str, cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_LLM_PROVIDER", provider)
    monkeypatch.setenv(env, KEY)
    monkeypatch.setenv("AUTOPACK_LLM_MODEL", "custom-model")
    chosen = get_provider(get_settings())
    assert isinstance(chosen, cls) and chosen.name == provider and chosen.model == "custom-model"


def test_missing_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_LLM_PROVIDER", "anthropic")
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY is not set"):
        get_provider(get_settings())


def test_local_server_needs_no_key(monkeypatch: pytest.MonkeyPatch, fake: FakeLLMServer) -> None:
    monkeypatch.setenv("AUTOPACK_LLM_PROVIDER", "openai")
    monkeypatch.setenv("AUTOPACK_LLM_BASE_URL", fake.url + "/v1")
    assert get_provider(get_settings()).complete(REQUEST).text == TEXT
