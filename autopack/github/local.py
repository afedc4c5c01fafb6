"""Dry run without GitHub: write the bot branch into a local checkout with git plumbing only.

The commit is built from objects (``hash-object`` → a temporary index → ``write-tree`` → ``commit-tree``)
and the branch moved with ``update-ref``, so the user's working tree, index and current branch are never
touched, even when they hold uncommitted work. The PR body goes to a file next to the calibration output.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path, PurePath

from autopack.calibration.result import CalibrationResult
from autopack.github.errors import LocalPublishError, StaleBaseError
from autopack.github.proposal import BOT_BRANCH, ESTIMATOR_PATH
from autopack.github.result import DEFAULT_IDENTITY, BotIdentity, PublishResult, commit_message, is_bot_commit

#: The latest PR body: a copy (not a symlink: it survives zips, artifacts and Windows checkouts) of the newest
#: run's own ``pull_request_body_<stamp>.md``, which every reader of a run's result uses instead.
BODY_FILE = "pull_request_body.md"
_REPORT_PREFIX = "token_estimator_calibration_"
_ZERO = "0" * 40


def body_file_name(calibration: CalibrationResult | None) -> str:
    """``pull_request_body_<stamp>.md``, with the calibration's own stamp (its report's), so they pair up.

    The stamp comes from the report or JSON file name (``token_estimator_calibration_<stamp>``), else from
    ``metadata.generated_at``, else from the clock (a calibration that was never written to files, or none).
    """
    if calibration is None:
        return f"pull_request_body_{datetime.now(UTC):%Y%m%d_%H%M%S}.md"
    for value in (calibration.report_path, calibration.json_path):
        stem = PurePath(value).stem if value else ""
        if stem.startswith(_REPORT_PREFIX) and len(stem) > len(_REPORT_PREFIX):
            return f"pull_request_body_{stem[len(_REPORT_PREFIX):]}.md"
    generated = calibration.metadata.generated_at
    when = datetime.now(UTC)
    if generated:
        try:
            when = datetime.fromisoformat(generated.replace("Z", "+00:00"))
        except ValueError:
            pass
    return f"pull_request_body_{when:%Y%m%d_%H%M%S}.md"


def write_body(output_dir: Path, body: str, name: str) -> Path:
    """Write the run's own body file, then copy it to ``BODY_FILE`` (the latest); returns the run's own file.

    Both writes go through a temporary file and a rename, so a reader never sees half a body.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    own = out / name
    for path in (own, out / BODY_FILE) if name != BODY_FILE else (own,):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(body, encoding="utf-8")
        os.replace(tmp, path)
    return own


def publish_local(
    target_repo: Path,
    edited_source: str,
    body: str,
    *,
    output_dir: Path,
    title: str,
    proposal: str,
    base: str | None = None,
    original_source: str | None = None,
    estimator_path: str = ESTIMATOR_PATH,
    branch: str = BOT_BRANCH,
    identity: BotIdentity = DEFAULT_IDENTITY,
    body_name: str | None = None,
) -> PublishResult:
    """Create/update ``branch`` in ``target_repo`` with one commit on ``base`` (default HEAD) changing the estimator.

    Writes ``body`` to ``output_dir/body_name`` (default: stamped now) and its copy ``pull_request_body.md``
    (``write_body``); the result's ``body_path`` is the run's own file. A branch holding commits that are not the bot's
    is left alone (status ``left_alone_human_commits``); otherwise it is re-pointed at a fresh commit on the
    base, as the remote publisher does. ``original_source``, when given, must equal the base's file
    (``StaleBaseError`` otherwise). Never changes the working tree, the index or HEAD.
    """
    repo = Path(target_repo)
    git = _Git(repo)
    top = git.run("rev-parse", "--show-toplevel", check=False).strip()
    if not top or Path(top).resolve() != repo.resolve():
        raise LocalPublishError(f"{repo} is not a git checkout (its top directory)",
                                hint="dry runs write a local branch with git")
    base_ref = base or "HEAD"
    base_sha = git.sha(f"{base_ref}^{{commit}}")
    if base_sha is None:
        raise LocalPublishError(f"base {base_ref!r} is not a commit in {repo}")
    base_name = base or git.run("symbolic-ref", "--quiet", "--short", "HEAD", check=False).strip() or base_sha[:12]
    current = git.run("symbolic-ref", "--quiet", "HEAD", check=False).strip()
    if current == f"refs/heads/{branch}":
        raise LocalPublishError(
            f"the checkout is on {branch}; a dry run never moves the current branch",
            hint="switch to another branch first",
        )
    if original_source is not None:
        at_base = git.run_bytes("cat-file", "blob", f"{base_sha}:{estimator_path}", check=False)
        if at_base.decode("utf-8", errors="replace") != original_source:
            raise StaleBaseError(
                f"{estimator_path} at {base_name} is not the file the proposal was computed against",
                hint="commit or discard local changes to the estimator, or pass the right base",
            )

    old_sha = git.sha(f"refs/heads/{branch}")
    if old_sha is not None:
        foreign = _foreign_commits(git, base_sha, old_sha, identity)
        if foreign:
            return PublishResult(
                status="left_alone_human_commits", branch=branch, base=base_name, commit_sha=old_sha,
                proposal=proposal,
                summary=f"left alone: local branch {branch} has commits that are not the bot's "
                        f"({', '.join(foreign[:5])}); nothing written",
            )

    commit = _commit(git, base_sha, edited_source, estimator_path, commit_message(title, proposal), identity)
    if old_sha is not None and _same_change(git, old_sha, commit, base_sha):
        commit = old_sha  # the branch already proposes exactly this: keep it (idempotent re-run)
    else:
        git.run("update-ref", "-m", "autopack: calibration proposal (dry run)", f"refs/heads/{branch}", commit,
                old_sha or _ZERO)

    body_path = write_body(Path(output_dir), body, body_name or body_file_name(None))
    return PublishResult(
        status="dry_run", branch=branch, base=base_name, commit_sha=commit, proposal=proposal, body_path=body_path,
        summary=f"dry run: would open PR {title!r} from {branch} ({commit[:12]}) into {base_name}; "
                f"body: {body_path}",
    )


class _Git:
    def __init__(self, repo: Path) -> None:
        self.repo = repo

    def run_bytes(self, *args: str, check: bool = True, input: bytes | None = None,
                  env: dict[str, str] | None = None) -> bytes:
        done = subprocess.run(
            ["git", "-C", str(self.repo), *args], input=input, capture_output=True, check=False,
            env={**os.environ, **(env or {})},
        )
        if done.returncode != 0:
            if check:
                raise LocalPublishError(
                    f"git {args[0]} failed in {self.repo}: {done.stderr.decode(errors='replace').strip()}"
                )
            return b""
        return done.stdout

    def run(self, *args: str, check: bool = True, input: bytes | None = None,
            env: dict[str, str] | None = None) -> str:
        return self.run_bytes(*args, check=check, input=input, env=env).decode("utf-8", errors="replace")

    def sha(self, rev: str) -> str | None:
        return self.run("rev-parse", "--verify", "--quiet", rev, check=False).strip() or None


def _commit(git: _Git, base_sha: str, source: str, path: str, message: str, identity: BotIdentity) -> str:
    blob = git.run("hash-object", "-w", "--path", path, "--stdin", input=source.encode("utf-8")).strip()
    listed = git.run("ls-tree", base_sha, "--", path).split()
    mode = listed[0] if listed else "100644"
    who = {
        "GIT_AUTHOR_NAME": identity.name, "GIT_AUTHOR_EMAIL": identity.email,
        "GIT_COMMITTER_NAME": identity.name, "GIT_COMMITTER_EMAIL": identity.email,
    }
    with tempfile.TemporaryDirectory(prefix="autopack-index-") as tmp:
        index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git.run("read-tree", base_sha, env=index)
        git.run("update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}", env=index)
        tree = git.run("write-tree", env=index).strip()
    return git.run("commit-tree", tree, "-p", base_sha, "-F", "-", input=message.encode("utf-8"), env=who).strip()


def _same_change(git: _Git, old: str, new: str, base_sha: str) -> bool:
    """The old branch tip is already one commit on this base with the same tree and message."""
    def parts(sha: str) -> tuple[str, list[str], str]:
        tree = git.run("rev-parse", f"{sha}^{{tree}}").strip()
        parents = git.run("rev-list", "--parents", "-n", "1", sha).split()[1:]
        return tree, parents, git.run("log", "-1", "--format=%B", sha).strip()

    old_parts, new_parts = parts(old), parts(new)
    return old_parts == new_parts and new_parts[1] == [base_sha]


def _foreign_commits(git: _Git, base_sha: str, tip: str, identity: BotIdentity) -> list[str]:
    out = git.run("log", "--format=%H%x1f%an%x1f%ae%x1f%ce%x1f%B%x1e", f"{base_sha}..{tip}")
    foreign = []
    for record in filter(None, (r.strip("\n") for r in out.split("\x1e"))):
        sha, name, author_email, committer_email, message = record.split("\x1f", 4)
        if not is_bot_commit(author_email, committer_email, message, identity):
            foreign.append(f"{sha[:12]} ({name})")
    return foreign


def base_commit(target_repo: Path, base: str | None = None) -> str | None:
    """The commit sha the proposal is based on (``base``, default HEAD), or None outside a git checkout."""
    return _Git(Path(target_repo)).sha(f"{base or 'HEAD'}^{{commit}}")
