"""The one telemetry recorder: exact or total-only usage, idempotent per call key, loud on failure."""

from __future__ import annotations

import json
import logging
import re

import pytest
import sqlalchemy as sa

from autopack.db.engine import session_scope
from autopack.db.handle import database_at
from autopack.db.models import (
    TELEMETRY_SCHEMA_VERSION,
    LlmUsageEvent,
    TokenBudgetEscalationEvent,
    TokenEstimationV2Event,
)
from autopack.llm.base import LLMResponse
from autopack.telemetry import (
    OUTCOME_UNCHECKED,
    CallKey,
    TelemetryWriteError,
    format_log_line,
    record_call,
    record_escalation,
    set_phase_outcome,
    settle_call,
    smape_percent,
)
from autopack.token_estimator import CALIBRATION_VERSION, PhaseFeatures, escalate, plan_call

FEATURES = PhaseFeatures(category="testing", complexity="Medium", deliverables=("tests/test_a.py",),
                         description="Write tests", scope_paths=("tests/",))
EST, DECISION = plan_call(FEATURES)
KEY = CallKey("run-1", "phase-1", 0, 0)

# The original analyser's pattern for V2 lines (reference §7).
V2_PATTERN = re.compile(
    r"\[TokenEstimationV2\]\s+predicted_output=(\d+)\s+actual_output=(\d+)\s+smape=([\d.]+)%\s+"
    r"selected_budget=([^\s]+)\s+category=([^\s]+)\s+complexity=([^\s]+)\s+deliverables=(\d+)\s+"
    r"success=([^\s]+)\s+stop_reason=([^\s]+)\s+truncated=([^\s]+)\s+model=([^\s]+)"
)


def response(output: int | None = 1200, *, input_tokens: int | None = 800, total: int | None = None,
             stop: str = "end_turn", truncated: bool = False) -> LLMResponse:
    return LLMResponse(text="x", provider="simulated", model="sim-builder-1", max_tokens=DECISION.actual_max_tokens,
                       input_tokens=input_tokens, output_tokens=output, total_tokens=total, stop_reason=stop,
                       finish_reason="stop", truncated=truncated, reasoning_tokens=0, cached_tokens=5)


def all_rows(url: str, model: type) -> list:  # type: ignore[type-arg]
    with session_scope(url) as session:
        return list(session.execute(sa.select(model)).scalars())


def test_exact_split_usage_and_estimation_row(db_url: str) -> None:
    recorded = record_call(KEY, FEATURES, EST, DECISION, response(), success=True, db=database_at(db_url))
    assert recorded.usage_created and recorded.estimation_created
    (usage,) = all_rows(db_url, LlmUsageEvent)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (800, 1200, 2000)
    assert usage.split_kind == "exact" and usage.provider == "simulated" and usage.role == "builder"
    (event,) = all_rows(db_url, TokenEstimationV2Event)
    assert (event.category, event.complexity) == ("tests", "medium")
    assert event.selected_budget == DECISION.selected_budget and event.actual_max_tokens == DECISION.actual_max_tokens
    assert event.actual_output_tokens == 1200 and event.input_tokens == 800 and event.cached_input_tokens == 5
    assert event.smape_percent == pytest.approx(smape_percent(EST.predicted_output_tokens, 1200), abs=1e-3)
    assert event.waste_ratio == pytest.approx(EST.predicted_output_tokens / 1200)
    assert event.underestimated is (1200 > EST.predicted_output_tokens)
    assert event.estimator_version == CALIBRATION_VERSION and event.schema_version == TELEMETRY_SCHEMA_VERSION
    assert event.phase_outcome is None and event.success
    assert json.loads(event.features_json)["complexity"] == "Medium"
    assert event.context_quality == "some"


def test_recording_the_same_call_twice_does_not_duplicate(db_url: str) -> None:
    first = record_call(KEY, FEATURES, EST, DECISION, response(), success=True, db=database_at(db_url))
    second = record_call(KEY, FEATURES, EST, DECISION, response(output=999), success=False, db=database_at(db_url))
    assert not second.usage_created and not second.estimation_created
    assert (second.usage_event_id, second.estimation_event_id) == (first.usage_event_id, first.estimation_event_id)
    assert len(all_rows(db_url, LlmUsageEvent)) == 1
    (event,) = all_rows(db_url, TokenEstimationV2Event)
    assert event.actual_output_tokens == 1200


def test_another_attempt_is_another_row(db_url: str) -> None:
    record_call(KEY, FEATURES, EST, DECISION, response(), success=True, db=database_at(db_url))
    record_call(CallKey("run-1", "phase-1", 1, 0), FEATURES, EST, DECISION, response(), success=True, db=database_at(db_url))
    assert sorted(e.attempt_index for e in all_rows(db_url, TokenEstimationV2Event)) == [0, 1]


def test_total_only_usage_is_never_split_and_gives_no_estimation_sample(db_url: str) -> None:
    recorded = record_call(KEY, FEATURES, EST, DECISION, response(output=None, input_tokens=None, total=2100),
                           success=True, db=database_at(db_url))
    (usage,) = all_rows(db_url, LlmUsageEvent)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (None, None, 2100)
    assert usage.split_kind == "total_only"
    assert recorded.estimation_event_id is None and all_rows(db_url, TokenEstimationV2Event) == []


def test_nothing_reported_is_marked_unreported(db_url: str) -> None:
    record_call(KEY, FEATURES, EST, DECISION, response(output=None, input_tokens=None), success=False, db=database_at(db_url))
    (usage,) = all_rows(db_url, LlmUsageEvent)
    assert usage.split_kind == "unreported" and usage.prompt_tokens is None


def test_tiny_outputs_are_recorded(db_url: str) -> None:
    record_call(KEY, FEATURES, EST, DECISION, response(output=3), success=False, db=database_at(db_url))
    (event,) = all_rows(db_url, TokenEstimationV2Event)
    assert event.actual_output_tokens == 3


def test_truncated_call_is_censored(db_url: str) -> None:
    record_call(KEY, FEATURES, EST, DECISION, response(output=DECISION.actual_max_tokens, stop="max_tokens",
                                                       truncated=True), success=False, db=database_at(db_url))
    (event,) = all_rows(db_url, TokenEstimationV2Event)
    assert event.truncated and event.is_truncated_output and event.stop_reason == "max_tokens"


def test_long_deliverable_lists_are_capped(db_url: str) -> None:
    many = PhaseFeatures(category="docs", complexity="low", deliverables=tuple(f"docs/{'x' * 300}{i}.md" for i in range(30)))
    est, decision = plan_call(many)
    record_call(KEY, many, est, decision, response(), success=True, db=database_at(db_url))
    (event,) = all_rows(db_url, TokenEstimationV2Event)
    stored = json.loads(event.deliverables_json)
    assert len(stored) == 20 and all(len(d) == 200 for d in stored)
    assert event.deliverable_count == 30


def test_phase_outcome_is_filled_for_the_given_attempts_only(db_url: str) -> None:
    for attempt in (0, 1, 2):
        record_call(CallKey("run-1", "phase-1", attempt, 0), FEATURES, EST, DECISION, response(), success=True, db=database_at(db_url))
    assert set_phase_outcome("run-1", "phase-1", [1, 2], "COMPLETE", db=database_at(db_url)) == 2
    outcomes = {e.attempt_index: e.phase_outcome for e in all_rows(db_url, TokenEstimationV2Event)}
    assert outcomes == {0: None, 1: "COMPLETE", 2: "COMPLETE"}


def test_escalation_event_is_idempotent(db_url: str) -> None:
    esc = escalate(selected_budget=4096, actual_max_tokens=4096, tokens_used=4096, complexity="low")
    first = record_escalation("run-1", "phase-1", 0, esc, was_truncated=True, output_tokens=4096,
                              selected_budget=4096, actual_max_tokens=4096, db=database_at(db_url))
    again = record_escalation("run-1", "phase-1", 0, esc, was_truncated=True, output_tokens=4096,
                              selected_budget=4096, actual_max_tokens=4096, db=database_at(db_url))
    assert first == (first[0], True) and again == (first[0], False)
    (row,) = all_rows(db_url, TokenBudgetEscalationEvent)
    assert row.retry_max_tokens == 5120 and row.output_utilization == pytest.approx(100.0)


def test_a_failed_write_raises(tmp_path) -> None:  # type: ignore[no-untyped-def]
    unmigrated = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(TelemetryWriteError, match="telemetry write failed"):
        record_call(KEY, FEATURES, EST, DECISION, response(), success=True, db=database_at(unmigrated))


def test_log_line_parses_with_the_original_pattern_and_adds_ceiling_and_provider() -> None:
    line = format_log_line(EST, DECISION, response(), success=True)
    match = V2_PATTERN.search(line)
    assert match is not None
    assert int(match.group(1)) == EST.predicted_output_tokens and match.group(2) == "1200"
    assert (match.group(5), match.group(6), match.group(8), match.group(10)) == ("tests", "medium", "True", "False")
    assert line.endswith(f"model=sim-builder-1 actual_max_tokens={DECISION.actual_max_tokens} provider=simulated")


def test_record_call_logs_the_line(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="autopack.telemetry"):
        record_call(KEY, FEATURES, EST, DECISION, response(), success=True, db=database_at(db_url))
    assert any(V2_PATTERN.search(r.getMessage()) and "provider=simulated" in r.getMessage() for r in caplog.records)


def test_a_call_recorded_before_its_check_is_unchecked_until_settled_once(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    db = database_at(db_url)
    with caplog.at_level(logging.INFO, logger="autopack.telemetry"):
        record_call(KEY, FEATURES, EST, DECISION, response(), success=None, db=db)
        (row,) = all_rows(db_url, TokenEstimationV2Event)
        assert (row.success, row.phase_outcome) == (False, OUTCOME_UNCHECKED)
        assert not any(V2_PATTERN.search(r.getMessage()) for r in caplog.records)  # no outcome, no V2 line yet
        assert settle_call(KEY, EST, DECISION, response(), success=True, db=db)
        assert not settle_call(KEY, EST, DECISION, response(), success=False, db=db)  # settled once
    (row,) = all_rows(db_url, TokenEstimationV2Event)
    assert (row.success, row.phase_outcome) == (True, None)
    assert [m.group(8) for r in caplog.records if (m := V2_PATTERN.search(r.getMessage()))] == ["True"]


@pytest.mark.parametrize(("p", "a", "expected"), [(100, 100, 0.0), (300, 100, 100.0), (0, 0, 0.0), (0, 50, 200.0)])
def test_smape(p: int, a: int, expected: float) -> None:
    assert smape_percent(p, a) == pytest.approx(expected)
