"""The Prefect flows on their own: validation, the drain's retries, gate, UI artifacts and logs, a failed gate."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from test_pipeline_flow import project_checkout

from autopack.db.engine import get_engine, session_scope
from autopack.db.handle import open_database
from autopack.execution.runs import create_run
from autopack.execution.seed_runs import ensure_seed_runs
from autopack.execution.spec import PhaseSpec, RunSpec
from autopack.params import DrainParams, PipelineParams
from autopack.pipeline import ValidationFailed
from flows.drain import batch_drain
from flows.guard import db_identity_guard
from flows.pipeline import telemetry_pipeline
from flows.validate import validate_single_phase


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
    assert identity.counts["runs"] == 1 and len(identity.db_id) == 32


def test_validation_fails_with_the_seed_hint_when_no_telemetry_is_recorded(db_url: str, prefect_harness: None) -> None:
    make_run(db_url, "r", "write a helper [sim:auth-error]")
    with pytest.raises(ValidationFailed, match="TELEMETRY_DB_ENABLED"):
        validate_single_phase("r", "p0")


def test_validation_passes_on_a_phase_that_records_telemetry(db_url: str, prefect_harness: None) -> None:
    make_run(db_url, "r", "write a helper")
    result = validate_single_phase("r", "p0")
    assert result.telemetry_events >= 1


def test_batch_drain_never_retries_a_task_run(db_url: str, prefect_harness: None) -> None:
    make_run(db_url, "r", "helper one [sim:unavailable]", "helper two [sim:auth-error]", "helper three")
    summary = batch_drain(DrainParams(run_ids=["r"], batch_size=10, workers=2, max_attempts_per_phase=1,
                                      max_fingerprint_repeats=10))
    assert attempts_of(db_url, "r", "p0") == 1  # a transient failure is the provider loop's to retry, not Prefect's
    assert attempts_of(db_url, "r", "p1") == 1
    assert attempts_of(db_url, "r", "p2") == 1
    assert summary.success == 1 and summary.failed == 2


def test_a_persistent_429_costs_only_the_provider_retry_loop(
    db_url: str, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_fake_server import FakeLLMServer

    server = FakeLLMServer(modes=["429"] * 50).start()
    try:
        monkeypatch.setenv("AUTOPACK_LLM_PROVIDER", "openai")
        monkeypatch.setenv("AUTOPACK_LLM_BASE_URL", f"{server.url}/v1")
        monkeypatch.setenv("AUTOPACK_LLM_MAX_RETRIES", "2")
        make_run(db_url, "r", "write a helper")
        summary = batch_drain(DrainParams(run_ids=["r"], workers=1, max_attempts_per_phase=1))
    finally:
        server.stop()
    assert summary.failed == 1
    assert len(server.requests) == 3  # one call and two retries; no task retries around them


def test_batch_drain_takes_provider_slots_from_the_database_not_prefect(db_url: str, prefect_harness: None) -> None:
    from autopack.db.models import ProviderSlot

    make_run(db_url, "r", "write a helper", "write another")
    batch_drain(DrainParams(run_ids=["r"], workers=2, provider_concurrency=3))
    with session_scope(db_url) as session:
        slots = session.execute(sa.select(ProviderSlot.name, ProviderSlot.slot, ProviderSlot.owner)).all()
    assert sorted(slots) == [("simulated", 0, None), ("simulated", 1, None), ("simulated", 2, None)]
    with get_client(sync_client=True) as client:  # the old Prefect global limit is gone
        assert "autopack-llm-calls" not in [limit.name for limit in client.read_global_concurrency_limits(limit=200)]


def test_batch_drain_shows_progress_summary_and_a_line_per_phase(db_url: str, prefect_harness: None) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    make_run(db_url, "r", "write a helper [sim:truncate-once]", "write one more", "call it [sim:auth-error]")
    state = batch_drain(DrainParams(run_ids=["r"], batch_size=50, workers=2, max_attempts_per_phase=1), return_state=True)
    assert state.is_completed() and "3 phases: 2 ok, 1 failed" in (state.message or "")
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["batch-drain-progress"])),
                                         flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        summary = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["batch-drain-summary"])),
                                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert [a.data for a in progress] == [100.0]  # 3 of 3 eligible, although the batch size is 50
    assert len(summary) == 1 and "BATCH DRAIN SUMMARY" in str(summary[0].data)
    messages = {t.name: t.state.message for t in task_runs}
    assert set(messages) == {"r/p0", "r/p1", "r/p2"}
    assert "2 attempts, 2 LLM calls, 2 telemetry rows" in messages["r/p0"] and "ceiling" in messages["r/p0"]
    assert "truncated" in messages["r/p0"]
    assert messages["r/p2"].startswith("r/p2 FAILED (stage provider)") and "401" in messages["r/p2"]
    assert all(t.state.is_completed() for t in task_runs)  # a failed phase is an outcome, not a task failure


def test_pipeline_with_a_failed_gate_completes_without_a_pull_request(
    db_url: str, prefect_harness: None, tmp_path: Path
) -> None:
    with session_scope(db_url) as session:
        ensure_seed_runs(session, ["telemetry-collection-v4"])
    target = project_checkout(tmp_path / "target")
    params = PipelineParams(run_ids=["telemetry-collection-v4"], output_dir=str(tmp_path / "reports"),
                            target_repo=str(target), min_samples=50, dry_run=True)
    state = telemetry_pipeline(params, return_state=True)
    assert state.is_completed()
    result = state.result()
    assert result.pull_request is None and not result.calibration.gate_passed


def test_batch_drain_times_out_a_slow_phase_and_releases_it(
    db_url: str, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOPACK_SIM_LATENCY_SECONDS", "3")
    make_run(db_url, "r", "write a helper")
    summary = batch_drain(DrainParams(run_ids=["r"], workers=1, phase_timeout_seconds=1, max_timeouts_per_run=1))
    assert summary.timeouts == 1
    with get_engine(db_url).connect() as connection:
        state, owner = connection.execute(
            sa.text("SELECT state, lease_owner FROM phases WHERE run_id = 'r'")
        ).one()
        reasons = connection.execute(sa.text("SELECT zero_yield_reason FROM drain_results")).scalars().all()
    assert (state, owner) == ("TIMEOUT", None)
    assert reasons == ["timeout"] and summary.failed == 1


def test_the_drain_runs_on_another_task_runner_across_processes(db_url: str, prefect_harness: None) -> None:
    """Results come back through the task runs' futures (no module-global channel), so a task runner whose tasks
    run in other processes works: Prefect's ProcessPoolTaskRunner here, as a DaskTaskRunner would."""
    if not db_url.startswith("sqlite"):
        pytest.skip("the task runner is under test here, not the database (slow: it spawns processes)")
    from prefect import flow
    from prefect.task_runners import ProcessPoolTaskRunner

    from autopack.execution.batch import BatchOptions, run_batch_drain
    from flows.drain import PrefectReporter, TaskRunExecutor

    @flow
    def drain_on_processes() -> dict[str, int]:
        runner = TaskRunExecutor(2, task_runner=ProcessPoolTaskRunner(max_workers=2))
        state = run_batch_drain(BatchOptions(run_ids=["r"], workers=2, max_attempts_per_phase=1), open_database(), runner=runner,
                                reporter=PrefectReporter(), handle_signals=False).state
        return {"success": state.total_success, "events": state.total_telemetry_events}

    make_run(db_url, "r", "write a helper", "write another", "and a third")
    assert drain_on_processes() == {"success": 3, "events": 3}
    with session_scope(db_url) as session:
        workers = session.execute(sa.text("SELECT COUNT(DISTINCT worker) FROM drain_results")).scalar_one()
    assert workers == 2
