"""Column ranges derived from the ORM (``autopack.telemetry.bounds``), and that they match PostgreSQL."""

from __future__ import annotations

import math

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DataError

from autopack.db.engine import session_scope
from autopack.db.models import Base, LlmUsageEvent, Phase, TokenBudgetEscalationEvent, TokenEstimationV2Event
from autopack.telemetry.bounds import (
    INT32,
    INT64,
    ValueOutOfRangeError,
    bounds_for,
    check_row,
    column_bounds,
    out_of_range,
)

_scratch = sa.MetaData()
SCRATCH = sa.Table(
    "scratch",
    _scratch,
    sa.Column("small", sa.SmallInteger),
    sa.Column("regular", sa.Integer),
    sa.Column("big", sa.BigInteger),
    sa.Column("ratio", sa.Float),
    sa.Column("delta", sa.Integer, info={"signed": True}),
    sa.Column("offset", sa.Float, info={"signed": True}),
    sa.Column("flag", sa.Boolean),
    sa.Column("name", sa.String(10)),
)


def test_ranges_follow_the_column_type() -> None:
    b = bounds_for(SCRATCH)
    assert (b["small"].low, b["small"].high) == (0, 2**15 - 1)
    assert (b["regular"].low, b["regular"].high) == (0, 2**31 - 1)
    assert (b["big"].low, b["big"].high) == (0, 2**63 - 1)
    assert (b["delta"].low, b["delta"].high) == INT32
    assert b["ratio"].low == 0.0 and b["offset"].low is None
    assert "flag" not in b and "name" not in b


def test_integer_edges() -> None:
    regular, big = bounds_for(SCRATCH)["regular"], bounds_for(SCRATCH)["big"]
    assert regular.problem(2**31 - 1) is None and regular.problem(0) is None
    assert regular.problem(2**31) == "scratch.regular=2147483648 is outside 0..2147483647"
    assert regular.problem(-1) == "scratch.regular=-1 is negative"
    assert big.problem(3_000_000_000) is None and big.problem(INT64[1] + 1) is not None
    assert bounds_for(SCRATCH)["delta"].problem(INT32[0]) is None
    assert bounds_for(SCRATCH)["delta"].problem(INT32[0] - 1) is not None


@pytest.mark.parametrize("value", [True, "12", 1.0, 1.5, float("nan"), b"1"])
def test_an_integer_column_takes_integers_only(value: object) -> None:
    assert bounds_for(SCRATCH)["regular"].problem(value) is not None


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400, -0.5, False])
def test_a_float_column_takes_finite_non_negative_numbers(value: object) -> None:
    assert bounds_for(SCRATCH)["ratio"].problem(value) is not None


def test_none_is_left_to_the_schema() -> None:
    assert bounds_for(SCRATCH)["regular"].problem(None) is None


def test_every_numeric_column_of_the_schema_is_bounded() -> None:
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, sa.Integer):
                bounds = column_bounds(column)
                width = INT64 if isinstance(column.type, sa.BigInteger) else INT32
                assert bounds is not None and bounds.integer and bounds.high == width[1], column
            if isinstance(column.type, sa.Float):
                bounds = column_bounds(column)
                assert bounds is not None and not bounds.integer, column


def test_orm_attribute_and_column_names_both_work() -> None:
    assert bounds_for(TokenEstimationV2Event)["id"] is bounds_for(TokenEstimationV2Event)["event_id"]
    assert out_of_range(TokenEstimationV2Event, {"id": -1, "event_id": 2**31}).keys() == {"id", "event_id"}


def test_check_row_names_every_bad_value_and_ignores_the_rest() -> None:
    row = {"completion_tokens": 3_000_000_000, "prompt_tokens": -5, "total_tokens": 12, "provider": "x" * 999}
    with pytest.raises(ValueOutOfRangeError) as info:
        check_row(LlmUsageEvent, row, context="call r/p")
    assert set(info.value.problems) == {"completion_tokens", "prompt_tokens"}
    assert info.value.one_line().startswith("call r/p: llm_usage_events.completion_tokens=3000000000 is outside")
    check_row(TokenBudgetEscalationEvent, {"escalation_factor": 1.25, "tokens_used": None})


def test_the_derived_maximum_is_postgresqls_and_sqlite_would_not_have_refused(db_url: str) -> None:
    """The range is the column's, not the backend's: PostgreSQL overflows exactly past it, SQLite never."""
    from autopack.execution.runs import create_run
    from autopack.execution.spec import PhaseSpec, RunSpec

    spec = RunSpec(run_id="r", phases=[PhaseSpec(phase_id="p", description="d", category="implementation",
                                                  complexity="low", deliverables=["a.py"])])
    with session_scope(db_url) as session:
        create_run(session, spec)
    high = bounds_for(Phase)["tokens_used"].high
    update = sa.update(Phase).where(Phase.phase_id == "p")
    with session_scope(db_url) as session:
        session.execute(update.values(tokens_used=high))
    overflow = update.values(tokens_used=high + 1)
    if db_url.startswith("postgresql"):
        with pytest.raises(DataError), session_scope(db_url) as session:
            session.execute(overflow)
    else:
        with session_scope(db_url) as session:
            session.execute(overflow)  # SQLite stores it: only the bounds check stands between
    assert bounds_for(Phase)["tokens_used"].problem(high + 1) is not None
