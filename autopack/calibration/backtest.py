"""Held-out evaluation of a ceiling rule: truncation (with Wilson CI and Kupiec's test), waste, pinball loss.

A call counts as truncated under a ceiling c when its output does not fit: y > c for an observed call,
c ≤ L for a censored one (its true length is at least L, so any ceiling up to L truncates it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autopack.calibration import stats
from autopack.calibration.samples import Group


def truncated_under(ceiling: np.ndarray, y: np.ndarray, observed: np.ndarray) -> np.ndarray:
    return np.where(observed, y > ceiling, ceiling <= y)


def evaluate(ceiling: np.ndarray, y: np.ndarray, observed: np.ndarray, alpha: float) -> dict[str, Any]:
    """The backtest metrics of one method on the held-out calls."""
    n = int(y.size)
    if n == 0:
        return {
            "n": 0, "truncations": 0, "truncation_rate": None, "truncation_ci": [None, None], "kupiec_p": None,
            "median_ceiling_over_actual": None, "p90_ceiling_over_actual": None, "reserved_over_used": None,
            "pinball_loss": None, "reserved_tokens": 0, "used_tokens": 0,
        }
    trunc = truncated_under(ceiling, y, observed)
    x = int(trunc.sum())
    low, high = stats.wilson_interval(x, n)
    ratio = ceiling / y
    return {
        "n": n,
        "truncations": x,
        "truncation_rate": round(x / n, 6),
        "truncation_ci": [round(low, 6), round(high, 6)],
        "kupiec_p": round(stats.kupiec_pof(x, n, alpha), 6),
        "median_ceiling_over_actual": round(float(np.median(ratio)), 6),
        "p90_ceiling_over_actual": round(float(np.quantile(ratio, 0.9)), 6),
        "reserved_over_used": round(float(ceiling.sum() / y.sum()), 6),
        "pinball_loss": round(stats.pinball_loss(y, ceiling, 1.0 - alpha), 3),
        "reserved_tokens": int(ceiling.sum()),
        "used_tokens": int(y.sum()),
    }


def per_group(
    groups: list[Group],
    group_of_row: np.ndarray,
    ceilings: dict[str, np.ndarray],
    y: np.ndarray,
    observed: np.ndarray,
    alpha: float,
) -> dict[Group, dict[str, dict[str, Any]]]:
    """Per group and method: the same metrics on that group's held-out calls."""
    out: dict[Group, dict[str, dict[str, Any]]] = {}
    for g in sorted(set(group_of_row.tolist())):
        idx = group_of_row == g
        out[groups[g]] = {name: evaluate(c[idx], y[idx], observed[idx], alpha) for name, c in ceilings.items()}
    return out


def truncation_not_worse(candidate: dict[str, Any], current: dict[str, Any], alpha: float) -> bool:
    """Not worse than the current ceilings on truncation, judged at α.

    Passes when the candidate truncates no more often than the current ceilings, or on no more than α of
    the held-out calls. Kupiec's p-value is reported beside it but is no escape: on a handful of held-out
    calls it cannot reject anything, and a reviewer should never see a proposal that truncates more than
    both today's ceilings and the target.
    """
    n = candidate["n"]
    if not n:
        return False
    x = candidate["truncations"]
    return bool(x <= current["truncations"] or x / n <= alpha)


def reserved_better(candidate: dict[str, Any], current: dict[str, Any]) -> bool:
    """Strictly fewer tokens reserved per token used than the current ceilings."""
    a, b = candidate.get("reserved_over_used"), current.get("reserved_over_used")
    return a is not None and b is not None and a < b
