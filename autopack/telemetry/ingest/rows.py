"""What every import format shares: the canonical fields and their aliases; a source row → typed values.

Each format's parser ends with ``checked_row``: the row's values converted (timestamps, non-negative whole
numbers, booleans) and its required fields present, or every error it has.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from autopack.errors import InputError
from autopack.llm.base import TRUNCATION_REASONS

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
INT_FIELDS = ("attempt_index", "call_index", "deliverable_count", "predicted_output_tokens", "actual_output_tokens",
              "selected_budget", "actual_max_tokens", "input_tokens", "escalated_from")
BOOL_FIELDS = ("truncated", "success", "is_retry")


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


#: Compiled once: an import runs them on every row.
_DECIMAL = re.compile(r"\d+(\.\d+)?")
WHOLE_NUMBER = re.compile(r"[+-]?\d+")
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
    if WHOLE_NUMBER.fullmatch(text):
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


def checked_row(raw: Mapping[str, Any], where: str, ordinal: int, required: Sequence[str]
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


def finish_truncates(finish: str | None) -> bool:
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
