"""Compatibility with the original's ``from autopack.database import SessionLocal``.

Unlike the original, nothing is bound at import: ``SessionLocal()`` resolves ``DATABASE_URL`` when called.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from autopack.db.engine import get_engine, get_sessionmaker, session_scope


def SessionLocal() -> Session:  # noqa: N802 - the original's name, kept for its users' snippets
    """A new session on the database the settings name *now*."""
    return get_sessionmaker()()


__all__ = ["SessionLocal", "get_engine", "session_scope"]
