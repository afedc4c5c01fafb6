"""The original's ``[TokenEstimationV2] predicted_output=… actual_output=… …`` log lines (other lines skipped)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from autopack.telemetry.ingest.rows import ParsedRow, RowError, checked_row

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
            yield from checked_row(raw, where, number, REQUIRED_V2)
