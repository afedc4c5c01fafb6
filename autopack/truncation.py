"""What counts as a truncated call in stored telemetry: one rule for calibration samples, backtest, reports
and the import of outside telemetry.

Below both ``autopack.telemetry`` (the import marks its rows with it) and ``autopack.calibration`` (the samples
censor by it), so neither layer imports the other for it. The stop reasons that mean "cut" are one set for live
responses and stored rows alike, ``autopack.llm.base.TRUNCATION_REASONS``; the provider-side rule for a live
response is ``autopack.llm.base.is_truncated``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_SCALARS = (int, float, type(None))  # decided without numpy's shape check (an import asks once per row)


def reached_ceiling(output: Any, ceiling: Any) -> Any:
    """THE length rule for truncation, shared by samples, backtest, import and reports: ``output >= ceiling``.

    An output that reached its ceiling was cut there (or stopped exactly at it, which cannot be told
    apart, so it counts as cut: conservative for the quantiles). A missing or non-positive ceiling
    (``None``, NaN, ≤ 0) decides nothing. Scalars give a ``bool``, numpy arrays an element-wise array.
    """
    if (isinstance(output, _SCALARS) and isinstance(ceiling, _SCALARS)) or (np.ndim(output) == 0
                                                                             and np.ndim(ceiling) == 0):
        if ceiling is None or output is None:
            return False
        c = float(ceiling)
        return bool(c > 0 and float(output) >= c)  # NaN compares False
    out = np.asarray(output, dtype=float)
    cap = np.asarray(ceiling, dtype=float)
    with np.errstate(invalid="ignore"):
        return (cap > 0) & (out >= cap)
