"""``open-calibration-pr``: turn a gated calibration into a reviewed pull request (never merged)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed

from autopack.artifacts import pull_request_markdown, verification_failure_markdown
from autopack.calibration.result import CalibrationResult
from autopack.db.handle import DatabaseRef, database_at
from autopack.github.errors import VerificationError
from autopack.github.result import PublishResult
from autopack.pipeline import PublishSettings, publish_pull_request


@task(name="publish-calibration-pr")
def publish_task(
    calibration: CalibrationResult, publish: PublishSettings, target_repo: str, output_dir: str,
    flow_run_url: str | None = None, database: DatabaseRef | None = None,
) -> PublishResult:
    try:
        return publish_pull_request(calibration, publish, target_repo=target_repo, output_dir=output_dir,
                                    flow_run_url=flow_run_url,
                                    database=database.open() if database else database_at())
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
    database: DatabaseRef | None = None,
) -> Any:
    """Publish with the settings the pipeline checked before draining (``publish``: no second check);
    ``database``: where proposals are remembered (the calling flow's verified database; else the settings')."""
    result = publish_task(calibration, publish, target_repo, output_dir, flow_run_url, database)
    publish_pull_request_artifact(result)
    summary = result.summary or result.status
    get_run_logger().info("%s", summary)
    return Completed(message=summary[:300], data=result)
