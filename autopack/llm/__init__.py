"""LLM providers behind one interface (``LLMProvider.complete(LLMRequest) -> LLMResponse``).

``get_provider(settings)`` picks the adapter named by ``AUTOPACK_LLM_PROVIDER``: ``simulated`` (default,
offline), ``anthropic``, ``openai`` (any OpenAI-compatible server via ``AUTOPACK_LLM_BASE_URL``) or
``gemini``. SDKs are imported only when their provider is chosen.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from autopack.config import Settings, get_settings
from autopack.errors import ConfigError
from autopack.llm.base import (
    LLMBoundaryError,
    LLMProvider,
    LLMRequest,
    LLMResponse,
    ProviderAuthError,
    ProviderError,
    ProviderRequestError,
    ProviderTransientError,
    RetryPolicy,
    TaskHints,
    is_truncated,
    normalise_finish_reason,
)

__all__ = [
    "LLMBoundaryError",
    "LLMProvider",
    "LLMRequest",
    "LLMResponse",
    "ProviderAuthError",
    "ProviderError",
    "ProviderRequestError",
    "ProviderTransientError",
    "RetryPolicy",
    "TaskHints",
    "get_provider",
    "is_truncated",
    "normalise_finish_reason",
]


def get_provider(
    settings: Settings | None = None, *, sleep: Callable[[float], None] = time.sleep
) -> LLMProvider:
    """The provider the settings name, configured from them (keys stay SecretStr until the SDK call)."""
    s = settings or get_settings()
    name = s.llm_provider
    if name == "simulated":
        from autopack.llm.simulated import SimulatedProvider

        return SimulatedProvider(seed=s.simulated_seed, model=s.llm_model, latency_seconds=s.simulated_latency_seconds,
                                 sleep=sleep)
    policy = RetryPolicy(max_retries=max(0, s.llm_max_retries))
    if name == "anthropic":
        from autopack.llm.anthropic_provider import AnthropicProvider

        return AnthropicProvider(api_key=_key(s.anthropic_api_key, "ANTHROPIC_API_KEY", s.llm_base_url),
                                 model=s.llm_model, base_url=s.llm_base_url, timeout=s.llm_timeout_seconds,
                                 policy=policy, sleep=sleep)
    if name == "openai":
        from autopack.llm.openai_provider import OpenAIProvider

        return OpenAIProvider(api_key=_key(s.openai_api_key, "OPENAI_API_KEY", s.llm_base_url),
                              model=s.llm_model, base_url=s.llm_base_url, timeout=s.llm_timeout_seconds,
                              policy=policy, sleep=sleep)
    if name == "gemini":
        from autopack.llm.gemini_provider import GeminiProvider

        return GeminiProvider(api_key=_key(s.gemini_api_key, "GEMINI_API_KEY", s.llm_base_url),
                              model=s.llm_model, base_url=s.llm_base_url, timeout=s.llm_timeout_seconds,
                              policy=policy, sleep=sleep)
    raise ConfigError(f"unknown AUTOPACK_LLM_PROVIDER '{name}'", hint="use simulated, anthropic, openai or gemini")


def _key(secret: object, env: str, base_url: str | None) -> str:
    """The key's value; a local server (``AUTOPACK_LLM_BASE_URL``) may run without one."""
    value = secret.get_secret_value() if secret is not None else ""  # type: ignore[attr-defined]
    if value:
        return str(value)
    if base_url:
        return "no-key"
    raise ConfigError(f"{env} is not set", hint=f"set {env}, or AUTOPACK_LLM_PROVIDER=simulated to run offline")
