"""The thin shell around the calibration: guard, read the events, write the files, record the run.

``run_calibration`` is what ``autopack calibrate``, ``scripts/calibrate_token_estimator.py`` and the
Prefect flow call. Reading uses a lean Core select streamed in partitions (strings factorised as they
arrive), so 10⁶ events never exist as 10⁶ ORM objects.
"""

from __future__ import annotations

import gc
import operator
import os
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from autopack.calibration.core import METHOD_VERSION, Calibration, Params, calibrate
from autopack.calibration.report import render_markdown, write_json, write_plot
from autopack.calibration.samples import (
    DOCS_ROWS_LIMIT,
    TRUNCATION_REASONS,
    EventColumns,
    Summary,
    build_sample_set,
    docs_row,
    spellings_of,
)
from autopack.config import get_settings
from autopack.db.engine import get_engine, resolve_url, session_scope
from autopack.db.identity import guard
from autopack.db.models import CalibrationRun, TokenEstimationV2Event
from autopack.errors import AutopackError
from autopack.logging import get_logger
from autopack.params import CalibrationParams
from autopack.taxonomy import DOCS_LIKE, canonical_category

log = get_logger("autopack.calibration")

READ_PARTITION = 50_000


class NoUsableSamplesError(AutopackError):
    """The selection holds no usable calibration sample."""

    exit_code = 1


def _timestamp_text(dialect: str, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """The timestamp as ISO text: numpy parses text ~30× faster than Python builds datetime objects."""
    if dialect == "sqlite":
        return sa.type_coerce(column, sa.String)  # already stored as text
    return sa.cast(column, sa.String)


def _truncation_flag(c: Any) -> sa.ColumnElement[Any]:
    reasons = sorted(TRUNCATION_REASONS)
    return sa.case(
        (sa.or_(c.truncated, c.is_truncated_output, c.stop_reason.in_(reasons), c.finish_reason.in_(reasons)), 1),
        else_=0,
    )


def _parse_epochs(texts: Sequence[Any]) -> np.ndarray:
    """Seconds since the epoch from ISO text values; a slow per-value path for odd ones."""
    try:
        return np.array(texts, dtype="datetime64[us]").astype("int64") / 1e6
    except (ValueError, TypeError):
        from autopack.calibration.importers import parse_timestamp

        return np.array([parse_timestamp(t).replace(tzinfo=UTC).timestamp() for t in texts], dtype=float)


def _raw_rows(connection: sa.Connection, stmt: sa.Select[Any]) -> Iterator[list[tuple[Any, ...]]]:
    """Stream the statement's rows in partitions straight from the DBAPI cursor (no per-row Row objects).

    PostgreSQL gets a server-side (named) cursor so 10⁶ rows are never held twice.
    """
    dialect = connection.dialect
    compiled = stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    sql = str(compiled)
    if dialect.paramstyle in ("qmark", "numeric", "format"):
        params: Any = tuple(compiled.params[name] for name in (compiled.positiontup or []))
    else:
        params = compiled.params
    raw = connection.connection.driver_connection
    server_side = dialect.name == "postgresql"
    cursor = raw.cursor(name="autopack_calibration") if server_side else raw.cursor()  # type: ignore[union-attr]
    try:
        if server_side:
            cursor.itersize = READ_PARTITION
        cursor.execute(sql, params)
        while True:
            rows = cursor.fetchmany(READ_PARTITION)
            if not rows:
                break
            yield rows
    finally:
        cursor.close()


def read_events(url: str | None = None, include_run_ids: Sequence[str] | None = None) -> EventColumns:
    """The calibration columns of ``token_estimation_v2_events`` (optionally only some runs).

    Per row only what the statistics need: category, complexity and deliverable count only for rows
    without ``features_json`` (rows with features are re-estimated, and autopack records canonical
    spellings; the legacy and imported rows are the ones normalisation has to fix), a run/phase key only
    for successful calls, to count successful phases. Run ids and the docs-phase list come from two
    small queries.
    """
    engine = get_engine(url)
    c = TokenEstimationV2Event.__table__.c
    where = [c.run_id.in_(list(include_run_ids))] if include_run_ids else []
    stmt = sa.select(
        c.event_id,
        _timestamp_text(engine.dialect.name, c.timestamp),
        sa.case((c.features_json.is_(None), c.category), else_=None),
        sa.case((c.features_json.is_(None), c.complexity), else_=None),
        sa.case((c.features_json.is_(None), c.deliverable_count), else_=0),
        c.features_json,
        c.predicted_output_tokens,
        c.actual_output_tokens,
        c.selected_budget,
        sa.func.coalesce(c.actual_max_tokens, -1),
        sa.cast(c.success, sa.Integer) * 2 + _truncation_flag(c),
        sa.case((c.success, c.run_id + "\x1f" + c.phase_id), else_=None),
    ).where(*where)

    cats: dict[str | None, int] = {}
    cxs: dict[str | None, int] = {}
    feats: dict[str, int] = {}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of short-lived tuples: the cyclic collector would rescan them over and over
    try:
        with engine.connect() as connection:
            parts, phases, docs, run_ids = _read_parts(connection, stmt, where, cats, cxs, feats)
    finally:
        if gc_was_enabled:
            gc.enable()
    cat_codes = np.concatenate(parts["cat"]) if parts["cat"] else np.empty(0, dtype=np.int32)

    def cat_(name: str, dtype: Any) -> np.ndarray:
        return np.concatenate(parts[name]) if parts[name] else np.empty(0, dtype=dtype)

    flags_all = cat_("flags", np.int8)
    amt_all = cat_("amt", float)
    amt_all[amt_all < 0] = np.nan
    cx_codes = cat_("cx", np.int32)
    success = (flags_all & 2) > 0
    n = int(flags_all.size)
    pair_counts: dict[tuple[str | None, str | None], int] = {}
    if n:
        keys, counts = np.unique(cat_codes.astype(np.int64) * (len(cxs) + 1) + cx_codes, return_counts=True)
        cat_list, cx_list = list(cats), list(cxs)
        for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
            pair = (cat_list[key // (len(cxs) + 1)], cx_list[key % (len(cxs) + 1)])
            if pair != (None, None):  # (None, None): rows with features, not fetched
                pair_counts[pair] = count
    summary = Summary(
        run_ids=run_ids,
        successful_phases=len(phases),
        success_rate_all=float(success.mean()) if n else 0.0,
        coverage_actual_max_tokens=float((~np.isnan(amt_all)).mean()) if n else 0.0,
        spellings=spellings_of(pair_counts),
        docs_rows=docs,
    )
    return EventColumns(
        event_id=cat_("id", np.int64),
        epoch=cat_("epoch", float),
        category_code=cat_codes,
        complexity_code=cx_codes,
        deliverable_count=cat_("dc", np.int64),
        features_code=cat_("feat", np.int32),
        predicted=cat_("pred", float),
        actual=cat_("act", float),
        selected_budget=cat_("sel", float),
        actual_max_tokens=amt_all,
        success=success,
        truncated=(flags_all & 1) > 0,
        categories=list(cats),
        complexities=list(cxs),
        features=list(feats),
        summary=summary,
    )


def _read_parts(
    connection: sa.Connection,
    stmt: sa.Select[Any],
    where: list[Any],
    cats: dict[str | None, int],
    cxs: dict[str | None, int],
    feats: dict[str, int],
) -> tuple[dict[str, list[np.ndarray]], set[str], list[dict[str, Any]], list[str]]:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (
        "id", "epoch", "cat", "cx", "dc", "feat", "pred", "act", "sel", "amt", "flags")}
    phases: set[str] = set()
    columns = [operator.itemgetter(i) for i in range(12)]
    for part in _raw_rows(connection, stmt):
        ids, ts, cat, cx, dc, feat, pred, act, sel, amt, flags, phase = (list(map(g, part)) for g in columns)
        parts["id"].append(np.array(ids, dtype=np.int64))
        parts["epoch"].append(_parse_epochs(ts))
        parts["cat"].append(np.array([cats.setdefault(v, len(cats)) for v in cat], dtype=np.int32))
        parts["cx"].append(np.array([cxs.setdefault(v, len(cxs)) for v in cx], dtype=np.int32))
        parts["dc"].append(np.array(dc, dtype=np.int64))
        parts["feat"].append(np.array([feats.setdefault(v, len(feats)) if v else -1 for v in feat], dtype=np.int32))
        parts["pred"].append(np.array(pred, dtype=float))
        parts["act"].append(np.array(act, dtype=float))
        parts["sel"].append(np.array(sel, dtype=float))
        parts["amt"].append(np.array(amt, dtype=float))
        parts["flags"].append(np.array(flags, dtype=np.int8))
        phases.update(phase)
    phases.discard(None)  # type: ignore[arg-type]
    c = TokenEstimationV2Event.__table__.c
    run_ids = sorted(connection.execute(sa.select(c.run_id).where(*where).distinct()).scalars().all())
    docs_spellings = sorted(DOCS_LIKE | {v for v in cats if v is not None and canonical_category(v) in DOCS_LIKE})
    docs = _docs_rows(connection, where, docs_spellings)
    return parts, phases, docs, run_ids


def _docs_rows(connection: sa.Connection, where: list[Any], docs_categories: list[str]) -> list[dict[str, Any]]:
    c = TokenEstimationV2Event.__table__.c
    docs_filter = sa.or_(c.category.in_(docs_categories),
                         c.phase_id.ilike("%doc%"), c.phase_id.ilike("%readme%"))
    return [
        docs_row(r.run_id, r.phase_id, r.category, r.complexity, r.actual_output_tokens, r.predicted_output_tokens,
                 r.actual_max_tokens, r.selected_budget, bool(r.trunc), bool(r.success))
        for r in connection.execute(
            sa.select(c.run_id, c.phase_id, c.category, c.complexity, c.actual_output_tokens,
                      c.predicted_output_tokens, c.actual_max_tokens, c.selected_budget,
                      _truncation_flag(c).label("trunc"), c.success)
            .where(docs_filter, *where)
            .order_by(c.actual_output_tokens.desc(), c.event_id)
            .limit(DOCS_ROWS_LIMIT)
        )
    ]


#: ``run_calibration``'s defaults are the model's; ``Params`` checks the values (one ``InputError`` naming the bad one).
_DEFAULTS = CalibrationParams()


def _stem(output_dir: Path, now: datetime) -> str:
    stem = f"token_estimator_calibration_{now:%Y%m%d_%H%M%S}"
    candidate, i = stem, 1
    while any((output_dir / f"{candidate}{ext}").exists() for ext in (".md", ".json", ".png")):
        candidate = f"{stem}_{i}"
        i += 1
    return candidate


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _record(url: str, **fields: Any) -> int:
    with session_scope(url) as session:
        row = CalibrationRun(method_version=METHOD_VERSION, **fields)
        session.add(row)
        session.flush()
        return int(row.id)


def _update(url: str, run_id: int, **fields: Any) -> None:
    with session_scope(url) as session:
        row = session.get(CalibrationRun, run_id)
        if row is not None:
            for k, v in fields.items():
                setattr(row, k, v)


def run_calibration(
    url: str | None = None,
    *,
    min_samples: int = _DEFAULTS.min_samples,
    confidence_threshold: float = _DEFAULTS.confidence_threshold,
    target_truncation: float = _DEFAULTS.target_truncation,
    holdout_fraction: float = _DEFAULTS.holdout_fraction,
    include_run_ids: Sequence[str] | None = None,
    output_dir: Path = Path("."),
    allow_empty_db: bool = False,
    expect_db_id: str | None = None,
    method: str | None = _DEFAULTS.method,
) -> dict[str, Any]:
    """Calibrate from the database, write the report/JSON/PNG, record the run; return the JSON object.

    Raises the guard's errors (exit 2/3) and ``NoUsableSamplesError`` (exit 1) when nothing is usable.
    """
    params = Params(min_samples=min_samples, confidence_threshold=confidence_threshold,
                    target_truncation=target_truncation, holdout_fraction=holdout_fraction,
                    include_run_ids=tuple(include_run_ids or ()), method=method)
    resolved = resolve_url(url)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now_ = time.perf_counter()
        timings[name] = round(now_ - clock, 3)
        clock = now_

    identity = guard(resolved, expect_db_id=expect_db_id or get_settings().expected_db_id, allow_empty=allow_empty_db)
    lap("guard")
    now = datetime.now(UTC).replace(microsecond=0)
    columns = read_events(resolved, params.include_run_ids)
    lap("read")
    samples = build_sample_set(columns)
    lap("samples")
    param_record = {**params.model_dump(), "include_run_ids": list(params.include_run_ids),
                    "output_dir": str(output_dir)}
    naive_now = now.replace(tzinfo=None)
    if samples.n == 0:
        _record(resolved, created_at=naive_now, db_id=identity.db_id, params=param_record, sample_count=0,
                run_ids=[], outcome="no_samples", gate_passed=False)
        c = samples.counts
        raise NoUsableSamplesError(
            f"no usable calibration samples ({c['rows_read']} rows read, {c['selected']} successful or truncated, "
            f"{c['excluded_nonpositive_predicted']} with predicted <= 0, {c['excluded_zero_actual']} with actual = 0)",
            hint="drain some phases first (autopack drain), or check --include-run-id",
        )

    calibration: Calibration = calibrate(samples, params)
    lap("calibrate")
    result = calibration.result
    md = result["metadata"]
    md["db_id"] = identity.db_id
    md["generated_at"] = now.replace(tzinfo=None).isoformat() + "Z"
    start = datetime.fromisoformat(md["time_span"]["start"].rstrip("Z"))
    end = datetime.fromisoformat(md["time_span"]["end"].rstrip("Z"))
    run_row = _record(
        resolved, created_at=naive_now, db_id=identity.db_id, params=param_record, sample_count=samples.n,
        run_ids=md["run_ids"], data_start=start, data_end=end, outcome="running", gate_passed=False,
    )
    md["calibration_run_id"] = run_row
    try:
        out = Path(output_dir).expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        stem = _stem(out, now)
        report_path, json_path, plot_path = out / f"{stem}.md", out / f"{stem}.json", out / f"{stem}.png"
        p = calibration.plot
        tmp_png = plot_path.with_name(f".{plot_path.name}.tmp.png")
        write_plot(tmp_png, p.groups, p.ratios, p.observed, p.factors, p.proposed, params.alpha)
        os.replace(tmp_png, plot_path)
        lap("plot")
        md["timings_seconds"] = dict(timings)
        result["report_path"], result["json_path"], result["plot_path"] = str(report_path), str(json_path), str(plot_path)
        _atomic_write_text(report_path, render_markdown(result, plot_path.name))
        tmp_json = json_path.with_name(f".{json_path.name}.tmp")
        write_json(result, tmp_json)
        os.replace(tmp_json, json_path)
    except Exception:
        _update(resolved, run_row, outcome="error")
        raise
    passed = bool(result["gate"]["passed"])
    _update(resolved, run_row, outcome="gate_passed" if passed else "gate_not_passed", gate_passed=passed,
            report_path=str(report_path), json_path=str(json_path))
    log.info("calibration %s: %d samples, gate %s, report %s", run_row, samples.n,
             "passed" if passed else "not passed", report_path)
    return result
