"""The one provider interface, its request/response records, error types and the retry loop.

Every adapter (Anthropic, OpenAI, Gemini, simulated) returns the same ``LLMResponse``: the provider's own
token counts as reported (never guessed), its raw stop reason, a normalised finish reason, and
``truncated``. Truncation is decided here, once, for all providers (``is_truncated``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

from autopack import errors
from autopack.logging import get_logger, redact

log = get_logger(__name__)

#: Raw stop reasons that mean "the output was cut by the ceiling" (Anthropic, OpenAI Chat Completions,
#: Gemini, OpenAI Responses ``status: incomplete``): the one set, for live responses here and for stored
#: telemetry (``autopack.truncation``, calibration samples, the import), compared as given and lower-cased.
TRUNCATION_REASONS: frozenset[str] = frozenset(
    {"max_tokens", "model_context_window_exceeded", "length", "MAX_TOKENS", "incomplete", "max_output_tokens"}
)

#: Normalised finish reasons.
FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_CONTEXT_WINDOW = "context_window"
FINISH_CONTENT_FILTER = "content_filter"
FINISH_TOOL_USE = "tool_use"
FINISH_OTHER = "other"

_FINISH_MAP: dict[str, str] = {
    "end_turn": FINISH_STOP,
    "stop_sequence": FINISH_STOP,
    "stop": FINISH_STOP,
    "STOP": FINISH_STOP,
    "completed": FINISH_STOP,
    "pause_turn": FINISH_OTHER,
    "max_tokens": FINISH_LENGTH,
    "length": FINISH_LENGTH,
    "MAX_TOKENS": FINISH_LENGTH,
    "incomplete": FINISH_LENGTH,
    "max_output_tokens": FINISH_LENGTH,
    "model_context_window_exceeded": FINISH_CONTEXT_WINDOW,
    "refusal": FINISH_CONTENT_FILTER,
    "content_filter": FINISH_CONTENT_FILTER,
    "SAFETY": FINISH_CONTENT_FILTER,
    "RECITATION": FINISH_CONTENT_FILTER,
    "BLOCKLIST": FINISH_CONTENT_FILTER,
    "PROHIBITED_CONTENT": FINISH_CONTENT_FILTER,
    "SPII": FINISH_CONTENT_FILTER,
    "tool_use": FINISH_TOOL_USE,
    "tool_calls": FINISH_TOOL_USE,
    "function_call": FINISH_TOOL_USE,
}


def normalise_finish_reason(stop_reason: str | None) -> str:
    """Map any provider's raw stop reason to one of stop/length/context_window/content_filter/tool_use/other."""
    if not stop_reason:
        return FINISH_OTHER
    return _FINISH_MAP.get(stop_reason, _FINISH_MAP.get(stop_reason.lower(), FINISH_OTHER))


def is_truncated(stop_reason: str | None, output_tokens: int | None, max_tokens: int | None) -> bool:
    """The provider says the output was cut, or the output reached the ceiling we sent."""
    if stop_reason and (stop_reason in TRUNCATION_REASONS or stop_reason.lower() in TRUNCATION_REASONS):
        return True
    return output_tokens is not None and max_tokens is not None and max_tokens > 0 and output_tokens >= max_tokens


@dataclass(frozen=True)
class TaskHints:
    """What the phase is about. Real providers ignore it; the simulated provider draws its length from it."""

    run_id: str | None = None
    phase_id: str | None = None
    attempt_index: int = 0
    call_index: int = 0
    category: str | None = None
    complexity: str | None = None
    deliverables: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class LLMRequest:
    system: str
    prompt: str
    max_tokens: int
    model: str | None = None
    temperature: float = 0.2
    hints: TaskHints = field(default_factory=TaskHints)


@dataclass(frozen=True)
class LLMResponse:
    """One provider call's result, with usage exactly as the provider reported it (None = not reported)."""

    text: str
    provider: str
    model: str
    max_tokens: int
    input_tokens: int | None
    output_tokens: int | None
    stop_reason: str | None
    finish_reason: str
    truncated: bool
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    total_tokens: int | None = None
    latency_seconds: float = 0.0
    retries: int = 0

    @property
    def reported_total(self) -> int | None:
        """The provider's total, else input + output when both are known."""
        if self.total_tokens is not None:
            return self.total_tokens
        if self.input_tokens is not None and self.output_tokens is not None:
            return self.input_tokens + self.output_tokens
        return None


@runtime_checkable
class LLMProvider(Protocol):
    """Anything that turns a request into a response (or raises a ``ProviderError``)."""

    # Read-only properties, so a wrapper (``autopack.llm.gated``) that forwards them satisfies the protocol too.
    @property
    def name(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def max_output_tokens(self) -> int:
        """Largest output ceiling the model accepts (the ceiling is clamped to it)."""
        ...

    def complete(self, request: LLMRequest) -> LLMResponse: ...


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


class ProviderError(errors.ProviderError):
    """A provider call failed; ``retryable`` says whether the retry loop may try again."""

    exit_code = 1
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status_code: int | None = None,
        hint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(" ".join(redact(message).split()), hint=hint)
        self.provider = provider
        self.status_code = status_code
        self.retry_after = retry_after


class ProviderTransientError(ProviderError):
    """429, 5xx, timeouts, dropped connections: worth retrying with backoff."""

    retryable = True


class ProviderAuthError(ProviderError):
    """401/403: the key is missing, wrong or lacks permission. Never retried."""


class ProviderRequestError(ProviderError):
    """400/404/422: the request itself is wrong. Never retried."""


class ProviderResponseError(ProviderError):
    """The provider answered, but with numbers no real call produces (3×10⁹ completion tokens, −1, NaN).

    Raised by an adapter for a count that is not a whole number, and by telemetry
    (``autopack.telemetry.usage.validate_response``) for one its column cannot hold. Never retried. ``response`` is the response as received (None when it could not even be built), and
    ``problems`` maps each bad field to why, so the caller can still record the call with those values
    marked invalid.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        response: LLMResponse | None = None,
        problems: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, provider=provider,
                         hint="the provider (or the server at AUTOPACK_LLM_BASE_URL) reported impossible usage")
        self.response = response
        self.problems = dict(problems or {})


class LLMBoundaryError(ProviderError):
    """The prompt does not fit the model's context window (or a max-turn limit was hit).

    Distinct so drains can mark ``reached_llm_boundary`` instead of treating it as a flaky provider.
    """


_BOUNDARY_MARKERS = (
    "context_length_exceeded",
    "context length",
    "context window",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "input is too long",
    "exceeds the maximum number of tokens",
    "max_turns",
    "maximum number of turns",
)


def looks_like_boundary(message: str) -> bool:
    text = message.lower()
    return any(marker in text for marker in _BOUNDARY_MARKERS)


def error_for_status(
    provider: str, status: int | None, detail: str, *, retry_after: float | None = None, key_env: str = ""
) -> ProviderError:
    """Classify an HTTP failure into the error type that decides retrying and triage."""
    detail = " ".join(redact(detail or "").split())[:300]
    where = f"{provider} HTTP {status}" if status is not None else provider
    if status in (401, 403):
        return ProviderAuthError(
            f"{where}: authentication failed: {detail}",
            provider=provider,
            status_code=status,
            hint=f"check {key_env}" if key_env else "check the API key",
        )
    if status is not None and (status in (408, 409, 425, 429) or status >= 500):
        return ProviderTransientError(f"{where}: {detail}", provider=provider, status_code=status, retry_after=retry_after)
    if looks_like_boundary(detail):
        return LLMBoundaryError(f"{where}: llm boundary: {detail}", provider=provider, status_code=status)
    return ProviderRequestError(f"{where}: request rejected: {detail}", provider=provider, status_code=status)


# ------------------------------------------------------------------------------------------------
# Retries
# ------------------------------------------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: base·2^n seconds, at most ``max_delay``, at most ``max_retries`` times."""

    max_retries: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        factor: int = 2**retry_number
        backoff = min(self.max_delay, self.base_delay * factor)
        if retry_after is not None and retry_after > 0:
            return min(self.max_delay, max(backoff, retry_after))
        return backoff


def with_retries(
    call: Callable[[], T],
    *,
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    provider: str = "",
) -> tuple[T, int]:
    """Run ``call``; retry ``ProviderTransientError`` with backoff. Returns (result, retries used)."""
    retry = 0
    while True:
        try:
            return call(), retry
        except ProviderTransientError as exc:
            if retry >= policy.max_retries:
                raise ProviderTransientError(
                    f"{exc.message} (gave up after {retry + 1} attempts)",
                    provider=exc.provider or provider,
                    status_code=exc.status_code,
                    hint="the provider is overloaded or unreachable; try again later",
                ) from exc
            wait = policy.delay(retry, exc.retry_after)
            log.warning("%s: transient error (%s); retry %d/%d in %.2fs", provider, exc.message, retry + 1,
                        policy.max_retries, wait)
            sleep(wait)
            retry += 1


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def elapsed_since(start: float) -> float:
    return max(0.0, time.monotonic() - start)
