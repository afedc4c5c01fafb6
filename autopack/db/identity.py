"""DB identity: which physical database is this process really using, and is it the right one?

``read_identity`` reports it (masked URL, file, id, revision, counts); ``guard`` refuses to let a command
write to a database that is unreachable, unmigrated, empty (unless allowed) or not the expected one.

The guard runs before every command, so it reads only what it decides on: the id, the schema revision
and whether any run, phase or estimation event exists (``EXISTS`` probes, constant time at 10⁶ events).
The per-state and per-category counts, a scan of every event, are for ``autopack db identity`` only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError, ProgrammingError

from autopack.db.engine import mask_url, parse_url
from autopack.db.migrate import (
    current_revision,
    foreign_database_error,
    head_revision,
    read_db_id,
    read_state,
    shared_database_error,
    sqlite_path,
)
from autopack.db.models import LlmUsageEvent, Phase, Run, TokenBudgetEscalationEvent, TokenEstimationV2Event
from autopack.errors import (
    DatabaseUrlError,
    DbIdentityMismatchError,
    EmptyDatabaseError,
    SchemaNotMigratedError,
)
from autopack.logging import get_logger
from autopack.taxonomy import canonical_category, canonical_complexity

if TYPE_CHECKING:
    from autopack.db.handle import Database

UPGRADE_HINT = "run `autopack db upgrade` first"

log = get_logger("autopack.db.identity")


@dataclass
class IdentityReport:
    db_id: str
    url: str
    dialect: str
    schema_revision: str
    sqlite_file: str | None = None
    sqlite_size_bytes: int | None = None
    sqlite_modified_at: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    estimation: dict[str, Any] = field(default_factory=dict)
    #: No run, no phase and no estimation event (an existence probe; counts may be left out).
    empty: bool = False

    @property
    def is_empty(self) -> bool:
        return self.empty

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _open(database: Database) -> tuple[str, sa.Engine]:
    resolved = database.url
    parse_url(resolved)
    path = sqlite_path(resolved)
    if path is not None and not path.exists():
        raise SchemaNotMigratedError(f"no database file at {path}", hint=f"{UPGRADE_HINT} to create it")
    return resolved, database.reading().engine  # a database the guard refuses stays as it was




def schema_problem(revision: str | None, where: str) -> SchemaNotMigratedError | None:
    """Why the schema at ``revision`` is not usable by this code (none, or behind its head), said of ``where``
    (a masked URL, or "the database" where the URL must not be shown); None when it is."""
    if revision is None:
        return SchemaNotMigratedError(f"{where} has no autopack schema", hint=UPGRADE_HINT)
    if revision != head_revision():
        return SchemaNotMigratedError(f"{where} is at schema revision {revision}, the code needs {head_revision()}",
                                      hint=UPGRADE_HINT)
    return None


def read_identity(database: Database, *, counts: bool = True) -> IdentityReport:
    """Everything needed to tell this database from any other; read-only.

    ``counts=False`` skips the row counts (a scan of every event) and only probes for emptiness.
    """
    resolved, engine = _open(database)
    try:
        revision = current_revision(engine)
        if revision is None:
            with engine.connect() as connection:
                state = read_state(connection)
            if state.legacy:
                raise SchemaNotMigratedError(
                    f"{mask_url(resolved)} was written by the original Autopack", hint=UPGRADE_HINT
                )
            if state.foreign_tables:  # `db upgrade` would refuse it too: the same line, not "run db upgrade"
                raise foreign_database_error(mask_url(resolved), state.foreign_tables)
            shared = shared_database_error(mask_url(resolved), state)
            if shared is not None:
                raise shared
        problem = schema_problem(revision, mask_url(resolved))
        if problem is not None:
            raise problem
        assert revision is not None  # schema_problem refuses a database without one
        with engine.connect() as connection:
            db_id = read_db_id(connection)
            empty = _is_empty(connection)
            counts_, estimation = _counts(connection) if counts else ({}, {})
    except OperationalError as exc:
        raise DatabaseUrlError(
            f"cannot open the database at {mask_url(resolved)}: {exc.orig}",
            hint="check DATABASE_URL and that the server is running",
        ) from exc
    except ProgrammingError as exc:
        raise SchemaNotMigratedError(f"{mask_url(resolved)}: {exc.orig}", hint=UPGRADE_HINT) from exc
    if db_id is None:
        raise SchemaNotMigratedError(f"{mask_url(resolved)} has no database id", hint=UPGRADE_HINT)

    report = IdentityReport(
        db_id=db_id,
        url=mask_url(resolved),
        dialect=engine.dialect.name,
        schema_revision=revision,
        counts=counts_,
        estimation=estimation,
        empty=empty,
    )
    path = sqlite_path(resolved)
    if path is not None:
        stat = Path(path).stat()
        report.sqlite_file = str(path)
        report.sqlite_size_bytes = stat.st_size
        report.sqlite_modified_at = datetime.fromtimestamp(stat.st_mtime, UTC).isoformat(timespec="seconds")
    return report


def _is_empty(connection: sa.Connection) -> bool:
    """No run, phase or estimation event: three ``EXISTS`` probes, each stops at the first row."""
    probes = [sa.exists().select_from(model) for model in (Run, Phase, TokenEstimationV2Event)]
    return not connection.execute(sa.select(sa.or_(*probes))).scalar_one()


def _counts(connection: sa.Connection) -> tuple[dict[str, Any], dict[str, Any]]:
    def count(model: type) -> int:
        return connection.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()

    phases = dict(connection.execute(sa.select(Phase.state, sa.func.count()).group_by(Phase.state)).all())
    counts: dict[str, Any] = {
        "runs": count(Run),
        "phases": {str(state): n for state, n in sorted(phases.items(), key=lambda kv: str(kv[0]))},
        "llm_usage_events": count(LlmUsageEvent),
        "token_estimation_v2_events": count(TokenEstimationV2Event),
        "token_budget_escalation_events": count(TokenBudgetEscalationEvent),
    }
    ev = TokenEstimationV2Event
    total, successes, truncated = connection.execute(
        sa.select(
            sa.func.count(),
            sa.func.count().filter(ev.success.is_(True)),
            sa.func.count().filter(ev.truncated.is_(True)),
        )
    ).one()
    by_category: dict[str, int] = {}
    by_complexity: dict[str, int] = {}
    # Group on the stored spellings in SQL (a handful of rows), then merge spellings in Python.
    grouped = connection.execute(
        sa.select(ev.category, ev.complexity, sa.func.count()).where(ev.success.is_(True))
        .group_by(ev.category, ev.complexity)
    ).all()
    for category, complexity, n in grouped:
        by_category[canonical_category(category)] = by_category.get(canonical_category(category), 0) + n
        key = canonical_complexity(complexity)
        by_complexity[key] = by_complexity.get(key, 0) + n
    estimation = {
        "total": total,
        "success_pct": round(100.0 * successes / total, 1) if total else 0.0,
        "truncated_pct": round(100.0 * truncated / total, 1) if total else 0.0,
        "success_by_category": dict(sorted(by_category.items())),
        "success_by_complexity": dict(sorted(by_complexity.items())),
    }
    return counts, estimation


def guard(
    database: Database,
    *,
    expect_db_id: str | None = None,
    allow_empty: bool = False,
    counts: bool = False,
) -> IdentityReport:
    """Refuse (raise) unless the database is reachable, migrated, non-empty and the expected one.

    Cheap by default (no counts, see the module docstring); ``counts=True`` adds ``read_identity``'s.
    """
    report = read_identity(database, counts=counts)
    if expect_db_id and expect_db_id != report.db_id:
        raise DbIdentityMismatchError(
            f"DB_MISMATCH: {report.url} has database id {report.db_id}, expected {expect_db_id}",
            hint="point DATABASE_URL at the intended database or fix AUTOPACK_EXPECTED_DB_ID",
        )
    if report.is_empty and not allow_empty:
        raise EmptyDatabaseError(
            f"{report.url} is empty (0 runs, 0 phases, 0 estimation events)",
            hint="wrong DATABASE_URL? create runs first, or pass --allow-empty-db",
        )
    log.debug("identity guard passed: id=%s url=%s", report.db_id, report.url)  # once per command or pipeline run
    return report


def format_identity(report: IdentityReport) -> str:
    """The human banner (the seed's db_identity_check output, with the file size it promised)."""
    lines = [
        "=" * 70,
        "DATABASE IDENTITY",
        "=" * 70,
        f"URL:             {report.url}",
        f"Dialect:         {report.dialect}",
    ]
    if report.sqlite_file:
        lines += [
            f"SQLite file:     {report.sqlite_file}",
            f"File size:       {report.sqlite_size_bytes:,} bytes",
            f"Modified:        {report.sqlite_modified_at}",
        ]
    c = report.counts
    phases = c.get("phases", {})
    lines += [
        f"Database id:     {report.db_id}",
        f"Schema revision: {report.schema_revision}",
        "",
        f"Runs:            {c.get('runs', 0)}",
        f"Phases:          {sum(phases.values())} total",
    ]
    for state in ("COMPLETE", "FAILED", "QUEUED", "EXECUTING"):
        lines.append(f"  {state:<14} {phases.get(state, 0)}")
    for state, n in phases.items():
        if state not in ("COMPLETE", "FAILED", "QUEUED", "EXECUTING"):
            lines.append(f"  {state:<14} {n}")
    e = report.estimation
    lines += [
        f"LLM usage events:            {c.get('llm_usage_events', 0)}",
        f"Token estimation v2 events:  {c.get('token_estimation_v2_events', 0)}"
        f"  (success {e.get('success_pct', 0.0)}%, truncated {e.get('truncated_pct', 0.0)}%)",
        f"Budget escalation events:    {c.get('token_budget_escalation_events', 0)}",
    ]
    if e.get("success_by_category"):
        lines.append("Successful samples by category:")
        lines += [f"  {k:<18} {v}" for k, v in e["success_by_category"].items()]
        lines.append("Successful samples by complexity:")
        lines += [f"  {k:<18} {v}" for k, v in e["success_by_complexity"].items()]
    lines.append("=" * 70)
    return "\n".join(lines)
