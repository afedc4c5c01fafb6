"""``telemetry-pipeline``: guard → validate one phase → batch drain → calibrate → gate → pull request.

The seed's eight-step "recommended path" as one flow run. A gate that does not pass ends the run
Completed, with its reasons in an artifact: no pull request is the right outcome then, not a failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from autopack.pipeline import check_target_repo
from flows.calibrate import calibrate
from flows.drain import batch_drain
from flows.guard import db_identity_guard
from flows.pull_request import open_calibration_pr_flow
from flows.validate import validate_single_phase


@flow(name="telemetry-pipeline")
def telemetry_pipeline(
    run_ids: list[str] | None = None,
    validate_run_id: str | None = None,
    validate_phase_id: str | None = None,
    batch_size: int = 200,
    workers: int = 2,
    max_consecutive_zero_yield: int | None = 10,
    max_fingerprint_repeats: int = 3,
    max_attempts_per_phase: int = 2,
    max_timeouts_per_run: int = 2,
    phase_timeout_seconds: float = 900,
    target_truncation: float = 0.05,
    holdout_fraction: float = 0.3,
    min_samples: int = 5,
    confidence_threshold: float = 0.7,
    dry_run: bool = False,
    target_repo: str = ".",
    output_dir: str = "reports",
    skip_drain: bool = False,
    expect_db_id: str | None = None,
) -> dict[str, Any]:
    logger = get_run_logger()
    target_repo = str(check_target_repo(Path(target_repo)))
    identity = db_identity_guard(expect_db_id=expect_db_id)
    db_id = identity["db_id"]
    logger.info("pipeline on database %s (%s)", db_id, identity["url"])

    drained: dict[str, Any] = {"processed": 0, "telemetry_events": 0}
    if not skip_drain:
        validation = validate_single_phase(
            validate_run_id or (run_ids[0] if run_ids else None), validate_phase_id
        )
        drained = batch_drain(
            run_ids=run_ids or [],
            batch_size=batch_size,
            workers=workers,
            max_consecutive_zero_yield=max_consecutive_zero_yield,
            max_fingerprint_repeats=max_fingerprint_repeats,
            max_attempts_per_phase=max_attempts_per_phase,
            max_timeouts_per_run=max_timeouts_per_run,
            phase_timeout_seconds=phase_timeout_seconds,
            expect_db_id=db_id,
        )
        drained["processed"] += 0 if validation.get("skipped") else 1
        drained["telemetry_events"] += int(validation.get("telemetry_events") or 0)

    calibration = calibrate(
        min_samples=min_samples,
        confidence_threshold=confidence_threshold,
        target_truncation=target_truncation,
        holdout_fraction=holdout_fraction,
        include_run_ids=run_ids or None,
        output_dir=output_dir,
        expect_db_id=db_id,
    )
    result: dict[str, Any] = {
        "db_id": db_id,
        "phases_drained": drained["processed"],
        "telemetry_events": drained["telemetry_events"],
        "calibration": {k: calibration.get(k) for k in ("gate", "report_path", "json_path", "plot_path", "metadata", "proposed_changes")},
        "pull_request": None,
    }
    gate = calibration.get("gate") or {}
    if not gate.get("passed"):
        reasons = gate.get("reasons") or ["no reason given"]
        create_markdown_artifact(
            key="calibration-gate",
            markdown="## Calibration gate not passed\n\nNo pull request was opened.\n\n"
            + "\n".join(f"- {reason}" for reason in reasons),
        )
        logger.info("gate not passed: %s", "; ".join(reasons))
        return result
    result["pull_request"] = open_calibration_pr_flow(calibration, target_repo, output_dir, dry_run)
    return result
