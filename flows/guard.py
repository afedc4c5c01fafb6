"""``db-identity-guard``: refuse to go on against the wrong, empty or unmigrated database."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from autopack.db.handle import open_database


@task(name="db-identity-guard-check", retries=0)
def check_identity(expect_db_id: str | None = None, allow_empty: bool = False) -> dict[str, Any]:
    """The foundation guard as a task; its output goes into every later step's logs."""
    report = open_database(
        expect_db_id=expect_db_id,
        allow_empty=allow_empty,
        counts=True,  # logged below; this flow runs once per pipeline, so the scan is affordable
    ).identity
    assert report is not None  # open_database verified it
    get_run_logger().info(
        "db id=%s url=%s revision=%s runs=%s phases=%s events=%s",
        report.db_id, report.url, report.schema_revision, report.counts["runs"],
        report.counts["phases"], report.counts["token_estimation_v2_events"],
    )
    return report.to_dict()


@flow(name="db-identity-guard")
def db_identity_guard(expect_db_id: str | None = None, allow_empty: bool = False) -> dict[str, Any]:
    return check_identity(expect_db_id, allow_empty)
