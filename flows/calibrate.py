"""``calibrate``: the T5 calibration job, with its report and group table as Prefect artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from autopack.calibration import run_calibration


@task(name="run-calibration")
def calibrate_task(
    min_samples: int,
    confidence_threshold: float,
    target_truncation: float,
    holdout_fraction: float,
    include_run_ids: list[str] | None,
    output_dir: str,
    expect_db_id: str | None,
) -> dict[str, Any]:
    return run_calibration(
        min_samples=min_samples,
        confidence_threshold=confidence_threshold,
        target_truncation=target_truncation,
        holdout_fraction=holdout_fraction,
        include_run_ids=include_run_ids or None,
        output_dir=Path(output_dir),
        expect_db_id=expect_db_id,
    )


@flow(name="calibrate")
def calibrate(
    min_samples: int = 5,
    confidence_threshold: float = 0.7,
    target_truncation: float = 0.05,
    holdout_fraction: float = 0.3,
    include_run_ids: list[str] | None = None,
    output_dir: str = "reports",
    expect_db_id: str | None = None,
) -> dict[str, Any]:
    result = calibrate_task(
        min_samples, confidence_threshold, target_truncation, holdout_fraction, include_run_ids, output_dir,
        expect_db_id,
    )
    report_path = result.get("report_path")
    if report_path and Path(report_path).exists():
        create_markdown_artifact(
            key="calibration-report", markdown=Path(report_path).read_text(encoding="utf-8"),
            description="token_estimator calibration report",
        )
    groups = result.get("groups") or []
    if groups:
        create_table_artifact(
            key="calibration-groups",
            table=[
                {k: g.get(k) for k in ("category", "complexity", "n", "n_censored", "median_ratio", "pooling_weight",
                                        "budget_factor", "confidence", "original_confidence")}
                for g in groups
            ],
            description="calibration groups (category x complexity)",
        )
    gate = result.get("gate") or {}
    get_run_logger().info("calibration gate passed=%s reasons=%s", gate.get("passed"), gate.get("reasons"))
    return result
