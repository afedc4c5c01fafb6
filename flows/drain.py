"""``batch-drain``: phases as Prefect tasks, triaged by the same rules as ``autopack drain batch``.

Each phase attempt is a task on a bounded ``ThreadPoolTaskRunner``; provider calls take a slot of the
global concurrency limit ``autopack-llm-calls``; only transient provider failures are retried
(``retry_condition_fn``). The session is saved in ``drain_sessions``/``drain_results`` after every phase and
a progress artifact follows the batch.
"""

from __future__ import annotations

import queue
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from sqlalchemy.exc import OperationalError

from autopack.config import get_settings
from autopack.db.engine import session_scope
from autopack.db.identity import guard
from autopack.db.models import PhaseState
from autopack.execution import leases
from autopack.execution.batch import (
    STOP_BATCH_SIZE,
    STOP_NO_PHASES,
    STOP_TIME_LIMIT,
    STOP_ZERO_YIELD,
    BatchOptions,
    check_telemetry_enabled,
    eligible_candidates,
    outcome_from_phase_result,
)
from autopack.execution.batch_report import format_summary
from autopack.execution.phase_runner import execute_phase
from autopack.execution.sessions import DrainOutcome, SessionState, SessionStore, new_session_id
from autopack.execution.triage import RC_FAILED, RC_TIMEOUT, Candidate, order_candidates
from autopack.llm import get_provider
from autopack.llm.base import ProviderTransientError
from autopack.llm.gated import GatedProvider

LLM_CONCURRENCY_LIMIT = "autopack-llm-calls"

#: Outcomes of every attempt (including ones Prefect retries), per drain session, for the flow to record.
_OUTCOMES: dict[str, queue.Queue[DrainOutcome]] = {}


class TransientPhaseFailure(Exception):
    """The phase failed because the provider was unavailable (429/5xx/timeout): worth another attempt."""


def retry_only_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry provider unavailability and lost database connections, nothing else."""
    try:
        state.result()
    except (TransientPhaseFailure, OperationalError):
        return True
    except Exception:
        return False
    return False


def ensure_concurrency_limit(limit: int) -> None:
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(LLM_CONCURRENCY_LIMIT, limit)


@task(
    name="drain-phase",
    task_run_name="drain {run_id}/{phase_id}",
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_condition_fn=retry_only_transient,
    cache_policy=NO_CACHE,
)
def drain_phase(
    session_id: str,
    run_id: str,
    phase_id: str,
    phase_index: int,
    owner: str,
    states: list[str],
    lease_seconds: float,
    telemetry: bool,
) -> dict[str, Any]:
    """One attempt: claim, execute (provider calls gated by the global limit), report the outcome."""
    with session_scope() as db:
        claim = leases.claim_phase(db, run_id, phase_id, owner, states=[*states, PhaseState.FAILED],
                                   lease_seconds=lease_seconds)
    if claim is None:
        return {"claimed": False}
    provider = GatedProvider(get_provider(), gate=lambda: concurrency(LLM_CONCURRENCY_LIMIT, occupy=1))

    def heartbeat() -> None:
        with session_scope() as db:
            leases.heartbeat(db, run_id, phase_id, owner, lease_seconds=lease_seconds)

    started = time.monotonic()
    result = execute_phase(run_id, phase_id, claim=claim, provider=provider, telemetry=telemetry, heartbeat=heartbeat)
    candidate = Candidate(run_id, phase_id, phase_index, claim.initial_state)
    outcome = outcome_from_phase_result(candidate, claim, result, duration=time.monotonic() - started)
    _OUTCOMES[session_id].put(outcome)
    if not result.success and isinstance(provider.last_error, ProviderTransientError):
        raise TransientPhaseFailure(result.error_message or "provider unavailable")
    return {"claimed": True, "final_state": result.final_state, "telemetry_events": result.telemetry_events}


@flow(name="batch-drain")
def batch_drain(
    run_ids: list[str] | None = None,
    batch_size: int = 50,
    workers: int = 2,
    states: list[str] | None = None,
    max_consecutive_zero_yield: int | None = None,
    max_fingerprint_repeats: int = 3,
    max_attempts_per_phase: int = 2,
    max_timeouts_per_run: int = 2,
    phase_timeout_seconds: float = 900,
    max_total_minutes: float | None = None,
    skip_run_prefixes: list[str] | None = None,
    provider_concurrency: int | None = None,
    expect_db_id: str | None = None,
) -> dict[str, Any]:
    options = BatchOptions(
        run_ids=list(run_ids or []),
        batch_size=batch_size,
        states=tuple(states or ("QUEUED", "FAILED")),
        max_consecutive_zero_yield=max_consecutive_zero_yield,
        max_fingerprint_repeats=max_fingerprint_repeats,
        max_attempts_per_phase=max_attempts_per_phase,
        max_timeouts_per_run=max_timeouts_per_run,
        phase_timeout_seconds=phase_timeout_seconds,
        max_total_minutes=max_total_minutes,
        skip_run_prefixes=list(skip_run_prefixes or []),
        workers=workers,
    )
    options.validate()
    settings = get_settings()
    check_telemetry_enabled(options.telemetry, settings.telemetry_db_enabled)
    identity = guard(expect_db_id=expect_db_id or settings.expected_db_id)
    ensure_concurrency_limit(provider_concurrency or workers)
    runner = ThreadPoolTaskRunner(max_workers=workers)
    return _drain.with_options(task_runner=runner)(options, identity.db_id)


@flow(name="batch-drain-session")
def _drain(options: BatchOptions, db_id: str) -> dict[str, Any]:
    logger = get_run_logger()
    store = SessionStore()
    state = SessionState(session_id=new_session_id(), batch_size=options.batch_size, db_id=db_id,
                         params={**options.to_params(), "orchestrator": "prefect"})
    store.save(state)
    outcomes: queue.Queue[DrainOutcome] = queue.Queue()
    _OUTCOMES[state.session_id] = outcomes
    limits = options.limits()
    progress = create_progress_artifact(0.0, key="batch-drain-progress",
                                        description=f"drain session {state.session_id}")
    deadline = time.monotonic() + options.max_total_minutes * 60 if options.max_total_minutes else None
    in_flight: dict[tuple[str, str], Any] = {}
    deadlines: dict[tuple[str, str], float] = {}
    timed_out: set[tuple[str, str]] = set()
    stop: str | None = None
    try:
        while True:
            if stop is None:
                if state.total_processed >= options.batch_size:
                    stop = STOP_BATCH_SIZE
                elif deadline is not None and time.monotonic() >= deadline:
                    stop = STOP_TIME_LIMIT
                elif (options.max_consecutive_zero_yield
                      and state.consecutive_zero_yield >= options.max_consecutive_zero_yield):
                    stop = STOP_ZERO_YIELD
            if stop is None:
                room = min(options.batch_size - state.total_processed - len(in_flight), options.workers - len(in_flight))
                ordered = order_candidates(eligible_candidates(None, options), state.view(), limits,
                                           in_flight=in_flight.keys(), skip_run_prefixes=options.skip_run_prefixes)
                for candidate in ordered[: max(room, 0)]:
                    owner = f"prefect:{state.session_id}:{candidate.run_id}:{candidate.phase_id}"
                    in_flight[candidate.key] = drain_phase.submit(
                        state.session_id, candidate.run_id, candidate.phase_id, candidate.phase_index, owner,
                        list(options.states), options.lease_seconds, options.telemetry,
                    )
                    deadlines[candidate.key] = time.monotonic() + options.phase_timeout_seconds
                if not in_flight:
                    stop = STOP_NO_PHASES
            if not in_flight:
                break
            wait = max(0.0, min(deadlines[k] for k in in_flight) - time.monotonic())
            failed: tuple[tuple[str, str], str] | None = None
            try:
                done = next(as_completed(list(in_flight.values()), timeout=wait))
                key = next(k for k, f in in_flight.items() if f is done)
                if done.state.is_failed():
                    failed = (key, str(done.state.message))
            except TimeoutError:
                key = min(in_flight, key=lambda k: deadlines[k])
                timed_out.add(key)
                _record_failure(state, key, f"phase timed out after {options.phase_timeout_seconds:g}s", options,
                                timeout=True)
            del in_flight[key]
            deadlines.pop(key, None)
            reported: set[tuple[str, str]] = set()
            while not outcomes.empty():
                outcome = outcomes.get_nowait()
                if outcome.key in timed_out:
                    continue  # a timed-out attempt finishing late: its lease is gone, its result is not counted
                reported.add(outcome.key)
                for note in state.record(outcome, limits):
                    logger.info(note)
            if failed is not None and failed[0] not in reported:
                _record_failure(state, failed[0], failed[1], options)  # crashed before reporting an outcome
            store.save(state)
            update_progress_artifact(progress, min(100.0, 100.0 * state.total_processed / options.batch_size))
        state.status = "completed"
        state.stop_reason = stop
    finally:
        _OUTCOMES.pop(state.session_id, None)
        from autopack.db.models import utcnow

        state.completed_at = utcnow()
        store.save(state)
    summary = format_summary(state)
    create_markdown_artifact(key="batch-drain-summary", markdown=f"```\n{summary}\n```")
    logger.info("%s", summary)
    return {
        "session_id": state.session_id,
        "processed": state.total_processed,
        "success": state.total_success,
        "failed": state.total_failed,
        "telemetry_events": state.total_telemetry_events,
        "stop_reason": stop,
    }


def _record_failure(
    state: SessionState, key: tuple[str, str], reason: str, options: BatchOptions, *, timeout: bool = False
) -> None:
    """A phase whose task did not report (timed out, or crashed): finish it and release its lease.

    A timed-out worker thread cannot be killed; its lease is taken away here, so whatever it reports later
    is rejected (``LeaseLostError``) and not counted. ``autopack drain batch`` kills a stuck process instead.
    """
    run_id, phase_id = key
    owner = f"prefect:{state.session_id}:{run_id}:{phase_id}"
    final_state = PhaseState.TIMEOUT if timeout else PhaseState.FAILED
    try:
        with session_scope() as db:
            leases.finish_phase(db, run_id, phase_id, owner, final_state, failure_reason=reason)
    except leases.LeaseLostError:
        return
    state.record(
        DrainOutcome(run_id=run_id, phase_id=phase_id, final_state=final_state, success=False,
                     returncode=RC_TIMEOUT if timeout else RC_FAILED, failure_stage="timeout" if timeout else "execution",
                     zero_yield_reason="timeout" if timeout else "execution_error", error_message=reason),
        options.limits(),
    )
