"""The database read gives exactly what the pure path gives from the same rows, whatever the rows hold.

``read_events`` scans numbers only and reads texts once per distinct ``calibration_key``; it must equal
``columns_from_records`` (the plain per-row reference) on both backends, including rows whose keys are
missing (written by raw SQL), legacy spellings, documentation phases, reason-only truncations, rows
without a ceiling, and (SQLite) timestamps its date functions cannot read.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from autopack.calibration.reader import read_events
from autopack.calibration.samples import EventColumns, columns_from_records
from autopack.db.engine import get_engine
from autopack.db.handle import database_at
from autopack.db.models import TokenEstimationV2Event

from synthetic_telemetry import simulate

EV = TokenEstimationV2Event.__table__


def _odd_rows() -> list[dict[str, Any]]:
    """Rows the recorder would never write: legacy spellings, no features, no ceiling, reasons only."""
    base = {"attempt_index": 0, "call_index": 0, "deliverables_json": "[]", "features_json": None,
            "selected_budget": 4096, "actual_max_tokens": 4096, "success": True, "truncated": False,
            "is_truncated_output": False, "stop_reason": None, "finish_reason": None, "provider": None,
            "model": None, "source": "import:test"}
    when = datetime(2024, 6, 1, 12, 0, 0, 250_000)
    specs = [
        ("legacy", "p-1", "Testing", "MEDIUM", 2, 900, 1000, {}),
        ("legacy", "p-2", "testing", "medium", 2, 900, 1200, {"actual_max_tokens": None}),
        ("legacy", "write-README", "documentation", "low", 1, 500, 4096, {"finish_reason": "length"}),
        ("legacy", "DocS-update", "implementation", "low", 1, 700, 650, {"stop_reason": "max_tokens",
                                                                          "success": False}),
        ("legacy", "p-5", "backend", "high", 3, 2000, 1500, {"success": False}),
        ("other", "p-1", "docs", "low", 1, 800, 900, {"provider": "openai", "model": "gpt-x"}),
        ("other", "p-2", "docs", "low", 1, 0, 900, {}),
    ]
    rows = []
    for i, (run, phase, cat, cx, dc, pred, act, extra) in enumerate(specs):
        rows.append({**base, "run_id": run, "phase_id": phase, "category": cat, "complexity": cx,
                     "deliverable_count": dc, "predicted_output_tokens": pred, "actual_output_tokens": act,
                     "timestamp": when + timedelta(minutes=i), "created_at": when, **extra})
    return rows


def _store(url: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every other row through the ORM (keys computed), the rest by raw SQL (no keys); ids assigned."""
    engine = get_engine(url)
    stored = []
    with engine.begin() as connection:
        for i, row in enumerate(rows):
            row = {"actual_max_tokens_backfilled": False, "schema_version": 2, **row}
            if i % 2:
                columns = ", ".join(row)
                connection.execute(sa.text(f"INSERT INTO token_estimation_v2_events ({columns}) VALUES "
                                           f"({', '.join(':' + c for c in row)})"), row)
            else:
                connection.execute(sa.insert(EV), [row])
            event_id = connection.execute(sa.select(sa.func.max(EV.c.event_id))).scalar_one()
            stored.append({**row, "id": event_id})
    with engine.connect() as connection:
        missing = connection.execute(sa.select(sa.func.count()).where(EV.c.calibration_key.is_(None))).scalar_one()
    assert missing == len(rows) // 2  # the fallback path is really taken
    return stored


def _per_row(columns: EventColumns) -> list[tuple[Any, ...]]:
    order = np.argsort(columns.event_id, kind="stable")
    out = []
    for i in order.tolist():
        code = int(columns.features_code[i])
        out.append((
            int(columns.event_id[i]), round(float(columns.epoch[i]), 3),
            columns.categories[columns.category_code[i]], columns.complexities[columns.complexity_code[i]],
            int(columns.deliverable_count[i]), None if code < 0 else columns.features[code],
            float(columns.predicted[i]), float(columns.actual[i]), float(columns.selected_budget[i]),
            None if math.isnan(columns.actual_max_tokens[i]) else float(columns.actual_max_tokens[i]),
            bool(columns.success[i]), bool(columns.truncated[i]),
        ))
    return out


def _assert_same(got: EventColumns, want: EventColumns) -> None:
    assert _per_row(got) == _per_row(want)
    assert got.summary == want.summary


@pytest.fixture
def stored(db_url: str) -> list[dict[str, Any]]:
    return _store(db_url, simulate(40, seed=7) + _odd_rows())


def test_read_equals_the_per_row_reference(db_url: str, stored: list[dict[str, Any]]) -> None:
    got = read_events(database_at(db_url))
    _assert_same(got, columns_from_records(stored))
    assert got.summary.docs_rows and got.summary.spellings["category"]  # the cases above are exercised


def test_read_of_some_runs_equals_the_reference_for_those_runs(db_url: str, stored: list[dict[str, Any]]) -> None:
    runs = ["legacy", stored[0]["run_id"]]
    _assert_same(read_events(database_at(db_url), runs), columns_from_records([r for r in stored if r["run_id"] in runs]))


def test_an_empty_selection_reads_as_empty(db_url: str) -> None:
    got = read_events(database_at(db_url))
    assert got.size == 0 and got.summary == columns_from_records([]).summary


def test_sqlite_timestamps_its_date_functions_cannot_read_are_parsed(db_url: str) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL stores real timestamps")
    rows = _odd_rows()[:3]
    stored = _store(db_url, rows)
    with get_engine(db_url).begin() as connection:  # what a legacy writer may have left behind
        for row, text in zip(stored, ["2024-06-01T12:00:00.250+02:00", "1717243200", "2024-06-01 12:02:00"],
                             strict=True):
            connection.execute(sa.text("UPDATE token_estimation_v2_events SET timestamp = :t WHERE event_id = :i"),
                               {"t": text, "i": row["id"]})
    epochs = sorted(read_events(database_at(db_url)).epoch.tolist())
    assert epochs == [datetime(2024, 6, 1, 10, 0, 0, 250_000).timestamp() - _utc_offset(),
                      1717243200.0, datetime(2024, 6, 1, 12, 2).timestamp() - _utc_offset()]


def _utc_offset() -> float:
    """``datetime.timestamp()`` of a naive value assumes local time; the table holds UTC."""
    when = datetime(2024, 6, 1)
    return when.timestamp() - when.replace(tzinfo=__import__("datetime").UTC).timestamp()


def test_sqlite_numbers_stored_as_text_are_read_and_garbage_is_one_clear_error(db_url: str) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL columns are typed")
    from autopack.calibration.reader import UnreadableEventsError

    stored = _store(db_url, _odd_rows()[:2])
    with get_engine(db_url).begin() as connection:  # SQLite keeps whatever a legacy writer gave it
        connection.execute(sa.text("UPDATE token_estimation_v2_events SET predicted_output_tokens = '900.0', "
                                   "selected_budget = 3000000000 WHERE event_id = :i"), {"i": stored[0]["id"]})
    got = read_events(database_at(db_url))  # neither fits the packed scan: both rows' counts are read one by one
    assert sorted(got.predicted.tolist()) == [900.0, 900.0] and sorted(got.selected_budget.tolist()) == [4096, 3e9]
    with get_engine(db_url).begin() as connection:
        connection.execute(sa.text("UPDATE token_estimation_v2_events SET actual_output_tokens = 'lots' "
                                   "WHERE event_id = :i"), {"i": stored[1]["id"]})
    with pytest.raises(UnreadableEventsError, match=f"row {stored[1]['id']} holds a non-numeric"):
        read_events(database_at(db_url))


def test_run_ids_are_the_same_by_skip_scan_and_by_distinct(db_url: str, stored: list[dict[str, Any]],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from autopack.calibration import reader

    walked = read_events(database_at(db_url)).summary.run_ids
    monkeypatch.setattr(reader, "SKIP_SCAN_LIMIT", 1)  # more runs than the walk may take: DISTINCT instead
    assert read_events(database_at(db_url)).summary.run_ids == walked == sorted({r["run_id"] for r in stored})


def test_a_read_split_into_many_id_ranges_on_two_readers_equals_the_reference(
        db_url: str, stored: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from autopack.calibration import reader

    monkeypatch.setattr(reader, "SCAN_RANGE", 5)
    monkeypatch.setattr(reader, "MIN_SPLIT", 1)
    readers: set[str] = set()
    name = "_text_range" if db_url.startswith("sqlite") else "_array_range"
    real = getattr(reader, name)

    def spy(connection: sa.Connection, where: list[Any]) -> Any:
        readers.add(threading.current_thread().name)
        return real(connection, where)

    monkeypatch.setattr(reader, name, spy)
    _assert_same(read_events(database_at(db_url)), columns_from_records(stored))
    assert readers and all(r.startswith("autopack-read") for r in readers)  # the ranges ran on the pool


def test_a_range_whose_texts_do_not_parse_is_read_row_by_row(db_url: str, stored: list[dict[str, Any]],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL sends typed arrays")
    from autopack.calibration import reader

    calls: list[int] = []
    monkeypatch.setattr(reader, "_parsed", lambda blobs, count: calls.append(count))  # always "does not parse"
    _assert_same(read_events(database_at(db_url)), columns_from_records(stored))
    assert calls == [len(stored)]


def test_sqlite_counts_stored_as_reals_are_read_as_their_whole_numbers(db_url: str) -> None:
    """SQLite keeps a real a writer gave it: it is read as its whole number, and the next count is untouched."""
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL columns are typed")
    stored = _store(db_url, _odd_rows()[:2])
    with get_engine(db_url).begin() as connection:
        connection.execute(sa.text("UPDATE token_estimation_v2_events SET predicted_output_tokens = 900.5 "
                                   "WHERE event_id = :i"), {"i": stored[0]["id"]})
    got = read_events(database_at(db_url))
    row = int(np.flatnonzero(got.event_id == stored[0]["id"])[0])
    assert (got.predicted[row], got.actual[row]) == (900.0, stored[0]["actual_output_tokens"])


def test_sqlite_keys_that_are_not_integers_are_keyed_again(db_url: str, stored: list[dict[str, Any]]) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL columns are typed")
    with get_engine(db_url).begin() as connection:
        connection.execute(sa.text("UPDATE token_estimation_v2_events SET calibration_key = 'x', phase_key = 1.5"))
    _assert_same(read_events(database_at(db_url)), columns_from_records(stored))


def test_rows_appended_while_the_ranges_are_read_are_left_out(db_url: str, stored: list[dict[str, Any]],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The ranges end at the largest id there was when the read began, as a snapshot of the append-only table."""
    from autopack.calibration import reader

    monkeypatch.setattr(reader, "SCAN_RANGE", 5)
    monkeypatch.setattr(reader, "MIN_SPLIT", 1)
    planned = reader._id_ranges

    def then_a_writer_appends(connection: sa.Connection, where: list[Any]) -> tuple[list[list[Any]], int | None]:
        ranges = planned(connection, where)
        late = {**stored[-1], "run_id": "a-run-that-began-during-the-read", "call_index": 0}
        late.pop("id")
        with get_engine(db_url).begin() as writer:
            writer.execute(sa.insert(EV), [late])
        return ranges

    monkeypatch.setattr(reader, "_id_ranges", then_a_writer_appends)
    _assert_same(read_events(database_at(db_url)), columns_from_records(stored))  # its run too is not in the summary
    with get_engine(db_url).connect() as connection:  # the row is there, for the next read
        assert connection.execute(sa.select(sa.func.count()).select_from(EV)).scalar_one() == len(stored) + 1
