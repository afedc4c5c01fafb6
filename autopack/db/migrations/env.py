"""Alembic environment. The connection is always handed in by ``autopack.db.migrate``, inside its transaction.

Every revision runs in that one transaction (with the upgrade lock held), so a revision must never commit
on its own: an interrupted upgrade then leaves the database exactly as it was.
"""

from __future__ import annotations

from alembic import context

from autopack.db.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:  # pragma: no cover - autopack.db.migrate always passes one
        raise RuntimeError("run migrations through `autopack db upgrade`")
    if not connection.in_transaction():  # pragma: no cover - guards the atomicity contract
        raise RuntimeError("migrations must run inside autopack.db.migrate's transaction")
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():  # joins the caller's transaction (Alembic sees it as external)
        context.run_migrations()


if context.is_offline_mode():  # pragma: no cover
    raise RuntimeError("offline migrations are not supported; use `autopack db upgrade`")
run_migrations_online()
