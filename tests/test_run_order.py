"""Runs are drained and listed in week order for any week number (``autopack.run_order``).

Week k's copy of a seed run is ``telemetry-collection-week<k>-v4``; compared as text, week 10 sorted before
week 2, so a collection past nine weeks was drained, validated and listed out of order."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import sqlalchemy as sa
from cli_runner import run_cli
from test_drain_batch import drain
from test_drain_batch_support import behaviour, make_run

from autopack.db.engine import session_scope
from autopack.db.handle import database_at
from autopack.db.models import Run
from autopack.execution.batch_report import format_summary
from autopack.execution.leases import claim_next
from autopack.execution.seed_runs import V4_RUN_ID, week_run_id
from autopack.pipeline import validation_phase
from autopack.run_order import run_order, sorted_runs

#: Created in this order, so that neither creation time nor text order gives the week order.
CREATED = (11, 2, 10, 9)
IN_WEEK_ORDER = [week_run_id(V4_RUN_ID, week) for week in (2, 9, 10, 11)]


@pytest.fixture
def weeks(db_url: str) -> str:
    for week in CREATED:
        make_run(db_url, week_run_id(V4_RUN_ID, week), [behaviour("ok"), behaviour("ok")])
    return db_url


def test_a_batch_drain_takes_weeks_10_and_11_after_weeks_2_and_9(weeks: str) -> None:
    state = drain(weeks, batch_size=4)  # each run's first phase (its sample), in run order
    assert [result.run_id for result in state.results] == IN_WEEK_ORDER


def test_the_drain_report_lists_weeks_10_and_11_after_weeks_2_and_9(weeks: str) -> None:
    report = format_summary(drain(weeks, batch_size=4))
    assert sorted(IN_WEEK_ORDER, key=report.index) == IN_WEEK_ORDER
    listed = [line.split(":")[0].strip() for line in report.splitlines() if line.startswith("  telemetry-")]
    assert listed == IN_WEEK_ORDER


def test_claims_take_weeks_10_and_11_after_weeks_2_and_9(weeks: str) -> None:
    """``claim_next`` (the API's drain) orders in SQL, with SKIP LOCKED on PostgreSQL."""
    taken, left = [], list(IN_WEEK_ORDER)
    with session_scope(weeks) as session:
        while left:
            claim = claim_next(session, "test", run_ids=left)
            assert claim is not None
            taken.append(claim.run_id)
            left.remove(claim.run_id)
    assert taken == IN_WEEK_ORDER


def test_the_pipeline_validates_a_phase_of_the_oldest_week(weeks: str) -> None:
    assert validation_phase(database_at(weeks), None, None) == (IN_WEEK_ORDER[0], "p000")


def test_runs_list_shows_weeks_10_and_11_after_weeks_2_and_9_created_at_once(
    weeks: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with session_scope(weeks) as session:  # one instant, as a coarse clock or an import would give them
        session.execute(sa.update(Run).values(created_at=datetime(2026, 12, 7, 6, 0)))
    code, out, err = run_cli(capsys, "runs", "list", "--json")
    assert code == 0, err
    assert [run["run_id"] for run in json.loads(out)] == IN_WEEK_ORDER


def test_the_sql_order_is_the_python_order(db_url: str) -> None:
    """``run_order`` (queries) and ``run_order_key`` (reports, the drain's ranking) are one rule."""
    ids = ["zeta", "abc", V4_RUN_ID, "telemetry-collection-v7", "telemetry-collection-weekly",
           "telemetry-collection-week12", "telemetry-collection-week2-", "telemetry-collection-week03-v4",
           "telemetry-collection-week100-v4", "x-week10-v4", *reversed(IN_WEEK_ORDER)]
    with session_scope(db_url) as session:
        session.execute(sa.insert(Run), [{"id": run_id, "state": "RUN_CREATED"} for run_id in ids])
        in_sql = list(session.scalars(sa.select(Run.id).order_by(*run_order(Run.id))))
    assert in_sql == sorted_runs(ids)
    assert [run_id for run_id in in_sql if run_id in IN_WEEK_ORDER] == IN_WEEK_ORDER  # not text order, in both
