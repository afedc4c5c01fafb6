"""``validate-single-phase``: drain one phase (``--force`` semantics); no telemetry means a broken set-up."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from autopack.db.handle import DatabaseRef, database_at
from autopack.pipeline import ValidationResult, check_validation, validate_phase, validation_phase


@task(name="drain-one-phase")
def drain_one_task(run_id: str, phase_id: str, database: DatabaseRef) -> ValidationResult:
    return validate_phase(database.open(), run_id, phase_id)


@flow(name="validate-single-phase")
def validate_single_phase(
    run_id: str | None = None, phase_id: str | None = None, database: DatabaseRef | None = None
) -> ValidationResult:
    """Drain ``run_id``/``phase_id``, else the first QUEUED phase (of ``run_id``); none: skipped.

    ``database``: the database the calling flow verified; else the settings' (this step has no guard)."""
    logger = get_run_logger()
    ref = database or database_at().ref()
    target = validation_phase(ref.open(), run_id, phase_id)
    if target is None:
        logger.info("no QUEUED phase to validate with; skipping validation")
        return ValidationResult()
    result = drain_one_task(*target, ref)
    logger.info("validated on %s/%s: %s, %s telemetry event(s)", result.run_id, result.phase_id,
                result.final_state, result.telemetry_events)
    check_validation(result)
    return result
