"""The batch drain: pick phases with sample-first triage, run them under leases, stop when told to.

One engine (``BatchDrain``) makes every decision — which phase next, when to stop, what the session records,
what a timeout or a lost worker means — and an executor (``batch_workers``) runs the phases: killable
processes for ``autopack drain batch``, Prefect task runs for the ``batch-drain`` flow. Each phase is claimed
with an atomic lease before it is handed out, so any number of independent drains can share a database: they
never run the same phase at once, and a phase whose drain died is claimed again once its lease expires. The
engine heartbeats every lease it holds, stops a phase that exceeds the phase timeout (recorded TIMEOUT with the
telemetry it wrote, its lease taken back), and saves the session after every phase.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from pydantic import BaseModel

from autopack.db.models import Phase, PhaseState, TokenEstimationV2Event, utcnow
from autopack.errors import AutopackError, ConfigError, RefusedError
from autopack.execution import leases
from autopack.execution.batch_workers import (
    DEFAULT_EXECUTOR,
    Completion,
    DrainExecutor,
    ExecutorRef,
    PhaseDone,
    PhaseJob,
    PhaseLeaseLost,
    PhaseMessage,
    PhaseReport,
    ProcessExecutor,
    make_executor,
)
from autopack.execution.runs import require_runs
from autopack.execution.sessions import (
    FINAL_INTERRUPTED,
    FINAL_LEASE_LOST,
    FINAL_WORKER_LOST,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_INTERRUPTED,
    STATUS_RUNNING,
    DrainOutcome,
    SessionState,
    SessionStore,
    abandoned_reason,
    new_session_id,
    process_marker,
    strip_url_credentials,
)
from autopack.execution.triage import (
    RC_FAILED,
    RC_INTERRUPTED,
    RC_LEASE_LOST,
    RC_SUCCESS,
    RC_TIMEOUT,
    STAGE_EXECUTION,
    Candidate,
    TriageLimits,
    order_candidates,
    returncode_for_signal,
    skip_run_prefix,
    zero_yield_reason,
)
from autopack.params import DRAINABLE_STATES, DrainParams

if TYPE_CHECKING:
    from autopack.db.handle import Database

STOP_BATCH_SIZE = "batch size reached"
STOP_NO_PHASES = "no eligible phases left"
STOP_ZERO_YIELD = "consecutive zero-yield limit reached"
STOP_TIME_LIMIT = "max total minutes reached"


class DrainInterrupted(AutopackError):
    """Ctrl-C (or SIGTERM): the session was saved and every held lease released."""

    exit_code = 130
    state: SessionState | None = None
    wall_seconds: float | None = None


class BatchOptions(DrainParams):
    """Every knob of one batch drain: the ``DrainParams`` (defaults, bounds and checks live there) and what only
    the command line sets. Invalid values are refused on construction with one ``InputError``."""

    #: Record telemetry (``autopack drain batch --no-telemetry`` turns it off).
    telemetry: bool = True
    #: An API server whose database id must be this database's (``--api-url``).
    api_url: str | None = None
    #: When nothing is claimable but another drain holds leases in scope, wait for those leases to end
    #: (finished, or expired because that drain died) instead of stopping.
    wait_for_leases: bool = True

    @classmethod
    def of(cls, params: DrainParams, **extra: Any) -> BatchOptions:
        """The drain of ``params`` with what only the command line sets (``extra``: ``telemetry``, ``api_url``,
        ``wait_for_leases``); ``params`` itself when it already is one and nothing is added."""
        if isinstance(params, cls) and not extra:
            return params
        return cls(**{**params.model_dump(), **extra})

    def validate(self) -> None:  # type: ignore[override]
        """Check the options again (after an attribute was changed): the model's checks, nothing else."""
        type(self).model_validate(self.model_dump())

    def limits(self) -> TriageLimits:
        return TriageLimits(
            max_fingerprint_repeats=self.max_fingerprint_repeats,
            max_attempts_per_phase=self.max_attempts_per_phase,
            max_timeouts_per_run=self.max_timeouts_per_run,
        )

    def to_params(self) -> dict[str, Any]:
        return self.model_dump()

    def resolved_provider_concurrency(self) -> int:
        if self.provider_concurrency is not None:
            return self.provider_concurrency
        from autopack.config import get_settings

        return get_settings().provider_concurrency


def parse_states(text: str) -> list[str]:
    """``"queued, FAILED"`` as the drain's states (the ``--states`` spelling), checked by ``DrainParams``."""
    return list[str](DrainParams(states=text).states)


# --- progress reporting --------------------------------------------------------------------------------


class DrainReporter(Protocol):
    """What a front end shows; the engine calls these from its own thread, in this order."""

    def started(self, state: SessionState, options: BatchOptions) -> None: ...
    def phase_started(self, candidate: Candidate, worker: int) -> None: ...
    def phase_finished(self, outcome: DrainOutcome, state: SessionState, notes: list[str]) -> None: ...
    def progress(self, done: int, planned: int) -> None:
        """``done`` phases of ``planned`` = min(batch size, done + running + eligible now); it moves as
        phases fail (retries become eligible) or runs are deprioritized."""
        ...

    def message(self, text: str) -> None: ...
    def finished(self, state: SessionState) -> None: ...


class NullReporter:
    def started(self, state: SessionState, options: BatchOptions) -> None:
        pass

    def phase_started(self, candidate: Candidate, worker: int) -> None:
        pass

    def phase_finished(self, outcome: DrainOutcome, state: SessionState, notes: list[str]) -> None:
        pass

    def progress(self, done: int, planned: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def finished(self, state: SessionState) -> None:
        pass


# --- the engine -------------------------------------------------------------------------------------------


@dataclass
class _Running:
    """A phase handed to a worker: its claim, deadline and next heartbeat."""

    candidate: Candidate
    claim: leases.Claim
    started: float
    deadline: float
    next_heartbeat: float


class BatchDrain:
    """Drains phases until the batch is done, a stop rule fires, or nothing eligible is left.

    The one place of the drain's policy: triage and ordering, stop rules (batch size, zero yield, time limit),
    waiting for other drains' leases, the session and its owner lease, outcomes (timeouts with the telemetry
    they really wrote), deadlines and interruption. Where phases run is the ``executor``'s business (see
    ``batch_workers``): the CLI passes killable processes, the Prefect flow task runs.
    """

    def __init__(
        self,
        options: BatchOptions,
        *,
        database: Database,
        executor: DrainExecutor | None = None,
        reporter: DrainReporter | None = None,
        clock: Callable[[], float] = time.monotonic,
        handle_signals: bool = True,
    ) -> None:
        options.validate()
        self.options = options
        self.database = database
        self.executor: DrainExecutor = executor or ProcessExecutor(options.workers)
        if self.executor.workers != options.workers:
            raise ValueError(f"the executor has {self.executor.workers} slots, the options ask for {options.workers}")
        self.reporter: DrainReporter = reporter or NullReporter()
        self.db_id = database.db_id
        self.clock = clock
        self.handle_signals = handle_signals
        self.limits = options.limits()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.store = SessionStore(database, owner=self.owner, lease_seconds=options.lease_seconds)
        self.provider_concurrency = options.resolved_provider_concurrency()
        self.state: SessionState | None = None
        self.stop_reason: str | None = None
        self.running: dict[int, _Running] = {}
        self.planned = 0
        self._interrupt_signal: int | None = None
        self._old_handlers: dict[int, Any] = {}
        self._started_at = 0.0
        self._next_session_renewal = 0.0

    # --- public ------------------------------------------------------------------------------------

    def run(self) -> SessionState:
        """Drain; returns the finished session. Raises ``DrainInterrupted`` after a clean Ctrl-C stop."""
        self._started_at = self.clock()
        try:
            state = self._open_session()
        except BaseException:
            self.executor.close()
            raise
        self.state = state
        self._next_session_renewal = self.clock() + self.options.lease_seconds / 3
        if self.handle_signals:
            self._install_signal_handlers()
        self.reporter.started(state, self.options)
        exhausted = exhausted_note(self._candidates())
        if exhausted:
            self.reporter.message(exhausted)
        try:
            self._loop(state)
            if self._interrupt_signal is not None:
                self._interrupt(state)
            state.status = STATUS_COMPLETED
            state.completed_at = utcnow()
            state.stop_reason = self.stop_reason or STOP_NO_PHASES
            self.store.save(state)
            self.reporter.progress(state.total_processed, state.total_processed)
            self.reporter.finished(state)
            return state
        except DrainInterrupted:
            raise
        except KeyboardInterrupt:  # no handler installed (not the main thread, or a front end's choice)
            self._interrupt_signal = self._interrupt_signal or signal.SIGINT
            self._interrupt(state)
            raise
        except Exception as exc:
            self._abort(state, exc)
            raise
        except BaseException as exc:  # e.g. the orchestrator's own termination signal: give everything back
            self._abort(state, exc, status=STATUS_INTERRUPTED)
            raise
        finally:
            self.executor.close()
            self._restore_signal_handlers()

    def elapsed_seconds(self) -> float:
        return self.clock() - self._started_at

    # --- session ---------------------------------------------------------------------------------------

    def _open_session(self) -> SessionState:
        params = self.options.to_params()
        params["provider_concurrency"] = self.provider_concurrency
        params["process"] = process_marker()
        opened_at = utcnow().isoformat(timespec="seconds")
        for session_id, expired in self.store.mark_abandoned(noticed_by=self.owner):
            self.reporter.message(f"session {session_id} was abandoned by its drain ({abandoned_reason(expired)}); "
                                  "marked abandoned, --resume continues it")
        if self.options.resume:
            previous = self.store.claim_resumable()
            if previous is not None:
                taken = (previous.params.get("taken_over") or [{}])[-1]
                previous.status = STATUS_RUNNING
                previous.params = {**previous.params, "process": process_marker(), "resumed": True}
                previous.batch_size = self.options.batch_size
                how = (f" (taken over from its dead drain: owner lease expired at {taken.get('lease_expired_at')})"
                       if str(taken.get("at", "")) >= opened_at else "")
                self.reporter.message(
                    f"resuming session {previous.session_id}{how}: {previous.total_processed} processed, "
                    f"{previous.total_success} succeeded, {previous.total_failed} failed"
                )
                self.store.save(previous)
                return previous
            self.reporter.message("no unfinished session to resume; starting a new one")
        state = SessionState(
            session_id=new_session_id(), batch_size=self.options.batch_size, db_id=self.db_id, params=params
        )
        self.store.save(state)
        return state

    def _record(self, state: SessionState, outcome: DrainOutcome) -> None:
        notes = state.record(outcome, self.limits)
        self.store.save(state)
        self._next_session_renewal = self.clock() + self.options.lease_seconds / 3
        self.reporter.phase_finished(outcome, state, notes)
        self._set_planned(state, self.planned)
        limit = self.options.max_consecutive_zero_yield
        if limit and self.options.telemetry and state.consecutive_zero_yield >= limit and not self.stop_reason:
            self.stop_reason = f"{STOP_ZERO_YIELD} ({state.consecutive_zero_yield} phases without telemetry)"
            self.reporter.message(f"[STOP] {self.stop_reason}")

    def _set_planned(self, state: SessionState, planned: int) -> None:
        planned = max(planned, state.total_processed + len(self.running))
        self.planned = planned
        self.reporter.progress(state.total_processed, planned)

    # --- the loop --------------------------------------------------------------------------------------

    def _loop(self, state: SessionState) -> None:
        deadline = None
        if self.options.max_total_minutes:
            deadline = self._started_at + self.options.max_total_minutes * 60
        while self._interrupt_signal is None:
            if not self.stop_reason:
                if deadline is not None and self.clock() >= deadline:
                    self.stop_reason = STOP_TIME_LIMIT
                elif state.total_processed >= state.batch_size:
                    self.stop_reason = STOP_BATCH_SIZE
            wait_hint: float | None = None
            if not self.stop_reason:
                dispatched, wait_hint = self._dispatch(state)
                if not dispatched and not self.running and not self.executor.starting() and wait_hint is None:
                    self.stop_reason = STOP_NO_PHASES
            if self.stop_reason and not self.running:
                return
            for completion in self.executor.wait(self._wait_timeout(wait_hint)):
                self._complete(state, completion)
            self._enforce_deadlines(state)
            self._heartbeat(state)

    def _owner(self, slot: int) -> str:
        assert self.state is not None
        return f"{socket.gethostname()}:{os.getpid()}:{self.state.session_id}:w{slot}"

    def _dispatch(self, state: SessionState) -> tuple[bool, float | None]:
        """Claim phases for idle slots. Returns (anything dispatched, seconds to wait for foreign leases)."""
        room = state.batch_size - state.total_processed - len(self.running)
        if room <= 0 or len(self.running) >= self.executor.workers:
            return False, None
        candidates = self._candidates()
        view = state.view()
        in_flight = {r.candidate.key for r in self.running.values()}
        eligible = order_candidates(
            (c for c in candidates if c.key not in in_flight), view, self.limits,
            skip_run_prefixes=self.options.skip_run_prefixes,
        )
        self._set_planned(state, min(state.batch_size, state.total_processed + len(self.running) + len(eligible)))
        if not eligible:
            if self.running or self.executor.starting():
                return False, None
            return False, self._foreign_lease_wait() if self.options.wait_for_leases else None
        skipped: set[tuple[str, str]] = set()
        dispatched = False
        for slot in self.executor.idle_slots(min(room, len(eligible))):
            if room <= 0:
                break
            ordered = order_candidates(
                (c for c in eligible if c.key not in skipped),
                view,
                self.limits,
                in_flight=in_flight,
                skip_run_prefixes=self.options.skip_run_prefixes,
            )
            claimed = None
            for candidate in ordered:
                with self.database.session() as db:
                    claim = leases.claim_phase(
                        db,
                        candidate.run_id,
                        candidate.phase_id,
                        self._owner(slot),
                        states=self.options.states,
                        lease_seconds=self.options.lease_seconds,
                    )
                if claim is not None:
                    claimed = (candidate, claim)
                    break
                skipped.add(candidate.key)  # another drain took it; try the next one
            if claimed is None:
                break
            candidate, claim = claimed
            now = self.clock()
            self.running[slot] = _Running(
                candidate=candidate,
                claim=claim,
                started=now,
                deadline=now + self.options.phase_timeout_seconds,
                next_heartbeat=now + self.options.lease_seconds / 3,
            )
            in_flight.add(candidate.key)
            self.executor.submit(
                slot,
                PhaseJob(
                    candidate.run_id,
                    candidate.phase_id,
                    claim,
                    self.database.ref(),
                    lease_seconds=self.options.lease_seconds,
                    provider_concurrency=self.provider_concurrency,
                    telemetry=self.options.telemetry,
                ),
            )
            self.reporter.phase_started(candidate, slot)
            dispatched = True
            room -= 1
        if dispatched or self.running or self.executor.starting():
            return dispatched, None
        return False, self._foreign_lease_wait() if self.options.wait_for_leases else None

    def _scope(self, query: sa.Select[Any]) -> sa.Select[Any]:
        if self.options.run_ids:
            query = query.where(Phase.run_id.in_(self.options.run_ids))
        return query

    def _candidates(self) -> list[Candidate]:
        return eligible_candidates(self.database, self.options)

    def _foreign_lease_wait(self) -> float | None:
        """Seconds until the next lease another drain holds in scope may expire; None if there is none."""
        now = utcnow()
        query = self._scope(
            sa.select(sa.func.min(Phase.lease_expires_at)).where(leases.live_lease(now))
        )
        with self.database.session() as db:
            earliest = db.execute(query).scalar_one_or_none()
        if earliest is None:
            return None
        wait: float = max(0.05, min((earliest - now).total_seconds() + 0.05, self.options.lease_seconds))
        return wait

    def _wait_timeout(self, hint: float | None) -> float | None:
        """Until the next deadline, heartbeat or session renewal (or ``hint``); None: only a result can help."""
        now = self.clock()
        timeouts = [r.deadline - now for r in self.running.values()]
        timeouts += [r.next_heartbeat - now for r in self.running.values()]
        if hint is not None:
            timeouts.append(hint)
        if self.running or hint is not None or self.executor.starting():
            timeouts.append(self._next_session_renewal - now)
        return max(0.0, min(timeouts)) if timeouts else None

    def _complete(self, state: SessionState, completion: Completion) -> None:
        running = self.running.pop(completion.slot, None)
        if running is None:
            return
        if completion.message is None:
            self._on_worker_lost(state, running, completion.exit_signal)
            return
        self._record(state, self._outcome_from_message(running, completion.message))

    def _outcome_from_message(self, running: _Running, message: PhaseMessage) -> DrainOutcome:
        duration = self.clock() - running.started
        if isinstance(message, PhaseDone):
            return outcome_from_phase_result(running.candidate, running.claim, message.result, duration=duration)
        if isinstance(message, PhaseLeaseLost):
            return make_outcome(
                running.candidate,
                running.claim,
                final_state=FINAL_LEASE_LOST,
                success=False,
                returncode=RC_LEASE_LOST,
                error_message=message.message,
                failure_stage=STAGE_EXECUTION,
                telemetry_events=self._events_of_attempt(running.claim, only_first=True),
                duration=duration,
            )
        # The executor raised: the phase is still ours, so it is failed here with the exception as reason.
        error = message.message or "executor error"
        final_state = PhaseState.FAILED
        try:
            with self.database.session() as db:
                leases.finish_phase(
                    db, running.claim.run_id, running.claim.phase_id, running.claim.owner, final_state, failure_reason=error
                )
        except leases.LeaseLostError as exc:
            final_state, error = FINAL_LEASE_LOST, f"{error}; {exc.one_line()}"
        return make_outcome(
            running.candidate,
            running.claim,
            final_state=final_state,
            success=False,
            returncode=RC_LEASE_LOST if final_state == FINAL_LEASE_LOST else RC_FAILED,
            error_message=error,
            failure_stage=message.stage or STAGE_EXECUTION,
            telemetry_events=self._events_of_attempt(running.claim),
            duration=duration,
        )

    def _events_of_attempt(self, claim: leases.Claim, *, only_first: bool = False) -> int:
        return count_attempt_events(self.database, claim, only_first=only_first)

    def _on_worker_lost(self, state: SessionState, running: _Running, signum: int | None) -> None:
        """The executor process died mid-phase: release the phase (no outcome of its own) and record it."""
        events = self._events_of_attempt(running.claim)
        self._give_back(running.claim)
        how = f"signal {signum}" if signum else "an unexpected exit"
        outcome = make_outcome(
            running.candidate,
            running.claim,
            final_state=FINAL_WORKER_LOST,
            success=False,
            returncode=returncode_for_signal(signum) if signum else RC_FAILED,
            error_message=f"executor process died ({how}) while running the phase; phase released",
            failure_stage=STAGE_EXECUTION,
            telemetry_events=events,
            duration=self.clock() - running.started,
        )
        self._record(state, outcome)

    def _give_back(self, claim: leases.Claim) -> bool:
        """Release a held lease, returning the phase to the state it was claimed from."""
        back_to = claim.initial_state if claim.initial_state in DRAINABLE_STATES else PhaseState.QUEUED
        with self.database.session() as db:
            return leases.release(db, claim.run_id, claim.phase_id, claim.owner, state=back_to)

    def _enforce_deadlines(self, state: SessionState) -> None:
        """A phase past its timeout: stop it (killed, or abandoned by a task-run executor), take its lease back
        by finishing it TIMEOUT (so a late result is rejected), and record the telemetry it really wrote."""
        now = self.clock()
        for index, running in list(self.running.items()):
            if now < running.deadline:
                continue
            self.executor.cancel(index)
            del self.running[index]
            timeout = self.options.phase_timeout_seconds
            error = f"phase timed out after {timeout:g}s (lease taken back)"  # one fingerprint for every executor
            how = "executor process killed" if self.executor.hard_kill else "task run abandoned (it cannot be killed)"
            self.reporter.message(f"{running.claim.run_id}/{running.claim.phase_id}: timed out; {how}")
            final_state = PhaseState.TIMEOUT
            try:
                with self.database.session() as db:
                    leases.finish_phase(
                        db, running.claim.run_id, running.claim.phase_id, running.claim.owner, final_state, failure_reason=error
                    )
            except leases.LeaseLostError:
                # The executor finished (or lost the lease) just before it was stopped: keep what the DB says.
                final_state = self._phase_state(running.claim) or FINAL_LEASE_LOST
            outcome = make_outcome(
                running.candidate,
                running.claim,
                final_state=final_state,
                success=False,
                returncode=RC_TIMEOUT,
                error_message=error,
                failure_stage=None,
                telemetry_events=self._events_of_attempt(running.claim),  # counted after the lease is gone
                duration=now - running.started,
            )
            self._record(state, outcome)

    def _phase_state(self, claim: leases.Claim) -> str | None:
        with self.database.session() as db:
            return db.execute(
                sa.select(Phase.state).where(Phase.run_id == claim.run_id, Phase.phase_id == claim.phase_id)
            ).scalar_one_or_none()

    def _heartbeat(self, state: SessionState) -> None:
        now = self.clock()
        if now >= self._next_session_renewal:
            self.store.renew(state.session_id)  # SessionLostError if another drain took the session over
            self._next_session_renewal = now + self.options.lease_seconds / 3
        for index, running in list(self.running.items()):
            if now < running.next_heartbeat:
                continue
            running.next_heartbeat = now + self.options.lease_seconds / 3
            try:
                with self.database.session() as db:
                    leases.heartbeat(
                        db,
                        running.claim.run_id,
                        running.claim.phase_id,
                        running.claim.owner,
                        lease_seconds=self.options.lease_seconds,
                    )
            except leases.LeaseLostError as exc:
                # Still running? Then its result would be rejected anyway; stop spending tokens on it.
                if self.executor.result_ready(index):
                    continue  # it just reported; the next wait returns the result
                self.executor.cancel(index)
                del self.running[index]
                outcome = make_outcome(
                    running.candidate,
                    running.claim,
                    final_state=FINAL_LEASE_LOST,
                    success=False,
                    returncode=RC_LEASE_LOST,
                    error_message=exc.one_line(),
                    failure_stage=STAGE_EXECUTION,
                    telemetry_events=self._events_of_attempt(running.claim, only_first=True),
                    duration=now - running.started,
                )
                self._record(state, outcome)

    # --- interruption ----------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._old_handlers.items():
            with contextlib.suppress(Exception):
                signal.signal(signum, handler)
        self._old_handlers.clear()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._interrupt_signal is None:
            self._interrupt_signal = signum
        self.executor.wake()

    def _give_back_running(self, state: SessionState) -> None:
        """Stop every running phase and release its lease; each is recorded as given back (not counted)."""
        for index, running in list(self.running.items()):
            self.executor.cancel(index)
            released = self._give_back(running.claim)
            self.running.pop(index)
            outcome = make_outcome(
                running.candidate,
                running.claim,
                final_state=FINAL_INTERRUPTED,
                success=False,
                returncode=RC_INTERRUPTED,
                error_message="interrupted; phase released" if released else "interrupted; lease already gone",
                failure_stage=None,
                telemetry_events=self._events_of_attempt(running.claim),
                duration=self.clock() - running.started,
            )
            state.record(outcome, self.limits)

    def _interrupt(self, state: SessionState) -> None:
        """Stop running phases, give them back, save the session as resumable, raise."""
        self._give_back_running(state)
        state.status = STATUS_INTERRUPTED
        state.stop_reason = "interrupted"
        self.store.save(state)
        self.reporter.finished(state)
        name = "SIGTERM" if self._interrupt_signal == signal.SIGTERM else "Ctrl-C"
        error = DrainInterrupted(
            f"interrupted ({name}): session {state.session_id} saved, running phases released",
            hint="continue with --resume",
            exit_code=143 if self._interrupt_signal == signal.SIGTERM else 130,
        )
        error.state = state
        error.wall_seconds = self.elapsed_seconds()
        raise error

    def _abort(self, state: SessionState, exc: BaseException, *, status: str = STATUS_FAILED) -> None:
        """An unexpected error: give every held phase back and leave the session resumable (best effort)."""
        with contextlib.suppress(Exception):
            self._give_back_running(state)
        with contextlib.suppress(Exception):
            state.status = status
            state.stop_reason = f"error: {type(exc).__name__}: {exc}"[:2000]
            self.store.save(state)


# --- preflight ---------------------------------------------------------------------------------------------


def eligible_candidates(database: Database, options: BatchOptions) -> list[Candidate]:
    """Phases in the drained states, plus EXECUTING phases whose lease expired (a dead drain's)."""
    now = utcnow()
    query = sa.select(Phase.run_id, Phase.phase_id, Phase.phase_index, Phase.state, Phase.last_failure_reason,
                      Phase.builder_attempts, Phase.max_builder_attempts).where(leases.claimable(options.states, now))
    if options.run_ids:
        query = query.where(Phase.run_id.in_(options.run_ids))
    with database.session() as db:
        rows = db.execute(query).all()
    return [
        Candidate(run_id, phase_id, int(index or 0), str(state), reason, int(used or 0), limit)
        for run_id, phase_id, index, state, reason, used, limit in rows
        if not skip_run_prefix(run_id, options.skip_run_prefixes)
    ]


def exhausted_note(candidates: Sequence[Candidate]) -> str | None:
    """One line naming the phases in scope a drain leaves alone because they used their ``max_builder_attempts``
    (``Candidate.exhausted``), and how to try them again; None if there are none."""
    exhausted = [c for c in candidates if c.exhausted]
    if not exhausted:
        return None
    shown = ", ".join(f"{c.run_id}/{c.phase_id} ({c.attempts_used} of {c.max_attempts})" for c in exhausted[:3])
    more = f" and {len(exhausted) - 3} more" if len(exhausted) > 3 else ""
    return (f"{len(exhausted)} phase(s) not drained: {shown}{more} used its max_builder_attempts "
            "over earlier sessions (a phase that fails week after week is not retried at the provider's cost); "
            "to retry, drain the phase by hand (`autopack drain one --run-id R --phase-id P`) or requeue it "
            "(`POST /runs/R/phases/P/state` with state QUEUED)")


def make_outcome(
    candidate: Candidate,
    claim: leases.Claim,
    *,
    final_state: str,
    success: bool,
    returncode: int,
    error_message: str | None,
    failure_stage: str | None,
    telemetry_events: int,
    duration: float,
    llm_calls: int = 0,
    reached_llm_boundary: bool = False,
    recorded_call: bool = False,
) -> DrainOutcome:
    """The drain's record of one attempt; the zero-yield reason comes from the structured result."""
    timed_out = returncode in (RC_TIMEOUT, 143)
    return DrainOutcome(
        run_id=candidate.run_id,
        phase_id=candidate.phase_id,
        phase_index=candidate.phase_index,
        attempt_index=claim.attempt_index,
        worker=claim.owner,
        initial_state=claim.initial_state,
        final_state=final_state,
        success=success,
        error_message=error_message,
        returncode=returncode,
        failure_stage=failure_stage,
        telemetry_events=telemetry_events,
        llm_calls=llm_calls,
        reached_llm_boundary=reached_llm_boundary,
        zero_yield_reason=zero_yield_reason(
            telemetry_events=telemetry_events,
            success=success,
            timed_out=timed_out,
            reached_llm_boundary=reached_llm_boundary,
            failure_stage=failure_stage,
        ),
        duration_seconds=round(duration, 3),
        recorded_call=recorded_call,
    )


def outcome_from_phase_result(
    candidate: Candidate, claim: leases.Claim, result: PhaseReport, *, duration: float
) -> DrainOutcome:
    """An outcome from the executor's result (``execute_phase``'s ``PhaseResult``, as ``run_job`` passes it on)."""
    success = bool(result.success) and result.final_state == PhaseState.COMPLETE
    return make_outcome(
        candidate, claim, final_state=result.final_state, success=success,
        returncode=RC_SUCCESS if success else RC_FAILED,
        error_message=None if success else (result.error_message or "phase failed (no reason given)"),
        failure_stage=None if success else result.failure_stage,
        telemetry_events=result.telemetry_events, llm_calls=result.llm_calls,
        reached_llm_boundary=result.reached_llm_boundary, duration=duration, recorded_call=result.recorded_call,
    )


def count_attempt_events(database: Database, claim: leases.Claim, *, only_first: bool = False) -> int:
    """Telemetry rows written under this claim (its attempt and any escalated retry it reserved)."""
    ev = TokenEstimationV2Event
    query = sa.select(sa.func.count()).where(ev.run_id == claim.run_id, ev.phase_id == claim.phase_id)
    if only_first:
        query = query.where(ev.attempt_index == claim.attempt_index)
    else:
        query = query.where(ev.attempt_index >= claim.attempt_index)
    with database.session() as db:
        return int(db.execute(query).scalar_one())


@dataclass(frozen=True)
class CallSample:
    """One telemetry row of an attempt, as a drain's log line shows it."""

    attempt_index: int
    predicted: int
    actual: int
    ceiling: int | None
    truncated: bool


def attempt_samples(database: Database, claim: leases.Claim) -> list[CallSample]:
    """The telemetry rows written under this claim, in order (for per-phase log lines)."""
    ev = TokenEstimationV2Event
    query = (
        sa.select(ev.attempt_index, ev.predicted_output_tokens, ev.actual_output_tokens, ev.actual_max_tokens, ev.truncated)
        .where(ev.run_id == claim.run_id, ev.phase_id == claim.phase_id, ev.attempt_index >= claim.attempt_index)
        .order_by(ev.attempt_index, ev.call_index)
    )
    with database.session() as db:
        return [CallSample(int(a), int(p), int(o), None if c is None else int(c), bool(t)) for a, p, o, c, t in db.execute(query)]


def check_telemetry_enabled(telemetry: bool, enabled: bool) -> None:
    if telemetry and not enabled:
        raise RefusedError(
            "TELEMETRY_DB_ENABLED is off: a drain would spend tokens and record no samples",
            hint="set TELEMETRY_DB_ENABLED=1, or pass --no-telemetry to drain without collecting",
        )


def check_executor_available(executor: ExecutorRef) -> None:
    if not isinstance(executor, str):
        return
    import importlib.util

    module_name = executor.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(f"the phase executor module {module_name} is not installed")



def check_api_identity(api_url: str, db_id: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``/health`` and refuse unless that server uses this very database (``DB_MISMATCH``, exit 3)."""
    import httpx

    from autopack.api_key_file import KEY_HINT, client_headers
    from autopack.errors import DbIdentityMismatchError

    url = api_url.rstrip("/") + "/health"
    shown = strip_url_credentials(api_url)  # never echo a user:password@ part
    try:
        response = httpx.get(url, timeout=timeout, headers=client_headers())  # the key, if this machine has one
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise RefusedError(
            f"cannot reach the API server at {shown}: {type(exc).__name__}",
            hint="start it with `autopack api serve` (same DATABASE_URL) or drop --api-url",
        ) from exc
    if not isinstance(body, dict) or body.get("service") != "autopack":
        raise RefusedError(f"{shown} is not an autopack API server", hint="check --api-url")
    server_db_id = body.get("db_id")
    if not body.get("db_ok") or not server_db_id:
        raise RefusedError(
            f"the API server at {shown} cannot read its database (status {body.get('status')})",
            hint="run `autopack db upgrade` for the server's DATABASE_URL",
        )
    if server_db_id != db_id:
        raise DbIdentityMismatchError(
            f"DB_MISMATCH: the API server at {shown} uses database {server_db_id}, this drain uses {db_id}",
            hint="start the server with the same DATABASE_URL as the drain",
        )
    if body.get("key_accepted") is False:
        raise RefusedError(f"the API server at {shown} does not accept this machine's API key", hint=KEY_HINT)
    return body


@dataclass
class DrainReport:
    state: SessionState
    wall_seconds: float

    @property
    def exit_code(self) -> int:
        return 1 if self.state.any_failed else 0

    def summary(self) -> DrainSummary:
        state = self.state
        return DrainSummary(
            session_id=state.session_id, processed=state.total_processed, success=state.total_success,
            failed=state.total_failed, timeouts=state.total_timeouts, telemetry_events=state.total_telemetry_events,
            stop_reason=state.stop_reason, wall_seconds=round(self.wall_seconds, 3),
        )


class DrainSummary(BaseModel):
    """What one drain session did, in numbers: the ``batch-drain`` flow's result."""

    session_id: str
    processed: int
    success: int
    failed: int
    timeouts: int
    telemetry_events: int
    stop_reason: str | None
    wall_seconds: float

    def message(self) -> str:
        """The flow run's state message: what the drain did, in one line."""
        return (f"{self.processed} phases: {self.success} ok, {self.failed} failed ({self.timeouts} timeouts), "
                f"{self.telemetry_events} telemetry rows; stopped: {self.stop_reason or 'not stopped'}")


def run_batch_drain(
    params: DrainParams,
    database: Database,
    *,
    executor: ExecutorRef = DEFAULT_EXECUTOR,
    runner: DrainExecutor | None = None,
    reporter: DrainReporter | None = None,
    isolation: str = "process",
    handle_signals: bool = True,
) -> DrainReport:
    """Preflight (telemetry on, runs present, API identity, executor present), then drain ``database``
    (opened and guarded by the caller: ``autopack.db.handle.open_database``).

    ``params``: the drain (``BatchOptions`` for what only the command line sets). ``executor`` is the phase
    function; ``runner`` is where it runs (default: ``isolation``'s executor).
    """
    from autopack.config import get_settings

    options = BatchOptions.of(params)
    options.validate()
    check_telemetry_enabled(options.telemetry, get_settings().telemetry_db_enabled)
    if options.run_ids:  # a --run-id that is not here drains nothing: say so instead of exiting 0
        with database.session() as session:
            require_runs(session, options.run_ids)
    if options.api_url:
        check_api_identity(options.api_url, str(database.db_id))
    check_executor_available(executor)
    if options.max_consecutive_zero_yield and not options.telemetry and reporter is not None:
        reporter.message("--no-telemetry: --max-consecutive-zero-yield is ignored (every phase yields 0)")
    drain = BatchDrain(
        options,
        database=database,
        executor=runner or make_executor(isolation, options.workers, executor),
        reporter=reporter,
        handle_signals=handle_signals,
    )
    state = drain.run()
    return DrainReport(state=state, wall_seconds=drain.elapsed_seconds())
