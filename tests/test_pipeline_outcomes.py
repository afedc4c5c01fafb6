"""What a Prefect user sees of a ``telemetry-pipeline`` run: its state message and the parent run's artifacts.

Expected outcomes (a gate that does not pass, no samples) end Completed with the reason; refusals end Failed
with one line, before a phase is drained.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from github_server.app import FakeGitHub
from github_server.fixtures import BOT_TOKEN, REPOSITORY, fake_github  # noqa: F401
from github_server.samples import as_result, calibration
from prefect.client.orchestration import get_client
from prefect_live import run_artifacts
from test_flows import make_run
from test_pipeline_flow import project_checkout

from autopack.calibration.result import CalibrationOutcome
from autopack.cli import main
from autopack.config import get_settings
from autopack.db.engine import get_engine, session_scope
from autopack.errors import ConfigError, InputError
from autopack.execution.seed_runs import ensure_seed_runs
from autopack.github import BOT_BRANCH, PublishResult
from autopack.github.proposal import ESTIMATOR_PATH
from autopack.params import PipelineParams
from autopack.pipeline import (
    NO_TELEMETRY_HINT,
    PipelineResult,
    ValidationFailed,
    check_deployment_database,
    check_deployment_locations,
    state_message,
)
from flows.pipeline import telemetry_pipeline

ROOT = Path(__file__).resolve().parents[1]


def queued_phases(url: str) -> int:
    with get_engine(url).connect() as connection:
        return connection.execute(sa.text("SELECT COUNT(*) FROM phases WHERE state = 'QUEUED'")).scalar_one()


@pytest.fixture
def seeded(db_url: str) -> str:
    with session_scope(db_url) as session:
        ensure_seed_runs(session, ["telemetry-collection-v4"])
    return db_url


@pytest.mark.slow
def test_a_failed_gate_says_so_in_the_state_and_the_parent_run_shows_report_plot_table_and_gate(
    seeded: str, prefect_harness: None, tmp_path: Path
) -> None:
    target = project_checkout(tmp_path / "target")
    params = PipelineParams(run_ids=["telemetry-collection-v4"], output_dir=str(tmp_path / "reports"),
                            target_repo=str(target), min_samples=50, dry_run=True)
    state = telemetry_pipeline(params, return_state=True)

    assert state.is_completed()
    assert state.message.startswith("gate not passed: ")
    result = state.result()
    assert result.pull_request is None and result.message == state.message
    with get_client(sync_client=True) as client:
        artifacts = run_artifacts(client, state.state_details.flow_run_id)
    assert {"batch-drain-summary", "calibration-report", "calibration-groups", "calibration-gate"} <= artifacts.keys()
    report = str(artifacts["calibration-report"].data)
    assert "# Token Estimator Calibration Report" in report
    assert "](data:image/png;base64,iVBORw0KGgo" in report  # the PNG itself, not a name the UI cannot load
    assert "Calibration gate not passed" in str(artifacts["calibration-gate"].data)
    assert "BATCH DRAIN SUMMARY" in str(artifacts["batch-drain-summary"].data)
    assert "calibration-pull-request" not in artifacts


def test_dry_run_false_without_a_token_is_refused_before_anything_is_drained(
    seeded: str, prefect_harness: None, tmp_path: Path
) -> None:
    target = project_checkout(tmp_path / "target")
    before = queued_phases(seeded)
    params = PipelineParams(output_dir=str(tmp_path / "reports"), target_repo=str(target), dry_run=False)
    state = telemetry_pipeline(params, return_state=True)
    assert state.is_failed()
    assert state.message.startswith("dry_run is false but no GitHub token is available")
    assert "\n" not in state.message
    assert queued_phases(seeded) == before
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("repository", ["acme", "acme/autopack/extra"])
def test_a_malformed_repository_is_refused_before_anything_is_drained(
    seeded: str, prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repository: str
) -> None:
    """Before: refused by the pull-request step, after the whole drain and calibration."""
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_" + "0" * 36)
    monkeypatch.setenv("GITHUB_REPOSITORY", repository)
    target = project_checkout(tmp_path / "target")
    before = queued_phases(seeded)
    params = PipelineParams(output_dir=str(tmp_path / "reports"), target_repo=str(target), dry_run=False)
    state = telemetry_pipeline(params, return_state=True)
    assert state.is_failed() and state.message.startswith(f"GITHUB_REPOSITORY must be 'owner/name', got '{repository}'")
    assert queued_phases(seeded) == before


def test_a_base_that_moved_on_is_refused_before_anything_is_drained(
    seeded: str, prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    fake_github: FakeGitHub,  # noqa: F811
) -> None:
    """A human merged last week's pull request; this checkout was not updated. Before: refused as stale by the
    pull-request step, after the whole drain and calibration."""
    target = project_checkout(tmp_path / "target")
    merged = (target / ESTIMATOR_PATH).read_text().replace("CALIBRATION_SAMPLES = 45", "CALIBRATION_SAMPLES = 244")
    fake_github.create_repo(REPOSITORY, {ESTIMATOR_PATH: merged})
    monkeypatch.setenv("GITHUB_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("GITHUB_REPOSITORY", REPOSITORY)
    monkeypatch.setenv("GITHUB_API_URL", fake_github.url)
    before = queued_phases(seeded)
    params = PipelineParams(output_dir=str(tmp_path / "reports"), target_repo=str(target), dry_run=False)
    state = telemetry_pipeline(params, return_state=True)
    assert state.is_failed()
    assert state.message.startswith(f"{ESTIMATOR_PATH} on {REPOSITORY}'s main differs from {target / ESTIMATOR_PATH}: "
                                    "the base moved on"), state.message
    assert queued_phases(seeded) == before
    assert fake_github.requests("POST") == []


def test_a_failed_validation_ends_the_run_failed_in_its_one_line_before_the_drain(
    db_url: str, prefect_harness: None, tmp_path: Path
) -> None:
    make_run(db_url, "r", "write a helper [sim:auth-error]", "write another")
    target = project_checkout(tmp_path / "target")
    params = PipelineParams(run_ids=["r"], output_dir=str(tmp_path / "reports"), target_repo=str(target),
                            dry_run=True)
    state = telemetry_pipeline(params, return_state=True)
    assert state.is_failed()
    assert state.message == ValidationFailed(NO_TELEMETRY_HINT).one_line()
    assert queued_phases(db_url) == 1  # p0 was validated, p1 not drained
    assert not (tmp_path / "reports").exists()


def test_pipeline_cli_without_samples_ends_completed_with_the_reason_and_no_traceback(
    seeded: str, prefect_harness: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = project_checkout(tmp_path / "target")
    with pytest.raises(SystemExit) as exit_info:
        main(["pipeline", "run", "--skip-drain", "--dry-run", "--target-repo", str(target),
              "--output-dir", str(tmp_path / "reports")])
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), err
    assert "outcome: no calibration: no usable calibration samples" in out
    assert "Traceback" not in out + err


def test_pipeline_cli_without_a_token_refuses_in_one_line_before_creating_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = project_checkout(tmp_path / "target")
    with pytest.raises(SystemExit) as exit_info:
        main(["pipeline", "run", "--init", "--target-repo", str(target)])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "no GitHub token" in err
    assert not (tmp_path / "autopack.db").exists()


def test_pipeline_cli_says_in_one_line_when_the_temporary_prefect_server_does_not_start(tmp_path: Path) -> None:
    target = project_checkout(tmp_path / "target")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0",
               DATABASE_URL=f"sqlite:///{tmp_path / 'autopack.db'}")
    out = subprocess.run(
        [sys.executable, "-c", "from autopack.cli import run; run()", "pipeline", "run", "--init", "--dry-run",
         "--skip-drain", "--target-repo", str(target), "--output-dir", str(tmp_path / "reports")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr[-2000:]
    assert errors[0].startswith("error: the temporary Prefect server did not start within 0 s")
    assert "Traceback" not in out.stderr


def gate(passed: bool, reasons: list[str]) -> CalibrationOutcome:
    return CalibrationOutcome(result=as_result(calibration(gate={"passed": passed, "reasons": reasons})))


def outcome(**overrides: Any) -> PipelineResult:
    return PipelineResult(**{"db_id": "d", "calibration": gate(True, []), "target_repo": "/srv/ap", **overrides})


def test_state_messages_tell_a_failed_gate_a_pull_request_and_a_dry_run_apart() -> None:
    failed = outcome(calibration=gate(False, ["only 12 samples", "no group qualifies"]))
    opened = outcome(pull_request=PublishResult(status="opened", branch=BOT_BRANCH, pr_number=7,
                                                   pr_url="https://gh.example/pull/7"))
    updated = outcome(pull_request=PublishResult(status="updated", branch=BOT_BRANCH, pr_number=7,
                                                    pr_url="https://gh.example/pull/7"))
    dry = outcome(pull_request=PublishResult(status="dry_run", branch="autopack/calibrate-token-estimator",
                                               commit_sha="abcdef0123456789",
                                               body_path=Path("/srv/reports/pull_request_body.md")))
    empty = outcome(calibration=CalibrationOutcome(no_samples="no usable calibration samples (0 rows read)"))

    assert state_message(failed) == "gate not passed: only 12 samples; no group qualifies"
    assert state_message(opened) == "PR #7 opened: https://gh.example/pull/7"
    assert state_message(updated) == "PR #7 updated: https://gh.example/pull/7"
    assert state_message(dry) == ("dry run: branch autopack/calibrate-token-estimator written to /srv/ap "
                                  "(abcdef012345); PR body /srv/reports/pull_request_body.md")
    assert state_message(empty) == "no calibration: no usable calibration samples (0 rows read)"
    long = outcome(calibration=gate(False, ["r" * 1000]))
    assert len(state_message(long)) == 300


def test_under_a_deployment_relative_output_locations_are_refused() -> None:
    with pytest.raises(InputError, match="output_dir 'reports' is not an absolute path"):
        check_deployment_locations(output_dir="reports", target_repo="/srv/checkout", dry_run=True)
    with pytest.raises(InputError, match="output_dir '' is not an absolute path"):
        check_deployment_locations(output_dir="", target_repo=".", dry_run=False)
    with pytest.raises(InputError, match="a dry run writes its branch there"):
        check_deployment_locations(output_dir="/srv/reports", target_repo=".", dry_run=True)
    check_deployment_locations(output_dir="/srv/reports", target_repo=".", dry_run=False)  # the fresh clone
    check_deployment_locations(output_dir="/srv/reports", target_repo="/srv/checkout", dry_run=True)


def test_under_a_deployment_the_database_must_be_named_and_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "")  # what prefect.yaml hands over when DATABASE_URL was not exported
    with pytest.raises(ConfigError, match="the worker has no DATABASE_URL"):
        check_deployment_database(get_settings())
    monkeypatch.setenv("DATABASE_URL", "sqlite:///autopack.db")
    with pytest.raises(ConfigError, match="relative SQLite path"):
        check_deployment_database(get_settings())
    monkeypatch.setenv("DATABASE_URL", "sqlite:////srv/autopack.db")
    check_deployment_database(get_settings())
    monkeypatch.setenv("DATABASE_URL", "postgresql://autopack@db.example/autopack")
    check_deployment_database(get_settings())
