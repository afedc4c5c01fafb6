"""Adopting a database written by the original Autopack into our schema.

Used by the first migration: tables we define are created if missing; tables the original already had
are rebuilt in our shape (new columns added and backfilled, NOT NULL relaxed where we allow NULL) while
every row, every column we do not know and every table we do not use is kept.
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

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
    for table in reversed(adopted):
        bind.execute(sa.text(f"DROP TABLE {table.name}{' CASCADE' if postgres else ''}"))

    for table in adopted:
        for column in legacy_columns[table.name]:
            if column["name"] not in table.c:
                table.append_column(sa.Column(column["name"], _portable_type(column["type"]), nullable=True))
    metadata.create_all(bind)

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


def _legacy(name: str) -> str:
    return f"_legacy_{name}"


def _portable_type(type_: sa.types.TypeEngine) -> sa.types.TypeEngine:
    """Enums (and other named types) become plain strings so the rebuilt table owns no type."""
    if isinstance(type_, sa.Enum):
        return sa.String(255)
    return type_


def _select_expr(column: sa.Column, backfills: Mapping[str, str]) -> str:
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
