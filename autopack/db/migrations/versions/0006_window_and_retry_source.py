"""calibration window and retry sources: an index on token_estimation_v2_events.timestamp, and retries_known

``autopack calibrate --window-weeks N`` reads only the newest N weeks: the index finds the window's rows by
time, so the read costs what the window holds, not the whole history. ``retries_known`` (nullable, no
default: adding it rewrites no row) says whether an imported row's file marked escalated retries; NULL for
rows recorded here, whose escalation events mark them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

TABLE = 'token_estimation_v2_events'


def upgrade() -> None:
    op.add_column(TABLE, sa.Column('retries_known', sa.Boolean(), nullable=True))
    op.create_index('ix_token_est_v2_timestamp', TABLE, ['timestamp'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_token_est_v2_timestamp', table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column('retries_known')
