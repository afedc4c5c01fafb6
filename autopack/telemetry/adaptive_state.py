"""The runtime state of adaptive (ACI) budgets in the database: read before a call, moved after it.

The reviewed part (each group's factor curve, the target α and γ) lives in ``token_estimator.py``; the
database holds only each group's level α_t (``adaptive_budget_state``). ``read_level`` is what the phase
executor passes to ``plan_call``; ``apply_feedback`` is called by the telemetry recorder in the same
transaction as the call's telemetry row, so a level moves once per recorded call and never without it.

The update is one conditional ``UPDATE`` (after an ``INSERT … ON CONFLICT DO NOTHING`` creating the row):

    alpha_t = clip((alpha_t if the curve is the same else target) + γ(α − err), α_min, α_max)

evaluated by the database on the row's current value, so several drains finishing calls of one group at
once never lose an update (PostgreSQL: the row lock orders them and READ COMMITTED re-reads the row;
SQLite: one writer at a time). It is ``token_estimator.aci_step`` in SQL; a test pins the two equal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from autopack.db.models import AdaptiveBudgetState, utcnow
from autopack.logging import get_logger
from autopack.token_estimator import AdaptiveLevel, AdaptiveUse

if TYPE_CHECKING:
    from autopack.db.handle import Database

log = get_logger("autopack.telemetry")

Group = tuple[str, str]


def read_level(session: sa.orm.Session, group: Group) -> AdaptiveLevel | None:
    """The group's stored level (None when no call of the group has finished yet)."""
    row = session.execute(
        sa.select(AdaptiveBudgetState.alpha_t, AdaptiveBudgetState.curve_fingerprint, AdaptiveBudgetState.n_feedback)
        .where(AdaptiveBudgetState.category == group[0], AdaptiveBudgetState.complexity == group[1])
    ).one_or_none()
    if row is None:
        return None
    return AdaptiveLevel(float(row.alpha_t), str(row.curve_fingerprint), int(row.n_feedback))


def level_reader(db: Database) -> Callable[[Group], AdaptiveLevel | None]:
    """``plan_call``'s ``adaptive`` lookup on a database. A failed read plans at the target level (the
    reviewed static factor) and says so in the log: a state read must never fail a phase on its own."""

    def lookup(group: Group) -> AdaptiveLevel | None:
        try:
            with db.session() as session:
                return read_level(session, group)
        except SQLAlchemyError as exc:
            log.warning("adaptive budget state of %s/%s unreadable (%s): planning at the target level",
                        group[0], group[1], type(exc).__name__)
            return None

    return lookup


def _float(value: float) -> sa.ColumnElement[float]:
    return sa.literal(value, type_=sa.Float())


def apply_feedback(session: sa.orm.Session, use: AdaptiveUse, err: int) -> None:
    """Move the group's level by one finished call (``err`` 1 = it reached the adaptive ceiling)."""
    err = 1 if err else 0
    table = cast(sa.Table, AdaptiveBudgetState.__table__)  # declared as a FromClause; it is a Table
    now = utcnow()
    start = min(max(use.target_alpha, use.alpha_min), use.alpha_max)
    dialect = session.get_bind().dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table).values(
        category=use.group[0], complexity=use.group[1], method="aci", alpha_t=start, target_alpha=use.target_alpha,
        curve_fingerprint=use.fingerprint, n_feedback=0, n_truncated=0, created_at=now, updated_at=now,
    )
    session.execute(insert.on_conflict_do_nothing(index_elements=["category", "complexity"]))

    c = table.c
    same = c.curve_fingerprint == use.fingerprint
    moved = sa.case((same, c.alpha_t), else_=_float(start)) + _float(use.gamma * (use.target_alpha - err))
    low, high = _float(use.alpha_min), _float(use.alpha_max)
    session.execute(
        sa.update(table)
        .where(c.category == use.group[0], c.complexity == use.group[1])
        .values(
            alpha_t=sa.case((moved < low, low), (moved > high, high), else_=moved),
            target_alpha=use.target_alpha,
            curve_fingerprint=use.fingerprint,
            n_feedback=sa.case((same, c.n_feedback), else_=0) + 1,
            n_truncated=sa.case((same, c.n_truncated), else_=0) + err,
            updated_at=now,
        )
    )
