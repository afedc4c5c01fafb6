"""The backtest's truncation interval and the gate's truncation test (one-sided exact binomial, evidence-aware)."""

from __future__ import annotations

import numpy as np
import pytest

from autopack.calibration import stats
from autopack.calibration.backtest import evaluate, truncation_bounds, truncation_verdict
from autopack.calibration.result import MethodBacktest


def method(n: int, low: int, high: int | None = None, alpha: float = 0.05) -> MethodBacktest:
    high = low if high is None else high
    return MethodBacktest(n=n, truncations=low, truncations_upper=high,
                          binomial_p=stats.binomial_exceedance_p(high, n, alpha))


# --- the interval ------------------------------------------------------------------------------------------


def test_reaching_the_ceiling_is_truncated_and_censored_calls_above_their_length_are_unknown() -> None:
    y = np.array([100.0, 100.0, 99.0, 500.0, 500.0])
    observed = np.array([True, True, True, False, False])
    ceiling = np.array([100.0, 101.0, 100.0, 500.0, 900.0])
    sure, possible = truncation_bounds(ceiling, y, observed)
    # y == ceiling counts as truncated; a censored call (true length ≥ 500) under 500 is surely cut,
    # under 900 nobody knows: fitting for the lower end, truncated for the upper end
    assert sure.tolist() == [True, False, False, True, False]
    assert possible.tolist() == [True, False, False, True, True]


def test_evaluate_reports_the_interval_the_binomial_p_and_the_evidence_flag() -> None:
    n = 100
    y = np.full(n, 100.0)
    observed = np.ones(n, dtype=bool)
    observed[:3] = False  # three censored at 100
    ceiling = np.full(n, 200.0)
    ceiling[3:5] = 50.0  # two observed calls truncated
    m = evaluate(ceiling, y, observed, 0.05)
    assert (m.truncations, m.truncations_upper) == (2, 5)
    assert m.truncation_interval == (0.02, 0.05)
    # P(X ≥ 5 | 100, 0.05) = 1 − P(X ≤ 4) = 0.5640…
    assert m.binomial_p == pytest.approx(0.564, abs=5e-4)
    assert m.evidence is True  # 100 ≥ 85
    low, high = m.truncation_ci
    assert low == pytest.approx(stats.clopper_pearson(2, 100)[0], abs=1e-6)
    assert high == pytest.approx(stats.clopper_pearson(5, 100)[1], abs=1e-6)
    assert evaluate(ceiling[:10], y[:10], observed[:10], 0.05).evidence is False


# --- the test ----------------------------------------------------------------------------------------------


def test_a_correct_rate_with_enough_calls_passes() -> None:
    ok, line = truncation_verdict(method(200, 10), method(200, 0), 0.05)  # 5 %: p = P(X ≥ 10 | 200, .05) ≈ 0.54
    assert ok and "not rejected" in line and "thin" not in line


def test_too_many_truncations_are_rejected_by_the_binomial_test_even_if_today_truncates_more() -> None:
    # P(X ≥ 9 | 90, 0.05) = 0.0365 < 0.05
    ok, line = truncation_verdict(method(90, 9), method(90, 30), 0.05)
    assert not ok and "rejects rate ≤ 0.05" in line


def test_the_upper_end_is_what_is_tested() -> None:
    ok, line = truncation_verdict(method(100, 2, 12), method(100, 0), 0.05)  # P(X ≥ 12 | 100, .05) ≈ 0.0043
    assert not ok and "2–12/100" in line


def test_thin_evidence_passes_only_if_not_worse_than_today_and_says_so() -> None:
    ok, line = truncation_verdict(method(5, 1), method(5, 0), 0.05)  # p = 1 − 0.95^5 = 0.226: not rejected
    assert not ok and "thin evidence: 5 held-out calls < 85" in line
    ok, line = truncation_verdict(method(5, 1), method(5, 1), 0.05)
    assert ok and "thin evidence" in line
    ok, _ = truncation_verdict(method(5, 0, 1), method(5, 0), 0.05)  # the worst case counts
    assert not ok


def test_no_held_out_calls_fails() -> None:
    ok, line = truncation_verdict(method(0, 0), method(0, 0), 0.05)
    assert not ok and "no held-out calls" in line


# --- calibration of the test itself (known truth: binomial draws) ------------------------------------------


def test_the_test_rejects_a_correct_rate_at_most_at_its_level_and_catches_3_alpha_with_enough_calls() -> None:
    rng = np.random.default_rng(0)
    alpha, reps = 0.05, 4000
    for n in (stats.min_evidence_calls(alpha), 300, 1000):
        correct = rng.binomial(n, alpha, reps)
        rejected = np.mean([stats.binomial_exceedance_p(int(x), n, alpha) < stats.GATE_LEVEL for x in correct])
        assert rejected <= stats.GATE_LEVEL + 0.01, (n, rejected)
        bad = rng.binomial(n, 3 * alpha, reps)
        passed = np.mean([stats.binomial_exceedance_p(int(x), n, alpha) >= stats.GATE_LEVEL for x in bad])
        assert passed <= 1 - stats.EVIDENCE_POWER + 0.02, (n, passed)


def test_min_evidence_calls_is_where_a_3_alpha_budget_is_caught_90_percent_of_the_time() -> None:
    from scipy.stats import binom

    n = stats.min_evidence_calls(0.05)
    assert n == 85

    def power(m: int) -> float:
        crit = next(x for x in range(m + 2) if binom.sf(x - 1, m, 0.05) < 0.05)
        return float(binom.sf(crit - 1, m, 0.15))

    assert power(n - 1) < 0.9
    assert all(power(m) >= 0.9 for m in range(n, n + 200))
    assert stats.min_evidence_calls(0.10) == 37
