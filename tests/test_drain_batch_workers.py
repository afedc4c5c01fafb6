"""The batch drain with the real phase executor and the simulated provider: several workers, several
independent drains on PostgreSQL, a drain killed with SIGKILL, Ctrl-C and resume, timeouts, legacy backlog."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import POSTGRES_ADMIN_URL, create_postgres_database, drop_postgres_database
from test_drain_batch_support import make_run, phase_rows
from test_migrations import LEGACY_SCHEMA  # the original's schema (reference §9.1), shared

from autopack.db.engine import dispose_engines, session_scope
from autopack.db.handle import database_at
from autopack.db.migrate import upgrade_database
from autopack.db.models import DrainResult, DrainSession, Phase, PhaseState, TokenEstimationV2Event
from autopack.execution.batch import BatchDrain, BatchOptions
from autopack.execution.batch_workers import ProcessExecutor
from autopack.execution.sessions import FINAL_INTERRUPTED, STATUS_COMPLETED, STATUS_INTERRUPTED

pytest.importorskip("autopack.execution.phase_runner")

AUTOPACK = str(Path(sys.executable).parent / "autopack")
EXECUTOR = "autopack.execution.phase_runner:execute_phase"


@pytest.fixture
def pg_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if not POSTGRES_ADMIN_URL:
        pytest.skip("AUTOPACK_TEST_POSTGRES_URL not set")
    url = create_postgres_database()
    try:
        upgrade_database(database_at(url))
        monkeypatch.setenv("DATABASE_URL", url)
        yield url
    finally:
        dispose_engines()
        drop_postgres_database(url)


def make_sim_runs(url: str, runs: int, phases: int, prefix: str = "sim") -> list[tuple[str, str]]:
    for r in range(runs):
        make_run(url, f"{prefix}-{r:02d}", [f"write helper module {r}-{p}" for p in range(phases)])
    return [(f"{prefix}-{r:02d}", f"p{p:03d}") for r in range(runs) for p in range(phases)]


def wait_until(predicate, timeout: float = 120.0, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(interval)


def executing_owners(url: str) -> list[str]:
    with session_scope(url) as db:
        return [o for (o,) in db.execute(sa.select(Phase.lease_owner).where(Phase.state == PhaseState.EXECUTING))]


def all_results(url: str) -> list[DrainResult]:
    with session_scope(url) as db:
        return list(db.scalars(sa.select(DrainResult).order_by(DrainResult.id)))


def event_stats(url: str) -> tuple[int, int]:
    ev = TokenEstimationV2Event
    with session_scope(url) as db:
        total = db.execute(sa.select(sa.func.count()).select_from(ev)).scalar_one()
        distinct = db.execute(
            sa.select(sa.func.count()).select_from(
                sa.select(ev.run_id, ev.phase_id, ev.attempt_index, ev.call_index).distinct().subquery()
            )
        ).scalar_one()
    return int(total), int(distinct)


def cli_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AUTOPACK_SIM_LATENCY_SECONDS",)}
    env.update({"DATABASE_URL": url, "AUTOPACK_LLM_PROVIDER": "simulated", **extra})
    return env


# --- many workers, one database ----------------------------------------------------------------------------


def test_four_workers_drain_200_phases_exactly_once(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_SIM_LATENCY_SECONDS", "0.02")
    keys = make_sim_runs(pg_url, runs=10, phases=20)
    options = BatchOptions(batch_size=500, workers=4, max_attempts_per_phase=1, lease_seconds=30)
    state = BatchDrain(options, executor=ProcessExecutor(4, EXECUTOR), database=database_at(pg_url)).run()

    assert state.status == STATUS_COMPLETED and state.total_processed == 200
    per_phase = Counter(r.key for r in state.results)
    assert set(per_phase) == set(keys) and set(per_phase.values()) == {1}  # every phase ended exactly once
    phases = phase_rows(pg_url)
    assert all(phases[r.key].state == r.final_state for r in state.results)
    assert all(p.state in (PhaseState.COMPLETE, PhaseState.FAILED) and p.lease_owner is None for p in phases.values())
    total, distinct = event_stats(pg_url)
    assert total == distinct  # no duplicate (run, phase, attempt, call)
    assert sum(r.telemetry_events for r in state.results) == sum(r.llm_calls for r in state.results) == total
    assert len({r.worker for r in state.results}) > 1  # the work was spread over workers
    assert len(all_results(pg_url)) == 200


def test_two_workers_on_sqlite(db_url: str) -> None:
    keys = make_sim_runs(db_url, runs=2, phases=6)
    state = BatchDrain(BatchOptions(batch_size=50, workers=2, max_attempts_per_phase=1),
                       executor=ProcessExecutor(2, EXECUTOR), database=database_at(db_url)).run()
    assert sorted(r.key for r in state.results) == sorted(keys)
    total, distinct = event_stats(db_url)
    assert total == distinct == sum(r.telemetry_events for r in state.results)


def test_sigkilled_drain_loses_nothing_to_another_drain(pg_url: str, tmp_path: Path) -> None:
    """Two independent `autopack drain batch` runs share the queue; one is SIGKILLed mid-phase. Its phases'
    leases expire and the survivor drains them: every phase ends, none twice, no duplicate samples."""
    keys = make_sim_runs(pg_url, runs=4, phases=10)
    args = [AUTOPACK, "drain", "batch", "--batch-size", "100", "--workers", "2", "--lease-seconds", "2",
            "--max-attempts-per-phase", "1"]
    env = cli_env(pg_url, AUTOPACK_SIM_LATENCY_SECONDS="0.3")
    victim = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    survivor = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        marker = f":{victim.pid}:"
        wait_until(lambda: any(marker in (o or "") for o in executing_owners(pg_url)))
        victim.kill()  # SIGKILL: no cleanup, its executor processes die with it
        victim.wait(timeout=30)
        out, err = survivor.communicate(timeout=240)
    finally:
        for proc in (victim, survivor):
            if proc.poll() is None:
                proc.kill()
    assert survivor.returncode in (0, 1), err[-2000:]

    phases = phase_rows(pg_url)
    assert all(p.state in (PhaseState.COMPLETE, PhaseState.FAILED) for p in phases.values())
    ended = Counter(r.run_id + "/" + r.phase_id for r in all_results(pg_url) if r.final_state in ("COMPLETE", "FAILED"))
    assert max(ended.values()) == 1  # no phase ended twice
    assert len(ended) >= len(keys) - 2  # at most the victim's two in-flight phases went unrecorded by it
    reclaimed = [r for r in all_results(pg_url) if r.initial_state == PhaseState.EXECUTING]
    assert reclaimed, "the survivor should have re-claimed the killed drain's phases"
    total, distinct = event_stats(pg_url)
    assert total == distinct


# --- Ctrl-C and resume, timeouts, through the CLI ---------------------------------------------------------


def test_cli_sigint_saves_releases_exits_130_and_resume_finishes(db_url: str, tmp_path: Path) -> None:
    make_sim_runs(db_url, runs=1, phases=3)
    slow = cli_env(db_url, AUTOPACK_SIM_LATENCY_SECONDS="60")
    proc = subprocess.Popen([AUTOPACK, "drain", "batch"], cwd=tmp_path, env=slow, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: bool(executing_owners(db_url)))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "--resume" in err
    assert "BATCH DRAIN SUMMARY" in out
    assert executing_owners(db_url) == []  # the lease was released
    assert all(p.state == PhaseState.QUEUED for p in phase_rows(db_url).values())
    with session_scope(db_url) as db:
        session = db.scalars(sa.select(DrainSession)).one()
        assert session.status == STATUS_INTERRUPTED and session.completed_at is None
    assert [r.final_state for r in all_results(db_url)] == [FINAL_INTERRUPTED]

    done = subprocess.run([AUTOPACK, "drain", "batch", "--resume"], cwd=tmp_path, env=cli_env(db_url),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    with session_scope(db_url) as db:
        sessions = db.scalars(sa.select(DrainSession)).all()
        assert len(sessions) == 1 and sessions[0].status == STATUS_COMPLETED and sessions[0].total_processed == 3
    assert all(p.state == PhaseState.COMPLETE for p in phase_rows(db_url).values())


def test_two_cli_resumes_at_once_never_share_a_session(db_url: str, tmp_path: Path) -> None:
    """Two `drain batch --resume` started together: one continues the interrupted session, the other starts
    its own; the interrupted session never gets more results than its batch size (it got 14 of 8 before)."""
    from autopack.execution.sessions import SessionState, SessionStore, new_session_id

    make_sim_runs(db_url, runs=2, phases=10)
    interrupted = SessionState(new_session_id(), 8, status=STATUS_INTERRUPTED, stop_reason="interrupted")
    SessionStore(database_at(db_url)).save(interrupted)
    args = [AUTOPACK, "drain", "batch", "--resume", "--batch-size", "8", "--max-attempts-per-phase", "1"]
    env = cli_env(db_url, AUTOPACK_SIM_LATENCY_SECONDS="0.2")
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=240) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    resumed = [err for _, err in outputs if f"resuming session {interrupted.session_id}" in err]
    assert len(resumed) == 1  # exactly one of them took the session over
    with session_scope(db_url) as db:
        session = db.get(DrainSession, interrupted.session_id)
        assert session is not None and session.status == STATUS_COMPLETED and session.total_processed == 8
        rows = db.execute(sa.select(sa.func.count()).select_from(DrainResult)
                          .where(DrainResult.session_id == interrupted.session_id)).scalar_one()
        assert rows == 8 and len(db.scalars(sa.select(DrainSession)).all()) == 2


def test_cli_phase_timeout_with_a_slow_provider(db_url: str, tmp_path: Path) -> None:
    make_sim_runs(db_url, runs=1, phases=2)
    proc = subprocess.run(
        [AUTOPACK, "drain", "batch", "--phase-timeout-seconds", "2", "--max-timeouts-per-run", "1"],
        cwd=tmp_path, env=cli_env(db_url, AUTOPACK_SIM_LATENCY_SECONDS="120"), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    results = all_results(db_url)
    assert [(r.final_state, r.zero_yield_reason) for r in results] == [("TIMEOUT", "timeout")]
    assert "timed out after 2s" in (results[0].error_message or "")
    phase = phase_rows(db_url)[(results[0].run_id, results[0].phase_id)]
    assert (phase.state, phase.lease_owner) == ("TIMEOUT", None)
    assert "timeout: 1" in proc.stdout  # zero-yield breakdown in the summary


def test_scripts_wrapper_takes_the_seed_flags(db_url: str, tmp_path: Path) -> None:
    make_run(db_url, "telemetry-collection-v4", ["write a string util"])
    script = Path(__file__).resolve().parents[1] / "scripts" / "batch_drain_controller.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--run-id", "telemetry-collection-v4", "--batch-size", "10"],
        cwd=tmp_path, env=cli_env(db_url), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "telemetry-collection-v4: 1/1 succeeded" in proc.stdout


def test_cli_refuses_without_telemetry(db_url: str, tmp_path: Path) -> None:
    make_run(db_url, "r", ["x"])
    proc = subprocess.run([AUTOPACK, "drain", "batch"], cwd=tmp_path, env=cli_env(db_url, TELEMETRY_DB_ENABLED="0"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: TELEMETRY_DB_ENABLED is off")
    assert phase_rows(db_url)[("r", "p000")].state == "QUEUED"


# --- a database upgraded from the original: its FAILED backlog ---------------------------------------------



def _legacy_backlog(path: Path) -> str:
    """Two legacy runs of FAILED IMPLEMENT_FEATURE/MEDIUM phases; one phase has no deliverables, and one
    has old samples although its attempt counter says 0 (the original did not keep them in step)."""
    rows = [
        "INSERT INTO runs VALUES ('build-101', 'DONE_FAILED_REQUIRES_HUMAN_REVIEW', 'normal', 5000000, 0, '2025-12-20', NULL)",
        "INSERT INTO runs VALUES ('build-102', 'DONE_FAILED_REQUIRES_HUMAN_REVIEW', 'normal', 5000000, 0, '2025-12-21', NULL)",
        "INSERT INTO tiers VALUES (1, 'T1', 'build-101', 'Tier'), (2, 'T1', 'build-102', 'Tier')",
    ]
    phase_id = 0
    for run, tier in (("build-101", 1), ("build-102", 2)):
        for i in range(4):
            phase_id += 1
            scope = "NULL" if (run, i) == ("build-101", 1) else f"'{{\"deliverables\": [\"src/feature_{phase_id}.py\"]}}'"
            rows.append(
                f"INSERT INTO phases VALUES ({phase_id}, '{run}-p{i}', '{run}', {tier}, {i}, 'P{i}', 'implement feature {phase_id}',"
                f" 'FAILED', 'IMPLEMENT_FEATURE', 'MEDIUM', NULL, {scope}, 5, 0, 'patch failed to apply')"
            )
    for event_id in (1, 2):  # old samples of build-102-p0 (attempt counter still 0)
        rows.append(
            "INSERT INTO token_estimation_v2_events (event_id, run_id, phase_id, timestamp, category, complexity, "
            "deliverable_count, deliverables_json, predicted_output_tokens, actual_output_tokens, selected_budget, "
            f"success, truncated, created_at, is_truncated_output) VALUES ({event_id}, 'build-102', 'build-102-p0', "
            "'2025-12-21', 'IMPLEMENT_FEATURE', 'MEDIUM', 1, '[]', 7020, 9000, 12288, 0, 0, '2025-12-21', 0)"
        )
    connection = sqlite3.connect(path)
    connection.executescript(LEGACY_SCHEMA + ";\n".join(rows) + ";")
    connection.commit()
    connection.close()
    return f"sqlite:///{path}"


def test_legacy_backlog_drains_with_the_recommended_triage_flags(tmp_path: Path) -> None:
    url = _legacy_backlog(tmp_path / "autopack_legacy.db")
    env = cli_env(url)
    upgrade = subprocess.run([AUTOPACK, "db", "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert upgrade.returncode == 0, upgrade.stderr
    proc = subprocess.run(
        [AUTOPACK, "drain", "batch", "--batch-size", "30", "--max-fingerprint-repeats", "2", "--max-attempts-per-phase", "1",
         "--max-timeouts-per-run", "1", "--max-consecutive-zero-yield", "10"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # the phase without deliverables failed
    assert "Traceback" not in proc.stderr
    results = {r.phase_id: r for r in all_results(url)}
    assert set(results) == {f"{run}-p{i}" for run in ("build-101", "build-102") for i in range(4)}
    broken = results["build-101-p1"]
    assert (broken.final_state, broken.zero_yield_reason) == ("FAILED", "failed_before_llm")
    assert all(r.final_state == "COMPLETE" for pid, r in results.items() if pid != "build-101-p1")
    # the old samples are kept and the new ones got fresh keys (no collision with attempt 0/1)
    ev = TokenEstimationV2Event
    with session_scope(url) as db:
        keys = db.execute(sa.select(ev.attempt_index, ev.source).where(ev.phase_id == "build-102-p0").order_by(ev.attempt_index)).all()
    assert [k[0] for k in keys][:2] == [0, 1] and len(keys) >= 3
    assert "failed_before_llm: 1" in proc.stdout


def test_a_worker_that_dies_before_its_job_arrives_is_reported_lost(db_url: str) -> None:
    """A child killed between becoming idle and receiving a job is a lost worker, not a BrokenPipeError."""
    from datetime import UTC, datetime

    from test_drain_batch_support import fake_execute_phase

    from autopack.execution.batch_workers import PhaseJob
    from autopack.execution.leases import Claim

    executor = ProcessExecutor(1, fake_execute_phase)
    try:
        assert executor.idle_slots(1) == []  # starts the child
        wait_until(lambda: executor.wait(0.5) == [] and executor.slots[0].status == "idle", timeout=120)
        process = executor.slots[0].process
        assert process is not None
        process.kill()
        process.join(timeout=10)
        claim = Claim(run_id="a", phase_id="p000", owner="test", expires_at=datetime.now(UTC),
                      attempt_index=0, initial_state="QUEUED")
        executor.submit(0, PhaseJob(run_id="a", phase_id="p000", claim=claim, database=database_at(db_url).ref(),
                                    lease_seconds=120.0, provider_concurrency=0))
        completions = executor.wait(10)
        assert [(c.slot, c.message, c.exit_signal) for c in completions] == [(0, None, signal.SIGKILL)]
    finally:
        executor.close()
