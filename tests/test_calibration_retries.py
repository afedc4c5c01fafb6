"""Escalated retries in the calibration, retries in imports, and the calibration window.

- a retry is never a sample, but it says what its cut call needed: observed (the retry came out uncut) or
  censored at the retry's higher ceiling (it was cut too);
- imports mark retries with ``attempt_index`` + ``is_retry``/``escalated_from`` and are then read exactly as
  the executor's recorded calls; a file that cannot tell makes the report say "retries unknown";
- ``read_events(since=…)`` reads only the window's rows, found through the timestamp index.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from autopack.calibration.core import Params, calibrate
from autopack.calibration.reader import id_bounds, read_events
from autopack.calibration.report import _retries_line
from autopack.calibration.result import Metadata
from autopack.calibration.samples import (
    EventColumns,
    SampleSet,
    build_sample_set,
    columns_from_records,
    phase_retries,
    retry_links,
)
from autopack.db.engine import get_engine
from autopack.db.handle import database_at, open_database
from autopack.db.models import TokenBudgetEscalationEvent, TokenEstimationV2Event
from autopack.params import CalibrationParams
from autopack.telemetry.ingest import import_telemetry

from synthetic_telemetry import GroupTruth, Law, Truth, simulate_groups, simulate_with_escalations

EV = TokenEstimationV2Event.__table__
ESC = TokenBudgetEscalationEvent.__table__


# --- linking a retry to the call it re-ran ------------------------------------------------------------------------



def metadata(**fields: Any) -> Metadata:
    """A result's metadata with the parameters every calibration has, and ``fields``."""
    return Metadata.model_validate({"total_samples": 0, "target_truncation": 0.05, "confidence_threshold": 0.7,
                                    "min_samples": 5, **fields})

def test_each_retry_is_linked_to_the_call_of_the_previous_attempt() -> None:
    phase = np.array([7, 7, 7, 9, 9, 5])
    attempt = np.array([0, 1, 3, 2, 4, 0])
    event_id = np.arange(6) + 1
    retry = np.array([False, True, False, False, True, False])  # attempt 3 of phase 7: a fresh execution
    assert retry_links(phase, attempt, event_id, retry).tolist() == [-1, 0, -1, -1, 3, -1]


def test_calls_of_a_retry_attempt_are_paired_in_order() -> None:
    phase = np.array([1, 1, 1, 1, 1])
    attempt = np.array([1, 0, 0, 1, 1])  # a retry attempt with more calls than the attempt it re-ran
    event_id = np.array([13, 10, 11, 12, 14])
    retry = attempt == 1
    # by event id: the retry's calls 12, 13 re-ran 10, 11; its third call (14) has no counterpart
    assert retry_links(phase, attempt, event_id, retry).tolist() == [2, -1, -1, 1, -1]


def test_a_repeated_execution_of_a_cut_phase_is_a_retry_of_its_first_cut_call() -> None:
    # phase 7: attempt 0 cut and escalated (1), the escalation cut too, so the drain ran the phase again (2) and
    # escalated that (3); phase 9's second execution follows an uncut call (re-run for another reason): a sample
    phase = np.array([7, 7, 7, 7, 9, 9])
    attempt = np.array([0, 1, 2, 3, 0, 1])
    escalated = np.array([False, True, False, True, False, False])
    cut = np.array([True, True, True, False, False, False])
    retry, repeat, links = phase_retries(phase, attempt, np.arange(6) + 1, escalated, cut)
    assert retry.tolist() == [False, True, True, True, False, False]
    assert repeat.tolist() == [False, False, True, False, False, False]
    assert links.tolist() == [-1, 0, 0, 0, -1, -1]


def test_a_phase_run_again_after_its_cut_is_one_sample_at_what_its_runs_showed() -> None:
    records = [
        _call("shown", 0, 1000, 1000), _call("shown", 1, 1250, 1250),  # escalated, cut again
        _call("shown", 2, 1000, 1000), _call("shown", 3, 1320, 1400),  # run again: its escalation came out
        _call("hidden", 0, 1000, 1000), _call("hidden", 1, 1250, 1250),
        _call("hidden", 2, 1000, 1000), _call("hidden", 3, 1250, 1250),  # never uncut: censored at 1250
        _call("rerun", 0, 700, 1000), _call("rerun", 1, 720, 1000),  # re-run after an uncut call: two samples
    ]
    escalations = [_escalation("shown", 0), _escalation("shown", 2), _escalation("hidden", 0),
                   _escalation("hidden", 2)]
    samples = build_sample_set(columns_from_records(records, escalations))
    assert sorted(zip(samples.y.tolist(), samples.observed.tolist(), strict=True)) == [
        (700.0, True), (720.0, True), (1250.0, False), (1320.0, True)]
    c = samples.counts
    assert (c["retries_excluded"], c["repeats_excluded"]) == (6, 2)
    assert _retries_line(metadata(retries_known=True, retries_excluded=6, sample_counts=c)) == (
        "6 retries excluded (4 escalated, 2 runs again of a phase whose call was cut, which stays one sample; kept "
        "in the database, never fitted; 1 showed their cut call's need, 1 raised its censoring to their ceiling)")


def test_counting_each_run_of_a_phase_once_measures_the_phases_truncation() -> None:
    """Known truth: 4,000 phases, log-normal need, the estimator's ceiling at the 95 % quantile (5 % of phases
    cut). A cut call is escalated ×1.25; if that is cut too the phase runs again from the same ceiling (the
    same need, a little noise) and is escalated again. The samples' cut share is the phases' 5 %; counting
    the second run as a first attempt would show about 1.4× that."""
    rng = np.random.default_rng(5)
    sigma, n = 0.5, 4000
    cap = int(1000 * np.exp(1.6449 * sigma))
    records: list[dict[str, Any]] = []
    escalations: list[dict[str, Any]] = []
    for i, need in enumerate(1000 * np.exp(sigma * rng.standard_normal(n))):
        phase = f"p{i}"
        for attempt, ceiling in enumerate((cap, int(cap * 1.25), cap, int(cap * 1.25))):
            actual = int(need * np.exp(0.05 * rng.standard_normal()))
            records.append(_call(phase, attempt, min(actual, ceiling), ceiling))
            if actual < ceiling:
                break
            if ceiling > cap:  # the escalation was cut too: the phase runs again from the estimator's ceiling
                continue
            escalations.append(_escalation(phase, attempt))
    for i, r in enumerate(records):
        r["timestamp"] = 1000.0 + i
    samples = build_sample_set(columns_from_records(records, escalations))
    cut_share = float(np.mean(~samples.observed | (samples.y >= cap)))
    assert samples.n == n
    assert abs(cut_share - 0.05) < 3 * np.sqrt(0.05 * 0.95 / n)
    first_runs_too = sum(r["attempt_index"] in (0, 2) and r["truncated"] for r in records) / sum(
        r["attempt_index"] in (0, 2) for r in records)
    assert first_runs_too > 1.3 * 0.05


# --- what a retry says about its cut call ---------------------------------------------------------------------------


def _call(phase: str, attempt: int, actual: int, ceiling: int, *, success: bool | None = None) -> dict[str, Any]:
    cut = actual >= ceiling
    return {"run_id": "r", "phase_id": phase, "attempt_index": attempt, "category": "implementation",
            "complexity": "low", "predicted_output_tokens": 1000, "actual_output_tokens": actual,
            "selected_budget": ceiling, "actual_max_tokens": ceiling, "truncated": cut,
            "success": (not cut) if success is None else success, "timestamp": 1000.0 + len(phase) + attempt}


def _escalation(phase: str, attempt: int = 0) -> dict[str, Any]:
    return {"run_id": "r", "phase_id": phase, "attempt_index": attempt}


def _by_phase(samples: SampleSet, records: list[dict[str, Any]]) -> dict[str, tuple[float, bool]]:
    phase_of = {i + 1: r["phase_id"] for i, r in enumerate(records)}
    return {phase_of[int(e)]: (float(y), bool(o))
            for e, y, o in zip(samples.event_id, samples.y, samples.observed, strict=True)}


def test_a_retry_reveals_or_raises_its_cut_call_and_is_never_a_sample() -> None:
    records = [
        _call("shown", 0, 1000, 1000), _call("shown", 1, 1180, 1250),  # retry uncut: the need is observed
        _call("short", 0, 1000, 1000), _call("short", 1, 960, 1250),  # retry shorter: observed at the cut point
        _call("raised", 0, 1000, 1000), _call("raised", 1, 1250, 1250),  # cut again: censored higher
        _call("failed", 0, 1000, 1000), _call("failed", 1, 1100, 1250, success=False),  # tells nothing
        _call("alone", 0, 1000, 1000),  # no retry
        _call("fine", 0, 700, 1000),
    ]
    escalations = [_escalation(p) for p in ("shown", "short", "raised", "failed")]
    samples = build_sample_set(columns_from_records(records, escalations))
    assert _by_phase(samples, records) == {
        "shown": (1180.0, True), "short": (1000.0, True), "raised": (1250.0, False), "failed": (1000.0, False),
        "alone": (1000.0, False), "fine": (700.0, True),
    }
    c = samples.counts
    assert (c["retries_excluded"], c["cut_calls_revealed_by_retry"], c["cut_calls_raised_by_retry"]) == (4, 2, 1)
    assert (c["observed"], c["censored"]) == (3, 3) and samples.n == 6
    assert _retries_line(metadata(retries_known=True, retries_excluded=4, sample_counts=c)) == (
        "4 escalated retries excluded (kept in the database, never fitted; 2 showed their cut call's need, "
        "1 raised its censoring to their ceiling)")


def test_cut_calls_whose_retries_were_seen_get_the_factor_of_the_uncensored_law() -> None:
    """Every cut call is capped at the law's 80 % quantile (fixed caps), so the first attempts alone cannot see
    the 95 % quantile: the factor then rests on a log-normal assumption that this mixture breaks. The retries
    (ceiling ×1.25) see it: the factor is the one the same calls give uncensored."""
    group = ("documentation", "low")
    law = Law(0.0, 0.1, 0.2, 0.25, 0.08)
    with_retries, without, uncensored, truth = [], [], [], []
    for seed in range(3):
        sim = simulate_groups([GroupTruth(*group, 600, law, 0.2, False)], seed=seed)
        full = simulate_groups([GroupTruth(*group, 600, law, 0.0, False)], seed=seed)
        for columns, out in ((sim.columns, with_retries), (dataclasses.replace(sim.columns, retry_of=None), without),
                             (full.columns, uncensored)):
            out.append(calibrate(build_sample_set(columns), Params()).result.groups[0].budget_factor)
        truth.append([sim.true_truncation(group, f) for f in (with_retries[-1], without[-1])])
    rates = np.array(truth)
    assert np.mean(np.abs(np.log(np.array(with_retries) / np.array(uncensored)))) < 0.03
    assert abs(rates[:, 0].mean() - 0.05) <= 0.015 < rates[:, 1].mean() - 0.05  # without: well above α


# --- the database read links retries as the per-row path does (both backends) -------------------------------------


def _store(url: str, rows: list[dict[str, Any]], escalations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with get_engine(url).begin() as connection:
        connection.execute(sa.insert(EV), [{"actual_max_tokens_backfilled": False, "schema_version": 2,
                                            "retries_known": None, **r} for r in rows])
        if escalations:
            connection.execute(sa.insert(ESC), escalations)
        ids = connection.execute(sa.select(EV.c.event_id).order_by(EV.c.event_id)).scalars().all()
    return [{**r, "id": i} for r, i in zip(rows, ids, strict=True)]


def _retry_view(columns: EventColumns) -> dict[int, tuple[bool, int | None, bool]]:
    retry_of = columns.retry_of if columns.retry_of is not None else np.full(columns.size, -1)
    unknown = columns.retry_unknown if columns.retry_unknown is not None else np.zeros(columns.size, dtype=bool)
    assert columns.retry is not None
    return {int(e): (bool(r), None if o < 0 else int(columns.event_id[o]), bool(u))
            for e, r, o, u in zip(columns.event_id, columns.retry, retry_of, unknown, strict=True)}


def test_the_read_links_retries_and_flags_unknown_sources_like_the_per_row_path(db_url: str) -> None:
    rows, escalations = simulate_with_escalations(80, seed=2, truth=Truth(sigma=0.6))
    rows[-1] = {**rows[-1], "retries_known": False, "source": "import:csv:old.csv"}
    stored = _store(db_url, rows, escalations)
    got, want = read_events(database_at(db_url)), columns_from_records(stored, escalations)
    assert _retry_view(got) == _retry_view(want)
    assert sum(o is not None for _, o, _ in _retry_view(got).values()) == len(escalations) > 5
    assert build_sample_set(got).counts == build_sample_set(want).counts
    assert not build_sample_set(got).retries_known


# --- imports carry retries ------------------------------------------------------------------------------------------


CSV_FIELDS = ("timestamp", "run_id", "phase_id", "attempt_index", "category", "complexity", "deliverable_count",
              "predicted_output_tokens", "actual_output_tokens", "selected_budget", "actual_max_tokens", "truncated",
              "success", "stop_reason", "finish_reason", "provider", "model")


def _csv(path: Path, rows: list[dict[str, Any]], run_id: str, retry_column: str | None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*CSV_FIELDS, *([retry_column] if retry_column else [])])
        for r in rows:
            values = {**r, "run_id": run_id, "timestamp": r["timestamp"].isoformat()}
            retry = {"is_retry": "true" if r["attempt_index"] else "",
                     "escalated_from": r["attempt_index"] - 1 if r["attempt_index"] else ""}.get(retry_column or "")
            writer.writerow([values[f] for f in CSV_FIELDS] + ([retry] if retry_column else []))
    return path


def _samples(url: str, run_id: str) -> SampleSet:
    return build_sample_set(read_events(database_at(url), [run_id]))


def _same_samples(a: SampleSet, b: SampleSet) -> None:
    for name in ("y", "observed", "group", "recorded_ceiling", "recorded_predicted", "epoch"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.counts == b.counts and a.retries_known and b.retries_known


@pytest.mark.parametrize("retry_column", ["is_retry", "escalated_from"])
def test_an_import_marking_retries_calibrates_as_the_recorded_calls(db_url: str, tmp_path: Path,
                                                                    retry_column: str) -> None:
    rows, escalations = simulate_with_escalations(150, seed=3, truth=Truth(sigma=0.6), run_id="recorded",
                                                  store_features=False)
    _store(db_url, rows, escalations)
    import_telemetry(_csv(tmp_path / "calls.csv", rows, "imported", retry_column), "csv", database=open_database(db_url, allow_empty=True))
    recorded, imported = _samples(db_url, "recorded"), _samples(db_url, "imported")
    _same_samples(recorded, imported)
    assert imported.counts["retries_excluded"] == len(escalations) > 10
    assert imported.counts["cut_calls_revealed_by_retry"] > 0
    factors = [[g.budget_factor for g in calibrate(s, Params(min_samples=3)).result.groups]
               for s in (recorded, imported)]
    assert factors[0] == factors[1] and any(f is not None for f in factors[0])


def test_an_import_without_retry_columns_makes_retries_unknown(db_url: str, tmp_path: Path) -> None:
    rows, escalations = simulate_with_escalations(60, seed=3, truth=Truth(sigma=0.6), store_features=False)
    import_telemetry(_csv(tmp_path / "calls.csv", rows, "imported", None), "csv", database=open_database(db_url, allow_empty=True))
    samples = build_sample_set(read_events(database_at(db_url)))
    assert not samples.retries_known and samples.counts["rows_retries_unknown"] == len(rows)
    assert samples.counts["retries_excluded"] == 0 and escalations  # the file's retries were taken for first calls
    line = _retries_line(metadata(retries_known=False, retries_excluded=0, sample_counts=samples.counts))
    assert line.startswith("retries unknown") and "0 escalated" not in line


def test_a_retry_must_name_an_earlier_attempt(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("timestamp,phase_id,category,complexity,predicted,actual,ceiling,truncated,is_retry\n"
                    "2026-01-01T00:00:00Z,p,implementation,low,100,90,200,false,true\n", encoding="utf-8")
    with pytest.raises(Exception, match="escalated_from -1 is not below attempt_index 0"):
        import_telemetry(path, "csv", database=open_database(db_url, allow_empty=True))


def _attr(key: str, value: object) -> dict[str, object]:
    kind = "boolValue" if isinstance(value, bool) else "intValue" if isinstance(value, int) else "stringValue"
    return {"key": key, "value": {kind: str(value) if kind == "intValue" else value}}


def test_otel_and_v2_log_imports_mark_retries(db_url: str, tmp_path: Path) -> None:
    common = {"autopack.category": "implementation", "autopack.complexity": "low", "autopack.phase_id": "p",
              "autopack.predicted_output_tokens": 1000, "gen_ai.request.model": "m"}
    spans = [{"name": "chat", "startTimeUnixNano": str(1_700_000_000_000_000_000 + i * 10**9), "attributes": [
        _attr(k, v) for k, v in {**common, **attrs}.items()]} for i, attrs in enumerate([
            {"gen_ai.usage.output_tokens": 1000, "gen_ai.request.max_tokens": 1000, "autopack.retry.attempt": 0,
             "autopack.retry.escalated": False, "gen_ai.response.finish_reasons": "length"},
            {"gen_ai.usage.output_tokens": 1200, "gen_ai.request.max_tokens": 1250, "autopack.retry.attempt": 1,
             "autopack.retry.escalated": True, "gen_ai.response.finish_reasons": "stop"}])]
    otel = tmp_path / "spans.json"
    otel.write_text(json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}), encoding="utf-8")
    import_telemetry(otel, "otel-json", run_id="otel", database=open_database(db_url, allow_empty=True))
    log = tmp_path / "run.log"
    log.write_text("2026-01-01 00:00:00 [TokenEstimationV2] predicted_output=1000 actual_output=1000 "
                   "actual_max_tokens=1000 category=implementation complexity=low truncated=true attempt=0\n"
                   "2026-01-01 00:01:00 [TokenEstimationV2] predicted_output=1000 actual_output=1200 "
                   "actual_max_tokens=1250 category=implementation complexity=low truncated=false attempt=1 "
                   "escalated_from=0\n",
                   encoding="utf-8")
    import_telemetry(log, "v2-log", run_id="log", defaults={"phase_id": "p"}, database=open_database(db_url, allow_empty=True))
    for run in ("otel", "log"):
        samples = _samples(db_url, run)
        assert (samples.n, samples.counts["retries_excluded"], samples.counts["cut_calls_revealed_by_retry"]) == (1, 1, 1)
        assert samples.y.tolist() == [1200.0] and samples.observed.all()
    # the v2-log's first line gives no retry field: its source cannot tell for that row
    assert _samples(db_url, "otel").retries_known and not _samples(db_url, "log").retries_known


# --- the calibration window -----------------------------------------------------------------------------------------


def test_the_window_reads_only_its_rows(db_url: str) -> None:
    start = datetime(2026, 1, 1)
    rows, escalations = simulate_with_escalations(60, seed=4, truth=Truth(sigma=0.6), start=start,
                                                  spacing_seconds=3600.0)
    stored = _store(db_url, rows, escalations)
    since = start + timedelta(hours=40)
    inside = [r for r in stored if r["timestamp"] >= since]
    assert 0 < len(inside) < len(stored)
    got, want = read_events(database_at(db_url), since=since), columns_from_records(inside, escalations)
    assert sorted(got.event_id.tolist()) == sorted(want.event_id.tolist())
    assert _retry_view(got) == _retry_view(want)
    assert got.summary.run_ids == want.summary.run_ids


def test_the_window_is_found_through_the_timestamp_index(db_url: str) -> None:
    """The read's only whole-table step (its id bounds) goes through the index, so its cost is the window's."""
    engine = get_engine(db_url)
    since = datetime(2026, 1, 1)
    bounds = id_bounds([EV.c.timestamp >= since])
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            sql, params = _compiled(connection, bounds)
            plan = " ".join(str(r[-1]) for r in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))
        else:  # a history of 20,000 old calls and 50 in the window, with statistics
            connection.exec_driver_sql(
                "INSERT INTO token_estimation_v2_events (run_id, phase_id, attempt_index, call_index, timestamp, "
                "created_at, category, complexity, deliverable_count, deliverables_json, predicted_output_tokens, "
                "actual_output_tokens, selected_budget, actual_max_tokens_backfilled, success, truncated, "
                "is_truncated_output, schema_version, source) SELECT 'h', 'p' || g, 0, 0, "
                "TIMESTAMP '2025-01-01' + CASE WHEN g > 20000 THEN INTERVAL '400 days' ELSE INTERVAL '0' END, "
                "now(), 'implementation', 'low', 1, '[]', 100, 90, 200, false, true, false, false, 2, 'x' "
                "FROM generate_series(1, 20050) AS g")
            connection.exec_driver_sql("ANALYZE token_estimation_v2_events")
            sql, params = _compiled(connection, bounds)
            plan = " ".join(str(r[0]) for r in connection.exec_driver_sql(f"EXPLAIN {sql}", params))
            assert connection.execute(bounds).one() == (20001, 20050)
    assert "ix_token_est_v2_timestamp" in plan


def _compiled(connection: sa.Connection, stmt: sa.Select[Any]) -> tuple[str, Any]:
    from autopack.calibration.reader import _compiled as compiled

    return compiled(connection, stmt)


def test_since_reads_the_calls_from_that_time_and_the_report_says_so(db_url: str, tmp_path: Path) -> None:
    from autopack.calibration.runner import run_calibration

    start = datetime(2026, 1, 1)
    rows, escalations = simulate_with_escalations(120, seed=4, truth=Truth(sigma=0.5), start=start,
                                                  spacing_seconds=3600.0)
    stored = _store(db_url, rows, escalations)
    since = start + timedelta(hours=40)
    everything = run_calibration(open_database(db_url), CalibrationParams(), output_dir=tmp_path / "all")
    windowed = run_calibration(open_database(db_url), CalibrationParams(since=since), output_dir=tmp_path / "since")
    md = windowed.metadata
    assert md.sample_counts is not None and everything.metadata.sample_counts is not None
    assert md.sample_counts.rows_read == sum(r["timestamp"] >= since for r in stored)
    assert md.sample_counts.rows_read < everything.metadata.sample_counts.rows_read
    assert md.window_start == md.since == "2026-01-02T16:00:00Z"
    assert windowed.report_path is not None
    assert "window: calls since 2026-01-02T16:00:00Z (--since 2026-01-02T16:00:00Z)" in Path(
        windowed.report_path).read_text()
    assert everything.metadata.window() == "the whole history"


def test_since_and_a_window_in_weeks_read_from_the_later_start() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    early, late = datetime(2026, 1, 1), datetime(2026, 2, 25)
    assert CalibrationParams(since=early, window_weeks=2).window_start(now) == datetime(2026, 2, 15)
    assert CalibrationParams(since=late, window_weeks=2).window_start(now) == late
    assert CalibrationParams(since="2026-02-25T06:00:00+06:00").since == datetime(2026, 2, 25)  # to UTC
    assert CalibrationParams().window_start(now) is None


def test_a_window_with_no_calls_says_so(db_url: str, tmp_path: Path) -> None:
    from autopack.calibration.runner import NoUsableSamplesError, run_calibration

    rows, escalations = simulate_with_escalations(20, seed=4, start=datetime(2025, 1, 1))
    _store(db_url, rows, escalations)
    with pytest.raises(NoUsableSamplesError, match="0 rows read") as refused:
        run_calibration(open_database(db_url), CalibrationParams(window_weeks=2), output_dir=tmp_path)
    assert "--window-weeks" in (refused.value.hint or "")
