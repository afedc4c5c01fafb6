"""64-bit keys that let calibration read 10⁶ events as numbers instead of 10⁶ texts.

``token_estimation_v2_events`` stores, per row, two integer fingerprints written with the row (column
defaults in ``models``) and backfilled by migration 0005:

- ``calibration_key``: every text-derived fact calibration needs about a row: features_json, the stored
  category, complexity and deliverable count, provider, model, stop and finish reason, and whether the
  phase id names documentation (``doc``/``readme``). Calibration reads the key per row and the texts
  once per distinct key (from one representative row), so its one full scan compares no strings.
- ``phase_key``: (run_id, phase_id), to count phases and pair attempts without reading the strings.

Both are the first 8 bytes of a SHA-256, as a signed big-endian integer; PostgreSQL computes exactly the
same value in SQL (``phase_key_sql``/``calibration_key_sql``), so the backfill is one statement there.
The definitions are frozen: changing them means recomputing every stored key in a new migration.
A key may be NULL (a row written by raw SQL); readers must then fall back to the row's text fields.
Two different texts share a key with probability about n²/2⁶⁵ (10⁻¹² for 5000 distinct texts).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

SEPARATOR = "\x1f"


def key_of(text: str) -> int:
    """The signed 64-bit key of ``text``: SHA-256 of its UTF-8 bytes, first 8 bytes, big-endian."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "big", signed=True)


def phase_key(run_id: str, phase_id: str) -> int:
    return key_of(f"{run_id}{SEPARATOR}{phase_id}")


def names_docs(phase_id: str) -> bool:
    """The phase id names documentation: ``doc`` or ``readme`` in it, ignoring case (the seed's rule)."""
    pid = phase_id.lower()
    return "doc" in pid or "readme" in pid


def calibration_key(
    features_json: str | None, category: str, complexity: str, deliverable_count: int | None,
    provider: str | None, model: str | None, stop_reason: str | None, finish_reason: str | None, phase_id: str,
) -> int:
    return _calibration_key(features_json, category, complexity, int(deliverable_count or 0), provider, model,
                            stop_reason, finish_reason, names_docs(phase_id))


@functools.lru_cache(maxsize=8192)  # a handful of distinct values repeat across 10⁶ rows
def _calibration_key(features_json: str | None, category: str, complexity: str, deliverable_count: int,
                     provider: str | None, model: str | None, stop_reason: str | None, finish_reason: str | None,
                     docs: bool) -> int:
    parts = (_opt(features_json), category, complexity, str(deliverable_count), _opt(provider), _opt(model),
             _opt(stop_reason), _opt(finish_reason), "D" if docs else "-")
    return key_of(SEPARATOR.join(parts))


#: The columns ``calibration_key`` is computed from, in its argument order.
CALIBRATION_KEY_COLUMNS = ("features_json", "category", "complexity", "deliverable_count", "provider", "model",
                           "stop_reason", "finish_reason", "phase_id")


def _opt(text: str | None) -> str:
    return "N" if text is None else "S" + text


# --- column defaults (SQLAlchemy context-sensitive defaults: computed from the row being inserted) -------


def phase_key_default(context: Any) -> int | None:
    params = context.get_current_parameters()
    run_id, phase_id = params.get("run_id"), params.get("phase_id")
    return None if run_id is None or phase_id is None else phase_key(run_id, phase_id)


def calibration_key_default(context: Any) -> int | None:
    params = context.get_current_parameters()
    if any(params.get(name) is None for name in ("category", "complexity", "phase_id")):
        return None
    return calibration_key(*(params.get(name) for name in CALIBRATION_KEY_COLUMNS))


# --- the same keys in PostgreSQL SQL (for the backfill) -----------------------------------------------


def _sql_key(text_sql: str) -> str:
    return f"('x' || left(encode(sha256(convert_to({text_sql}, 'UTF8')), 'hex'), 16))::bit(64)::bigint"


def phase_key_sql() -> str:
    return _sql_key("run_id || chr(31) || phase_id")


def calibration_key_sql() -> str:
    def opt(column: str) -> str:
        return f"coalesce('S' || {column}, 'N')"

    # lower() under the "C" collation folds ASCII only, which is all that can spell "doc"/"readme"
    docs = ("CASE WHEN lower(phase_id COLLATE \"C\") LIKE '%doc%' OR lower(phase_id COLLATE \"C\") LIKE '%readme%'"
            " THEN 'D' ELSE '-' END")
    parts = [opt("features_json"), "category", "complexity", "coalesce(deliverable_count, 0)::text", opt("provider"),
             opt("model"), opt("stop_reason"), opt("finish_reason"), docs]
    return _sql_key(" || chr(31) || ".join(parts))
