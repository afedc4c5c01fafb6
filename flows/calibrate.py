"""``calibrate``: the T5 calibration job, with its report (plot embedded) and group table as Prefect artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed

from autopack.artifacts import calibration_group_rows, calibration_report_markdown
from autopack.calibration import NoUsableSamplesError, run_calibration
from autopack.calibration.result import CalibrationOutcome
from autopack.db.handle import DatabaseRef, reopen_or_open
from autopack.errors import AutopackError
from autopack.params import CalibrationParams, ExpectDbId, OutputDir, PipelineParams
from autopack.pipeline import calibration_outcome
from flows.logs import quiet_run_logs
from flows.states import refusal


@task(name="run-calibration")
def calibrate_task(
    params: CalibrationParams, include_run_ids: list[str] | None, output_dir: str, database: DatabaseRef,
) -> CalibrationOutcome:
    """The library call; "no usable samples" is an outcome (``no_samples``: the reason), not a crash."""
    try:
        return CalibrationOutcome(result=run_calibration(
            database.open(),
            params,
            include_run_ids=include_run_ids or None,
            output_dir=Path(output_dir),
        ))
    except NoUsableSamplesError as exc:
        get_run_logger().warning("%s", exc.one_line())
        return CalibrationOutcome(no_samples=exc.message)


def publish_calibration_artifacts(outcome: CalibrationOutcome) -> None:
    """The report and the group table, as artifacts of the current flow run (the parent's too)."""
    result = outcome.result
    if result is None:
        return
    markdown = calibration_report_markdown(result)
    if markdown is not None:
        create_markdown_artifact(key="calibration-report", markdown=markdown,
                                 description="token_estimator calibration report")
    rows = calibration_group_rows(result)
    if rows:
        create_table_artifact(key="calibration-groups", table=rows,
                              description="calibration groups (category x complexity)")


@flow(name="calibrate")
def calibrate(
    params: CalibrationParams = CalibrationParams(),
    include_run_ids: list[str] | None = None,
    output_dir: OutputDir = PipelineParams.default("output_dir"),
    expect_db_id: ExpectDbId = None,
    database: DatabaseRef | None = None,
) -> Any:
    """Calibrate; ``params`` is the statistics (``autopack.params.CalibrationParams``).

    The other arguments say what to read and where to write, not how to compute, so they are not part of the
    model: the pipeline passes the runs it drained, its ``output_dir`` and the database its guard verified
    (``database``: not guarded again). Run on its own (no ``database``), the settings' database is guarded here
    (``expect_db_id``, else ``AUTOPACK_EXPECTED_DB_ID``), and a refusal ends the run Failed in the guard's one
    line before anything is read or written. The run's result is a ``CalibrationOutcome``: the result, or why
    there is none.
    """
    quiet_run_logs()
    try:
        checked = reopen_or_open(database, expect_db_id=expect_db_id)
    except AutopackError as exc:  # the wrong, an empty or an unmigrated database
        return refusal(exc)
    outcome = calibrate_task(params, include_run_ids, output_dir, checked.ref())
    publish_calibration_artifacts(outcome)
    message = calibration_outcome(outcome)
    get_run_logger().info("%s", message)
    return Completed(message=message, data=outcome)
