"""CSV rows: a header with the canonical names, or columns mapped with ``--map``; read as a stream."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from autopack.errors import InputError
from autopack.telemetry.ingest.rows import RETRY_FIELDS, ParsedRow, RowError, canonical_field, checked_row

REQUIRED_CSV = ("timestamp", "category", "complexity", "predicted_output_tokens", "actual_output_tokens",
                "actual_max_tokens")
#: A CSV field may be this long (prompt or completion text in a column the import ignores); Python's csv
#: module stops at 128 KiB by default. Beyond it the row is refused with its line number.
MAX_CSV_FIELD_CHARS = 16 * 1024 * 1024


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
            yield from checked_row(raw, where, ordinal, REQUIRED_CSV)
