"""``autopack drain one`` and ``drain_one``: exclusivity, FAILED re-drain, telemetry rules, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_runner import run_cli
from llm_fake_server import FakeLLMServer

from autopack.db.engine import session_scope
from autopack.db.handle import database_at
from autopack.db.models import LlmUsageEvent, Phase, TokenEstimationV2Event
from autopack.errors import RefusedError
from autopack.execution.drain_one import drain_one
from autopack.execution.seed_runs import V4_ROWS, V4_RUN_ID

REPO = Path(__file__).resolve().parents[1]
P1 = "telemetry-p1-string-util"


@pytest.fixture
def v4(db_url: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert run_cli(capsys, "runs", "create-telemetry-run")[0] == 0
    return db_url


def state(url: str, phase_id: str = P1) -> Phase:
    with session_scope(url) as session:
        return session.execute(sa.select(Phase).where(Phase.run_id == V4_RUN_ID, Phase.phase_id == phase_id)).scalar_one()


def count(url: str, model: type) -> int:
    with session_scope(url) as session:
        return session.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()


def test_refuses_non_exclusive_drain_without_force(v4: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "drain", "one", "--run-id", V4_RUN_ID, "--phase-id", P1)
    assert code == 2 and "9 other QUEUED phase(s)" in err and "--force" in err
    assert state(v4).state == "QUEUED" and state(v4).builder_attempts == 0


def test_force_drains_exactly_that_phase(v4: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "drain", "one", "--run-id", V4_RUN_ID, "--phase-id", "telemetry-p3-list-util",
                           "--force")
    assert code == 0
    assert "COMPLETE" in out and "telemetry events written: 1" in out
    assert state(v4, "telemetry-p3-list-util").state == "COMPLETE" and state(v4).state == "QUEUED"


def test_exclusive_phase_needs_no_force(v4: str, capsys: pytest.CaptureFixture[str]) -> None:
    with session_scope(v4) as session:
        session.execute(sa.update(Phase).where(Phase.phase_id != P1).values(state="COMPLETE"))
    assert run_cli(capsys, "drain", "one", "--run-id", V4_RUN_ID, "--phase-id", P1)[0] == 0


def test_failed_phase_is_drained_again(v4: str) -> None:
    with session_scope(v4) as session:
        session.execute(sa.update(Phase).where(Phase.phase_id == P1).values(state="FAILED", last_failure_reason="old"))
    result = drain_one(V4_RUN_ID, P1, force=True, db=database_at(v4))
    assert result.final_state == "COMPLETE"
    phase = state(v4)
    assert phase.state == "COMPLETE" and phase.last_failure_reason is None


def test_complete_phase_is_refused(v4: str, capsys: pytest.CaptureFixture[str]) -> None:
    with session_scope(v4) as session:
        session.execute(sa.update(Phase).where(Phase.phase_id == P1).values(state="COMPLETE"))
    code, _, err = run_cli(capsys, "drain", "one", "--run-id", V4_RUN_ID, "--phase-id", P1, "--force")
    assert code == 2 and "is COMPLETE" in err


def test_unknown_phase_is_refused(v4: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "drain", "one", "--run-id", V4_RUN_ID, "--phase-id", "nope", "--force")
    assert code == 2 and err.splitlines() == [err.strip()] and "has no phase 'nope'" in err and P1 in err


def test_phase_under_a_live_lease_is_refused(v4: str) -> None:
    from autopack.execution import leases

    with session_scope(v4) as session:
        assert leases.claim_phase(session, V4_RUN_ID, P1, "other-worker") is not None
    with pytest.raises(RefusedError, match="being executed by other-worker"):
        drain_one(V4_RUN_ID, P1, force=True, db=database_at(v4))


def test_telemetry_disabled_refuses_with_exit_2(v4: str, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMETRY_DB_ENABLED", "0")
    code, _, err = run_cli(capsys, "drain", "one", "--run-id", V4_RUN_ID, "--phase-id", P1, "--force")
    assert code == 2 and "TELEMETRY_DB_ENABLED is off" in err and "--no-telemetry" in err
    assert state(v4).state == "QUEUED" and count(v4, LlmUsageEvent) == 0


def test_no_telemetry_drains_without_rows(v4: str, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMETRY_DB_ENABLED", "0")
    code, out, _ = run_cli(capsys, "drain", "one", "--run-id", V4_RUN_ID, "--phase-id", P1, "--force", "--no-telemetry")
    assert code == 0 and "telemetry events written: 0" in out
    assert count(v4, TokenEstimationV2Event) == 0 and count(v4, LlmUsageEvent) == 0


def test_failed_phase_exits_1_with_one_line(v4: str, capsys: pytest.CaptureFixture[str]) -> None:
    with session_scope(v4) as session:
        session.execute(sa.update(Phase).where(Phase.phase_id == P1).values(description="x [sim:invalid-output]"))
    code, out, err = run_cli(capsys, "drain", "one", "--run-id", V4_RUN_ID, "--phase-id", P1, "--force")
    assert code == 1 and "FAILED" in out
    assert "error: validation:" in err and "Traceback" not in err
    assert state(v4).state == "FAILED"


def test_expect_db_id_mismatch_is_refused(v4: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "drain", "one", "--run-id", V4_RUN_ID, "--phase-id", P1, "--force",
                           "--expect-db-id", "not-this-one")
    assert code == 3 and "DB_MISMATCH" in err
    assert state(v4).state == "QUEUED"


def test_json_output(v4: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "drain", "one", "--run-id", V4_RUN_ID, "--phase-id", P1, "--force", "--json")
    result = json.loads(out)
    assert code == 0 and result["final_state"] == "COMPLETE" and result["telemetry_events"] == 1


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    server = FakeLLMServer().start()
    yield server
    server.stop()


def test_provider_auth_error_is_one_line_exit_1_and_phase_failed(
    v4: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake_llm: FakeLLMServer
) -> None:
    key = "sk-secret-abcdefgh12345678"
    monkeypatch.setenv("AUTOPACK_LLM_PROVIDER", "openai")
    monkeypatch.setenv("AUTOPACK_LLM_BASE_URL", fake_llm.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", key)
    fake_llm.modes.append("401")
    fake_llm.echo_key_in_errors = key
    code, out, err = run_cli(capsys, "drain", "one", "--run-id", V4_RUN_ID, "--phase-id", P1, "--force")
    assert code == 1 and "FAILED" in out
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "provider" in error_lines[0] and "HTTP 401" in error_lines[0]
    assert key not in out + err and "Traceback" not in err
    assert state(v4).state == "FAILED" and "401" in (state(v4).last_failure_reason or "")


def test_done_when_v4_drained_with_the_simulated_provider(v4: str, capsys: pytest.CaptureFixture[str]) -> None:
    for row in V4_ROWS:
        code, _, _ = run_cli(capsys, "drain", "one", "--run-id", V4_RUN_ID, "--phase-id", row[0], "--force")
        assert code in (0, 1)
    with session_scope(v4) as session:
        states = session.execute(sa.select(Phase.state).where(Phase.run_id == V4_RUN_ID)).scalars().all()
        events = session.execute(sa.select(TokenEstimationV2Event)).scalars().all()
        usage = session.execute(sa.select(LlmUsageEvent)).scalars().all()
    assert len(states) == 10 and set(states) <= {"COMPLETE", "FAILED"}
    assert len(events) >= 10 and all(e.actual_max_tokens is not None for e in events)
    assert all(e.provider == "simulated" and e.phase_outcome in ("COMPLETE", "FAILED") for e in events)
    assert usage and all(u.split_kind == "exact" and u.prompt_tokens and u.completion_tokens for u in usage)
    code, out, _ = run_cli(capsys, "db", "identity", "--json")
    identity = json.loads(out)
    assert code == 0
    assert identity["counts"]["token_estimation_v2_events"] == len(events)
    assert identity["counts"]["llm_usage_events"] == len(usage)
    assert sum(identity["counts"]["phases"].values()) == 10


def test_script_wrappers_call_the_cli(v4: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": v4, "HOME": str(Path.cwd())}
    drained = subprocess.run([sys.executable, str(REPO / "scripts" / "drain_one_phase.py"), "--run-id", V4_RUN_ID,
                              "--phase-id", P1, "--force"], env=env, capture_output=True, text=True, timeout=120)
    assert drained.returncode == 0, drained.stderr
    assert "telemetry events written: 1" in drained.stdout
    identity = subprocess.run([sys.executable, str(REPO / "scripts" / "db_identity_check.py"), "--json"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert identity.returncode == 0 and json.loads(identity.stdout)["counts"]["token_estimation_v2_events"] == 1


def test_forced_truncation_through_drain_one_escalates_without_duplicates(v4: str) -> None:
    from autopack.db.models import TokenBudgetEscalationEvent

    with session_scope(v4) as session:
        session.execute(sa.update(Phase).where(Phase.phase_id == P1).values(description="helpers [sim:truncate-once]"))
    result = drain_one(V4_RUN_ID, P1, force=True, db=database_at(v4))
    assert result.attempts == 2 and result.telemetry_events == 2
    with session_scope(v4) as session:
        attempts = session.execute(
            sa.select(TokenEstimationV2Event.attempt_index).order_by(TokenEstimationV2Event.attempt_index)
        ).scalars().all()
        escalations = session.execute(sa.select(TokenBudgetEscalationEvent)).scalars().all()
    assert attempts == [0, 1] and len(escalations) == 1
