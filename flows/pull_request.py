"""``open-calibration-pr``: turn a gated calibration into a reviewed pull request (never merged)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed

from autopack.artifacts import pull_request_markdown, verification_failure_markdown
from autopack.calibration.result import CalibrationResult
from autopack.db.handle import DatabaseRef, reopen_or_open
from autopack.errors import AutopackError
from autopack.github.errors import VerificationError
from autopack.github.result import PublishResult
from autopack.params import ExpectDbId
from autopack.pipeline import PublishSettings, publish_pull_request
from flows.logs import quiet_run_logs
from flows.states import refusal


@task(name="publish-calibration-pr")
def publish_task(
    calibration: CalibrationResult, publish: PublishSettings, target_repo: str, output_dir: str,
    flow_run_url: str | None, database: DatabaseRef,
) -> PublishResult:
    try:
        return publish_pull_request(calibration, publish, target_repo=target_repo, output_dir=output_dir,
                                    flow_run_url=flow_run_url, database=database.open())
    except VerificationError as exc:
        # Nothing was pushed; the reviewer sees which test failed and why, next to the run.
        details = str(exc.details_path) if exc.details_path else None
        create_markdown_artifact(key="calibration-verification-failure",
                                 markdown=verification_failure_markdown(details, exc.one_line()),
                                 description=exc.one_line()[:500])
        raise


def publish_pull_request_artifact(result: PublishResult) -> None:
    create_markdown_artifact(key="calibration-pull-request", markdown=pull_request_markdown(result),
                             description=result.summary or result.status)


@flow(name="open-calibration-pr")
def open_calibration_pr_flow(
    calibration: CalibrationResult,
    publish: PublishSettings,
    target_repo: str,
    output_dir: str,
    flow_run_url: str | None = None,
    expect_db_id: ExpectDbId = None,
    database: DatabaseRef | None = None,
) -> Any:
    """Publish with the settings the pipeline checked before draining (``publish``: no second check).

    ``database``: where proposals are remembered, the database the pipeline's guard verified (not guarded
    again); run on its own (no ``database``), the settings' database is guarded here (``expect_db_id``, else
    ``AUTOPACK_EXPECTED_DB_ID``), and a refusal ends the run Failed in one line before anything is written."""
    quiet_run_logs()
    try:
        proposals = reopen_or_open(database, expect_db_id=expect_db_id)
    except AutopackError as exc:  # the wrong, an empty or an unmigrated database
        return refusal(exc)
    result = publish_task(calibration, publish, target_repo, output_dir, flow_run_url, proposals.ref())
    publish_pull_request_artifact(result)
    summary = result.summary or result.status
    get_run_logger().info("%s", summary)
    return Completed(message=summary[:300], data=result)
