"""The one engine factory: one lazily built engine per resolved database URL.

Nothing here runs at import time. Two calls with two URLs reach two databases, which is exactly what the
original could not do (its engine was bound when ``autopack.database`` was imported).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from autopack.config import absolutize_sqlite_url, get_settings
from autopack.errors import DatabaseUrlError
from autopack.url_credentials import MASK, has_raw_at_in_userinfo, is_secret_parameter, mask_url_credentials

SQLITE_BUSY_TIMEOUT_MS = 30_000

_lock = threading.Lock()
#: Keyed by (resolved URL, read-only).
_engines: dict[tuple[str, bool], Engine] = {}
_sessionmakers: dict[tuple[str, bool], sessionmaker[Session]] = {}


def resolve_url(url: str | None = None) -> str:
    """The URL to use: the given one (made absolute for SQLite) or the settings' one."""
    return absolutize_sqlite_url(url) if url else get_settings().resolved_database_url()


def parse_url(url: str) -> URL:
    """Parse a database URL or fail with one clear line (never a traceback).

    The one check every command passes before connecting (CLI, API server, flows, migrations): a URL with a
    raw ``@`` in its password is refused here, naming no part of it. SQLAlchemy would end the password at that
    ``@`` and hand the rest to the driver as the host, which echoes it in its error.
    """
    if has_raw_at_in_userinfo(url):
        raise DatabaseUrlError(
            "DATABASE_URL's user name or password contains a raw '@'",
            hint="percent-encode it: '@' as %40, '/' as %2F",
        )
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseUrlError(
            f"DATABASE_URL is not a valid database URL: {mask_url(url)}",
            hint="use e.g. sqlite:///autopack.db or postgresql+psycopg://user@host/db",
        ) from exc
    if parsed.get_backend_name() not in {"sqlite", "postgresql"}:
        postgres = parsed.get_backend_name() in {"postgres", "pgsql"}  # the spelling of Heroku-style URLs
        raise DatabaseUrlError(
            f"unsupported database backend '{parsed.get_backend_name()}'",
            hint="write postgresql:// (SQLAlchemy's name for PostgreSQL)" if postgres
            else "autopack supports sqlite:/// and postgresql:// URLs",
        )
    if parsed.drivername not in SUPPORTED_DRIVERS:
        raise DatabaseUrlError(
            f"unsupported database driver '{parsed.drivername}' in DATABASE_URL",
            hint="autopack uses the standard library's sqlite3 and psycopg 3, synchronously (async drivers cannot "
                 "work): use sqlite:///path.db, postgresql:// or postgresql+psycopg://",
        )
    return parsed


#: Driver names autopack can use: the standard library's sqlite3 and psycopg 3 (installed with autopack).
#: Async drivers (asyncpg, aiosqlite) cannot work with a synchronous engine.
SUPPORTED_DRIVERS = frozenset({"sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg"})

_SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_file(path: Path) -> None:
    """Refuse a file that exists but is not a SQLite database (an empty file is a new, empty database)."""
    try:
        with path.open("rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except IsADirectoryError as exc:
        raise DatabaseUrlError(f"DATABASE_URL points at {path}, which is a directory",
                               hint="name a database file, e.g. sqlite:///autopack.db") from exc
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DatabaseUrlError(f"cannot read the SQLite file {path}: {exc.strerror or exc}",
                               hint="check the path and its permissions") from exc
    if header and header != _SQLITE_HEADER:
        raise DatabaseUrlError(
            f"{path} is not a SQLite database (it does not start with the SQLite header)",
            hint="check DATABASE_URL: point it at an autopack database, or at a new path for "
                 "`autopack db upgrade` to create",
        )


def mask_url(url: str) -> str:
    """The URL with every credential (password, ``?password=``/``?sslpassword=``…) replaced by ``***``;
    safe to print, log or store. The user name stays: it tells which account is in use.

    A raw ``@`` in the user name or password: SQLAlchemy would end the password at the first one and show the
    rest as the host, so the conservative text rule (``mask_url_credentials``) masks it instead."""
    if has_raw_at_in_userinfo(url):
        return mask_url_credentials(url)
    try:
        parsed = make_url(url)
        query = {name: (MASK if is_secret_parameter(name) else value) for name, value in parsed.query.items()}
        return parsed.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", MASK)
    except Exception:
        # Unparseable: drop everything between '://' and '@' so no credential can leak.
        scheme, sep, rest = url.partition("://")
        if sep and "@" in rest:
            return mask_url_credentials(f"{scheme}://***@{rest.split('@', 1)[1]}")
        return mask_url_credentials(url)


def _normalise_driver(parsed: URL) -> URL:
    """``postgresql://`` means psycopg 3 here (the only PostgreSQL driver we install)."""
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    return parsed


def get_engine(url: str | None = None, *, read_only: bool = False) -> Engine:
    """The engine for ``url`` (default: the settings' database), created on first use.

    ``read_only``: an engine that cannot change the database, not even its journal mode (see
    ``_read_only_sqlite``; PostgreSQL: read-only transactions). For commands that only read, and for the
    identity guard every command runs first, so that a database it refuses is left exactly as it was.
    """
    resolved = resolve_url(url)
    with _lock:
        engine = _engines.get((resolved, read_only))
        if engine is None:
            engine = _create_engine(resolved, read_only=read_only)
            _engines[(resolved, read_only)] = engine
        return engine


def _create_engine(url: str, *, read_only: bool = False) -> Engine:
    parsed = _normalise_driver(parse_url(url))
    database = parsed.database
    sqlite_file = None
    if parsed.get_backend_name() == "sqlite" and database and database != ":memory:" \
            and not database.startswith("file:"):
        sqlite_file = Path(database)
    if sqlite_file is not None:
        check_sqlite_file(sqlite_file)
    try:
        if read_only and sqlite_file is not None:
            path = sqlite_file.resolve()
            # Not pooled: closed right after use, so a writer of this process closes last and can fold the
            # WAL back into the file (a read-only connection cannot) and remove the -wal and -shm files.
            engine = create_engine(parsed, creator=lambda: _read_only_sqlite(path), poolclass=NullPool)
        elif read_only and parsed.get_backend_name() == "postgresql":
            engine = create_engine(parsed, pool_pre_ping=True, pool_recycle=1800,
                                   connect_args={"options": "-c default_transaction_read_only=on"})
        elif parsed.get_backend_name() == "sqlite":
            engine = create_engine(
                parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
            )
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(parsed, pool_pre_ping=True, pool_recycle=1800, pool_size=10, max_overflow=10)
    except (NoSuchModuleError, ArgumentError, ImportError) as exc:
        raise DatabaseUrlError(f"cannot build an engine for {mask_url(url)}: {exc}") from exc
    return engine


#: What reading a WAL file opened ``mode=ro`` answers when its ``-shm`` index is missing and cannot be created
#: (a folder the user may not write to; a read-only file system).
_NO_WAL_INDEX = frozenset({"SQLITE_READONLY_CANTINIT", "SQLITE_READONLY_DIRECTORY", "SQLITE_CANTOPEN"})


def _read_only_sqlite(path: Path) -> sqlite3.Connection:
    """A connection to the SQLite file ``path`` that cannot write to it (``mode=ro``; no journal-mode change).

    A WAL file whose ``-shm`` index is gone cannot be opened ``mode=ro`` where that index cannot be
    created (a read-only folder); with no ``-wal`` file either, every committed page is in the file
    itself, so it is then opened ``immutable`` (read-only, without the shared-memory index).
    """
    uri = f"file:{quote(str(path))}?mode=ro"
    timeout = SQLITE_BUSY_TIMEOUT_MS / 1000
    connection = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as exc:
        connection.close()
        if getattr(exc, "sqlite_errorname", "") not in _NO_WAL_INDEX or path.with_name(path.name + "-wal").exists():
            raise
        connection = sqlite3.connect(f"{uri}&immutable=1", uri=True, timeout=timeout, check_same_thread=False)
    return connection


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    """WAL + busy timeout so an API server, a drain and a calibration can share one file."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def get_sessionmaker(url: str | None = None, *, read_only: bool = False) -> sessionmaker[Session]:
    resolved = resolve_url(url)
    with _lock:
        maker = _sessionmakers.get((resolved, read_only))
    if maker is None:
        maker = sessionmaker(bind=get_engine(resolved, read_only=read_only), expire_on_commit=False)
        with _lock:
            maker = _sessionmakers.setdefault((resolved, read_only), maker)
    return maker


@contextmanager
def session_scope(url: str | None = None, *, read_only: bool = False) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error (``read_only``: see ``get_engine``)."""
    session = get_sessionmaker(url, read_only=read_only)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines() -> None:
    """Close every pooled connection (tests, and before a SQLite file is copied or deleted)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _sessionmakers.clear()


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE/DELETE matched: ``Session.execute`` is typed as returning a plain ``Result``, but a DML
    statement's result is always a ``CursorResult``, which has the count."""
    return cast("CursorResult[Any]", result).rowcount
