"""``validate-single-phase``: drain one phase (``--force`` semantics); no telemetry means a broken set-up."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from prefect import flow, get_run_logger, task

from autopack.db.handle import Database, DatabaseRef, database_at
from autopack.db.models import Phase, PhaseState
from autopack.errors import AutopackError
from autopack.execution.drain_one import drain_one

NO_TELEMETRY_HINT = (
    "the validation phase produced no telemetry: check TELEMETRY_DB_ENABLED=1 and that DATABASE_URL is the "
    "database you inspect (`autopack db identity`), then drain one phase by hand: "
    "`autopack drain one --run-id R --phase-id P --force`"
)


class ValidationFailed(AutopackError):
    exit_code = 1


def first_queued_phase(database: Database, run_ids: list[str] | None = None) -> tuple[str, str] | None:
    """The phase the seed validates with: the first QUEUED phase (of the given runs)."""
    with database.session() as session:
        query = sa.select(Phase.run_id, Phase.phase_id).where(Phase.state == PhaseState.QUEUED)
        if run_ids:
            query = query.where(Phase.run_id.in_(run_ids))
        row = session.execute(query.order_by(Phase.run_id, Phase.phase_index).limit(1)).first()
    return (row[0], row[1]) if row else None


@task(name="drain-one-phase")
def drain_one_task(run_id: str, phase_id: str, database: DatabaseRef) -> dict[str, Any]:
    return asdict(drain_one(run_id, phase_id, force=True, db=database.open()))


@flow(name="validate-single-phase")
def validate_single_phase(
    run_id: str | None = None, phase_id: str | None = None, database: DatabaseRef | None = None
) -> dict[str, Any]:
    """``database``: the database the calling flow verified; else the settings' (this step has no guard)."""
    logger = get_run_logger()
    ref = database or database_at().ref()
    if run_id is None or phase_id is None:
        target = first_queued_phase(ref.open(), [run_id] if run_id else None)
        if target is None:
            logger.info("no QUEUED phase to validate with; skipping validation")
            return {"skipped": True, "telemetry_events": 0}
        run_id, phase_id = target
    result = drain_one_task(run_id, phase_id, ref)
    logger.info("validated on %s/%s: %s, %s telemetry event(s)", run_id, phase_id, result["final_state"],
                result["telemetry_events"])
    if result["telemetry_events"] == 0:
        raise ValidationFailed(NO_TELEMETRY_HINT)
    return result
