"""The per-run workspace: where a phase's deliverables are written and its context files are read.

``settings.workspace_dir/<run_id>/``. Every path a phase names is resolved inside it, and a path that
would escape (absolute, ``..``, a symlink pointing out) is refused. File statistics for the estimator are
collected here, outside the estimator, so the estimator stays a pure function (reference §10.15).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from autopack.config import Settings, get_settings
from autopack.errors import InputError
from autopack.token_estimator import FileStats, deliverable_path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_CONTEXT_FILE_CHARS = 20_000


def run_workspace(run_id: str, settings: Settings | None = None, *, create: bool = True) -> Path:
    """Absolute directory of ``run_id``'s workspace (created on first use)."""
    base = (settings or get_settings()).workspace_dir
    root = (base if base.is_absolute() else Path.cwd() / base).resolve() / (_UNSAFE.sub("_", run_id) or "_")
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return root


def workspace_relative(path: str) -> str:
    """``path`` normalised (``/`` separators, no leading ``./``) if it names a place inside a run workspace.

    The one lexical rule, checked when a run is created (API, CLI) and again by the drain (``confined``):
    relative, no ``..`` segment, no home (``~``) or drive (``C:``) prefix, no NUL. Else ``InputError``.
    """
    cleaned = path.strip().replace("\\", "/")
    while cleaned.startswith("./"):
        cleaned = cleaned[2:]
    if not cleaned or "\x00" in cleaned:
        raise InputError(f"path '{path}' is empty or holds a NUL byte")
    if cleaned.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", cleaned):
        raise InputError(f"path '{path}' must be relative to the run workspace")
    if ".." in cleaned.split("/"):
        raise InputError(f"path '{path}' escapes the run workspace")
    return cleaned


def deliverable_workspace_path(deliverable: str) -> str:
    """The workspace path a deliverable (``"create src/x.py (tests)"``) makes the drain write, or ``InputError``."""
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


def collect_file_stats(root: Path, paths: Iterable[str]) -> dict[str, FileStats]:
    """Stats of the deliverables that already exist (absent ones are new files)."""
    stats: dict[str, FileStats] = {}
    for path in paths:
        target = confined(root, path)
        if target.is_file():
            stats[path] = file_stats(target.read_text(encoding="utf-8", errors="replace"))
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
            expanded += sorted(p.relative_to(root).as_posix() for p in target.rglob("*") if p.is_file())
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
        text = target.read_text(encoding="utf-8", errors="replace")
        loaded.append(ContextFile(path, text[:max_chars], truncated=len(text) > max_chars))
    return loaded, seen[max_files:]


def write_files(root: Path, files: Mapping[str, str]) -> list[Path]:
    """Write every file (paths confined to the workspace); returns the written paths."""
    targets = {path: confined(root, path) for path in files}  # validate all before writing any
    written: list[Path] = []
    for path, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(files[path], encoding="utf-8")
        written.append(target)
    return written
