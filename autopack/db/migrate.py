"""``autopack db upgrade``: one Alembic chain for fresh, current and legacy databases.

A database written by the original Autopack (its tables, no ``alembic_version``) is first copied next to
its file as a backup, then adopted in place by the first revision. Running the upgrade twice is a no-op.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from autopack.db.engine import dispose_engines, get_engine, mask_url, parse_url, resolve_url
from autopack.errors import AutopackError, DatabaseUrlError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: Tables whose presence (without ``alembic_version``) marks a database written by the original.
LEGACY_MARKERS = ("runs", "phases", "llm_usage_events", "token_estimation_v2_events")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


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

    @property
    def changed(self) -> bool:
        return self.revision_before != self.revision_after


def table_row_counts(engine: Engine) -> dict[str, int]:
    inspector = sa.inspect(engine)
    with engine.connect() as connection:
        return {
            name: connection.execute(sa.text(f'SELECT COUNT(*) FROM "{name}"')).scalar_one()
            for name in sorted(inspector.get_table_names())
            if name != "alembic_version"
        }


def is_legacy(engine: Engine) -> bool:
    tables = set(sa.inspect(engine).get_table_names())
    return "alembic_version" not in tables and "db_meta" not in tables and bool(tables & set(LEGACY_MARKERS))


def upgrade_database(url: str | None = None) -> UpgradeReport:
    """Bring the database at ``url`` to the head revision (creating it if it does not exist)."""
    resolved = resolve_url(url)
    path = sqlite_path(resolved)
    if path is not None and not path.parent.exists():
        raise DatabaseUrlError(f"the folder for the SQLite database does not exist: {path.parent}")
    engine = get_engine(resolved)
    try:
        before = current_revision(engine)
        legacy = is_legacy(engine)
        counts_before = table_row_counts(engine)
    except OperationalError as exc:
        raise DatabaseUrlError(
            f"cannot open the database at {mask_url(resolved)}: {exc.orig}",
            hint="check DATABASE_URL and that the server is running",
        ) from exc

    backup = None
    if legacy:
        backup = backup_sqlite(path) if path is not None else backup_postgres(resolved)
    _run_alembic_upgrade(engine)
    if path is not None:
        dispose_engines()  # a rebuilt SQLite schema must not be seen through stale pooled connections
        engine = get_engine(resolved)
    return UpgradeReport(
        url=mask_url(resolved),
        revision_before=before,
        revision_after=current_revision(engine) or "",
        legacy=legacy,
        backup_path=backup,
        row_counts_before=counts_before,
        row_counts_after=table_row_counts(engine),
    )


def _run_alembic_upgrade(engine: Engine) -> None:
    config = alembic_config()
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # Rebuilding adopted tables must not trip over the original's dangling references.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")


def backup_sqlite(path: Path) -> Path:
    """Copy a SQLite database next to itself (consistent even in WAL mode); the name keeps the original's."""
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
