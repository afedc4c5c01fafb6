"""open_calibration_pr: edit → verify → publish, locally (dry run / no token) or to the fake GitHub.

The pipeline run again — after one more run of data, after a human close, with a changed proposal that
fails verification — ends with a valid PR or a clear not-updated comment; each case is pinned here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from github_server.app import FakeGitHub
from github_server.fixtures import BOT_TOKEN, REPOSITORY, fake_github  # noqa: F401
from github_server.samples import CALIBRATION, FIXTURE_ESTIMATOR, as_result, calibration, git, make_target_repo

from autopack.db.engine import dispose_engines, session_scope
from autopack.db.handle import database_at
from autopack.db.migrate import upgrade_database
from autopack.db.models import CalibrationProposal, CalibrationRun
from autopack.errors import RefusedError, SchemaNotMigratedError
from autopack.github import open_calibration_pr
from autopack.github.errors import StaleProposalError, VerificationError
from autopack.github.proposal import BOT_BRANCH, ESTIMATOR_PATH, find_marker, parse_changes, proposal_hash
from autopack.github.remote import ClientOptions

FAST = ClientOptions(seconds_between_requests=None, seconds_between_writes=None)


@pytest.fixture(autouse=True)
def _no_ambient_github_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CI runner's own GITHUB_API_URL / GITHUB_BASE_BRANCH must not redirect these tests."""
    for name in ("GITHUB_API_URL", "GITHUB_BASE_BRANCH", "GITHUB_TOKEN", "GITHUB_REPOSITORY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sqlite_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated SQLite database as the settings' database (for tests not about the memory itself)."""
    url = f"sqlite:///{tmp_path / 'memory.db'}"
    upgrade_database(database_at(url))
    monkeypatch.setenv("DATABASE_URL", url)
    yield url
    dispose_engines()


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return make_target_repo(tmp_path / "target")


@pytest.fixture
def github(fake_github: FakeGitHub) -> FakeGitHub:  # noqa: F811
    fake_github.create_repo(REPOSITORY, {ESTIMATOR_PATH: FIXTURE_ESTIMATOR})
    return fake_github


def with_plot(tmp_path: Path) -> dict:
    plot = tmp_path / "reports" / "token_estimator_calibration_20261126_120000.png"
    plot.parent.mkdir()
    plot.write_bytes(b"\x89PNG")
    return calibration(plot_path=str(plot), report_path=str(plot.with_suffix(".md")))


def proposal(factor: float, overhead: int, *, shipped_ratio: float = 2.324, held_out: int = 19) -> dict[str, Any]:
    """A calibration of the fixture estimator setting implementation/low's factor and overhead."""
    data = calibration()
    data["proposed_changes"][0]["new"] = factor
    data["proposed_changes"][1]["new"] = overhead
    shipped = data["backtest"]["shipped"]
    shipped.update(n=held_out, reserved_over_used=shipped_ratio, reserved_tokens=round(shipped_ratio * 10_000))
    return data


def digest(data: dict[str, Any]) -> str:
    return proposal_hash(parse_changes(data["proposed_changes"]))


def publish(data: dict[str, Any], target: Path, tmp_path: Path, fake: FakeGitHub, *, run_tests: bool = False,
            **kwargs: Any) -> Any:
    """One pipeline run against the fake GitHub (the estimator tests only where a test is about them: they are slow)."""
    return open_calibration_pr(as_result(data), target_repo=target, output_dir=tmp_path / "out", dry_run=False,
                               token=BOT_TOKEN, repository=REPOSITORY, base_url=fake.url, options=FAST,
                               run_tests=run_tests, **{"database": database_at(), **kwargs})


def remembered(url: str, repository: str = REPOSITORY) -> dict[str, tuple[str, int | None]]:
    """proposal hash → (status, PR number) as the database remembers them."""
    with session_scope(url) as session:
        rows = session.scalars(sa.select(CalibrationProposal).where(CalibrationProposal.repository == repository))
        return {row.proposal_hash: (row.status, row.pr_number) for row in rows}


def shipped_cells(body: str) -> list[str]:
    """The `shipped` column of the body's backtest table, row by row."""
    lines = body.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| Metric |"))
    columns = [c.strip() for c in lines[head].strip("|").split("|")]
    index = columns.index("`shipped` = this pull request")
    rows = []
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")][index])
    return rows


# --- local (dry run) ---------------------------------------------------------------------------------


def test_dry_run_writes_branch_and_body_with_relative_plot(sqlite_db: str, target: Path, tmp_path: Path) -> None:
    result = open_calibration_pr(as_result(with_plot(tmp_path)), target_repo=target, output_dir=tmp_path / "out",
                                 dry_run=True, database=database_at())
    assert result.status == "dry_run" and result.branch == BOT_BRANCH
    body = (tmp_path / "out" / "pull_request_body.md").read_text()
    assert "![calibration plot](../reports/token_estimator_calibration_20261126_120000.png)" in body
    assert "```mermaid" not in body  # a dry run's body links the plot; the inline chart is for GitHub
    assert "Estimator tests: passed" in body
    assert f"- Code commit (base of this pull request): `{git(target, 'rev-parse', 'HEAD')[:12]}`" in body
    assert find_marker(body) == digest(CALIBRATION)
    assert git(target, "show", f"{BOT_BRANCH}:{ESTIMATOR_PATH}").count('("implementation", "low"): 410,') == 1


def test_without_a_token_it_publishes_locally(sqlite_db: str, target: Path, tmp_path: Path) -> None:
    result = open_calibration_pr(as_result(CALIBRATION), target_repo=target, output_dir=tmp_path / "out", dry_run=False,
                                 database=database_at())
    assert result.status == "dry_run"


def test_a_dry_run_remembers_what_it_wrote_and_what_replaced_it(db_url: str, target: Path, tmp_path: Path) -> None:
    first = open_calibration_pr(as_result(CALIBRATION), target_repo=target, output_dir=tmp_path / "out", dry_run=True,
                                database=database_at(db_url))
    second = open_calibration_pr(as_result(proposal(1.6, 500)), target_repo=target, output_dir=tmp_path / "out", dry_run=True,
                                 database=database_at(db_url))
    local = f"local:{target.resolve()}"
    assert remembered(db_url, local) == {first.proposal: ("superseded", None), second.proposal: ("open", None)}


def test_a_dry_run_of_a_declined_proposal_writes_nothing(db_url: str, target: Path, tmp_path: Path) -> None:
    """With the GitHub repository configured, a dry run consults what humans closed there."""
    with session_scope(db_url) as session:
        session.add(CalibrationProposal(repository=REPOSITORY, proposal_hash="f" * 64, status="closed",
                                        source="github", pr_number=4, changes=[
                                            {"coefficient": "BUDGET_FACTORS", "key": ["implementation", "low"],
                                             "old": None, "new": 1.40},
                                            {"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "low"],
                                             "old": 634, "new": 400}]))
    result = open_calibration_pr(as_result(CALIBRATION), target_repo=target, output_dir=tmp_path / "out", dry_run=True,
                                 repository=REPOSITORY, database=database_at(db_url))
    assert result.status == "skipped_closed_by_human" and result.pr_number == 4
    assert "PR #4 with a proposal this one does not differ materially from was closed by a human" in result.summary
    assert git(target, "branch", "--list", BOT_BRANCH) == ""


def test_failed_gate_is_refused(target: Path, tmp_path: Path) -> None:
    data = calibration(gate={"passed": False, "reasons": ["truncation 0.09 > target 0.05"]})
    with pytest.raises(RefusedError, match="gate did not pass: truncation 0.09 > target 0.05"):
        open_calibration_pr(as_result(data), target_repo=target, output_dir=tmp_path / "out", dry_run=True,
                            database=database_at())
    assert not (tmp_path / "out").exists()


def test_failed_verification_names_the_test_and_publishes_nothing(sqlite_db: str, target: Path,
                                                                  tmp_path: Path) -> None:
    data = calibration(proposed_changes=[{"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "low"],
                                          "old": 634, "new": 0}])
    with pytest.raises(VerificationError) as caught:
        open_calibration_pr(as_result(data), target_repo=target, output_dir=tmp_path / "out", dry_run=True,
                            database=database_at())
    line = caught.value.one_line()
    assert ("failed verification: tests/test_token_estimator.py::test_tables_are_positive failed: assert 0 > 0 "
            "(key = ('implementation', 'low'), value = 0); nothing was pushed") in line
    assert "\n" not in line
    details = (tmp_path / "out" / "verification_failure.md").read_text()
    assert caught.value.details_path == tmp_path / "out" / "verification_failure.md"
    assert "`PHASE_OVERHEAD[implementation, low]` 634 → 0" in details and "<summary>pytest output</summary>" in details
    assert git(target, "branch", "--list", BOT_BRANCH) == ""
    assert not (tmp_path / "out" / "pull_request_body.md").exists()


def test_stale_proposal_publishes_nothing(target: Path, tmp_path: Path) -> None:
    data = calibration(proposed_changes=[{"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "low"],
                                          "old": 1120, "new": 634}])
    with pytest.raises(StaleProposalError):
        open_calibration_pr(as_result(data), target_repo=target, output_dir=tmp_path / "out", dry_run=True,
                            database=database_at())
    assert git(target, "branch", "--list", BOT_BRANCH) == ""


def test_an_unmigrated_database_is_one_clear_error(empty_db_url: str, target: Path, tmp_path: Path) -> None:
    with pytest.raises(SchemaNotMigratedError) as caught:
        open_calibration_pr(as_result(CALIBRATION), target_repo=target, output_dir=tmp_path / "out", dry_run=True,
                            database=database_at(empty_db_url))
    assert "autopack db upgrade" in caught.value.one_line()
    assert git(target, "branch", "--list", BOT_BRANCH) == ""


# --- GitHub ------------------------------------------------------------------------------------------


def test_with_token_and_repository_it_opens_a_pr(sqlite_db: str, github: FakeGitHub, target: Path,
                                                 tmp_path: Path) -> None:
    result = publish(CALIBRATION, target, tmp_path, github, flow_run_url="http://127.0.0.1:4200/runs/flow-run/1",
                     run_tests=True)
    assert (result.status, result.pr_number) == ("opened", 1)
    body = github.repo(REPOSITORY).pulls[1].body
    assert result.body_path is not None and result.body_path.read_text() == body
    assert git(target, "branch", "--list", BOT_BRANCH) == ""  # no local branch when publishing remotely
    main = github.repo(REPOSITORY).refs["refs/heads/main"]
    assert f"- Code commit (base of this pull request): [`{main[:12]}`]({github.url}/web/{REPOSITORY}/commit/{main})" \
        in body
    assert "- Flow run: [http://127.0.0.1:4200/runs/flow-run/1]" in body
    assert "```mermaid" in body and "![calibration plot]" not in body  # inline: nothing depends on an upload
    assert "Estimator tests: passed" in body
    assert shipped_cells(body)[:3] == ["19", "0–1", "0.0 %"]


def test_token_from_the_settings(sqlite_db: str, github: FakeGitHub, target: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("GITHUB_REPOSITORY", REPOSITORY)
    monkeypatch.setenv("GITHUB_API_URL", github.url)
    result = open_calibration_pr(as_result(CALIBRATION), target_repo=target, output_dir=tmp_path / "out", dry_run=False,
                                 options=FAST, database=database_at())
    assert result.status == "opened"


def test_one_more_run_of_data_updates_the_pr_and_its_shipped_column(db_url: str, github: FakeGitHub, target: Path,
                                                                    tmp_path: Path) -> None:
    first = publish(CALIBRATION, target, tmp_path, github, database=database_at(db_url))
    week2 = proposal(1.55, 450, shipped_ratio=2.2, held_out=25)
    second = publish(week2, target, tmp_path, github, database=database_at(db_url))
    assert (first.status, second.status, second.pr_number) == ("opened", "updated", 1)
    pull = github.repo(REPOSITORY).pulls[1]
    assert find_marker(pull.body) == digest(week2)
    assert shipped_cells(pull.body)[0] == "25" and "| reserved / used | 2.353 | 2.2 |" in pull.body
    assert '    ("implementation", "low"): 450,' in github.file(REPOSITORY, BOT_BRANCH, ESTIMATOR_PATH)
    assert remembered(db_url) == {digest(CALIBRATION): ("superseded", 1), digest(week2): ("open", 1)}


def test_after_a_human_close_the_closed_prs_first_proposal_is_not_reopened(db_url: str, github: FakeGitHub,
                                                                           target: Path, tmp_path: Path) -> None:
    """The reported bug: PR #1 proposed A, then was updated to B; a human closed it; A came back as PR #2."""
    a, b = CALIBRATION, proposal(1.9, 300)
    publish(a, target, tmp_path, github, database=database_at(db_url))
    publish(b, target, tmp_path, github, database=database_at(db_url))
    github.close_pull(REPOSITORY, 1)

    again = publish(a, target, tmp_path, github, database=database_at(db_url))

    assert (again.status, again.pr_number) == ("skipped_closed_by_human", 1)
    assert list(github.repo(REPOSITORY).pulls) == [1]
    assert remembered(db_url) == {digest(a): ("closed", 1), digest(b): ("closed", 1)}


def test_a_proposal_within_tolerance_of_a_closed_one_is_skipped(db_url: str, github: FakeGitHub, target: Path,
                                                                 tmp_path: Path) -> None:
    publish(CALIBRATION, target, tmp_path, github, database=database_at(db_url))
    github.close_pull(REPOSITORY, 1)
    close = proposal(1.46, 430)  # 1.42 → 1.46 is 2.7 %, 410 → 430 is 4.7 %: the same idea a human declined
    result = publish(close, target, tmp_path, github, database=database_at(db_url))
    assert result.status == "skipped_closed_by_human"
    assert "does not differ materially" in result.summary
    assert list(github.repo(REPOSITORY).pulls) == [1]


def test_a_materially_different_proposal_after_a_close_opens_a_new_pr(db_url: str, github: FakeGitHub,
                                                                      target: Path, tmp_path: Path) -> None:
    publish(CALIBRATION, target, tmp_path, github, database=database_at(db_url))
    github.close_pull(REPOSITORY, 1)
    different = proposal(1.42, 500)  # 410 → 500 is 18 % apart
    result = publish(different, target, tmp_path, github, database=database_at(db_url))
    assert (result.status, result.pr_number) == ("opened", 2)
    assert remembered(db_url) == {digest(CALIBRATION): ("closed", 1), digest(different): ("open", 2)}


def test_closures_are_learned_from_github_when_the_database_has_forgotten(db_url: str, github: FakeGitHub,
                                                                          target: Path, tmp_path: Path,
                                                                          sqlite_db: str) -> None:
    """Another database (or a fresh one) still sees the no: values are read back from the closed PR's commits."""
    a, b = CALIBRATION, proposal(1.9, 300)
    publish(a, target, tmp_path, github, database=database_at(sqlite_db))
    publish(b, target, tmp_path, github, database=database_at(sqlite_db))
    github.close_pull(REPOSITORY, 1)

    near_a = proposal(1.43, 412)
    result = publish(near_a, target, tmp_path, github, database=database_at(db_url))  # db_url never saw PR #1

    assert (result.status, result.pr_number) == ("skipped_closed_by_human", 1)
    assert remembered(db_url) == {digest(a): ("closed", 1), digest(b): ("closed", 1)}
    with session_scope(db_url) as session:
        row = session.scalars(sa.select(CalibrationProposal).where(
            CalibrationProposal.proposal_hash == digest(a))).one()
        assert row.changes == [
            {"coefficient": "BUDGET_FACTORS", "key": ["implementation", "low"], "old": None, "new": 1.42},
            {"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "low"], "old": 634, "new": 410}]


def test_a_pr_a_human_reopened_is_updated_again(db_url: str, github: FakeGitHub, target: Path,
                                               tmp_path: Path) -> None:
    publish(CALIBRATION, target, tmp_path, github, database=database_at(db_url))
    github.close_pull(REPOSITORY, 1)
    assert publish(CALIBRATION, target, tmp_path, github, database=database_at(db_url)).status == "skipped_closed_by_human"
    github.reopen_pull(REPOSITORY, 1)
    result = publish(proposal(1.43, 405), target, tmp_path, github, database=database_at(db_url))
    assert (result.status, result.pr_number) == ("updated", 1)
    assert remembered(db_url)[digest(CALIBRATION)] == ("superseded", 1)


def test_a_closed_prs_commits_are_read_once(db_url: str, github: FakeGitHub, target: Path, tmp_path: Path) -> None:
    publish(CALIBRATION, target, tmp_path, github, database=database_at(db_url))
    github.close_pull(REPOSITORY, 1)
    publish(proposal(1.9, 300), target, tmp_path, github, database=database_at(db_url))
    publish(proposal(2.5, 200), target, tmp_path, github, database=database_at(db_url))
    reads = github.requests("GET", "/repos/{owner}/{repo}/pulls/{pull_number}/commits")
    assert [e.path.rsplit("/", 2)[-2] for e in reads] == ["1"]


def test_a_changed_proposal_failing_verification_leaves_the_pr_with_a_comment(db_url: str, github: FakeGitHub,
                                                                              target: Path, tmp_path: Path) -> None:
    """The reported chain break: overhead 634 → 0 fails the estimator tests; the open PR must say why."""
    publish(CALIBRATION, target, tmp_path, github, database=database_at(db_url))
    repo = github.repo(REPOSITORY)
    body_before, tip_before = repo.pulls[1].body, repo.refs[f"refs/heads/{BOT_BRANCH}"]
    broken = proposal(1.42, 0)

    with pytest.raises(VerificationError) as caught:
        publish(broken, target, tmp_path, github, database=database_at(db_url), flow_run_url="http://127.0.0.1:4200/r/9",
                run_tests=True)

    line = caught.value.one_line()
    assert "tests/test_token_estimator.py::test_tables_are_positive failed: assert 0 > 0" in line
    assert "value = 0" in line and "PR #1 was not updated (comment: " in line
    assert (repo.pulls[1].body, repo.refs[f"refs/heads/{BOT_BRANCH}"]) == (body_before, tip_before)
    (comment,) = repo.comments
    assert caught.value.comment_url is not None and caught.value.comment_url.endswith(f"#issuecomment-{comment.id}")
    for text in ("Not updated: the new proposal failed verification", "pull request #1 still shows the previous",
                 "`tests/test_token_estimator.py::test_tables_are_positive`", "assertion: `assert 0 > 0`",
                 "`value = 0`", "`PHASE_OVERHEAD[implementation, low]` 634 → 0", "Flow run: "):
        assert text in comment.body
    assert remembered(db_url) == {digest(CALIBRATION): ("open", 1)}  # the broken proposal was never published

    with pytest.raises(VerificationError):
        publish(broken, target, tmp_path, github, database=database_at(db_url), run_tests=True)
    assert len(repo.comments) == 1  # the same failing proposal is not commented twice


def test_a_merged_proposal_is_remembered_as_merged_and_blocks_nothing(db_url: str, github: FakeGitHub,
                                                                      tmp_path: Path) -> None:
    target = make_target_repo(tmp_path / "t1")
    publish(CALIBRATION, target, tmp_path, github, database=database_at(db_url))
    github.merge_pull(REPOSITORY, 1)
    merged_file = github.file(REPOSITORY, "main", ESTIMATOR_PATH)
    assert merged_file is not None
    after_merge = make_target_repo(tmp_path / "t2", estimator=merged_file)
    next_week = calibration(proposed_changes=[{"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "low"],
                                               "old": 410, "new": 634}])  # back to the old value: not declined
    result = publish(next_week, after_merge, tmp_path, github, database=database_at(db_url))
    assert (result.status, result.pr_number) == ("opened", 2)
    assert remembered(db_url) == {digest(CALIBRATION): ("merged", 1), digest(next_week): ("open", 2)}


def test_the_calibration_run_gets_its_pull_request(db_url: str, github: FakeGitHub, target: Path,
                                                   tmp_path: Path) -> None:
    with session_scope(db_url) as session:
        run = CalibrationRun(method_version="conformal-v2", outcome="gate_passed", gate_passed=True)
        session.add(run)
        session.flush()
        run_id = run.id
    data = calibration()
    data["metadata"]["calibration_run_id"] = run_id
    result = publish(data, target, tmp_path, github, database=database_at(db_url))
    with session_scope(db_url) as session:
        row = session.get(CalibrationRun, run_id)
        assert row is not None and (row.pr_number, row.pr_url, row.pr_state) == (1, result.pr_url, "opened")
        proposal_row = session.scalars(sa.select(CalibrationProposal)).one()
        assert (proposal_row.calibration_run_id, proposal_row.db_id) == (run_id, "db-5f1c2a")
