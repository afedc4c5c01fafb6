"""Import outside telemetry into ``token_estimation_v2_events``: CSV, OTLP JSON (GenAI spans), V2 log lines.

A file is read as a stream and written in batches inside one transaction, so memory stays flat (10⁶ CSV
rows in well under 512 MB, bench/bench_import.py) and the import is still all or nothing: any bad row
(reported by line number), any number its column cannot hold, any call key already in the database
(another import that committed first included) rolls the whole transaction back. Imported rows carry their origin in
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
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from autopack.calibration.samples import TRUNCATION_REASONS
from autopack.db import keys
from autopack.db.engine import get_engine, resolve_url
from autopack.db.identity import IdentityReport, guard
from autopack.db.models import TELEMETRY_SCHEMA_VERSION, TokenBudgetEscalationEvent, TokenEstimationV2Event, utcnow
from autopack.errors import AutopackError, InputError
from autopack.taxonomy import canonical_category, canonical_complexity

from autopack.calibration.samples import reached_ceiling  # the one rule: output reached the ceiling
from autopack.telemetry.bounds import out_of_range  # every number checked against its column's range


FORMATS = ("csv", "otel-json", "v2-log")

#: Canonical field names (the CSV header that needs no mapping) and their short aliases for --map/--set.
CANONICAL_FIELDS = (
    "timestamp", "run_id", "phase_id", "attempt_index", "call_index", "category", "complexity",
    "deliverable_count", "predicted_output_tokens", "actual_output_tokens", "selected_budget",
    "actual_max_tokens", "truncated", "success", "model", "provider", "finish_reason", "stop_reason",
    "input_tokens", "is_retry", "escalated_from",
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
    "attempt": "attempt_index",
    "retry": "is_retry",
    "retry_of": "escalated_from",
}
#: Fields that say which calls were escalated retries: a row that gives either is a row whose retries are known
#: (``is_retry`` false: a first attempt); a row giving neither comes from a source that cannot tell.
RETRY_FIELDS = ("is_retry", "escalated_from")
REQUIRED_CSV = ("timestamp", "category", "complexity", "predicted_output_tokens", "actual_output_tokens",
                "actual_max_tokens")
INT_FIELDS = ("attempt_index", "call_index", "deliverable_count", "predicted_output_tokens", "actual_output_tokens",
              "selected_budget", "actual_max_tokens", "input_tokens", "escalated_from")
BOOL_FIELDS = ("truncated", "success", "is_retry")
#: Kinds of problem a refusal names, and rows named for each (the rest are counted).
MAX_REPORTED_ERRORS = 20
SHOWN_PLACES = 3
INSERT_CHUNK = 5000
#: A CSV field may be this long (prompt or completion text in a column the import ignores); Python's csv
#: module stops at 128 KiB by default. Beyond it the row is refused with its line number.
MAX_CSV_FIELD_CHARS = 16 * 1024 * 1024


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


#: Compiled once: an import runs them on every row.
_DECIMAL = re.compile(r"\d+(\.\d+)?")
_WHOLE = re.compile(r"[+-]?\d+")
_BEYOND_MICROSECONDS = re.compile(r"(\.\d{6})\d+")
_REASON_SEPARATORS = re.compile(r"[,;| ]+")


def parse_timestamp(value: Any) -> datetime:
    """ISO 8601 (any fraction length, Z or offset), or a number: epoch seconds / ms / µs / ns by size."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, (int, float)) or (isinstance(value, str) and _DECIMAL.fullmatch(value.strip())):
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
        text = _BEYOND_MICROSECONDS.sub(r"\1", text.replace("Z", "+00:00"))
        dt = datetime.fromisoformat(text)
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt


def _int(value: Any) -> int:
    """A whole number, exactly (a 30-digit count stays 30 digits, for the range check to name it)."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if _WHOLE.fullmatch(text):
        return int(text)
    number = float(text)
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


def _checked_row(raw: Mapping[str, Any], where: str, ordinal: int, required: Sequence[str]
                 ) -> Iterator[ParsedRow | RowError]:
    """One source row, converted and checked: the row, or every error it has (each format's last step)."""
    values, errors = _convert(raw, where)
    errors += _check_required(values, raw, where, required)
    if errors:
        yield from errors
    else:
        yield ParsedRow(where, ordinal, values)


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
    return any(part.strip() in TRUNCATION_REASONS for part in _REASON_SEPARATORS.split(finish) if part.strip())


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
    previous_limit = csv.field_size_limit(MAX_CSV_FIELD_CHARS)
    try:
        yield from _parse_csv(path, mapping, defaults)
    finally:
        csv.field_size_limit(previous_limit)


def _csv_records(reader: Any) -> Iterator[list[str] | RowError]:
    """The reader's records; an unreadable one (a field over the limit, a NUL byte) ends the file as a bad row."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            text = str(exc)
            if "field larger than field limit" in text:
                text = f"a field is longer than {MAX_CSV_FIELD_CHARS:,} characters"
            yield RowError(f"line {reader.line_num}", f"unreadable CSV: {text}")
            return


def _parse_csv(path: Path, mapping: Mapping[str, str], defaults: Mapping[str, str]) -> Iterator[ParsedRow | RowError]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        records = _csv_records(reader)
        header = next(records, None)
        if header is None:
            yield RowError("line 1", "empty file (no header)")
            return
        if isinstance(header, RowError):
            yield header
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
        if any(name in source_of or name in defaults for name in RETRY_FIELDS):
            defaults = {"is_retry": "false", **defaults}  # the file marks retries: an empty cell is a first attempt
        ordinal = 0
        for record in records:
            if isinstance(record, RowError):
                yield record
                return
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
            yield from _checked_row(raw, where, ordinal, REQUIRED_CSV)


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
    "attempt": "attempt_index",
    "is_retry": "is_retry",
    "escalated_from": "escalated_from",
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
            yield from _checked_row(raw, where, number, REQUIRED_V2)


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
    "attempt_index": ("autopack.attempt_index", "autopack.retry.attempt"),
    "is_retry": ("autopack.retry.escalated",),
    "escalated_from": ("autopack.retry.escalated_from",),
    "call_index": ("autopack.call_index",),
    "selected_budget": ("autopack.selected_budget",),
    "success": ("autopack.success",),
    "deliverable_count": ("autopack.deliverable_count",),
}
REQUIRED_OTEL = ("timestamp", "category", "complexity", "predicted_output_tokens", "actual_output_tokens")


class OtelShapeError(ValueError):
    """A part of an OTLP document that does not have the shape the OTLP JSON encoding gives it."""


def _otel_list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise OtelShapeError(f"{what} is {_kind(value)}, not a list")
    return value


def _otel_map(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise OtelShapeError(f"{what} is {_kind(value)}, not an object")
    return value


def _otel_item(value: Any, what: str) -> Mapping[str, Any]:
    """An element of a list must be an object (a null element is as malformed as a string)."""
    if not isinstance(value, Mapping):
        raise OtelShapeError(f"{what} is {_kind(value)}, not an object")
    return value


def _kind(value: Any) -> str:
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list",
            type(None): "null"}.get(type(value), "an object")


def _otel_value(value: Any, what: str) -> Any:
    """The Python value of an OTLP ``AnyValue`` (intValue is a string in OTLP JSON, a number in some exporters)."""
    value = _otel_map(value, what)
    if "stringValue" in value:
        if not isinstance(value["stringValue"], str):
            raise OtelShapeError(f"{what}.stringValue is {_kind(value['stringValue'])}, not a string")
        return value["stringValue"]
    if "intValue" in value:
        raw = value["intValue"]
        if isinstance(raw, bool) or not isinstance(raw, (int, str)) or not _WHOLE.fullmatch(str(raw).strip()):
            raise OtelShapeError(f"{what}.intValue {str(raw)[:40]!r} is not an integer")
        return int(str(raw).strip())
    if "doubleValue" in value:
        raw = value["doubleValue"]
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise OtelShapeError(f"{what}.doubleValue is {_kind(raw)}, not a number")
        return raw
    if "boolValue" in value:
        if not isinstance(value["boolValue"], bool):
            raise OtelShapeError(f"{what}.boolValue is {_kind(value['boolValue'])}, not true/false")
        return value["boolValue"]
    if "arrayValue" in value:
        items = _otel_list(_otel_map(value["arrayValue"], f"{what}.arrayValue").get("values"),
                           f"{what}.arrayValue.values")
        return [_otel_value(v, f"{what}.arrayValue.values[{i}]") for i, v in enumerate(items)]
    return None


def _otel_attributes(items: Any, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, item in enumerate(_otel_list(items, what)):
        item = _otel_item(item, f"{what}[{i}]")
        key = item.get("key")
        if not isinstance(key, str):
            raise OtelShapeError(f"{what}[{i}].key is {_kind(key)}, not a string")
        out[key] = _otel_value(item.get("value"), f"{what}[{i}].value ({key})")
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


def _otel_start(span: Mapping[str, Any], where: str) -> datetime | None:
    start = span.get("startTimeUnixNano")
    if start in (None, "", 0, "0"):
        return None
    if isinstance(start, bool) or not re.fullmatch(r"\d+", str(start).strip()):
        raise OtelShapeError(f"startTimeUnixNano {str(start)[:40]!r} is not a count of nanoseconds")
    try:
        return datetime.fromtimestamp(int(str(start).strip()) / 1e9, UTC)
    except (OverflowError, OSError, ValueError):
        raise OtelShapeError(f"startTimeUnixNano {str(start)[:40]!r} is not a time") from None


def _otel_spans(doc: Any, line: int | None) -> Iterator[tuple[str, Mapping[str, Any], dict[str, Any]] | RowError]:
    """(where, span, resource attributes) for every span; a misshapen part is one bad row, then skipped."""
    prefix = f"line {line}, " if line else ""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("resourceSpans"), list):
        yield RowError(f"line {line or 1}", "not an OTLP traces document (no resourceSpans list)")
        return
    for i, rs in enumerate(doc["resourceSpans"]):
        here = f"resourceSpans[{i}]"
        try:
            rs = _otel_item(rs, here)
            resource = _otel_attributes(_otel_map(rs.get("resource"), f"{here}.resource").get("attributes"),
                                        f"{here}.resource.attributes")
            scopes = "scopeSpans" if "scopeSpans" in rs else "instrumentationLibrarySpans"
            scope_list = _otel_list(rs.get(scopes), f"{here}.{scopes}")
        except OtelShapeError as exc:
            yield RowError(f"{prefix}{here}".rstrip(", "), str(exc))
            continue
        for j, ss in enumerate(scope_list):
            here_ss = f"{here}.scopeSpans[{j}]"
            try:
                spans = _otel_list(_otel_item(ss, here_ss).get("spans"), f"{here_ss}.spans")
            except OtelShapeError as exc:
                yield RowError(f"{prefix}{here_ss}", str(exc))
                continue
            for k, span in enumerate(spans):
                where = f"{prefix}span {here_ss}.spans[{k}]"
                if not isinstance(span, Mapping):
                    yield RowError(where, f"the span is {_kind(span)}, not an object")
                    continue
                yield where, span, resource


def parse_otel_json(path: Path, mapping: Mapping[str, str], defaults: Mapping[str, str]) -> Iterator[ParsedRow | RowError]:
    """OpenTelemetry GenAI spans in OTLP JSON (one document, or one document per line)."""
    attrs_for = {k: (mapping[k],) if k in mapping else v for k, v in _OTEL_ATTRS.items()}
    ordinal = 0
    for item in _otel_documents(path):
        if isinstance(item, RowError):
            yield item
            continue
        line, doc = item
        for spanned in _otel_spans(doc, line):
            if isinstance(spanned, RowError):
                yield spanned
                continue
            where, span, resource = spanned
            try:
                attrs = {**resource, **_otel_attributes(span.get("attributes"), "attributes")}
                if not any(key.startswith("gen_ai.") for key in attrs):
                    continue
                start = _otel_start(span, where)
            except OtelShapeError as exc:
                yield RowError(where, str(exc))
                continue
            ordinal += 1
            raw: dict[str, Any] = dict(defaults)
            if start is not None:
                raw["timestamp"] = start
            for canonical, names in attrs_for.items():
                for name in names:
                    if attrs.get(name) is not None:
                        value = attrs[name]
                        raw[canonical] = ",".join(map(str, value)) if isinstance(value, list) else value
                        break
            yield from _checked_row(raw, where, ordinal, REQUIRED_OTEL)


PARSERS = {"csv": parse_csv, "otel-json": parse_otel_json, "v2-log": parse_v2_log}


# --------------------------------------------------------------------------------------------------
# Rows → events, and the all-or-nothing write
# --------------------------------------------------------------------------------------------------


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
    truncated = (bool(values.get("truncated", False)) or _finish_truncates(finish) or _finish_truncates(stop)
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


class _Errors:
    """The bad rows of one file: how many, and each kind of problem once, with the first rows that have it.

    A file whose every row lacks the same column says so in one phrase, not twenty times over.
    """

    def __init__(self) -> None:
        self.places: dict[str, list[str]] = {}  # problem → the first SHOWN_PLACES rows that have it
        self.counts: dict[str, int] = {}
        self.other = 0  # problems of kinds beyond the first MAX_REPORTED_ERRORS
        self.bad_rows = 0
        self._last: str | None = None

    def add(self, error: RowError) -> None:
        if error.where != self._last:  # a row's errors arrive together
            self.bad_rows += 1
            self._last = error.where
        places = self.places.get(error.message)
        if places is None:
            if len(self.places) >= MAX_REPORTED_ERRORS:
                self.other += 1
                return
            places = self.places[error.message] = []
        self.counts[error.message] = self.counts.get(error.message, 0) + 1
        if len(places) < SHOWN_PLACES:
            places.append(error.where)

    def __bool__(self) -> bool:
        return bool(self.places)

    def _described(self, message: str) -> str:
        places, count = self.places[message], self.counts[message]
        where = ", ".join(places) + (f" and {count - len(places):,} more" if count > len(places) else "")
        return f"{where}: {message}"

    def failure(self, path: Path) -> InputError:
        shown = "; ".join(self._described(message) for message in self.places)
        other = f"; … {self.other:,} more of other kinds" if self.other else ""
        return InputError(f"{path.name}: {self.bad_rows:,} bad row(s), nothing imported: {shown}{other}",
                          hint="fix the rows, map their columns with --map field=column, or give a missing field "
                               "with --set field=value")


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


def _escalation(event: Mapping[str, Any], cut_attempt: int) -> dict[str, Any]:
    """The ``token_budget_escalation_events`` row the executor would have written for the cut call: what marks
    the retry for every reader (``samples.escalated_retries``). Only the run, phase, attempt and the retry's
    ceiling are known from an import (``reason`` "import"; ``escalation_factor`` 0: not known)."""
    retry_ceiling = event["actual_max_tokens"] if event["actual_max_tokens"] is not None else event["selected_budget"]
    return {"run_id": event["run_id"], "phase_id": event["phase_id"], "timestamp": event["timestamp"],
            "attempt_index": cut_attempt, "reason": "import", "was_truncated": True, "output_utilization": None,
            "escalation_factor": 0.0, "base_value": int(retry_ceiling), "base_source": "import",
            "retry_max_tokens": int(retry_ceiling), "selected_budget": None, "actual_max_tokens": None,
            "tokens_used": None}


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
        raise InputError(f"no such file: {path}")
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


CALL_KEY = ("run_id", "phase_id", "attempt_index", "call_index")


class _Writer:
    """Inserts batches into the open transaction; rows whose call key exists already are left out.

    ``INSERT … ON CONFLICT DO NOTHING`` lets the unique call key find every clash: with a row already in
    the database (or committed meanwhile by a concurrent import of the same file: PostgreSQL makes this
    insert wait for that transaction, SQLite for its write lock), or with an earlier row of this file.
    The driver's row count says whether a batch went in whole; only if not are its rows looked up.
    """

    def __init__(self, connection: sa.Connection, source: str, now: datetime) -> None:
        self.table = TokenEstimationV2Event.__table__
        self.connection, self.source, self.now = connection, source, now
        self.postgres = connection.dialect.name == "postgresql"
        self.rows = 0
        self.run_ids: set[str] = set()
        self.clashes = 0
        self.first_clash: dict[str, Any] | None = None
        self._statement: Any = None
        self._order: list[tuple[str, Any]] = []  # SQLite's positional parameters, with their bind processors

    def _insert(self, events: list[dict[str, Any]]) -> int:
        """Insert, return how many rows went in: one precompiled statement through the driver's executemany,
        whose row count is exact (SQLAlchemy's multi-row form reports none on PostgreSQL) and which skips
        SQLAlchemy's per-row handling of compiled parameters. SQLite gets each value through the column
        type's own bind processor (timestamps stored as the ORM stores them); psycopg adapts Python values."""
        if self._statement is None:
            dialect = self.connection.dialect
            insert = (postgresql if self.postgres else sqlite).insert(self.table).values(
                {name: sa.bindparam(name) for name in events[0]}).on_conflict_do_nothing(index_elements=list(CALL_KEY))
            compiled = insert.compile(dialect=dialect)
            self._statement = str(compiled)
            if not self.postgres:
                self._order = [(name, self._bind_processor(name)) for name in (compiled.positiontup or [])]
        rows: Sequence[Any] = events if self.postgres else [
            tuple(event[name] if process is None else process(event[name]) for name, process in self._order)
            for event in events]
        return int(self.connection.exec_driver_sql(self._statement, rows).rowcount)  # errors wrapped as SQLAlchemy's

    def _escalations(self, rows: list[dict[str, Any]]) -> None:
        """The retries' escalation rows, in the same transaction; one per cut attempt (an attempt already
        marked, by the executor or by another call of the same retry, stays as it is)."""
        if not rows:
            return
        table = TokenBudgetEscalationEvent.__table__
        insert = (postgresql if self.postgres else sqlite).insert(table).on_conflict_do_nothing(
            index_elements=["run_id", "phase_id", "attempt_index"])
        self.connection.execute(insert, rows)

    def _bind_processor(self, name: str) -> Any:
        dialect = self.connection.dialect
        return self.table.c[name].type.dialect_impl(dialect).bind_processor(dialect)

    def write(self, batch: list[tuple[str, dict[str, Any], int | None]], errors: _Errors) -> None:
        c = self.table.c
        before = self.connection.execute(sa.select(sa.func.coalesce(sa.func.max(c.event_id), 0))).scalar_one()
        inserted = self._insert([event for _, event, _ in batch])
        self.rows += inserted
        self.run_ids.update(event["run_id"] for _, event, _ in batch)
        self._escalations([_escalation(event, cut) for _, event, cut in batch if cut is not None])
        if inserted == len(batch):
            return
        stored = {tuple(r[:4]): r for r in self.connection.execute(
            sa.select(*(c[name] for name in CALL_KEY), c.event_id, c.source, c.created_at)
            .where(sa.tuple_(*(c[name] for name in CALL_KEY)).in_(
                [tuple(event[name] for name in CALL_KEY) for _, event, _ in batch])))}
        claimed: set[tuple[Any, ...]] = set()
        for where, event, _ in batch:
            key = tuple(event[name] for name in CALL_KEY)
            row = stored[key]
            ours = row.source == self.source and row.created_at == self.now
            if ours and row.event_id > before and key not in claimed:
                claimed.add(key)  # this row is the one that went in
            elif ours:
                errors.add(RowError(where, f"same call key {key} as an earlier row of this file"))
            else:
                self.clashes += 1
                self.first_clash = self.first_clash or event


def import_telemetry(
    path: Path | str,
    fmt: str,
    *,
    url: str | None = None,
    mapping: Mapping[str, str] | None = None,
    defaults: Mapping[str, str] | None = None,
    run_id: str | None = None,
    expect_db_id: str | None = None,
    allow_empty_db: bool = True,
    identity: IdentityReport | None = None,
) -> ImportReport:
    """Stream the file into the database in one transaction: every row or none. Guarded like every write.

    An empty *migrated* database is allowed by default (filling one is what an import is for); the guard
    still refuses an unmigrated one, the wrong one (expected id) and an unreachable one.
    """
    file = Path(path)
    resolved = resolve_url(url)
    if identity is None:
        from autopack.config import get_settings

        identity = guard(resolved, expect_db_id=expect_db_id or get_settings().expected_db_id, allow_empty=allow_empty_db)
    now = utcnow()
    events = iter_events(file, fmt, mapping=mapping, defaults=defaults, run_id=run_id, now=now)
    errors = _Errors()
    try:
        with get_engine(resolved).begin() as connection:
            writer = _Writer(connection, source_of(file, fmt), now)
            batch: list[tuple[str, dict[str, Any], int | None]] = []
            for item in events:
                if isinstance(item, RowError):
                    errors.add(item)
                elif not errors:  # after a bad row only validate: everything is rolled back anyway
                    batch.append(item)
                    if len(batch) >= INSERT_CHUNK:
                        writer.write(batch, errors)
                        batch.clear()
            if batch and not errors:
                writer.write(batch, errors)
            if errors:
                raise errors.failure(file)
            if writer.clashes:
                raise _clash(file, writer)
            if not writer.rows:
                raise InputError(f"{file.name}: no telemetry rows found", hint=f"is this really {fmt}?")
    except OperationalError as exc:
        if "locked" in str(exc.orig) or "busy" in str(exc.orig):
            raise DatabaseBusyError(
                f"{file.name}: the database stayed locked by another writer (another import?); nothing imported",
                hint="run the import again when the other write has finished",
            ) from exc
        raise
    return ImportReport(str(file), fmt, writer.source, writer.rows, sorted(writer.run_ids), 0, identity.db_id)


class DatabaseBusyError(AutopackError):
    """SQLite's single writer slot stayed taken for the whole busy timeout."""

    exit_code = 2


def _clash(file: Path, writer: _Writer) -> InputError:
    first = writer.first_clash or {}
    return InputError(
        f"{file.name}: {writer.clashes} row(s) collide with calls already in the database "
        f"(e.g. run_id={first.get('run_id')}, phase_id={first.get('phase_id')}); nothing imported",
        hint="already imported (or being imported right now)? pass --run-id to import under another run id",
    )
