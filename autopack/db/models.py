"""ORM models: the single source of the schema (Alembic migrations are checked against it in CI).

Column names follow the original Autopack where it had one, so its users' queries keep working; the
columns its section 10 says were missing (attempt/call index, exact ceiling, provider usage, schema
version, leases, drain sessions in the database) are added.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from autopack.db.keys import calibration_key_default, phase_key_default

#: Version of the telemetry event schema written by this code (stored per row, §10.5 of the reference).
TELEMETRY_SCHEMA_VERSION = 2


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class PhaseState:
    """Phase states. Values outside this list (e.g. the original's GATE) are kept as they are."""

    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    TIMEOUT = "TIMEOUT"

    ALL = (QUEUED, EXECUTING, COMPLETE, FAILED, SKIPPED, TIMEOUT)
    TERMINAL = (COMPLETE, FAILED, SKIPPED, TIMEOUT)


class DbMeta(Base):
    """One row: the random id this database was given when its schema was created."""

    __tablename__ = "db_meta"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    db_id: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    note: Mapped[str | None] = mapped_column(Text)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_state_created_at", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    state: Mapped[str] = mapped_column(String(64), nullable=False, default="RUN_CREATED")
    goal_anchor: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(64))
    token_cap: Mapped[int | None] = mapped_column(Integer)
    max_phases: Mapped[int | None] = mapped_column(Integer)
    max_duration_minutes: Mapped[int | None] = mapped_column(Integer)
    tokens_used: Mapped[int | None] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime | None] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)

    phases: Mapped[list[Phase]] = relationship(back_populates="run", order_by="Phase.phase_index")

    @property
    def run_id(self) -> str:
        return self.id


class Phase(Base):
    __tablename__ = "phases"
    __table_args__ = (
        UniqueConstraint("run_id", "phase_id", name="uq_phases_run_id_phase_id"),
        Index("ix_phases_run_id_state", "run_id", "state"),
        Index("ix_phases_state_lease", "state", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), nullable=False)
    phase_id: Mapped[str] = mapped_column(String(255), nullable=False)
    phase_index: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    name: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(32), nullable=False, default=PhaseState.QUEUED)
    # Raw, as the phase spec gave them; normalised once at the estimator's entry (autopack.taxonomy).
    task_category: Mapped[str | None] = mapped_column(String(64))
    complexity: Mapped[str | None] = mapped_column(String(32))
    builder_mode: Mapped[str | None] = mapped_column(String(32))
    scope: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    check_command: Mapped[str | None] = mapped_column(Text)
    builder_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_builder_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=3)
    tokens_used: Mapped[int | None] = mapped_column(Integer, default=0)
    last_failure_reason: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime | None] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)

    run: Mapped[Run] = relationship(back_populates="phases")

    @property
    def deliverables(self) -> list[str]:
        scope = self.scope or {}
        items = scope.get("deliverables") or []
        return [str(d) for d in items] if isinstance(items, list) else [str(items)]

    @property
    def read_only_context(self) -> list[str]:
        return [str(p) for p in (self.scope or {}).get("read_only_context") or []]

    @property
    def scope_paths(self) -> list[str]:
        return [str(p) for p in (self.scope or {}).get("paths") or []]


class LlmUsageEvent(Base):
    """One row per provider call: exact prompt/completion split, or an explicit total-only row.

    ``split_kind`` is ``exact`` (provider-reported split), ``total_only`` (provider gave a total only:
    prompt/completion are NULL), ``unreported`` (no usage at all), ``invalid`` (the provider reported numbers
    no column can hold: those are NULL, total 0 — autopack.telemetry.bounds) or ``legacy_unverified`` (rows
    from the original, whose splits were guessed 40/60 or 70/30 — reference §9.1). Never a guessed split.
    """

    __tablename__ = "llm_usage_events"
    __table_args__ = (
        UniqueConstraint("run_id", "phase_id", "attempt_index", "call_index", name="uq_llm_usage_call"),
        Index("ix_llm_usage_run_created", "run_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(64), nullable=False)
    model: Mapped[str | None] = mapped_column(String(255))
    run_id: Mapped[str | None] = mapped_column(String(255))
    phase_id: Mapped[str | None] = mapped_column(String(255))
    attempt_index: Mapped[int | None] = mapped_column(Integer)
    call_index: Mapped[int | None] = mapped_column(Integer)
    role: Mapped[str | None] = mapped_column(String(64))
    total_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)
    cached_tokens: Mapped[int | None] = mapped_column(Integer)
    split_kind: Mapped[str] = mapped_column(String(32), nullable=False, default="exact")
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)


class TokenEstimationV2Event(Base):
    """The calibration table: one sample per LLM call, keyed (run, phase, attempt, call)."""

    __tablename__ = "token_estimation_v2_events"
    __table_args__ = (
        UniqueConstraint(
            "run_id", "phase_id", "attempt_index", "call_index", name="uq_token_est_v2_call"
        ),
        Index("ix_token_est_v2_run_category", "run_id", "category"),
        Index("ix_token_est_v2_category_timestamp", "category", "timestamp"),
        #: ``calibrate --window-weeks``: the window's rows are found by time (revision 0006)
        Index("ix_token_est_v2_timestamp", "timestamp"),
    )

    id: Mapped[int] = mapped_column("event_id", Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(255), nullable=False)
    phase_id: Mapped[str] = mapped_column(String(255), nullable=False)
    attempt_index: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    call_index: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    timestamp: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)

    category: Mapped[str] = mapped_column(String(64), nullable=False)
    complexity: Mapped[str] = mapped_column(String(32), nullable=False)
    deliverable_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    deliverables_json: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    features_json: Mapped[str | None] = mapped_column(Text)

    predicted_output_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    actual_output_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    selected_budget: Mapped[int] = mapped_column(Integer, nullable=False)
    actual_max_tokens: Mapped[int | None] = mapped_column(Integer)
    #: True where ``actual_max_tokens`` was copied from ``selected_budget`` by a legacy upgrade.
    actual_max_tokens_backfilled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    ceiling_contributions_json: Mapped[str | None] = mapped_column(Text)

    success: Mapped[bool] = mapped_column(Boolean, nullable=False)
    phase_outcome: Mapped[str | None] = mapped_column(String(32))
    truncated: Mapped[bool] = mapped_column(Boolean, nullable=False)
    is_truncated_output: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    stop_reason: Mapped[str | None] = mapped_column(String(64))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    provider: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(255))
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)
    cached_input_tokens: Mapped[int | None] = mapped_column(Integer)

    smape_percent: Mapped[float | None] = mapped_column(Float)
    #: predicted / actual, as the original named it (an over-estimate ratio, not ceiling waste).
    waste_ratio: Mapped[float | None] = mapped_column(Float)
    underestimated: Mapped[bool | None] = mapped_column(Boolean)

    api_reference_required: Mapped[bool | None] = mapped_column(Boolean)
    examples_required: Mapped[bool | None] = mapped_column(Boolean)
    research_required: Mapped[bool | None] = mapped_column(Boolean)
    usage_guide_required: Mapped[bool | None] = mapped_column(Boolean)
    context_quality: Mapped[str | None] = mapped_column(String(32))
    is_sot_file: Mapped[bool | None] = mapped_column(Boolean)
    sot_file_name: Mapped[str | None] = mapped_column(String(255))
    sot_entry_count_hint: Mapped[int | None] = mapped_column(Integer)

    estimator_version: Mapped[str | None] = mapped_column(String(64))
    schema_version: Mapped[int] = mapped_column(Integer, nullable=False, default=TELEMETRY_SCHEMA_VERSION)
    #: Where the row came from: ``autopack`` (recorded here), ``legacy`` or ``import:<format>:<file>``.
    source: Mapped[str] = mapped_column(String(255), nullable=False, default="autopack")

    #: 64-bit fingerprints computed from the row on insert (``autopack.db.keys``; revision 0005): calibration
    #: reads these numbers per row and the texts they stand for once per distinct value.
    calibration_key: Mapped[int | None] = mapped_column(BigInteger, default=calibration_key_default,
                                                        info={"signed": True})
    phase_key: Mapped[int | None] = mapped_column(BigInteger, default=phase_key_default, info={"signed": True})
    #: Whether the row's source says which calls were escalated retries (revision 0006). NULL: recorded here
    #: (the executor's escalation events mark them); False: imported from a file without retry columns, so a
    #: calibration reading it reports retries as unknown; True: imported with them (and their escalation rows).
    retries_known: Mapped[bool | None] = mapped_column(Boolean)


class TokenBudgetEscalationEvent(Base):
    __tablename__ = "token_budget_escalation_events"
    __table_args__ = (
        UniqueConstraint("run_id", "phase_id", "attempt_index", name="uq_token_escalation_attempt"),
    )

    id: Mapped[int] = mapped_column("event_id", Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(255), nullable=False)
    phase_id: Mapped[str] = mapped_column(String(255), nullable=False)
    timestamp: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    attempt_index: Mapped[int] = mapped_column(Integer, nullable=False)
    reason: Mapped[str] = mapped_column(String(32), nullable=False)
    was_truncated: Mapped[bool] = mapped_column(Boolean, nullable=False)
    output_utilization: Mapped[float | None] = mapped_column(Float)
    escalation_factor: Mapped[float] = mapped_column(Float, nullable=False)
    base_value: Mapped[int] = mapped_column(Integer, nullable=False)
    base_source: Mapped[str] = mapped_column(String(32), nullable=False)
    retry_max_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    selected_budget: Mapped[int | None] = mapped_column(Integer)
    actual_max_tokens: Mapped[int | None] = mapped_column(Integer)
    tokens_used: Mapped[int | None] = mapped_column(Integer)


class DrainSession(Base):
    """A batch-drain session (the original kept these in JSON files that crashed on save)."""

    __tablename__ = "drain_sessions"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(32), nullable=False, default="running")
    stop_reason: Mapped[str | None] = mapped_column(Text)
    db_id: Mapped[str | None] = mapped_column(String(64))
    batch_size: Mapped[int] = mapped_column(Integer, nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    total_processed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    total_success: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    total_failed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    total_timeouts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    total_telemetry_events: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    consecutive_zero_yield: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    fingerprint_counts: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    stopped_fingerprints: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    stopped_runs: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    sampled_runs: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    promising_runs: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    deprioritized_runs: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    #: The drain process that holds the session, while its lease lasts (``--resume`` claims it atomically).
    owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)

    results: Mapped[list[DrainResult]] = relationship(back_populates="session", order_by="DrainResult.id")


class DrainResult(Base):
    """One row per phase attempt drained in a session."""

    __tablename__ = "drain_results"
    __table_args__ = (Index("ix_drain_results_session", "session_id", "run_id", "phase_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("drain_sessions.id", ondelete="CASCADE"), nullable=False)
    run_id: Mapped[str] = mapped_column(String(255), nullable=False)
    phase_id: Mapped[str] = mapped_column(String(255), nullable=False)
    phase_index: Mapped[int | None] = mapped_column(Integer)
    attempt_index: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    initial_state: Mapped[str | None] = mapped_column(String(32))
    final_state: Mapped[str] = mapped_column(String(32), nullable=False)
    success: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    error_message: Mapped[str | None] = mapped_column(Text)
    failure_fingerprint: Mapped[str | None] = mapped_column(Text)
    telemetry_events_collected: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    telemetry_yield_per_minute: Mapped[float | None] = mapped_column(Float)
    llm_calls: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    reached_llm_boundary: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    zero_yield_reason: Mapped[str | None] = mapped_column(String(64))
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    timestamp: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)

    session: Mapped[DrainSession] = relationship(back_populates="results")


class CalibrationRun(Base):
    """Each calibration: when, on which data, what it concluded, and the pull request it led to."""

    __tablename__ = "calibration_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    db_id: Mapped[str | None] = mapped_column(String(64))
    method_version: Mapped[str] = mapped_column(String(64), nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    sample_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    run_ids: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    data_start: Mapped[datetime | None] = mapped_column(DateTime)
    data_end: Mapped[datetime | None] = mapped_column(DateTime)
    outcome: Mapped[str] = mapped_column(String(32), nullable=False)
    gate_passed: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    report_path: Mapped[str | None] = mapped_column(Text)
    json_path: Mapped[str | None] = mapped_column(Text)
    pr_url: Mapped[str | None] = mapped_column(Text)
    pr_number: Mapped[int | None] = mapped_column(Integer)
    pr_state: Mapped[str | None] = mapped_column(String(32))


class ProviderSlot(Base):
    """One slot of the provider gate: a lease every drain on every host takes around an LLM call."""

    __tablename__ = "provider_slots"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str | None] = mapped_column(String(255))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)


class AdaptiveBudgetState(Base):
    """Runtime state of one group's adaptive (ACI) budget: its level alpha_t, moved by each finished call.

    The factor the level maps to comes from the reviewed curve in ``token_estimator.py``
    (``ADAPTIVE_BUDGET_FACTORS``), and the level is clipped to that curve's range in the same UPDATE that
    moves it, so this row can steer a ceiling only between factors a human approved. ``curve_fingerprint``
    names the curve the level was built on: after a new curve ships, the old level is not used and the
    next update restarts from the target.
    """

    __tablename__ = "adaptive_budget_state"

    category: Mapped[str] = mapped_column(String(64), primary_key=True)
    complexity: Mapped[str] = mapped_column(String(64), primary_key=True)
    method: Mapped[str] = mapped_column(String(16), nullable=False, default="aci")
    alpha_t: Mapped[float] = mapped_column(Float, nullable=False)
    target_alpha: Mapped[float] = mapped_column(Float, nullable=False)
    curve_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    n_feedback: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    n_truncated: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)


class CalibrationProposal(Base):
    """Every coefficient set the bot proposed to a repository, by hash, and what became of it.

    A human's "no" must last: a closed pull request's proposals (all of them, not only its final
    content) stay ``closed`` here, and a later proposal is published only when it differs materially
    from every closed one (``autopack.github.memory``). ``repository`` is ``owner/name`` on GitHub or
    ``local:<path>`` for a dry run's local branch. ``changes`` is ``[{coefficient, key, old, new}]``
    (null when a closure was learned from GitHub but its values could not be read back).
    """

    __tablename__ = "calibration_proposals"
    __table_args__ = (
        UniqueConstraint("repository", "proposal_hash", name="uq_calibration_proposals_repository_hash"),
        Index("ix_calibration_proposals_repository_status", "repository", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    repository: Mapped[str] = mapped_column(String(255), nullable=False)
    proposal_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    changes: Mapped[list[Any] | None] = mapped_column(JSON)
    #: open | closed (by a human, unmerged) | merged | superseded (replaced on its PR by a newer proposal)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    #: github | local
    source: Mapped[str] = mapped_column(String(16), nullable=False)
    pr_number: Mapped[int | None] = mapped_column(Integer)
    pr_url: Mapped[str | None] = mapped_column(Text)
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    #: The database the calibration's data came from (its ``db_meta`` id), when known.
    db_id: Mapped[str | None] = mapped_column(String(64))
    calibration_run_id: Mapped[int | None] = mapped_column(Integer)
    first_proposed_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow, onupdate=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime)
