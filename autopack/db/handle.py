"""The one database handle: resolved once, guarded once, then passed down.

An entry point (a command, a flow, the API's start-up, a drain's worker) calls ``open_database`` once: it
resolves the URL (the given one, else the settings'), falls back to ``AUTOPACK_EXPECTED_DB_ID`` for the
expected id — the only place that fallback exists — and runs the identity guard. Library functions take the
resulting ``Database`` (or a session from it) and never read the settings for the database themselves.

Prefect parameters and worker processes cannot carry an engine: they get a ``DatabaseRef`` (``Database.ref``),
the URL as a secret plus the verified id, and reopen it with ``DatabaseRef.open`` without guarding again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, SecretStr
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from autopack.config import get_settings
from autopack.db.engine import get_engine, get_sessionmaker, mask_url, resolve_url, session_scope
from autopack.db.identity import IdentityReport, guard
from autopack.db.migrate import read_db_id


@dataclass(frozen=True, repr=False)
class Database:
    """A database this process works on: its resolved URL (never printed: ``repr`` and ``masked_url`` mask
    it), the id it was verified to have (None: not verified, e.g. before ``db upgrade`` creates it), the
    guard's report, and its engine and sessions from the one engine factory (``autopack.db.engine``)."""

    url: str
    db_id: str | None = None
    identity: IdentityReport | None = field(default=None, compare=False)
    read_only: bool = False

    def __repr__(self) -> str:
        return f"Database({self.masked_url}, db_id={self.db_id!r}{', read-only' if self.read_only else ''})"

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @property
    def engine(self) -> Engine:
        return get_engine(self.url, read_only=self.read_only)

    @property
    def sessions(self) -> sessionmaker[Session]:
        """The session factory (``session()`` is the usual way: it commits or rolls back)."""
        return get_sessionmaker(self.url, read_only=self.read_only)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error."""
        with session_scope(self.url, read_only=self.read_only) as session:
            yield session

    def stored_id(self) -> str | None:
        """The database's id: the one the guard verified, else read from ``db_meta`` (None where it has none)."""
        if self.db_id is not None:
            return self.db_id
        with self.engine.connect() as connection:
            return read_db_id(connection)

    def reading(self) -> Database:
        """The same database through a read-only engine (see ``get_engine(read_only=True)``)."""
        return Database(self.url, self.db_id, self.identity, read_only=True)

    def ref(self) -> DatabaseRef:
        """What a Prefect parameter or a worker process carries to reopen this database (no engine)."""
        return DatabaseRef(url=SecretStr(self.url), db_id=self.db_id, read_only=self.read_only)


class DatabaseRef(BaseModel):
    """A verified database as a serialisable value: the URL is a secret (masked in ``repr`` and in the
    parameters Prefect stores), ``db_id`` the id the guard verified. ``open`` reopens it without a guard."""

    model_config = ConfigDict(frozen=True)

    url: SecretStr
    db_id: str | None = None
    read_only: bool = False

    @property
    def masked_url(self) -> str:
        return mask_url(self.url.get_secret_value())

    def open(self) -> Database:
        return Database(self.url.get_secret_value(), self.db_id, read_only=self.read_only)


def expected_db_id(expect_db_id: str | None = None) -> str | None:
    """The id a command expects: the one given, else ``AUTOPACK_EXPECTED_DB_ID`` (the only such fallback)."""
    return expect_db_id or get_settings().expected_db_id


def database_at(url: str | None = None, *, read_only: bool = False) -> Database:
    """The database at ``url`` (default: the settings'), not verified: for creating or upgrading one, and for
    reading its identity whatever it is."""
    return Database(resolve_url(url), read_only=read_only)


def verified_database(db_id: str, url: str | None = None) -> Database:
    """The database at ``url`` (default: the settings') that this process verified already, with id ``db_id``
    (``open_database`` ran in a step before: the pipeline flow's guard subflow): no second guard."""
    return Database(resolve_url(url), db_id)


def open_database(
    url: str | None = None,
    *,
    expect_db_id: str | None = None,
    allow_empty: bool = False,
    read_only: bool = False,
    counts: bool = False,
) -> Database:
    """The database at ``url`` (default: the settings'), after the identity guard: reachable, migrated,
    non-empty unless ``allow_empty``, and the expected one (``expect_db_id``, else the setting).

    The one place an entry point's guard runs; ``counts`` adds the identity's row counts (a scan).
    """
    target = database_at(url, read_only=read_only)
    report = guard(target, expect_db_id=expected_db_id(expect_db_id), allow_empty=allow_empty, counts=counts)
    return Database(target.url, report.db_id, report, read_only=read_only)


def reopen_or_open(ref: DatabaseRef | None, *, expect_db_id: str | None = None) -> Database:
    """A flow step's database: the one its caller verified (``ref``, reopened without a second guard), else the
    settings' database guarded here (a deployment's run of the step on its own)."""
    return ref.open() if ref is not None else open_database(expect_db_id=expect_db_id)
