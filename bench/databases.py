"""A fresh, migrated database for one benchmark measurement: a SQLite file or a PostgreSQL database.

The PostgreSQL database is created beside the given admin URL's and dropped afterwards (nothing of a
benchmark is left on the server).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def migrated_database(backend: str, folder: Path, postgres_admin_url: str) -> Iterator[str]:
    """Yield the URL of a new database at the head revision; ``backend`` is "sqlite" or "postgresql"."""
    import sqlalchemy as sa

    from autopack.db.engine import dispose_engines
    from autopack.db.handle import database_at
    from autopack.db.migrate import upgrade_database

    if backend.lower() == "sqlite":
        path = folder / f"bench_{uuid.uuid4().hex[:8]}.db"
        url = f"sqlite:///{path}"

        def remove() -> None:
            path.unlink(missing_ok=True)
    else:
        name = f"autopack_bench_{uuid.uuid4().hex[:10]}"
        admin_url = sa.engine.make_url(postgres_admin_url).set(drivername="postgresql+psycopg")
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = admin_url.set(database=name).render_as_string(hide_password=False)

        def remove() -> None:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    try:
        upgrade_database(database_at(url))
        dispose_engines()
        yield url
    finally:
        dispose_engines()
        remove()
