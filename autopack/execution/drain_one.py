"""Drain exactly one named phase (``autopack drain one``; the Prefect flow ``validate-single-phase``).

Rules kept from the original's ``drain_one_phase.py`` (reference §4.2): a FAILED target is drained again
(it is claimed straight from FAILED, which is the original's reset-to-QUEUED-then-run done atomically;
``last_failure_reason`` is kept until the new outcome replaces it); any other non-QUEUED state is refused;
and the exclusivity rule refuses while the run has other QUEUED phases unless ``force``. Unlike the
original, the named phase is the one that runs (the claim is on it, not on "the next queued phase"), so
``force`` only waives a safety rule, it cannot make a different phase run.

Telemetry is required by default: with ``TELEMETRY_DB_ENABLED`` off the drain is refused, because a drain
that silently records nothing was the original's most common failure (seed troubleshooting:
"LLM usage events: 0 after draining phase"). ``no_telemetry=True`` drains without recording.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING

import sqlalchemy as sa

from autopack.config import get_settings
from autopack.db.models import Phase, PhaseState, utcnow
from autopack.errors import InputError, RefusedError
from autopack.execution import leases
from autopack.execution.phase_runner import PhaseResult, execute_phase
from autopack.execution.provider_gate import gated_settings_provider
from autopack.execution.runs import require_runs
from autopack.llm.base import LLMProvider

if TYPE_CHECKING:
    from autopack.db.handle import Database

TELEMETRY_DISABLED_REASON = (
    "TELEMETRY_DB_ENABLED is off: this drain would record no telemetry "
    "(the seed's 'LLM usage events: 0 after draining phase')"
)


def worker_id(prefix: str = "drain-one") -> str:
    """A lease owner naming this process: prefix:host:pid:random."""
    return f"{prefix}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def check_drainable(run_id: str, phase_id: str, *, force: bool = False, db: Database) -> str:
    """Refuse (raise) unless the phase may be drained now; returns its current state. Writes nothing."""
    with db.session() as session:
        row = session.execute(
            sa.select(Phase.state, Phase.lease_owner, Phase.lease_expires_at).where(
                Phase.run_id == run_id, Phase.phase_id == phase_id
            )
        ).one_or_none()
        if row is None:
            require_runs(session, [run_id])
            known = session.execute(
                sa.select(Phase.phase_id).where(Phase.run_id == run_id).order_by(Phase.phase_index).limit(6)
            ).scalars().all()
            listed = ", ".join(known[:5]) + (", …" if len(known) > 5 else "")
            raise InputError(f"run {run_id} has no phase {phase_id!r}",
                             hint=f"its phases: {listed}" if known else "the run has no phases")
        state, owner, expires = row
        if state == PhaseState.EXECUTING and expires is not None and expires >= utcnow():
            raise RefusedError(
                f"phase {run_id}/{phase_id} is being executed by {owner} (lease until {expires:%Y-%m-%d %H:%M:%S} UTC)",
                hint="wait for it to finish, or for the lease to expire",
            )
        if state not in (PhaseState.QUEUED, PhaseState.FAILED, PhaseState.EXECUTING):
            raise RefusedError(
                f"phase {run_id}/{phase_id} is {state}; only QUEUED or FAILED phases can be drained",
                hint="nothing to do",
            )
        others = session.execute(
            sa.select(sa.func.count()).where(
                Phase.run_id == run_id, Phase.phase_id != phase_id, Phase.state == PhaseState.QUEUED
            )
        ).scalar_one()
    if others and not force:
        raise RefusedError(
            f"refusing to drain non-exclusively: run {run_id} has {others} other QUEUED phase(s)",
            hint="pass --force to drain this phase anyway",
        )
    return str(state)


def drain_one(
    run_id: str,
    phase_id: str,
    *,
    force: bool = False,
    no_telemetry: bool = False,
    db: Database,
    provider: LLMProvider | None = None,
    owner: str | None = None,
) -> PhaseResult:
    """Drain one phase to COMPLETE or FAILED. Raises ``RefusedError``/``InputError`` before any write."""
    settings = get_settings()
    if not settings.telemetry_db_enabled and not no_telemetry:
        raise RefusedError(TELEMETRY_DISABLED_REASON, hint="set TELEMETRY_DB_ENABLED=1, or pass --no-telemetry")
    check_drainable(run_id, phase_id, force=force, db=db)
    owner = owner or worker_id()
    with db.session() as session:
        claim = leases.claim_phase(session, run_id, phase_id, owner)
    if claim is None:
        raise RefusedError(f"phase {run_id}/{phase_id} was claimed by another worker first", hint="try again later")
    if provider is None:  # a single phase counts against the same provider limit as every batch drain
        provider = gated_settings_provider(db, settings.provider_concurrency)
    return execute_phase(run_id, phase_id, claim=claim, db=db, provider=provider, telemetry=not no_telemetry)

