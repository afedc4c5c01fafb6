"""Event keys (revision 0005): written with every row, backfilled for old rows, equal in SQL and Python."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import command

from autopack.db import keys
from autopack.db.engine import dispose_engines, get_engine
from autopack.db.handle import database_at
from autopack.db.migrate import alembic_config, upgrade_database
from autopack.db.models import TokenEstimationV2Event

EV = TokenEstimationV2Event.__table__

ROWS = [
    {"run_id": "r1", "phase_id": "p1", "features_json": '{"category": "docs", "deliverables": ["a.md"]}',
     "category": "docs", "complexity": "low", "deliverable_count": 1, "provider": "anthropic", "model": "m-1",
     "stop_reason": "max_tokens", "finish_reason": None},
    {"run_id": "r1", "phase_id": "write-README", "features_json": None, "category": "Testing", "complexity": "MEDIUM",
     "deliverable_count": 3, "provider": None, "model": None, "stop_reason": None, "finish_reason": "length"},
    {"run_id": "run 'ü'", "phase_id": "p\u00e9/3", "features_json": '{"x": "\u2603"}', "category": "backend",
     "complexity": "high", "deliverable_count": 0, "provider": "openai", "model": None, "stop_reason": "end_turn",
     "finish_reason": "stop"},
]


def _insert_raw(url: str, with_keys_by_default: bool) -> None:
    """Rows as a raw-SQL writer (or a pre-0005 database) leaves them: no keys unless the ORM adds them."""
    when = datetime(2025, 1, 1)
    base = {"attempt_index": 0, "call_index": 0, "timestamp": when, "created_at": when, "deliverables_json": "[]",
            "predicted_output_tokens": 10, "actual_output_tokens": 9, "selected_budget": 20,
            "actual_max_tokens_backfilled": False, "success": True, "truncated": False, "is_truncated_output": False,
            "schema_version": 2, "source": "test"}
    with get_engine(url).begin() as connection:
        if with_keys_by_default:  # one executemany: the defaults are computed per row
            connection.execute(sa.insert(EV), [{**base, **row} for row in ROWS])
            return
        for row in ROWS:
            values = {**base, **row}
            columns = ", ".join(values)
            connection.execute(sa.text(f"INSERT INTO token_estimation_v2_events ({columns}) VALUES "
                                       f"({', '.join(':' + c for c in values)})"), values)


def _stored(url: str) -> list[tuple[int | None, int | None]]:
    with get_engine(url).connect() as connection:
        return [tuple(r) for r in connection.execute(
            sa.select(EV.c.calibration_key, EV.c.phase_key).order_by(EV.c.event_id))]


def _expected() -> list[tuple[int, int]]:
    return [(keys.calibration_key(*(r[name] for name in keys.CALIBRATION_KEY_COLUMNS)),
             keys.phase_key(r["run_id"], r["phase_id"])) for r in ROWS]


def test_keys_are_written_with_every_row(db_url: str) -> None:
    _insert_raw(db_url, with_keys_by_default=True)
    assert _stored(db_url) == _expected()


def test_keys_tell_the_fields_apart() -> None:
    row = ['{"a": 1}', "docs", "low", 1, None, None, None, None, "p1"]
    a = keys.calibration_key(*row)
    for i, other in enumerate([None, "Docs", "LOW", 2, "", "m", "length", "stop", "p-doc"]):
        changed = list(row)
        changed[i] = other
        assert keys.calibration_key(*changed) != a, keys.CALIBRATION_KEY_COLUMNS[i]
    assert keys.calibration_key(*row[:-1], "p2") == a  # the phase id counts only for naming documentation
    assert keys.phase_key("r", "1x") != keys.phase_key("r1", "x")


def test_migration_backfills_existing_rows_with_the_same_keys(empty_db_url: str) -> None:
    engine = get_engine(empty_db_url)
    config = alembic_config()
    with engine.begin() as connection:  # a database an older autopack left at 0001 (migrations need a transaction)
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    dispose_engines()
    _insert_raw(empty_db_url, with_keys_by_default=False)
    upgrade_database(database_at(empty_db_url))
    assert _stored(empty_db_url) == _expected()  # on PostgreSQL: computed by SQL, equal to Python's


def test_the_recorder_writes_the_keys_without_knowing_them(db_url: str) -> None:
    from autopack.llm.base import LLMResponse
    from autopack.telemetry import CallKey, record_call
    from autopack.token_estimator import PhaseFeatures, plan_call

    features = PhaseFeatures(category="docs", complexity="low", deliverables=("docs/a.md",), description="d")
    est, decision = plan_call(features)
    answer = LLMResponse(text="x", provider="simulated", model="sim-1", max_tokens=decision.actual_max_tokens,
                         input_tokens=10, output_tokens=100, total_tokens=None, stop_reason="end_turn",
                         finish_reason="stop", truncated=False, reasoning_tokens=0, cached_tokens=0)
    record_call(CallKey("run-k", "write-docs", 0, 0), features, est, decision, answer, success=True, db=database_at(db_url))
    with get_engine(db_url).connect() as connection:
        row = connection.execute(sa.select(EV)).mappings().one()
    assert row["calibration_key"] == keys.calibration_key(*(row[name] for name in keys.CALIBRATION_KEY_COLUMNS))
    assert row["phase_key"] == keys.phase_key("run-k", "write-docs")
