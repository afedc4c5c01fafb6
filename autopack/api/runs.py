"""Runs and phases: list, read, create from a RunSpec, and put a phase back in the queue (or skip it)."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Path, Query, status
from sqlalchemy.orm import Session

from autopack.api.deps import AuthDep, ConfigDep, DbDep
from autopack.api.inputs import StrictJsonRoute
from autopack.api.schemas import (
    MUTATION_RESPONSES,
    ErrorOut,
    PhaseOut,
    PhaseStateIn,
    PhaseStateOut,
    RunDetailOut,
    RunOut,
)
from autopack.db.models import Phase, Run
from autopack.errors import RefusedError
from autopack.execution import leases
from autopack.execution.runs import create_run
from autopack.execution.spec import API_SOURCE, RunSpec, refuse_untrusted_check_command
from autopack.run_order import run_order

router = APIRouter(tags=["runs"], route_class=StrictJsonRoute)

RunIdPath = Annotated[str, Path(min_length=1, max_length=255)]
PhaseIdPath = Annotated[str, Path(min_length=1, max_length=255)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut}}


def _phase_states(db: Session, run_ids: list[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {run_id: {} for run_id in run_ids}
    if not run_ids:
        return counts
    rows = db.execute(
        sa.select(Phase.run_id, Phase.state, sa.func.count())
        .where(Phase.run_id.in_(run_ids))
        .group_by(Phase.run_id, Phase.state)
    ).all()
    for run_id, state, n in rows:
        counts[run_id][str(state)] = int(n)
    return counts


def get_run_or_404(db: Session, run_id: str) -> Run:
    run = db.get(Run, run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"run '{run_id}' not found")
    return run


def get_phase_or_404(db: Session, run_id: str, phase_id: str) -> Phase:
    phase = db.scalars(sa.select(Phase).where(Phase.run_id == run_id, Phase.phase_id == phase_id)).one_or_none()
    if phase is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"phase '{run_id}/{phase_id}' not found")
    return phase


@router.get("/runs", response_model=list[RunOut])
def list_runs(
    db: DbDep,
    state: Annotated[str | None, Query(max_length=64, description="Only runs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[RunOut]:
    query = sa.select(Run).order_by(Run.created_at.desc(), *run_order(Run.id)).limit(limit).offset(offset)
    if state is not None:
        query = query.where(Run.state == state)
    runs = list(db.scalars(query))
    counts = _phase_states(db, [r.id for r in runs])
    return [RunOut.of(run, counts[run.id]) for run in runs]


@router.post(
    "/runs",
    response_model=RunDetailOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=[AuthDep],
    responses={
        **MUTATION_RESPONSES,
        403: {"model": ErrorOut, "description": "a check_command while AUTOPACK_API_ALLOW_CHECK_COMMANDS is off"},
        409: {"model": ErrorOut, "description": "the run already exists"},
    },
)
def create_run_endpoint(spec: RunSpec, db: DbDep, config: ConfigDep) -> RunDetailOut:
    """Create a run and its phases in one transaction (a bad spec is a 422 naming the field).

    A phase's ``check_command`` runs on every drain worker: refused (403) unless the server allows it.
    """
    for phase in spec.phases:
        try:
            refuse_untrusted_check_command(API_SOURCE, phase.check_command, allowed=config.allow_check_commands)
        except RefusedError as exc:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"phase '{phase.phase_id}': {exc.one_line()}") from exc
    try:
        run = create_run(db, spec, source=API_SOURCE)
    except RefusedError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=exc.message) from exc
    phases = list(db.scalars(sa.select(Phase).where(Phase.run_id == run.id).order_by(Phase.phase_index)))
    states: dict[str, int] = {}
    for row in phases:
        states[row.state] = states.get(row.state, 0) + 1
    return RunDetailOut(**RunOut.of(run, states).model_dump(), phases=[PhaseOut.of(p) for p in phases])


@router.get("/runs/{run_id}", response_model=RunDetailOut, responses=NOT_FOUND)
def get_run(run_id: RunIdPath, db: DbDep) -> RunDetailOut:
    run = get_run_or_404(db, run_id)
    phases = list(db.scalars(sa.select(Phase).where(Phase.run_id == run_id).order_by(Phase.phase_index, Phase.id)))
    counts = _phase_states(db, [run_id])[run_id]
    return RunDetailOut(**RunOut.of(run, counts).model_dump(), phases=[PhaseOut.of(p) for p in phases])


@router.get("/runs/{run_id}/phases", response_model=list[PhaseOut], responses=NOT_FOUND)
def list_phases(
    run_id: RunIdPath,
    db: DbDep,
    state: Annotated[str | None, Query(max_length=32)] = None,
) -> list[PhaseOut]:
    get_run_or_404(db, run_id)
    query = sa.select(Phase).where(Phase.run_id == run_id).order_by(Phase.phase_index, Phase.id)
    if state is not None:
        query = query.where(Phase.state == state)
    return [PhaseOut.of(p) for p in db.scalars(query)]


@router.get("/runs/{run_id}/phases/{phase_id}", response_model=PhaseOut, responses=NOT_FOUND)
def get_phase(run_id: RunIdPath, phase_id: PhaseIdPath, db: DbDep) -> PhaseOut:
    return PhaseOut.of(get_phase_or_404(db, run_id, phase_id))


@router.post(
    "/runs/{run_id}/phases/{phase_id}/state",
    response_model=PhaseStateOut,
    dependencies=[AuthDep],
    responses={**MUTATION_RESPONSES, **NOT_FOUND, 409: {"model": ErrorOut, "description": "a live lease holds the phase"}},
)
def set_phase_state(run_id: RunIdPath, phase_id: PhaseIdPath, body: PhaseStateIn, db: DbDep) -> PhaseStateOut:
    """Requeue or skip a phase; refused while a worker holds a live lease on it."""
    get_phase_or_404(db, run_id, phase_id)
    if not leases.set_state(db, run_id, phase_id, body.state, reason=body.reason):
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"phase '{run_id}/{phase_id}' is held by a live lease")
    return PhaseStateOut(run_id=run_id, phase_id=phase_id, state=body.state)
