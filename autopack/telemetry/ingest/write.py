"""The all-or-nothing write: batches inserted inside one transaction, every clash and bad row refused.

Any bad row (reported by line number), any number its column cannot hold, any call key already in the
database (another import that committed first included) rolls the whole transaction back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from autopack.db.models import TokenBudgetEscalationEvent, TokenEstimationV2Event, utcnow
from autopack.errors import AutopackError, InputError
from autopack.run_order import sorted_runs
from autopack.taxonomy import CATEGORIES, COMPLEXITIES, UNKNOWN
from autopack.telemetry.ingest.events import iter_events, source_of
from autopack.telemetry.ingest.rows import RowError

if TYPE_CHECKING:
    from autopack.db.handle import Database

#: Kinds of problem a refusal names, and rows named for each (the rest are counted).
MAX_REPORTED_ERRORS = 20
SHOWN_PLACES = 3
INSERT_CHUNK = 5000


@dataclass
class ImportReport:
    path: str
    format: str
    source: str
    rows: int
    run_ids: list[str]
    skipped: int = 0
    db_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "source": self.source, "rows": self.rows,
                "run_ids": self.run_ids, "skipped": self.skipped, "db_id": self.db_id, "notes": self.notes}


class _Errors:
    """The bad rows of one file: how many, and each kind of problem once, with the first rows that have it.

    A file whose every row lacks the same column says so in one phrase, not twenty times over.
    """

    def __init__(self) -> None:
        self.places: dict[str, list[str]] = {}  # problem → the first SHOWN_PLACES rows that have it
        self.counts: dict[str, int] = {}
        self.other = 0  # problems of kinds beyond the first MAX_REPORTED_ERRORS
        self.bad_rows = 0
        self._last: str | None = None

    def add(self, error: RowError) -> None:
        if error.where != self._last:  # a row's errors arrive together
            self.bad_rows += 1
            self._last = error.where
        places = self.places.get(error.message)
        if places is None:
            if len(self.places) >= MAX_REPORTED_ERRORS:
                self.other += 1
                return
            places = self.places[error.message] = []
        self.counts[error.message] = self.counts.get(error.message, 0) + 1
        if len(places) < SHOWN_PLACES:
            places.append(error.where)

    def __bool__(self) -> bool:
        return bool(self.places)

    def _described(self, message: str) -> str:
        places, count = self.places[message], self.counts[message]
        where = ", ".join(places) + (f" and {count - len(places):,} more" if count > len(places) else "")
        return f"{where}: {message}"

    def failure(self, path: Path) -> InputError:
        shown = "; ".join(self._described(message) for message in self.places)
        other = f"; … {self.other:,} more of other kinds" if self.other else ""
        return InputError(f"{path.name}: {self.bad_rows:,} bad row(s), nothing imported: {shown}{other}",
                          hint="fix the rows, map their columns with --map field=column, or give a missing field "
                               "with --set field=value")


def _escalation(event: Mapping[str, Any], cut_attempt: int) -> dict[str, Any]:
    """The ``token_budget_escalation_events`` row the executor would have written for the cut call: what marks
    the retry for every reader (``samples.escalated_retries``). Only the run, phase, attempt and the retry's
    ceiling are known from an import (``reason`` "import"; ``escalation_factor`` 0: not known)."""
    retry_ceiling = event["actual_max_tokens"] if event["actual_max_tokens"] is not None else event["selected_budget"]
    return {"run_id": event["run_id"], "phase_id": event["phase_id"], "timestamp": event["timestamp"],
            "attempt_index": cut_attempt, "reason": "import", "was_truncated": True, "output_utilization": None,
            "escalation_factor": 0.0, "base_value": int(retry_ceiling), "base_source": "import",
            "retry_max_tokens": int(retry_ceiling), "selected_budget": None, "actual_max_tokens": None,
            "tokens_used": None}


CALL_KEY = ("run_id", "phase_id", "attempt_index", "call_index")


class _Writer:
    """Inserts batches into the open transaction; rows whose call key exists already are left out.

    ``INSERT … ON CONFLICT DO NOTHING`` lets the unique call key find every clash: with a row already in
    the database (or committed meanwhile by a concurrent import of the same file: PostgreSQL makes this
    insert wait for that transaction, SQLite for its write lock), or with an earlier row of this file.
    The driver's row count says whether a batch went in whole; only if not are its rows looked up.
    """

    def __init__(self, connection: sa.Connection, source: str, now: datetime) -> None:
        self.table = TokenEstimationV2Event.__table__
        self.connection, self.source, self.now = connection, source, now
        self.postgres = connection.dialect.name == "postgresql"
        self.rows = 0
        self.run_ids: set[str] = set()
        self.clashes = 0
        #: values outside autopack's vocabulary (``taxonomy``), kept as written: kind → value → rows
        self.unknown: dict[str, dict[str, int]] = {"category": {}, "complexity": {}}
        self.first_clash: dict[str, Any] | None = None
        self._statement: Any = None
        self._order: list[tuple[str, Any]] = []  # SQLite's positional parameters, with their bind processors

    def _insert(self, events: list[dict[str, Any]]) -> int:
        """Insert, return how many rows went in: one precompiled statement through the driver's executemany,
        whose row count is exact (SQLAlchemy's multi-row form reports none on PostgreSQL) and which skips
        SQLAlchemy's per-row handling of compiled parameters. SQLite gets each value through the column
        type's own bind processor (timestamps stored as the ORM stores them); psycopg adapts Python values."""
        if self._statement is None:
            dialect = self.connection.dialect
            insert = (postgresql if self.postgres else sqlite).insert(self.table).values(
                {name: sa.bindparam(name) for name in events[0]}).on_conflict_do_nothing(index_elements=list(CALL_KEY))
            compiled = insert.compile(dialect=dialect)
            self._statement = str(compiled)
            if not self.postgres:
                self._order = [(name, self._bind_processor(name)) for name in (compiled.positiontup or [])]
        rows: Sequence[Any] = events if self.postgres else [
            tuple(event[name] if process is None else process(event[name]) for name, process in self._order)
            for event in events]
        return int(self.connection.exec_driver_sql(self._statement, rows).rowcount)  # errors wrapped as SQLAlchemy's

    def _escalations(self, rows: list[dict[str, Any]]) -> None:
        """The retries' escalation rows, in the same transaction; one per cut attempt (an attempt already
        marked, by the executor or by another call of the same retry, stays as it is)."""
        if not rows:
            return
        table = TokenBudgetEscalationEvent.__table__
        insert = (postgresql if self.postgres else sqlite).insert(table).on_conflict_do_nothing(
            index_elements=["run_id", "phase_id", "attempt_index"])
        self.connection.execute(insert, rows)

    def _bind_processor(self, name: str) -> Any:
        dialect = self.connection.dialect
        return self.table.c[name].type.dialect_impl(dialect).bind_processor(dialect)

    def write(self, batch: list[tuple[str, dict[str, Any], int | None]], errors: _Errors) -> None:
        c = self.table.c
        before = self.connection.execute(sa.select(sa.func.coalesce(sa.func.max(c.event_id), 0))).scalar_one()
        for _, event, _ in batch:
            for kind, known in (("category", CATEGORIES), ("complexity", COMPLEXITIES)):
                if event[kind] not in known:
                    self.unknown[kind][event[kind]] = self.unknown[kind].get(event[kind], 0) + 1
        inserted = self._insert([event for _, event, _ in batch])
        self.rows += inserted
        self.run_ids.update(event["run_id"] for _, event, _ in batch)
        self._escalations([_escalation(event, cut) for _, event, cut in batch if cut is not None])
        if inserted == len(batch):
            return
        stored = {tuple(r[:4]): r for r in self.connection.execute(
            sa.select(*(c[name] for name in CALL_KEY), c.event_id, c.source, c.created_at)
            .where(sa.tuple_(*(c[name] for name in CALL_KEY)).in_(
                [tuple(event[name] for name in CALL_KEY) for _, event, _ in batch])))}
        claimed: set[tuple[Any, ...]] = set()
        for where, event, _ in batch:
            key = tuple(event[name] for name in CALL_KEY)
            row = stored[key]
            ours = row.source == self.source and row.created_at == self.now
            if ours and row.event_id > before and key not in claimed:
                claimed.add(key)  # this row is the one that went in
            elif ours:
                errors.add(RowError(where, f"same call key {key} as an earlier row of this file"))
            else:
                self.clashes += 1
                self.first_clash = self.first_clash or event


def import_telemetry(
    path: Path | str,
    fmt: str,
    *,
    database: Database,
    mapping: Mapping[str, str] | None = None,
    defaults: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> ImportReport:
    """Stream the file into ``database`` (opened and guarded by the caller) in one transaction: every row or
    none."""
    file = Path(path)
    now = utcnow()
    events = iter_events(file, fmt, mapping=mapping, defaults=defaults, run_id=run_id, now=now)
    errors = _Errors()
    try:
        with database.engine.begin() as connection:
            writer = _Writer(connection, source_of(file, fmt), now)
            batch: list[tuple[str, dict[str, Any], int | None]] = []
            for item in events:
                if isinstance(item, RowError):
                    errors.add(item)
                elif not errors:  # after a bad row only validate: everything is rolled back anyway
                    batch.append(item)
                    if len(batch) >= INSERT_CHUNK:
                        writer.write(batch, errors)
                        batch.clear()
            if batch and not errors:
                writer.write(batch, errors)
            if errors:
                raise errors.failure(file)
            if writer.clashes:
                raise _clash(file, writer)
            if not writer.rows:
                raise InputError(f"{file.name}: no telemetry rows found", hint=f"is this really {fmt}?")
    except OperationalError as exc:
        if "locked" in str(exc.orig) or "busy" in str(exc.orig):
            raise DatabaseBusyError(
                f"{file.name}: the database stayed locked by another writer (another import?); nothing imported",
                hint="run the import again when the other write has finished",
            ) from exc
        raise
    return ImportReport(str(file), fmt, writer.source, writer.rows, sorted_runs(writer.run_ids), 0, str(database.db_id),
                        notes=_unknown_notes(writer.unknown))


def _unknown_notes(unknown: Mapping[str, Mapping[str, int]]) -> list[str]:
    """One line per kind of value autopack does not know: kept as written (its own group, never defaulted), and
    named so that a typo does not pass as a new group unseen."""
    notes = []
    for kind, values in unknown.items():
        if values:
            shown = ", ".join(f"{'none given' if v == UNKNOWN else repr(v)} ({n:,} row{'s' if n > 1 else ''})"
                              for v, n in sorted(values.items())[:5])
            more = f" and {len(values) - 5} more" if len(values) > 5 else ""
            known = ", ".join(CATEGORIES if kind == "category" else COMPLEXITIES)
            notes.append(f"unknown {kind} {shown}{more}: kept as written, calibrated as a group of its own "
                         f"(known: {known}); map another column with --map {kind}=COLUMN if this one is wrong")
    return notes


class DatabaseBusyError(AutopackError):
    """SQLite's single writer slot stayed taken for the whole busy timeout."""

    exit_code = 2


def _clash(file: Path, writer: _Writer) -> InputError:
    first = writer.first_clash or {}
    return InputError(
        f"{file.name}: {writer.clashes} row(s) collide with calls already in the database "
        f"(e.g. run_id={first.get('run_id')}, phase_id={first.get('phase_id')}); nothing imported",
        hint="already imported (or being imported right now)? pass --run-id to import under another run id",
    )
