"""``GET /runs/{run_id}/telemetry``: what the calibration table holds for a run, by category/complexity."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, status

from autopack.api.deps import DbDep
from autopack.api.inputs import StrictJsonRoute
from autopack.api.runs import NOT_FOUND, RunIdPath
from autopack.api.schemas import GroupStats, TelemetrySummaryOut
from autopack.db.models import Run, TokenEstimationV2Event
from autopack.taxonomy import canonical_category, canonical_complexity

router = APIRouter(tags=["telemetry"], route_class=StrictJsonRoute)


def _add(groups: dict[str, GroupStats], key: str, n: int, success: bool, truncated: bool) -> None:
    stats = groups.setdefault(key, GroupStats(events=0, success=0, truncated=0))
    stats.events += n
    stats.success += n if success else 0
    stats.truncated += n if truncated else 0


@router.get("/runs/{run_id}/telemetry", response_model=TelemetrySummaryOut, responses=NOT_FOUND)
def telemetry_summary(run_id: RunIdPath, db: DbDep) -> TelemetrySummaryOut:
    """Event, success and truncation counts, grouped by canonical category and complexity.

    A call whose worker died before its deliverables were checked (``phase_outcome`` UNCHECKED) is an event and,
    when cut, a truncation, never a success: its outcome is unknown."""
    ev = TokenEstimationV2Event
    rows = db.execute(
        sa.select(ev.category, ev.complexity, ev.success, ev.truncated, sa.func.count())
        .where(ev.run_id == run_id)
        .group_by(ev.category, ev.complexity, ev.success, ev.truncated)
    ).all()
    if not rows and db.get(Run, run_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"run '{run_id}' not found")
    by_category: dict[str, GroupStats] = {}
    by_complexity: dict[str, GroupStats] = {}
    events = success = truncated = 0
    for category, complexity, ok, cut, n in rows:
        n, ok, cut = int(n), bool(ok), bool(cut)
        _add(by_category, canonical_category(category), n, ok, cut)
        _add(by_complexity, canonical_complexity(complexity), n, ok, cut)
        events += n
        success += n if ok else 0
        truncated += n if cut else 0
    return TelemetrySummaryOut(
        run_id=run_id,
        events=events,
        success=success,
        truncated=truncated,
        by_category=dict(sorted(by_category.items())),
        by_complexity=dict(sorted(by_complexity.items())),
    )
