"""OpenTelemetry GenAI spans in OTLP JSON (one document, or one per line as the file exporter writes)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autopack.errors import InputError
from autopack.telemetry.ingest.rows import WHOLE_NUMBER, ParsedRow, RowError, checked_row

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
        if isinstance(raw, bool) or not isinstance(raw, (int, str)) or not WHOLE_NUMBER.fullmatch(str(raw).strip()):
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
    except RecursionError:
        raise InputError(f"{path.name}: JSON nested too deeply to be OTLP",
                         hint="an OTLP export nests a few levels deep; is this really otel-json?") from None
    for number, line in enumerate(text.splitlines(), start=1):  # OTLP file exporter: one request per line
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield RowError(f"line {number}", f"not JSON ({exc.msg})")
        except RecursionError:
            yield RowError(f"line {number}", "JSON nested too deeply")


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
            yield from checked_row(raw, where, ordinal, REQUIRED_OTEL)
