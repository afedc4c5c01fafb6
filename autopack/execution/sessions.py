"""Batch-drain session state, and its round trip through ``drain_sessions``/``drain_results``.

The original kept sessions in JSON files whose ``save()`` crashed once three of its set fields were
non-empty (reference §10.19) and that no test covered. Here the state is a dataclass with a lossless
``to_dict``/``from_dict`` and a store that writes it to the database after every phase, so ``--resume``
continues exactly where an interrupted session stopped.

A running session is held by its drain through an owner lease on the row (renewed with every save and by the
drain's heartbeat). ``--resume`` claims a session with one conditional UPDATE on that owner, so two drains
started at once never continue the same session. URLs stored with a session lose their credentials first.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa

from autopack.db.engine import rowcount
from autopack.db.models import DrainResult, DrainSession, utcnow
from autopack.errors import AutopackError
from autopack.execution.triage import (
    RC_FAILED,
    RC_INTERRUPTED,
    STAGE_TRUNCATION,
    TIMEOUT_RETURNCODES,
    TriageLimits,
    TriageView,
    failure_fingerprint,
    fingerprint_stops_run,
    sample_is_promising,
)
from autopack.run_order import sorted_runs
from autopack.url_credentials import split_userinfo

if TYPE_CHECKING:
    from autopack.db.handle import Database

STATUS_RUNNING = "running"
STATUS_INTERRUPTED = "interrupted"
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
#: A ``running`` session whose owner lease expired: its drain died without saving (``kill -9``, a lost host).
#: Shown for such a row (``shown_status``) and stored once a later drain notices it (``mark_abandoned``);
#: ``--resume`` continues it like an interrupted one.
STATUS_ABANDONED = "abandoned"

#: A drain_results row with this final state records an attempt we gave back (Ctrl-C): it is kept for the
#: record but is not an outcome, so it counts toward no limit and a resumed session drains the phase again.
FINAL_INTERRUPTED = "INTERRUPTED"
#: The executor process died (killed, crashed) mid-phase; the phase was released, not failed.
FINAL_WORKER_LOST = "WORKER_LOST"
#: The lease expired or was taken over while the phase ran; the other owner's result stands.
FINAL_LEASE_LOST = "LEASE_LOST"

#: How long a session stays held by a drain that stopped renewing it (crashed, or its host went away).
DEFAULT_SESSION_LEASE_SECONDS = 120.0


class SessionLostError(AutopackError):
    """Another drain took this session over (its lease had expired): this drain must stop writing to it."""

    exit_code = 4


_URL = re.compile(r"\b[a-z][a-z0-9+.\-]*://[^\s'\"<>]+", re.IGNORECASE)
_SECRET_QUERY_KEY = re.compile(r"key|token|secret|passw|pwd|sig|auth|credential", re.IGNORECASE)


def strip_url_credentials(text: str) -> str:
    """Every URL in ``text`` without ``user:password@`` and with secret-looking query values masked."""

    def clean(match: re.Match[str]) -> str:
        url = match.group(0)
        split = split_userinfo(url)  # up to the last '@': a raw '@' or '/' in a password cannot cut it short
        bare = f"{url.split('://', 1)[0]}://{split[2][1:]}" if split else url
        try:
            parts = urlsplit(bare)
        except ValueError:
            return url.split("://", 1)[0] + "://***"
        query = parts.query
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_QUERY_KEY.search(k) for k, _ in pairs):
            query = urlencode([(k, "***" if _SECRET_QUERY_KEY.search(k) else v) for k, v in pairs])
        if bare == url and query == parts.query:
            return url
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))

    return _URL.sub(clean, text) if "://" in text else text


def without_credentials(value: Any) -> Any:
    """``value`` (JSON-like) with ``strip_url_credentials`` applied to every string in it."""
    if isinstance(value, str):
        return strip_url_credentials(value)
    if isinstance(value, dict):
        return {k: without_credentials(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_credentials(v) for v in value]
    return value


def new_session_id(now: datetime | None = None) -> str:
    """``batch-drain-YYYYMMDD-HHMMSS-xxxx``: the original's form plus a suffix, so two drains started in
    the same second (several workers on one database) never collide."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"batch-drain-{stamp}-{secrets.token_hex(2)}"


@dataclass
class DrainOutcome:
    """One phase attempt as the drain saw it (one ``drain_results`` row)."""

    run_id: str
    phase_id: str
    final_state: str
    success: bool
    phase_index: int | None = None
    attempt_index: int = 0
    worker: str | None = None
    initial_state: str | None = None
    error_message: str | None = None
    returncode: int | None = None
    failure_stage: str | None = None
    failure_fingerprint: str | None = None
    telemetry_events: int = 0
    llm_calls: int = 0
    reached_llm_boundary: bool = False
    zero_yield_reason: str | None = None
    duration_seconds: float = 0.0
    timestamp: datetime = field(default_factory=utcnow)
    #: Finished from a call an earlier execution recorded (no new call; its event counts). Not kept in drain_results.
    recorded_call: bool = False
    #: Database id of the saved row (None until saved).
    row_id: int | None = None

    def __post_init__(self) -> None:
        if self.failure_fingerprint is None and not self.success and self.counts and not self.truncation:
            self.failure_fingerprint = failure_fingerprint(self.final_state, self.returncode, self.error_message)

    @property
    def truncation(self) -> bool:
        """The phase failed only because its output was cut at the ceiling: a budget experiment's expected
        outcome (a censored sample), so it gets no failure fingerprint and counts toward no stop rule."""
        return self.failure_stage == STAGE_TRUNCATION

    @property
    def counts(self) -> bool:
        """False for an attempt given back on Ctrl-C: it is no outcome and no attempt of the phase."""
        return self.final_state != FINAL_INTERRUPTED

    @property
    def timed_out(self) -> bool:
        return self.returncode in TIMEOUT_RETURNCODES

    @property
    def key(self) -> tuple[str, str]:
        return (self.run_id, self.phase_id)

    @property
    def telemetry_yield_per_minute(self) -> float | None:
        if self.telemetry_events > 0 and self.duration_seconds > 0:
            return round(self.telemetry_events / self.duration_seconds * 60, 2)
        return None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["timestamp"] = self.timestamp.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DrainOutcome:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("timestamp"), str):
            values["timestamp"] = datetime.fromisoformat(values["timestamp"])
        return cls(**values)


@dataclass
class SessionState:
    """Everything a drain session knows; updated by ``record`` after each phase."""

    session_id: str
    batch_size: int
    started_at: datetime = field(default_factory=utcnow)
    completed_at: datetime | None = None
    status: str = STATUS_RUNNING
    stop_reason: str | None = None
    db_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    total_processed: int = 0
    total_success: int = 0
    total_failed: int = 0
    total_timeouts: int = 0
    total_telemetry_events: int = 0
    consecutive_zero_yield: int = 0
    fingerprint_counts: dict[str, int] = field(default_factory=dict)
    stopped_fingerprints: set[str] = field(default_factory=set)
    stopped_runs: set[str] = field(default_factory=set)
    sampled_runs: set[str] = field(default_factory=set)
    promising_runs: set[str] = field(default_factory=set)
    deprioritized_runs: set[str] = field(default_factory=set)
    results: list[DrainOutcome] = field(default_factory=list)
    #: When the holding drain's owner lease runs out (None when no drain holds the session).
    lease_expires_at: datetime | None = None

    def shown_status(self, now: datetime | None = None) -> str:
        """The status as an operator should read it: ``abandoned`` once a running session's lease expired."""
        return shown_status(self.status, self.lease_expires_at, now or utcnow())

    def status_line(self, now: datetime | None = None) -> str:
        """``abandoned (owner lease expired at …)`` for a dead drain's session, else the status and stop reason."""
        status = self.shown_status(now)
        if status == STATUS_ABANDONED and self.status == STATUS_RUNNING and self.lease_expires_at is not None:
            return f"{status} (owner lease expired at {self.lease_expires_at.isoformat(timespec='seconds')})"
        return status + (f" ({self.stop_reason})" if self.stop_reason else "")

    # --- the rules ---------------------------------------------------------------------------------

    def record(self, outcome: DrainOutcome, limits: TriageLimits) -> list[str]:
        """Add one phase attempt and apply the triage rules; returns the notes worth printing.

        Same order as the original: sample evaluation sees the fingerprint counts *before* this result.
        Unlike the original, nothing is skipped when a stop rule fires (it saved nothing on that path).
        """
        self.results.append(outcome)
        if not outcome.counts:
            return [f"{outcome.run_id}/{outcome.phase_id}: given back (not counted)"]
        notes: list[str] = []
        self.total_processed += 1
        if outcome.run_id not in self.sampled_runs:
            self.sampled_runs.add(outcome.run_id)
            promising = sample_is_promising(
                success=outcome.success,
                telemetry_events=outcome.telemetry_events,
                timed_out=outcome.timed_out,
                fingerprint=outcome.failure_fingerprint,
                fingerprint_counts=self.fingerprint_counts,
            )
            if promising:
                self.promising_runs.add(outcome.run_id)
                notes.append(f"[SAMPLE-OK] {outcome.run_id}: promising (continue draining)")
            else:
                self.deprioritized_runs.add(outcome.run_id)
                notes.append(f"[SAMPLE-SKIP] {outcome.run_id}: deprioritized (repeating failure fingerprint)")
        if outcome.success:
            self.total_success += 1
        else:
            self.total_failed += 1
        if outcome.timed_out:
            self.total_timeouts += 1
        if outcome.telemetry_events > 0:
            self.total_telemetry_events += outcome.telemetry_events
            self.consecutive_zero_yield = 0
        else:
            self.consecutive_zero_yield += 1
        fingerprint = outcome.failure_fingerprint
        if fingerprint and not outcome.success:
            self.fingerprint_counts[fingerprint] = self.fingerprint_counts.get(fingerprint, 0) + 1
            in_run = self.run_fingerprint_count(outcome.run_id, fingerprint)
            if fingerprint_stops_run(in_run, limits):
                self.stopped_fingerprints.add(fingerprint)
                self.stopped_runs.add(outcome.run_id)
                notes.append(f"[STOP] fingerprint repeated {in_run}x in run {outcome.run_id}: run stopped")
        return notes

    def run_fingerprint_count(self, run_id: str, fingerprint: str) -> int:
        """How often ``fingerprint`` occurred in this run within this session (what the stop rule counts).

        ``fingerprint_counts`` are session-wide (the sample-first triage and the report read them); the stop
        rule is per run, so it counts the run's own results (kept with the session, so a resume counts the same).
        """
        return sum(1 for r in self.results
                   if r.run_id == run_id and r.failure_fingerprint == fingerprint and r.counts and not r.success)

    def attempts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for result in self.results:
            if result.counts:
                counts[result.key] = counts.get(result.key, 0) + 1
        return counts

    def timeouts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for result in self.results:
            if result.counts and result.timed_out:
                counts[result.run_id] = counts.get(result.run_id, 0) + 1
        return counts

    def view(self) -> TriageView:
        return TriageView(
            sampled_runs=frozenset(self.sampled_runs),
            promising_runs=frozenset(self.promising_runs),
            deprioritized_runs=frozenset(self.deprioritized_runs),
            stopped_runs=frozenset(self.stopped_runs),
            attempts=self.attempts(),
            timeouts=self.timeouts(),
        )

    @property
    def any_failed(self) -> bool:
        return self.total_failed > 0

    # --- serialisation ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only: sets become sorted lists, datetimes ISO strings."""
        return {
            "session_id": self.session_id,
            "batch_size": self.batch_size,
            "started_at": self.started_at.isoformat(),
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
            "status": self.status,
            "stop_reason": self.stop_reason,
            "db_id": self.db_id,
            "params": dict(self.params),
            "total_processed": self.total_processed,
            "total_success": self.total_success,
            "total_failed": self.total_failed,
            "total_timeouts": self.total_timeouts,
            "total_telemetry_events": self.total_telemetry_events,
            "consecutive_zero_yield": self.consecutive_zero_yield,
            "fingerprint_counts": dict(self.fingerprint_counts),
            "stopped_fingerprints": sorted(self.stopped_fingerprints),
            "stopped_runs": sorted_runs(self.stopped_runs),
            "sampled_runs": sorted_runs(self.sampled_runs),
            "promising_runs": sorted_runs(self.promising_runs),
            "deprioritized_runs": sorted_runs(self.deprioritized_runs),
            "results": [r.to_dict() for r in self.results],
            "lease_expires_at": self.lease_expires_at.isoformat() if self.lease_expires_at else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionState:
        def when(value: Any) -> datetime | None:
            return datetime.fromisoformat(value) if isinstance(value, str) else value

        return cls(
            session_id=data["session_id"],
            batch_size=int(data["batch_size"]),
            started_at=when(data["started_at"]) or utcnow(),
            completed_at=when(data.get("completed_at")),
            status=data.get("status", STATUS_RUNNING),
            stop_reason=data.get("stop_reason"),
            db_id=data.get("db_id"),
            params=dict(data.get("params") or {}),
            total_processed=int(data.get("total_processed", 0)),
            total_success=int(data.get("total_success", 0)),
            total_failed=int(data.get("total_failed", 0)),
            total_timeouts=int(data.get("total_timeouts", 0)),
            total_telemetry_events=int(data.get("total_telemetry_events", 0)),
            consecutive_zero_yield=int(data.get("consecutive_zero_yield", 0)),
            fingerprint_counts={str(k): int(v) for k, v in (data.get("fingerprint_counts") or {}).items()},
            stopped_fingerprints=set(data.get("stopped_fingerprints") or ()),
            stopped_runs=set(data.get("stopped_runs") or ()),
            sampled_runs=set(data.get("sampled_runs") or ()),
            promising_runs=set(data.get("promising_runs") or ()),
            deprioritized_runs=set(data.get("deprioritized_runs") or ()),
            results=[DrainOutcome.from_dict(r) for r in data.get("results") or ()],
            lease_expires_at=when(data.get("lease_expires_at")),
        )


def process_marker() -> dict[str, Any]:
    """Who runs a session (so ``--resume`` never takes over a session that is still alive)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SessionStore:
    """Saves and loads ``SessionState`` in ``drain_sessions``/``drain_results`` (one transaction each).

    A store with an ``owner`` holds the sessions it saves: each save renews the owner lease, and a save of a
    session another drain has taken over raises ``SessionLostError`` instead of writing.
    """

    def __init__(
        self, db: Database, *, owner: str | None = None, lease_seconds: float = DEFAULT_SESSION_LEASE_SECONDS
    ) -> None:
        self.db = db
        self.owner = owner
        self.lease_seconds = lease_seconds

    def save(self, state: SessionState) -> None:
        """Upsert the session row and insert the results not saved yet, atomically."""
        now = utcnow()
        with self.db.session() as db:
            if self.owner is not None:
                self._check_held(db, state.session_id, now)  # also locks the row for this transaction
            row = db.get(DrainSession, state.session_id)
            if row is None:
                row = DrainSession(id=state.session_id)
                db.add(row)
            row.started_at = state.started_at
            row.completed_at = state.completed_at
            row.updated_at = now
            row.status = state.status
            row.stop_reason = strip_url_credentials(state.stop_reason) if state.stop_reason else None
            row.db_id = state.db_id
            row.batch_size = state.batch_size
            row.params = without_credentials(dict(state.params))
            row.total_processed = state.total_processed
            row.total_success = state.total_success
            row.total_failed = state.total_failed
            row.total_timeouts = state.total_timeouts
            row.total_telemetry_events = state.total_telemetry_events
            row.consecutive_zero_yield = state.consecutive_zero_yield
            row.fingerprint_counts = dict(state.fingerprint_counts)
            row.stopped_fingerprints = sorted(state.stopped_fingerprints)
            row.stopped_runs = sorted_runs(state.stopped_runs)
            row.sampled_runs = sorted_runs(state.sampled_runs)
            row.promising_runs = sorted_runs(state.promising_runs)
            row.deprioritized_runs = sorted_runs(state.deprioritized_runs)
            held = self.owner is not None and state.status == STATUS_RUNNING
            row.owner = self.owner if held else None
            row.lease_expires_at = now + timedelta(seconds=self.lease_seconds) if held else None
            state.lease_expires_at = row.lease_expires_at
            db.flush()
            pending = [(outcome, _result_row(state.session_id, outcome)) for outcome in state.results if outcome.row_id is None]
            db.add_all([row for _, row in pending])
            db.flush()
            ids = [(outcome, result_row.id) for outcome, result_row in pending]
        for outcome, row_id in ids:  # only after the commit succeeded
            outcome.row_id = row_id

    def renew(self, session_id: str) -> None:
        """Extend the owner lease of a held session (the drain's heartbeat); ``SessionLostError`` if taken over."""
        with self.db.session() as db:
            self._check_held(db, session_id, utcnow())

    def _check_held(self, db: Any, session_id: str, now: datetime) -> None:
        held = db.execute(
            sa.update(DrainSession)
            .where(DrainSession.id == session_id, DrainSession.owner == self.owner)
            .values(lease_expires_at=now + timedelta(seconds=self.lease_seconds))
            .execution_options(synchronize_session=False)
        ).rowcount
        if held != 1 and db.get(DrainSession, session_id) is not None:
            raise SessionLostError(
                f"drain session {session_id} was taken over by another drain (its lease had expired)",
                hint="this drain stopped; the other one continues the session",
            )

    def load(self, session_id: str) -> SessionState | None:
        with self.db.session() as db:
            row = db.get(DrainSession, session_id)
            if row is None:
                return None
            results = db.scalars(
                sa.select(DrainResult).where(DrainResult.session_id == session_id).order_by(DrainResult.id)
            ).all()
            return SessionState(
                session_id=row.id,
                batch_size=row.batch_size,
                started_at=row.started_at,
                completed_at=row.completed_at,
                status=row.status,
                stop_reason=row.stop_reason,
                db_id=row.db_id,
                params=dict(row.params or {}),
                total_processed=row.total_processed,
                total_success=row.total_success,
                total_failed=row.total_failed,
                total_timeouts=row.total_timeouts,
                total_telemetry_events=row.total_telemetry_events,
                consecutive_zero_yield=row.consecutive_zero_yield,
                fingerprint_counts={str(k): int(v) for k, v in (row.fingerprint_counts or {}).items()},
                stopped_fingerprints=set(row.stopped_fingerprints or ()),
                stopped_runs=set(row.stopped_runs or ()),
                sampled_runs=set(row.sampled_runs or ()),
                promising_runs=set(row.promising_runs or ()),
                deprioritized_runs=set(row.deprioritized_runs or ()),
                results=[_outcome(r) for r in results],
                lease_expires_at=row.lease_expires_at,
            )

    def mark_abandoned(self, noticed_by: str) -> list[tuple[str, datetime]]:
        """Store ``abandoned`` (with when its lease expired) on every running session whose owner lease expired.

        Each UPDATE is conditional on the lease seen, so a drain that renews meanwhile keeps its session (and a
        late drain's next save writes ``running`` again). Returns (session id, lease expiry) of those marked.
        """
        now = utcnow()
        with self.db.session() as db:
            rows = db.execute(
                sa.select(DrainSession.id, DrainSession.lease_expires_at)
                .where(DrainSession.status == STATUS_RUNNING, DrainSession.completed_at.is_(None),
                       DrainSession.lease_expires_at < now)
                .order_by(DrainSession.started_at, DrainSession.id)
            ).all()
            marked: list[tuple[str, datetime]] = []
            for session_id, expired in rows:
                if expired is None:  # excluded by the query; typed as optional
                    continue
                result = db.execute(
                    sa.update(DrainSession)
                    .where(DrainSession.id == session_id, DrainSession.status == STATUS_RUNNING,
                           DrainSession.lease_expires_at == expired)
                    .values(status=STATUS_ABANDONED, updated_at=now,
                            stop_reason=f"{abandoned_reason(expired)}; noticed by drain {noticed_by}")
                    .execution_options(synchronize_session=False)
                )
                if rowcount(result) == 1:
                    marked.append((session_id, expired))
        return marked

    def recent(self, limit: int) -> list[SessionState]:
        """The newest ``limit`` sessions, newest first, with their counts and lease (their results not loaded)."""
        with self.db.session() as db:
            rows = db.scalars(sa.select(DrainSession)
                              .order_by(DrainSession.started_at.desc(), DrainSession.id.desc()).limit(limit)).all()
            return [SessionState(session_id=row.id, batch_size=row.batch_size, started_at=row.started_at,
                                 completed_at=row.completed_at, status=row.status, stop_reason=row.stop_reason,
                                 db_id=row.db_id, total_processed=row.total_processed, total_success=row.total_success,
                                 total_failed=row.total_failed, total_timeouts=row.total_timeouts,
                                 total_telemetry_events=row.total_telemetry_events,
                                 lease_expires_at=row.lease_expires_at) for row in rows]

    def claim_resumable(self) -> SessionState | None:
        """Take over the newest unfinished session nobody holds; None if there is none.

        Held means: an owner whose lease has not expired and whose process (on this host) is alive, or, for a
        session saved without an owner, a ``running`` status with a live process. The take-over is one
        conditional UPDATE on the owner seen, so of two drains resuming at once exactly one gets the session.
        A session whose drain died (``abandoned``, stored or shown) records the take-over in its ``params``
        (``taken_over``: when, from which status, when the dead drain's lease expired).
        """
        if self.owner is None:
            raise ValueError("claiming a session needs a store with an owner")
        now = utcnow()
        with self.db.session() as db:
            rows = db.execute(
                sa.select(DrainSession.id, DrainSession.status, DrainSession.params, DrainSession.owner,
                          DrainSession.lease_expires_at)
                .where(DrainSession.completed_at.is_(None))
                .order_by(DrainSession.started_at.desc(), DrainSession.id.desc())
                .limit(50)
            ).all()
        for session_id, status, params, owner, expires in rows:
            if _held(status, params or {}, owner, expires, now):
                continue
            seen = DrainSession.owner.is_(None) if owner is None else DrainSession.owner == owner
            values: dict[str, Any] = {"owner": self.owner, "status": STATUS_RUNNING, "updated_at": now,
                                      "lease_expires_at": now + timedelta(seconds=self.lease_seconds)}
            if shown_status(status, expires, now) == STATUS_ABANDONED:
                values["params"] = taken_over(params or {}, now, expires)
            with self.db.session() as db:
                result = db.execute(
                    sa.update(DrainSession)
                    .where(DrainSession.id == session_id, DrainSession.completed_at.is_(None), seen)
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
            if rowcount(result) == 1:
                return self.load(session_id)
        return None


def shown_status(status: str, lease_expires_at: datetime | None, now: datetime) -> str:
    """``abandoned`` for a ``running`` session whose owner lease expired before ``now``, else ``status``."""
    if status == STATUS_RUNNING and lease_expires_at is not None and lease_expires_at < now:
        return STATUS_ABANDONED
    return status


def abandoned_reason(lease_expires_at: datetime) -> str:
    return f"owner lease expired at {lease_expires_at.isoformat(timespec='seconds')}"


def taken_over(params: dict[str, Any], now: datetime, lease_expires_at: datetime | None) -> dict[str, Any]:
    """``params`` with one more ``taken_over`` entry: a resume continued a session its drain had abandoned."""
    entry = {"at": now.isoformat(timespec="seconds"), "status": STATUS_ABANDONED,
             "lease_expired_at": lease_expires_at.isoformat(timespec="seconds") if lease_expires_at else None}
    return {**params, "taken_over": [*(params.get("taken_over") or []), entry]}


def _held(status: str, params: dict[str, Any], owner: str | None, expires: datetime | None, now: datetime) -> bool:
    if owner is None:
        return status == STATUS_RUNNING and _still_running(params)
    if expires is not None and expires < now:
        return False
    return not _process_dead(params)


def _process_dead(params: dict[str, Any]) -> bool:
    """True only when the session's process is known to be gone (same host, pid not alive)."""
    marker = params.get("process") or {}
    return marker.get("host") == socket.gethostname() and isinstance(marker.get("pid"), int) and not _pid_alive(marker["pid"])


def _still_running(params: dict[str, Any]) -> bool:
    marker = params.get("process") or {}
    return marker.get("host") == socket.gethostname() and isinstance(marker.get("pid"), int) and _pid_alive(marker["pid"])


def _result_row(session_id: str, outcome: DrainOutcome) -> DrainResult:
    return DrainResult(
        session_id=session_id,
        run_id=outcome.run_id,
        phase_id=outcome.phase_id,
        phase_index=outcome.phase_index,
        attempt_index=outcome.attempt_index,
        worker=outcome.worker,
        initial_state=outcome.initial_state,
        final_state=outcome.final_state,
        success=outcome.success,
        error_message=strip_url_credentials(outcome.error_message) if outcome.error_message else None,
        failure_fingerprint=outcome.failure_fingerprint,
        telemetry_events_collected=outcome.telemetry_events,
        telemetry_yield_per_minute=outcome.telemetry_yield_per_minute,
        llm_calls=outcome.llm_calls,
        reached_llm_boundary=outcome.reached_llm_boundary,
        zero_yield_reason=outcome.zero_yield_reason,
        duration_seconds=outcome.duration_seconds,
        timestamp=outcome.timestamp,
    )


def _outcome(row: DrainResult) -> DrainOutcome:
    return DrainOutcome(
        run_id=row.run_id,
        phase_id=row.phase_id,
        final_state=row.final_state,
        success=row.success,
        phase_index=row.phase_index,
        attempt_index=row.attempt_index,
        worker=row.worker,
        initial_state=row.initial_state,
        error_message=row.error_message,
        returncode=_returncode(row),
        failure_fingerprint=row.failure_fingerprint,
        # a counted failure saved without a fingerprint can only be a truncation (every other one gets one)
        failure_stage=STAGE_TRUNCATION if _saved_truncation(row) else None,
        telemetry_events=row.telemetry_events_collected,
        llm_calls=row.llm_calls,
        reached_llm_boundary=row.reached_llm_boundary,
        zero_yield_reason=row.zero_yield_reason,
        duration_seconds=row.duration_seconds or 0.0,
        timestamp=row.timestamp,
        row_id=row.id,
    )


def _saved_truncation(row: DrainResult) -> bool:
    return not row.success and row.failure_fingerprint is None and row.final_state != FINAL_INTERRUPTED


def _returncode(row: DrainResult) -> int | None:
    """The table keeps no return code; the fingerprint's rc bucket (always written on failure) holds it."""
    if row.success:
        return 0
    if row.final_state == FINAL_INTERRUPTED:
        return RC_INTERRUPTED
    if _saved_truncation(row):
        return RC_FAILED  # the phase failed on its cut output (no fingerprint keeps the rc bucket)
    bucket = (row.failure_fingerprint or "").split("|")
    if len(bucket) > 1:
        token = bucket[1]
        if token == "timeout":
            return -1
        if token == "timeout143":
            return 143
        if token.startswith("rc") and token[2:].lstrip("-").isdigit():
            return int(token[2:])
    return None
