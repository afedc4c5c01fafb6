"""One engine, two front ends: ``drain batch`` (killable processes) and the Prefect ``batch-drain`` flow (task
runs) drain the same phases into two fresh databases and must leave the same session, results, phases and
telemetry rows. The phases include a success, an escalated retry, a provider failure retried by the drain, a
validation failure, and a timeout after one telemetry row was written (the executor then hangs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import POSTGRES_ADMIN_URL, create_postgres_database, drop_postgres_database
from test_drain_batch_support import HANG_MARKER

from autopack.db.engine import dispose_engines, session_scope
from autopack.db.handle import database_at, open_database
from autopack.db.migrate import upgrade_database
from autopack.db.models import DrainResult, DrainSession, Phase, TokenEstimationV2Event
from autopack.execution.batch import BatchOptions, run_batch_drain
from autopack.execution.batch_report import LineReporter
from autopack.execution.runs import create_run
from autopack.execution.spec import PhaseSpec, RunSpec
from autopack.params import DrainParams

HANG_EXECUTOR = "test_drain_batch_support:hang_on_retry_execute_phase"
RUNS = {
    "a": ["write a helper", "write a parser [sim:truncate-once]", "call the api [sim:auth-error]",
          "write a module [sim:invalid-output]"],
    "b": [f"write a slow module {HANG_MARKER} [sim:truncate-once]"],
    "c": ["write another helper"],
}
OPTIONS: dict[str, Any] = {"batch_size": 20, "workers": 1, "phase_timeout_seconds": 6.0, "max_attempts_per_phase": 2,
                           "lease_seconds": 30.0}


@pytest.fixture
def twin_urls(db_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two fresh migrated databases of the same kind (SQLite files, or PostgreSQL databases)."""
    if db_url.startswith("sqlite"):
        other = f"sqlite:///{tmp_path / 'twin.db'}"
        upgrade_database(database_at(other))
        yield db_url, other
        return
    assert POSTGRES_ADMIN_URL
    other = create_postgres_database()
    try:
        upgrade_database(database_at(other))
        yield db_url, other
    finally:
        dispose_engines()
        drop_postgres_database(other)


def seed(url: str) -> None:
    for run_id, descriptions in RUNS.items():
        spec = RunSpec(run_id=run_id, phases=[
            PhaseSpec(phase_id=f"p{i}", description=text, category="implementation", complexity="low",
                      deliverables=[f"src/{run_id}_{i}.py"])
            for i, text in enumerate(descriptions)
        ])
        with session_scope(url) as db:
            create_run(db, spec)


def snapshot(url: str) -> dict[str, Any]:
    """Everything a drain leaves behind, without what legitimately differs (ids, owners, clocks)."""
    ev = TokenEstimationV2Event
    with session_scope(url) as db:
        session = db.scalars(sa.select(DrainSession)).one()
        results = db.scalars(sa.select(DrainResult).order_by(DrainResult.id)).all()
        phases = db.execute(sa.select(Phase.run_id, Phase.phase_id, Phase.state, Phase.builder_attempts,
                                      Phase.last_failure_reason, Phase.lease_owner).order_by(Phase.run_id, Phase.phase_id)).all()
        events = db.execute(
            sa.select(ev.run_id, ev.phase_id, ev.attempt_index, ev.call_index, ev.predicted_output_tokens,
                      ev.actual_output_tokens, ev.selected_budget, ev.actual_max_tokens, ev.success, ev.truncated,
                      ev.phase_outcome)
            .order_by(ev.run_id, ev.phase_id, ev.attempt_index, ev.call_index)
        ).all()
        return {
            "session": {column: getattr(session, column) for column in (
                "status", "stop_reason", "batch_size", "total_processed", "total_success", "total_failed",
                "total_timeouts", "total_telemetry_events", "consecutive_zero_yield", "fingerprint_counts",
                "stopped_fingerprints", "stopped_runs", "sampled_runs", "promising_runs", "deprioritized_runs")},
            "results": [
                (r.run_id, r.phase_id, r.attempt_index, r.initial_state, r.final_state, r.success, r.error_message,
                 r.failure_fingerprint, r.telemetry_events_collected, r.llm_calls, r.reached_llm_boundary,
                 r.zero_yield_reason)
                for r in results
            ],
            "phases": [tuple(p) for p in phases],
            "events": [tuple(e) for e in events],
        }


def test_cli_engine_and_prefect_flow_leave_the_same_database(
    twin_urls: tuple[str, str], prefect_harness: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cli_url, flow_url = twin_urls
    monkeypatch.setenv("AUTOPACK_LLM_PROVIDER", "simulated")
    monkeypatch.setenv("AUTOPACK_SIM_LATENCY_SECONDS", "0")
    for url in twin_urls:
        seed(url)

    monkeypatch.setenv("AUTOPACK_WORKSPACE_DIR", str(tmp_path / "cli-workspaces"))  # the files each writes
    report = run_batch_drain(BatchOptions(**OPTIONS), open_database(cli_url), executor=HANG_EXECUTOR,
                             reporter=LineReporter(open(tmp_path / "cli.log", "w")))  # noqa: SIM115
    assert report.state.total_timeouts == 1

    import flows.drain

    monkeypatch.setattr(flows.drain, "PHASE_EXECUTOR", HANG_EXECUTOR)
    monkeypatch.setenv("DATABASE_URL", flow_url)
    monkeypatch.setenv("AUTOPACK_WORKSPACE_DIR", str(tmp_path / "flow-workspaces"))
    summary = flows.drain.batch_drain(DrainParams(**OPTIONS))
    assert summary.timeouts == 1

    cli, prefect = snapshot(cli_url), snapshot(flow_url)
    assert prefect["session"] == cli["session"]
    assert prefect["results"] == cli["results"]
    assert prefect["phases"] == cli["phases"]
    assert prefect["events"] == cli["events"]

    # what the comparison covers: every kind of outcome, and a timeout that counts the row it really wrote
    outcomes = {(r[0], r[1]): r for r in cli["results"]}
    assert outcomes[("b", "p0")][4:6] == ("TIMEOUT", False) and outcomes[("b", "p0")][8] == 1
    assert [e[2] for e in cli["events"] if e[0] == "b"] == [0]  # the escalated retry hung: no second row
    assert outcomes[("a", "p1")][4] == "COMPLETE" and outcomes[("a", "p1")][8] == 2
    assert outcomes[("a", "p3")][4] == "FAILED" and outcomes[("a", "p3")][8] == 1  # rejected output, sampled
    p2 = [r for r in cli["results"] if r[:2] == ("a", "p2")]
    assert len(p2) == 2 and p2[0][11] == "execution_error"  # the provider failure, retried once by the drain
    assert all(p[5] is None for p in cli["phases"])  # no lease left behind
