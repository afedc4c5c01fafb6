"""The thin shell around the calibration: read the events, write the files, record the run.

``run_calibration`` is what ``autopack calibrate``, ``scripts/calibrate_token_estimator.py`` and the
Prefect flow call. Reading is ``reader.read_events``: one integer-only scan, texts once per distinct value.
The statistics and the plot (scipy, matplotlib) are imported on a second thread during the read
(``preload``), not when this module is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autopack.calibration import preload
from autopack.calibration.reader import read_events, runs_without_telemetry
from autopack.calibration.result import CalibrationResult, SampleCounts
from autopack.calibration.samples import build_sample_set
from autopack.db.models import CalibrationRun
from autopack.errors import AutopackError, InputError
from autopack.logging import get_logger
from autopack.params import CalibrationParams
from autopack.timing import StageClock

if TYPE_CHECKING:
    from autopack.db.handle import Database

__all__ = ["NoUsableSamplesError", "read_events", "require_telemetry", "run_calibration"]

log = get_logger("autopack.calibration")


class NoUsableSamplesError(AutopackError):
    """The selection holds no usable calibration sample."""

    exit_code = 1


def require_telemetry(database: Database, run_ids: Sequence[str]) -> None:
    """Refuse run ids the user named that have no telemetry at all (a typo), instead of calibrating the others
    silently or reporting "no usable samples". For the command line: a pipeline calibrating the runs it drained
    reads those that recorded something, as it should."""
    unknown = runs_without_telemetry(database, run_ids)
    if unknown:
        shown = ", ".join(repr(run_id) for run_id in unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise InputError(
            f"--include-run-id {shown}: no telemetry in this database under that run id; nothing was calibrated",
            hint="check the id with `autopack runs list`, and DATABASE_URL with `autopack db identity`",
        )


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


def _record(database: Database, **fields: Any) -> int:
    from autopack.calibration.result import METHOD_VERSION

    with database.session() as session:
        row = CalibrationRun(method_version=METHOD_VERSION, **fields)
        session.add(row)
        session.flush()
        return int(row.id)


def _update(database: Database, run_id: int, **fields: Any) -> None:
    with database.session() as session:
        row = session.get(CalibrationRun, run_id)
        if row is not None:
            for k, v in fields.items():
                setattr(row, k, v)


def run_calibration(
    database: Database,
    params: CalibrationParams | None = None,
    *,
    include_run_ids: Sequence[str] | None = None,
    output_dir: Path = Path("."),
) -> CalibrationResult:
    """Calibrate from ``database`` (opened and guarded by the caller), write the report/JSON/PNG, record the
    run; return the result (as written).

    ``params``: the statistics (None: ``CalibrationParams``' defaults); checked on construction, so a bad value
    fails before the database is touched. ``params.since`` / ``params.window_weeks``: only the calls from that
    time, or of the newest N weeks before now, are read (``reader.read_events(since=…)``). The other arguments say where to read and write, not what to
    compute. Raises ``NoUsableSamplesError`` (exit 1, no file written) when nothing is usable.
    """
    checked = CalibrationParams() if params is None else params
    window_weeks = checked.window_weeks
    run_ids = tuple(include_run_ids or ())
    clock = StageClock()
    lap, timings = clock.lap, clock.timings

    now = datetime.now(UTC).replace(microsecond=0)
    imports = preload.start()
    since = checked.window_start(now)
    columns = read_events(database, run_ids, since=since)
    lap("read")
    samples = build_sample_set(columns)
    lap("samples")
    imports.join()
    lap("imports")  # what is left of them after the read (nothing, when the read is long enough)
    from autopack.calibration.core import Params, calibrate
    from autopack.calibration.report import render_markdown, write_json, write_plot

    params = Params(**checked.model_dump(), include_run_ids=run_ids)
    param_record = {**params.model_dump(mode="json"), "include_run_ids": list(params.include_run_ids),
                    "output_dir": str(output_dir)}
    naive_now = now.replace(tzinfo=None)
    if samples.n == 0:
        _record(database, created_at=naive_now, db_id=database.db_id, params=param_record, sample_count=0,
                run_ids=[], outcome="no_samples", gate_passed=False)
        c = SampleCounts.model_validate(samples.counts)
        raise NoUsableSamplesError(
            f"no usable calibration samples ({c.rows_read} rows read, {c.selected} successful or truncated, "
            f"{c.excluded_nonpositive_predicted} with predicted <= 0, {c.excluded_zero_actual} with actual = 0)",
            hint="drain some phases first (autopack drain), or check --include-run-id"
                 + ("" if since is None else f" and --since / --window-weeks (calls since {since:%Y-%m-%d %H:%M} "
                    "UTC only)"),
        )

    calibration = calibrate(samples, params)
    lap("calibrate")
    result = calibration.result
    span = result.metadata.time_span
    assert span is not None  # calibrate always sets it
    start = datetime.fromisoformat(span.start.rstrip("Z"))
    end = datetime.fromisoformat(span.end.rstrip("Z"))
    run_row = _record(
        database, created_at=naive_now, db_id=database.db_id, params=param_record, sample_count=samples.n,
        run_ids=list(result.metadata.run_ids), data_start=start, data_end=end, outcome="running", gate_passed=False,
    )
    provenance = {
        "db_id": database.db_id,
        "window_weeks": window_weeks,
        "since": None if checked.since is None else checked.since.isoformat() + "Z",
        "window_start": None if since is None else since.isoformat() + "Z",
        "generated_at": now.replace(tzinfo=None).isoformat() + "Z",
        "calibration_run_id": run_row,
    }
    try:
        out = Path(output_dir).expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        stem = _stem(out, now)
        report_path, json_path, plot_path = out / f"{stem}.md", out / f"{stem}.json", out / f"{stem}.png"
        tmp_png = plot_path.with_name(f".{plot_path.name}.tmp.png")
        write_plot(tmp_png, calibration.plot, alpha=params.alpha, sources=result.metadata.sources)
        os.replace(tmp_png, plot_path)
        lap("plot")
        result = result.model_copy(update={
            "metadata": result.metadata.model_copy(update={**provenance, "timings_seconds": dict(timings)}),
            "report_path": str(report_path), "json_path": str(json_path), "plot_path": str(plot_path),
        })
        _atomic_write_text(report_path, render_markdown(result, plot_path.name))
        tmp_json = json_path.with_name(f".{json_path.name}.tmp")
        write_json(result, tmp_json)
        os.replace(tmp_json, json_path)
    except Exception:
        _update(database, run_row, outcome="error")
        raise
    passed = result.gate.passed
    _update(database, run_row, outcome="gate_passed" if passed else "gate_not_passed", gate_passed=passed,
            report_path=str(report_path), json_path=str(json_path))
    log.info("calibration %s: %d samples, gate %s, report %s", run_row, samples.n,
             "passed" if passed else "not passed", report_path)
    return result
