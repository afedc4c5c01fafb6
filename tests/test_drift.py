"""Budgets under drift: the ACI rule, the reviewed curve, decide_ceiling's adaptive input, and the replays."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autopack import token_estimator as te
from autopack.calibration import drift

GROUP = ("implementation", "low")
CURVE = te.AdaptiveCurve((0.01, 0.025, 0.05, 0.1), (3.0, 2.4, 2.0, 1.5))
FEATURES = te.PhaseFeatures(category="implementation", complexity="low", deliverables=("src/a.py",))


def coefficients(**changes: object) -> te.Coefficients:
    base = dataclasses.replace(
        te.current_coefficients(), budget_factors={GROUP: 2.0}, adaptive_curves={GROUP: CURVE},
        adaptive_target=0.05, adaptive_gamma=0.01,
    )
    return dataclasses.replace(base, **changes)


# --- the update rule --------------------------------------------------------------------------------


def test_aci_step_follows_a_hand_computed_stream() -> None:
    errs = [0, 0, 1, 0, 1, 1, 1, 1, 1]
    expected = [0.0505, 0.051, 0.0415, 0.042, 0.0325, 0.023, 0.0135, 0.01, 0.01]  # γ = 0.01, α = 0.05
    alpha, seen = 0.05, []
    for err in errs:
        alpha = te.aci_step(alpha, err, 0.05, 0.01, 0.01, 0.1)
        seen.append(alpha)
    assert seen == pytest.approx(expected, abs=1e-12)


def test_aci_step_is_clipped_above_too() -> None:
    alpha = 0.099
    for _ in range(5):
        alpha = te.aci_step(alpha, 0, 0.05, 0.01, 0.01, 0.1)
    assert alpha == 0.1


# --- the reviewed curve ------------------------------------------------------------------------------


def test_curve_returns_the_reviewed_value_at_each_level() -> None:
    assert [CURVE.factor_at(a) for a in CURVE.alphas] == list(CURVE.factors)


def test_curve_interpolates_log_linearly_between_levels() -> None:
    mid = math.sqrt(0.025 * 0.05)  # halfway in log α
    assert CURVE.factor_at(mid) == pytest.approx(math.sqrt(2.4 * 2.0))


@given(st.floats(allow_nan=False, allow_infinity=True))
def test_curve_never_leaves_the_reviewed_range(alpha: float) -> None:
    assert 1.5 <= CURVE.factor_at(alpha) <= 3.0


def test_curve_table_is_parsed_per_group() -> None:
    table = {("implementation/low", "alpha=0.0100"): 3.0, ("implementation/low", "alpha=0.0500"): 2.0,
             ("tests/medium", "alpha=0.0500"): 1.7, ("tests/medium", "alpha=0.1000"): 1.2}
    curves = te.parse_adaptive_curves(table)
    assert curves[GROUP] == te.AdaptiveCurve((0.01, 0.05), (3.0, 2.0))
    assert curves[("tests", "medium")].alphas == (0.05, 0.1)


def test_malformed_curve_key_is_refused() -> None:
    with pytest.raises(ValueError, match="ADAPTIVE_BUDGET_FACTORS key"):
        te.parse_adaptive_curves({("implementation-low", "0.05"): 2.0})


# --- decide_ceiling's adaptive input -----------------------------------------------------------------


def test_group_without_curve_is_decided_exactly_as_without_adaptive_tables() -> None:
    plain = dataclasses.replace(te.current_coefficients(), budget_factors={GROUP: 2.0})
    est = te.estimate(FEATURES, plain)
    today = te.decide_ceiling(est, FEATURES, plain)
    with_tables = coefficients(adaptive_curves={("tests", "low"): CURVE})
    level = te.AdaptiveLevel(0.01, CURVE.fingerprint, 50)
    assert te.decide_ceiling(est, FEATURES, with_tables, adaptive=level) == today
    assert today.adaptive is None and "adaptive" not in [c.name for c in today.contributions]


def test_no_state_plans_at_the_target_which_is_the_static_factor() -> None:
    coeffs = coefficients()
    est = te.estimate(FEATURES, coeffs)
    static = te.decide_ceiling(est, FEATURES, dataclasses.replace(coeffs, adaptive_curves={}))
    decision = te.decide_ceiling(est, FEATURES, coeffs)
    assert decision.actual_max_tokens == static.actual_max_tokens == math.ceil(est.predicted_output_tokens * 2.0)
    (contribution,) = [c for c in decision.contributions if c.name == "adaptive"]
    assert "alpha_t=0.0500" in contribution.detail and "no runtime state" in contribution.detail
    assert decision.adaptive is not None and decision.adaptive.alpha_t == 0.05


def test_state_moves_the_ceiling_along_the_curve() -> None:
    coeffs = coefficients()
    est = te.estimate(FEATURES, coeffs)
    level = te.AdaptiveLevel(0.025, CURVE.fingerprint, 12)
    decision = te.decide_ceiling(est, FEATURES, coeffs, adaptive=level)
    assert decision.actual_max_tokens == math.ceil(est.predicted_output_tokens * 2.4)
    assert decision.adaptive is not None and decision.adaptive.raw_ceiling == decision.actual_max_tokens
    assert "after 12 finished calls" in [c for c in decision.contributions if c.name == "adaptive"][0].detail


@pytest.mark.parametrize("alpha_t", [-5.0, 0.0, 1e-9, float("nan"), 0.3, 7.0])
def test_runtime_state_never_exceeds_the_reviewed_bounds(alpha_t: float) -> None:
    coeffs = coefficients()
    est = te.estimate(FEATURES, coeffs)
    decision = te.decide_ceiling(est, FEATURES, coeffs, adaptive=te.AdaptiveLevel(alpha_t, CURVE.fingerprint))
    pred = est.predicted_output_tokens
    assert math.ceil(pred * 1.5) <= decision.actual_max_tokens <= math.ceil(pred * 3.0)


def test_state_of_another_curve_is_not_used() -> None:
    coeffs = coefficients()
    est = te.estimate(FEATURES, coeffs)
    stale = te.AdaptiveLevel(0.01, "0" * 16, 300)
    decision = te.decide_ceiling(est, FEATURES, coeffs, adaptive=stale)
    assert decision.adaptive is not None and decision.adaptive.alpha_t == 0.05


def test_escalated_retry_carries_no_feedback() -> None:
    coeffs = coefficients()
    est = te.estimate(FEATURES, coeffs)
    decision = te.decide_ceiling(est, FEATURES, coeffs, escalated_to=60000)
    assert decision.adaptive is None and decision.actual_max_tokens == 60000


def test_plan_call_asks_for_state_only_for_groups_with_a_curve() -> None:
    asked: list[tuple[str, str]] = []

    def lookup(group: tuple[str, str]) -> te.AdaptiveLevel | None:
        asked.append(group)
        return te.AdaptiveLevel(0.01, CURVE.fingerprint)

    coeffs = coefficients()
    te.plan_call(te.PhaseFeatures(category="tests", complexity="low", deliverables=("tests/test_a.py",)), coeffs,
                 adaptive=lookup)
    assert asked == []
    est, decision = te.plan_call(FEATURES, coeffs, adaptive=lookup)
    assert asked == [GROUP] and decision.actual_max_tokens == math.ceil(est.predicted_output_tokens * 3.0)


def test_error_is_judged_against_the_unclamped_adaptive_ceiling() -> None:
    use = te.AdaptiveUse(GROUP, 0.05, 0.2, 300, 0.05, 0.01, 0.01, 0.1, CURVE.fingerprint)
    assert use.error(299, truncated=False) == 0
    assert use.error(300, truncated=False) == 1  # reaching the ceiling = truncated
    assert use.error(512, truncated=True) == 1


# --- the replays ---------------------------------------------------------------------------------------


def stream(y: list[float], epoch: list[float] | None = None, group: list[int] | None = None) -> drift.Stream:
    n = len(y)
    return drift.Stream(np.array(group or [0] * n), np.full(n, 100.0), np.array(y, dtype=float),
                        np.ones(n, dtype=bool), np.array(epoch if epoch is not None else range(n), dtype=float))


def test_fixed_lag_feedback_reaches_only_calls_planned_after_it() -> None:
    curve = te.AdaptiveCurve((0.01, 0.05, 0.1), (3.0, 2.0, 1.5))
    test = stream([250, 10, 10, 10, 10, 10])  # call 0 reaches its 200-token ceiling
    _, trace = drift.replay_aci(test, {0: curve}, {0: 2.0}, 0.05, 0.01, drift.Feedback(lag_calls=2))
    assert trace.alpha_t.tolist() == pytest.approx([0.05, 0.05, 0.05, 0.0405, 0.041, 0.0415], abs=1e-12)


def test_feedback_arrives_in_completion_order_not_planning_order() -> None:
    curve = te.AdaptiveCurve((0.01, 0.05, 0.1), (3.0, 2.0, 1.5))
    # call 0 (t=0) runs long and is truncated at 200 tokens: done at 0.25 + 8 s = 8.25 s; call 1 (t=1) is done
    # at 1.45 s, call 2 (t=2) at 2.65 s. Call 2 sees call 1 but not call 0; call 3 (t=10) sees all three.
    test = stream([1000, 5, 10, 10], epoch=[0.0, 1.0, 2.0, 10.0])
    _, trace = drift.replay_aci(test, {0: curve}, {0: 2.0}, 0.05, 0.01,
                                drift.Feedback(first_token_seconds=0.25, seconds_per_token=0.04))
    assert trace.alpha_t.tolist() == pytest.approx([0.05, 0.05, 0.0505, 0.0505 + 0.0005 - 0.0095], abs=1e-12)


def test_static_factor_is_the_conformal_order_statistic_of_fitting_ceilings() -> None:
    train = stream([float(v) for v in range(100)])  # smallest fitting ceilings 1..100
    factors = drift.static_factors(train, 0.05, 1)
    assert factors == {0: 0.96}  # k = ⌈101 × 0.95⌉ = 96
    ceilings = drift.replay_static(train, factors)
    assert set(ceilings.tolist()) == {96.0}
    assert drift.truncated_under(ceilings, train.y, train.observed).sum() == 4  # y = 96..99 reach it


def test_censored_call_is_truncated_only_when_the_ceiling_is_at_or_below_its_bound() -> None:
    y, observed = np.array([500.0, 500.0]), np.array([False, False])
    assert drift.truncated_under(np.array([500.0, 501.0]), y, observed).tolist() == [True, False]


def test_oracle_truncates_at_most_alpha_per_group() -> None:
    rng = np.random.default_rng(3)
    test = stream(rng.lognormal(3, 1, 2000).round().tolist(), group=rng.integers(0, 3, 2000).tolist())
    oracle = drift.oracle_ceilings(test, 0.05)
    for g in range(3):
        m = test.group == g
        assert drift.truncated_under(oracle[m], test.y[m], test.observed[m]).mean() <= 0.05


def test_worst_bin_is_the_highest_truncation_among_full_bins() -> None:
    test = stream([10.0] * 200, epoch=[float(i) for i in range(100)] + [400.0 + i for i in range(100)])
    ceilings = np.where(np.arange(200) < 100, 50.0, np.where(np.arange(200) % 4 == 0, 5.0, 50.0))
    m = drift.evaluate(test, ceilings, 0.05)
    assert m.truncation_rate == 0.125 and m.worst_bin_truncation == 0.25 and m.bins == 2


def drifting_stream(seed: int, n_train: int, n_test: int, shift: float) -> tuple[drift.Stream, drift.Stream]:
    """Known truth: log-lengths N(4, 0.5²); halfway through the test window they move up by ``shift``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(4.0, 0.5, n_train + n_test)
    z[n_train + n_test // 2:] += shift
    full = stream(np.round(np.exp(z)).tolist(), epoch=np.arange(n_train + n_test, dtype=float).tolist())
    return full.split(n_train / (n_train + n_test))


def test_aci_holds_the_target_through_a_level_shift_that_breaks_the_static_quantile() -> None:
    train, test = drifting_stream(11, 4000, 12000, shift=0.3)
    cmp = drift.compare(train, test, 0.05, n_groups=1, feedback=drift.Feedback(lag_calls=50))
    static, aci = cmp.metrics["static"].truncation_rate or 0.0, cmp.metrics["aci"].truncation_rate or 0.0
    # the truth after the shift: P(N(0,1) > z_0.95 − 0.3/0.5) ≈ 14.6 %, so static ≈ 9.8 % overall
    assert static > 0.085
    assert abs(aci - 0.05) < 0.012
    assert cmp.aci_trace is not None and np.nanmin(cmp.aci_trace.alpha_t) >= 0.01  # clipped at α/5


def test_without_drift_every_method_holds_the_target() -> None:
    train, test = drifting_stream(5, 4000, 8000, shift=0.0)
    cmp = drift.compare(train, test, 0.10, n_groups=1, feedback=drift.Feedback(lag_calls=20))
    for name in ("static", "rolling", "aci"):
        assert (cmp.metrics[name].truncation_rate or 0.0) <= 0.10 + 0.015, name


def test_method_spec_rejects_unknown_methods() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        drift.MethodSpec("median")  # type: ignore[arg-type]
