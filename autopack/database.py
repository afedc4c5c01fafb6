"""Compatibility with the original's ``from autopack.database import SessionLocal``.

Unlike the original, nothing is bound at import: ``SessionLocal()`` resolves ``DATABASE_URL`` when called.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from autopack.db.engine import get_engine, session_scope
from autopack.db.handle import database_at


def SessionLocal() -> Session:  # noqa: N802 - the original's name, kept for its users' snippets
    """A new session on the database the settings name *now*."""
    return database_at().sessions()


__all__ = ["SessionLocal", "get_engine", "session_scope"]
