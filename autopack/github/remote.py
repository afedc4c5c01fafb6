"""Publish the edited estimator as a pull request on GitHub (PyGithub), never merging it.

One bot branch, one open PR: a second run updates the same PR in place. The bot respects humans:
no proposal a human closed is re-proposed, nor one that does not differ materially from it (every
proposal a closed PR ever carried is read back from its bot commits' trailers and files), and a branch
they pushed to is left alone (a comment on the PR says what the bot would have changed). The branch is
only ever reset to the base while no PR is open on it: GitHub closes an open PR for good when its head
lands on the base commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
from github import Auth, Github, GithubException, InputGitAuthor
from github.GithubException import BadCredentialsException, RateLimitExceededException, UnknownObjectException

from autopack.config import get_settings
from autopack.errors import AutopackError, ConfigError
from autopack.github.errors import (
    EstimatorEditError,
    GitHubAuthError,
    GitHubError,
    GitHubRateLimitError,
    StaleBaseError,
)
from autopack.github.estimator_edit import read_tables
from autopack.github.memory import PastProposal, PullHistory, declined_result, find_declined, proposals_of
from autopack.github.proposal import (
    BOT_BRANCH,
    ESTIMATOR_PATH,
    MATERIAL_TOLERANCE,
    PR_LABELS,
    Change,
    find_marker,
)
from autopack.github.result import (
    DEFAULT_IDENTITY,
    BotIdentity,
    PublishResult,
    commit_message,
    is_bot_commit,
    proposal_in_message,
)
from autopack.logging import add_secret, get_logger, redact

DEFAULT_API_URL = "https://api.github.com"
#: How many closed bot PRs (newest first) are read for proposals a human declined.
MAX_CLOSED_PULLS = 100
T = TypeVar("T")
log = get_logger("autopack.github")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of rate-limited requests (403/429 with ``x-ratelimit-remaining: 0`` or ``retry-after``).

    A wait longer than ``max_delay`` is not slept through: the run fails now with the reset time, rather
    than holding a worker for an hour. ``sleep``/``clock`` are injectable so tests never really wait.
    """

    max_attempts: int = 4
    base_delay: float = 2.0
    max_delay: float = 120.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class ClientOptions:
    """How PyGithub talks to the server. Its own throttling defaults (0.25 s / 1 s) follow GitHub's advice."""

    timeout: int = 30
    seconds_between_requests: float | None = 0.25
    seconds_between_writes: float | None = 1.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def git_blob_sha(content: bytes) -> str:
    """The sha git (and the contents API) gives a file with these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def publish_pull_request(
    *,
    edited_source: str,
    body: str,
    title: str,
    proposal: str,
    token: str | None = None,
    repository: str | None = None,
    base_url: str | None = None,
    base_branch: str | None = None,
    original_source: str | None = None,
    changes: Sequence[Change] | None = None,
    material_tolerance: float = MATERIAL_TOLERANCE,
    estimator_path: str = ESTIMATOR_PATH,
    branch: str = BOT_BRANCH,
    labels: Sequence[str] = PR_LABELS,
    identity: BotIdentity = DEFAULT_IDENTITY,
    options: ClientOptions | None = None,
) -> PublishResult:
    """Open or update the calibration PR on ``repository`` ("owner/name"); return what was done.

    ``token``/``repository``/``base_url``/``base_branch`` default to the settings (GITHUB_TOKEN,
    GITHUB_REPOSITORY, GITHUB_API_URL, GITHUB_BASE_BRANCH); the base defaults to the repository's default
    branch. ``original_source``, when given, must equal the base branch's file: otherwise the proposal
    was computed against another version and ``StaleBaseError`` is raised before anything is written.
    ``proposal`` is the proposal hash also carried in ``body``'s marker. A proposal that does not differ
    materially from one a human closed (``changes`` within ``material_tolerance``; without ``changes``,
    the same hash) is skipped. ``open_calibration_pr`` does the same with the database's memory too.
    """
    with GitHubRepository(token=token, repository=repository, base_url=base_url, base_branch=base_branch,
                          options=options, estimator_path=estimator_path, branch=branch, labels=labels,
                          identity=identity) as gh:
        gh.check_base(original_source)
        declined = find_declined(changes or (), proposal, proposals_of(gh.history()), material_tolerance)
        if declined is not None:
            return gh.skipped(declined, proposal)
        return gh.publish(edited_source=edited_source, body=body, title=title, proposal=proposal)


class _Session:
    """Runs one GitHub call with bounded rate-limit retries and turns failures into one-line errors."""

    def __init__(self, policy: RetryPolicy, *, secrets: list[str], api_url: str) -> None:
        self.policy = policy
        self.secrets = secrets
        self.api_url = api_url

    def call(self, what: str, fn: Callable[[], T]) -> T:
        attempts = max(1, self.policy.max_attempts)
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except GithubException as exc:
                wait = self._rate_limit_wait(exc, attempt)
                if wait is None:
                    raise self._translate(what, exc) from None
                if attempt == attempts:
                    raise GitHubRateLimitError(
                        f"GitHub rate limit: {what} was still refused after {attempts} attempts",
                        hint="try again later or use a token with a higher limit",
                    ) from None
                if wait > self.policy.max_delay:
                    raise GitHubRateLimitError(
                        f"GitHub rate limit: {what} refused and the limit resets in {wait:.0f}s",
                        hint=f"longer than the {self.policy.max_delay:.0f}s this run waits; try again later",
                    ) from None
                log.warning("GitHub rate limit on %s (attempt %d/%d); waiting %.1fs", what, attempt, attempts, wait)
                self.policy.sleep(wait)
            except requests.RequestException as exc:
                raise GitHubError(
                    f"cannot reach GitHub at {self.api_url} ({what}): {type(exc).__name__}",
                    hint="check GITHUB_API_URL and the network",
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _rate_limit_wait(self, exc: GithubException, attempt: int) -> float | None:
        """Seconds to wait before retrying, or None when ``exc`` is not a rate limit."""
        if exc.status not in (403, 429):
            return None
        headers = {str(k).lower(): str(v) for k, v in (exc.headers or {}).items()}
        backoff: float = self.policy.base_delay * 2 ** (attempt - 1)
        retry_after = headers.get("retry-after")
        if retry_after is not None:
            try:
                return max(float(retry_after), 0.0)
            except ValueError:
                return backoff
        if headers.get("x-ratelimit-remaining") == "0":
            reset = headers.get("x-ratelimit-reset")
            if reset and reset.isdigit():
                return max(int(reset) - self.policy.clock(), 0.0) + 1.0
            return backoff
        if exc.status == 429 or isinstance(exc, RateLimitExceededException):
            return backoff
        return None

    def _translate(self, what: str, exc: GithubException) -> Exception:
        message = exc.message or (exc.data.get("message") if isinstance(exc.data, dict) else None) or ""
        detail = redact(str(message), self.secrets)
        if isinstance(exc, BadCredentialsException) or exc.status == 401:
            return GitHubAuthError(
                f"GitHub rejected the token (401 {detail or 'Bad credentials'}) while trying to {what}",
                hint="check GITHUB_TOKEN / the 'github-token' secret; it may be expired or revoked",
            )
        if exc.status == 403:
            return GitHubAuthError(
                f"GitHub refused to {what} (403 {detail})",
                hint="the token needs contents: write and pull requests: write on the repository",
            )
        if exc.status == 404:
            return GitHubError(f"GitHub: not found while trying to {what} (404 {detail})",
                               hint="check GITHUB_REPOSITORY and that the token can see it")
        return GitHubError(f"GitHub failed to {what}: {exc.status} {detail}".rstrip())


@contextlib.contextmanager
def _left_behind(state: str) -> Iterator[None]:
    """A GitHub error after the bot branch moved names what it left behind, and what fixes it."""
    try:
        yield
    except AutopackError as exc:
        exc.message = f"{exc.message}; {state}"
        exc.args = (exc.message,)
        raise


class GitHubRepository:
    """The target repository on GitHub, for one publish: history, comments and the bot branch's PR.

    Use as a context manager (``with GitHubRepository(...) as gh``): entering reads the repository and
    its base branch; every call goes through bounded rate-limit retries and fails as one clear line.
    """

    def __init__(self, *, token: str | None = None, repository: str | None = None, base_url: str | None = None,
                 base_branch: str | None = None, options: ClientOptions | None = None,
                 estimator_path: str = ESTIMATOR_PATH, branch: str = BOT_BRANCH, labels: Sequence[str] = PR_LABELS,
                 identity: BotIdentity = DEFAULT_IDENTITY) -> None:
        settings = get_settings()
        if token is None and settings.github_token is not None:
            token = settings.github_token.get_secret_value()
        if not token:
            raise ConfigError("no GitHub token: set GITHUB_TOKEN or pass a token", hint="or publish as a dry run")
        repository = repository or settings.github_repository
        if not repository or repository.count("/") != 1 or not all(repository.split("/")):
            raise ConfigError(f"GITHUB_REPOSITORY must be 'owner/name', got {repository!r}")
        options = options or ClientOptions()
        api_url = (base_url or settings.github_base_url or DEFAULT_API_URL).rstrip("/")
        self.gh = Github(
            auth=Auth.Token(token),
            base_url=api_url,
            timeout=options.timeout,
            retry=None,  # our own bounded loop: it knows the rate-limit headers and never sleeps in tests
            user_agent="autopack-calibration",
            per_page=100,
            seconds_between_requests=options.seconds_between_requests,
            seconds_between_writes=options.seconds_between_writes,
        )
        add_secret(token)  # masked in every log line from now on (it may come from the Secret block, not settings)
        self.s = _Session(options.retry, secrets=[token], api_url=api_url)
        self.repository, self.base_branch = repository, base_branch or settings.github_base_branch
        self.path, self.branch, self.labels, self.identity = estimator_path, branch, list(labels), identity
        self.repo: Any = None
        self.base = ""
        self.base_sha = ""

    def __enter__(self) -> GitHubRepository:
        try:
            self.repo = self.s.call(f"read repository {self.repository}", lambda: self.gh.get_repo(self.repository))
            self.base = self.base_branch or self.repo.default_branch
            self.base_sha = self.s.call(f"read base branch {self.base}",
                                        lambda: self.repo.get_git_ref(f"heads/{self.base}").object.sha)
        except BaseException:
            self.gh.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.gh.close()

    @property
    def head(self) -> str:
        return f"{self.repo.owner.login}:{self.branch}"

    def commit_url(self, sha: str) -> str:
        """The web page of a commit of the repository (for the PR body's provenance)."""
        return f"{self.repo.html_url}/commit/{sha}"

    # --- history --------------------------------------------------------------------------------

    def history(self, *, learned: set[tuple[int, datetime]] = frozenset(),  # type: ignore[assignment]
                known_values: set[str] = frozenset(),  # type: ignore[assignment]
                limit: int = MAX_CLOSED_PULLS) -> list[PullHistory]:
        """Every bot PR (open, and the newest ``limit`` closed ones) with the proposals its bot commits carried.

        The commits of a closed PR are read once: a PR whose (number, closed at) is in ``learned`` is not
        read again. Values are recovered from the commit's file only for hashes not in ``known_values``.
        """
        s = self.s
        closed = s.call("list closed calibration PRs",
                        lambda: list(self.repo.get_pulls(state="closed", head=self.head)))
        open_prs = s.call("list open calibration PRs", lambda: list(self.repo.get_pulls(state="open", head=self.head)))
        pulls = [PullHistory(pr.number, pr.html_url, "open", None, find_marker(pr.body)) for pr in open_prs]
        for pr in sorted(closed, key=lambda p: -p.number)[:limit]:
            state: Any = "merged" if pr.merged_at is not None else "closed"
            closed_at = pr.closed_at
            carried: tuple[PastProposal, ...] = ()
            if (pr.number, _naive_utc(closed_at)) not in learned:
                carried = self._carried(pr, known_values)
            pulls.append(PullHistory(pr.number, pr.html_url, state, closed_at, find_marker(pr.body), carried))
        return pulls

    def _carried(self, pr: Any, known_values: set[str]) -> tuple[PastProposal, ...]:
        commits = self.s.call(f"list the commits of PR #{pr.number}", lambda: list(pr.get_commits()))
        if not commits:
            return ()
        first_parents = commits[0].parents
        reference = first_parents[0].sha if first_parents else pr.base.sha
        carried: dict[str, PastProposal] = {}
        for c in commits:
            author, committer = c.commit.author, c.commit.committer
            if not is_bot_commit(author.email if author else None, committer.email if committer else None,
                                 c.commit.message, self.identity):
                continue
            digest = proposal_in_message(c.commit.message)
            if digest is None or digest in carried:
                continue
            changes = None if digest in known_values else self._recover(reference, c.sha)
            carried[digest] = PastProposal(digest, changes, "closed", commit_sha=c.sha)
        return tuple(carried.values())

    def _recover(self, before_sha: str, after_sha: str) -> tuple[Change, ...] | None:
        """The coefficient entries a bot commit set, from its file and the file it was based on."""
        before, after = self._file_at(before_sha), self._file_at(after_sha)
        if before is None or after is None:
            return None
        try:
            old, new = read_tables(before), read_tables(after)
        except EstimatorEditError:
            return None
        changes = [
            Change(table, key, old.get(table, {}).get(key), value)
            for table, entries in sorted(new.items()) for key, value in sorted(entries.items())
            if old.get(table, {}).get(key) != value
        ]
        return tuple(changes) or None

    def _file_at(self, sha: str) -> str | None:
        def read() -> str | None:
            try:
                content = self.repo.get_contents(self.path, ref=sha)
            except UnknownObjectException:
                return None
            return None if isinstance(content, list) else content.decoded_content.decode("utf-8", "replace")
        return self.s.call(f"read {self.path} at {sha[:12]}", read)

    # --- comments -------------------------------------------------------------------------------

    def open_pull(self) -> Any:
        """The bot's open PR (the oldest, should there be several), or None."""
        open_prs = self.s.call("list open calibration PRs",
                               lambda: list(self.repo.get_pulls(state="open", head=self.head)))
        return min(open_prs, key=lambda p: p.number) if open_prs else None

    def comment_once(self, pr: Any, text: str, tag: str) -> str:
        """Comment ``text`` on ``pr`` unless a comment containing ``tag`` is already there; the comment's URL."""
        comments = self.s.call(f"read comments of PR #{pr.number}", lambda: list(pr.get_issue_comments()))
        for existing in comments:
            if tag in (existing.body or ""):
                return str(existing.html_url)
        created = self.s.call(f"comment on PR #{pr.number}", lambda: pr.create_issue_comment(text))
        return str(created.html_url)

    # --- publishing -----------------------------------------------------------------------------

    def check_base(self, original: str | None) -> None:
        if original is None:
            return
        content = self.s.call(f"read {self.path} on {self.base}",
                              lambda: self.repo.get_contents(self.path, ref=self.base_sha))
        if isinstance(content, list) or content.decoded_content.decode("utf-8") != original:
            raise StaleBaseError(
                f"{self.path} on {self.base} is not the file the proposal was computed against",
                hint=f"update the local checkout to {self.base} and re-run calibration",
            )

    def skipped(self, declined: PastProposal, proposal: str) -> PublishResult:
        return declined_result(declined, proposal, branch=self.branch, base=self.base)

    def publish(self, *, edited_source: str, body: str, title: str, proposal: str) -> PublishResult:
        """Put the edited file on the bot branch and open (or update) its PR; humans' commits are respected."""
        s, repo, base, base_sha = self.s, self.repo, self.base, self.base_sha
        pr = self.open_pull()
        branch_sha = self._branch_sha()
        if branch_sha is not None:
            foreign = self._foreign_commits(base_sha, branch_sha)
            if foreign:
                return self._leave_alone(pr, branch_sha, foreign, body, proposal)
            if pr is None and branch_sha != base_sha:
                ref = s.call("read the bot branch", lambda: _completed_ref(repo, self.branch))
                s.call("reset the bot branch to the base", lambda: ref.edit(base_sha, force=True))
        else:
            s.call("create the bot branch", lambda: repo.create_git_ref(f"refs/heads/{self.branch}", base_sha))

        commit_sha = self._put_file((branch_sha if pr is not None else None) or base_sha, edited_source, title,
                                    proposal)
        if pr is not None:
            existing = pr
            if existing.body != body or existing.title != title:
                with _left_behind(f"the bot branch {self.branch} already holds the new commit {commit_sha[:12]}, so "
                                  f"PR #{existing.number}'s title and description still describe the previous "
                                  "proposal: do not merge it before the next run updates them"):
                    s.call(f"update PR #{existing.number}", lambda: existing.edit(title=title, body=body))
            status, verb = "updated", "updated"
        else:
            with _left_behind(f"the bot branch {self.branch} holds the commit {commit_sha[:12]} with no pull request "
                              "for it: the next run opens one"):
                pr = s.call("open the calibration PR",
                            lambda: repo.create_pull(base=base, head=self.branch, title=title, body=body))
            status, verb = "opened", "opened"
        present = {label.name for label in pr.labels}
        missing = [name for name in self.labels if name not in present]
        if missing:
            # The documented body is {"labels": [...]}; PyGithub's add_to_labels posts a bare list.
            s.call(f"label PR #{pr.number}", lambda: pr.requester.requestJsonAndCheck(
                "POST", f"{pr.issue_url}/labels", input={"labels": missing}))
        return self._result(status, pr, commit_sha, proposal,
                            f"{verb} PR #{pr.number} {pr.html_url} ({self.branch} @ {commit_sha[:12]} into {base})")

    def _branch_sha(self) -> str | None:
        def read() -> str | None:
            try:
                sha: str = self.repo.get_git_ref(f"heads/{self.branch}").object.sha
                return sha
            except UnknownObjectException:
                return None
        return self.s.call("read the bot branch", read)

    def _foreign_commits(self, base_sha: str, branch_sha: str) -> list[str]:
        """Commits on the bot branch (not on the base) that the bot did not make, as 'sha (author)'."""
        commits = self.s.call("compare the bot branch with the base",
                              lambda: list(self.repo.compare(base_sha, branch_sha).commits))
        foreign = []
        for c in commits:
            author, committer = c.commit.author, c.commit.committer
            if not is_bot_commit(author.email if author else None, committer.email if committer else None,
                                 c.commit.message, self.identity):
                foreign.append(f"{c.sha[:12]} ({author.name if author else 'unknown'})")
        return foreign

    def _leave_alone(self, pr: Any, branch_sha: str, foreign: list[str], body: str, proposal: str) -> PublishResult:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        if pr is None:
            return self._result("left_alone_human_commits", None, branch_sha, proposal,
                                f"left alone: {self.branch} has commits that are not the bot's ({listed}) and no "
                                "open PR; delete or merge the branch to receive new proposals")
        comments = self.s.call(f"read comments of PR #{pr.number}", lambda: list(pr.get_issue_comments()))
        if not any(find_marker(c.body) == proposal for c in comments):
            text = (
                f"autopack has a new calibration proposal for this pull request, but `{self.branch}` has commits "
                f"that are not the bot's ({listed}), so the bot did not touch the branch or this description.\n\n"
                f"<details><summary>The new proposal</summary>\n\n{body}\n\n</details>"
            )
            self.s.call(f"comment on PR #{pr.number}", lambda: pr.create_issue_comment(text))
        return self._result("left_alone_human_commits", pr, branch_sha, proposal,
                            f"left alone: PR #{pr.number} {pr.html_url} has commits that are not the bot's "
                            f"({listed}); posted the proposal as a comment instead")

    def _put_file(self, branch_sha: str, edited: str, title: str, proposal: str) -> str:
        content = self.s.call(f"read {self.path} on {self.branch}",
                              lambda: self.repo.get_contents(self.path, ref=self.branch))
        if isinstance(content, list):
            raise GitHubError(f"{self.path} is a directory on {self.branch}")
        data = edited.encode("utf-8")
        if content.sha == git_blob_sha(data):
            return branch_sha  # the branch already holds exactly this file: no empty commit
        author = InputGitAuthor(self.identity.name, self.identity.email)
        result = self.s.call(
            f"commit {self.path} to {self.branch}",
            lambda: self.repo.update_file(self.path, commit_message(title, proposal), data, content.sha,
                                          branch=self.branch, committer=author, author=author),
        )
        commit_sha: str = result["commit"].sha
        return commit_sha

    def _result(self, status: Any, pr: Any, commit_sha: str | None, proposal: str, message: str) -> PublishResult:
        return PublishResult(
            status=status, branch=self.branch, base=self.base,
            pr_number=pr.number if pr is not None else None,
            pr_url=pr.html_url if pr is not None else None,
            commit_sha=commit_sha, proposal=proposal, summary=message,
        )


def _naive_utc(when: datetime | None) -> datetime | None:
    if when is None:
        return None
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when


def _completed_ref(repo: Any, branch: str) -> Any:
    ref = repo.get_git_ref(f"heads/{branch}")
    _ = ref.object.sha  # completes the lazy object so .edit() PATCHes the ref's canonical URL
    return ref
