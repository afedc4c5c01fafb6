"""calibration_proposals: every proposal the bot made, so a human's "no" lasts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'calibration_proposals',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('repository', sa.String(length=255), nullable=False),
        sa.Column('proposal_hash', sa.String(length=64), nullable=False),
        sa.Column('changes', sa.JSON(), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('pr_number', sa.Integer(), nullable=True),
        sa.Column('pr_url', sa.Text(), nullable=True),
        sa.Column('commit_sha', sa.String(length=64), nullable=True),
        sa.Column('db_id', sa.String(length=64), nullable=True),
        sa.Column('calibration_run_id', sa.Integer(), nullable=True),
        sa.Column('first_proposed_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.Column('closed_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('repository', 'proposal_hash', name='uq_calibration_proposals_repository_hash'),
    )
    op.create_index('ix_calibration_proposals_repository_status', 'calibration_proposals',
                    ['repository', 'status'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_calibration_proposals_repository_status', table_name='calibration_proposals')
    op.drop_table('calibration_proposals')
