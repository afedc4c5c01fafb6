"""Helpers for the batch-drain tests: runs built from specs, and fake executors honouring the contract.

The fakes live in an importable module (not inside a test) because the drain's executor processes are
*spawned*: they import the executor by reference. Each fake reads its behaviour from the phase's
description (JSON), writes one telemetry row per "LLM call" keyed by the claim's attempt, and finishes
the phase under the claim's lease — exactly what ``execute_phase`` promises.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from autopack.db.engine import session_scope
from autopack.db.handle import Database
from autopack.db.models import Phase, PhaseState, TokenEstimationV2Event
from autopack.execution import leases
from autopack.execution.runs import create_run
from autopack.execution.spec import PhaseSpec, RunSpec

# This module has helpers only; keep pytest from reporting it as an empty test module.
__test__ = False


@dataclass
class FakeResult:
    run_id: str
    phase_id: str
    final_state: str
    success: bool
    attempts: int
    llm_calls: int
    telemetry_events: int
    error_message: str | None
    failure_stage: str | None
    reached_llm_boundary: bool
    duration_seconds: float


def behaviour(kind: str = "ok", **params: Any) -> str:
    return json.dumps({"kind": kind, **params}, sort_keys=True)


def make_run(url: str, run_id: str, behaviours: list[str], *, category: str = "implementation") -> None:
    spec = RunSpec(
        run_id=run_id,
        phases=[
            PhaseSpec(
                phase_id=f"p{i:03d}",
                description=desc,
                category=category,
                complexity="low",
                deliverables=[f"src/mod_{i}.py"],
            )
            for i, desc in enumerate(behaviours)
        ],
    )
    with session_scope(url) as db:
        create_run(db, spec)


def set_phase(url: str, run_id: str, phase_id: str, **values: Any) -> None:
    with session_scope(url) as db:
        db.execute(sa.update(Phase).where(Phase.run_id == run_id, Phase.phase_id == phase_id).values(**values))


def phase_rows(url: str) -> dict[tuple[str, str], Phase]:
    with session_scope(url) as db:
        return {(p.run_id, p.phase_id): p for p in db.scalars(sa.select(Phase))}


def event_keys(url: str) -> list[tuple[str, str, int, int]]:
    ev = TokenEstimationV2Event
    with session_scope(url) as db:
        return [tuple(r) for r in db.execute(sa.select(ev.run_id, ev.phase_id, ev.attempt_index, ev.call_index))]


def _write_events(database: Database, run_id: str, phase_id: str, attempt: int, calls: int, success: bool) -> None:
    with database.session() as db:
        for call in range(calls):
            db.add(
                TokenEstimationV2Event(
                    run_id=run_id,
                    phase_id=phase_id,
                    attempt_index=attempt,
                    call_index=call,
                    category="implementation",
                    complexity="low",
                    deliverable_count=1,
                    predicted_output_tokens=1000,
                    actual_output_tokens=900,
                    selected_budget=4096,
                    success=success,
                    truncated=False,
                )
            )


def fake_execute_phase(
    run_id: str,
    phase_id: str,
    *,
    claim: leases.Claim,
    db: Database,
    provider: Any = None,
    telemetry: bool = True,
    heartbeat: Any = None,
) -> FakeResult:
    """Behaviours: ok (calls=N), fail (error, stage, calls), boundary, raise (error), wait_file (path, then ok),
    sleep (seconds)."""
    started = time.monotonic()
    with db.session() as session:
        description = session.execute(
            sa.select(Phase.description).where(Phase.run_id == run_id, Phase.phase_id == phase_id)
        ).scalar_one()
    spec = json.loads(description)
    kind = spec["kind"]
    if kind == "raise":
        raise RuntimeError(spec.get("error", "executor bug"))
    if kind == "sleep":
        time.sleep(float(spec["seconds"]))
    if kind == "wait_file":  # block until the test creates the file (bounded)
        deadline = time.monotonic() + float(spec.get("max_seconds", 60))
        while not Path(spec["path"]).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    success = kind in ("ok", "sleep", "wait_file")
    calls = int(spec.get("calls", 1 if success else 0))
    boundary = kind == "boundary"
    if boundary:
        calls = int(spec.get("calls", 0))
    if telemetry and calls:
        _write_events(db, run_id, phase_id, claim.attempt_index, calls, success)
    final = PhaseState.COMPLETE if success else PhaseState.FAILED
    error = None if success else spec.get("error", "context window exceeded" if boundary else "failed")
    with db.session() as session:
        leases.finish_phase(session, run_id, phase_id, claim.owner, final, failure_reason=error)
    return FakeResult(
        run_id=run_id,
        phase_id=phase_id,
        final_state=final,
        success=success,
        attempts=1,
        llm_calls=calls,
        telemetry_events=calls if telemetry else 0,
        error_message=error,
        failure_stage=None if success else ("llm_boundary" if boundary else spec.get("stage", "execution")),
        reached_llm_boundary=boundary,
        duration_seconds=time.monotonic() - started,
    )



HANG_MARKER = "[test:hang-on-retry]"


class HangOnRetry:
    """Wraps a provider: for a phase marked ``[test:hang-on-retry]``, the escalated retry's call hangs until the
    phase's lease is taken away (the drain timed it out), at most ``max_seconds``; other calls pass through."""

    def __init__(self, inner: Any, claim: leases.Claim, beat: Any, max_seconds: float = 120.0) -> None:
        self.inner, self.claim, self.beat, self.max_seconds = inner, claim, beat, max_seconds
        self.name, self.model, self.max_output_tokens = inner.name, inner.model, inner.max_output_tokens

    def complete(self, request: Any) -> Any:
        hints = request.hints
        if HANG_MARKER in (hints.description or "") and hints.attempt_index > self.claim.attempt_index:
            deadline = time.monotonic() + self.max_seconds
            while time.monotonic() < deadline:
                self.beat()  # raises LeaseLostError once the drain took the lease back
                time.sleep(0.05)
        return self.inner.complete(request)


def hang_on_retry_execute_phase(
    run_id: str,
    phase_id: str,
    *,
    claim: leases.Claim,
    db: Database,
    provider: Any = None,
    telemetry: bool = True,
    heartbeat: Any = None,
) -> Any:
    """The real ``execute_phase`` with the simulated provider, whose marked escalated retries hang."""
    from autopack.execution.phase_runner import execute_phase
    from autopack.llm import get_provider

    def beat() -> None:
        with db.session() as session:
            leases.heartbeat(session, run_id, phase_id, claim.owner, lease_seconds=60)

    wrapped = HangOnRetry(provider or get_provider(), claim, beat)
    return execute_phase(run_id, phase_id, claim=claim, db=db, provider=wrapped, telemetry=telemetry,
                         heartbeat=heartbeat)
