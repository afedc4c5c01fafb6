"""State of the fake GitHub: users, tokens, repositories with a real commit graph, pull requests, comments.

Shas follow git's rules where it matters to clients (a file's blob sha is git's, so the contents API's
``sha`` can be checked against ``git hash-object``). Test helpers act as humans: push a commit, close a PR.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

START = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def tree_sha(tree: dict[str, bytes]) -> str:
    listing = "".join(f"100644 {path}\0{blob_sha(data)}\n" for path, data in sorted(tree.items()))
    return hashlib.sha1(f"tree {listing}".encode()).hexdigest()


@dataclass(frozen=True)
class GitIdentity:
    name: str
    email: str


@dataclass
class User:
    login: str
    id: int
    type: str = "User"

    @property
    def noreply_email(self) -> str:
        return f"{self.id}+{self.login}@users.noreply.github.com"


@dataclass
class Commit:
    sha: str
    tree: dict[str, bytes]
    parents: list[str]
    message: str
    author: GitIdentity
    committer: GitIdentity
    date: str
    author_login: str | None
    committer_login: str | None
    seq: int


@dataclass
class Label:
    id: int
    name: str
    color: str = "ededed"
    description: str = ""  # pull-request-simple declares it a (non-null) string


@dataclass
class Pull:
    number: int
    id: int
    title: str
    body: str | None
    head_ref: str
    base_ref: str
    user: str
    created_at: str
    updated_at: str
    state: str = "open"
    closed_at: str | None = None
    merged_at: str | None = None
    labels: list[str] = field(default_factory=list)
    frozen_head_sha: str | None = None
    frozen_base_sha: str | None = None
    draft: bool = False
    maintainer_can_modify: bool = False


@dataclass
class Comment:
    id: int
    issue_number: int
    body: str
    user: str
    created_at: str
    updated_at: str


@dataclass
class Repo:
    id: int
    owner: str
    name: str
    default_branch: str
    created_at: str
    refs: dict[str, str] = field(default_factory=dict)  # "refs/heads/main" -> sha
    commits: dict[str, Commit] = field(default_factory=dict)
    pulls: dict[int, Pull] = field(default_factory=dict)
    comments: list[Comment] = field(default_factory=list)
    labels: dict[str, Label] = field(default_factory=dict)
    next_issue: int = 1

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


class GitHubState:
    """Everything the fake server knows; every access holds ``lock`` (the server is threaded)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.users: dict[str, User] = {}
        self.tokens: dict[str, str] = {}
        self.read_only_tokens: set[str] = set()
        self.repos: dict[str, Repo] = {}
        self._ids = itertools.count(1001)
        self._seq = itertools.count(1)
        self._tick = itertools.count(0)

    # --- clock and ids -----------------------------------------------------------------------
    def now(self) -> str:
        return (START + timedelta(seconds=next(self._tick))).strftime("%Y-%m-%dT%H:%M:%SZ")

    def new_id(self) -> int:
        return next(self._ids)

    # --- users -------------------------------------------------------------------------------
    def add_user(self, login: str, *, type: str = "User") -> User:
        with self.lock:
            return self.users.setdefault(login, User(login, self.new_id(), type))

    def add_token(self, token: str, login: str, *, read_only: bool = False) -> None:
        with self.lock:
            self.add_user(login)
            self.tokens[token] = login
            if read_only:
                self.read_only_tokens.add(token)

    def user_for_email(self, email: str) -> User | None:
        for user in self.users.values():
            if email.lower() in (user.noreply_email.lower(), f"{user.login}@example.com"):
                return user
        return None

    # --- repositories and commits ------------------------------------------------------------
    def create_repo(self, full_name: str, files: dict[str, str | bytes], *, default_branch: str = "main",
                    author: GitIdentity = GitIdentity("Repo Owner", "owner@example.com")) -> Repo:
        owner, name = full_name.split("/")
        with self.lock:
            self.add_user(owner)
            repo = Repo(self.new_id(), owner, name, default_branch, self.now())
            self.repos[full_name] = repo
            sha = self.make_commit(repo, {p: _bytes(c) for p, c in files.items()}, [], "Initial commit", author, author)
            repo.refs[f"refs/heads/{default_branch}"] = sha
            return repo

    def repo(self, owner: str, name: str) -> Repo | None:
        return self.repos.get(f"{owner}/{name}")

    def make_commit(self, repo: Repo, tree: dict[str, bytes], parents: list[str], message: str,
                    author: GitIdentity, committer: GitIdentity) -> str:
        seq = next(self._seq)
        date = self.now()
        raw = f"{tree_sha(tree)}|{','.join(parents)}|{message}|{author}|{committer}|{date}|{seq}"
        sha = hashlib.sha1(raw.encode()).hexdigest()
        author_user = self.user_for_email(author.email)
        committer_user = self.user_for_email(committer.email)
        repo.commits[sha] = Commit(sha, dict(tree), list(parents), message, author, committer, date,
                                   author_user.login if author_user else None,
                                   committer_user.login if committer_user else None, seq)
        return sha

    def resolve(self, repo: Repo, rev: str) -> str | None:
        """A branch name, ``heads/x``, ``refs/heads/x`` or a (full or 7+ char) commit sha → commit sha."""
        for candidate in (rev, f"refs/{rev}", f"refs/heads/{rev}"):
            if candidate in repo.refs:
                return repo.refs[candidate]
        if rev in repo.commits:
            return rev
        if len(rev) >= 7:
            matches = [sha for sha in repo.commits if sha.startswith(rev)]
            if len(matches) == 1:
                return matches[0]
        return None

    def ancestors(self, repo: Repo, sha: str) -> set[str]:
        seen: set[str] = set()
        stack = [sha]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            stack.extend(repo.commits[current].parents)
        return seen

    def commits_between(self, repo: Repo, base_sha: str, head_sha: str) -> list[Commit]:
        """Commits reachable from head but not from base, oldest first (what a compare/PR lists)."""
        only = self.ancestors(repo, head_sha) - self.ancestors(repo, base_sha)
        return sorted((repo.commits[s] for s in only), key=lambda c: c.seq)

    def merge_base(self, repo: Repo, a: str, b: str) -> str | None:
        common = self.ancestors(repo, a) & self.ancestors(repo, b)
        return max(common, key=lambda s: repo.commits[s].seq) if common else None

    def set_ref(self, repo: Repo, ref: str, sha: str | None) -> None:
        """Move (or delete) a ref, closing open PRs whose head disappeared or landed on their base."""
        previous = repo.refs.get(ref)
        if sha is None:
            repo.refs.pop(ref, None)
        else:
            repo.refs[ref] = sha
        for pull in repo.pulls.values():
            if pull.state != "open":
                continue
            head = repo.refs.get(f"refs/heads/{pull.head_ref}")
            base = repo.refs.get(f"refs/heads/{pull.base_ref}")
            if head is None or head == base:
                # a deleted head branch: the pull request keeps the commit the branch last pointed at, as
                # GitHub's does (else listing its commits would find no head)
                gone = previous if ref == f"refs/heads/{pull.head_ref}" else None
                self.close_pull(repo, pull.number, head_sha=head or gone or pull.frozen_head_sha)

    def commit_to_branch(self, repo: Repo, branch: str, files: dict[str, bytes | None], message: str,
                         author: GitIdentity, committer: GitIdentity | None = None) -> str:
        parent = repo.refs[f"refs/heads/{branch}"]
        tree = dict(repo.commits[parent].tree)
        for path, content in files.items():
            if content is None:
                tree.pop(path, None)
            else:
                tree[path] = content
        sha = self.make_commit(repo, tree, [parent], message, author, committer or author)
        self.set_ref(repo, f"refs/heads/{branch}", sha)
        return sha

    # --- pulls -------------------------------------------------------------------------------
    def head_sha(self, repo: Repo, pull: Pull) -> str:
        if pull.state == "open" or pull.frozen_head_sha is None:
            return repo.refs.get(f"refs/heads/{pull.head_ref}") or pull.frozen_head_sha or ""
        return pull.frozen_head_sha

    def base_sha(self, repo: Repo, pull: Pull) -> str:
        if pull.state == "open" or pull.frozen_base_sha is None:
            return repo.refs.get(f"refs/heads/{pull.base_ref}") or pull.frozen_base_sha or ""
        return pull.frozen_base_sha

    def merge_pull(self, repo: Repo, number: int, who: GitIdentity) -> str:
        """Merge commit on the base (parents: base, head; the head's tree, as a conflict-free merge gives)."""
        pull = repo.pulls[number]
        base_ref, head_ref = f"refs/heads/{pull.base_ref}", f"refs/heads/{pull.head_ref}"
        head = repo.refs[head_ref]
        sha = self.make_commit(repo, repo.commits[head].tree, [repo.refs[base_ref], head],
                               f"Merge pull request #{number}", who, who)
        pull.frozen_head_sha = head
        repo.refs[base_ref] = sha
        pull.frozen_base_sha = sha
        pull.state = "closed"
        pull.closed_at = pull.merged_at = pull.updated_at = self.now()
        return sha

    def close_pull(self, repo: Repo, number: int, *, head_sha: str | None = None) -> None:
        pull = repo.pulls[number]
        pull.frozen_head_sha = head_sha or repo.refs.get(f"refs/heads/{pull.head_ref}") or pull.frozen_head_sha
        pull.frozen_base_sha = repo.refs.get(f"refs/heads/{pull.base_ref}")
        pull.state = "closed"
        pull.closed_at = pull.updated_at = self.now()


def _bytes(content: str | bytes) -> bytes:
    return content.encode("utf-8") if isinstance(content, str) else content
