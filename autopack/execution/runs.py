"""Creating runs and phases from a validated spec, all or nothing."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from autopack.db.models import Phase, PhaseState, Run, utcnow
from autopack.errors import InputError, RefusedError
from autopack.execution.spec import RunSpec


def create_run(session: Session, spec: RunSpec, *, replace: bool = False, source: str | None = None,
               other_id: str = "choose another --run-id") -> Run:
    """Insert the run and its phases in the caller's transaction (commit or roll back as one).

    An existing run is refused unless ``replace`` (then its phases and the run are deleted first;
    telemetry rows are kept: they are history, keyed by attempt, and never duplicated). ``other_id``: how the
    caller's user names another run, for the refusal's hint.
    """
    existing = session.get(Run, spec.run_id)
    if existing is not None:
        if not replace:
            raise RefusedError(
                f"run '{spec.run_id}' already exists",
                hint=f"pass --replace to delete and recreate it, or {other_id}",
            )
        session.execute(sa.delete(Phase).where(Phase.run_id == spec.run_id))
        session.delete(existing)
        session.flush()
    now = utcnow()
    run = Run(
        id=spec.run_id,
        state="RUN_CREATED",
        goal_anchor=spec.goal,
        source=source,
        token_cap=spec.token_cap,
        max_phases=len(spec.phases),
        created_at=now,
        updated_at=now,
    )
    session.add(run)
    for index, phase in enumerate(spec.phases):
        session.add(
            Phase(
                run_id=spec.run_id,
                phase_id=phase.phase_id,
                phase_index=index,
                name=phase.name or phase.phase_id,
                description=phase.description,
                state=PhaseState.QUEUED,
                task_category=phase.category,
                complexity=phase.complexity,
                builder_mode=phase.builder_mode,
                scope=phase.scope(),
                check_command=phase.check_command,
                max_builder_attempts=phase.max_builder_attempts,
                builder_attempts=0,
                created_at=now,
                updated_at=now,
            )
        )
    session.flush()
    return run


def missing_runs(session: Session, run_ids: Sequence[str]) -> list[str]:
    """The run ids (in the given order, without repeats) that have no row in ``runs``."""
    wanted = list(dict.fromkeys(run_ids))
    if not wanted:
        return []
    found = set(session.execute(sa.select(Run.id).where(Run.id.in_(wanted))).scalars())
    return [run_id for run_id in wanted if run_id not in found]


def require_runs(session: Session, run_ids: Sequence[str]) -> None:
    """Refuse a ``--run-id`` that is not in the database, instead of draining nothing and exiting 0."""
    missing = missing_runs(session, run_ids)
    if missing:
        shown = ", ".join(repr(run_id) for run_id in missing[:5])
        if len(missing) > 5:
            shown += f" and {len(missing) - 5} more"
        raise InputError(
            f"--run-id {shown} {'is' if len(missing) == 1 else 'are'} not in this database; nothing was drained",
            hint="check the id with `autopack runs list`, and DATABASE_URL with `autopack db identity`",
        )
