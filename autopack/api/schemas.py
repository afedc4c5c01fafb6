"""Request and response bodies of the API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from autopack.db.models import Phase, Run
from autopack.execution.leases import stored_reason
from autopack.params import CLAIM_LEASE_SECONDS, DEFAULT_DRAIN_STATES, LeaseSeconds, States

#: Printable ASCII, no leading space: an owner id goes into logs and lease columns.
OWNER_PATTERN = r"^[\x21-\x7e][\x20-\x7e]{0,254}$"

#: A run id as stored (legacy ids may hold any printable text); never a NUL byte.
RunId = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00]+$")]


def _as_utc(value: datetime) -> datetime:
    """Stored timestamps are naive UTC (``models.utcnow``); answers say so (RFC 3339 needs an offset)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: A timestamp in a response: always timezone-aware, in UTC (serialised with ``Z``).
UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]
FinalState = Literal["COMPLETE", "FAILED", "TIMEOUT", "SKIPPED"]


class HealthOut(BaseModel):
    service: Literal["autopack"] = "autopack"
    status: Literal["ok", "degraded"]
    db_ok: bool
    db_id: str | None = None
    schema_revision: str | None = None
    expected_revision: str
    database_identity: str = Field(description="First 12 hex chars of sha256 of the masked database URL.")
    version: str
    key_accepted: bool | None = Field(default=None, description="Whether the X-API-Key sent would be accepted "
                                                                "for writes (null when none was sent).")


class PhaseOut(BaseModel):
    run_id: str
    phase_id: str
    phase_index: int
    name: str | None = None
    description: str | None = None
    state: str
    category: str | None = None
    complexity: str | None = None
    deliverables: list[str] = Field(default_factory=list)
    builder_attempts: int
    max_builder_attempts: int
    last_failure_reason: str | None = None
    lease_owner: str | None = None
    lease_expires_at: UtcDateTime | None = None
    started_at: UtcDateTime | None = None
    completed_at: UtcDateTime | None = None

    @classmethod
    def of(cls, phase: Phase) -> PhaseOut:
        return cls(
            run_id=phase.run_id,
            phase_id=phase.phase_id,
            phase_index=phase.phase_index,
            name=phase.name,
            description=phase.description,
            state=phase.state,
            category=phase.task_category,
            complexity=phase.complexity,
            deliverables=phase.deliverables,
            builder_attempts=phase.builder_attempts,
            max_builder_attempts=phase.max_builder_attempts,
            # masked again as it is served: a reason stored by an earlier version was stored verbatim
            last_failure_reason=stored_reason(phase.last_failure_reason),
            lease_owner=phase.lease_owner,
            lease_expires_at=phase.lease_expires_at,
            started_at=phase.started_at,
            completed_at=phase.completed_at,
        )


class RunOut(BaseModel):
    run_id: str
    state: str
    goal: str | None = None
    source: str | None = None
    created_at: UtcDateTime | None = None
    updated_at: UtcDateTime | None = None
    phases_total: int
    phase_states: dict[str, int]

    @classmethod
    def of(cls, run: Run, phase_states: dict[str, int]) -> RunOut:
        return cls(
            run_id=run.id,
            state=run.state,
            goal=run.goal_anchor,
            source=run.source,
            created_at=run.created_at,
            updated_at=run.updated_at,
            phases_total=sum(phase_states.values()),
            phase_states=phase_states,
        )


class RunDetailOut(RunOut):
    phases: list[PhaseOut]


class PhaseStateIn(BaseModel):
    """Put a phase back in the queue, or skip it (refused while a live lease holds it)."""

    state: Literal["QUEUED", "SKIPPED"]
    reason: str | None = Field(default=None, max_length=2000)


class ClaimIn(BaseModel):
    owner: str = Field(pattern=OWNER_PATTERN, description="Worker id that will heartbeat and report the result.")
    run_ids: list[RunId] | None = Field(default=None, max_length=1000)
    states: States = Field(default_factory=lambda: list(DEFAULT_DRAIN_STATES))
    lease_seconds: LeaseSeconds = CLAIM_LEASE_SECONDS


class ClaimOut(BaseModel):
    run_id: str
    phase_id: str
    owner: str
    expires_at: UtcDateTime
    attempt_index: int
    initial_state: str


class HeartbeatIn(BaseModel):
    owner: str = Field(pattern=OWNER_PATTERN)
    lease_seconds: LeaseSeconds = CLAIM_LEASE_SECONDS


class HeartbeatOut(BaseModel):
    run_id: str
    phase_id: str
    expires_at: UtcDateTime


class ResultIn(BaseModel):
    owner: str = Field(pattern=OWNER_PATTERN)
    final_state: FinalState
    failure_reason: str | None = Field(default=None, max_length=20_000)
    # No upper bound here: the handler checks the phase's new total against the column and, if it does not
    # fit, still finishes the phase (FAILED, lease released) before answering 422.
    tokens_used: int | None = Field(default=None, ge=0, strict=True, description="Added to the phase's running total.")


class ReleaseIn(BaseModel):
    owner: str = Field(pattern=OWNER_PATTERN)


class PhaseStateOut(BaseModel):
    run_id: str
    phase_id: str
    state: str


class GroupStats(BaseModel):
    events: int
    success: int
    truncated: int


class TelemetrySummaryOut(BaseModel):
    run_id: str
    events: int
    success: int
    truncated: int
    by_category: dict[str, GroupStats]
    by_complexity: dict[str, GroupStats]


class ErrorOut(BaseModel):
    detail: str


#: Documented on every mutating endpoint: an unparseable body, a missing/wrong API key (checked first),
#: and a body over the size limit.
MUTATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "the request body could not be parsed"},
    401: {"model": ErrorOut, "description": "missing or wrong X-API-Key (checked before the body is read)"},
    413: {"model": ErrorOut, "description": "the request body is larger than AUTOPACK_API_MAX_BODY_BYTES"},
}
