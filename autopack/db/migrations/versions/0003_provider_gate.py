"""provider_slots (the provider gate's leases) and an owner lease on drain sessions

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'provider_slots',
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('slot', sa.Integer(), nullable=False),
        sa.Column('owner', sa.String(length=255), nullable=True),
        sa.Column('expires_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('name', 'slot'),
    )
    op.add_column('drain_sessions', sa.Column('owner', sa.String(length=255), nullable=True))
    op.add_column('drain_sessions', sa.Column('lease_expires_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('drain_sessions') as batch:
        batch.drop_column('lease_expires_at')
        batch.drop_column('owner')
    op.drop_table('provider_slots')
