"""Provider-independent pieces: truncation, finish reasons, error classes, backoff, builder output format."""

from __future__ import annotations

import pytest

from autopack.llm.base import (
    LLMBoundaryError,
    ProviderAuthError,
    ProviderRequestError,
    ProviderTransientError,
    RetryPolicy,
    error_for_status,
    is_truncated,
    normalise_finish_reason,
    with_retries,
)
from autopack.llm.builder_format import normalise_path, parse_files, render_files
from autopack.llm.sdk import model_max_output


@pytest.mark.parametrize("stop", ["max_tokens", "model_context_window_exceeded", "length", "MAX_TOKENS", "incomplete"])
def test_provider_truncation_reasons(stop: str) -> None:
    assert is_truncated(stop, 10, 1000)


@pytest.mark.parametrize(("stop", "output", "cap", "expected"), [
    ("end_turn", 999, 1000, False),
    ("end_turn", 1000, 1000, True),
    ("stop", 1200, 1000, True),
    (None, None, 1000, False),
    ("STOP", 5, None, False),
])
def test_output_reaching_the_cap_is_truncation(stop: str | None, output: int | None, cap: int | None, expected: bool) -> None:
    assert is_truncated(stop, output, cap) is expected


@pytest.mark.parametrize(("raw", "finish"), [
    ("end_turn", "stop"), ("stop", "stop"), ("STOP", "stop"), ("stop_sequence", "stop"),
    ("max_tokens", "length"), ("length", "length"), ("MAX_TOKENS", "length"), ("incomplete", "length"),
    ("model_context_window_exceeded", "context_window"), ("SAFETY", "content_filter"), ("refusal", "content_filter"),
    ("tool_use", "tool_use"), ("tool_calls", "tool_use"), ("weird", "other"), (None, "other"),
])
def test_finish_reasons_are_normalised(raw: str | None, finish: str) -> None:
    assert normalise_finish_reason(raw) == finish


@pytest.mark.parametrize(("status", "detail", "error"), [
    (429, "slow down", ProviderTransientError),
    (500, "oops", ProviderTransientError),
    (503, "overloaded", ProviderTransientError),
    (529, "overloaded", ProviderTransientError),
    (408, "timeout", ProviderTransientError),
    (401, "bad key", ProviderAuthError),
    (403, "forbidden", ProviderAuthError),
    (400, "bad request", ProviderRequestError),
    (422, "unprocessable", ProviderRequestError),
    (404, "no such model", ProviderRequestError),
    (400, "This model's maximum context length is 128000 tokens", LLMBoundaryError),
    (400, "prompt is too long: 210000 tokens > 200000 maximum", LLMBoundaryError),
])
def test_status_classification(status: int, detail: str, error: type) -> None:
    exc = error_for_status("p", status, detail)
    assert type(exc) is error
    assert exc.retryable is (error is ProviderTransientError)


def test_error_messages_are_one_redacted_line() -> None:
    exc = error_for_status("openai", 401, "Incorrect API key provided:\n sk-abcdefghijklmnop1234")
    assert "\n" not in exc.one_line() and "sk-abcdefghijklmnop1234" not in exc.one_line()


def test_backoff_is_bounded() -> None:
    policy = RetryPolicy(max_retries=10, base_delay=0.5, max_delay=4)
    assert [policy.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.delay(0, retry_after=3) == 3 and policy.delay(0, retry_after=100) == 4


def test_with_retries_stops_on_non_transient_errors() -> None:
    calls: list[int] = []

    def call() -> int:
        calls.append(1)
        raise ProviderAuthError("no", provider="p")

    with pytest.raises(ProviderAuthError):
        with_retries(call, policy=RetryPolicy(max_retries=5), sleep=lambda _s: None)
    assert len(calls) == 1


def test_with_retries_returns_retry_count() -> None:
    outcomes = [ProviderTransientError("busy"), ProviderTransientError("busy"), 42]
    sleeps: list[float] = []

    def call() -> int:
        item = outcomes.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    assert with_retries(call, policy=RetryPolicy(max_retries=3), sleep=sleeps.append) == (42, 2)
    assert sleeps == [0.5, 1.0]


@pytest.mark.parametrize(("model", "limit"), [("claude-3-5-haiku-latest", 8192), ("gpt-4o-mini", 16384),
                                              ("gpt-4.1-mini", 32768), ("gemini-2.5-flash", 65536),
                                              ("unknown-model", 64000)])
def test_model_output_limits(model: str, limit: int) -> None:
    assert model_max_output(model) == limit


def test_builder_format_round_trip() -> None:
    files = [("pkg/a.py", "x = 1\n"), ("docs/README.md", "# Title\n\ntext\n"), ("empty.txt", "")]
    parsed = parse_files("preamble the model wrote\n" + render_files(files) + "trailing words\n")
    assert parsed.files == {"pkg/a.py": "x = 1\n", "docs/README.md": "# Title\n\ntext\n", "empty.txt": ""}
    assert parsed.unterminated is None


def test_builder_format_strips_one_fence_and_normalises_paths() -> None:
    text = "=== FILE: ./pkg\\a.py ===\n```python\nx = 1\n```\n=== END FILE ===\n"
    assert parse_files(text).files == {"pkg/a.py": "x = 1\n"}
    assert normalise_path("`./a/b.py`") == "a/b.py"


def test_unclosed_block_is_not_a_file() -> None:
    parsed = parse_files("=== FILE: a.py ===\nx = 1\n=== END FILE ===\n=== FILE: b.py ===\ny =")
    assert set(parsed.files) == {"a.py"} and parsed.unterminated == "b.py"


def test_duplicate_blocks_keep_the_last() -> None:
    parsed = parse_files(render_files([("a.py", "x = 1\n"), ("a.py", "x = 2\n")]))
    assert parsed.files == {"a.py": "x = 2\n"} and parsed.duplicates == ["a.py"]
