"""The ONE telemetry recorder: every ``llm_usage_events``, ``token_estimation_v2_events`` and
``token_budget_escalation_events`` row written by autopack goes through here.

Rules (each fixes a defect of the original, reference §2.7 and §10.7):
- one row per provider call, keyed (run, phase, attempt_index, call_index); a retried write never
  duplicates (``INSERT … ON CONFLICT DO NOTHING``, then the existing row is returned);
- usage rows hold the provider's exact split, or an explicit total-only row (prompt/completion NULL),
  never a guessed split; an estimation row needs the real output-token count, so a provider that
  reports none gets no estimation row (it is never filled with the total);
- no "< 50 tokens" guard: tiny outputs are real samples;
- a failed write raises ``TelemetryWriteError``: in collection mode the phase fails loudly;
- every number is checked against its column's range before the write (``autopack.telemetry.bounds``),
  the same on SQLite and PostgreSQL: a provider's impossible usage (3×10⁹ completion tokens, −1, NaN)
  is recorded as a usage row with ``split_kind = 'invalid'`` and the bad numbers NULL (the call
  happened), never as a calibration sample, and the write raises ``TelemetryValueError``;
- each write commits in its own transaction, so telemetry survives a later crash of the phase;
- a call is recorded as soon as the provider returns, before its deliverables are written and checked (which
  can take minutes): ``record_call(..., success=None)`` writes the sample with ``success`` false and
  ``phase_outcome = 'UNCHECKED'``, and ``settle_call`` sets its success once the check finished. A worker killed
  in between leaves the row UNCHECKED: its length and truncation are real, its outcome is unknown, and nothing
  counts it as a success (``success`` stays false; the phase is run again under a fresh attempt index).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from autopack.db.engine import rowcount
from autopack.db.models import (
    TELEMETRY_SCHEMA_VERSION,
    LlmUsageEvent,
    TokenBudgetEscalationEvent,
    TokenEstimationV2Event,
    utcnow,
)
from autopack.errors import AutopackError
from autopack.llm.base import LLMResponse
from autopack.logging import get_logger
from autopack.telemetry.adaptive_state import apply_feedback
from autopack.telemetry.bounds import ValueOutOfRangeError, check_row, out_of_range
from autopack.telemetry.usage import USAGE_COLUMNS, response_problems
from autopack.token_estimator import (
    CALIBRATION_VERSION,
    CeilingDecision,
    Escalation,
    Estimate,
    PhaseFeatures,
    features_record,
)

if TYPE_CHECKING:
    from autopack.db.handle import Database

log = get_logger("autopack.telemetry")
#: ``token_estimation_v2_events.source`` of the calls this executor records (imports name their own).
RECORDER_SOURCE = "autopack"

MAX_DELIVERABLES_STORED = 20
MAX_DELIVERABLE_CHARS = 200


class TelemetryWriteError(AutopackError):
    """A telemetry row could not be written; collection must not continue silently."""

    exit_code = 1


class TelemetryValueError(TelemetryWriteError):
    """A number is out of its column's range; the call was recorded as far as it could be (if at all)."""


#: The unique key of a usage or estimation row: one row per provider call.
CALL_KEY_COLUMNS = ("run_id", "phase_id", "attempt_index", "call_index")

#: ``split_kind`` of a usage row whose provider reported numbers no column can hold.
SPLIT_INVALID = "invalid"

#: ``phase_outcome`` of a call recorded before its deliverables were checked (``success`` false until
#: ``settle_call``); a row that keeps it belongs to a worker that died during the check: outcome unknown.
OUTCOME_UNCHECKED = "UNCHECKED"


@dataclass(frozen=True)
class CallKey:
    run_id: str
    phase_id: str
    attempt_index: int
    call_index: int = 0


@dataclass(frozen=True)
class RecordedCall:
    usage_event_id: int
    usage_created: bool
    estimation_event_id: int | None
    estimation_created: bool


def smape_percent(predicted: int, actual: int) -> float:
    """200·|p−a|/(|p|+|a|), denominator floored at 1 (the original's definition)."""
    return 200.0 * abs(predicted - actual) / max(1, abs(predicted) + abs(actual))


def waste_ratio(predicted: int, actual: int) -> float | None:
    """predicted / actual: the original's ``waste_ratio`` column (an over-estimate ratio)."""
    return predicted / actual if actual > 0 else None


def _insert_ignore(session: sa.orm.Session, model: type, values: dict[str, Any], key: Iterable[str]) -> tuple[int, bool]:
    """Insert unless a row with the same unique key exists; return (row id, created)."""
    table = model.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    key_cols = list(key)
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table).values(**values)
    pk = list(table.primary_key.columns)[0]
    result = session.execute(insert.on_conflict_do_nothing(index_elements=key_cols).returning(pk))
    created_id = result.scalar_one_or_none()
    if created_id is not None:
        return int(created_id), True
    where = [table.c[c] == values[c] for c in key_cols]
    existing = session.execute(sa.select(pk).where(*where)).scalar_one()
    return int(existing), False


def _column_values(model: type, fields: Mapping[str, Any]) -> dict[str, Any]:
    """ORM attribute names → table column names (``id`` is stored as ``event_id``)."""
    mapper: sa.orm.Mapper[Any] = sa.inspect(model)
    return {mapper.attrs[name].columns[0].name: value for name, value in fields.items()}


def usage_fields(key: CallKey, response: LLMResponse, *, role: str = "builder") -> dict[str, Any]:
    exact = response.input_tokens is not None and response.output_tokens is not None
    total = response.reported_total
    return {
        "provider": response.provider,
        "model": response.model,
        "run_id": key.run_id,
        "phase_id": key.phase_id,
        "attempt_index": key.attempt_index,
        "call_index": key.call_index,
        "role": role,
        "total_tokens": int(total) if total is not None else 0,
        "prompt_tokens": response.input_tokens if exact else None,
        "completion_tokens": response.output_tokens if exact else None,
        "reasoning_tokens": response.reasoning_tokens,
        "cached_tokens": response.cached_tokens,
        # exact: provider split; total_only: a total without split; unreported: no usage at all (total 0).
        "split_kind": "exact" if exact else "total_only" if total is not None else "unreported",
        "created_at": utcnow(),
    }


def invalid_usage_fields(
    key: CallKey, provider: str, model: str | None, response: LLMResponse | None, problems: Mapping[str, str],
    *, role: str = "builder",
) -> dict[str, Any]:
    """A usage row for a call whose reported numbers are partly impossible: the bad ones NULL, the rest kept."""
    fields = {
        "provider": provider,
        "model": model,
        "run_id": key.run_id,
        "phase_id": key.phase_id,
        "attempt_index": key.attempt_index,
        "call_index": key.call_index,
        "role": role,
        "total_tokens": 0,
        "prompt_tokens": None,
        "completion_tokens": None,
        "reasoning_tokens": None,
        "cached_tokens": None,
        "split_kind": SPLIT_INVALID,
        "created_at": utcnow(),
    }
    if response is not None:
        for field_name, column in USAGE_COLUMNS.items():
            if field_name not in problems:
                value = getattr(response, field_name)
                fields[column] = 0 if value is None and column == "total_tokens" else value
    return fields


def estimation_fields(
    key: CallKey,
    features: PhaseFeatures,
    est: Estimate,
    decision: CeilingDecision,
    response: LLMResponse,
    *,
    success: bool | None,
) -> dict[str, Any]:
    """The estimation row of one call; ``success=None``: not checked yet (stored false, ``OUTCOME_UNCHECKED``)."""
    assert response.output_tokens is not None
    predicted, actual = est.predicted_output_tokens, int(response.output_tokens)
    deliverables = [d[:MAX_DELIVERABLE_CHARS] for d in features.deliverables[:MAX_DELIVERABLES_STORED]]
    now = utcnow()
    flags = est.doc_features
    return {
        "run_id": key.run_id,
        "phase_id": key.phase_id,
        "attempt_index": key.attempt_index,
        "call_index": key.call_index,
        "timestamp": now,
        "created_at": now,
        "category": est.category,
        "complexity": est.complexity,
        "deliverable_count": est.deliverable_count,
        "deliverables_json": json.dumps(deliverables),
        "features_json": json.dumps(features_record(features, est), sort_keys=True),
        "predicted_output_tokens": predicted,
        "actual_output_tokens": actual,
        "selected_budget": decision.selected_budget,
        "actual_max_tokens": decision.actual_max_tokens,
        "actual_max_tokens_backfilled": False,
        "ceiling_contributions_json": json.dumps(decision.as_records()),
        "success": bool(success),
        "phase_outcome": OUTCOME_UNCHECKED if success is None else None,
        "truncated": bool(response.truncated),
        "is_truncated_output": bool(response.truncated),
        "stop_reason": response.stop_reason,
        "finish_reason": response.finish_reason,
        "provider": response.provider,
        "model": response.model,
        "input_tokens": response.input_tokens,
        "reasoning_tokens": response.reasoning_tokens,
        "cached_input_tokens": response.cached_tokens,
        "smape_percent": round(smape_percent(predicted, actual), 3),
        "waste_ratio": waste_ratio(predicted, actual),
        "underestimated": actual > predicted,
        "api_reference_required": flags.get("api_reference_required"),
        "examples_required": flags.get("examples_required"),
        "research_required": flags.get("research_required"),
        "usage_guide_required": flags.get("usage_guide_required"),
        "context_quality": est.context_quality,
        "is_sot_file": est.sot_file_name is not None,
        "sot_file_name": est.sot_file_name,
        "sot_entry_count_hint": None,
        "estimator_version": CALIBRATION_VERSION,
        "schema_version": TELEMETRY_SCHEMA_VERSION,
        "source": RECORDER_SOURCE,
    }


def format_log_line(
    est: Estimate, decision: CeilingDecision, response: LLMResponse, *, success: bool
) -> str:
    """The original's ``[TokenEstimationV2]`` line (its analyser parses it) plus ceiling and provider."""
    actual = response.output_tokens if response.output_tokens is not None else 0
    return (
        f"[TokenEstimationV2] predicted_output={est.predicted_output_tokens} actual_output={actual} "
        f"smape={smape_percent(est.predicted_output_tokens, actual):.1f}% "
        f"selected_budget={decision.selected_budget} category={est.category} complexity={est.complexity} "
        f"deliverables={est.deliverable_count} success={bool(success)} stop_reason={response.stop_reason} "
        f"truncated={bool(response.truncated)} model={response.model} "
        f"actual_max_tokens={decision.actual_max_tokens} provider={response.provider}"
    )


def _write_error(key: CallKey, exc: SQLAlchemyError) -> TelemetryWriteError:
    return TelemetryWriteError(
        f"telemetry write failed for {key.run_id}/{key.phase_id} attempt {key.attempt_index}: "
        f"{type(exc).__name__}: {getattr(exc, 'orig', exc)}",
        hint="check the database (autopack db identity); pass --no-telemetry to run without recording",
    )


def record_call(
    key: CallKey,
    features: PhaseFeatures,
    est: Estimate,
    decision: CeilingDecision,
    response: LLMResponse,
    *,
    success: bool | None,
    role: str = "builder",
    db: Database,
) -> RecordedCall:
    """Write the usage row and the estimation row of one provider call (idempotent on the call key).

    ``success=None``: the call's deliverables are not checked yet; ``settle_call`` sets its success afterwards
    (and only then logs its ``[TokenEstimationV2]`` line and moves the adaptive level, both need the outcome).

    A response with impossible usage is recorded by ``record_invalid_call`` instead, and this raises
    ``TelemetryValueError``; so does any other number out of its column's range (nothing is written then).
    """
    problems = response_problems(response)
    if problems:
        record_invalid_call(key, response.provider, response.model, response, problems, role=role, db=db)
        raise TelemetryValueError(
            f"{response.provider} reported impossible usage for {key.run_id}/{key.phase_id} attempt "
            f"{key.attempt_index}: {'; '.join(problems.values())}; recorded as split_kind={SPLIT_INVALID}, "
            "no calibration sample"
        )
    call_key = CALL_KEY_COLUMNS
    usage = _column_values(LlmUsageEvent, usage_fields(key, response, role=role))
    estimation = None
    if response.output_tokens is not None:
        fields = estimation_fields(key, features, est, decision, response, success=success)
        estimation = _column_values(TokenEstimationV2Event, fields)
    where = f"telemetry for {key.run_id}/{key.phase_id} attempt {key.attempt_index}"
    try:
        check_row(LlmUsageEvent, usage, context=where)
        if estimation is not None:
            check_row(TokenEstimationV2Event, estimation, context=where)
    except ValueOutOfRangeError as exc:
        raise TelemetryValueError(exc.message + "; nothing recorded") from exc
    try:
        with db.session() as session:
            usage_id, usage_created = _insert_ignore(session, LlmUsageEvent, usage, call_key)
            est_id: int | None = None
            est_created = False
            if estimation is not None:
                est_id, est_created = _insert_ignore(session, TokenEstimationV2Event, estimation, call_key)
                if est_created and success is not None:
                    _feed_adaptive_budget(session, decision, response, success=success)
    except SQLAlchemyError as exc:
        raise _write_error(key, exc) from exc
    if response.output_tokens is None:
        log.warning("[TokenEstimationV2] %s/%s attempt %d: %s reported no output-token count; usage recorded "
                    "as total-only, no estimation sample", key.run_id, key.phase_id, key.attempt_index,
                    response.provider)
    elif success is None:
        log.debug("[telemetry] %s/%s attempt %d recorded; outcome pending its check", key.run_id, key.phase_id,
                  key.attempt_index)
    else:
        log.info(format_log_line(est, decision, response, success=success))
    return RecordedCall(usage_id, usage_created, est_id, est_created)


def settle_call(
    key: CallKey,
    est: Estimate,
    decision: CeilingDecision,
    response: LLMResponse,
    *,
    success: bool,
    db: Database,
) -> bool:
    """Set the success of a call ``record_call`` wrote unchecked (``success=None``); False if there was none.

    Only an UNCHECKED row changes (a retried settle, or a call without an estimation row, writes nothing), so the
    adaptive level moves and the ``[TokenEstimationV2]`` line is logged once per call, when its outcome is known.
    """
    ev = TokenEstimationV2Event
    where = sa.and_(ev.run_id == key.run_id, ev.phase_id == key.phase_id, ev.attempt_index == key.attempt_index,
                    ev.call_index == key.call_index, ev.phase_outcome == OUTCOME_UNCHECKED)
    try:
        with db.session() as session:
            result = session.execute(sa.update(ev).where(where).values(success=bool(success), phase_outcome=None)
                                     .execution_options(synchronize_session=False))
            settled = int(rowcount(result) or 0) == 1
            if settled:
                _feed_adaptive_budget(session, decision, response, success=success)
    except SQLAlchemyError as exc:
        raise _write_error(key, exc) from exc
    if settled:
        log.info(format_log_line(est, decision, response, success=success))
    return settled


def _feed_adaptive_budget(
    session: sa.orm.Session, decision: CeilingDecision, response: LLMResponse, *, success: bool
) -> None:
    """Move the group's ACI level with this call's outcome, in the telemetry row's own transaction.

    Only a first attempt planned with an adaptive factor (``decision.adaptive``), and only a call that is a
    calibration sample (it succeeded or it was truncated), so the runtime learns from what the backtest
    replays. A retried write of an existing row never gets here (``est_created``): one call, one update.
    """
    use = decision.adaptive
    if use is None or response.output_tokens is None or not (success or response.truncated):
        return
    apply_feedback(session, use, use.error(int(response.output_tokens), bool(response.truncated)))


def record_invalid_call(
    key: CallKey,
    provider: str,
    model: str | None,
    response: LLMResponse | None,
    problems: Mapping[str, str],
    *,
    role: str = "builder",
    db: Database,
) -> tuple[int, bool]:
    """Record that a call happened although its usage numbers are impossible (``split_kind = 'invalid'``).

    The numbers that fit are kept, the others are NULL; no estimation row (it would poison calibration).
    """
    fields = _column_values(LlmUsageEvent, invalid_usage_fields(key, provider, model, response, problems, role=role))
    for column in out_of_range(LlmUsageEvent, fields):  # e.g. a total that only overflows once summed
        fields[column] = 0 if column == "total_tokens" else None
    try:
        with db.session() as session:
            created = _insert_ignore(session, LlmUsageEvent, fields, CALL_KEY_COLUMNS)
    except SQLAlchemyError as exc:
        raise _write_error(key, exc) from exc
    log.warning("[telemetry] %s/%s attempt %d: %s reported impossible usage (%s); recorded as split_kind=%s",
                key.run_id, key.phase_id, key.attempt_index, provider, "; ".join(problems.values()), SPLIT_INVALID)
    return created


def record_escalation(
    run_id: str,
    phase_id: str,
    attempt_index: int,
    escalation: Escalation,
    *,
    was_truncated: bool,
    output_tokens: int | None,
    selected_budget: int,
    actual_max_tokens: int,
    reason: str = "truncation",
    db: Database,
) -> tuple[int, bool]:
    """One ``token_budget_escalation_events`` row for the attempt that triggered escalation."""
    utilization = (100.0 * output_tokens / actual_max_tokens) if output_tokens is not None and actual_max_tokens else None
    fields = {
        "run_id": run_id,
        "phase_id": phase_id,
        "timestamp": utcnow(),
        "attempt_index": attempt_index,
        "reason": reason,
        "was_truncated": was_truncated,
        "output_utilization": utilization,
        "escalation_factor": escalation.factor,
        "base_value": escalation.base_value,
        "base_source": escalation.base_source,
        "retry_max_tokens": escalation.retry_max_tokens,
        "selected_budget": selected_budget,
        "actual_max_tokens": actual_max_tokens,
        "tokens_used": output_tokens,
    }
    try:
        check_row(TokenBudgetEscalationEvent, fields, context=f"escalation event for {run_id}/{phase_id}")
    except ValueOutOfRangeError as exc:
        raise TelemetryValueError(exc.message + "; nothing recorded") from exc
    try:
        with db.session() as session:
            return _insert_ignore(
                session,
                TokenBudgetEscalationEvent,
                _column_values(TokenBudgetEscalationEvent, fields),
                ("run_id", "phase_id", "attempt_index"),
            )
    except SQLAlchemyError as exc:
        raise TelemetryWriteError(
            f"escalation event write failed for {run_id}/{phase_id}: {type(exc).__name__}: {getattr(exc, 'orig', exc)}"
        ) from exc


def set_phase_outcome(
    run_id: str, phase_id: str, attempt_indices: Iterable[int], outcome: str, *, db: Database
) -> int:
    """Fill ``phase_outcome`` on the estimation rows of the attempts that led to this outcome (an UNCHECKED row
    too: the phase failed before its check finished, so its outcome is now known)."""
    indices = sorted(set(attempt_indices))
    if not indices:
        return 0
    try:
        with db.session() as session:
            result = session.execute(
                sa.update(TokenEstimationV2Event)
                .where(
                    TokenEstimationV2Event.run_id == run_id,
                    TokenEstimationV2Event.phase_id == phase_id,
                    TokenEstimationV2Event.attempt_index.in_(indices),
                )
                .values(phase_outcome=outcome)
                .execution_options(synchronize_session=False)
            )
            return int(rowcount(result) or 0)
    except SQLAlchemyError as exc:
        raise TelemetryWriteError(f"phase outcome write failed for {run_id}/{phase_id}: {exc}") from exc


def unfinished_success_of(run_id: Any, phase_id: Any) -> sa.ColumnElement[bool]:
    """The estimation rows ``unfinished_success`` looks for, of a phase given by values or by columns.

    ``success`` is true only once ``settle_call`` saw the deliverables written and checked: a row left UNCHECKED
    (its worker died during the check) is false here, never a reason to finish the phase."""
    ev = TokenEstimationV2Event
    return sa.and_(ev.run_id == run_id, ev.phase_id == phase_id, ev.source == RECORDER_SOURCE, ev.success,
                   sa.not_(ev.truncated), ev.phase_outcome.is_(None))


@dataclass(frozen=True)
class RecordedSuccess:
    """A successful call an earlier execution recorded for a phase that never finished (``unfinished_success``)."""

    attempt_index: int
    reported_tokens: int  # the attempt's usage rows' total_tokens: what the phase spent on it
    estimation_events: int  # its estimation rows (the samples it yielded)


def unfinished_success(run_id: str, phase_id: str, *, db: Database) -> RecordedSuccess | None:
    """The attempt of a call this executor recorded as a success (uncut, deliverables written and checked) whose
    phase never recorded an outcome, with its tokens and samples, or None.

    Such a phase was given back (Ctrl-C, a lost lease) or its worker died between the telemetry write and the
    phase's finish: running it again would spend a second call and count the phase twice in the calibration.
    """
    ev, usage = TokenEstimationV2Event, LlmUsageEvent
    query = sa.select(sa.func.max(ev.attempt_index)).where(unfinished_success_of(run_id, phase_id))
    try:
        with db.session() as session:
            attempt = session.execute(query).scalar_one_or_none()
            if attempt is None:
                return None
            tokens = session.execute(sa.select(sa.func.coalesce(sa.func.sum(usage.total_tokens), 0)).where(
                usage.run_id == run_id, usage.phase_id == phase_id, usage.attempt_index == attempt)).scalar_one()
            events = session.execute(sa.select(sa.func.count()).where(
                ev.run_id == run_id, ev.phase_id == phase_id, ev.attempt_index == attempt)).scalar_one()
    except SQLAlchemyError as exc:
        raise TelemetryWriteError(f"telemetry tables unreadable for {run_id}/{phase_id}: {type(exc).__name__}: "
                                  f"{getattr(exc, 'orig', exc)}") from exc
    return RecordedSuccess(int(attempt), int(tokens or 0), int(events))
