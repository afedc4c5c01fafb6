"""publish_pull_request against the local fake GitHub: one PR, updated in place, humans respected."""

from __future__ import annotations

from typing import Any

import pytest
from github_server.app import FakeGitHub
from github_server.fixtures import BOT_TOKEN, REPOSITORY, fake_github, served_fake  # noqa: F401
from github_server.samples import CALIBRATION, FIXTURE_ESTIMATOR, as_result, calibration

from autopack.github.body import pr_title, render_pr_body
from autopack.github.errors import GitHubAuthError, GitHubError, GitHubRateLimitError, StaleBaseError
from autopack.github.estimator_edit import apply_proposal
from autopack.github.proposal import BOT_BRANCH, ESTIMATOR_PATH, find_marker, parse_changes, proposal_hash
from autopack.github.remote import ClientOptions, RetryPolicy, publish_pull_request
from autopack.github.result import BotIdentity, PublishResult

CLOCK = 1_900_000_000.0  # the fake's primary rate limit resets at CLOCK + 2


def proposal_b() -> dict[str, Any]:
    changes = [{"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "low"], "old": 634, "new": 500, "n": 30},
               {"coefficient": "BUDGET_FACTORS", "key": ["tests", "low"], "old": None, "new": 2.5, "n": 12}]
    return calibration(proposed_changes=changes)


class Run:
    """Publishes calibrations against one fake, recording the waits instead of sleeping."""

    def __init__(self, fake: FakeGitHub, *, max_attempts: int = 4) -> None:
        self.fake = fake
        self.sleeps: list[float] = []
        self.options = ClientOptions(
            seconds_between_requests=None, seconds_between_writes=None,
            retry=RetryPolicy(max_attempts=max_attempts, sleep=self.sleeps.append, clock=lambda: CLOCK),
        )

    def __call__(self, data: dict[str, Any] = CALIBRATION, *, token: str = BOT_TOKEN,
                 original: str | None = FIXTURE_ESTIMATOR) -> PublishResult:
        changes = data["proposed_changes"]
        return publish_pull_request(
            edited_source=apply_proposal(FIXTURE_ESTIMATOR, changes, data["metadata"]),
            body=render_pr_body(as_result(data), None), title=pr_title(as_result(data)), proposal=digest(data),
            token=token, repository=REPOSITORY, base_url=self.fake.url, original_source=original,
            options=self.options,
        )


def digest(data: dict[str, Any]) -> str:
    return proposal_hash(parse_changes(data["proposed_changes"]))



@pytest.fixture(autouse=True)
def _no_ambient_github_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CI runner's own GITHUB_API_URL / GITHUB_BASE_BRANCH must not redirect these tests."""
    for name in ("GITHUB_API_URL", "GITHUB_BASE_BRANCH", "GITHUB_TOKEN", "GITHUB_REPOSITORY"):
        monkeypatch.delenv(name, raising=False)

@pytest.fixture
def fake(fake_github: FakeGitHub) -> FakeGitHub:  # noqa: F811
    fake_github.create_repo(REPOSITORY, {ESTIMATOR_PATH: FIXTURE_ESTIMATOR, "README.md": "# autopack\n"})
    return fake_github


def writes(fake: FakeGitHub) -> list[str]:
    return [f"{e.method} {e.path_pattern}" for e in fake.exchanges if e.method != "GET" and e.status < 400]


def test_first_run_opens_a_labelled_pr_from_the_bot_branch(fake: FakeGitHub) -> None:
    result = Run(fake)()
    assert (result.status, result.pr_number, result.branch, result.base) == ("opened", 1, BOT_BRANCH, "main")
    repo = fake.repo(REPOSITORY)
    pull = repo.pulls[1]
    assert (pull.state, pull.head_ref, pull.base_ref, pull.merged_at) == ("open", BOT_BRANCH, "main", None)
    assert pull.labels == ["calibration", "needs-review"]
    assert find_marker(pull.body) == digest(CALIBRATION)
    assert fake.file(REPOSITORY, BOT_BRANCH, ESTIMATOR_PATH) == apply_proposal(
        FIXTURE_ESTIMATOR, CALIBRATION["proposed_changes"], CALIBRATION["metadata"])
    assert fake.file(REPOSITORY, "main", ESTIMATOR_PATH) == FIXTURE_ESTIMATOR
    tip = repo.commits[repo.refs[f"refs/heads/{BOT_BRANCH}"]]
    assert result.commit_sha == tip.sha and tip.author.email == BotIdentity().email
    assert result.pr_url is not None and result.pr_url.endswith("/pull/1")


def test_second_run_updates_the_same_pr(fake: FakeGitHub) -> None:
    run = Run(fake)
    run()
    result = run(proposal_b())
    assert (result.status, result.pr_number) == ("updated", 1)
    repo = fake.repo(REPOSITORY)
    assert list(repo.pulls) == [1]
    assert find_marker(repo.pulls[1].body) == digest(proposal_b())
    assert "BUDGET_FACTORS: dict[tuple[str, str], float] = {" in fake.file(REPOSITORY, BOT_BRANCH, ESTIMATOR_PATH)
    assert '    ("tests", "low"): 2.5,' in fake.file(REPOSITORY, BOT_BRANCH, ESTIMATOR_PATH)
    # The open PR's branch only ever moves forward: never reset (GitHub would close the PR for good).
    assert writes(fake).count("POST /repos/{owner}/{repo}/pulls") == 1
    assert "PATCH /repos/{owner}/{repo}/git/refs/{ref}" not in writes(fake)


def test_rerun_of_the_same_proposal_makes_no_new_commit(fake: FakeGitHub) -> None:
    run = Run(fake)
    first = run()
    again = run()
    assert (again.status, again.pr_number, again.commit_sha) == ("updated", 1, first.commit_sha)
    assert writes(fake).count("PUT /repos/{owner}/{repo}/contents/{path}") == 1


def test_a_failed_pr_update_says_the_branch_moved_and_the_description_is_stale(fake: FakeGitHub) -> None:
    run = Run(fake)
    run()
    fake.fail_next("update_pull")
    with pytest.raises(GitHubError) as failed:
        run(proposal_b())
    tip = fake.repo(REPOSITORY).refs[f"refs/heads/{BOT_BRANCH}"]
    assert f"the bot branch {BOT_BRANCH} already holds the new commit {tip[:12]}" in failed.value.message
    assert "do not merge it before the next run updates them" in failed.value.message
    assert run(proposal_b()).status == "updated"  # the next run mends it
    assert find_marker(fake.repo(REPOSITORY).pulls[1].body) == digest(proposal_b())


def test_a_failed_pr_creation_says_the_branch_has_no_pull_request_yet(fake: FakeGitHub) -> None:
    run = Run(fake)
    fake.fail_next("create_pull")
    with pytest.raises(GitHubError, match=f"the bot branch {BOT_BRANCH} holds the commit [0-9a-f]{{12}} with no pull "
                                          "request for it: the next run opens one"):
        run()
    assert run().status == "opened"


def test_pr_closed_by_a_human_is_not_reproposed(fake: FakeGitHub) -> None:
    run = Run(fake)
    run()
    fake.close_pull(REPOSITORY, 1)
    before = len(writes(fake))
    result = run()
    assert (result.status, result.pr_number) == ("skipped_closed_by_human", 1)
    assert len(writes(fake)) == before
    assert fake.repo(REPOSITORY).pulls[1].state == "closed"


def test_a_different_proposal_after_a_close_opens_a_new_pr_on_a_fresh_branch(fake: FakeGitHub) -> None:
    run = Run(fake)
    run()
    fake.close_pull(REPOSITORY, 1)
    result = run(proposal_b())
    assert (result.status, result.pr_number) == ("opened", 2)
    repo = fake.repo(REPOSITORY)
    commits = fake.state.commits_between(repo, repo.refs["refs/heads/main"], repo.refs[f"refs/heads/{BOT_BRANCH}"])
    assert len(commits) == 1  # reset to the base while no PR was open, then one commit
    assert repo.pulls[1].state == "closed" and repo.pulls[2].state == "open"


def test_branch_a_human_pushed_to_is_left_alone_with_a_comment(fake: FakeGitHub) -> None:
    run = Run(fake)
    run()
    human = fake.push(REPOSITORY, BOT_BRANCH, {"NOTES.md": "tuned by hand\n"}, "Hand-tune")
    result = run(proposal_b())
    assert (result.status, result.pr_number, result.commit_sha) == ("left_alone_human_commits", 1, human)
    repo = fake.repo(REPOSITORY)
    assert repo.refs[f"refs/heads/{BOT_BRANCH}"] == human
    assert find_marker(repo.pulls[1].body) == digest(CALIBRATION)  # description untouched
    (comment,) = repo.comments
    assert find_marker(comment.body) == digest(proposal_b()) and "Hannah Human" in comment.body
    run(proposal_b())
    assert len(repo.comments) == 1  # the same proposal is not commented twice


def test_bad_token_is_one_clear_error_without_the_token(fake: FakeGitHub) -> None:
    bad = "ghp_ThisTokenIsWrong0123456789abcdefABCD"
    with pytest.raises(GitHubAuthError) as caught:
        Run(fake)(token=bad)
    message = caught.value.one_line()
    assert "rejected the token (401 Bad credentials)" in message
    assert bad not in message and bad not in repr(caught.value.args)
    assert len(fake.exchanges) == 1  # an auth failure is not retried


def test_primary_rate_limit_is_waited_out_until_the_reset(fake: FakeGitHub) -> None:
    run = Run(fake)
    fake.rate_limit(2, "primary")
    result = run()
    assert result.status == "opened"
    assert run.sleeps == [3.0, 3.0]  # reset (CLOCK + 2) - clock + 1 s


def test_secondary_rate_limit_waits_retry_after(fake: FakeGitHub) -> None:
    run = Run(fake)
    fake.rate_limit(1, "secondary")
    assert run().status == "opened"
    assert run.sleeps == [3.0]


def test_rate_limit_retries_are_bounded(fake: FakeGitHub) -> None:
    run = Run(fake, max_attempts=3)
    fake.rate_limit(10, "429")
    with pytest.raises(GitHubRateLimitError, match="still refused after 3 attempts"):
        run()
    assert len(fake.exchanges) == 3 and [e.status for e in fake.exchanges] == [429, 429, 429]
    assert run.sleeps == [3.0, 3.0]


def test_base_that_moved_on_is_refused_before_any_write(fake: FakeGitHub) -> None:
    fake.push(REPOSITORY, "main", {ESTIMATOR_PATH: FIXTURE_ESTIMATOR.replace("634", "700")}, "Manual retune")
    with pytest.raises(StaleBaseError, match="not the file the proposal was computed against"):
        Run(fake)()
    assert writes(fake) == []


def test_github_enterprise_base_url_with_a_path_prefix() -> None:
    with served_fake(prefix="/api/v3") as ghes:
        ghes.create_repo(REPOSITORY, {ESTIMATOR_PATH: FIXTURE_ESTIMATOR})
        result = Run(ghes)()
        assert (result.status, result.pr_number) == ("opened", 1)
        assert ghes.url.endswith("/api/v3")


def test_token_without_write_permission_is_a_clear_error(fake: FakeGitHub) -> None:
    read_only = "ghp_ReadOnlyToken0123456789abcdefABCDEF"
    fake.add_token(read_only, "reader", read_only=True)
    with pytest.raises(GitHubAuthError, match="403 Resource not accessible") as caught:
        Run(fake)(token=read_only)
    assert "pull requests: write" in caught.value.one_line()
    assert [e.status for e in fake.exchanges if e.method != "GET"] == [403]  # refused once, not retried


def test_rate_limit_resetting_too_late_fails_now_instead_of_sleeping(fake: FakeGitHub) -> None:
    run = Run(fake)
    run.options = ClientOptions(seconds_between_requests=None, seconds_between_writes=None,
                                retry=RetryPolicy(sleep=run.sleeps.append, clock=lambda: CLOCK - 3600))
    fake.rate_limit(1, "primary")
    with pytest.raises(GitHubRateLimitError, match="resets in 3603s"):
        run()
    assert run.sleeps == []


def test_unreachable_server_is_a_clear_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fake = FakeGitHub(url=f"http://127.0.0.1:{port}")  # never started: nothing listens there
    with pytest.raises(GitHubError, match=f"cannot reach GitHub at http://127.0.0.1:{port}"):
        Run(fake)()
