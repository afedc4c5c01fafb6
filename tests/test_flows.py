"""The Prefect flows on their own: validation, transient-only retries, a gate that does not pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client

from autopack.db.engine import get_engine, session_scope
from autopack.execution.runs import create_run
from autopack.execution.seed_runs import ensure_seed_runs
from autopack.execution.spec import PhaseSpec, RunSpec
from flows.drain import LLM_CONCURRENCY_LIMIT, batch_drain
from flows.guard import db_identity_guard
from flows.pipeline import telemetry_pipeline
from flows.validate import ValidationFailed, validate_single_phase
from test_pipeline_flow import project_checkout


def make_run(url: str, run_id: str, *descriptions: str) -> None:
    phases = [
        PhaseSpec(phase_id=f"p{i}", description=text, category="implementation", complexity="low",
                  deliverables=[f"src/m{i}.py"])
        for i, text in enumerate(descriptions)
    ]
    with session_scope(url) as session:
        create_run(session, RunSpec(run_id=run_id, phases=phases))


def attempts_of(url: str, run_id: str, phase_id: str) -> int:
    with get_engine(url).connect() as connection:
        return connection.execute(
            sa.text("SELECT COUNT(*) FROM drain_results WHERE run_id = :r AND phase_id = :p"),
            {"r": run_id, "p": phase_id},
        ).scalar_one()


def test_guard_flow_returns_the_database_identity(db_url: str, prefect_harness: None) -> None:
    make_run(db_url, "r", "write a helper")
    identity = db_identity_guard()
    assert identity["counts"]["runs"] == 1 and len(identity["db_id"]) == 32


def test_validation_fails_with_the_seed_hint_when_no_telemetry_is_recorded(db_url: str, prefect_harness: None) -> None:
    make_run(db_url, "r", "write a helper [sim:auth-error]")
    with pytest.raises(ValidationFailed, match="TELEMETRY_DB_ENABLED"):
        validate_single_phase("r", "p0")


def test_validation_passes_on_a_phase_that_records_telemetry(db_url: str, prefect_harness: None) -> None:
    make_run(db_url, "r", "write a helper")
    result = validate_single_phase("r", "p0")
    assert result["telemetry_events"] >= 1


def test_batch_drain_retries_only_transient_provider_failures(db_url: str, prefect_harness: None) -> None:
    make_run(db_url, "r", "helper one [sim:unavailable]", "helper two [sim:auth-error]", "helper three")
    summary = batch_drain(run_ids=["r"], batch_size=10, workers=2, max_attempts_per_phase=1,
                          max_fingerprint_repeats=10)
    assert attempts_of(db_url, "r", "p0") == 3  # the first attempt and two Prefect retries
    assert attempts_of(db_url, "r", "p1") == 1  # an auth error is final
    assert attempts_of(db_url, "r", "p2") == 1
    assert summary["success"] == 1


def test_batch_drain_creates_the_provider_concurrency_limit(db_url: str, prefect_harness: None) -> None:
    make_run(db_url, "r", "write a helper")
    batch_drain(run_ids=["r"], workers=3)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(LLM_CONCURRENCY_LIMIT).limit == 3


def test_pipeline_with_a_failed_gate_completes_without_a_pull_request(
    db_url: str, prefect_harness: None, tmp_path: Path
) -> None:
    with session_scope(db_url) as session:
        ensure_seed_runs(session, ["telemetry-collection-v4"])
    target = project_checkout(tmp_path / "target")
    state = telemetry_pipeline(run_ids=["telemetry-collection-v4"], output_dir=str(tmp_path / "reports"),
                               target_repo=str(target), min_samples=50, dry_run=True, return_state=True)
    assert state.is_completed()
    result = state.result()
    assert result["pull_request"] is None and not result["calibration"]["gate"]["passed"]


def test_batch_drain_times_out_a_slow_phase_and_releases_it(
    db_url: str, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOPACK_SIM_LATENCY_SECONDS", "3")
    make_run(db_url, "r", "write a helper")
    summary = batch_drain(run_ids=["r"], workers=1, phase_timeout_seconds=1, max_timeouts_per_run=1)
    with get_engine(db_url).connect() as connection:
        state, owner = connection.execute(
            sa.text("SELECT state, lease_owner FROM phases WHERE run_id = 'r'")
        ).one()
        reasons = connection.execute(sa.text("SELECT zero_yield_reason FROM drain_results")).scalars().all()
    assert (state, owner) == ("TIMEOUT", None)
    assert reasons == ["timeout"] and summary["failed"] == 1
