"""Compatibility with the original's ``from autopack.database import SessionLocal`` (and ``init_db``).

Unlike the original, nothing is bound at import: ``SessionLocal()`` resolves ``DATABASE_URL`` when called.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from autopack.db.engine import get_engine, session_scope
from autopack.db.handle import database_at, expected_db_id


def SessionLocal() -> Session:  # noqa: N802 - the original's name, kept for its users' snippets
    """A new session on the database the settings name *now*."""
    return database_at().sessions()


def init_db() -> None:
    """The original's ``init_db()`` (its seeding guides create the database with it): ``autopack db upgrade``.

    Creates or migrates the database the settings name to the current schema through the one migration chain
    (an original Autopack database is adopted, a backup written first), with ``db upgrade``'s refusals raised as
    ``AutopackError``: another id than ``AUTOPACK_EXPECTED_DB_ID``, another application's tables.
    """
    from autopack.db.migrate import upgrade_database

    upgrade_database(database_at(), expect_db_id=expected_db_id())


__all__ = ["SessionLocal", "get_engine", "init_db", "session_scope"]
