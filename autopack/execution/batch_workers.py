"""Where a batch drain's phases run: the executor interface, and its process and inline implementations.

The drain (``batch.BatchDrain``) decides everything — what runs next, deadlines, leases, what is recorded; an
executor only runs claimed phases on its ``workers`` slots, hands back each phase's message (``run_job``'s
dict) through ``wait``, and stops a slot when told. ``autopack drain batch`` uses ``ProcessExecutor``; the
Prefect flow uses a task-runner executor (``flows/drain.py``); tests of the drain rules use ``InlineExecutor``.

``ProcessExecutor``: a thread cannot be stopped, so the phase timeout the original only enforced on its
subprocess is enforced here the same way, but without paying a Python start-up per phase: each slot is a
long-lived child (multiprocessing *spawn*, so it shares no state with the drain) that runs one phase at a time.
On a timeout the drain kills the child (SIGKILL) and a fresh one starts for the next phase. A child never
outlives the drain: it asks the kernel for SIGKILL when its parent dies (Linux) and otherwise watches its
parent id.

``run_job`` is what every executor runs for one phase: the phase function, with the provider behind the
provider gate (``provider_gate``) when ``AUTOPACK_PROVIDER_CONCURRENCY`` is above 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_connections
from typing import TYPE_CHECKING, Any, Protocol, cast

from autopack.errors import AutopackError, ConfigError, InputError, ProviderError
from autopack.execution.leases import Claim, LeaseLostError
from autopack.execution.triage import STAGE_BEFORE_LLM, STAGE_EXECUTION, STAGE_PROVIDER

if TYPE_CHECKING:
    from autopack.db.handle import DatabaseRef

#: The phase executor's contract (``autopack.execution.phase_runner.execute_phase``).
DEFAULT_EXECUTOR = "autopack.execution.phase_runner:execute_phase"

ExecutorRef = str | Callable[..., Any]

@dataclass(frozen=True)
class PhaseReport:
    """The executor's ``PhaseResult``, the fields the drain reads, as plain values: it crosses a process boundary,
    and an executor that leaves a field out gets its default."""

    final_state: str = "FAILED"
    success: bool = False
    attempts: int = 1
    llm_calls: int = 0
    telemetry_events: int = 0
    error_message: str | None = None
    failure_stage: str | None = None
    reached_llm_boundary: bool = False
    duration_seconds: float = 0.0
    recorded_call: bool = False  # finished from an earlier execution's recorded call (no new call)

    @classmethod
    def of(cls, result: Any) -> PhaseReport:
        default = cls()
        return cls(
            final_state=getattr(result, "final_state", default.final_state),
            success=bool(getattr(result, "success", default.success)),
            attempts=int(getattr(result, "attempts", default.attempts) or 0),
            llm_calls=int(getattr(result, "llm_calls", default.llm_calls) or 0),
            telemetry_events=int(getattr(result, "telemetry_events", default.telemetry_events) or 0),
            error_message=getattr(result, "error_message", default.error_message),
            failure_stage=getattr(result, "failure_stage", default.failure_stage),
            reached_llm_boundary=bool(getattr(result, "reached_llm_boundary", default.reached_llm_boundary)),
            duration_seconds=float(getattr(result, "duration_seconds", default.duration_seconds) or 0.0),
            recorded_call=bool(getattr(result, "recorded_call", default.recorded_call)),
        )


# --- what comes back from a phase (``run_job``), and from a starting executor process -------------------------


@dataclass(frozen=True)
class PhaseDone:
    """The executor returned: the phase's own result."""

    result: PhaseReport


@dataclass(frozen=True)
class PhaseLeaseLost:
    """The phase's lease was taken back while it ran: its result is not this drain's to record."""

    message: str


@dataclass(frozen=True)
class PhaseError:
    """The executor raised (or its task run ended without a result): the phase fails at ``stage``."""

    message: str
    stage: str = STAGE_EXECUTION


PhaseMessage = PhaseDone | PhaseLeaseLost | PhaseError


@dataclass(frozen=True)
class WorkerReady:
    """An executor process loaded the phase executor and waits for jobs."""

    pid: int


@dataclass(frozen=True)
class WorkerFatal:
    """An executor process could not load the phase executor."""

    message: str


#: An executor process that has not loaded the phase executor after this long is treated as broken.
WORKER_STARTUP_SECONDS = 180.0


@dataclass(frozen=True)
class PhaseJob:
    run_id: str
    phase_id: str
    claim: Claim
    #: The drain's verified database, reopened (not guarded again) where the phase runs.
    database: DatabaseRef
    #: The drain's lease length: each heartbeat extends the lease by this much.
    lease_seconds: float
    #: Size of the provider gate (0: no gate): the drain's, resolved once.
    provider_concurrency: int
    telemetry: bool = True


@dataclass(frozen=True)
class Completion:
    """A slot's phase ended: ``message`` is ``run_job``'s, or None when the worker died without one."""

    slot: int
    message: PhaseMessage | None
    exit_signal: int | None = None


class DrainExecutor(Protocol):
    """Runs claimed phases on ``workers`` slots; the drain decides everything else (see the module docstring)."""

    workers: int
    #: True when ``cancel`` ends the phase's execution; False when it can only abandon it (a task run).
    hard_kill: bool

    def idle_slots(self, wanted: int) -> list[int]:
        """Slots free for a job now; may start up to ``wanted`` more, which become idle later."""
        ...

    def starting(self) -> bool:
        """Some slot is starting up (work may become possible without any phase finishing)."""
        ...

    def submit(self, slot: int, job: PhaseJob) -> None: ...

    def wait(self, timeout: float | None) -> list[Completion]:
        """Block until a phase ends, ``timeout`` passes or ``wake`` is called; returns what ended."""
        ...

    def result_ready(self, slot: int) -> bool:
        """The slot's phase has ended and ``wait`` will return it."""
        ...

    def cancel(self, slot: int) -> None:
        """Stop the slot's phase: kill it, or abandon it (its late result is then never returned)."""
        ...

    def wake(self) -> None:
        """Make a blocked ``wait`` return (safe to call from a signal handler)."""
        ...

    def close(self) -> None: ...


class WakePipe:
    """A self-pipe: ``wake`` is async-signal-safe, ``fileno`` is what a ``wait`` selects on."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        return self._read

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._write, b"!")

    def wait(self, timeout: float | None) -> None:
        """Until ``wake`` was called (or had been, since the last ``clear``), at most ``timeout`` seconds."""
        select.select([self._read], [], [], timeout)

    def clear(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._read, 4096):
                pass

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


def resolve_executor(ref: ExecutorRef) -> Callable[..., Any]:
    """A callable, or ``"package.module:function"`` imported now."""
    if callable(ref):
        return ref
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    return cast("Callable[..., Any]", getattr(module, attr or "execute_phase"))


def _stage_for(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return STAGE_BEFORE_LLM
    if isinstance(exc, ProviderError):
        return STAGE_PROVIDER
    return STAGE_EXECUTION


def lease_heartbeat(job: PhaseJob) -> Callable[[], None]:
    """The executor's own heartbeat, extending the lease by the drain's lease length (not the 900 s default,
    which would keep a dead drain's phase unclaimable for 15 minutes)."""
    from autopack.execution import leases

    database = job.database.open()

    def beat() -> None:
        with database.session() as db:
            leases.heartbeat(db, job.run_id, job.phase_id, job.claim.owner, lease_seconds=job.lease_seconds)

    return beat


def gated_provider(job: PhaseJob) -> Any:
    """The settings' provider behind the provider gate, or None (no gate, or no provider: see the callee)."""
    from autopack.execution.provider_gate import gated_settings_provider

    return gated_settings_provider(job.database.open(), job.provider_concurrency)


def run_job(executor: Callable[..., Any], job: PhaseJob) -> PhaseMessage:
    """Run one claimed phase; every outcome (even a crash) comes back as a message, never an exception."""
    try:
        options: dict[str, Any] = {}
        provider = gated_provider(job)
        if provider is not None:
            options["provider"] = provider
        result = executor(
            job.run_id,
            job.phase_id,
            claim=job.claim,
            db=job.database.open(),
            telemetry=job.telemetry,
            heartbeat=lease_heartbeat(job),
            **options,
        )
        return PhaseDone(PhaseReport.of(result))
    except LeaseLostError as exc:
        return PhaseLeaseLost(exc.one_line())
    except AutopackError as exc:
        return PhaseError(f"{type(exc).__name__}: {exc.one_line()}", _stage_for(exc))
    except Exception as exc:  # the drain must survive any executor bug and record it
        return PhaseError(f"{type(exc).__name__}: {exc}"[:4000])


# --- the child process ------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Make sure this child cannot keep running a phase after the drain died (e.g. SIGKILL)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(70)
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.25)
        os._exit(70)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def child_main(conn: Connection, executor_ref: ExecutorRef, parent_pid: int) -> None:
    """Loop of an executor child: receive a job, run it, send the outcome; ``None`` ends the loop."""
    _die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group; the drain decides what happens to a running phase.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        executor = resolve_executor(executor_ref)
    except Exception as exc:
        conn.send(WorkerFatal(f"cannot load the phase executor {executor_ref!r}: {exc}"))
        return
    conn.send(WorkerReady(os.getpid()))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        conn.send(run_job(executor, job))


# --- the process executor -----------------------------------------------------------------------------

IDLE = "idle"
STARTING = "starting"
BUSY = "busy"
DEAD = "dead"


class ProcessSlot:
    """One executor child. ``connection`` is what the executor waits on; ``receive`` reads its message."""

    def __init__(self, index: int, executor_ref: ExecutorRef) -> None:
        self.index = index
        self.executor_ref = executor_ref
        self.status = DEAD
        self.process: multiprocessing.process.BaseProcess | None = None
        self.connection: Connection | None = None
        self.started_at = 0.0

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe(duplex=True)
        process = context.Process(
            target=child_main, args=(child_end, self.executor_ref, os.getpid()), name=f"autopack-drain-w{self.index}", daemon=True
        )
        process.start()
        child_end.close()
        self.process, self.connection, self.status = process, parent_end, STARTING
        self.started_at = time.monotonic()

    def submit(self, job: PhaseJob) -> None:
        """Hand the job to the child; a child that died since it was idle is reported by ``wait`` as a lost worker."""
        assert self.connection is not None and self.status == IDLE
        self.status = BUSY
        with contextlib.suppress(OSError):  # BrokenPipeError: its end of the pipe now reads EOF, which wait() sees
            self.connection.send(job)

    def receive(self) -> PhaseMessage | WorkerReady | WorkerFatal | None:
        """The child's next message, or None if it died (its exit code then says how)."""
        assert self.connection is not None
        try:
            return cast("PhaseMessage | WorkerReady | WorkerFatal", self.connection.recv())
        except (EOFError, OSError):
            return None

    def exit_signal(self) -> int | None:
        """The signal that ended the child, once it is gone (None if it exited normally or still runs)."""
        if self.process is None:
            return None
        self.process.join(timeout=5)
        code = self.process.exitcode
        return -code if code is not None and code < 0 else None

    def kill(self) -> None:
        """SIGKILL the child and reap it; the slot must be started again before use."""
        if self.process is not None and self.process.is_alive():
            self.process.kill()
        if self.process is not None:
            self.process.join(timeout=10)
        self._close()

    def stop(self) -> None:
        """Ask an idle child to exit; kill it if it does not."""
        if self.connection is not None and self.status in (IDLE, STARTING):
            with contextlib.suppress(Exception):
                self.connection.send(None)
            if self.process is not None:
                self.process.join(timeout=5)
        self.kill()

    def _close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                self.connection.close()
        self.process, self.connection, self.status = None, None, DEAD


class ProcessExecutor:
    """Each slot a long-lived child process; ``cancel`` kills it (SIGKILL), so a timeout really ends the phase."""

    hard_kill = True

    def __init__(
        self, workers: int, executor_ref: ExecutorRef = DEFAULT_EXECUTOR, *, startup_seconds: float = WORKER_STARTUP_SECONDS
    ) -> None:
        self.workers = workers
        self.slots = [ProcessSlot(i, executor_ref) for i in range(workers)]
        self.startup_seconds = startup_seconds
        self._wake = WakePipe()
        #: slot → the job it runs (a killed child's provider slots are given back in the job's database)
        self._jobs: dict[int, PhaseJob] = {}

    def idle_slots(self, wanted: int) -> list[int]:
        idle = [slot.index for slot in self.slots if slot.status == IDLE]
        missing = wanted - len(idle) - sum(1 for slot in self.slots if slot.status == STARTING)
        for slot in self.slots:
            if missing <= 0:
                break
            if slot.status == DEAD:
                slot.start()  # it becomes IDLE once its executor is loaded
                missing -= 1
        return idle

    def starting(self) -> bool:
        return any(slot.status == STARTING for slot in self.slots)

    def submit(self, slot: int, job: PhaseJob) -> None:
        self.slots[slot].submit(job)
        self._jobs[slot] = job

    def _kill(self, slot: ProcessSlot) -> None:
        """SIGKILL a busy child, then free the provider slots it held (it cannot give them back itself)."""
        pid = slot.process.pid if slot.process is not None else None
        slot.kill()
        job = self._jobs.pop(slot.index, None)
        if pid is not None and job is not None and job.provider_concurrency > 0:
            from autopack.execution.provider_gate import release_process_slots

            with contextlib.suppress(Exception):  # best effort: they expire anyway
                release_process_slots(job.database.open(), pid)

    def wait(self, timeout: float | None) -> list[Completion]:
        active = [s for s in self.slots if s.connection is not None and s.status in (BUSY, STARTING)]
        now = time.monotonic()
        startup = [s.started_at + self.startup_seconds - now for s in active if s.status == STARTING]
        if startup:
            timeout = max(0.0, min([*startup, *([timeout] if timeout is not None else [])]))
        if timeout is None and not active:
            return []
        ready = wait_for_connections([*(s.connection for s in active), self._wake.fileno()], timeout)  # type: ignore[list-item]
        if self._wake.fileno() in ready:
            self._wake.clear()
        completions: list[Completion] = []
        for slot in active:
            if slot.connection is None or not slot.connection.poll(0):
                if slot.status == STARTING and time.monotonic() - slot.started_at >= self.startup_seconds:
                    slot.kill()
                    raise ConfigError(
                        f"the executor process did not start within {self.startup_seconds:g}s",
                        hint="check that `python -c 'import autopack.execution.phase_runner'` works",
                    )
                continue
            message = slot.receive()
            if slot.status == STARTING or isinstance(message, (WorkerReady, WorkerFatal)):
                self._on_started(slot, message)
            elif message is None:
                signum = slot.exit_signal()
                self._kill(slot)
                completions.append(Completion(slot.index, None, signum))
            else:
                slot.status = IDLE
                self._jobs.pop(slot.index, None)
                completions.append(Completion(slot.index, message))
        return completions

    @staticmethod
    def _on_started(slot: ProcessSlot, message: PhaseMessage | WorkerReady | WorkerFatal | None) -> None:
        if isinstance(message, WorkerReady):
            slot.status = IDLE
            return
        slot.kill()
        detail = message.message if isinstance(message, WorkerFatal) else "the executor process exited while starting"
        raise ConfigError(detail, hint="is the phase executor installed? (autopack.execution.phase_runner)")

    def result_ready(self, slot: int) -> bool:
        process_slot = self.slots[slot]
        return process_slot.status == BUSY and process_slot.connection is not None and process_slot.connection.poll(0)

    def cancel(self, slot: int) -> None:
        self._kill(self.slots[slot])

    def wake(self) -> None:
        self._wake.wake()

    def close(self) -> None:
        for slot in self.slots:
            slot.stop()
        self._wake.close()


class InlineExecutor:
    """Runs the phase synchronously in the drain's own thread at ``submit`` (no isolation, no hard timeout).

    For unit tests of the drain rules and for the overhead benchmark's baseline.
    """

    hard_kill = False

    def __init__(self, executor_ref: ExecutorRef = DEFAULT_EXECUTOR, *, workers: int) -> None:
        self.workers = workers
        self.executor_ref = executor_ref
        self._executor: Callable[..., Any] | None = None
        self._pending: dict[int, PhaseMessage] = {}
        self._wake = WakePipe()

    def idle_slots(self, wanted: int) -> list[int]:
        return [i for i in range(self.workers) if i not in self._pending]

    def starting(self) -> bool:
        return False

    def submit(self, slot: int, job: PhaseJob) -> None:
        if self._executor is None:
            self._executor = resolve_executor(self.executor_ref)
        self._pending[slot] = run_job(self._executor, job)

    def wait(self, timeout: float | None) -> list[Completion]:
        if not self._pending and timeout:  # e.g. waiting for another drain's lease: sleep, but wake on a signal
            if wait_for_connections([self._wake.fileno()], timeout):
                self._wake.clear()
        done = [Completion(slot, message) for slot, message in self._pending.items()]
        self._pending.clear()
        return done

    def result_ready(self, slot: int) -> bool:
        return slot in self._pending

    def cancel(self, slot: int) -> None:
        self._pending.pop(slot, None)

    def wake(self) -> None:
        self._wake.wake()

    def close(self) -> None:
        self._pending.clear()
        self._wake.close()


def make_executor(isolation: str, workers: int, executor_ref: ExecutorRef = DEFAULT_EXECUTOR) -> DrainExecutor:
    """``process`` (killable child processes) or ``inline`` (the caller's thread)."""
    if isolation == "process":
        return ProcessExecutor(workers, executor_ref)
    if isolation == "inline":
        return InlineExecutor(executor_ref, workers=workers)
    raise ValueError(f"unknown isolation {isolation!r}")
