"""The ``telemetry-pipeline`` flow end to end under Prefect: drain, calibrate, gate, pull request."""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from github_server.app import FakeGitHub
from github_server.fixtures import BOT_TOKEN, REPOSITORY, fake_github  # noqa: F401

from autopack.db.engine import get_engine
from autopack.db.handle import database_at
from autopack.db.models import TokenEstimationV2Event
from autopack.github.proposal import BOT_BRANCH, ESTIMATOR_PATH
from autopack.params import PipelineParams
from autopack.pipeline import prepare_database
from flows.pipeline import telemetry_pipeline

from synthetic_telemetry import simulate

ROOT = Path(__file__).resolve().parents[1]
#: Lines a calibration may change: coefficient entries and the CALIBRATION_* stamp.
COEFFICIENT_LINE = re.compile(r'^\s*\("[a-z_]+", "[a-z_]+"\): [0-9.]+,\s*$|^CALIBRATION_(VERSION|DATE|SAMPLES) = ')


def project_checkout(path: Path) -> Path:
    """A git checkout holding this project's estimator, its package and its estimator tests."""
    shutil.copytree(ROOT / "autopack", path / "autopack", ignore=shutil.ignore_patterns("__pycache__"))
    (path / "tests").mkdir()
    for name in ("test_token_estimator.py", "conftest.py"):
        shutil.copy(ROOT / "tests" / name, path / "tests" / name)
    shutil.copy(ROOT / "pyproject.toml", path / "pyproject.toml")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "base"]):
        subprocess.run(["git", "-C", str(path), *args], check=True)
    return path


def changed_lines(before: str, after: str) -> list[str]:
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    return [line[1:] for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]


@pytest.fixture
def github_env(fake_github: FakeGitHub, monkeypatch: pytest.MonkeyPatch) -> FakeGitHub:  # noqa: F811
    fake_github.create_repo(REPOSITORY, {ESTIMATOR_PATH: (ROOT / ESTIMATOR_PATH).read_text()})
    monkeypatch.setenv("GITHUB_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("GITHUB_REPOSITORY", REPOSITORY)
    monkeypatch.setenv("GITHUB_API_URL", fake_github.url)
    return fake_github


@pytest.mark.slow
def test_pipeline_opens_a_pull_request_and_updates_it_on_the_next_run(
    db_url: str, prefect_harness: None, github_env: FakeGitHub, tmp_path: Path
) -> None:
    target = project_checkout(tmp_path / "target")
    prepare_database(database_at(db_url), init=True)
    # history from earlier weeks (as `autopack telemetry import` would add): the 61 seed phases alone leave
    # every group below the 22 calls a distribution-free factor needs at α = 5 %, so nothing would ship
    with get_engine(db_url).begin() as connection:
        connection.execute(sa.insert(TokenEstimationV2Event.__table__), simulate(150, seed=3, run_id="history"))

    first = telemetry_pipeline(PipelineParams(target_repo=str(target), output_dir=str(tmp_path / "reports"), workers=2))

    assert first.phases_drained >= 60 and first.telemetry_events >= 60
    calibration = first.calibration.result
    assert calibration is not None and calibration.gate.passed
    pr = first.pull_request
    assert pr is not None and pr.status == "opened"
    before = github_env.file(REPOSITORY, "main", ESTIMATOR_PATH)
    after = github_env.file(REPOSITORY, BOT_BRANCH, ESTIMATOR_PATH)
    changed = changed_lines(before, after)
    assert changed and all(COEFFICIENT_LINE.match(line) for line in changed), changed
    assert Path(str(calibration.report_path)).exists() and Path(str(calibration.plot_path)).exists()

    second = telemetry_pipeline(PipelineParams(target_repo=str(target), output_dir=str(tmp_path / "reports2"),
                                               skip_drain=True))

    assert second.pull_request is not None and second.pull_request.status == "updated"
    assert second.pull_request.pr_number == pr.pr_number
    assert len(github_env.repo(REPOSITORY).pulls) == 1
