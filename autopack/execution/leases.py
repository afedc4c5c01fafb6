"""Atomic phase claims with leases, safe for many drain workers on one database.

A claim moves a phase to EXECUTING with an owner and an expiry. Claiming is a single conditional UPDATE
(SQLite and PostgreSQL alike); on PostgreSQL the row is first read with ``SELECT … FOR UPDATE SKIP LOCKED``
(``claim_next`` picks its row the same way), so concurrent drains never wait on each other's claims. A worker that dies
leaves a lease that expires; the phase can then be claimed again. A result reported on an expired or
foreign lease is rejected (``LeaseLostError``).

A phase's failure reason comes from whoever reports it (a worker, an API client): it is stored only through
``stored_reason`` (``autopack.logging.redact``), so no URL credential, configured secret (the API key
included) or key-shaped token lands in ``phases.last_failure_reason`` or is served back by the API.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from autopack.db.engine import rowcount
from autopack.db.models import (
    LlmUsageEvent,
    Phase,
    PhaseState,
    TokenBudgetEscalationEvent,
    TokenEstimationV2Event,
    utcnow,
)
from autopack.errors import AutopackError
from autopack.logging import one_line, redact
from autopack.params import CLAIM_LEASE_SECONDS, DEFAULT_DRAIN_STATES
from autopack.run_order import run_order
from autopack.telemetry.bounds import bounds_for


class LeaseLostError(AutopackError):
    """The caller no longer holds the phase's lease (expired, or claimed by another worker)."""

    exit_code = 4


@dataclass(frozen=True)
class Claim:
    run_id: str
    phase_id: str
    owner: str
    expires_at: datetime
    #: 0-based index of this attempt (the phase's attempt counter before the claim).
    attempt_index: int
    initial_state: str


def stored_reason(reason: str | None) -> str | None:
    """``reason`` as it may be stored in ``phases.last_failure_reason``: every secret in it masked, on one
    printable line (``logging.one_line``)."""
    return None if reason is None else one_line(redact(reason))


def _expiry(lease_seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=lease_seconds)


def live_lease(now: datetime) -> sa.ColumnElement[bool]:
    """EXECUTING under a lease that has not expired: a worker holds the phase."""
    return sa.and_(Phase.state == PhaseState.EXECUTING, Phase.lease_expires_at.is_not(None),
                   Phase.lease_expires_at >= now)


def claimable(states: Collection[str], now: datetime) -> sa.ColumnElement[bool]:
    """Eligible: in one of ``states``, or EXECUTING under a lease that has expired (a dead worker)."""
    return sa.or_(
        Phase.state.in_(list(states)),
        sa.and_(Phase.state == PhaseState.EXECUTING, Phase.lease_expires_at.is_not(None), Phase.lease_expires_at < now),
    )


def _recorded_attempt_floor(session: Session, run_id: str, phase_id: str) -> int:
    """One past the highest attempt index any telemetry row of the phase uses (0 if none).

    A database adopted from the original has samples whose backfilled attempt indices run ahead of the
    phase's attempt counter; starting a new attempt there would collide with an old sample's key and the
    new sample would be dropped. Starting past every recorded attempt keeps each key unique.
    """
    floors = [
        session.execute(
            sa.select(sa.func.max(model.attempt_index)).where(model.run_id == run_id, model.phase_id == phase_id)
        ).scalar_one_or_none()
        for model in (TokenEstimationV2Event, LlmUsageEvent, TokenBudgetEscalationEvent)
    ]
    return max((int(f) + 1 for f in floors if f is not None), default=0)


def claim_phase(
    session: Session,
    run_id: str,
    phase_id: str,
    owner: str,
    *,
    states: Collection[str] = DEFAULT_DRAIN_STATES,
    lease_seconds: float = CLAIM_LEASE_SECONDS,
) -> Claim | None:
    """Claim one named phase, or return None if it is not claimable (taken, finished, missing).

    On PostgreSQL the row is read ``FOR UPDATE SKIP LOCKED``: a phase another drain is claiming right now is
    skipped at once (None) instead of waited for, and the conditional UPDATE below then meets no contention.
    """
    now = utcnow()
    read = sa.select(Phase.state, Phase.builder_attempts).where(Phase.run_id == run_id, Phase.phase_id == phase_id)
    if session.get_bind().dialect.name == "postgresql":
        read = read.with_for_update(skip_locked=True)
    row = session.execute(read).one_or_none()
    if row is None:
        return None
    initial_state, attempts = row
    attempt_index = max(int(attempts or 0), _recorded_attempt_floor(session, run_id, phase_id))
    expires = _expiry(lease_seconds)
    result = session.execute(
        sa.update(Phase)
        .where(
            Phase.run_id == run_id,
            Phase.phase_id == phase_id,
            Phase.builder_attempts == attempts,  # nobody claimed it between our read and this write
            claimable(states, now),
        )
        .values(
            state=PhaseState.EXECUTING,
            lease_owner=owner,
            lease_expires_at=expires,
            builder_attempts=attempt_index + 1,
            started_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if rowcount(result) != 1:
        return None
    return Claim(run_id, phase_id, owner, expires, attempt_index, str(initial_state))


def claim_next(
    session: Session,
    owner: str,
    *,
    run_ids: Sequence[str] | None = None,
    states: Collection[str] = DEFAULT_DRAIN_STATES,
    exclude: Collection[tuple[str, str]] = (),
    lease_seconds: float = CLAIM_LEASE_SECONDS,
    max_tries: int = 20,
) -> Claim | None:
    """Claim the next eligible phase (first run in run order, then phase index). None when nothing is left."""
    for _ in range(max_tries):
        now = utcnow()
        query = sa.select(Phase.run_id, Phase.phase_id).where(claimable(states, now))
        if run_ids:
            query = query.where(Phase.run_id.in_(list(run_ids)))
        if exclude:
            query = query.where(sa.tuple_(Phase.run_id, Phase.phase_id).not_in(list(exclude)))
        query = query.order_by(*run_order(Phase.run_id), Phase.phase_index, Phase.id).limit(1)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True, of=Phase)
        candidate = session.execute(query).first()
        if candidate is None:
            session.rollback()
            return None
        claim = claim_phase(session, candidate[0], candidate[1], owner, states=states, lease_seconds=lease_seconds)
        if claim is not None:
            return claim
    return None


def _held(run_id: str, phase_id: str, owner: str, now: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(
        Phase.run_id == run_id,
        Phase.phase_id == phase_id,
        Phase.state == PhaseState.EXECUTING,
        Phase.lease_owner == owner,
        Phase.lease_expires_at >= now,
    )


def heartbeat(
    session: Session, run_id: str, phase_id: str, owner: str, *, lease_seconds: float = CLAIM_LEASE_SECONDS
) -> datetime:
    """Extend a held lease; raise ``LeaseLostError`` if it is no longer ours."""
    now = utcnow()
    expires = _expiry(lease_seconds)
    result = session.execute(
        sa.update(Phase)
        .where(_held(run_id, phase_id, owner, now))
        .values(lease_expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if rowcount(result) != 1:
        raise LeaseLostError(f"lease on {run_id}/{phase_id} lost by {owner}", hint="the phase was re-claimed")
    return expires


def finish_phase(
    session: Session,
    run_id: str,
    phase_id: str,
    owner: str,
    final_state: str,
    *,
    failure_reason: str | None = None,
    tokens_used: int | None = None,
) -> str | None:
    """Record the phase's final state and release the lease, only if the lease is still held.

    ``tokens_used`` is added to the phase's running total. A count the column cannot hold (negative, not an
    integer, or a total beyond ``phases.tokens_used``'s range) is not written: the phase is still finished
    and its lease released, but as FAILED with the reason; the reason is returned (None when everything
    was recorded as given).
    """
    if final_state not in PhaseState.TERMINAL and final_state != PhaseState.QUEUED:
        raise ValueError(f"not a final state: {final_state}")
    now = utcnow()
    rejected = None
    if tokens_used is not None:
        rejected = _tokens_problem(session, _held(run_id, phase_id, owner, now), tokens_used)
    if rejected is not None:
        reported = f"reported {final_state}" + (f": {failure_reason}" if failure_reason else "")
        final_state, failure_reason = PhaseState.FAILED, f"result rejected: {rejected} ({reported})"
    values: dict[str, object] = {
        "state": final_state,
        "lease_owner": None,
        "lease_expires_at": None,
        "completed_at": now if final_state in PhaseState.TERMINAL else None,
        "updated_at": now,
        "last_failure_reason": stored_reason(failure_reason) if final_state != PhaseState.COMPLETE else None,
    }
    if tokens_used is not None and rejected is None:
        values["tokens_used"] = sa.func.coalesce(Phase.tokens_used, 0) + tokens_used
    result = session.execute(
        sa.update(Phase)
        .where(_held(run_id, phase_id, owner, now))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if rowcount(result) != 1:
        raise LeaseLostError(
            f"result for {run_id}/{phase_id} rejected: the lease of {owner} expired or was taken over",
            hint="the phase will be (or was) drained again by its new owner",
        )
    return stored_reason(failure_reason) if rejected is not None else None


def set_state(session: Session, run_id: str, phase_id: str, state: str, *, reason: str | None = None) -> bool:
    """Put a phase into ``state`` (requeue, skip) and drop any expired lease; ``reason``, if given, replaces
    its failure reason (masked). False, and nothing written, while a worker holds a live lease on it."""
    now = utcnow()
    result = session.execute(
        sa.update(Phase)
        .where(Phase.run_id == run_id, Phase.phase_id == phase_id, sa.not_(live_lease(now)))
        .values(
            state=state,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
            last_failure_reason=stored_reason(reason) if reason is not None else Phase.last_failure_reason,
        )
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def _tokens_problem(session: Session, held: sa.ColumnElement[bool], tokens_used: object) -> str | None:
    """Why adding ``tokens_used`` to the phase's total cannot be written, or None."""
    column = bounds_for(Phase)["tokens_used"]
    problem = column.problem(tokens_used)
    if problem is not None:
        return f"tokens_used: {problem}"
    current = session.execute(sa.select(Phase.tokens_used).where(held)).scalar_one_or_none() or 0
    problem = column.problem(int(current) + int(tokens_used))  # type: ignore[call-overload]
    return None if problem is None else f"tokens_used={tokens_used} would make {problem}"


def release(session: Session, run_id: str, phase_id: str, owner: str, *, state: str = PhaseState.QUEUED) -> bool:
    """Give a claimed phase back (e.g. after Ctrl-C) without counting an outcome."""
    now = utcnow()
    result = session.execute(
        sa.update(Phase)
        .where(_held(run_id, phase_id, owner, now))
        .values(state=state, lease_owner=None, lease_expires_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return rowcount(result) == 1


def reserve_attempt(session: Session, run_id: str, phase_id: str, owner: str) -> int:
    """Reserve the next attempt index under a held lease (an escalated retry is a new attempt)."""
    now = utcnow()
    result = session.execute(
        sa.update(Phase)
        .where(_held(run_id, phase_id, owner, now))
        .values(builder_attempts=Phase.builder_attempts + 1)
        .returning(Phase.builder_attempts)
        .execution_options(synchronize_session=False)
    )
    attempts = result.scalar_one_or_none()
    session.commit()
    if attempts is None:
        raise LeaseLostError(f"lease on {run_id}/{phase_id} lost by {owner}", hint="the phase was re-claimed")
    return int(attempts) - 1
