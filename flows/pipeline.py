"""``telemetry-pipeline``: guard → validate one phase → batch drain → calibrate → gate → pull request.

The seed's eight-step "recommended path" as one flow run. Its final state says what happened in one line
(``gate not passed: …``, ``PR #3 updated: …``, ``dry run: branch … written …``), and the run itself carries
the artifacts a reviewer opens: drain summary, calibration report (plot embedded), group table, gate, pull
request. A gate that does not pass, or a database without samples, ends the run Completed with the reason:
no pull request is the right outcome then, not a failure. Bad set-ups end it Failed with one line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

from prefect import State, flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed

from autopack import params as p
from autopack.calibration.result import CalibrationOutcome
from autopack.config import get_settings
from autopack.db.handle import DatabaseRef, verified_database
from autopack.errors import AutopackError
from autopack.params import PipelineParams
from autopack.pipeline import (
    check_deployment_database,
    check_deployment_locations,
    check_publish_settings,
    check_target_repo,
    state_message,
)
from autopack.timing import StageClock
from flows.calibrate import calibrate, publish_calibration_artifacts
from flows.drain import batch_drain
from flows.guard import db_identity_guard
from flows.logs import quiet_run_logs
from flows.pull_request import github_token, open_calibration_pr_flow, publish_pull_request_artifact
from flows.states import refusal, settle
from flows.validate import validate_single_phase


def in_deployment() -> bool:
    """True when this flow run was started from a deployment (by a worker, in a temporary clone)."""
    from prefect.runtime import deployment

    return deployment.id is not None


def flow_run_ui_url() -> str | None:
    """This run's page in the Prefect UI; None on the temporary local server, which serves no UI."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_UI_URL

    if not PREFECT_UI_URL.value() or flow_run.id is None:
        return None
    return str(flow_run.ui_url)


def preflight(*, target_repo: str, output_dir: str, dry_run: bool) -> str:
    """Everything that can be refused before a phase is drained; returns the resolved target checkout."""
    settings = get_settings()
    if in_deployment():
        check_deployment_database(settings)
        check_deployment_locations(output_dir=output_dir, target_repo=target_repo, dry_run=dry_run)
    check_publish_settings(dry_run=dry_run, token=None if dry_run else github_token(),
                           repository=settings.github_repository)
    return str(check_target_repo(Path(target_repo)))


def drain_summary_markdown(drained: dict[str, Any], database: DatabaseRef) -> str:
    """The drain session's summary as the CLI prints it, else the counts the flow returned."""
    session_id = drained.get("session_id")
    if session_id:
        try:
            from autopack.execution.batch_report import format_summary
            from autopack.execution.sessions import SessionStore

            session = SessionStore(database.open()).load(str(session_id))
            if session is not None:
                return f"```\n{format_summary(session)}\n```"
        except Exception as exc:  # the summary is a courtesy: the counts below say the same in short
            get_run_logger().warning("drain summary unavailable (%s); showing the counts", exc)
    rows = [f"| {key} | {value} |" for key, value in drained.items() if not isinstance(value, (dict, list))]
    return "\n".join(["| | |", "|---|---|", *rows])


def gate_markdown(outcome: CalibrationOutcome) -> str:
    passed = outcome.gate_passed
    lines = [f"## Calibration gate {'passed' if passed else 'not passed'}", ""]
    calibration = outcome.result
    if calibration is None:
        lines += [f"No calibration: {outcome.no_samples}", "", "No pull request was opened."]
        return "\n".join(lines)
    lines += [f"- {reason}" for reason in calibration.gate.reasons]
    changes = calibration.proposed_changes
    if passed and changes:
        lines += ["", "| coefficient | group | from | to |", "|---|---|---:|---:|"]
        for change in changes:
            key = "/".join(change.key)
            old = "–" if change.old is None else change.old
            lines.append(f"| {change.coefficient} | {key} | {old} | {change.new} |")
    if not passed:
        lines += ["", "No pull request was opened."]
    return "\n".join(lines)


@flow(name="telemetry-pipeline")
def telemetry_pipeline(
    run_ids: p.RunIds = PipelineParams.parameter("run_ids"),
    validate_run_id: p.ValidateRunId = PipelineParams.parameter("validate_run_id"),
    validate_phase_id: p.ValidatePhaseId = PipelineParams.parameter("validate_phase_id"),
    batch_size: p.BatchSize = PipelineParams.parameter("batch_size"),
    states: p.States = PipelineParams.parameter("states"),
    max_consecutive_zero_yield: p.MaxConsecutiveZeroYield = PipelineParams.parameter("max_consecutive_zero_yield"),
    max_fingerprint_repeats: p.MaxFingerprintRepeats = PipelineParams.parameter("max_fingerprint_repeats"),
    max_attempts_per_phase: p.MaxAttemptsPerPhase = PipelineParams.parameter("max_attempts_per_phase"),
    max_timeouts_per_run: p.MaxTimeoutsPerRun = PipelineParams.parameter("max_timeouts_per_run"),
    phase_timeout_seconds: p.PhaseTimeoutSeconds = PipelineParams.parameter("phase_timeout_seconds"),
    max_total_minutes: p.MaxTotalMinutes = PipelineParams.parameter("max_total_minutes"),
    skip_run_prefixes: p.SkipRunPrefixes = PipelineParams.parameter("skip_run_prefixes"),
    workers: p.Workers = PipelineParams.parameter("workers"),
    resume: p.Resume = PipelineParams.parameter("resume"),
    lease_seconds: p.LeaseSeconds = PipelineParams.parameter("lease_seconds"),
    provider_concurrency: p.ProviderConcurrency = PipelineParams.parameter("provider_concurrency"),
    min_samples: p.MinSamples = PipelineParams.parameter("min_samples"),
    confidence_threshold: p.ConfidenceThreshold = PipelineParams.parameter("confidence_threshold"),
    target_truncation: p.TargetTruncation = PipelineParams.parameter("target_truncation"),
    holdout_fraction: p.HoldoutFraction = PipelineParams.parameter("holdout_fraction"),
    method: p.Method = PipelineParams.parameter("method"),
    window_weeks: p.WindowWeeks = PipelineParams.parameter("window_weeks"),
    dry_run: p.DryRun = PipelineParams.parameter("dry_run"),
    target_repo: p.TargetRepo = PipelineParams.parameter("target_repo"),
    output_dir: p.OutputDir = PipelineParams.parameter("output_dir"),
    skip_drain: p.SkipDrain = PipelineParams.parameter("skip_drain"),
    expect_db_id: p.ExpectDbId = PipelineParams.parameter("expect_db_id"),
    database: DatabaseRef | None = None,
) -> Any:
    """The parameters are ``autopack.params.PipelineParams``: the drain's and the calibration's, passed on as given.

    ``database``: the database ``autopack pipeline run`` verified already; without it the guard subflow runs. Either
    way the guard runs once per pipeline run: the steps get the verified database and do not guard again."""
    params = PipelineParams.pick(locals())
    quiet_run_logs()
    logger = get_run_logger()
    started_at = time.time()
    clock = StageClock(digits=2)
    lap, timings = clock.lap, clock.timings

    # Each step is a subflow run, started with the previous step's result as ``wait_for``: the run graph shows
    # them in order, linked. A step that refuses ends this run Failed with its one line (``settle``).
    try:
        target_repo = preflight(target_repo=target_repo, output_dir=output_dir, dry_run=dry_run)
        after: list[Any] = []
        if database is None:
            identity = settle(db_identity_guard(expect_db_id=expect_db_id, return_state=True))
            lap("guard")
            database = verified_database(identity["db_id"]).ref()
            after = [identity]
        db_id = str(database.db_id)
        logger.info("pipeline on database %s (%s)", db_id, database.masked_url)

        drained: dict[str, Any] = {"processed": 0, "telemetry_events": 0}
        if not skip_drain:
            validation = settle(validate_single_phase(
                validate_run_id or (run_ids[0] if run_ids else None), validate_phase_id, database=database,
                wait_for=after, return_state=True,
            ))
            lap("validate")
            drain_result = settle(batch_drain(**params.drain().model_dump(), expect_db_id=db_id, database=database,
                                              wait_for=[validation], return_state=True))
            after = [drain_result]
            lap("drain")
            drained = dict(drain_result)
            create_markdown_artifact(key="batch-drain-summary", markdown=drain_summary_markdown(drained, database),
                                     description="batch drain of this pipeline run")
            drained["processed"] = int(drained.get("processed") or 0) + (0 if validation.get("skipped") else 1)
            drained["telemetry_events"] = (int(drained.get("telemetry_events") or 0)
                                           + int(validation.get("telemetry_events") or 0))

        # called from this synchronous flow, a subflow with return_state=True returns its State (not an awaitable)
        calibration: CalibrationOutcome = settle(cast("State[Any]", calibrate(
            **params.calibration().model_dump(), include_run_ids=run_ids or None, output_dir=output_dir,
            expect_db_id=db_id, database=database, wait_for=after, return_state=True)))
        lap("calibrate")
        publish_calibration_artifacts(calibration)
        create_markdown_artifact(key="calibration-gate", markdown=gate_markdown(calibration),
                                 description="calibration gate")
        result: dict[str, Any] = {
            "db_id": db_id,
            "phases_drained": drained["processed"],
            "telemetry_events": drained["telemetry_events"],
            "calibration": calibration,
            "pull_request": None,
            "target_repo": target_repo,
            "flow_run_url": flow_run_ui_url(),
            "started_at": started_at,
            "timings": timings,
        }
        if calibration.result is not None and calibration.gate_passed:
            result["pull_request"] = settle(cast("State[Any]", open_calibration_pr_flow(
                calibration.result, target_repo, output_dir, dry_run, result["flow_run_url"], database,
                wait_for=[calibration],
                return_state=True,
            )))
            lap("pull_request")
            publish_pull_request_artifact(result["pull_request"])
    except AutopackError as exc:
        return refusal(exc)
    result["message"] = state_message(result)
    logger.info("%s", result["message"])
    return Completed(message=result["message"], data=result)
