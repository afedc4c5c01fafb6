"""Executor processes for the batch drain: each phase runs in a child process the drain can kill.

A thread cannot be stopped, so the phase timeout the original only enforced on its subprocess is enforced
here the same way, but without paying a Python start-up per phase: each worker is a long-lived child
(multiprocessing *spawn*, so it shares no state with the drain) that runs one phase at a time. On a timeout
the drain kills the child (SIGKILL) and starts a fresh one for the next phase. A child never outlives the
drain: it asks the kernel for SIGKILL when its parent dies (Linux) and otherwise watches its parent id.

``InlineSlot`` runs the executor in the caller's thread instead; it cannot enforce a timeout and exists
for unit tests of the drain rules and for the overhead benchmark's baseline.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from autopack.errors import AutopackError, InputError, ProviderError
from autopack.execution.leases import Claim, LeaseLostError
from autopack.execution.triage import STAGE_BEFORE_LLM, STAGE_EXECUTION, STAGE_PROVIDER

#: The phase executor's contract (``autopack.execution.phase_runner.execute_phase``).
DEFAULT_EXECUTOR = "autopack.execution.phase_runner:execute_phase"

ExecutorRef = str | Callable[..., Any]

#: ``PhaseResult`` fields the drain reads (attribute names of the executor's dataclass).
RESULT_FIELDS: dict[str, Any] = {
    "final_state": "FAILED",
    "success": False,
    "attempts": 1,
    "llm_calls": 0,
    "telemetry_events": 0,
    "error_message": None,
    "failure_stage": None,
    "reached_llm_boundary": False,
    "duration_seconds": 0.0,
}


@dataclass(frozen=True)
class PhaseJob:
    run_id: str
    phase_id: str
    claim: Claim
    url: str
    telemetry: bool = True
    lease_seconds: float = 120.0


def resolve_executor(ref: ExecutorRef) -> Callable[..., Any]:
    """A callable, or ``"package.module:function"`` imported now."""
    if callable(ref):
        return ref
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr or "execute_phase")


def result_to_dict(result: Any) -> dict[str, Any]:
    """The executor's ``PhaseResult`` as plain values (it crosses a process boundary)."""
    data = {name: getattr(result, name, default) for name, default in RESULT_FIELDS.items()}
    data["llm_calls"] = int(data["llm_calls"] or 0)
    data["telemetry_events"] = int(data["telemetry_events"] or 0)
    data["attempts"] = int(data["attempts"] or 0)
    data["duration_seconds"] = float(data["duration_seconds"] or 0.0)
    data["success"] = bool(data["success"])
    data["reached_llm_boundary"] = bool(data["reached_llm_boundary"])
    return data


def _stage_for(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return STAGE_BEFORE_LLM
    if isinstance(exc, ProviderError):
        return STAGE_PROVIDER
    return STAGE_EXECUTION


def lease_heartbeat(job: PhaseJob) -> Callable[[], None]:
    """The executor's own heartbeat, extending the lease by the drain's lease length (not the 900 s default,
    which would keep a dead drain's phase unclaimable for 15 minutes)."""
    from autopack.db.engine import session_scope
    from autopack.execution import leases

    def beat() -> None:
        with session_scope(job.url) as db:
            leases.heartbeat(db, job.run_id, job.phase_id, job.claim.owner, lease_seconds=job.lease_seconds)

    return beat


def run_job(executor: Callable[..., Any], job: PhaseJob) -> dict[str, Any]:
    """Run one claimed phase; every outcome (even a crash) comes back as a message, never an exception."""
    started = time.monotonic()
    try:
        result = executor(
            job.run_id,
            job.phase_id,
            claim=job.claim,
            url=job.url,
            telemetry=job.telemetry,
            heartbeat=lease_heartbeat(job),
        )
        return {"kind": "result", "result": result_to_dict(result)}
    except LeaseLostError as exc:
        return {"kind": "lease_lost", "message": exc.one_line(), "duration": time.monotonic() - started}
    except AutopackError as exc:
        message = f"{type(exc).__name__}: {exc.one_line()}"
        return {"kind": "error", "message": message, "stage": _stage_for(exc), "duration": time.monotonic() - started}
    except Exception as exc:  # the drain must survive any executor bug and record it
        message = f"{type(exc).__name__}: {exc}"[:4000]
        return {"kind": "error", "message": message, "stage": STAGE_EXECUTION, "duration": time.monotonic() - started}


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
        conn.send({"kind": "fatal", "message": f"cannot load the phase executor {executor_ref!r}: {exc}"})
        return
    conn.send({"kind": "ready", "pid": os.getpid()})
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        conn.send(run_job(executor, job))


# --- slots: what the drain talks to --------------------------------------------------------------------

IDLE = "idle"
STARTING = "starting"
BUSY = "busy"
DEAD = "dead"


class ProcessSlot:
    """One executor child. ``connection`` is what the drain waits on; ``receive`` reads its message."""

    def __init__(self, index: int, executor_ref: ExecutorRef) -> None:
        self.index = index
        self.executor_ref = executor_ref
        self.status = DEAD
        self.process: multiprocessing.process.BaseProcess | None = None
        self.connection: Connection | None = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe(duplex=True)
        process = context.Process(
            target=child_main, args=(child_end, self.executor_ref, os.getpid()), name=f"autopack-drain-w{self.index}", daemon=True
        )
        process.start()
        child_end.close()
        self.process, self.connection, self.status = process, parent_end, STARTING

    def submit(self, job: PhaseJob) -> None:
        assert self.connection is not None and self.status == IDLE
        self.connection.send(job)
        self.status = BUSY

    def receive(self) -> dict[str, Any] | None:
        """The child's next message, or None if it died (its exit code then says how)."""
        assert self.connection is not None
        try:
            return self.connection.recv()
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


class InlineSlot:
    """Runs the executor synchronously in the drain's own thread (no isolation, no hard timeout)."""

    def __init__(self, index: int, executor_ref: ExecutorRef) -> None:
        self.index = index
        self.executor_ref = executor_ref
        self.status = DEAD
        self.connection = None
        self._executor: Callable[..., Any] | None = None
        self._pending: dict[str, Any] | None = None

    def start(self) -> None:
        self._executor = resolve_executor(self.executor_ref)
        self._pending = {"kind": "ready", "pid": os.getpid()}
        self.status = STARTING

    def submit(self, job: PhaseJob) -> None:
        assert self._executor is not None
        self.status = BUSY
        self._pending = run_job(self._executor, job)

    def has_message(self) -> bool:
        return self._pending is not None

    def receive(self) -> dict[str, Any] | None:
        message, self._pending = self._pending, None
        return message

    def exit_signal(self) -> int | None:
        return None

    def kill(self) -> None:
        self._pending = None
        self.status = DEAD

    def stop(self) -> None:
        self.kill()


Slot = ProcessSlot | InlineSlot
