"""``db upgrade`` is atomic and exclusive: interrupted anywhere, run twice at once, or fed a damaged file, it
leaves every row in the live tables or the database exactly as it was — and the next upgrade succeeds.

Interruptions happen at named steps (``autopack.db.checkpoints``): the upgrade runs in a subprocess that
reports through a pipe when it has reached the step and then waits to be signalled, so each case
interrupts the same, observed state (no sleeps, no timing).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_migrations import LEGACY_SCHEMA

from autopack.db.engine import dispose_engines, get_engine
from autopack.db.handle import database_at
from autopack.db.migrate import MIGRATIONS_DIR, head_revision, upgrade_database
from autopack.errors import DatabaseUrlError, DbIdentityMismatchError, RefusedError

AUTOPACK = str(Path(sys.executable).parent / "autopack")
DATA = Path(__file__).resolve().parents[1] / "data"
LEGACY_TABLES = ("runs", "tiers", "phases", "llm_usage_events", "token_estimation_v2_events", "decision_log")
#: The tables the first revision rebuilds (the others are kept untouched).
ADOPTED = ("runs", "phases", "llm_usage_events", "token_estimation_v2_events")
WAIT_SECONDS = 120


# --- a big legacy file, built from the real Azure traces ------------------------------------------------


def _azure_rows() -> list[tuple[str, int, int]]:
    rows: list[tuple[str, int, int]] = []
    for name in ("azure_llm_inference_2023_code.csv", "azure_llm_inference_2023_conv.csv"):
        with open(DATA / name, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                rows.append((row["TIMESTAMP"][:19], int(row["ContextTokens"]), int(row["GeneratedTokens"])))
    return rows


def build_legacy_file(path: Path, runs: int = 40, phases_per_run: int = 25) -> None:
    """An original-Autopack database: ~1,000 phases and ~28,000 usage and estimation rows each."""
    connection = sqlite3.connect(path)
    connection.executescript(LEGACY_SCHEMA)
    phase_keys = []
    for r in range(runs):
        run_id = f"legacy-run-{r:03d}"
        connection.execute("INSERT INTO runs VALUES (?, 'DONE_SUCCESS', 'normal', 5000000, ?, '2025-12-20 10:00:00', NULL)",
                           (run_id, r * 100))
        connection.execute("INSERT INTO tiers VALUES (?, 'T1', ?, 'Tier')", (r + 1, run_id))
        for p in range(phases_per_run):
            phase_keys.append((run_id, f"p{p:02d}"))
            connection.execute(
                "INSERT INTO phases VALUES (?, ?, ?, ?, ?, ?, 'goal', ?, 'IMPLEMENT_FEATURE', 'MEDIUM', NULL, "
                "'{\"deliverables\": [\"src/a.py\"]}', 5, 1, NULL)",
                (len(phase_keys), f"p{p:02d}", run_id, r + 1, p, f"P{p}", "COMPLETE" if p % 3 else "FAILED"),
            )
    usage, estimation = [], []
    for i, (stamp, context, generated) in enumerate(_azure_rows()):
        run_id, phase_id = phase_keys[i % len(phase_keys)]
        usage.append((i + 1, "anthropic", "claude", run_id, phase_id, "builder", context, generated, stamp, False))
        estimation.append((i + 1, run_id, phase_id, stamp, "IMPLEMENT_FEATURE", "MEDIUM", 1, "[]", generated + 7,
                           generated, 8192, generated < 8192, generated >= 8192, stamp, False))
    connection.executemany("INSERT INTO llm_usage_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", usage)
    connection.executemany(
        "INSERT INTO token_estimation_v2_events (event_id, run_id, phase_id, timestamp, category, complexity, "
        "deliverable_count, deliverables_json, predicted_output_tokens, actual_output_tokens, selected_budget, success, "
        "truncated, created_at, is_truncated_output) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        estimation,
    )
    connection.execute("INSERT INTO decision_log VALUES (1, 'legacy-run-000', 'kept as is')")
    connection.commit()
    connection.close()


@pytest.fixture(scope="module")
def legacy_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("legacy") / "template.db"
    build_legacy_file(path)
    return path


@pytest.fixture
def legacy_file(legacy_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "autopack_legacy.db"
    shutil.copyfile(legacy_template, target)
    return target


# --- what "unchanged" and "every row kept" mean ----------------------------------------------------------


def legacy_columns(path: Path, table: str) -> list[str]:
    connection = sqlite3.connect(path)
    try:
        return [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
    finally:
        connection.close()


def snapshot(path: Path, tables: dict[str, list[str]] | None = None) -> dict[str, list[tuple]]:
    """Every row of every table (or of the given tables and columns), sorted: the database's contents."""
    connection = sqlite3.connect(path)
    try:
        if tables is None:
            names = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            tables = {name: ["*"] for name in names}
        return {
            name: sorted(connection.execute(f"SELECT {', '.join(columns)} FROM {name}").fetchall(), key=repr)
            for name, columns in sorted(tables.items())
        }
    finally:
        connection.close()


def assert_every_legacy_row_is_live(path: Path, pristine: Path) -> None:
    """Each original table's rows, in the original's columns, are in the live table of the same name."""
    columns = {table: legacy_columns(pristine, table) for table in LEGACY_TABLES}
    assert snapshot(path, columns) == snapshot(pristine, columns)
    connection = sqlite3.connect(path)
    try:
        names = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not {n for n in names if n.startswith("_legacy_")}
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
        assert len(connection.execute("SELECT db_id FROM db_meta").fetchall()) == 1
    finally:
        connection.close()


# --- an upgrade in a subprocess, stopped at a named step --------------------------------------------------


def _read_line(fd: int, timeout: float = WAIT_SECONDS) -> str:
    """One line from a pipe, or '' if the writer exited first (bounded wait, no polling)."""
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, "the upgrade never reached the step"
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


@contextmanager
def upgrade_process(url: str, pause_at: str | None = None, *, resume: bool = False, args: tuple[str, ...] = ()
                    ) -> Iterator[tuple[subprocess.Popen[str], int, int | None]]:
    """``autopack db upgrade`` that reports ``pause_at`` on a pipe; yields (process, ready fd, resume fd)."""
    ready_r, ready_w = os.pipe()
    resume_r, resume_w = os.pipe() if resume else (None, None)
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTOPACK_TEST_PAUSE")}
    env["DATABASE_URL"] = url
    env.pop("AUTOPACK_EXPECTED_DB_ID", None)
    fds = [ready_w]
    if pause_at:
        env["AUTOPACK_TEST_PAUSE_AT"] = pause_at
        env["AUTOPACK_TEST_PAUSE_READY"] = f"/dev/fd/{ready_w}"
    if resume_r is not None:
        env["AUTOPACK_TEST_PAUSE_RESUME"] = f"/dev/fd/{resume_r}"
        fds.append(resume_r)
    proc = subprocess.Popen([AUTOPACK, "db", "upgrade", *args], env=env, pass_fds=fds, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    os.close(ready_w)
    if resume_r is not None:
        os.close(resume_r)
    try:
        yield proc, ready_r, resume_w
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=WAIT_SECONDS)
        os.close(ready_r)
        if resume_w is not None:
            try:
                os.close(resume_w)
            except OSError:
                pass


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=WAIT_SECONDS)
    return proc.returncode, out, err


STEPS_BEFORE_COMMIT = ["locked", "backed_up", "copied", "dropped", "created", "inserted:runs", "migrated"]


@pytest.mark.parametrize("step", STEPS_BEFORE_COMMIT)
def test_sigint_before_the_commit_leaves_the_legacy_file_unchanged(legacy_file: Path, tmp_path: Path, step: str) -> None:
    pristine = tmp_path / "pristine.db"
    shutil.copyfile(legacy_file, pristine)
    url = f"sqlite:///{legacy_file}"
    with upgrade_process(url, step) as (proc, ready, _):
        assert _read_line(ready) == step
        proc.send_signal(signal.SIGINT)
        code, _, err = finish(proc)
    assert code == 130, err
    assert snapshot(legacy_file) == snapshot(pristine)

    report = upgrade_database(database_at(url))  # the next upgrade starts cleanly and adopts everything
    assert report.legacy and report.revision_after == head_revision()
    assert_every_legacy_row_is_live(legacy_file, pristine)


def test_sigkill_in_the_middle_of_the_copy_leaves_the_legacy_file_unchanged(legacy_file: Path, tmp_path: Path) -> None:
    pristine = tmp_path / "pristine.db"
    shutil.copyfile(legacy_file, pristine)
    url = f"sqlite:///{legacy_file}"
    with upgrade_process(url, "inserted:phases") as (proc, ready, _):
        assert _read_line(ready) == "inserted:phases"
        proc.kill()
        proc.wait(timeout=WAIT_SECONDS)
    assert snapshot(legacy_file) == snapshot(pristine)  # SQLite's journal undoes the uncommitted transaction
    upgrade_database(database_at(url))
    assert_every_legacy_row_is_live(legacy_file, pristine)


def test_sigint_after_the_commit_leaves_it_fully_adopted(legacy_file: Path, tmp_path: Path) -> None:
    pristine = tmp_path / "pristine.db"
    shutil.copyfile(legacy_file, pristine)
    url = f"sqlite:///{legacy_file}"
    with upgrade_process(url, "committed") as (proc, ready, _):
        assert _read_line(ready) == "committed"
        proc.send_signal(signal.SIGINT)
        finish(proc)
    assert_every_legacy_row_is_live(legacy_file, pristine)
    assert not upgrade_database(database_at(url)).changed


def test_sigint_while_creating_a_new_database_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "new.db"
    with upgrade_process(f"sqlite:///{target}", "migrated") as (proc, ready, _):
        assert _read_line(ready) == "migrated"
        proc.send_signal(signal.SIGINT)
        code, _, _ = finish(proc)
    assert code == 130
    assert not target.exists()


def test_ctrl_c_once_a_command_has_started_says_so_in_one_line(tmp_path: Path) -> None:
    """typer answers Ctrl-C inside a command with exit 130 and nothing else: the command line says it was interrupted."""
    with upgrade_process(f"sqlite:///{tmp_path / 'new.db'}", "migrated") as (proc, ready, _):
        assert _read_line(ready) == "migrated"
        proc.send_signal(signal.SIGINT)
        code, _, err = finish(proc)
    assert code == 130
    assert err.splitlines() == ["interrupted"]


# --- two upgrades at once ---------------------------------------------------------------------------------


def _legacy_postgres(url: str) -> None:
    with get_engine(url).begin() as connection:
        for statement in filter(str.strip, LEGACY_SCHEMA.split(";")):
            connection.execute(sa.text(statement))
        connection.execute(sa.text("INSERT INTO runs VALUES ('r1', 'DONE', 'normal', 1, 2, '2025-12-20 10:00:00', NULL)"))
        connection.execute(sa.text("INSERT INTO tiers VALUES (1, 'T1', 'r1', 'Tier')"))
        connection.execute(sa.text("INSERT INTO phases VALUES (1, 'p1', 'r1', 1, 0, 'P1', 'goal', 'FAILED', 'x', 'low', "
                                   "NULL, NULL, 5, 2, 'boom')"))
        connection.execute(sa.text("INSERT INTO llm_usage_events VALUES (1, 'openai', 'gpt', 'r1', 'p1', 'builder', 4, 6, "
                                   "'2025-12-20 10:01:00', FALSE)"))
    dispose_engines()


@pytest.fixture
def legacy_url(request: pytest.FixtureRequest, empty_db_url: str, legacy_file: Path) -> str:
    """A legacy database: the big file on SQLite, a small one on PostgreSQL."""
    if empty_db_url.startswith("sqlite"):
        return f"sqlite:///{legacy_file}"
    _legacy_postgres(empty_db_url)
    return empty_db_url


def live_counts(url: str) -> dict[str, int]:
    with get_engine(url).connect() as connection:
        return {t: connection.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in LEGACY_TABLES}


def test_two_upgrades_in_threads_adopt_once_and_keep_every_row(legacy_url: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # pg_dump writes its backup here
    before = live_counts(legacy_url)
    reports, errors = [], []

    def run() -> None:
        try:
            reports.append(upgrade_database(database_at(legacy_url)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT_SECONDS)
    assert not errors, errors
    assert sorted(r.legacy for r in reports) == [False, True]  # the second waited, then found nothing to do
    assert live_counts(legacy_url) == before


def test_a_second_upgrade_refuses_while_the_first_holds_the_lock(legacy_url: str, tmp_path: Path) -> None:
    before = live_counts(legacy_url)
    dispose_engines()
    with upgrade_process(legacy_url, "locked", resume=True) as (first, ready, resume):
        assert _read_line(ready) == "locked"
        with upgrade_process(legacy_url, args=("--lock-timeout", "0.2")) as (second, _, _):
            code, _, err = finish(second)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "holds the lock" in lines[0] and "nothing was changed" in lines[0], err
        assert resume is not None
        os.write(resume, b"go\n")
        code, out, err = finish(first)
    assert code == 0, err
    assert "adopted a database written by the original Autopack" in out
    assert live_counts(legacy_url) == before


def test_a_second_upgrade_waits_for_the_first_and_finds_nothing_to_do(legacy_url: str) -> None:
    before = live_counts(legacy_url)
    dispose_engines()
    with upgrade_process(legacy_url, "locked", resume=True) as (first, first_ready, first_resume):
        assert _read_line(first_ready) == "locked"
        with upgrade_process(legacy_url, "waiting_for_lock", resume=True) as (second, second_ready, second_resume):
            assert second_resume is not None and first_resume is not None
            os.write(second_resume, b"go\n")  # let the second go on to wait for the lock at once
            assert _read_line(second_ready) == "waiting_for_lock"
            os.write(first_resume, b"go\n")
            first_code, first_out, first_err = finish(first)
            second_code, second_out, second_err = finish(second)
    assert first_code == 0 and "adopted" in first_out, first_err
    assert second_code == 0 and "nothing to do" in second_out, second_err
    assert live_counts(legacy_url) == before


# --- damaged files ----------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _corrupt_a_leaf_page(path: Path, table: str) -> None:
    connection = sqlite3.connect(path)
    try:
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        try:
            pages = [r[0] for r in connection.execute(
                "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno", (table,))]
        except sqlite3.OperationalError:
            pytest.skip("this SQLite has no dbstat table to find a page with")
    finally:
        connection.close()
    page = pages[len(pages) // 2]
    with open(path, "r+b") as handle:
        handle.seek((page - 1) * page_size)
        handle.write(b"\x00\xff\xff\xff\xff\xff\xff\xff")  # an invalid b-tree page header


def test_a_corrupt_page_is_refused_in_one_line_and_changes_nothing(legacy_file: Path) -> None:
    _corrupt_a_leaf_page(legacy_file, "token_estimation_v2_events")
    digest = _sha256(legacy_file)
    proc = subprocess.run([AUTOPACK, "db", "upgrade"], env={**os.environ, "DATABASE_URL": f"sqlite:///{legacy_file}"},
                          capture_output=True, text=True, timeout=WAIT_SECONDS)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "damaged" in lines[0] and "nothing was changed" in lines[0], proc.stderr
    assert _sha256(legacy_file) == digest
    assert not list(legacy_file.parent.glob("*.pre-upgrade-*"))  # refused before writing anything


def test_a_file_that_is_not_a_database_is_refused_in_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database\n" * 100)
    with pytest.raises(DatabaseUrlError, match="does not start with the SQLite header"):
        upgrade_database(database_at(f"sqlite:///{garbage}"))
    assert garbage.read_bytes() == b"this is not a database\n" * 100


# --- what an interrupted *older* upgrade left behind -------------------------------------------------------


def _first_revision_schema() -> sa.MetaData:
    path = next(MIGRATIONS_DIR.glob("versions/0001_*.py"))
    spec = importlib.util.spec_from_file_location("revision_0001", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    metadata = sa.MetaData()
    module.schema(metadata)
    return metadata


def leave_as_an_old_interrupted_upgrade(path: Path, stage: str) -> None:
    """The state the step-by-step committing upgrade left: copies made, originals dropped, new tables made."""
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        for table in ADOPTED:
            connection.execute(sa.text(f"CREATE TABLE _legacy_{table} AS SELECT * FROM {table}"))
        if stage in ("dropped", "created"):
            for table in reversed(ADOPTED[:2] if stage == "dropped" else ADOPTED):
                connection.execute(sa.text(f"DROP TABLE {table}"))
        if stage == "created":
            _first_revision_schema().create_all(connection)
            connection.execute(sa.text("ALTER TABLE _legacy_runs ADD COLUMN source VARCHAR(64)"))
    engine.dispose()


@pytest.mark.parametrize("stage", ["copied", "dropped", "created"])
def test_leftovers_of_an_old_interrupted_upgrade_are_repaired(legacy_file: Path, tmp_path: Path, stage: str) -> None:
    pristine = tmp_path / "pristine.db"
    shutil.copyfile(legacy_file, pristine)
    leave_as_an_old_interrupted_upgrade(legacy_file, stage)
    report = upgrade_database(database_at(f"sqlite:///{legacy_file}"))
    assert report.legacy and report.repaired and report.backup_path is not None
    assert_every_legacy_row_is_live(legacy_file, pristine)
    assert not upgrade_database(database_at(f"sqlite:///{legacy_file}")).changed


def test_the_cli_says_what_it_repaired(legacy_file: Path) -> None:
    leave_as_an_old_interrupted_upgrade(legacy_file, "created")
    proc = subprocess.run([AUTOPACK, "db", "upgrade"], env={**os.environ, "DATABASE_URL": f"sqlite:///{legacy_file}"},
                          capture_output=True, text=True, timeout=WAIT_SECONDS)
    assert proc.returncode == 0, proc.stderr
    assert "repaired an interrupted upgrade: runs: restored 40 rows from _legacy_runs" in proc.stdout


def test_leftovers_that_disagree_are_refused_and_change_nothing(legacy_file: Path, tmp_path: Path) -> None:
    leave_as_an_old_interrupted_upgrade(legacy_file, "copied")
    with sqlite3.connect(legacy_file) as connection:
        connection.execute("DELETE FROM _legacy_runs WHERE id = 'legacy-run-000'")
    connection.close()
    before = snapshot(legacy_file)
    with pytest.raises(RefusedError, match="cannot repair an interrupted upgrade: runs holds 40 rows"):
        upgrade_database(database_at(f"sqlite:///{legacy_file}"))
    assert snapshot(legacy_file) == before


# --- which database may be created or upgraded -------------------------------------------------------------


def test_an_expected_id_refuses_to_create_a_database_for_a_wrong_path(tmp_path: Path) -> None:
    wrong = tmp_path / "typo.db"
    with pytest.raises(DbIdentityMismatchError, match="DB_MISMATCH.*nothing was created"):
        upgrade_database(database_at(f"sqlite:///{wrong}"), expect_db_id="0" * 32)
    assert not wrong.exists()


def test_an_expected_id_refuses_another_database(db_url: str) -> None:
    with pytest.raises(DbIdentityMismatchError, match="expected 0+; nothing was changed"):
        upgrade_database(database_at(db_url), expect_db_id="0" * 32)


def test_the_expected_id_lets_its_own_database_upgrade(db_url: str) -> None:
    with get_engine(db_url).connect() as connection:
        db_id = connection.execute(sa.text("SELECT db_id FROM db_meta")).scalar_one()
    assert not upgrade_database(database_at(db_url), expect_db_id=db_id).changed


def test_an_expected_id_refuses_to_adopt_a_legacy_database_unless_told(legacy_url: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = live_counts(legacy_url)
    with pytest.raises(DbIdentityMismatchError, match="written by the original Autopack; nothing was changed"):
        upgrade_database(database_at(legacy_url), expect_db_id="0" * 32)
    assert live_counts(legacy_url) == before
    assert upgrade_database(database_at(legacy_url), expect_db_id="0" * 32, create=True).legacy


def test_no_create_refuses_an_empty_database(empty_db_url: str) -> None:
    with pytest.raises(RefusedError, match="nothing was created"):
        upgrade_database(database_at(empty_db_url), create=False)


def test_create_makes_a_new_database_even_with_an_expected_id(tmp_path: Path) -> None:
    report = upgrade_database(database_at(f"sqlite:///{tmp_path / 'fresh.db'}"), expect_db_id="0" * 32, create=True)
    assert report.created and report.db_id and report.db_id != "0" * 32


def test_cli_upgrade_honours_the_expected_id_from_the_environment(tmp_path: Path) -> None:
    wrong = tmp_path / "typo.db"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{wrong}", "AUTOPACK_EXPECTED_DB_ID": "0" * 32}
    proc = subprocess.run([AUTOPACK, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=WAIT_SECONDS)
    assert proc.returncode == 3
    assert len(proc.stderr.strip().splitlines()) == 1 and "DB_MISMATCH" in proc.stderr
    assert not wrong.exists()
