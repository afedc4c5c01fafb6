"""``calibrate``: the T5 calibration job, with its report (plot embedded) and group table as Prefect artifacts."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed

from autopack import params as p
from autopack.calibration import NoUsableSamplesError, run_calibration
from autopack.calibration.result import CalibrationOutcome, CalibrationResult
from autopack.db.handle import DatabaseRef, open_database
from autopack.params import CalibrationParams, PipelineParams
from autopack.pipeline import calibration_outcome

#: Columns of the ``calibration-groups`` table artifact.
GROUP_COLUMNS = ("category", "complexity", "n", "n_censored", "median_ratio", "pooling_weight", "budget_factor",
                 "confidence", "original_confidence")


@task(name="run-calibration")
def calibrate_task(
    params: CalibrationParams, include_run_ids: list[str] | None, output_dir: str, expect_db_id: str | None,
    database: DatabaseRef | None = None,
) -> CalibrationOutcome:
    """The library call; "no usable samples" is an outcome (``no_samples``: the reason), not a crash."""
    try:
        return CalibrationOutcome(result=run_calibration(
            database.open() if database else open_database(expect_db_id=expect_db_id),
            **params.model_dump(),
            include_run_ids=include_run_ids or None,
            output_dir=Path(output_dir),
        ))
    except NoUsableSamplesError as exc:
        get_run_logger().warning("%s", exc.one_line())
        return CalibrationOutcome(no_samples=exc.message)


def report_markdown(result: CalibrationResult) -> str | None:
    """The report with its plot embedded as a ``data:`` URI: the UI cannot load the PNG by a relative name."""
    report_path, plot_path = result.report_path, result.plot_path
    if not report_path or not Path(report_path).is_file():
        return None
    markdown = Path(report_path).read_text(encoding="utf-8")
    if plot_path and Path(plot_path).is_file():
        encoded = base64.b64encode(Path(plot_path).read_bytes()).decode("ascii")
        markdown = markdown.replace(f"]({Path(plot_path).name})", f"](data:image/png;base64,{encoded})")
    return markdown


def publish_calibration_artifacts(outcome: CalibrationOutcome) -> None:
    """The report and the group table, as artifacts of the current flow run (the parent's too)."""
    result = outcome.result
    if result is None:
        return
    markdown = report_markdown(result)
    if markdown is not None:
        create_markdown_artifact(key="calibration-report", markdown=markdown,
                                 description="token_estimator calibration report")
    if result.groups:
        create_table_artifact(
            key="calibration-groups",
            table=[{k: getattr(g, k) for k in GROUP_COLUMNS} for g in result.groups],
            description="calibration groups (category x complexity)",
        )


@flow(name="calibrate")
def calibrate(
    min_samples: p.MinSamples = CalibrationParams.parameter("min_samples"),
    confidence_threshold: p.ConfidenceThreshold = CalibrationParams.parameter("confidence_threshold"),
    target_truncation: p.TargetTruncation = CalibrationParams.parameter("target_truncation"),
    holdout_fraction: p.HoldoutFraction = CalibrationParams.parameter("holdout_fraction"),
    method: p.Method = CalibrationParams.parameter("method"),
    window_weeks: p.WindowWeeks = CalibrationParams.parameter("window_weeks"),
    include_run_ids: list[str] | None = None,
    output_dir: p.OutputDir = PipelineParams.parameter("output_dir"),
    expect_db_id: p.ExpectDbId = None,
    database: DatabaseRef | None = None,
) -> Any:
    """Calibrate (the statistics' parameters are ``autopack.params.CalibrationParams``); ``include_run_ids``:
    only these runs' telemetry; ``database``: the database a calling flow verified (not guarded again). The
    run's result is a ``CalibrationOutcome``: the result, or why there is none."""
    result = calibrate_task(CalibrationParams.pick(locals()), include_run_ids, output_dir, expect_db_id, database)
    publish_calibration_artifacts(result)
    message = calibration_outcome(result)
    get_run_logger().info("%s", message)
    return Completed(message=message, data=result)
