"""Adopting a database written by the original Autopack into our schema.

Used by the first migration: tables we define are created if missing; tables the original already had
are rebuilt in our shape (new columns added and backfilled, NOT NULL relaxed where we allow NULL) while
every row, every column we do not know and every table we do not use is kept.

Everything here runs inside the caller's one transaction (``autopack.db.migrate``): an interruption at
any step leaves the database exactly as it was. ``repair_interrupted_adoption`` undoes what an older
version of this code — which committed step by step — could leave behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from autopack.db.checkpoints import checkpoint
from autopack.errors import RefusedError

LEGACY_PREFIX = "_legacy_"

_NOT_NULL_FALLBACK_SQL = {
    sa.Integer: "0",
    sa.Float: "0",
    sa.Boolean: "FALSE",
    sa.DateTime: "CURRENT_TIMESTAMP",
}


def adopt_or_create(bind: Connection, metadata: sa.MetaData, backfills: Mapping[str, Mapping[str, str]]) -> None:
    """Create ``metadata``'s tables, adopting any that already exist with their rows."""
    inspector = sa.inspect(bind)
    existing = set(inspector.get_table_names())
    adopted = [table for table in metadata.sorted_tables if table.name in existing]
    if not adopted:
        metadata.create_all(bind)
        return

    postgres = bind.dialect.name == "postgresql"
    legacy_columns = {table.name: inspector.get_columns(table.name) for table in adopted}
    for table in adopted:
        bind.execute(sa.text(f"CREATE TABLE {_legacy(table.name)} AS SELECT * FROM {table.name}"))
    checkpoint("copied")
    for table in reversed(adopted):
        bind.execute(sa.text(f"DROP TABLE {table.name}{' CASCADE' if postgres else ''}"))
    checkpoint("dropped")

    for table in adopted:
        for reflected in legacy_columns[table.name]:
            if reflected["name"] not in table.c:
                table.append_column(sa.Column(reflected["name"], _portable_type(reflected["type"]), nullable=True))
    metadata.create_all(bind)
    checkpoint("created")

    for table in adopted:
        present = {c["name"] for c in legacy_columns[table.name]}
        for column in table.columns:
            if column.name not in present:
                type_sql = column.type.compile(dialect=bind.dialect)
                bind.execute(sa.text(f"ALTER TABLE {_legacy(table.name)} ADD COLUMN {column.name} {type_sql}"))
        table_backfills = backfills.get(table.name, {})
        names = [column.name for column in table.columns]
        selects = [_select_expr(column, table_backfills) for column in table.columns]
        bind.execute(
            sa.text(
                f"INSERT INTO {table.name} ({', '.join(names)}) "
                f"SELECT {', '.join(selects)} FROM {_legacy(table.name)}"
            )
        )
        bind.execute(sa.text(f"DROP TABLE {_legacy(table.name)}"))
        if postgres:
            _reset_sequences(bind, table)
        checkpoint(f"inserted:{table.name}")


def leftover_copies(bind: Connection) -> list[str]:
    """Names of tables whose ``_legacy_`` copy an interrupted adoption left behind."""
    return sorted(
        name[len(LEGACY_PREFIX):] for name in sa.inspect(bind).get_table_names() if name.startswith(LEGACY_PREFIX)
    )


def repair_interrupted_adoption(bind: Connection) -> list[str]:
    """Put the rows of every ``_legacy_<t>`` copy back into ``<t>``, so the adoption can run again.

    An older ``db upgrade`` committed each step: copies made, originals dropped, new (empty) tables created,
    and only then rows moved, in one transaction. So for each leftover copy, ``<t>`` is either the untouched
    original (same rows as the copy: drop the copy), missing, or the new empty table (put the copy back in
    its place). Anything else is refused: the backup that upgrade wrote is then the way back.
    Returns one line per table repaired. Runs in the caller's transaction.
    """
    done: list[str] = []
    existing = set(sa.inspect(bind).get_table_names())
    postgres = bind.dialect.name == "postgresql"
    for name in leftover_copies(bind):
        copy = _legacy(name)
        copied = _count(bind, copy)
        if name not in existing:
            bind.execute(sa.text(f'ALTER TABLE "{copy}" RENAME TO "{name}"'))
            done.append(f"{name}: restored {copied} rows from {copy}")
            continue
        live = _count(bind, name)
        if live == copied:
            bind.execute(sa.text(f'DROP TABLE "{copy}"'))
            done.append(f"{name}: kept its {live} rows, dropped the copy {copy}")
        elif live == 0:
            bind.execute(sa.text(f'DROP TABLE "{name}"{" CASCADE" if postgres else ""}'))
            bind.execute(sa.text(f'ALTER TABLE "{copy}" RENAME TO "{name}"'))
            done.append(f"{name}: restored {copied} rows from {copy}")
        else:
            raise RefusedError(
                f"cannot repair an interrupted upgrade: {name} holds {live} rows and {copy} holds {copied}",
                hint="restore the backup the interrupted upgrade wrote (*.pre-upgrade-*) and run `autopack db upgrade`",
            )
    if "alembic_version" in existing and _count(bind, "alembic_version") == 0:
        bind.execute(sa.text("DROP TABLE alembic_version"))  # created before the interrupted migration ran
    return done


def _count(bind: Connection, table: str) -> int:
    return int(bind.execute(sa.text(f'SELECT COUNT(*) FROM "{table}"')).scalar_one())


def _legacy(name: str) -> str:
    return f"{LEGACY_PREFIX}{name}"


def _portable_type(type_: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    """Enums (and other named types) become plain strings so the rebuilt table owns no type.

    A column without a declared type (SQLite; e.g. in a copy made by ``CREATE TABLE AS``) becomes a BLOB,
    the one SQLite affinity that stores every value exactly as it was.
    """
    if isinstance(type_, sa.Enum):
        return sa.String(255)
    if isinstance(type_, sa.types.NullType):
        return sa.LargeBinary()
    return type_


def _select_expr(column: sa.Column[Any], backfills: Mapping[str, str]) -> str:
    expr = backfills.get(column.name, column.name)
    if not column.nullable and not column.primary_key and column.name not in backfills:
        fallback = next(
            (sql for kind, sql in _NOT_NULL_FALLBACK_SQL.items() if isinstance(column.type, kind)), "'unknown'"
        )
        expr = f"COALESCE({column.name}, {fallback})"
    return expr


def _reset_sequences(bind: Connection, table: sa.Table) -> None:
    for column in table.primary_key.columns:
        if isinstance(column.type, sa.Integer) and column.autoincrement in (True, "auto"):
            bind.execute(
                sa.text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                    f"COALESCE((SELECT MAX({column.name}) FROM {table.name}), 0) + 1, false)"
                )
            )
