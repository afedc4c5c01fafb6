"""Endpoints a drain worker uses: claim the next phase under a lease, heartbeat it, report its result.

They wrap ``autopack.execution.leases`` (atomic claims: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, a
conditional UPDATE everywhere), so HTTP workers and direct-database drains can share one queue.
A heartbeat or result on an expired or foreign lease is rejected with 409.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Response, status

from autopack.api.deps import AuthDep, DbDep
from autopack.api.inputs import StrictJsonRoute
from autopack.api.runs import NOT_FOUND, PhaseIdPath, RunIdPath, get_phase_or_404
from autopack.api.schemas import (
    MUTATION_RESPONSES,
    ClaimIn,
    ClaimOut,
    ErrorOut,
    HeartbeatIn,
    HeartbeatOut,
    PhaseStateOut,
    ReleaseIn,
    ResultIn,
)
from autopack.execution import leases

router = APIRouter(tags=["drain"], route_class=StrictJsonRoute)

LEASE_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorOut, "description": "the lease expired or belongs to another worker"}
}


@router.post(
    "/drain/claim",
    response_model=ClaimOut,
    dependencies=[AuthDep],
    responses={**MUTATION_RESPONSES, 204: {"description": "nothing eligible to claim"}},
)
def claim(body: ClaimIn, db: DbDep) -> ClaimOut | Response:
    """Claim the next eligible phase (first run in run order, then phase index) with a lease for ``owner``."""
    result = leases.claim_next(
        db, body.owner, run_ids=body.run_ids or None, states=tuple(body.states), lease_seconds=body.lease_seconds
    )
    if result is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return ClaimOut(
        run_id=result.run_id,
        phase_id=result.phase_id,
        owner=result.owner,
        expires_at=result.expires_at,
        attempt_index=result.attempt_index,
        initial_state=result.initial_state,
    )


@router.post(
    "/runs/{run_id}/phases/{phase_id}/heartbeat",
    response_model=HeartbeatOut,
    dependencies=[AuthDep],
    responses={**MUTATION_RESPONSES, **NOT_FOUND, **LEASE_CONFLICT},
)
def heartbeat(run_id: RunIdPath, phase_id: PhaseIdPath, body: HeartbeatIn, db: DbDep) -> HeartbeatOut:
    get_phase_or_404(db, run_id, phase_id)
    try:
        expires = leases.heartbeat(db, run_id, phase_id, body.owner, lease_seconds=body.lease_seconds)
    except leases.LeaseLostError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=exc.message) from exc
    return HeartbeatOut(run_id=run_id, phase_id=phase_id, expires_at=expires)


@router.post(
    "/runs/{run_id}/phases/{phase_id}/result",
    response_model=PhaseStateOut,
    dependencies=[AuthDep],
    responses={**MUTATION_RESPONSES, **NOT_FOUND, **LEASE_CONFLICT},
)
def result(run_id: RunIdPath, phase_id: PhaseIdPath, body: ResultIn, db: DbDep) -> PhaseStateOut:
    """Record the phase's final state and release the lease — only while the lease is still held.

    A ``tokens_used`` the phase's total cannot hold is answered 422, after the phase was finished FAILED
    with that reason (the lease is released either way, so the phase never stays EXECUTING).
    """
    get_phase_or_404(db, run_id, phase_id)
    try:
        rejected = leases.finish_phase(
            db,
            run_id,
            phase_id,
            body.owner,
            body.final_state,
            failure_reason=body.failure_reason,
            tokens_used=body.tokens_used,
        )
    except leases.LeaseLostError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=exc.message) from exc
    if rejected is not None:
        # FastAPI's own 422 shape, so clients and the OpenAPI description see one error format.
        detail = [{"loc": ["body", "tokens_used"], "msg": rejected, "type": "value_error"}]
        raise HTTPException(422, detail=detail)
    return PhaseStateOut(run_id=run_id, phase_id=phase_id, state=body.final_state)


@router.post(
    "/runs/{run_id}/phases/{phase_id}/release",
    response_model=PhaseStateOut,
    dependencies=[AuthDep],
    responses={**MUTATION_RESPONSES, **NOT_FOUND, **LEASE_CONFLICT},
)
def release(run_id: RunIdPath, phase_id: PhaseIdPath, body: ReleaseIn, db: DbDep) -> PhaseStateOut:
    """Give a held phase back to the queue without an outcome (a worker shutting down)."""
    get_phase_or_404(db, run_id, phase_id)
    if not leases.release(db, run_id, phase_id, body.owner):
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"no live lease of {body.owner} on {run_id}/{phase_id}")
    return PhaseStateOut(run_id=run_id, phase_id=phase_id, state="QUEUED")
