"""publish_local: the dry-run branch is written with git plumbing; the user's checkout is never touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from github_server.samples import CALIBRATION, FIXTURE_ESTIMATOR, as_result, calibration, git, make_target_repo

from autopack.github.body import pr_title
from autopack.github.errors import LocalPublishError, StaleBaseError
from autopack.github.estimator_edit import apply_proposal
from autopack.github.local import body_file_name, publish_local
from autopack.github.proposal import BOT_BRANCH, ESTIMATOR_PATH, parse_changes, proposal_hash
from autopack.github.result import BotIdentity, PublishResult

BODY = "## body\n\n<!-- autopack-calibration-pr proposal=" + "0" * 64 + " -->\n"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # No global git identity (as on a fresh CI machine): the bot's commit must not need one.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return make_target_repo(tmp_path / "target")


def dry_run(repo: Path, out: Path, data: dict = CALIBRATION, **kwargs: object) -> PublishResult:
    edited = apply_proposal(FIXTURE_ESTIMATOR, data["proposed_changes"], data["metadata"])
    return publish_local(repo, edited, BODY, output_dir=out, title=pr_title(as_result(data)),
                         proposal=proposal_hash(parse_changes(data["proposed_changes"])), **kwargs)  # type: ignore[arg-type]


def snapshot(repo: Path) -> tuple[str, ...]:
    return (
        git(repo, "symbolic-ref", "HEAD"), git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain"),
        git(repo, "diff"), git(repo, "diff", "--cached"), git(repo, "ls-files", "-s"),
        (repo / ESTIMATOR_PATH).read_text(), (repo / "scratch.txt").read_text(),
    )


def test_dry_run_leaves_working_tree_index_and_head_alone(repo: Path, tmp_path: Path) -> None:
    (repo / "scratch.txt").write_text("uncommitted work\n")
    (repo / "autopack" / "__init__.py").write_text("# staged edit\n")
    git(repo, "add", "autopack/__init__.py")
    (repo / ESTIMATOR_PATH).write_text(FIXTURE_ESTIMATOR + "# unstaged edit\n")
    before = snapshot(repo)
    result = dry_run(repo, tmp_path / "out")
    assert result.status == "dry_run"
    assert snapshot(repo) == before


def test_branch_is_one_commit_on_head_touching_only_coefficient_lines(repo: Path, tmp_path: Path) -> None:
    result = dry_run(repo, tmp_path / "out")
    assert git(repo, "rev-parse", f"refs/heads/{BOT_BRANCH}") == result.commit_sha
    assert git(repo, "rev-list", f"main..{BOT_BRANCH}") == result.commit_sha
    assert git(repo, "diff", "--name-only", "main", BOT_BRANCH) == ESTIMATOR_PATH
    diff = git(repo, "diff", "-U0", "main", BOT_BRANCH).splitlines()
    changed = [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed == [
        '-CALIBRATION_VERSION = "v5-step2"', '-CALIBRATION_DATE = "2025-12-29"', "-CALIBRATION_SAMPLES = 45",
        '+CALIBRATION_VERSION = "autopack-cal-20261126"', '+CALIBRATION_DATE = "2026-11-26"',
        "+CALIBRATION_SAMPLES = 120",
        '-    ("implementation", "low"): 634,', '+    ("implementation", "low"): 410,',
        "-BUDGET_FACTORS: dict[tuple[str, str], float] = {}  # filled by the calibration pull request",
        "+BUDGET_FACTORS: dict[tuple[str, str], float] = {", '+    ("implementation", "low"): 1.42,',
        "+}  # filled by the calibration pull request",
    ]
    author = git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", BOT_BRANCH)
    bot = f"{BotIdentity().name} <{BotIdentity().email}>"
    assert author == f"{bot}|{bot}"


def test_body_file_and_one_line_summary(repo: Path, tmp_path: Path) -> None:
    result = dry_run(repo, tmp_path / "out", body_name=body_file_name(as_result(CALIBRATION)))
    assert result.body_path == tmp_path / "out" / "pull_request_body_20261126_120000.md"  # the report's stamp
    assert result.body_path.read_text() == BODY
    assert (tmp_path / "out" / "pull_request_body.md").read_text() == BODY  # the latest, a copy
    summary = result.summary
    assert "\n" not in summary
    for part in (BOT_BRANCH, "into main", (result.commit_sha or "")[:12], str(result.body_path)):
        assert part in summary


def test_rerun_is_idempotent_and_a_new_proposal_replaces_the_commit(repo: Path, tmp_path: Path) -> None:
    first = dry_run(repo, tmp_path / "out")
    assert dry_run(repo, tmp_path / "out").commit_sha == first.commit_sha
    other = calibration(proposed_changes=[
        {"coefficient": "PHASE_OVERHEAD", "key": ["tests", "low"], "old": 915, "new": 990}])
    second = dry_run(repo, tmp_path / "out", other)
    assert second.commit_sha != first.commit_sha
    assert git(repo, "rev-list", f"main..{BOT_BRANCH}") == second.commit_sha  # still one commit on main


def test_branch_with_a_human_commit_is_left_alone(repo: Path, tmp_path: Path) -> None:
    dry_run(repo, tmp_path / "out")
    tree = git(repo, "rev-parse", f"{BOT_BRANCH}^{{tree}}")
    human = git(repo, "commit-tree", tree, "-p", BOT_BRANCH, "-m", "hand-tuned")
    git(repo, "update-ref", f"refs/heads/{BOT_BRANCH}", human)
    result = dry_run(repo, tmp_path / "out")
    assert result.status == "left_alone_human_commits"
    assert git(repo, "rev-parse", BOT_BRANCH) == human


def test_refuses_to_move_the_checked_out_branch(repo: Path, tmp_path: Path) -> None:
    git(repo, "checkout", "-q", "-b", BOT_BRANCH)
    with pytest.raises(LocalPublishError, match="the checkout is on"):
        dry_run(repo, tmp_path / "out")


def test_stale_base_is_refused(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(StaleBaseError, match="not the file the proposal was computed against"):
        dry_run(repo, tmp_path / "out", original_source=FIXTURE_ESTIMATOR + "# local edit\n")
    assert git(repo, "branch", "--list", BOT_BRANCH) == ""


def test_not_a_git_checkout(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(LocalPublishError, match="not a git checkout"):
        dry_run(tmp_path / "plain", tmp_path / "out")


def test_each_run_keeps_its_own_body_and_the_latest_copy_follows_the_newest(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = dry_run(repo, out, body_name=body_file_name(as_result(CALIBRATION)))
    later = calibration(report_path="/srv/reports/token_estimator_calibration_20261203_090000.md")
    edited = apply_proposal(FIXTURE_ESTIMATOR, later["proposed_changes"], later["metadata"])
    second = publish_local(repo, edited, "second body\n", output_dir=out, title=pr_title(as_result(later)),
                           proposal=proposal_hash(parse_changes(later["proposed_changes"])),
                           body_name=body_file_name(as_result(later)))
    assert first.body_path != second.body_path
    assert first.body_path is not None and first.body_path.read_text() == BODY  # not overwritten
    assert second.body_path is not None and second.body_path.name == "pull_request_body_20261203_090000.md"
    assert (out / "pull_request_body.md").read_text() == "second body\n"


def test_a_calibration_without_files_is_stamped_by_when_it_was_generated() -> None:
    unfiled = calibration(report_path=None, plot_path=None)
    unfiled["metadata"]["generated_at"] = "2026-11-26T12:00:05Z"
    stamped = body_file_name(as_result(unfiled))
    assert stamped == "pull_request_body_20261126_120005.md"
    assert body_file_name(None).startswith("pull_request_body_2")
