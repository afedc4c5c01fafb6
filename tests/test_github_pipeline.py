"""open_calibration_pr: edit → verify → publish, locally (dry run / no token) or to the fake GitHub."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopack.errors import RefusedError
from autopack.github import open_calibration_pr
from autopack.github.errors import StaleProposalError, VerificationError
from autopack.github.proposal import BOT_BRANCH, ESTIMATOR_PATH, find_marker, parse_changes, proposal_hash
from autopack.github.remote import ClientOptions
from github_server.app import FakeGitHub
from github_server.fixtures import BOT_TOKEN, REPOSITORY, fake_github  # noqa: F401
from github_server.samples import CALIBRATION, FIXTURE_ESTIMATOR, calibration, git, make_target_repo

FAST = ClientOptions(seconds_between_requests=None, seconds_between_writes=None)



@pytest.fixture(autouse=True)
def _no_ambient_github_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CI runner's own GITHUB_API_URL / GITHUB_BASE_BRANCH must not redirect these tests."""
    for name in ("GITHUB_API_URL", "GITHUB_BASE_BRANCH", "GITHUB_TOKEN", "GITHUB_REPOSITORY"):
        monkeypatch.delenv(name, raising=False)

@pytest.fixture
def target(tmp_path: Path) -> Path:
    return make_target_repo(tmp_path / "target")


def with_plot(tmp_path: Path) -> dict:
    plot = tmp_path / "reports" / "token_estimator_calibration_20261126_120000.png"
    plot.parent.mkdir()
    plot.write_bytes(b"\x89PNG")
    return calibration(plot_path=str(plot), report_path=str(plot.with_suffix(".md")))


def test_dry_run_writes_branch_and_body_with_relative_plot(target: Path, tmp_path: Path) -> None:
    result = open_calibration_pr(with_plot(tmp_path), target_repo=target, output_dir=tmp_path / "out", dry_run=True)
    assert result.status == "dry_run" and result.branch == BOT_BRANCH
    body = (tmp_path / "out" / "pull_request_body.md").read_text()
    assert "![calibration plot](../reports/token_estimator_calibration_20261126_120000.png)" in body
    assert "Estimator tests: passed" in body
    assert find_marker(body) == proposal_hash(parse_changes(CALIBRATION["proposed_changes"]))
    assert git(target, "show", f"{BOT_BRANCH}:{ESTIMATOR_PATH}").count('("implementation", "low"): 410,') == 1


def test_without_a_token_it_publishes_locally(target: Path, tmp_path: Path) -> None:
    result = open_calibration_pr(CALIBRATION, target_repo=target, output_dir=tmp_path / "out", dry_run=False,
                                 repository=REPOSITORY)
    assert result.status == "dry_run"


def test_with_token_and_repository_it_opens_a_pr(fake_github: FakeGitHub, target: Path, tmp_path: Path) -> None:  # noqa: F811
    fake_github.create_repo(REPOSITORY, {ESTIMATOR_PATH: FIXTURE_ESTIMATOR})
    result = open_calibration_pr(CALIBRATION, target_repo=target, output_dir=tmp_path / "out", dry_run=False,
                                 token=BOT_TOKEN, repository=REPOSITORY, base_url=fake_github.url, options=FAST)
    assert (result.status, result.pr_number) == ("opened", 1)
    assert result.body_path is not None and result.body_path.read_text() == fake_github.repo(REPOSITORY).pulls[1].body
    assert git(target, "branch", "--list", BOT_BRANCH) == ""  # no local branch when publishing remotely


def test_token_from_the_settings(fake_github: FakeGitHub, target: Path, tmp_path: Path,  # noqa: F811
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake_github.create_repo(REPOSITORY, {ESTIMATOR_PATH: FIXTURE_ESTIMATOR})
    monkeypatch.setenv("GITHUB_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("GITHUB_REPOSITORY", REPOSITORY)
    monkeypatch.setenv("GITHUB_API_URL", fake_github.url)
    result = open_calibration_pr(CALIBRATION, target_repo=target, output_dir=tmp_path / "out", options=FAST)
    assert result.status == "opened"


def test_failed_gate_is_refused(target: Path, tmp_path: Path) -> None:
    data = calibration(gate={"passed": False, "reasons": ["truncation 0.09 > target 0.05"]})
    with pytest.raises(RefusedError, match="gate did not pass: truncation 0.09 > target 0.05"):
        open_calibration_pr(data, target_repo=target, output_dir=tmp_path / "out", dry_run=True)
    assert not (tmp_path / "out").exists()


def test_failed_verification_publishes_nothing(target: Path, tmp_path: Path) -> None:
    data = calibration(proposed_changes=[{"coefficient": "BUDGET_FACTORS", "key": ["tests", "low"], "old": None,
                                          "new": -1.0}])
    with pytest.raises(VerificationError, match="tests/test_token_estimator.py failed"):
        open_calibration_pr(data, target_repo=target, output_dir=tmp_path / "out", dry_run=True)
    assert git(target, "branch", "--list", BOT_BRANCH) == ""


def test_stale_proposal_publishes_nothing(target: Path, tmp_path: Path) -> None:
    data = calibration(proposed_changes=[{"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "low"],
                                          "old": 1120, "new": 634}])
    with pytest.raises(StaleProposalError):
        open_calibration_pr(data, target_repo=target, output_dir=tmp_path / "out", dry_run=True)
    assert git(target, "branch", "--list", BOT_BRANCH) == ""
