"""``autopack db upgrade``: one Alembic chain for fresh, current and legacy databases — atomic and exclusive.

Every upgrade runs in **one transaction**, holding a lock no second upgrade can share:

* SQLite: ``BEGIN IMMEDIATE`` (the database's write lock) before anything is read, with every DDL
  statement inside it (pysqlite is put in autocommit mode so that it never commits on its own). A second
  upgrade waits up to ``lock_timeout`` seconds, then refuses with one line. SIGINT, a crash or an error
  at any step leaves the file as it was (SQLite's journal), and the next upgrade starts again cleanly.
* PostgreSQL: one transaction (DDL is transactional) holding ``pg_advisory_xact_lock``.

A database that is neither autopack's nor the original's (another application's tables, no autopack revision
or id) is refused before anything is written (``ForeignDatabaseError``, exit 3), with or without ``--create``.
On PostgreSQL, an empty schema (the connection's ``current_schema()``, usually ``public``) in a database whose other
schemas hold tables is refused the same way unless ``--create`` is given: autopack's tables would then live
beside another application's, which is allowed only when asked for.
A database written by the original Autopack (its tables, no ``alembic_version``) is first checked for
damage and backed up (a copy next to a SQLite file, ``pg_dump`` for PostgreSQL), then adopted in place
by the first revision. What an interrupted *older* upgrade left behind (``_legacy_*`` copies) is repaired
in the same transaction. The expected database id (``AUTOPACK_EXPECTED_DB_ID``) is honoured, and a new
database is created only where none exists and no other one is expected (or with ``create=True``).
Running the upgrade twice is a no-op.
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.pool import NullPool

from autopack.db.checkpoints import checkpoint
from autopack.db.engine import check_sqlite_file, dispose_engines, mask_url, parse_url
from autopack.db.legacy import LEGACY_PREFIX, leftover_copies, repair_interrupted_adoption
from autopack.errors import (
    AutopackError,
    DatabaseUrlError,
    DbIdentityMismatchError,
    ForeignDatabaseError,
    InputError,
    RefusedError,
)

if TYPE_CHECKING:
    from alembic.config import Config

    from autopack.db.handle import Database

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: Tables whose presence (without an autopack revision or id) marks a database written by the original.
LEGACY_MARKERS = ("runs", "phases", "llm_usage_events", "token_estimation_v2_events")
#: How long a second upgrade waits for the first one before it refuses.
LOCK_TIMEOUT_SECONDS = 60.0
#: The longest wait allowed (one day): SQLite and PostgreSQL take it in whole milliseconds, as a 32-bit number.
LOCK_TIMEOUT_MAX_SECONDS = 86_400.0
#: ``pg_advisory_xact_lock`` key of ``autopack db upgrade`` (the bytes of "autopack"; per database).
POSTGRES_LOCK_KEY = int.from_bytes(b"autopack", "big")


#: The schema revision this code needs: the newest script in ``migrations/versions``
#: (``tests/test_migrations.py`` holds the two equal). A constant, so that checking a database's schema,
#: which every command does, needs neither Alembic nor the scripts (Alembic is imported to upgrade only).
HEAD_REVISION = "0006"


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    return HEAD_REVISION


def known_revisions() -> frozenset[str]:
    """Every revision of our chain, from the scripts' file names (``0001_initial_schema.py`` is ``0001``).

    Read without Alembic (the guard of every command may ask); ``tests/test_migrations.py`` holds it equal to
    the revisions Alembic reads from the scripts.
    """
    return frozenset(p.name.split("_", 1)[0] for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*_*.py"))


def autopack_tables() -> frozenset[str]:
    """The tables of autopack's schema (the models' tables and ``alembic_version``)."""
    from autopack.db.models import Base

    return frozenset(Base.metadata.tables) | {"alembic_version"}


def scripts_head() -> str | None:
    """The head of the migration scripts, as Alembic reads them (what ``HEAD_REVISION`` must equal)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(bind: Engine | Connection) -> str | None:
    """The database's ``alembic_version`` (None without that table; several rows joined, never the head)."""
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return current_revision(connection)
    if not sa.inspect(bind).has_table("alembic_version"):
        return None
    versions = sorted(str(v) for v in bind.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
    return ",".join(versions) if versions else None


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for other backends and in-memory databases)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


@dataclass
class UpgradeReport:
    url: str
    revision_before: str | None
    revision_after: str
    legacy: bool
    backup_path: Path | None
    row_counts_before: dict[str, int] = field(default_factory=dict)
    row_counts_after: dict[str, int] = field(default_factory=dict)
    created: bool = False
    db_id: str | None = None
    repaired: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.revision_before != self.revision_after or bool(self.repaired)

    @property
    def starting_point(self) -> str:
        """What the upgrade started from, in words: a revision, the original Autopack's schema, or nothing."""
        if self.revision_before:
            return self.revision_before
        if self.legacy:
            return "original Autopack schema"
        return "empty" if self.created else "autopack tables without a schema revision"


@dataclass(frozen=True)
class DatabaseState:
    """What an upgrade finds, read inside its transaction."""

    tables: frozenset[str]
    revision: str | None
    db_id: str | None
    leftovers: tuple[str, ...]
    #: PostgreSQL: ``schema.table`` of tables in the database's other (non-system) schemas, a few at most.
    elsewhere: tuple[str, ...] = ()
    #: PostgreSQL: the schema autopack's tables go in (``current_schema()``).
    schema: str | None = None

    @property
    def empty(self) -> bool:
        return not self.tables

    @property
    def legacy(self) -> bool:
        """Tables of the original (or an interrupted adoption of them), and neither our revision nor our id."""
        return (self.revision is None and self.db_id is None and bool(self.tables & set(LEGACY_MARKERS))) or bool(
            self.leftovers
        )

    @property
    def ours(self) -> bool:
        """Autopack's database: it has our id, or a revision of our chain."""
        if self.db_id is not None:
            return True
        return self.revision is not None and set(self.revision.split(",")) <= known_revisions()

    @property
    def foreign_tables(self) -> tuple[str, ...]:
        """Tables that are neither autopack's nor the original's, in a database that is neither (else empty).

        Such a database belongs to another application: the upgrade refuses it rather than adding its
        tables beside the other ones (the original's own database, and ours, may hold extra tables: kept).
        """
        if self.empty or self.ours or self.legacy:
            return ()
        return tuple(sorted(
            name for name in self.tables - autopack_tables() if not name.startswith(LEGACY_PREFIX)
        ))


def read_db_id(connection: Connection, tables: frozenset[str] | None = None) -> str | None:
    """The database's id (``db_meta``), None where it has none (no such table, or no row); ``tables``: the
    database's tables where the caller has read them already."""
    if not ("db_meta" in tables if tables is not None else sa.inspect(connection).has_table("db_meta")):
        return None
    return connection.execute(sa.text("SELECT db_id FROM db_meta WHERE id = 1")).scalar_one_or_none()


def read_state(connection: Connection) -> DatabaseState:
    tables = frozenset(sa.inspect(connection).get_table_names())
    db_id = read_db_id(connection, tables)
    schema, elsewhere = _other_schemas(connection) if not tables else (None, ())
    return DatabaseState(
        tables=tables,
        revision=current_revision(connection) if "alembic_version" in tables else None,
        db_id=db_id,
        leftovers=tuple(leftover_copies(connection)),
        elsewhere=elsewhere,
        schema=schema,
    )


#: How many tables of other schemas are read: enough to name a few and say "and N more".
_ELSEWHERE_READ = 100


def _other_schemas(connection: Connection) -> tuple[str | None, tuple[str, ...]]:
    """PostgreSQL: the current schema, and the tables (``schema.table``) of every other non-system schema.

    Only read when the current schema is empty: an empty ``public`` beside another application's schemas is
    not an empty database.
    """
    if connection.dialect.name != "postgresql":
        return None, ()
    schema = connection.execute(sa.text("SELECT current_schema()")).scalar_one_or_none()
    rows = connection.execute(
        sa.text(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_schema NOT LIKE 'pg\\_%' "
            "AND table_schema IS DISTINCT FROM current_schema() ORDER BY 1 LIMIT :limit"
        ),
        {"limit": _ELSEWHERE_READ},
    ).scalars()
    return schema, tuple(rows)


def _few(tables: tuple[str, ...]) -> str:
    return ", ".join(tables[:3]) + (f" and {len(tables) - 3} more" if len(tables) > 3 else "")


def foreign_database_error(masked: str, tables: tuple[str, ...]) -> ForeignDatabaseError:
    """The one line for a database of another application (``db upgrade`` and every command's guard)."""
    return ForeignDatabaseError(
        f"{masked} has no autopack schema: it holds another application's tables ({_few(tables)}); "
        "nothing was changed",
        hint="point DATABASE_URL at autopack's own database, or at an empty one for `autopack db upgrade` to create",
    )


def shared_database_error(masked: str, state: DatabaseState) -> ForeignDatabaseError | None:
    """The one line for an empty schema in a PostgreSQL database whose other schemas hold tables (else None).

    ``db upgrade --create`` puts autopack's tables there anyway; without it, and in every command's guard,
    such a database is refused as another application's.
    """
    if not (state.empty and state.elsewhere):
        return None
    more = "+" if len(state.elsewhere) >= _ELSEWHERE_READ else ""
    return ForeignDatabaseError(
        f"{masked} has no autopack schema: its schema {state.schema or '(none)'} is empty, but its other schemas "
        f"hold another application's tables ({_few(state.elsewhere)}{more}); nothing was changed",
        hint="point DATABASE_URL at autopack's own database or an empty one, or run `autopack db upgrade --create` "
             f"to put autopack's tables in schema {state.schema or '(none)'} beside them",
    )


def table_row_counts(bind: Engine | Connection) -> dict[str, int]:
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return table_row_counts(connection)
    return {
        name: bind.execute(sa.text(f'SELECT COUNT(*) FROM "{name}"')).scalar_one()
        for name in sorted(sa.inspect(bind).get_table_names())
        if name != "alembic_version"
    }


def upgrade_database(
    database: Database,
    *,
    expect_db_id: str | None = None,
    create: bool | None = None,
    lock_timeout: float = LOCK_TIMEOUT_SECONDS,
) -> UpgradeReport:
    """Bring ``database`` (not verified: it may not exist yet) to the head revision, atomically, while holding the upgrade lock.

    ``expect_db_id``: refuse (``DB_MISMATCH``, nothing changed) unless the database has this id.
    ``create``: None creates a database only where there is none and no ``expect_db_id`` is given;
    True creates (or adopts) one even then; False never creates one.
    """
    check_lock_timeout(lock_timeout)
    resolved = database.url
    masked = mask_url(resolved)
    path = sqlite_path(resolved)
    new_file = False
    if path is not None:
        if not path.parent.exists():
            raise DatabaseUrlError(f"the folder for the SQLite database does not exist: {path.parent}")
        check_sqlite_file(path)  # a file that was never a database: the same line as every other command's
        if not path.exists() or path.stat().st_size == 0:
            _check_creation(f"there is no database file at {path}", expect_db_id, create)
            new_file = not path.exists()

    engine = _migration_engine(resolved, lock_timeout)
    try:
        report = _upgrade(engine, resolved, path, expect_db_id=expect_db_id, create=create, lock_timeout=lock_timeout)
    except BaseException as exc:
        engine.dispose()
        if new_file and path is not None:
            _remove_if_still_empty(path)
        if isinstance(exc, OperationalError) and _lock_timed_out(exc):  # e.g. the commit waited for readers
            raise _lock_refusal(masked, lock_timeout) from exc
        if isinstance(exc, DatabaseError):
            raise _database_failure(masked, path, exc) from exc
        raise
    finally:
        engine.dispose()
    checkpoint("committed")
    dispose_engines()  # a rebuilt schema must not be seen through stale pooled connections
    report.row_counts_after = table_row_counts(database.engine)
    return report


def _upgrade(
    engine: Engine,
    resolved: str,
    path: Path | None,
    *,
    expect_db_id: str | None,
    create: bool | None,
    lock_timeout: float,
) -> UpgradeReport:
    masked = mask_url(resolved)
    with _exclusive(engine, masked, lock_timeout) as connection:
        checkpoint("locked")
        state = read_state(connection)
        if state.db_id is not None:
            if expect_db_id and expect_db_id != state.db_id:
                raise DbIdentityMismatchError(
                    f"DB_MISMATCH: {masked} has database id {state.db_id}, expected {expect_db_id}; nothing was changed",
                    hint="point DATABASE_URL at the intended database or fix AUTOPACK_EXPECTED_DB_ID",
                )
        elif state.empty:
            shared = shared_database_error(masked, state)
            if shared is not None and create is not True:
                raise shared
            _check_creation(f"{masked} is empty", expect_db_id, create)
        elif state.foreign_tables:  # another application's database: never adopted, not even with --create
            raise foreign_database_error(masked, state.foreign_tables)
        elif expect_db_id and not create:
            kind = "was written by the original Autopack" if state.legacy else "has no database id"
            raise DbIdentityMismatchError(
                f"DB_MISMATCH: a database with id {expect_db_id} is expected, but {masked} {kind}; nothing was changed",
                hint="point DATABASE_URL at the intended database, or unset AUTOPACK_EXPECTED_DB_ID (or pass --create) "
                     "to adopt this one",
            )

        head = head_revision()
        backup = None
        repaired: list[str] = []
        if state.revision != head or state.leftovers:
            if path is not None and not state.empty:
                _check_integrity(connection, path)
            if state.legacy:
                backup = backup_sqlite(path) if path is not None else backup_postgres(resolved)
                checkpoint("backed_up")
            if state.leftovers:
                repaired = repair_interrupted_adoption(connection)
                checkpoint("repaired")
        counts_before = table_row_counts(connection)
        if state.revision != head or repaired:
            _run_alembic_upgrade(connection)
            checkpoint("migrated")
        after = read_state(connection)
    return UpgradeReport(
        url=masked,
        revision_before=state.revision,
        revision_after=after.revision or "",
        legacy=state.legacy,
        backup_path=backup,
        row_counts_before=counts_before,
        created=state.empty,
        db_id=after.db_id,
        repaired=repaired,
    )


def check_lock_timeout(seconds: float) -> float:
    """``seconds`` if it is a wait the databases can honour (0 to ``LOCK_TIMEOUT_MAX_SECONDS``); else ``InputError``.

    "Wait forever" is not offered: an upgrade stuck behind a forgotten lock should end, and say so.
    """
    if not math.isfinite(seconds) or not 0 <= seconds <= LOCK_TIMEOUT_MAX_SECONDS:
        raise InputError(f"--lock-timeout {seconds:g} is not between 0 and {LOCK_TIMEOUT_MAX_SECONDS:g} seconds",
                         hint="give the seconds to wait for another upgrade (at most one day)")
    return seconds


def _check_creation(found: str, expect_db_id: str | None, create: bool | None) -> None:
    """Creating a database is allowed unless told not to, or another one (an expected id) is meant."""
    if create is False:
        raise RefusedError(f"{found}; nothing was created (--no-create)", hint="check DATABASE_URL")
    if expect_db_id and create is None:
        raise DbIdentityMismatchError(
            f"DB_MISMATCH: a database with id {expect_db_id} is expected, but {found}; nothing was created",
            hint="point DATABASE_URL at the intended database, or pass --create to create a new one (a new id)",
        )


def _remove_if_still_empty(path: Path) -> None:
    """A file this upgrade created but never committed to is removed (size 0: nothing was ever written)."""
    if path.exists() and path.stat().st_size == 0:
        for leftover in (path, *(path.with_name(path.name + suffix) for suffix in ("-journal", "-wal", "-shm"))):
            leftover.unlink(missing_ok=True)


def _migration_engine(url: str, lock_timeout: float) -> Engine:
    """A private engine whose transactions are real ones, DDL included.

    pysqlite runs DDL outside any transaction and commits on its own; with its transaction handling off
    and ``BEGIN IMMEDIATE`` emitted here, every statement of the upgrade is in one write transaction that
    also excludes other writers (and other upgrades) from the first statement on. Foreign-key enforcement
    is off while tables are rebuilt (the original left dangling references); it must be set outside a
    transaction, so it is set when connecting.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return sa.create_engine(parsed, poolclass=NullPool)
    engine = sa.create_engine(
        parsed, poolclass=NullPool, connect_args={"timeout": lock_timeout, "check_same_thread": False}
    )

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys=OFF")
        dbapi_connection.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def _exclusive(engine: Engine, masked: str, lock_timeout: float) -> Iterator[Connection]:
    """One transaction holding the upgrade lock; committed if the block succeeds, else rolled back."""
    with engine.connect() as connection:
        checkpoint("waiting_for_lock")
        try:
            transaction = connection.begin()
            if engine.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, int(lock_timeout * 1000))}")
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(POSTGRES_LOCK_KEY)))
                connection.exec_driver_sql("SET LOCAL lock_timeout = DEFAULT")
        except OperationalError as exc:
            if _lock_timed_out(exc):
                raise _lock_refusal(masked, lock_timeout) from exc
            raise
        with transaction:
            yield connection


def _lock_refusal(masked: str, lock_timeout: float) -> RefusedError:
    return RefusedError(
        f"another `autopack db upgrade` (or a long read or write) holds the lock on {masked}; "
        f"waited {lock_timeout:g}s, nothing was changed",
        hint="let it finish and run the upgrade again, or raise --lock-timeout",
    )


def _lock_timed_out(exc: OperationalError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate == "55P03" or "database is locked" in str(exc.orig)


def _check_integrity(connection: Connection, path: Path) -> None:
    """Refuse to rebuild a damaged SQLite file: the copy would fail half-way or silently lose rows."""
    problems = [row[0] for row in connection.exec_driver_sql("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        raise InputError(
            f"{path} is damaged (PRAGMA quick_check: {problems[0]}); nothing was changed",
            hint=f"restore a backup, or recover it (`sqlite3 {path} .recover`) and upgrade the recovered file",
        )


def _database_failure(masked: str, path: Path | None, exc: DatabaseError) -> AutopackError:
    reason = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
    if path is not None and any(word in reason for word in ("malformed", "not a database", "corrupt")):
        return InputError(
            f"{path} is not a readable SQLite database ({reason}); nothing was changed",
            hint=f"check DATABASE_URL; to rescue a damaged file: `sqlite3 {path} .recover`",
        )
    return DatabaseUrlError(
        f"cannot upgrade the database at {masked}: {reason}; nothing was changed",
        hint="check DATABASE_URL and that the server is running",
    )


def _run_alembic_upgrade(connection: Connection) -> None:
    """Every pending revision, inside the caller's transaction (env.py refuses to run outside one)."""
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def backup_sqlite(path: Path) -> Path:
    """Copy a SQLite database next to itself (consistent even in WAL mode); the name keeps the original's.

    Taken while the upgrade holds the write lock, so the copy is exactly what is about to be adopted.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.pre-upgrade-{stamp}.bak")
    source = sqlite3.connect(path)
    try:
        dest = sqlite3.connect(target)
        try:
            source.backup(dest)
        finally:
            dest.close()
    finally:
        source.close()
    return target


def backup_postgres(url: str, folder: Path | None = None) -> Path:
    """``pg_dump`` a PostgreSQL database to ``<db>.pre-upgrade-<stamp>.sql`` before adopting it.

    The password (if any) goes to pg_dump through ``PGPASSWORD``, never on its command line.
    """
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise AutopackError(
            "cannot back up the original Autopack database before upgrading it: pg_dump is not installed",
            hint="install the PostgreSQL client (pg_dump) or back the database up yourself and retry",
        )
    parsed = parse_url(url)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    target = (folder or Path.cwd()) / f"{parsed.database}.pre-upgrade-{stamp}.sql"
    args = [pg_dump, "--no-owner", "--file", str(target), "--dbname", str(parsed.database)]
    for flag, value in (("--host", parsed.host), ("--port", parsed.port), ("--username", parsed.username)):
        if value:
            args += [flag, str(value)]
    env = {**os.environ, **({"PGPASSWORD": str(parsed.password)} if parsed.password else {})}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        target.unlink(missing_ok=True)
        raise AutopackError(f"pg_dump failed, nothing was upgraded: {done.stderr.strip().splitlines()[-1:]}",
                            hint="check that pg_dump matches the server version")
    return target
