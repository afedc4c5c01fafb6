"""Import outside telemetry into ``token_estimation_v2_events``: CSV, OTLP JSON (GenAI spans), V2 log lines.

Every format is parsed completely first; any bad row is reported with its line number and nothing is
written. The good case is one transaction: all rows or none. Imported rows carry their origin in
``source`` (``import:<format>:<file name>``), canonical category/complexity (normalised on entry), and
keys that cannot collide with recorded calls: run_id ``import-<file stem>`` unless given, phase_id the
row's line/span number unless given, call_index counting repeats of a (run, phase) within the file.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from autopack.calibration.samples import TRUNCATION_REASONS
from autopack.db.engine import get_engine, resolve_url
from autopack.db.identity import IdentityReport, guard
from autopack.db.models import TELEMETRY_SCHEMA_VERSION, TokenEstimationV2Event, utcnow
from autopack.errors import InputError
from autopack.taxonomy import canonical_category, canonical_complexity

FORMATS = ("csv", "otel-json", "v2-log")

#: Canonical field names (the CSV header that needs no mapping) and their short aliases for --map/--set.
CANONICAL_FIELDS = (
    "timestamp", "run_id", "phase_id", "attempt_index", "call_index", "category", "complexity",
    "deliverable_count", "predicted_output_tokens", "actual_output_tokens", "selected_budget",
    "actual_max_tokens", "truncated", "success", "model", "provider", "finish_reason", "stop_reason",
    "input_tokens",
)
ALIASES = {
    "predicted": "predicted_output_tokens",
    "actual": "actual_output_tokens",
    "ceiling": "actual_max_tokens",
    "max_tokens": "actual_max_tokens",
    "finish": "finish_reason",
    "finish_reasons": "finish_reason",
    "time": "timestamp",
    "group_category": "category",
    "group_complexity": "complexity",
}
REQUIRED_CSV = ("timestamp", "category", "complexity", "predicted_output_tokens", "actual_output_tokens",
                "actual_max_tokens")
INT_FIELDS = ("attempt_index", "call_index", "deliverable_count", "predicted_output_tokens", "actual_output_tokens",
              "selected_budget", "actual_max_tokens", "input_tokens")
BOOL_FIELDS = ("truncated", "success")
MAX_REPORTED_ERRORS = 20
INSERT_CHUNK = 5000


def canonical_field(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in CANONICAL_FIELDS:
        raise InputError(f"unknown field '{name}'", hint="fields: " + ", ".join(CANONICAL_FIELDS))
    return key


def parse_assignments(items: Iterable[str] | None, what: str) -> dict[str, str]:
    """``["predicted=pred_col", …]`` → {"predicted_output_tokens": "pred_col", …}."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"{what} '{item}' is not of the form field=value")
        out[canonical_field(name)] = value.strip()
    return out


@dataclass
class RowError:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class ParsedRow:
    where: str
    ordinal: int
    values: dict[str, Any]


@dataclass
class ImportReport:
    path: str
    format: str
    source: str
    rows: int
    run_ids: list[str]
    skipped: int = 0
    db_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "source": self.source, "rows": self.rows,
                "run_ids": self.run_ids, "skipped": self.skipped, "db_id": self.db_id, "notes": self.notes}


# --------------------------------------------------------------------------------------------------
# Typed conversion
# --------------------------------------------------------------------------------------------------


def parse_timestamp(value: Any) -> datetime:
    """ISO 8601 (any fraction length, Z or offset), or a number: epoch seconds / ms / µs / ns by size."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, (int, float)) or (isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value.strip())):
        number = float(value)
        for scale in (1.0, 1e3, 1e6, 1e9):
            if number / scale < 1e11:
                number /= scale
                break
        dt = datetime.fromtimestamp(number, UTC)
    else:
        text = str(value).strip()
        if not text:
            raise ValueError("empty timestamp")
        text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
        dt = datetime.fromisoformat(text)
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    number = float(str(value).strip())
    if not math.isfinite(number) or number != int(number):
        raise ValueError
    return int(number)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "t", "yes", "y"}:
        return True
    if text in {"0", "false", "f", "no", "n"}:
        return False
    raise ValueError


def _convert(raw: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[RowError]]:
    """Typed canonical values from strings; a list of errors for this row (empty if fine)."""
    values: dict[str, Any] = {}
    errors: list[RowError] = []
    for name, value in raw.items():
        if value is None or (isinstance(value, str) and value.strip() == ""):
            continue
        try:
            if name == "timestamp":
                values[name] = parse_timestamp(value)
            elif name in INT_FIELDS:
                number = _int(value)
                if number < 0:
                    raise ValueError
                values[name] = number
            elif name in BOOL_FIELDS:
                values[name] = _bool(value)
            else:
                values[name] = str(value).strip()
        except (ValueError, OverflowError, OSError):
            kind = ("a timestamp" if name == "timestamp" else "a non-negative whole number" if name in INT_FIELDS
                    else "true/false" if name in BOOL_FIELDS else "text")
            errors.append(RowError(where, f"{name} {str(value)[:60]!r} is not {kind}"))
    return values, errors


def _finish_truncates(finish: str | None) -> bool:
    if not finish:
        return False
    return any(part.strip() in TRUNCATION_REASONS for part in re.split(r"[,;| ]+", finish) if part.strip())


def _given(raw: Mapping[str, Any], name: str) -> bool:
    value = raw.get(name)
    return value is not None and not (isinstance(value, str) and value.strip() == "")


def _check_required(
    values: Mapping[str, Any], raw: Mapping[str, Any], where: str, required: Sequence[str]
) -> list[RowError]:
    """Missing required fields (a field given but unreadable is already reported by ``_convert``)."""
    errors = [RowError(where, f"missing {name}") for name in required if name not in values and not _given(raw, name)]
    if not any(_given(raw, name) for name in ("truncated", "finish_reason", "stop_reason")):
        errors.append(RowError(where, "missing truncated (or a finish_reason to derive it from)"))
    return errors


# --------------------------------------------------------------------------------------------------
# Parsers: each yields ParsedRow or RowError
# --------------------------------------------------------------------------------------------------


def parse_csv(path: Path, mapping: Mapping[str, str], defaults: Mapping[str, str]) -> Iterator[ParsedRow | RowError]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            yield RowError("line 1", "empty file (no header)")
            return
        columns = {name.strip(): i for i, name in enumerate(header)}
        source_of: dict[str, int] = {}
        for name, i in columns.items():
            try:
                source_of[canonical_field(name)] = i
            except InputError:
                continue  # an unmapped extra column
        for canonical, column in mapping.items():
            if column not in columns:
                yield RowError("line 1", f"--map {canonical}={column}: no column '{column}' in the header")
                return
            source_of[canonical] = columns[column]
        ordinal = 0
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            ordinal += 1
            where = f"line {reader.line_num}"
            if len(record) != len(header):
                yield RowError(where, f"{len(record)} fields, the header has {len(header)}")
                continue
            raw: dict[str, Any] = dict(defaults)
            for canonical, i in source_of.items():
                if record[i].strip() != "":
                    raw[canonical] = record[i]
            values, errors = _convert(raw, where)
            errors += _check_required(values, raw, where, REQUIRED_CSV)
            if errors:
                yield from errors
            else:
                yield ParsedRow(where, ordinal, values)


_V2_LINE = re.compile(r"\[TokenEstimationV2\](?P<body>.*)$")
_V2_TS = re.compile(r"^\s*\[?(?P<ts>\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?)\]?")
_KV = re.compile(r"(\w+)=(\S+)")
_V2_FIELDS = {
    "predicted_output": "predicted_output_tokens",
    "actual_output": "actual_output_tokens",
    "selected_budget": "selected_budget",
    "category": "category",
    "complexity": "complexity",
    "deliverables": "deliverable_count",
    "success": "success",
    "stop_reason": "stop_reason",
    "truncated": "truncated",
    "model": "model",
    "actual_max_tokens": "actual_max_tokens",
    "provider": "provider",
}
REQUIRED_V2 = ("timestamp", "category", "complexity", "predicted_output_tokens", "actual_output_tokens")


def parse_v2_log(path: Path, mapping: Mapping[str, str], defaults: Mapping[str, str]) -> Iterator[ParsedRow | RowError]:
    """The original's ``[TokenEstimationV2] predicted_output=… actual_output=… …`` lines; others skipped."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            match = _V2_LINE.search(line)
            if not match:
                continue
            where = f"line {number}"
            raw: dict[str, Any] = dict(defaults)
            ts = _V2_TS.match(line)
            if ts:
                raw["timestamp"] = ts.group("ts").replace(",", ".")
            for key, value in _KV.findall(match.group("body")):
                target = _V2_FIELDS.get(key)
                if target:
                    raw[target] = value.rstrip("%")
            values, errors = _convert(raw, where)
            errors += _check_required(values, raw, where, REQUIRED_V2)
            if errors:
                yield from errors
            else:
                yield ParsedRow(where, number, values)


_OTEL_ATTRS: dict[str, tuple[str, ...]] = {
    "actual_output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
    "actual_max_tokens": ("gen_ai.request.max_tokens",),
    "finish_reason": ("gen_ai.response.finish_reasons",),
    "model": ("gen_ai.request.model", "gen_ai.response.model"),
    "provider": ("gen_ai.provider.name", "gen_ai.system"),
    "predicted_output_tokens": ("autopack.predicted_output_tokens",),
    "category": ("autopack.category",),
    "complexity": ("autopack.complexity",),
    "run_id": ("autopack.run_id",),
    "phase_id": ("autopack.phase_id",),
    "attempt_index": ("autopack.attempt_index",),
    "call_index": ("autopack.call_index",),
    "selected_budget": ("autopack.selected_budget",),
    "success": ("autopack.success",),
    "deliverable_count": ("autopack.deliverable_count",),
}
REQUIRED_OTEL = ("timestamp", "category", "complexity", "predicted_output_tokens", "actual_output_tokens")


def _otel_value(value: Mapping[str, Any]) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return value["doubleValue"]
    if "boolValue" in value:
        return value["boolValue"]
    if "arrayValue" in value:
        return [_otel_value(v) for v in value["arrayValue"].get("values", [])]
    return None


def _otel_attributes(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if isinstance(item, Mapping) and "key" in item:
            out[str(item["key"])] = _otel_value(item.get("value") or {})
    return out


def _otel_documents(path: Path) -> Iterator[tuple[int | None, Any] | RowError]:
    text = path.read_text(encoding="utf-8")
    try:
        yield None, json.loads(text)
        return
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.splitlines(), start=1):  # OTLP file exporter: one request per line
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield RowError(f"line {number}", f"not JSON ({exc.msg})")


def parse_otel_json(path: Path, mapping: Mapping[str, str], defaults: Mapping[str, str]) -> Iterator[ParsedRow | RowError]:
    """OpenTelemetry GenAI spans in OTLP JSON (one document, or one document per line)."""
    attrs_for = {k: (mapping[k],) if k in mapping else v for k, v in _OTEL_ATTRS.items()}
    ordinal = 0
    for item in _otel_documents(path):
        if isinstance(item, RowError):
            yield item
            continue
        line, doc = item
        resource_spans = doc.get("resourceSpans") if isinstance(doc, Mapping) else None
        if not isinstance(resource_spans, list):
            yield RowError(f"line {line or 1}", "not an OTLP traces document (no resourceSpans)")
            continue
        for i, rs in enumerate(resource_spans):
            resource = _otel_attributes((rs.get("resource") or {}).get("attributes"))
            for j, ss in enumerate(rs.get("scopeSpans") or rs.get("instrumentationLibrarySpans") or []):
                for k, span in enumerate(ss.get("spans") or []):
                    where = (f"line {line}, " if line else "") + f"span resourceSpans[{i}].scopeSpans[{j}].spans[{k}]"
                    attrs = {**resource, **_otel_attributes(span.get("attributes"))}
                    if not any(key.startswith("gen_ai.") for key in attrs):
                        continue
                    ordinal += 1
                    raw: dict[str, Any] = dict(defaults)
                    start = span.get("startTimeUnixNano")
                    if start not in (None, "", 0, "0"):
                        raw["timestamp"] = datetime.fromtimestamp(int(start) / 1e9, UTC)
                    for canonical, keys in attrs_for.items():
                        for key in keys:
                            if attrs.get(key) is not None:
                                value = attrs[key]
                                raw[canonical] = ",".join(map(str, value)) if isinstance(value, list) else value
                                break
                    values, errors = _convert(raw, where)
                    errors += _check_required(values, raw, where, REQUIRED_OTEL)
                    if errors:
                        yield from errors
                    else:
                        yield ParsedRow(where, ordinal, values)


PARSERS = {"csv": parse_csv, "otel-json": parse_otel_json, "v2-log": parse_v2_log}


# --------------------------------------------------------------------------------------------------
# Rows → events, and the all-or-nothing write
# --------------------------------------------------------------------------------------------------


def _event(values: Mapping[str, Any], *, run_id: str, phase_id: str, call_index: int, source: str,
           now: datetime) -> dict[str, Any]:
    finish = values.get("finish_reason")
    stop = values.get("stop_reason")
    truncated = bool(values.get("truncated", False)) or _finish_truncates(finish) or _finish_truncates(stop)
    predicted = int(values["predicted_output_tokens"])
    actual = int(values["actual_output_tokens"])
    ceiling = values.get("actual_max_tokens")
    return {
        "run_id": run_id,
        "phase_id": phase_id,
        "attempt_index": int(values.get("attempt_index", 0)),
        "call_index": call_index,
        "timestamp": values["timestamp"],
        "created_at": now,
        "category": canonical_category(values["category"]),
        "complexity": canonical_complexity(values["complexity"]),
        "deliverable_count": int(values.get("deliverable_count", 0)),
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
        "provider": values.get("provider"),
        "model": values.get("model"),
        "input_tokens": values.get("input_tokens"),
        "smape_percent": round(200.0 * abs(predicted - actual) / max(1, predicted + actual), 3),
        "waste_ratio": predicted / actual if actual > 0 else None,
        "underestimated": actual > predicted,
        "schema_version": TELEMETRY_SCHEMA_VERSION,
        "source": source,
    }


def _fail(errors: Sequence[RowError], path: Path) -> InputError:
    shown = "; ".join(str(e) for e in errors[:MAX_REPORTED_ERRORS])
    more = f"; … {len(errors) - MAX_REPORTED_ERRORS} more" if len(errors) > MAX_REPORTED_ERRORS else ""
    bad_rows = len({e.where for e in errors})
    return InputError(f"{path.name}: {bad_rows} bad row(s), nothing imported: {shown}{more}",
                      hint="fix the rows or map the columns with --map field=column")


def build_events(
    path: Path, fmt: str, *, mapping: Mapping[str, str] | None = None, defaults: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Parse ``path`` completely into event rows; raise ``InputError`` listing every bad row."""
    if fmt not in PARSERS:
        raise InputError(f"unknown format '{fmt}'", hint="one of " + ", ".join(FORMATS))
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    source = f"import:{fmt}:{path.name}"[:255]
    default_run = run_id or f"import-{path.stem}"
    now = utcnow()
    rows: list[ParsedRow] = []
    errors: list[RowError] = []
    try:
        for item in PARSERS[fmt](path, dict(mapping or {}), dict(defaults or {})):
            (errors if isinstance(item, RowError) else rows).append(item)  # type: ignore[arg-type]
    except UnicodeDecodeError as exc:
        raise InputError(f"{path.name} is not UTF-8 text: {exc.reason}") from exc
    if errors:
        raise _fail(errors, path)
    events: list[dict[str, Any]] = []
    next_call: dict[tuple[str, str, int], int] = {}
    for row in rows:
        rid = str(row.values.get("run_id") or default_run)
        pid = str(row.values.get("phase_id") or row.ordinal)
        attempt = int(row.values.get("attempt_index", 0))
        call = int(row.values["call_index"]) if "call_index" in row.values else next_call.get((rid, pid, attempt), 0)
        next_call[(rid, pid, attempt)] = max(next_call.get((rid, pid, attempt), 0), call + 1)
        events.append(_event(row.values, run_id=rid, phase_id=pid, call_index=call, source=source, now=now))
    first: dict[tuple[str, str, int, int], str] = {}
    duplicates: list[RowError] = []
    for event, row in zip(events, rows, strict=True):
        key = (event["run_id"], event["phase_id"], event["attempt_index"], event["call_index"])
        if key in first:
            duplicates.append(RowError(row.where, f"same call key {key} as {first[key]}"))
        else:
            first[key] = row.where
    if duplicates:
        raise _fail(duplicates, path)
    skipped = 0
    return events, skipped


def import_telemetry(
    path: Path | str,
    fmt: str,
    *,
    url: str | None = None,
    mapping: Mapping[str, str] | None = None,
    defaults: Mapping[str, str] | None = None,
    run_id: str | None = None,
    expect_db_id: str | None = None,
    allow_empty_db: bool = False,
    identity: IdentityReport | None = None,
) -> ImportReport:
    """Parse, check, then insert every row in one transaction (or nothing). Guarded like every write."""
    file = Path(path)
    resolved = resolve_url(url)
    if identity is None:
        from autopack.config import get_settings

        identity = guard(resolved, expect_db_id=expect_db_id or get_settings().expected_db_id, allow_empty=allow_empty_db)
    report = identity
    events, skipped = build_events(file, fmt, mapping=mapping, defaults=defaults, run_id=run_id)
    if not events:
        raise InputError(f"{file.name}: no telemetry rows found", hint=f"is this really {fmt}?")
    table = TokenEstimationV2Event.__table__
    engine = get_engine(resolved)
    run_ids = sorted({e["run_id"] for e in events})
    with engine.begin() as connection:
        existing = set(
            connection.execute(
                sa.select(table.c.run_id, table.c.phase_id, table.c.attempt_index, table.c.call_index).where(
                    table.c.run_id.in_(run_ids)
                )
            ).all()
        )
        clash = [e for e in events if (e["run_id"], e["phase_id"], e["attempt_index"], e["call_index"]) in existing]
        if clash:
            raise InputError(
                f"{file.name}: {len(clash)} row(s) collide with calls already in the database "
                f"(e.g. run_id={clash[0]['run_id']}, phase_id={clash[0]['phase_id']}); nothing imported",
                hint="already imported? pass --run-id to import under another run id",
            )
        for start in range(0, len(events), INSERT_CHUNK):
            connection.execute(sa.insert(table), events[start : start + INSERT_CHUNK])
    return ImportReport(str(file), fmt, events[0]["source"], len(events), run_ids, skipped, report.db_id)
