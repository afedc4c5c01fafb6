"""Held-out evaluation of a ceiling rule: truncation as an interval, the gate's binomial test, waste, pinball loss.

Truncated means the output *reached* the ceiling (``samples.reached_ceiling``: y ≥ c), the rule used
everywhere. An observed held-out call of length y is truncated under a ceiling c when y ≥ c. A censored
one (cut at its recorded ceiling L, true length ≥ L) is truncated for sure when c ≤ L; when c > L nobody
knows whether it would have fitted. So truncation is an interval:

- lower end (``truncations``, ``truncation_rate``): those censored calls count as fitting;
- upper end (``truncations_upper``): they count as truncated.

The gate tests the upper end: a one-sided exact binomial test of "rate ≤ α" (``binomial_p``), which a
correct budget fails at most at the test's level whatever the number of calls, and which is only
evidence with at least ``stats.min_evidence_calls(α)`` held-out calls (85 at α = 5 %: from there on a
3α budget is caught ≥ 90 % of the time). ``truncation_ci`` is the 95 % Clopper–Pearson interval from the
lower end's lower bound to the upper end's upper bound: it covers the true rate (under exchangeability)
whatever the censored calls would have done.
"""

from __future__ import annotations

import numpy as np

from autopack.calibration import stats
from autopack.calibration.result import MethodBacktest
from autopack.calibration.samples import Group


def truncation_bounds(ceiling: np.ndarray, y: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(surely truncated, possibly truncated) per held-out call under ``ceiling`` (see the module docstring)."""
    sure = y >= ceiling  # observed: reached the ceiling; censored: c ≤ L, so the true length ≥ L ≥ c
    return sure, sure | ~observed


def evaluate(ceiling: np.ndarray, y: np.ndarray, observed: np.ndarray, alpha: float) -> MethodBacktest:
    """The backtest metrics of one method on the held-out calls."""
    n = int(y.size)
    if n == 0:
        return MethodBacktest(n=0, truncations=0, truncations_upper=0, truncation_interval=(None, None),
                              truncation_ci=(None, None), evidence=False, reserved_tokens=0, used_tokens=0)
    sure, possible = truncation_bounds(ceiling, y, observed)
    x_low, x_high = int(sure.sum()), int(possible.sum())
    ci_low = stats.clopper_pearson(x_low, n)[0]
    ci_high = stats.clopper_pearson(x_high, n)[1]
    ratio_median, ratio_p90 = np.quantile(ceiling / y, [0.5, 0.9])
    return MethodBacktest(
        n=n,
        truncations=x_low,
        truncations_upper=x_high,
        truncation_rate=round(x_low / n, 6),
        truncation_interval=(round(x_low / n, 6), round(x_high / n, 6)),
        truncation_ci=(round(ci_low, 6), round(ci_high, 6)),
        binomial_p=round(stats.binomial_exceedance_p(x_high, n, alpha), 6),
        evidence=n >= stats.min_evidence_calls(alpha),
        kupiec_p=round(stats.kupiec_pof(x_high, n, alpha), 6),
        median_ceiling_over_actual=round(float(ratio_median), 6),
        p90_ceiling_over_actual=round(float(ratio_p90), 6),
        reserved_over_used=round(float(ceiling.sum() / y.sum()), 6),
        pinball_loss=round(stats.pinball_loss(y, ceiling, 1.0 - alpha), 3),
        reserved_tokens=int(ceiling.sum()),
        used_tokens=int(y.sum()),
    )


def per_group(
    groups: list[Group],
    group_of_row: np.ndarray,
    ceilings: dict[str, np.ndarray],
    y: np.ndarray,
    observed: np.ndarray,
    alpha: float,
) -> dict[Group, dict[str, MethodBacktest]]:
    """Per group and method: the same metrics on that group's held-out calls (one sort, no per-group scan)."""
    out: dict[Group, dict[str, MethodBacktest]] = {}
    if group_of_row.size == 0:
        return out
    order = np.argsort(group_of_row, kind="stable")
    sorted_groups = group_of_row[order]
    cuts = np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1
    for rows in np.split(order, cuts):
        g = groups[int(group_of_row[rows[0]])]
        out[g] = {name: evaluate(c[rows], y[rows], observed[rows], alpha) for name, c in ceilings.items()}
    return dict(sorted(out.items()))


def truncation_range(m: MethodBacktest) -> str:
    low, high = m.truncations, m.truncations_upper
    return f"{low}/{m.n}" if low == high else f"{low}–{high}/{m.n}"


def truncation_verdict(candidate: MethodBacktest, current: MethodBacktest, alpha: float) -> tuple[bool, str]:
    """The gate's truncation test on held-out calls: (passes, one line saying why).

    Fails when the upper end of the held-out truncation rejects "rate ≤ α" (one-sided exact binomial, at
    ``stats.GATE_LEVEL``). With fewer than ``stats.min_evidence_calls(α)`` held-out calls "not rejected"
    is no evidence (a 3α budget passes often), so the candidate must then also truncate, even in the
    worst case, no more held-out calls than today's ceilings surely do; the line says the evidence is thin.
    """
    n = candidate.n
    if not n:
        return False, "no held-out calls in the backtest"
    p = candidate.binomial_p
    assert p is not None  # held-out calls, so a test
    needed = stats.min_evidence_calls(alpha)
    label = f"held-out truncation {truncation_range(candidate)}"
    if p < stats.GATE_LEVEL:
        return False, (f"{label} rejects rate ≤ {alpha:g} (one-sided exact binomial p = {p:.3g} < "
                       f"{stats.GATE_LEVEL:g})")
    if n < needed:
        thin = f"thin evidence: {n} held-out calls < {needed}"
        if (candidate.truncations_upper or 0) > (current.truncations or 0):
            return False, (f"{label} vs today's {truncation_range(current)} ({thin}, so it may not truncate more "
                           "than today)")
        return True, f"{label}, not more than today's {truncation_range(current)}; binomial p = {p:.3g} ({thin})"
    return True, f"{label}: rate ≤ {alpha:g} not rejected (one-sided exact binomial p = {p:.3g})"


def reserved_better(candidate: MethodBacktest, current: MethodBacktest) -> bool:
    """Strictly fewer tokens reserved per token used than the current ceilings."""
    a, b = candidate.reserved_over_used, current.reserved_over_used
    return a is not None and b is not None and a < b
