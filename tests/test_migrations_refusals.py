"""What `autopack db upgrade` refuses to touch: another application's database, an in-memory database, a file
that was never a SQLite database. Each is refused in one line, with nothing written."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_runner import run_cli

from autopack.db.engine import dispose_engines, get_engine
from autopack.db.handle import database_at
from autopack.db.migrate import upgrade_database
from autopack.db.models import Base
from autopack.errors import ForeignDatabaseError

#: The exit code of a wrong database (as DB_MISMATCH's).
WRONG_DATABASE = 3


def _foreign_sqlite(path: Path, tables: tuple[str, ...] = ("customers",)) -> str:
    connection = sqlite3.connect(path)
    for name in tables:
        connection.execute(f"CREATE TABLE {name} (x)")
        connection.execute(f"INSERT INTO {name} VALUES (1)")
    connection.commit()
    connection.close()
    return f"sqlite:///{path}"


def _sqlite_tables(path: Path) -> list[str]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return sorted(r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    finally:
        connection.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- another application's database -----------------------------------------------------------------------


@pytest.mark.parametrize("create", ["--no-create", "--create"])
def test_upgrade_refuses_another_applications_sqlite_database_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, create: str
) -> None:
    path = tmp_path / "other.db"
    monkeypatch.setenv("DATABASE_URL", _foreign_sqlite(path))
    digest = _sha256(path)
    code, out, err = run_cli(capsys, "db", "upgrade", create)
    assert code == WRONG_DATABASE and out == ""
    line = _one_line(err)
    assert "has no autopack schema" in line and "another application's tables (customers)" in line, line
    assert "nothing was changed" in line and "point DATABASE_URL at autopack's own database" in line, line
    assert _sqlite_tables(path) == ["customers"] and _sha256(path) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]  # no backup, no -wal, no -journal


def test_the_refusal_names_a_few_of_the_foreign_tables(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    url = _foreign_sqlite(path, ("a1", "b2", "c3", "d4", "e5"))
    with pytest.raises(ForeignDatabaseError, match=r"tables \(a1, b2, c3 and 2 more\); nothing was changed"):
        upgrade_database(database_at(url))
    assert _sqlite_tables(path) == ["a1", "b2", "c3", "d4", "e5"]


def _postgres_holding(url: str, *statements: str, skip: str) -> None:
    """Run ``statements`` in the PostgreSQL database ``url`` (another application's doing); skip on SQLite."""
    if not url.startswith("postgresql"):
        pytest.skip(skip)
    with get_engine(url).begin() as connection:
        for statement in statements:
            connection.execute(sa.text(statement))
    dispose_engines()


def test_upgrade_refuses_another_applications_postgres_database_and_writes_nothing(
    empty_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _postgres_holding(empty_db_url, "CREATE TABLE customers (x INTEGER)", "CREATE TABLE orders (y INTEGER)",
                      "INSERT INTO customers VALUES (1)", skip="the SQLite case is covered above")
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    code, out, err = run_cli(capsys, "db", "upgrade", "--no-create")
    assert code == WRONG_DATABASE and out == ""
    line = _one_line(err)
    assert "another application's tables (customers, orders); nothing was changed" in line, line
    assert sorted(sa.inspect(get_engine(empty_db_url)).get_table_names()) == ["customers", "orders"]
    assert not list(tmp_path.glob("*.pre-upgrade-*"))  # no pg_dump written (the current directory is tmp_path)


def _postgres_with_another_schema(url: str) -> None:
    """An empty ``public`` beside another application's schema ``billing`` (two tables)."""
    _postgres_holding(url, "CREATE SCHEMA billing", "CREATE TABLE billing.customers (x INTEGER)",
                      "CREATE TABLE billing.invoices (y INTEGER)", skip="schemas are PostgreSQL's")


def test_upgrade_refuses_an_empty_public_schema_beside_another_applications_schema(
    empty_db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _postgres_with_another_schema(empty_db_url)
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    code, out, err = run_cli(capsys, "db", "upgrade")
    assert code == WRONG_DATABASE and out == ""
    line = _one_line(err)
    assert "its schema public is empty" in line and "(billing.customers, billing.invoices)" in line, line
    assert "nothing was changed" in line and "autopack db upgrade --create" in line, line
    assert sa.inspect(get_engine(empty_db_url)).get_table_names() == []


def test_every_command_refuses_an_empty_public_schema_beside_another_applications_schema(
    empty_db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _postgres_with_another_schema(empty_db_url)
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    _, _, upgrade_err = run_cli(capsys, "db", "upgrade")
    code, _, err = run_cli(capsys, "db", "identity")
    assert code == WRONG_DATABASE and _one_line(err) == _one_line(upgrade_err)


def test_upgrade_create_puts_autopack_beside_another_applications_schema(
    empty_db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _postgres_with_another_schema(empty_db_url)
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    code, out, _ = run_cli(capsys, "db", "upgrade", "--create")
    assert code == 0 and "created a new database" in out, out
    assert "db_meta" in sa.inspect(get_engine(empty_db_url)).get_table_names()
    assert sorted(sa.inspect(get_engine(empty_db_url)).get_table_names(schema="billing")) == ["customers", "invoices"]
    code, _, _ = run_cli(capsys, "db", "identity")
    assert code == 0


@pytest.mark.parametrize("command", [("db", "identity"), ("calibrate",), ("drain", "batch")])
def test_every_command_says_the_same_of_another_applications_database(
    command: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "other.db"
    monkeypatch.setenv("DATABASE_URL", _foreign_sqlite(path))
    _, _, upgrade_err = run_cli(capsys, "db", "upgrade")
    code, _, err = run_cli(capsys, *command)
    assert code == WRONG_DATABASE and _one_line(err) == _one_line(upgrade_err)
    assert _sqlite_tables(path) == ["customers"]


def test_an_upgrade_of_an_empty_database_says_empty(
    empty_db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    code, out, _ = run_cli(capsys, "db", "upgrade")
    assert code == 0 and "created a new database" in out and ": empty -> " in out


def test_autopack_tables_without_a_revision_are_not_called_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'partial.db'}"
    Base.metadata.tables["db_meta"].create(get_engine(url))  # an autopack table, no revision and no id
    dispose_engines()
    monkeypatch.setenv("DATABASE_URL", url)
    code, out, _ = run_cli(capsys, "db", "upgrade")
    assert code == 0 and "empty" not in out and "created a new database" not in out, out
    assert "autopack tables without a schema revision -> " in out


# --- an in-memory database --------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://", "sqlite:///file::memory:?uri=true"])
def test_upgrade_refuses_an_in_memory_database(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    code, out, err = run_cli(capsys, "db", "upgrade")
    assert code == 2 and out == ""
    line = _one_line(err)
    assert "in-memory SQLite database" in line and "does not outlive the command" in line, line
    assert "use a file path" in line
    assert list(tmp_path.iterdir()) == []  # no file named after the URL either


def test_every_command_refuses_an_in_memory_database_from_the_url_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url_file = tmp_path / "url"
    url_file.write_text("sqlite:///:memory:\n")
    monkeypatch.setenv("DATABASE_URL_FILE", str(url_file))
    code, _, err = run_cli(capsys, "db", "identity")
    assert code == 2 and "DATABASE_URL_FILE" in _one_line(err) and "in-memory" in err


def test_internal_engines_may_still_use_an_in_memory_database() -> None:
    """Only the settings' database is refused: a library caller's own engine is its business."""
    with get_engine("sqlite://").connect() as connection:
        assert connection.execute(sa.text("SELECT 1")).scalar_one() == 1


# --- a file that was never a SQLite database --------------------------------------------------------------


def test_upgrade_says_what_identity_says_of_a_file_without_the_sqlite_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = tmp_path / "notes.db"
    text.write_text("hello, not a database\n")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{text}")
    code, _, err = run_cli(capsys, "db", "upgrade")
    _, _, identity_err = run_cli(capsys, "db", "identity")
    line = _one_line(err)
    assert code == 2 and line == _one_line(identity_err)
    assert "does not start with the SQLite header" in line and ".recover" not in line
    assert text.read_text() == "hello, not a database\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]
