"""Checked rows → ``token_estimation_v2_events`` rows: keys, canonical groups, truncation, range checks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from autopack.db import keys
from autopack.db.models import TELEMETRY_SCHEMA_VERSION, TokenEstimationV2Event, utcnow
from autopack.errors import InputError
from autopack.taxonomy import canonical_category, canonical_complexity
from autopack.telemetry.bounds import out_of_range  # every number checked against its column's range
from autopack.telemetry.ingest.csv_rows import parse_csv
from autopack.telemetry.ingest.otel import parse_otel_json
from autopack.telemetry.ingest.rows import RETRY_FIELDS, RowError, finish_truncates
from autopack.telemetry.ingest.v2_log import parse_v2_log
from autopack.truncation import reached_ceiling  # the one rule: output reached the ceiling

FORMATS = ("csv", "otel-json", "v2-log")
PARSERS = {"csv": parse_csv, "otel-json": parse_otel_json, "v2-log": parse_v2_log}


def _event(values: Mapping[str, Any], *, run_id: str, phase_id: str, call_index: int, source: str,
           now: datetime) -> dict[str, Any]:
    finish = values.get("finish_reason")
    stop = values.get("stop_reason")
    predicted = int(values["predicted_output_tokens"])
    actual = int(values["actual_output_tokens"])
    ceiling = values.get("actual_max_tokens")
    category = canonical_category(values["category"])
    complexity = canonical_complexity(values["complexity"])
    deliverables = int(values.get("deliverable_count", 0))
    provider, model = values.get("provider"), values.get("model")
    truncated = (bool(values.get("truncated", False)) or finish_truncates(finish) or finish_truncates(stop)
                 or bool(reached_ceiling(actual, ceiling)))
    return {
        "run_id": run_id,
        "phase_id": phase_id,
        "attempt_index": int(values.get("attempt_index", 0)),
        "call_index": call_index,
        "timestamp": values["timestamp"],
        "created_at": now,
        "category": category,
        "complexity": complexity,
        "deliverable_count": deliverables,
        "deliverables_json": "[]",
        "features_json": None,
        "predicted_output_tokens": predicted,
        "actual_output_tokens": actual,
        "selected_budget": int(values.get("selected_budget", ceiling if ceiling is not None else 0)),
        "actual_max_tokens": ceiling,
        "actual_max_tokens_backfilled": False,
        "success": bool(values.get("success", True)),
        "truncated": truncated,
        "is_truncated_output": truncated,
        "stop_reason": stop,
        "finish_reason": finish,
        "provider": provider,
        "model": model,
        "input_tokens": values.get("input_tokens"),
        "smape_percent": round(200.0 * abs(predicted - actual) / max(1, predicted + actual), 3),
        "waste_ratio": predicted / actual if actual > 0 else None,
        "underestimated": actual > predicted,
        "schema_version": TELEMETRY_SCHEMA_VERSION,
        "source": source,
        "retries_known": any(name in values for name in RETRY_FIELDS),
        "phase_key": keys.phase_key(run_id, phase_id),
        "calibration_key": keys.calibration_key(None, category, complexity, deliverables, provider, model, stop,
                                                finish, phase_id),
    }


#: Text columns an import writes, with their length limits (PostgreSQL refuses longer values).
_TEXT_LIMITS = {c.name: c.type.length for c in TokenEstimationV2Event.__table__.columns
                if isinstance(c.type, sa.String) and c.type.length}


def _problems(event: Mapping[str, Any]) -> list[str]:
    """Why the event cannot be written as it is: numbers out of their column's range, texts too long."""
    problems = list(out_of_range(TokenEstimationV2Event, event).values())
    for name, limit in _TEXT_LIMITS.items():
        value = event.get(name)
        if isinstance(value, str) and len(value) > limit:
            problems.append(f"{name} is {len(value):,} characters long, the column holds {limit}")
    return problems


def escalated_from(values: Mapping[str, Any]) -> int | None:
    """The attempt index of the cut call an escalated retry re-ran (None: not a retry).

    A row is a retry when it gives ``escalated_from``, or ``is_retry`` true (then the previous attempt index).
    """
    if "escalated_from" in values:
        return int(values["escalated_from"])
    if values.get("is_retry"):
        return int(values.get("attempt_index", 0)) - 1
    return None


def _retry_problem(values: Mapping[str, Any]) -> str | None:
    attempt = int(values.get("attempt_index", 0))
    cut = escalated_from(values)
    if cut is not None and not 0 <= cut < attempt:
        return (f"an escalated retry re-runs an earlier attempt: escalated_from {cut} is not below attempt_index "
                f"{attempt} (give the retry's attempt_index)")
    return None


def iter_events(
    path: Path, fmt: str, *, mapping: Mapping[str, str] | None = None, defaults: Mapping[str, str] | None = None,
    run_id: str | None = None, now: datetime | None = None,
) -> Iterator[tuple[str, dict[str, Any], int | None] | RowError]:
    """Stream ``(where, event row, escalated_from)`` for every good row of ``path`` and a ``RowError`` for every
    bad one; ``escalated_from`` is the attempt index of the cut call an escalated retry re-ran (None otherwise).

    Call indices count repeats of a (run, phase, attempt) within the file; the counters are kept by the
    64-bit hash of that key, so 10⁶ rows cost tens of megabytes, not a dict of 10⁶ string tuples (a hash
    collision only moves a call index; a duplicate it would cause is still refused by the unique key).
    """
    if fmt not in PARSERS:
        raise InputError(f"unknown format '{fmt}'", hint="one of " + ", ".join(FORMATS))
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "is not a regular file" if path.exists() else None
        raise InputError(f"{path} {what}" if what else f"no such file: {path}", hint="name the file to import")
    source = source_of(path, fmt)
    default_run = run_id or f"import-{path.stem}"
    now = now or utcnow()
    next_call: dict[int, int] = {}
    try:
        for row in PARSERS[fmt](path, dict(mapping or {}), dict(defaults or {})):
            if isinstance(row, RowError):
                yield row
                continue
            given = out_of_range(TokenEstimationV2Event, row.values)  # before any arithmetic on them
            if given:
                yield from (RowError(row.where, problem) for problem in given.values())
                continue
            retry_problem = _retry_problem(row.values)
            if retry_problem:
                yield RowError(row.where, retry_problem)
                continue
            rid = str(row.values.get("run_id") or default_run)
            pid = str(row.values.get("phase_id") or row.ordinal)
            attempt = int(row.values.get("attempt_index", 0))
            counter = hash((rid, pid, attempt))
            call = int(row.values["call_index"]) if "call_index" in row.values else next_call.get(counter, 0)
            next_call[counter] = max(next_call.get(counter, 0), call + 1)
            event = _event(row.values, run_id=rid, phase_id=pid, call_index=call, source=source, now=now)
            problems = _problems(event)
            if problems:
                yield from (RowError(row.where, problem) for problem in problems)
            else:
                yield row.where, event, escalated_from(row.values)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path.name} is not UTF-8 text: {exc.reason}") from exc


def source_of(path: Path, fmt: str) -> str:
    return f"import:{fmt}:{path.name}"[:255]
