"""initial schema (also adopts a database written by the original Autopack)

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""
from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

from autopack.db.legacy import adopt_or_create

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


LEGACY_BACKFILLS = {
    # Rows written by the original Autopack: mark where they came from and how far to trust them.
    "llm_usage_events": {
        "total_tokens": "COALESCE(total_tokens, COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0))",
        "split_kind": "'legacy_unverified'",
    },
    "token_estimation_v2_events": {
        "actual_max_tokens_backfilled": "(actual_max_tokens IS NULL)",
        "actual_max_tokens": "COALESCE(actual_max_tokens, selected_budget)",
        "attempt_index": "ROW_NUMBER() OVER (PARTITION BY run_id, phase_id ORDER BY event_id) - 1",
        "call_index": "0",
        "is_truncated_output": "COALESCE(is_truncated_output, truncated)",
        "schema_version": "1",
        "estimator_version": "'legacy'",
        "source": "'legacy'",
    },
    "phases": {
        "builder_attempts": "COALESCE(builder_attempts, 0)",
        "max_builder_attempts": "COALESCE(max_builder_attempts, 3)",
        "phase_index": "COALESCE(phase_index, 0)",
    },
}


def schema(metadata: sa.MetaData) -> None:
    """The tables of this revision, as a snapshot (migrations must not follow later model edits)."""
    sa.Table(
        'calibration_runs',
        metadata,
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('db_id', sa.String(length=64), nullable=True),
        sa.Column('method_version', sa.String(length=64), nullable=False),
        sa.Column('params', sa.JSON(), nullable=False),
        sa.Column('sample_count', sa.Integer(), nullable=False),
        sa.Column('run_ids', sa.JSON(), nullable=False),
        sa.Column('data_start', sa.DateTime(), nullable=True),
        sa.Column('data_end', sa.DateTime(), nullable=True),
        sa.Column('outcome', sa.String(length=32), nullable=False),
        sa.Column('gate_passed', sa.Boolean(), nullable=False),
        sa.Column('report_path', sa.Text(), nullable=True),
        sa.Column('json_path', sa.Text(), nullable=True),
        sa.Column('pr_url', sa.Text(), nullable=True),
        sa.Column('pr_number', sa.Integer(), nullable=True),
        sa.Column('pr_state', sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    sa.Table(
        'db_meta',
        metadata,
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('db_id', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('note', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    sa.Table(
        'drain_sessions',
        metadata,
        sa.Column('id', sa.String(length=128), nullable=False),
        sa.Column('started_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=True),
        sa.Column('completed_at', sa.DateTime(), nullable=True),
        sa.Column('status', sa.String(length=32), nullable=False),
        sa.Column('stop_reason', sa.Text(), nullable=True),
        sa.Column('db_id', sa.String(length=64), nullable=True),
        sa.Column('batch_size', sa.Integer(), nullable=False),
        sa.Column('params', sa.JSON(), nullable=False),
        sa.Column('total_processed', sa.Integer(), nullable=False),
        sa.Column('total_success', sa.Integer(), nullable=False),
        sa.Column('total_failed', sa.Integer(), nullable=False),
        sa.Column('total_timeouts', sa.Integer(), nullable=False),
        sa.Column('total_telemetry_events', sa.Integer(), nullable=False),
        sa.Column('consecutive_zero_yield', sa.Integer(), nullable=False),
        sa.Column('fingerprint_counts', sa.JSON(), nullable=False),
        sa.Column('stopped_fingerprints', sa.JSON(), nullable=False),
        sa.Column('stopped_runs', sa.JSON(), nullable=False),
        sa.Column('sampled_runs', sa.JSON(), nullable=False),
        sa.Column('promising_runs', sa.JSON(), nullable=False),
        sa.Column('deprioritized_runs', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    sa.Table(
        'llm_usage_events',
        metadata,
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('provider', sa.String(length=64), nullable=False),
        sa.Column('model', sa.String(length=255), nullable=True),
        sa.Column('run_id', sa.String(length=255), nullable=True),
        sa.Column('phase_id', sa.String(length=255), nullable=True),
        sa.Column('attempt_index', sa.Integer(), nullable=True),
        sa.Column('call_index', sa.Integer(), nullable=True),
        sa.Column('role', sa.String(length=64), nullable=True),
        sa.Column('total_tokens', sa.Integer(), nullable=False),
        sa.Column('prompt_tokens', sa.Integer(), nullable=True),
        sa.Column('completion_tokens', sa.Integer(), nullable=True),
        sa.Column('reasoning_tokens', sa.Integer(), nullable=True),
        sa.Column('cached_tokens', sa.Integer(), nullable=True),
        sa.Column('split_kind', sa.String(length=32), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('run_id', 'phase_id', 'attempt_index', 'call_index', name='uq_llm_usage_call'),
        sa.Index('ix_llm_usage_run_created', 'run_id', 'created_at'),
    )
    sa.Table(
        'runs',
        metadata,
        sa.Column('id', sa.String(length=255), nullable=False),
        sa.Column('state', sa.String(length=64), nullable=False),
        sa.Column('goal_anchor', sa.Text(), nullable=True),
        sa.Column('source', sa.String(length=64), nullable=True),
        sa.Column('token_cap', sa.Integer(), nullable=True),
        sa.Column('max_phases', sa.Integer(), nullable=True),
        sa.Column('max_duration_minutes', sa.Integer(), nullable=True),
        sa.Column('tokens_used', sa.Integer(), nullable=True),
        sa.Column('failure_reason', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=True),
        sa.Column('updated_at', sa.DateTime(), nullable=True),
        sa.Column('started_at', sa.DateTime(), nullable=True),
        sa.Column('completed_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.Index('ix_runs_state_created_at', 'state', 'created_at'),
    )
    sa.Table(
        'token_budget_escalation_events',
        metadata,
        sa.Column('event_id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('run_id', sa.String(length=255), nullable=False),
        sa.Column('phase_id', sa.String(length=255), nullable=False),
        sa.Column('timestamp', sa.DateTime(), nullable=False),
        sa.Column('attempt_index', sa.Integer(), nullable=False),
        sa.Column('reason', sa.String(length=32), nullable=False),
        sa.Column('was_truncated', sa.Boolean(), nullable=False),
        sa.Column('output_utilization', sa.Float(), nullable=True),
        sa.Column('escalation_factor', sa.Float(), nullable=False),
        sa.Column('base_value', sa.Integer(), nullable=False),
        sa.Column('base_source', sa.String(length=32), nullable=False),
        sa.Column('retry_max_tokens', sa.Integer(), nullable=False),
        sa.Column('selected_budget', sa.Integer(), nullable=True),
        sa.Column('actual_max_tokens', sa.Integer(), nullable=True),
        sa.Column('tokens_used', sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint('event_id'),
        sa.UniqueConstraint('run_id', 'phase_id', 'attempt_index', name='uq_token_escalation_attempt'),
    )
    sa.Table(
        'token_estimation_v2_events',
        metadata,
        sa.Column('event_id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('run_id', sa.String(length=255), nullable=False),
        sa.Column('phase_id', sa.String(length=255), nullable=False),
        sa.Column('attempt_index', sa.Integer(), nullable=False),
        sa.Column('call_index', sa.Integer(), nullable=False),
        sa.Column('timestamp', sa.DateTime(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('category', sa.String(length=64), nullable=False),
        sa.Column('complexity', sa.String(length=32), nullable=False),
        sa.Column('deliverable_count', sa.Integer(), nullable=False),
        sa.Column('deliverables_json', sa.Text(), nullable=False),
        sa.Column('features_json', sa.Text(), nullable=True),
        sa.Column('predicted_output_tokens', sa.Integer(), nullable=False),
        sa.Column('actual_output_tokens', sa.Integer(), nullable=False),
        sa.Column('selected_budget', sa.Integer(), nullable=False),
        sa.Column('actual_max_tokens', sa.Integer(), nullable=True),
        sa.Column('actual_max_tokens_backfilled', sa.Boolean(), nullable=False),
        sa.Column('ceiling_contributions_json', sa.Text(), nullable=True),
        sa.Column('success', sa.Boolean(), nullable=False),
        sa.Column('phase_outcome', sa.String(length=32), nullable=True),
        sa.Column('truncated', sa.Boolean(), nullable=False),
        sa.Column('is_truncated_output', sa.Boolean(), nullable=False),
        sa.Column('stop_reason', sa.String(length=64), nullable=True),
        sa.Column('finish_reason', sa.String(length=32), nullable=True),
        sa.Column('provider', sa.String(length=64), nullable=True),
        sa.Column('model', sa.String(length=255), nullable=True),
        sa.Column('input_tokens', sa.Integer(), nullable=True),
        sa.Column('reasoning_tokens', sa.Integer(), nullable=True),
        sa.Column('cached_input_tokens', sa.Integer(), nullable=True),
        sa.Column('smape_percent', sa.Float(), nullable=True),
        sa.Column('waste_ratio', sa.Float(), nullable=True),
        sa.Column('underestimated', sa.Boolean(), nullable=True),
        sa.Column('api_reference_required', sa.Boolean(), nullable=True),
        sa.Column('examples_required', sa.Boolean(), nullable=True),
        sa.Column('research_required', sa.Boolean(), nullable=True),
        sa.Column('usage_guide_required', sa.Boolean(), nullable=True),
        sa.Column('context_quality', sa.String(length=32), nullable=True),
        sa.Column('is_sot_file', sa.Boolean(), nullable=True),
        sa.Column('sot_file_name', sa.String(length=255), nullable=True),
        sa.Column('sot_entry_count_hint', sa.Integer(), nullable=True),
        sa.Column('estimator_version', sa.String(length=64), nullable=True),
        sa.Column('schema_version', sa.Integer(), nullable=False),
        sa.Column('source', sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint('event_id'),
        sa.UniqueConstraint('run_id', 'phase_id', 'attempt_index', 'call_index', name='uq_token_est_v2_call'),
        sa.Index('ix_token_est_v2_category_timestamp', 'category', 'timestamp'),
        sa.Index('ix_token_est_v2_run_category', 'run_id', 'category'),
    )
    sa.Table(
        'drain_results',
        metadata,
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('session_id', sa.String(length=128), nullable=False),
        sa.Column('run_id', sa.String(length=255), nullable=False),
        sa.Column('phase_id', sa.String(length=255), nullable=False),
        sa.Column('phase_index', sa.Integer(), nullable=True),
        sa.Column('attempt_index', sa.Integer(), nullable=False),
        sa.Column('worker', sa.String(length=255), nullable=True),
        sa.Column('initial_state', sa.String(length=32), nullable=True),
        sa.Column('final_state', sa.String(length=32), nullable=False),
        sa.Column('success', sa.Boolean(), nullable=False),
        sa.Column('error_message', sa.Text(), nullable=True),
        sa.Column('failure_fingerprint', sa.Text(), nullable=True),
        sa.Column('telemetry_events_collected', sa.Integer(), nullable=False),
        sa.Column('telemetry_yield_per_minute', sa.Float(), nullable=True),
        sa.Column('llm_calls', sa.Integer(), nullable=False),
        sa.Column('reached_llm_boundary', sa.Boolean(), nullable=False),
        sa.Column('zero_yield_reason', sa.String(length=64), nullable=True),
        sa.Column('duration_seconds', sa.Float(), nullable=True),
        sa.Column('timestamp', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['session_id'], ['drain_sessions.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.Index('ix_drain_results_session', 'session_id', 'run_id', 'phase_id'),
    )
    sa.Table(
        'phases',
        metadata,
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('run_id', sa.String(length=255), nullable=False),
        sa.Column('phase_id', sa.String(length=255), nullable=False),
        sa.Column('phase_index', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=True),
        sa.Column('description', sa.Text(), nullable=True),
        sa.Column('state', sa.String(length=32), nullable=False),
        sa.Column('task_category', sa.String(length=64), nullable=True),
        sa.Column('complexity', sa.String(length=32), nullable=True),
        sa.Column('builder_mode', sa.String(length=32), nullable=True),
        sa.Column('scope', sa.JSON(), nullable=True),
        sa.Column('check_command', sa.Text(), nullable=True),
        sa.Column('builder_attempts', sa.Integer(), nullable=False),
        sa.Column('max_builder_attempts', sa.Integer(), nullable=False),
        sa.Column('tokens_used', sa.Integer(), nullable=True),
        sa.Column('last_failure_reason', sa.Text(), nullable=True),
        sa.Column('lease_owner', sa.String(length=255), nullable=True),
        sa.Column('lease_expires_at', sa.DateTime(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=True),
        sa.Column('updated_at', sa.DateTime(), nullable=True),
        sa.Column('started_at', sa.DateTime(), nullable=True),
        sa.Column('completed_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('run_id', 'phase_id', name='uq_phases_run_id_phase_id'),
        sa.Index('ix_phases_run_id_state', 'run_id', 'state'),
        sa.Index('ix_phases_state_lease', 'state', 'lease_expires_at'),
    )


def upgrade() -> None:
    bind = op.get_bind()
    metadata = sa.MetaData()
    schema(metadata)
    adopt_or_create(bind, metadata, LEGACY_BACKFILLS)
    if bind.execute(sa.text("SELECT COUNT(*) FROM db_meta")).scalar_one() == 0:
        bind.execute(
            sa.text("INSERT INTO db_meta (id, db_id, created_at) VALUES (1, :db_id, CURRENT_TIMESTAMP)"),
            {"db_id": uuid.uuid4().hex},
        )


def downgrade() -> None:
    metadata = sa.MetaData()
    schema(metadata)
    metadata.drop_all(op.get_bind())
