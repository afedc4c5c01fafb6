"""Alembic environment. The connection is always handed in by ``autopack.db.migrate``."""

from __future__ import annotations

from alembic import context

from autopack.db.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:  # pragma: no cover - autopack.db.migrate always passes one
        raise RuntimeError("run migrations through `autopack db upgrade`")
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():  # pragma: no cover
    raise RuntimeError("offline migrations are not supported; use `autopack db upgrade`")
run_migrations_online()
