"""``telemetry-pipeline``: guard → validate one phase → batch drain → calibrate → gate → pull request.

The seed's eight-step "recommended path" as one flow run. Its final state says what happened in one line
(``gate not passed: …``, ``PR #3 updated: …``, ``dry run: branch … written …``), and the run itself carries
the artifacts a reviewer opens: drain summary, calibration report (plot embedded), group table, gate, pull
request. A gate that does not pass, or a database without samples, ends the run Completed with the reason:
no pull request is the right outcome then, not a failure. Bad set-ups end it Failed with one line.
"""

from __future__ import annotations

import time
from typing import Any, cast

from prefect import State, flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed

from autopack.artifacts import drain_summary_markdown, gate_markdown
from autopack.calibration.result import CalibrationOutcome
from autopack.db.handle import DatabaseRef, verified_database
from autopack.errors import AutopackError
from autopack.execution.batch import DrainSummary
from autopack.github.result import PublishResult
from autopack.params import PipelineParams
from autopack.pipeline import PipelineResult, Preflight, ValidationResult, drained_totals, preflight, state_message
from autopack.timing import StageClock
from flows.calibrate import calibrate, publish_calibration_artifacts
from flows.drain import batch_drain
from flows.guard import db_identity_guard
from flows.logs import quiet_run_logs
from flows.pull_request import open_calibration_pr_flow, publish_pull_request_artifact
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


@flow(name="telemetry-pipeline")
def telemetry_pipeline(
    params: PipelineParams = PipelineParams(), database: DatabaseRef | None = None, checked: Preflight | None = None,
) -> Any:
    """``params`` (``autopack.params.PipelineParams``): the drain's and the calibration's, passed on as given,
    and the pipeline's own.

    ``database``: the database ``autopack pipeline run`` verified already; without it the guard subflow runs.
    Either way the guard runs once per pipeline run: the steps get the verified database and do not guard again.
    ``checked``: that command's ``preflight``, likewise; a deployment's run (no command before it) checks itself."""
    quiet_run_logs()
    logger = get_run_logger()
    started_at = time.time()
    clock = StageClock(digits=2)
    lap, timings = clock.lap, clock.timings

    # Each step is a subflow run, started with the previous step's result as ``wait_for``: the run graph shows
    # them in order, linked. A step that refuses ends this run Failed with its one line (``settle``).
    try:
        deployed = in_deployment()
        if checked is None or deployed:
            checked = preflight(params, in_deployment=deployed)
        after: list[Any] = []
        if database is None:
            identity = settle(db_identity_guard(expect_db_id=params.expect_db_id, return_state=True))
            lap("guard")
            database = verified_database(identity.db_id).ref()
            after = [identity]
        db_id = str(database.db_id)
        logger.info("pipeline on database %s (%s)", db_id, database.masked_url)

        validation: ValidationResult | None = None
        drained: DrainSummary | None = None
        if not params.skip_drain:
            validation = settle(cast("State[Any]", validate_single_phase(
                params.validate_run_id or (params.run_ids[0] if params.run_ids else None), params.validate_phase_id,
                database=database, wait_for=after, return_state=True,
            )))
            lap("validate")
            drained = settle(batch_drain(params.drain(), expect_db_id=db_id, database=database,
                                         wait_for=[validation], return_state=True))
            after = [drained]
            lap("drain")
            create_markdown_artifact(key="batch-drain-summary",
                                     markdown=drain_summary_markdown(drained, database.open()),
                                     description="batch drain of this pipeline run")
        phases_drained, telemetry_events = drained_totals(drained, validation)

        # called from this synchronous flow, a subflow with return_state=True returns its State (not an awaitable)
        calibration: CalibrationOutcome = settle(cast("State[Any]", calibrate(
            params.calibration(), include_run_ids=params.run_ids or None, output_dir=params.output_dir,
            expect_db_id=db_id, database=database, wait_for=after, return_state=True)))
        lap("calibrate")
        publish_calibration_artifacts(calibration)
        create_markdown_artifact(key="calibration-gate", markdown=gate_markdown(calibration),
                                 description="calibration gate")
        pull_request: PublishResult | None = None
        flow_run_url = flow_run_ui_url()
        if calibration.result is not None and calibration.gate_passed:
            pull_request = settle(cast("State[Any]", open_calibration_pr_flow(
                calibration.result, checked.publish, checked.target_repo, params.output_dir, flow_run_url,
                database=database, wait_for=[calibration], return_state=True,
            )))
            lap("pull_request")
            publish_pull_request_artifact(pull_request)
    except AutopackError as exc:
        return refusal(exc)
    result = PipelineResult(db_id=db_id, phases_drained=phases_drained, telemetry_events=telemetry_events,
                            calibration=calibration, pull_request=pull_request, target_repo=checked.target_repo,
                            flow_run_url=flow_run_url, started_at=started_at, timings=timings)
    result = result.model_copy(update={"message": state_message(result)})
    logger.info("%s", result.message)
    return Completed(message=result.message, data=result)
