"""The one order runs are taken and listed in: by run id, except that a seed week's number counts as a number.

Week k of the seed collection is named ``telemetry-collection-week<k>-v4`` … (``seed_runs.week_run_id``), so
that drains, which take runs in id order, take the weeks in the order they were collected. Compared as text,
``week10`` sorts before ``week2``: a collection past nine weeks was drained and listed out of order. The names stay
(databases hold them, people know them); the order reads the number: (``telemetry-collection-week``, its number
of digits, the id) for a week's run, (the id, 0, the id) for any other, so other ids keep their text order among
themselves. ``run_order_key`` is the rule in Python, ``run_order`` the same rule in SQL (SQLite and PostgreSQL), for
queries that pick the first run (a claim, the pipeline's validation phase) or list runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute

#: A later week's run id starts with this, then the week number, then ``-`` and the seed run's own suffix.
WEEK_PREFIX = "telemetry-collection-week"
_WEEK_ID = re.compile(rf"{re.escape(WEEK_PREFIX)}([0-9]+)(-.*)", re.DOTALL)
_DIGITS = "0123456789"


def week_of(run_id: str) -> tuple[int, str] | None:
    """(week number, the rest after it, ``-`` included) of a later week's run id; None for any other id."""
    match = _WEEK_ID.fullmatch(run_id)
    return (int(match[1]), match[2]) if match else None


def run_order_key(run_id: str) -> tuple[str, int, str]:
    """Sort key of a run id: ``sorted(ids, key=run_order_key)`` puts week 10 after week 9."""
    match = _WEEK_ID.fullmatch(run_id)
    return (WEEK_PREFIX, len(match[1]), run_id) if match else (run_id, 0, run_id)


def sorted_runs(run_ids: Iterable[str]) -> list[str]:
    """The run ids in run order (any iterable of ids: a set, a dict's keys)."""
    return sorted(run_ids, key=run_order_key)


def run_order(column: sa.ColumnElement[str] | InstrumentedAttribute[str]) -> tuple[sa.ColumnElement[Any], ...]:
    """``run_order_key`` in SQL, for ``order_by(*run_order(Phase.run_id), …)``: the same three keys.

    ``ltrim(tail, digits)`` drops the week number's digits (in SQLite and PostgreSQL alike), so the number of
    digits is the tail's length less what is left, and a week's id is one whose tail starts with digits and a ``-``.
    """
    column = column.expression  # a mapped attribute's column, as an expression
    tail = sa.func.substr(column, len(WEEK_PREFIX) + 1)
    rest = sa.func.ltrim(tail, _DIGITS)
    digits = sa.func.length(tail) - sa.func.length(rest)
    is_week = sa.and_(sa.func.substr(column, 1, len(WEEK_PREFIX)) == WEEK_PREFIX, digits > 0,
                      sa.func.substr(rest, 1, 1) == "-")
    return (sa.case((is_week, sa.literal(WEEK_PREFIX)), else_=column),
            sa.case((is_week, digits), else_=0),
            column)
