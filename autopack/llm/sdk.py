"""Shared shell of the SDK adapters: retries, error translation, key scrubbing, model output limits.

Each adapter disables its SDK's own retries (``max_retries=0``) so retrying happens once, here, with a
bounded, injectable backoff (tests pass a sleep that records instead of waiting).
"""

from __future__ import annotations

import dataclasses
import numbers
import re
import time
from collections.abc import Callable

from autopack.llm.base import (
    LLMRequest,
    LLMResponse,
    ProviderError,
    ProviderResponseError,
    ProviderTransientError,
    RetryPolicy,
    error_for_status,
    parse_retry_after,
    with_retries,
)

#: Largest output ceiling by model-name prefix (longest prefix wins); other models get DEFAULT_MAX_OUTPUT.
MODEL_MAX_OUTPUT: dict[str, int] = {
    "claude-3-haiku": 4096,
    "claude-3-5-haiku": 8192,
    "claude-3-5-sonnet": 8192,
    "claude-3-7-sonnet": 64000,
    "claude-sonnet-4": 64000,
    "claude-opus-4": 32000,
    "claude-haiku-4": 64000,
    "gpt-4o": 16384,
    "gpt-4.1": 32768,
    "gpt-5": 128000,
    "o3": 100000,
    "o4-mini": 100000,
    "gemini-2.0": 8192,
    "gemini-2.5": 65536,
}
DEFAULT_MAX_OUTPUT = 64000


def model_max_output(model: str) -> int:
    matches = [prefix for prefix in MODEL_MAX_OUTPUT if model.lower().startswith(prefix)]
    return MODEL_MAX_OUTPUT[max(matches, key=len)] if matches else DEFAULT_MAX_OUTPUT


_NETWORK_WORDS = ("timeout", "connect", "network", "protocol", "remote", "readerror", "writeerror", "pool")


def is_network_error(exc: BaseException) -> bool:
    """Timeouts and dropped connections from any HTTP stack (httpx, httpx2, requests, sockets)."""
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    name = type(exc).__name__.lower()
    module = type(exc).__module__.split(".")[0]
    return module in {"httpx", "httpx2", "httpcore", "requests", "urllib3", "aiohttp"} and any(
        word in name for word in _NETWORK_WORDS
    )


class SDKProvider:
    """Base of the Anthropic/OpenAI/Gemini adapters: ``complete`` = retries around ``_call``."""

    name = "sdk"
    key_env = ""
    default_model = ""

    def __init__(
        self,
        *,
        api_key: str,
        model: str | None = None,
        base_url: str | None = None,
        timeout: float = 600.0,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.model = model or self.default_model
        self.base_url = base_url
        self.timeout = timeout
        self.policy = policy or RetryPolicy()
        self.max_output_tokens = model_max_output(self.model)
        self._api_key = api_key
        self._sleep = sleep

    # -- to implement ------------------------------------------------------------------------------
    def _call(self, request: LLMRequest) -> LLMResponse:
        raise NotImplementedError

    def _status_of(self, exc: BaseException) -> tuple[int, str, str | None] | None:
        """(HTTP status, message, Retry-After) if ``exc`` is the SDK's HTTP status error, else None."""
        raise NotImplementedError

    def _is_network(self, exc: BaseException) -> bool:
        """The SDK's own connection/timeout error types (defaults to none)."""
        return False

    # -- shared ------------------------------------------------------------------------------------
    def scrub(self, text: str) -> str:
        """Remove this adapter's key from any text (it may not be in the settings' secret list)."""
        if self._api_key and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "***")
        return text

    def translate(self, exc: BaseException) -> ProviderError:
        status = self._status_of(exc)
        if status is not None:
            code, message, retry_after = status
            return error_for_status(self.name, code, self.scrub(message), retry_after=parse_retry_after(retry_after),
                                    key_env=self.key_env)
        if self._is_network(exc) or is_network_error(exc):
            where = f" at {self.base_url}" if self.base_url else ""
            return ProviderTransientError(
                f"{self.name}{where}: {type(exc).__name__}: {self.scrub(str(exc))[:200]}", provider=self.name
            )
        return ProviderError(f"{self.name}: {type(exc).__name__}: {self.scrub(str(exc))[:300]}", provider=self.name)

    def complete(self, request: LLMRequest) -> LLMResponse:
        start = time.monotonic()

        def attempt() -> LLMResponse:
            try:
                return self._call(request)
            except ProviderResponseError as exc:
                if exc.provider:
                    raise
                raise ProviderResponseError(f"{self.name} {exc.message}", provider=self.name,
                                            problems=exc.problems) from exc
            except ProviderError:
                raise
            except Exception as exc:  # noqa: BLE001 - every SDK error is translated to one of ours
                raise self.translate(exc) from exc

        response, retries = with_retries(attempt, policy=self.policy, sleep=self._sleep, provider=self.name)
        return dataclasses.replace(response, latency_seconds=time.monotonic() - start, retries=retries)


_ERROR_CODE_PREFIX = re.compile(r"^Error code: \d+ - ")


def sdk_error_message(exc: BaseException) -> str:
    """The provider's own error message from an SDK status error (body ``error.message`` when present)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            code = err.get("code") or err.get("type")
            return f"{err['message']}" + (f" [{code}]" if code and str(code) not in str(err["message"]) else "")
    return _ERROR_CODE_PREFIX.sub("", str(getattr(exc, "message", None) or exc))


def optional_int(value: object, field: str = "token count") -> int | None:
    """A reported usage number as an int; None when the provider did not report it.

    Integral numbers (and digit strings) are converted. Anything else a server may send (1.5, NaN,
    Infinity, "many", true) raises ``ProviderResponseError`` rather than being rounded or silently
    dropped; whether it fits its telemetry column is telemetry's check (``autopack.telemetry.usage``).
    """
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,40}\s*", value):
        return int(value)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise ProviderResponseError(f"reported {field}={shown}, which is not a token count", problems={field: shown})


def usage_int(usage: object, name: str) -> int | None:
    """``usage.<name>`` as a token count (see ``optional_int``), named after the provider's own field."""
    return optional_int(getattr(usage, name, None), name)
