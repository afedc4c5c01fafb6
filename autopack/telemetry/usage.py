"""A provider's reported usage checked against the ``llm_usage_events`` columns it is written to.

Telemetry's rule, not the provider layer's: the ranges come from the ORM column types
(``autopack.telemetry.bounds``), not from the database in use, so SQLite refuses what PostgreSQL would
overflow on. The phase runner applies it to every response before using it, so a provider reporting
impossible usage fails the call (stage ``provider``) whichever adapter answered; the recorder applies it
again before writing.
"""

from __future__ import annotations

from autopack.db.models import LlmUsageEvent
from autopack.llm.base import LLMResponse, ProviderResponseError
from autopack.telemetry.bounds import bounds_for

#: Each usage number of a response and the telemetry column it is written to (``llm_usage_events``).
USAGE_COLUMNS: dict[str, str] = {
    "input_tokens": "prompt_tokens",
    "output_tokens": "completion_tokens",
    "reported_total": "total_tokens",
    "reasoning_tokens": "reasoning_tokens",
    "cached_tokens": "cached_tokens",
}


def response_problems(response: LLMResponse) -> dict[str, str]:
    """``{field: why}`` for every usage number the telemetry columns cannot hold (empty: all fine)."""
    bounds = bounds_for(LlmUsageEvent)
    problems: dict[str, str] = {}
    for field_name, column in USAGE_COLUMNS.items():
        try:
            value = getattr(response, field_name)
        except TypeError:  # reported_total adding two non-numbers
            value = "not a number"
        problem = bounds[column].problem(value)
        if problem is not None:
            problems[field_name] = f"{field_name}: {problem}"
    return problems


def validate_response(response: LLMResponse) -> LLMResponse:
    """The response itself if every usage number fits its column; else ``ProviderResponseError``."""
    problems = response_problems(response)
    if problems:
        raise ProviderResponseError(
            f"{response.provider} reported impossible usage: {'; '.join(problems.values())}",
            provider=response.provider,
            response=response,
            problems=problems,
        )
    return response
