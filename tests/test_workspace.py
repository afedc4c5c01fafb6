"""Run workspaces: one folder per database and exact run id, always inside the workspace root, old folders adopted
once."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from autopack.db.engine import session_scope
from autopack.db.handle import database_at
from autopack.db.models import Phase, Run
from autopack.errors import InputError
from autopack.execution import leases
from autopack.execution.phase_runner import execute_phase
from autopack.execution.workspace import (
    MAX_CONTEXT_FILE_CHARS,
    MAX_SLUG_CHARS,
    read_bounded,
    read_context,
    run_workspace,
    workspace_folder,
    workspace_root,
    write_files,
)
from autopack.llm.simulated import SimulatedProvider

AWKWARD_IDS = ["..", ".", "a/b", "../../etc", "/abs", "C:\\x", "col:1", "col_1", "col 1", "héllo-wörld", "日本語",
               "x" * 5000, "", " ", ".hidden", "a\x00b", "\udcff", "run-a"]


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AUTOPACK_WORKSPACE_DIR", str(tmp_path / "ws"))
    return workspace_root()


@pytest.mark.parametrize("run_id", AWKWARD_IDS)
def test_every_run_id_gets_a_plain_folder_directly_under_the_root(root: Path, run_id: str) -> None:
    folder = run_workspace(run_id)
    assert folder.parent == root and folder.is_dir() and folder.resolve() == folder
    assert folder.name not in (".", "..") and not folder.name.startswith(".")
    assert len(folder.name) <= MAX_SLUG_CHARS + 1 + 16
    write_files(folder, {"pkg/a.py": "X = 1\n"})
    assert (folder / "pkg" / "a.py").is_file()


def test_distinct_run_ids_never_share_a_folder(root: Path) -> None:
    names = {workspace_folder(run_id) for run_id in AWKWARD_IDS}
    assert len(names) == len(AWKWARD_IDS)
    assert workspace_folder("col:1") != workspace_folder("col_1")
    assert workspace_folder("col:1").startswith("col_1-")  # still readable


def test_the_folder_name_is_stable() -> None:
    """Pinned: a change here would orphan every existing workspace."""
    assert workspace_folder("telemetry-collection-v4") == "telemetry-collection-v4-ae5dc38037c44a7b"
    assert workspace_folder("col:1") == "col_1-1822ba4225440549"
    assert workspace_folder("..") == "run-5ec1f7e700f37c3d"


def test_dot_dot_never_touches_the_parent_of_the_root(root: Path) -> None:
    root.mkdir(parents=True)
    sentinel = root.parent / "keep.txt"
    sentinel.write_text("mine")
    before = sorted(p.name for p in root.parent.iterdir())
    folder = run_workspace("..")
    write_files(folder, {"keep.txt": "overwritten?"})
    assert sentinel.read_text() == "mine" and folder.parent == root
    assert sorted(p.name for p in root.parent.iterdir()) == before


def test_an_old_folder_named_after_a_plain_run_id_is_moved_once(root: Path) -> None:
    (root / "run-a" / "pkg").mkdir(parents=True)
    (root / "run-a" / "pkg" / "a.py").write_text("OLD = 1\n")
    folder = run_workspace("run-a")
    assert folder.name == workspace_folder("run-a") and (folder / "pkg" / "a.py").read_text() == "OLD = 1\n"
    assert not (root / "run-a").exists()
    assert run_workspace("run-a") == folder  # second call: nothing left to move


def test_an_old_folder_a_renamed_id_shared_is_left_alone(root: Path) -> None:
    (root / "col_1").mkdir(parents=True)
    (root / "col_1" / "a.py").write_text("SHARED = 1\n")
    folder = run_workspace("col:1")
    assert not (folder / "a.py").exists() and (root / "col_1" / "a.py").exists()


def test_an_old_folder_that_is_a_symlink_is_not_followed(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir(parents=True)
    (root / "run-a").symlink_to(outside)
    folder = run_workspace("run-a")
    assert folder.parent == root and not folder.is_symlink() and outside.is_dir()


def _drain_single_phase(url: str, run_id: str) -> Path:
    with session_scope(url) as session:
        session.add(Run(id=run_id, state="RUN_CREATED"))
        session.add(Phase(run_id=run_id, phase_id="p", description="Write helpers.", task_category="implementation",
                          complexity="low", scope={"deliverables": ["pkg/a.py"]}))
    with session_scope(url) as session:
        claim = leases.claim_phase(session, run_id, "p", "w1")
    assert claim is not None
    result = execute_phase(run_id, "p", claim=claim, db=database_at(url), provider=SimulatedProvider(seed=1), telemetry=False)
    assert result.success, result.error_message
    return run_workspace(run_id, db_id=database_at(url).stored_id(), create=False) / "pkg" / "a.py"


def test_drained_runs_col_1_and_col_colon_1_write_to_two_folders(db_url: str, root: Path) -> None:
    first, second = _drain_single_phase(db_url, "col:1"), _drain_single_phase(db_url, "col_1")
    assert first != second and first.is_file() and second.is_file()
    assert "col:1/p" in first.read_text() and "col_1/p" in second.read_text()


def test_a_legacy_run_named_dot_dot_drains_inside_the_root(db_url: str, root: Path) -> None:
    written = _drain_single_phase(db_url, "..")
    assert written.is_file() and root in written.parents
    assert not (root.parent / "pkg").exists()
    with session_scope(db_url) as session:
        assert session.execute(sa.select(Phase.state).where(Phase.run_id == "..")).scalar_one() == "COMPLETE"


# --- what a check command may leave in the workspace -------------------------------------------------------------


def _execute(url: str, run_id: str) -> Any:
    with session_scope(url) as session:
        claim = leases.claim_phase(session, run_id, "p", "w1")
    assert claim is not None
    return execute_phase(run_id, "p", claim=claim, db=database_at(url), provider=SimulatedProvider(seed=1),
                         telemetry=False)


def _phase(url: str, run_id: str, **scope: Any) -> None:
    with session_scope(url) as session:
        session.add(Run(id=run_id, state="RUN_CREATED"))
        session.add(Phase(run_id=run_id, phase_id="p", description="Write docs.", task_category="docs",
                          complexity="low", scope={"deliverables": ["b.md"], **scope}))


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_deliverable_left_as_a_fifo_or_a_directory_fails_the_phase_before_any_call(
        db_url: str, root: Path, kind: str) -> None:
    """Before: a FIFO blocked the drain forever, a directory failed with a traceback after the tokens were spent."""
    _phase(db_url, f"left-{kind}")
    target = run_workspace(f"left-{kind}") / "b.md"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    result = _execute(db_url, f"left-{kind}")
    assert not result.success and result.failure_stage == "before_llm"
    shown = "a FIFO" if kind == "fifo" else "a directory"
    assert result.error_message == f"'b.md' exists in the run workspace as {shown}, not a regular file (remove it " \
                                   "from the workspace (a check command may have left it))"


def test_writing_refuses_a_fifo_without_blocking(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    os.mkfifo(root / "x.md")
    with pytest.raises(InputError, match="'x.md' exists in the run workspace as a FIFO"):
        write_files(root, {"x.md": "text", "y.md": "text"})
    assert not (root / "y.md").exists()  # nothing written when one path is refused


def test_a_huge_sparse_context_file_is_read_only_as_far_as_it_is_used(db_url: str, root: Path) -> None:
    """Before: read whole (a 3 GB sparse file: 6 GB of memory) and then cut to 20,000 characters."""
    _phase(db_url, "sparse", read_only_context=["big.md"])
    big = run_workspace("sparse") / "big.md"
    with big.open("wb") as handle:
        handle.truncate(64 * 1024**3)  # 64 GiB apparent, no disk
    loaded, omitted = read_context(run_workspace("sparse"), ["big.md"], max_files=5)
    assert omitted == [] and loaded[0].truncated and len(loaded[0].text or "") == MAX_CONTEXT_FILE_CHARS
    assert read_bounded(big, 1000) == ("\x00" * 1000, True)


def test_a_run_workspace_and_the_parents_it_creates_are_private(root: Path) -> None:
    """A check's files are the worker's outside the sandbox: no other user may reach them."""
    folder = run_workspace("private")
    assert [stat.S_IMODE(p.stat().st_mode) for p in (folder, root)] == [0o700, 0o700]
    folder.chmod(0o777)  # as an older version or a check left it
    assert stat.S_IMODE(run_workspace("private").stat().st_mode) == 0o700


# --- one folder per database -------------------------------------------------------------------------------

DB_A, DB_B = "a" * 32, "b" * 32


def test_one_run_id_in_two_databases_gets_two_folders(root: Path) -> None:
    first, second = run_workspace("run-a", db_id=DB_A), run_workspace("run-a", db_id=DB_B)
    assert first == root / DB_A / workspace_folder("run-a") and second == root / DB_B / workspace_folder("run-a")
    assert stat.S_IMODE((root / DB_A).stat().st_mode) == 0o700


def test_a_recreated_database_drains_into_empty_workspaces(db_url: str, root: Path, tmp_path: Path) -> None:
    """A deleted and recreated database (the quickstart run twice) must not see its predecessor's files: they
    changed the estimator's file statistics, and so the second calibration."""
    from autopack.db.migrate import upgrade_database

    first = _drain_single_phase(db_url, "run-a")
    other = f"sqlite:///{tmp_path / 'recreated.db'}"
    upgrade_database(database_at(other))
    second = _drain_single_phase(other, "run-a")
    assert first.is_file() and second.is_file() and first.parent.parent.parent != second.parent.parent.parent
    assert {p.name for p in root.iterdir()} == {database_at(db_url).stored_id(), database_at(other).stored_id()}


def test_a_folder_of_the_previous_naming_is_moved_under_its_database_once(root: Path) -> None:
    (root / workspace_folder("run-a") / "pkg").mkdir(parents=True)
    (root / workspace_folder("run-a") / "pkg" / "a.py").write_text("OLD = 1\n")
    folder = run_workspace("run-a", db_id=DB_A)
    assert (folder / "pkg" / "a.py").read_text() == "OLD = 1\n" and not (root / workspace_folder("run-a")).exists()
    assert not (run_workspace("run-a", db_id=DB_B) / "pkg").exists()  # the other database does not get it


def test_another_databases_folder_is_never_adopted(root: Path) -> None:
    """A run whose id is 32 hex digits must not take a database's folder as its own old one."""
    (root / DB_B / "x").mkdir(parents=True)
    folder = run_workspace(DB_B, db_id=DB_A)
    assert (root / DB_B / "x").is_dir() and not (folder / "x").exists()


def test_a_database_id_that_is_not_hex_is_refused(root: Path) -> None:
    with pytest.raises(InputError, match="is not 32 hex digits"):
        run_workspace("run-a", db_id="../../etc")
