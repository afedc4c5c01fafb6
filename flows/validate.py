"""``validate-single-phase``: drain one phase (``--force`` semantics); no telemetry means a broken set-up."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from autopack.db.handle import DatabaseRef, reopen_or_open
from autopack.errors import AutopackError
from autopack.params import ExpectDbId
from autopack.pipeline import ValidationResult, check_validation, validate_phase, validation_phase
from flows.logs import quiet_run_logs
from flows.states import refusal


@task(name="drain-one-phase")
def drain_one_task(run_id: str, phase_id: str, database: DatabaseRef) -> ValidationResult:
    return validate_phase(database.open(), run_id, phase_id)


@flow(name="validate-single-phase")
def validate_single_phase(
    run_id: str | None = None, phase_id: str | None = None, expect_db_id: ExpectDbId = None,
    database: DatabaseRef | None = None,
) -> Any:
    """Drain ``run_id``/``phase_id``, else the first QUEUED phase (of ``run_id``); none: skipped.

    The step writes to the database (it claims the phase, runs it and records its attempt and telemetry).
    ``database``: the database the pipeline's guard verified (not guarded again); run on its own (no
    ``database``), the settings' database is guarded here (``expect_db_id``, else ``AUTOPACK_EXPECTED_DB_ID``),
    and a refusal ends the run Failed in one line before anything is read or written. A validation that fails
    (the phase cannot be drained, or recorded no telemetry) ends it Failed in its one line too (``refusal``):
    the pipeline's ``settle`` raises that error again and stops before the drain."""
    quiet_run_logs()
    logger = get_run_logger()
    try:
        checked = reopen_or_open(database, expect_db_id=expect_db_id)
        target = validation_phase(checked, run_id, phase_id)
        if target is None:
            logger.info("no QUEUED phase to validate with; skipping validation")
            return ValidationResult()
        result = drain_one_task(*target, checked.ref())
        logger.info("validated on %s/%s: %s, %s telemetry event(s)", result.run_id, result.phase_id,
                    result.final_state, result.telemetry_events)
        check_validation(result)
    # the wrong, an empty or an unmigrated database; a phase that cannot be drained (unknown, not drainable,
    # telemetry off); a drained phase that recorded no telemetry
    except AutopackError as exc:
        return refusal(exc)
    return result
