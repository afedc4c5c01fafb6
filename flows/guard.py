"""``db-identity-guard``: refuse to go on against the wrong, empty or unmigrated database."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from autopack.db.identity import IdentityReport
from autopack.pipeline import pipeline_guard


@task(name="db-identity-guard-check", retries=0)
def check_identity(expect_db_id: str | None = None, allow_empty: bool = False) -> IdentityReport:
    """The foundation guard as a task; its output goes into every later step's logs."""
    report = pipeline_guard(expect_db_id, allow_empty).identity
    assert report is not None  # open_database verified it
    get_run_logger().info(
        "db id=%s url=%s revision=%s runs=%s phases=%s events=%s",
        report.db_id, report.url, report.schema_revision, report.counts["runs"],
        report.counts["phases"], report.counts["token_estimation_v2_events"],
    )
    return report


@flow(name="db-identity-guard")
def db_identity_guard(expect_db_id: str | None = None, allow_empty: bool = False) -> IdentityReport:
    return check_identity(expect_db_id, allow_empty)
