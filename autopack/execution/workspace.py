"""The per-run workspace: where a phase's deliverables are written and its context files are read.

``settings.workspace_dir/<database id>/<slug>-<hash>/`` (``workspace_folder``): a run's files belong to the
database that holds the run, so two databases sharing one workspace directory (a deleted and recreated
``autopack.db``, staging beside production) never read each other's files, and a fresh database starts from
empty workspaces (its calibration does not depend on what an earlier one left). Every path a phase names is resolved
inside it, and a path that would escape (absolute, ``..``, a symlink pointing out) is refused. File
statistics for the estimator are collected here, outside the estimator, so the estimator stays a pure
function (reference §10.15).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from autopack.config import Settings, get_settings
from autopack.errors import InputError
from autopack.logging import get_logger
from autopack.token_estimator import FileStats, deliverable_path

log = get_logger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_CONTEXT_FILE_CHARS = 20_000
#: At most this much of a workspace file is read (the estimator's file statistics; context, cut further to
#: ``MAX_CONTEXT_FILE_CHARS``): a check command can leave a sparse file of any apparent size.
MAX_READ_BYTES = 4 * 1024 * 1024
#: A context directory contributes at most this many entries to look at (a check can leave millions).
MAX_CONTEXT_ENTRIES = 10_000
#: Readable part of a workspace folder name (the hash, not the slug, makes it unique).
MAX_SLUG_CHARS = 40
#: Hex digits of sha256(run id) in the folder name: 64 bits, so distinct run ids never share a folder.
HASH_CHARS = 16


def workspace_folder(run_id: str) -> str:
    """The folder name of ``run_id``'s workspace: a readable slug, ``-``, 16 hex digits of its sha256.

    The hash is of the exact run id, so ``col:1`` and ``col_1`` (one slug) get two folders; the slug only
    helps a person find the folder. The name never is ``.``/``..``, never starts with a dot, never holds a
    separator and stays short whatever the id's length or alphabet (unicode, control characters).
    """
    slug = _UNSAFE.sub("_", run_id).strip("._-")[:MAX_SLUG_CHARS].rstrip("._-") or "run"
    digest = hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    return f"{slug}-{digest}"


def workspace_root(settings: Settings | None = None) -> Path:
    """The absolute directory that holds every run's workspace."""
    base = (settings or get_settings()).workspace_dir
    return (base if base.is_absolute() else Path.cwd() / base).resolve()


#: A database id as ``db upgrade`` writes it (32 hex digits), the name of that database's workspace folder.
_DB_ID = re.compile(r"[0-9a-f]{32}")


def database_workspaces(db_id: str | None, settings: Settings | None = None) -> Path:
    """The directory holding the workspaces of the runs of the database ``db_id`` (the root itself for None:
    a database without an id, which only ``db upgrade`` ever sees)."""
    root = workspace_root(settings)
    if db_id is None:
        return root
    if not _DB_ID.fullmatch(db_id):
        raise InputError(f"database id {db_id!r} is not 32 hex digits: cannot name its workspace folder")
    return root / db_id


def run_workspace(
    run_id: str, settings: Settings | None = None, *, db_id: str | None = None, create: bool = True
) -> Path:
    """Absolute directory of ``run_id``'s workspace in database ``db_id``, always a direct child of that
    database's folder (``database_workspaces``; created on first use).

    Created private (0700), with any missing parent, and kept so: a check command's files are the worker's
    (root's, on a root worker) outside the sandbox, and no other user may reach them."""
    home = database_workspaces(db_id, settings)
    target = home / workspace_folder(run_id)
    if target.parent != home:  # cannot happen with the encoding above; a guard against a future edit
        raise InputError(f"workspace of run {run_id!r} would leave {home}")
    if not target.exists():
        _adopt_legacy_folder(workspace_root(settings), run_id, target)
    if create:
        _make_private_dirs(target)
        if stat.S_IMODE(target.stat().st_mode) != 0o700:
            target.chmod(0o700)  # a folder made by an older version, or opened by a check
    return target


def _make_private_dirs(path: Path) -> None:
    """Create ``path`` and whichever of its parents are missing, each private (0700)."""
    for missing in reversed([p for p in (path, *path.parents) if not p.exists()]):
        missing.mkdir(mode=0o700, exist_ok=True)


def _adopt_legacy_folder(root: Path, run_id: str, target: Path) -> None:
    """One-time move of a workspace from an older naming to ``target``: ``<slug>-<hash>`` directly under the
    root (before workspaces were kept per database), else the run id itself (before that).

    The first is this run's by its hash: an upgrade keeps the files of a run in progress (only the database
    that first drains the run after the upgrade takes them). The second only when the old folder certainly
    belongs to this run: the run id was already a plain name (letters, digits, ``._-``; not ``.``/``..``). A
    run id the old scheme altered (``col:1`` → ``col_1``) shared its folder with other ids, so that folder is
    left alone (README, upgrade notes). Either must be a real directory directly under the root.
    """
    candidates = [root / workspace_folder(run_id)] if target.parent != root else []
    if run_id not in (".", "..") and run_id and not _UNSAFE.search(run_id) and len(run_id) <= 255:
        candidates.append(root / run_id)
    for legacy in candidates:
        if legacy == target or _DB_ID.fullmatch(legacy.name):
            continue  # never another database's folder
        try:
            if legacy.is_symlink() or not legacy.is_dir():
                continue
            _make_private_dirs(target.parent)
            os.rename(legacy, target)
        except OSError as exc:  # another process adopted it first, or the target appeared meanwhile
            if not target.exists():
                log.warning("could not move the old workspace %s to %s: %s", legacy, target, exc)
            return
        log.info("moved the workspace of run %s from %s to %s (one folder per database)", run_id, legacy, target)
        return


def workspace_relative(path: str) -> str:
    """``path`` normalised (``/`` separators, no leading ``./``) if it names a place inside a run workspace.

    The one lexical rule, checked when a run is created (API, CLI) and again by the drain (``confined``):
    relative, no ``..`` segment, no home (``~``) or drive (``C:``) prefix, no NUL. Else ``InputError``.
    """
    _no_nul("path", path)
    cleaned = path.strip().replace("\\", "/")
    while cleaned.startswith("./"):
        cleaned = cleaned[2:]
    if not cleaned:
        raise InputError(f"path '{path}' is empty")
    if cleaned.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", cleaned):
        raise InputError(f"path '{path}' must be relative to the run workspace")
    if ".." in cleaned.split("/"):
        raise InputError(f"path '{path}' escapes the run workspace")
    return cleaned


def _no_nul(what: str, text: str) -> None:
    """No path holds a NUL byte (no file system stores one); the message shows it as ``\\x00``."""
    if "\x00" in text:
        shown = text.replace("\x00", "\\x00")
        raise InputError(f"{what} '{shown}' holds a NUL byte")


def deliverable_workspace_path(deliverable: str) -> str:
    """The workspace path a deliverable (``"create src/x.py (tests)"``) makes the drain write, or ``InputError``.

    A NUL anywhere in the text is refused: the path is picked out of the text, and would otherwise be taken
    from one side of the NUL (``"do\\x00cs/a.md"`` named ``cs/a.md``).
    """
    _no_nul("deliverable", deliverable)
    named = deliverable_path(deliverable)
    try:
        return workspace_relative(named)
    except InputError as exc:
        if named.strip() == deliverable.strip():
            raise
        raise InputError(f"deliverable '{deliverable}': {exc.message}") from exc


def confined(root: Path, relative: str) -> Path:
    """``root/relative`` if it stays inside ``root`` (after resolving symlinks); else ``InputError``."""
    cleaned = workspace_relative(relative)
    target = (root / cleaned).resolve()
    root_resolved = root.resolve()
    if target != root_resolved and root_resolved not in target.parents:
        raise InputError(f"path '{relative}' escapes the run workspace")
    return target


def file_stats(text: str) -> FileStats:
    """The estimator's file-complexity inputs: code lines, import lines, deepest indentation."""
    lines = [line for line in text.splitlines() if line.strip()]
    loc = sum(1 for line in lines if not line.lstrip().startswith("#"))
    imports = sum(1 for line in lines if "import " in line)
    indent = max((len(line) - len(line.lstrip(" \t")) for line in lines), default=0)
    return FileStats(loc=loc, import_lines=imports, max_indent=indent)


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISLNK, "a symbolic link"))


def not_a_file(target: Path) -> str | None:
    """What ``target`` is if it exists and is not a regular file ("a directory", "a FIFO", …), else None.

    A check command may leave anything at a deliverable's path; writing into a FIFO would block the drain, and
    a directory would fail the write after the tokens are spent."""
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return None
    return next((kind for test, kind in _KINDS if test(mode)), None if stat.S_ISREG(mode) else "not a file")


def _refuse_non_file(path: str, target: Path) -> None:
    kind = not_a_file(target)
    if kind is not None:
        raise InputError(f"'{path}' exists in the run workspace as {kind}, not a regular file",
                         hint="remove it from the workspace (a check command may have left it)")


def read_bounded(target: Path, max_bytes: int = MAX_READ_BYTES) -> tuple[str, bool]:
    """The first ``max_bytes`` of a regular file as text, and whether there was more. Never follows a symbolic
    link, never blocks on a FIFO, never reads a sparse file's gigabytes."""
    fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{target.name} is not a regular file")
        data = handle.read(max_bytes + 1)
    return data[:max_bytes].decode("utf-8", errors="replace"), len(data) > max_bytes


def collect_file_stats(root: Path, paths: Iterable[str]) -> dict[str, FileStats]:
    """Stats of the deliverables that already exist (absent ones are new files); one that exists as anything
    but a regular file is refused (``InputError``), before any token is spent on it."""
    stats: dict[str, FileStats] = {}
    for path in paths:
        target = confined(root, path)
        _refuse_non_file(path, target)
        if target.is_file():
            stats[path] = file_stats(read_bounded(target)[0])
    return stats


@dataclass(frozen=True)
class ContextFile:
    path: str
    text: str | None  # None: not found in the workspace
    truncated: bool = False


def read_context(root: Path, paths: Iterable[str], *, max_files: int, max_chars: int = MAX_CONTEXT_FILE_CHARS
                 ) -> tuple[list[ContextFile], list[str]]:
    """Read-only context files (a directory contributes its files); returns (loaded, omitted paths)."""
    expanded: list[str] = []
    for path in paths:
        target = confined(root, path)
        if target.is_dir():
            found = itertools.islice(target.rglob("*"), MAX_CONTEXT_ENTRIES)
            expanded += sorted(p.relative_to(root).as_posix() for p in found if p.is_file())
        else:
            expanded.append(path)
    seen: list[str] = []
    for path in expanded:
        if path not in seen:
            seen.append(path)
    loaded: list[ContextFile] = []
    for path in seen[:max_files]:
        target = confined(root, path)
        if not target.is_file():
            loaded.append(ContextFile(path, None))
            continue
        text, more = read_bounded(target, 4 * max_chars)  # ≤ 4 bytes a character
        loaded.append(ContextFile(path, text[:max_chars], truncated=more or len(text) > max_chars))
    return loaded, seen[max_files:]


def write_files(root: Path, files: Mapping[str, str]) -> list[Path]:
    """Write every file (paths confined to the workspace); returns the written paths. A path that exists as
    anything but a regular file is refused (``InputError``) before any is written."""
    targets = {path: confined(root, path) for path in files}  # validate all before writing any
    for path, target in targets.items():
        _refuse_non_file(path, target)
    written: list[Path] = []
    for path, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(files[path])
        written.append(target)
    return written
