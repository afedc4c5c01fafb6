"""64-bit keys that let calibration read 10⁶ events as numbers instead of 10⁶ texts.

``token_estimation_v2_events`` stores, per row, two integer fingerprints written with the row (column
defaults in ``models``) and backfilled by migration 0005:

- ``calibration_key``: the row's descriptive text fields calibration groups by (features_json, the stored
  category, complexity and deliverable count, provider and model). Calibration reads the key per row
  and each field's text once per distinct key (from one representative row), not once per row.
- ``phase_key``: (run_id, phase_id), to count phases and pair attempts without reading the strings.

Both are the first 8 bytes of a SHA-256, as a signed big-endian integer; PostgreSQL computes exactly the
same value in SQL (``phase_key_sql``/``calibration_key_sql``), so the backfill is one statement there.
The definitions are frozen: changing them means recomputing every stored key in a new migration.
A key may be NULL (a row written by raw SQL); readers must then fall back to the row's text fields.
Two different texts share a key with probability about n²/2⁶⁵ (10⁻¹² for 5000 distinct texts).
"""

from __future__ import annotations

import hashlib
from typing import Any

SEPARATOR = "\x1f"


def key_of(text: str) -> int:
    """The signed 64-bit key of ``text``: SHA-256 of its UTF-8 bytes, first 8 bytes, big-endian."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "big", signed=True)


def phase_key(run_id: str, phase_id: str) -> int:
    return key_of(f"{run_id}{SEPARATOR}{phase_id}")


def calibration_key(
    features_json: str | None, category: str, complexity: str, deliverable_count: int | None,
    provider: str | None, model: str | None,
) -> int:
    features = "N" if features_json is None else "F" + features_json
    parts = (features, category, complexity, str(int(deliverable_count or 0)), _opt(provider), _opt(model))
    return key_of(SEPARATOR.join(parts))


def _opt(text: str | None) -> str:
    return "N" if text is None else "S" + text


# --- column defaults (SQLAlchemy context-sensitive defaults: computed from the row being inserted) -------


def phase_key_default(context: Any) -> int | None:
    params = context.get_current_parameters()
    run_id, phase_id = params.get("run_id"), params.get("phase_id")
    return None if run_id is None or phase_id is None else phase_key(run_id, phase_id)


def calibration_key_default(context: Any) -> int | None:
    params = context.get_current_parameters()
    if params.get("category") is None or params.get("complexity") is None:
        return None
    return calibration_key(params.get("features_json"), params["category"], params["complexity"],
                           params.get("deliverable_count"), params.get("provider"), params.get("model"))


# --- the same keys in PostgreSQL SQL (for the backfill) -----------------------------------------------


def _sql_key(text_sql: str) -> str:
    return f"('x' || left(encode(sha256(convert_to({text_sql}, 'UTF8')), 'hex'), 16))::bit(64)::bigint"


def phase_key_sql() -> str:
    return _sql_key("run_id || chr(31) || phase_id")


def calibration_key_sql() -> str:
    def opt(column: str) -> str:
        return f"coalesce('S' || {column}, 'N')"

    text = (f"coalesce('F' || features_json, 'N') || chr(31) || category || chr(31) || complexity || chr(31)"
            f" || coalesce(deliverable_count, 0)::text || chr(31) || {opt('provider')} || chr(31) || {opt('model')}")
    return _sql_key(text)
