"""adaptive budget state: per group ACI level, moved by each finished call (issue 9, drift)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'adaptive_budget_state',
        sa.Column('category', sa.String(length=64), nullable=False),
        sa.Column('complexity', sa.String(length=64), nullable=False),
        sa.Column('method', sa.String(length=16), nullable=False),
        sa.Column('alpha_t', sa.Float(), nullable=False),
        sa.Column('target_alpha', sa.Float(), nullable=False),
        sa.Column('curve_fingerprint', sa.String(length=64), nullable=False),
        sa.Column('n_feedback', sa.Integer(), nullable=False),
        sa.Column('n_truncated', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('category', 'complexity'),
    )


def downgrade() -> None:
    op.drop_table('adaptive_budget_state')
