"""``batch-drain``: the batch drain's engine with every phase a Prefect task run.

The policy — triage and ordering, stop rules, waiting for other drains' leases, the session, outcomes,
deadlines — is ``autopack.execution.batch.BatchDrain``, the very engine ``autopack drain batch`` runs. This
module only supplies where phases run (``TaskRunExecutor``: a ``drain-phase`` task run per phase, on any
Prefect task runner — a bounded ``ThreadPoolTaskRunner`` by default; results come back through the task runs'
futures) and what the UI shows (``PrefectReporter``: a progress artifact, the summary artifact, one log line
per phase; the ``drain-phase`` task runs log nothing, their state messages carry each phase's details).

Provider calls go through the provider gate (a lease on a ``provider_slots`` row of the telemetry database,
``AUTOPACK_PROVIDER_CONCURRENCY`` or the ``provider_concurrency`` parameter) — no Prefect global concurrency
limit. Retries live in one place, the provider's own loop: task runs are never retried.

A task run cannot be killed. At a phase's deadline the engine records TIMEOUT with the telemetry rows the
phase really wrote and takes its lease back, so whatever the task reports later is rejected and not counted;
the task itself goes on until its current provider call returns (it writes no telemetry after that: the phase
executor checks its lease first). Its slot is reused at once — the default thread pool has a spare thread per
worker for this — and the flow run ends only after such a task has returned. For hard kills use
``autopack drain batch``, which runs phases in processes it kills.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from typing import Any

from prefect import State, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.states import Completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from autopack.artifacts import drain_session_markdown
from autopack.db.handle import DatabaseRef, reopen_or_open
from autopack.errors import AutopackError
from autopack.execution.batch import BatchOptions, attempt_samples, run_batch_drain
from autopack.execution.batch_report import format_summary, outcome_line, phase_log_line, progress_percent
from autopack.execution.batch_workers import (
    DEFAULT_EXECUTOR,
    Completion,
    ExecutorRef,
    PhaseError,
    PhaseJob,
    PhaseMessage,
    WakePipe,
    resolve_executor,
    run_job,
)
from autopack.execution.sessions import STATUS_COMPLETED, DrainOutcome, SessionState
from autopack.execution.triage import Candidate
from autopack.params import DrainParams, ExpectDbId
from flows.logs import quiet_run_logs
from flows.states import refusal

#: The phase function every ``drain-phase`` task runs (tests point it at a fake).
PHASE_EXECUTOR: ExecutorRef = DEFAULT_EXECUTOR


@task(
    name="drain-phase",
    task_run_name="{job.run_id}/{job.phase_id}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=0,
)
def drain_phase(job: PhaseJob, executor_ref: ExecutorRef = DEFAULT_EXECUTOR) -> State:
    """Run one claimed phase; its state message says what happened (tokens, ceilings). Never raises.

    It logs nothing: the flow logs one line per phase (``PrefectReporter.phase_finished``).
    """
    quiet_run_logs()  # also in a task runner's own processes
    message = run_job(resolve_executor(executor_ref), job)
    try:
        samples = attempt_samples(job.database.open(), job.claim)
    except Exception:  # noqa: BLE001 - the line is informative only; the drain counts rows itself
        samples = []
    line = phase_log_line(job.run_id, job.phase_id, message, samples)
    return Completed(message=line[:500], data=message)


def _message_of(future: PrefectFuture[Any]) -> PhaseMessage:
    try:
        value: Any = future.result(raise_on_failure=False)
    except BaseException as exc:  # noqa: BLE001 - a crashed or cancelled task run is an executor error
        value = exc
    if isinstance(value, PhaseMessage):
        return value
    return PhaseError(f"the task run ended without a result: {value!r}"[:4000])


class TaskRunExecutor:
    """``DrainExecutor`` whose slots are Prefect task runs on ``task_runner`` (cannot be killed; see above)."""

    hard_kill = False

    def __init__(
        self, workers: int, executor_ref: ExecutorRef = DEFAULT_EXECUTOR, task_runner: TaskRunner[Any] | None = None
    ) -> None:
        self.workers = workers
        self.executor_ref = executor_ref
        self.task_runner = task_runner or ThreadPoolTaskRunner(max_workers=2 * workers)
        self._futures: dict[int, PrefectFuture[Any]] = {}
        self._finished: deque[tuple[int, PrefectFuture[Any]]] = deque()
        self._wake = WakePipe()
        self._open = False

    def idle_slots(self, wanted: int) -> list[int]:
        if not self._open:
            self.task_runner.__enter__()
            self._open = True
        return [slot for slot in range(self.workers) if slot not in self._futures]

    def starting(self) -> bool:
        return False

    def submit(self, slot: int, job: PhaseJob) -> None:
        future = self.task_runner.submit(drain_phase, parameters={"job": job, "executor_ref": self.executor_ref})
        self._futures[slot] = future
        future.add_done_callback(functools.partial(self._on_done, slot))

    def _on_done(self, slot: int, future: PrefectFuture[Any]) -> None:
        self._finished.append((slot, future))  # deque.append is thread-safe
        self._wake.wake()

    def wait(self, timeout: float | None) -> list[Completion]:
        if not self._finished and (self._futures or timeout is not None):
            self._wake.wait(timeout)
        self._wake.clear()
        completions = []
        while self._finished:
            slot, future = self._finished.popleft()
            if self._futures.get(slot) is not future:
                continue  # abandoned at its deadline: its late result is not counted
            del self._futures[slot]
            completions.append(Completion(slot, _message_of(future)))
        return completions

    def result_ready(self, slot: int) -> bool:
        future = self._futures.get(slot)
        return future is not None and any(done is future for _, done in list(self._finished))

    def cancel(self, slot: int) -> None:
        self._futures.pop(slot, None)  # abandon: a task run cannot be stopped; the engine took its lease back

    def wake(self) -> None:
        self._wake.wake()

    def close(self) -> None:
        try:
            if self._open:
                self.task_runner.__exit__(None, None, None)  # waits for abandoned task runs to return
                self._open = False
        finally:
            self._wake.close()


class PrefectReporter:
    """The drain in the Prefect UI: ``batch-drain-progress`` (done of eligible, 100 % at the end), the
    ``batch-drain-summary`` artifact, and a flow log line per phase and per triage decision.

    The progress artifact is updated at most every ``progress_interval`` seconds (each update is a call to the
    Prefect API from the drain's own thread, which also dispatches the phases) and once more at the end.
    """

    def __init__(self, progress_interval: float = 1.0) -> None:
        self.logger = get_run_logger()
        self.progress_interval = progress_interval
        self._progress_id: Any = None
        self._percent = -1.0
        self._updated_at = float("-inf")
        self._latest = (0, 0)

    def started(self, state: SessionState, options: BatchOptions) -> None:
        self._progress_id = create_progress_artifact(
            0.0, key="batch-drain-progress",
            description=f"drain session {state.session_id}: phases done of those eligible (at most {state.batch_size})",
        )
        scope = ", ".join(options.run_ids) if options.run_ids else "all runs"
        self.logger.info(
            "drain session %s: up to %d phases from %s (states %s), %d worker(s), phase timeout %gs",
            state.session_id, state.batch_size, scope, ",".join(options.states), options.workers,
            options.phase_timeout_seconds,
        )

    def phase_started(self, candidate: Candidate, worker: int) -> None:
        self.logger.debug("slot %d: %s/%s (%s)", worker, candidate.run_id, candidate.phase_id, candidate.state)

    def phase_finished(self, outcome: DrainOutcome, state: SessionState, notes: list[str]) -> None:
        self.logger.info("%s", outcome_line(outcome, state))
        for note in notes:
            self.logger.info("%s", note)

    def progress(self, done: int, planned: int, *, final: bool = False) -> None:
        self._latest = (done, planned)
        percent = progress_percent(done, planned)
        now = time.monotonic()
        if self._progress_id is None or percent == self._percent:
            return
        if final or now - self._updated_at >= self.progress_interval:
            update_progress_artifact(self._progress_id, percent)
            self._percent, self._updated_at = percent, now

    def message(self, text: str) -> None:
        self.logger.info("%s", text)

    def finished(self, state: SessionState) -> None:
        done, planned = (1, 1) if state.status == STATUS_COMPLETED else self._latest  # interrupted: where it stopped
        self.progress(done, planned, final=True)
        create_markdown_artifact(key="batch-drain-summary", markdown=drain_session_markdown(state),
                                 description=f"drain session {state.session_id}")
        self.logger.info("%s", format_summary(state))


@flow(name="batch-drain")
def batch_drain(
    params: DrainParams = DrainParams(), expect_db_id: ExpectDbId = None, database: DatabaseRef | None = None
) -> State:
    """Drain phases with sample-first triage; ``params`` is the drain (``autopack.params.DrainParams``).

    ``expect_db_id`` and ``database`` are not parameters of the drain but of where it runs: the pipeline passes
    the database its guard verified (not guarded again); a deployment leaves both empty, and the settings'
    database is guarded here (``AUTOPACK_EXPECTED_DB_ID``).
    """
    quiet_run_logs()
    try:
        report = run_batch_drain(
            params,
            reopen_or_open(database, expect_db_id=expect_db_id),
            executor=PHASE_EXECUTOR,
            runner=TaskRunExecutor(params.workers, PHASE_EXECUTOR),
            reporter=PrefectReporter(),
            handle_signals=False,
        )
    except AutopackError as exc:  # e.g. the wrong database: one line, no traceback
        return refusal(exc)
    summary = report.summary()
    return Completed(message=summary.message(), data=summary)
