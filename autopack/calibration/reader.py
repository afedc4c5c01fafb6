"""Read ``token_estimation_v2_events`` for calibration: one numeric scan, texts once per distinct value.

10⁶ events must cost about what a plain SELECT into numpy costs (bench/bench_calibration_scale.py
measures the ratio). So the one full scan of the table selects only integers per row: id, time,
``calibration_key`` and ``phase_key`` (``autopack.db.keys``), the token counts and one flags word.
Everything textual (features_json, category, complexity, provider, model) is read once per distinct
``calibration_key`` from one representative row, by primary key. PostgreSQL sends each column as one
binary array that numpy reads in place; SQLite sends each column as one comma-joined text per id range
(``group_concat``) that numpy parses, so neither driver makes a Python object per value, and both spend
the scan in the database with the GIL released (``preload`` imports the statistics meanwhile).

Rows whose keys are NULL (written by raw SQL after the 0005 backfill) or whose SQLite timestamp the date
functions cannot read are read again by their text fields and keyed here, so the result never depends on
the keys being present, only its speed does.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import sqlalchemy as sa

from autopack.calibration.samples import (
    DOCS_ROWS_LIMIT,
    EventColumns,
    Summary,
    docs_row,
    escalated_retries,
    phase_retries,
    spellings_of,
)
from autopack.db import keys
from autopack.db.models import TokenBudgetEscalationEvent, TokenEstimationV2Event
from autopack.errors import AutopackError
from autopack.llm.base import TRUNCATION_REASONS
from autopack.run_order import sorted_runs
from autopack.taxonomy import DOCS_LIKE, canonical_category
from autopack.truncation import reached_ceiling

if TYPE_CHECKING:
    from autopack.db.handle import Database

EV = TokenEstimationV2Event.__table__
ESC = TokenBudgetEscalationEvent.__table__

#: Rows converted per step on the DBAPI path (bounds the Python objects alive at once).
READ_PARTITION = 50_000
#: Event ids per scan query at most: ≈ 35 MB of SQLite text or 28 MB of PostgreSQL arrays in flight per reader.
SCAN_RANGE = 250_000
#: Id ranges read at once, each on its own connection: the database aggregates with the GIL released,
#: so two readers keep both CPUs of a small machine busy (ranges smaller than ``MIN_SPLIT`` are not split).
READERS = 2
MIN_SPLIT = 20_000
#: Ids per ``IN (…)`` when rows are fetched by primary key.
ID_CHUNK = 500

# bits of the flags word (the attempt index sits above them: flags >> ATTEMPT_SHIFT); NO_TIME is set
# here, from the time column, for a row whose timestamp SQLite's date functions cannot read; RETRY_UNKNOWN:
# the row was imported from a file that does not mark escalated retries (``retries_known`` false)
SUCCESS, TRUNCATED, TRUNCATED_OUTPUT, NO_TIME, RETRY_UNKNOWN = 1, 2, 4, 8, 16
ATTEMPT_SHIFT = 5
#: The SQLite scan's time for a row it could not time (−2⁶² ms: no real timestamp is that far back).
UNTIMED = -(2**62)
#: PostgreSQL binary timestamps count microseconds from 2000-01-01.
PG_EPOCH_OFFSET = 946_684_800

#: A statement / row of any columns (SQLAlchemy types them by their column tuple).
AnySelect: TypeAlias = sa.Select[*tuple[Any, ...]]
AnyRow: TypeAlias = sa.Row[*tuple[Any, ...]]


class UnreadableEventsError(AutopackError):
    """A numeric column holds something that is not a number."""

    exit_code = 2


def truncation_flag(c: Any) -> sa.ColumnElement[Any]:
    """1 where the call was cut (flags, a truncation stop/finish reason, or its output reached the ceiling:
    ``samples.reached_ceiling`` in SQL), else 0."""
    reasons = sorted(TRUNCATION_REASONS)
    reached = sa.and_(c.actual_max_tokens > 0, c.actual_output_tokens >= c.actual_max_tokens)
    return sa.case(
        (sa.or_(c.truncated, c.is_truncated_output, c.stop_reason.in_(reasons), c.finish_reason.in_(reasons),
                reached), 1),
        else_=0,
    )


#: The scan's columns, as ``_scan`` returns them.
N_COLUMNS = 9
(ID, EPOCH, CKEY, PKEY, PREDICTED, ACTUAL, SELECTED, CEILING, FLAGS) = range(N_COLUMNS)


def _numeric_columns(dialect: str) -> list[sa.ColumnElement[Any]]:
    """The one full scan: integers only, no string compared (see the module docstring for the columns).

    A key of 0 stands for NULL (PostgreSQL arrays must hold no NULL) or, on SQLite, for a key that is not
    an integer; such rows are keyed again. SQLite keeps whatever a writer gave it in the count columns
    (text, reals): a range holding one is read row by row (``_text_range``).
    """
    c = EV.c
    if dialect == "sqlite":  # SQLite's date functions keep milliseconds; julianday once per row (it parses)
        julian = sa.func.julianday(c.timestamp)
        millis = sa.cast(sa.func.round((julian - 2440587.5) * 86_400_000.0), sa.BigInteger)
        # no '-' in 5th place: a bare number, which SQLite would read as a Julian day; NULL: not a date to it
        epoch: sa.ColumnElement[Any] = sa.func.coalesce(sa.case((sa.func.substr(c.timestamp, 5, 1) == "-", millis)),
                                                        UNTIMED)

        def key(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
            return sa.case((sa.func.typeof(column) == "integer", column), else_=0)

        def as_int(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
            return column
    else:  # PostgreSQL's binary timestamp is already an int64 (µs since 2000-01-01)
        epoch = c.timestamp

        def key(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
            return sa.func.coalesce(column, 0)

        def as_int(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
            return sa.cast(column, sa.BigInteger)

    flags = (
        sa.cast(c.attempt_index, sa.BigInteger) * (1 << ATTEMPT_SHIFT)
        + sa.cast(c.success, sa.Integer) * SUCCESS
        + sa.cast(c.truncated, sa.Integer) * TRUNCATED
        + sa.cast(c.is_truncated_output, sa.Integer) * TRUNCATED_OUTPUT
        + sa.case((c.retries_known == sa.false(), RETRY_UNKNOWN), else_=0)
    )
    return [as_int(c.event_id), epoch, key(c.calibration_key), key(c.phase_key), as_int(c.predicted_output_tokens),
            as_int(c.actual_output_tokens), as_int(c.selected_budget),
            as_int(sa.func.coalesce(c.actual_max_tokens, -1)), as_int(flags)]


def _compiled(connection: sa.Connection, stmt: AnySelect) -> tuple[str, Any]:
    dialect = connection.dialect
    compiled = stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    if dialect.paramstyle in ("qmark", "numeric", "format"):
        return str(compiled), tuple(compiled.params[name] for name in (compiled.positiontup or []))
    return str(compiled), compiled.params


def _text_range(connection: sa.Connection, where: list[Any]) -> np.ndarray | None:
    """SQLite: each column of one id range as one comma-joined text (``group_concat``), parsed by numpy.

    A range whose texts are not ``count`` integers each (a count stored as text or as a real) is read
    again row by row, where numbers written as text are read as numbers and ``_lenient`` names a row
    that holds something else. The aggregates of one query see the rows in the same order.
    """
    columns = _numeric_columns("sqlite")
    texts = [sa.cast(sa.func.group_concat(column), sa.LargeBinary) for column in columns]  # bytes: nothing decoded
    sql, params = _compiled(connection, sa.select(sa.func.count(), *texts).where(*where))
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        count, *blobs = cursor.execute(sql, params).fetchone()
    finally:
        cursor.close()
    if not count:
        return None
    part = _parsed(blobs, count)
    if part is None:
        part = np.concatenate(list(_dbapi_parts(connection, sa.select(*columns).where(*where))))
    part[:, FLAGS] |= np.where(part[:, EPOCH] == UNTIMED, NO_TIME, 0)
    return part


def _parsed(blobs: Sequence[bytes | None], count: int) -> np.ndarray | None:
    """``count`` rows of the comma-joined integer columns, or None when any column is not exactly that.

    Only digits, commas and minus signs reach numpy (it would warn and stop at anything else, and
    ``warnings.catch_warnings`` is not safe with two readers and the imports on other threads).
    """
    if any(blob is None or blob.translate(None, b"0123456789,-") for blob in blobs):
        return None
    arrays = [np.fromstring(blob, dtype=np.int64, sep=",") for blob in blobs if blob is not None]
    return np.stack(arrays, axis=1) if all(a.size == count for a in arrays) else None


def _dbapi_parts(connection: sa.Connection, stmt: AnySelect) -> Iterator[np.ndarray]:
    """Integer rows from the DBAPI cursor, ``READ_PARTITION`` at a time, as 2-D int64 arrays."""
    sql, params = _compiled(connection, stmt)
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(READ_PARTITION):
            try:
                yield np.array(rows, dtype=np.int64)
            except (TypeError, ValueError, OverflowError):
                yield _lenient(rows)
    finally:
        cursor.close()


def _lenient(rows: list[tuple[Any, ...]]) -> np.ndarray:
    """SQLite stores what it is given: numbers written as text (or as reals) are read as numbers."""
    try:
        return np.array([[int(float(v)) for v in row] for row in rows], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        bad = next(row for row in rows if not all(_is_number(v) for v in row))
        raise UnreadableEventsError(
            f"token_estimation_v2_events row {bad[0]} holds a non-numeric token count or index: {bad!r:.200}",
            hint="fix or delete that row; calibration needs numbers there",
        ) from exc


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _array_range(connection: sa.Connection, where: list[Any]) -> np.ndarray | None:
    """PostgreSQL: each column of one id range as one binary array (``array_send(array_agg(…))``).

    numpy reads the arrays in place, so no Python object is made per row. One serial scan feeds every
    aggregate the rows in the same order (parallel plans are switched off for this transaction).
    """
    connection.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
    connection.exec_driver_sql("SET LOCAL jit = off")  # compiling the expressions costs more than it saves
    arrays = [sa.func.array_send(sa.func.array_agg(column)) for column in _numeric_columns("postgresql")]
    sql, params = _compiled(connection, sa.select(*arrays).where(*where))
    with connection.connection.driver_connection.cursor(binary=True) as cursor:  # type: ignore[union-attr]
        row = cursor.execute(sql, params).fetchone()  # bytea as bytes, not hex text
    if row is None or row[0] is None:
        return None
    return np.stack([_int8_array(bytes(blob)) for blob in row], axis=1)


def _int8_array(blob: bytes) -> np.ndarray:
    """A 1-D, NULL-free PostgreSQL array of 8-byte values in binary send format → int64."""
    ndim, has_nulls, _oid, size, _lower = np.frombuffer(blob, dtype=">i4", count=5).tolist()
    values = np.frombuffer(blob, dtype=[("length", ">i4"), ("value", ">i8")], offset=20)
    if ndim != 1 or has_nulls or values.size != size or (values["length"] != 8).any():
        raise UnreadableEventsError("PostgreSQL sent an array that is not the expected 8-byte integers")
    return values["value"].astype(np.int64)


def _by_id(connection: sa.Connection, columns: Sequence[Any], ids: Sequence[int]) -> list[AnyRow]:
    out: list[AnyRow] = []
    for start in range(0, len(ids), ID_CHUNK):
        chunk = [int(i) for i in ids[start : start + ID_CHUNK]]
        out += connection.execute(sa.select(EV.c.event_id, *columns).where(EV.c.event_id.in_(chunk))).all()
    return out


#: What a calibration key stands for (``keys.CALIBRATION_KEY_COLUMNS``): read once per distinct key.
TEXT_FIELDS = tuple(EV.c[name] for name in keys.CALIBRATION_KEY_COLUMNS)
FEATURES, CATEGORY, COMPLEXITY, DELIVERABLES, PROVIDER, MODEL, STOP, FINISH, PHASE_ID = range(len(TEXT_FIELDS))


def _scan(engine: sa.Engine, connection: sa.Connection, ranges: list[list[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(rows × N_COLUMNS int64, epoch seconds per row), read by id range, ``READERS`` ranges at once."""
    sqlite = connection.dialect.name == "sqlite"
    read_range = _text_range if sqlite else _array_range
    if len(ranges) > 1 and not isinstance(engine.pool, sa.pool.SingletonThreadPool | sa.pool.StaticPool):
        def read_on_own_connection(bounds: list[Any]) -> np.ndarray | None:
            with engine.connect() as own:
                return read_range(own, bounds)

        with ThreadPoolExecutor(READERS, thread_name_prefix="autopack-read") as pool:
            parts = list(pool.map(read_on_own_connection, ranges))
    else:  # one range, or an in-memory database (a second connection would see another, empty one)
        parts = [read_range(connection, bounds) for bounds in ranges]
    found = [p for p in parts if p is not None]
    data = np.concatenate(found) if found else np.empty((0, N_COLUMNS), dtype=np.int64)
    epoch = data[:, EPOCH].astype(float)
    epoch = epoch / 1e3 if sqlite else epoch / 1e6 + PG_EPOCH_OFFSET
    return data, epoch


def id_bounds(where: list[Any]) -> AnySelect:
    """(smallest, largest) event id of the rows ``where`` selects.

    Apart, each bound is one index probe; together, a scan. Under a condition (runs, a time window),
    ``event_id + 0`` keeps PostgreSQL from walking the primary key in id order until the first row that meets
    it (it would expect one early, but ids grow with time, so for a window it would read the whole history):
    the rows are found through their index (run id, timestamp) instead, so the cost is theirs, on both databases.
    """
    c = EV.c
    column = c.event_id + 0 if where else c.event_id
    bound = [sa.select(f(column)).where(*where).scalar_subquery() for f in (sa.func.min, sa.func.max)]
    return sa.select(*bound)


def _id_ranges(connection: sa.Connection, where: list[Any]) -> tuple[list[list[Any]], int | None]:
    """The scan's conditions per id range (at most ``SCAN_RANGE`` ids each, split for ``READERS``), and the
    largest id there is now: the read ends there, so rows appended meanwhile (the table is append-only)
    are left out of everything it returns, as a snapshot would leave them out."""
    c = EV.c
    low, high = connection.execute(id_bounds(where)).one()
    if low is None:
        return [], None
    low, high = int(low), int(high)
    step = min(SCAN_RANGE, max(MIN_SPLIT, -(-(high - low + 1) // READERS)))
    return [[*where, c.event_id >= start, c.event_id <= min(start + step - 1, high)]
            for start in range(low, high + 1, step)], high


def _repair(connection: sa.Connection, data: np.ndarray, epoch: np.ndarray,
            texts: dict[int, tuple[Any, ...]]) -> None:
    """Key the rows that have no stored keys, and time the ones SQLite's date functions could not read."""
    flags = data[:, FLAGS]
    missing = np.flatnonzero((data[:, CKEY] == 0) | (data[:, PKEY] == 0))
    if missing.size:
        rows = {r[0]: r for r in _by_id(connection, (*TEXT_FIELDS, EV.c.run_id), data[missing, ID].tolist())}
        for i in missing.tolist():
            r = rows[int(data[i, ID])]
            text = tuple(r[1 : 1 + len(TEXT_FIELDS)])
            ckey = _calibration_key(text)
            data[i, CKEY] = ckey
            data[i, PKEY] = keys.phase_key(str(r[-1]), str(text[PHASE_ID]))
            texts.setdefault(ckey, text)
    untimed = np.flatnonzero(flags & NO_TIME)
    if untimed.size:
        from autopack.telemetry.ingest.rows import parse_timestamp

        stamps = {r[0]: r[1] for r in _by_id(connection, (sa.type_coerce(EV.c.timestamp, sa.String),),
                                             data[untimed, ID].tolist())}
        for i in untimed.tolist():
            try:
                epoch[i] = parse_timestamp(stamps[int(data[i, ID])]).replace(tzinfo=UTC).timestamp()
            except (ValueError, TypeError, OverflowError) as exc:
                raise UnreadableEventsError(
                    f"token_estimation_v2_events row {int(data[i, ID])} has an unreadable timestamp "
                    f"{stamps[int(data[i, ID])]!r:.60}", hint="fix or delete that row",
                ) from exc


def _calibration_key(text: tuple[Any, ...]) -> int:
    t = list(text)
    t[CATEGORY], t[COMPLEXITY], t[PHASE_ID] = str(t[CATEGORY]), str(t[COMPLEXITY]), str(t[PHASE_ID])
    t[DELIVERABLES] = _count(t[DELIVERABLES])
    return keys.calibration_key(*t)


def _count(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _distinct(values: np.ndarray) -> int:
    """How many distinct values (a sort: numpy's hash-based ``unique`` is several times slower here)."""
    if values.size == 0:
        return 0
    ordered = np.sort(values)
    return int(1 + np.count_nonzero(ordered[1:] != ordered[:-1]))


def _factor(values: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    table: dict[Any, int] = {}
    codes = np.fromiter((table.setdefault(v, len(table)) for v in values), dtype=np.int32, count=len(values))
    return codes, list(table)


def read_events(database: Database, include_run_ids: Sequence[str] | None = None, *,
                since: datetime | None = None) -> EventColumns:
    """The calibration columns of ``token_estimation_v2_events`` (optionally only some runs, and only the calls
    at or after ``since``, naive UTC: the calibration window, read through the timestamp index)."""
    engine = database.engine
    c = EV.c
    where: list[Any] = [c.run_id.in_(list(include_run_ids))] if include_run_ids else []
    if since is not None:
        where.append(c.timestamp >= since)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # the by-id and row-by-row reads make many short-lived tuples: nothing cyclic to collect
    try:
        with engine.connect() as connection:
            ranges, last_id = _id_ranges(connection, where)
            data, epoch = _scan(engine, connection, ranges)
            texts: dict[int, tuple[Any, ...]] = {}
            _repair(connection, data, epoch, texts)
            unique_keys, first, inverse = np.unique(data[:, CKEY], return_index=True, return_inverse=True)
            representative = {int(data[i, ID]): k for k, i in zip(unique_keys.tolist(), first.tolist(), strict=True)
                              if k not in texts}  # one row per distinct key whose texts are not known yet
            for r in _by_id(connection, TEXT_FIELDS, list(representative)):
                texts[representative[r[0]]] = tuple(r[1:])
            unit_text = [texts[k] for k in unique_keys.tolist()]
            run_ids = _run_ids(connection, where, last_id)
            docs = _docs_rows(connection, data, unit_text, inverse.reshape(-1))
            escalations = _escalations(connection, include_run_ids, since)
    finally:
        if gc_was_enabled:
            gc.enable()
    return _columns(data, epoch, unit_text, inverse.reshape(-1), run_ids, docs, escalations)


def _columns(data: np.ndarray, epoch: np.ndarray, unit_text: list[tuple[Any, ...]], unit: np.ndarray,
             run_ids: list[str], docs: list[dict[str, Any]], escalations: np.ndarray) -> EventColumns:
    flags = data[:, FLAGS]
    n = int(flags.size)
    success = (flags & SUCCESS) > 0
    ceiling = data[:, CEILING].astype(float)
    ceiling[ceiling < 0] = np.nan
    feature_code, features = _factor([t[FEATURES] for t in unit_text])
    none_code = features.index(None) if None in features else -1
    if none_code >= 0:  # rows without features get -1; the texts list keeps only real feature sets
        features.pop(none_code)
        feature_code = np.where(feature_code == none_code, -1, feature_code - (feature_code > none_code))
    cat_code, categories = _factor([t[CATEGORY] for t in unit_text])
    cx_code, complexities = _factor([t[COMPLEXITY] for t in unit_text])
    source_code, sources = _factor([(t[PROVIDER], t[MODEL]) for t in unit_text])
    reason_cut = np.array([t[STOP] in TRUNCATION_REASONS or t[FINISH] in TRUNCATION_REASONS for t in unit_text],
                          dtype=bool)
    unit_rows = np.bincount(unit, minlength=len(unit_text)) if n else np.zeros(len(unit_text), dtype=np.int64)
    pairs: dict[tuple[str | None, str | None], int] = {}
    for t, count in zip(unit_text, unit_rows.tolist(), strict=True):
        pair = (t[CATEGORY], t[COMPLEXITY])
        pairs[pair] = pairs.get(pair, 0) + count
    summary = Summary(
        run_ids=run_ids,
        successful_phases=_distinct(data[success, PKEY]),
        success_rate_all=float(success.mean()) if n else 0.0,
        coverage_actual_max_tokens=float((~np.isnan(ceiling)).mean()) if n else 0.0,
        spellings=spellings_of(pairs),
        docs_rows=docs,
    )
    columns = EventColumns(
        event_id=data[:, ID].copy(),
        epoch=epoch,
        category_code=cat_code[unit],
        complexity_code=cx_code[unit],
        deliverable_count=np.array([_count(t[DELIVERABLES]) for t in unit_text], dtype=np.int64)[unit],
        features_code=feature_code[unit].astype(np.int32),
        predicted=data[:, PREDICTED].astype(float),
        actual=data[:, ACTUAL].astype(float),
        selected_budget=data[:, SELECTED].astype(float),
        actual_max_tokens=ceiling,
        success=success,
        truncated=((flags & (TRUNCATED | TRUNCATED_OUTPUT)) > 0) | reason_cut[unit],
        categories=categories,
        complexities=complexities,
        features=features,
        summary=summary,
    )
    return _with_retries_and_sources(columns, data, escalations, source_code[unit], sources)


def _with_retries_and_sources(columns: EventColumns, data: np.ndarray, escalations: np.ndarray,
                              source_code: np.ndarray, sources: list[Any]) -> EventColumns:
    """The retries (escalated, or repeats of a cut phase: excluded from fitting, linked to the cut calls they
    re-ran; none among rows whose source cannot tell retries, whose attempt index says nothing), the rows whose
    source cannot tell retries, and the provider/model of every row (the source mix)."""
    attempt = data[:, FLAGS] >> ATTEMPT_SHIFT
    escalated = escalated_retries(data[:, PKEY], attempt, escalations[:, 0], escalations[:, 1])
    unknown = (data[:, FLAGS] & RETRY_UNKNOWN) > 0
    cut = (columns.truncated | reached_ceiling(columns.actual, columns.actual_max_tokens)) & ~unknown
    retry, repeat, retry_of = phase_retries(data[:, PKEY], attempt, data[:, ID], escalated, cut)
    return dataclasses.replace(columns, source_code=source_code.astype(np.int32), sources=sources, retry=retry,
                               repeat=repeat, retry_of=retry_of, retry_unknown=unknown if unknown.any() else None)


#: Distinct run ids by walking the run_id index (one probe per run), while there are at most this many.
SKIP_SCAN_LIMIT = 10_000
_SKIP_SCAN = sa.text("""
WITH RECURSIVE runs(id, n) AS (
    SELECT (SELECT min(run_id) FROM token_estimation_v2_events WHERE event_id <= :last), 1
    UNION ALL
    SELECT (SELECT min(run_id) FROM token_estimation_v2_events WHERE run_id > runs.id AND event_id <= :last),
           runs.n + 1
    FROM runs WHERE runs.id IS NOT NULL AND runs.n <= :limit
)
SELECT id FROM runs WHERE id IS NOT NULL
""")


def runs_without_telemetry(database: Database, run_ids: Sequence[str]) -> list[str]:
    """The run ids (in the given order, without repeats) that have no telemetry event at all: a typo in
    ``--include-run-id`` names it, where it would narrow the read silently (or to nothing)."""
    wanted = list(dict.fromkeys(run_ids))
    if not wanted:
        return []
    with database.engine.connect() as connection:
        found = set(connection.execute(sa.select(EV.c.run_id).where(EV.c.run_id.in_(wanted)).distinct()).scalars())
    return [run_id for run_id in wanted if run_id not in found]


def _run_ids(connection: sa.Connection, where: list[Any], last_id: int | None) -> list[str]:
    """The distinct run ids of the rows read (ids up to ``last_id``): an index skip-scan (a DISTINCT over 10⁶
    rows reads them all), else DISTINCT."""
    c = EV.c
    if last_id is None:
        return []
    if not where:
        found = connection.execute(_SKIP_SCAN, {"limit": SKIP_SCAN_LIMIT, "last": last_id}).scalars().all()
        if len(found) <= SKIP_SCAN_LIMIT:
            return sorted_runs(found)
    return sorted_runs(connection.execute(sa.select(c.run_id).where(*where, c.event_id <= last_id).distinct()
                                     ).scalars().all())


#: Escalations recorded this long before the window's start are still read: the retry they mark may be in it.
ESCALATION_SLACK = timedelta(days=1)


def _escalations(connection: sa.Connection, include_run_ids: Sequence[str] | None,
                 since: datetime | None = None) -> np.ndarray:
    """(phase_key, attempt_index) of every budget escalation (a small table: one row per truncation)."""
    where: list[sa.ColumnElement[bool]] = [ESC.c.run_id.in_(list(include_run_ids))] if include_run_ids else []
    if since is not None:
        where.append(ESC.c.timestamp >= since - ESCALATION_SLACK)
    rows = connection.execute(sa.select(ESC.c.run_id, ESC.c.phase_id, ESC.c.attempt_index).where(*where)).all()
    return np.array([(keys.phase_key(r, p), int(a)) for r, p, a in rows], dtype=np.int64).reshape(-1, 2)


def _docs_rows(connection: sa.Connection, data: np.ndarray, unit_text: list[tuple[Any, ...]],
               unit: np.ndarray) -> list[dict[str, Any]]:
    """The largest documentation calls (docs-like category, or a phase id naming doc/readme), largest first."""
    docs_unit = np.array([canonical_category(t[CATEGORY]) in DOCS_LIKE or keys.names_docs(str(t[PHASE_ID]))
                          for t in unit_text], dtype=bool)
    rows = np.flatnonzero(docs_unit[unit]) if unit.size else np.empty(0, dtype=np.int64)
    top = rows[np.lexsort((data[rows, ID], -data[rows, ACTUAL]))][:DOCS_ROWS_LIMIT]
    c = EV.c
    found = {r[0]: r for r in _by_id(connection, (
        c.run_id, c.phase_id, c.category, c.complexity, c.actual_output_tokens, c.predicted_output_tokens,
        c.actual_max_tokens, c.selected_budget, truncation_flag(c), c.success), data[top, ID].tolist())}
    ordered = [found[int(i)] for i in data[top, ID].tolist()]
    return [docs_row(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], bool(r[9]), bool(r[10])) for r in ordered]
