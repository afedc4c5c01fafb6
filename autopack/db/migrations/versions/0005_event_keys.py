"""event keys: calibration_key and phase_key on token_estimation_v2_events, backfilled (issue 11, speed)

Two 64-bit fingerprints per estimation event (``autopack.db.keys``) so calibration reads numbers per row
and each text once per distinct value. Existing rows get their keys here: on PostgreSQL one UPDATE
computes them in SQL; on SQLite the same function is registered on the connection for the UPDATE.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

from autopack.db import keys

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

TABLE = 'token_estimation_v2_events'


def upgrade() -> None:
    op.add_column(TABLE, sa.Column('calibration_key', sa.BigInteger(), nullable=True))
    op.add_column(TABLE, sa.Column('phase_key', sa.BigInteger(), nullable=True))
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        op.execute(f"UPDATE {TABLE} SET calibration_key = {keys.calibration_key_sql()}, "
                   f"phase_key = {keys.phase_key_sql()}")
        return
    raw = bind.connection.driver_connection
    raw.create_function('autopack_phase_key', 2, _or_null(keys.phase_key), deterministic=True)
    raw.create_function('autopack_calibration_key', len(keys.CALIBRATION_KEY_COLUMNS),
                        _or_null(keys.calibration_key), deterministic=True)
    op.execute(
        f"UPDATE {TABLE} SET phase_key = autopack_phase_key(run_id, phase_id), calibration_key = "
        f"autopack_calibration_key({', '.join(keys.CALIBRATION_KEY_COLUMNS)})"
    )


def _or_null(function: Callable[..., int]) -> Callable[..., int | None]:
    """A key, or NULL for a value SQLite let through that the key cannot take (readers then use the text)."""

    def safe(*args: Any) -> int | None:
        try:
            return function(*args)
        except (AttributeError, TypeError, ValueError):
            return None

    return safe


def downgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column('phase_key')
        batch.drop_column('calibration_key')
