"""Calibration statistics against values worked out by hand (the arithmetic is in each test's comment)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from autopack.calibration import stats
from autopack.calibration.model import fit_factor_model

# --- split-conformal rank ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "alpha", "k"),
    [
        (19, 0.05, 19),  # ⌈20·0.95⌉ = 19
        (20, 0.05, 20),  # ⌈21·0.95⌉ = ⌈19.95⌉ = 20
        (39, 0.05, 38),  # ⌈40·0.95⌉ = 38
        (100, 0.05, 96),  # ⌈101·0.95⌉ = ⌈95.95⌉ = 96
        (9, 0.10, 9),  # ⌈10·0.9⌉ = 9
        (40, 0.10, 37),  # ⌈41·0.9⌉ = ⌈36.9⌉ = 37
    ],
)
def test_conformal_rank_is_ceil_n_plus_1_times_1_minus_alpha(n: int, alpha: float, k: int) -> None:
    assert stats.conformal_rank(n, alpha) == k


def test_conformal_rank_needs_at_least_one_over_alpha_minus_one_samples() -> None:
    assert stats.min_conformal_samples(0.05) == 19 and stats.min_conformal_samples(0.10) == 9
    assert stats.conformal_rank(18, 0.05) is None  # ⌈19·0.95⌉ = 19 > 18
    assert stats.conformal_rank(8, 0.10) is None  # ⌈9·0.9⌉ = 9 > 8


def test_conformal_quantile_is_the_kth_order_statistic_without_censoring() -> None:
    values = np.arange(40, 0, -1, dtype=float)  # 40 … 1, unsorted on purpose
    q, k = stats.conformal_quantile(values, None, 0.10)
    assert (q, k) == (37.0, 37)


def test_coverage_confidence_of_the_max_of_19_is_one_minus_point9_to_the_19th() -> None:
    # coverage ~ Beta(19, 1): P(coverage ≥ 0.9) = 1 − 0.9^19 = 0.864914…
    assert stats.coverage_confidence(19, 19, 0.05) == pytest.approx(1 - 0.9**19, abs=1e-12)
    assert stats.coverage_confidence(18, None, 0.05) == 0.0


# --- Kaplan–Meier -----------------------------------------------------------------------------------


def test_kaplan_meier_with_censoring_matches_the_product_limit_by_hand() -> None:
    # sorted: 1 obs (5 at risk) S=4/5; 2 cens; 3 obs (3 at risk) S=0.8·2/3; 4 obs (2 at risk) S=·1/2; 5 cens
    km = stats.kaplan_meier([3, 5, 1, 4, 2], [True, False, True, True, False])
    assert km.times.tolist() == [1, 2, 3, 4, 5]
    assert km.cdf == pytest.approx([0.2, 0.2, 1 - 0.8 * 2 / 3, 1 - 0.8 * 2 / 3 / 2, 1 - 0.8 * 2 / 3 / 2])


def test_km_quantile_reads_the_first_value_where_f_reaches_p() -> None:
    values, observed = [3, 5, 1, 4, 2], [True, False, True, True, False]
    assert stats.km_quantile(values, observed, 0.2) == 1  # F(1) = 0.2
    assert stats.km_quantile(values, observed, 0.5) == 4  # F(3) = 0.467, F(4) = 0.733
    assert math.isinf(stats.km_quantile(values, observed, 0.9))  # F never exceeds 0.733


def test_km_counts_an_observed_value_before_a_censored_one_at_a_tie() -> None:
    # 2 obs (3 at risk): S = 2/3; 2 cens; 3 obs (1 at risk): S = 0  → F(2) = 1/3, F(3) = 1
    km = stats.kaplan_meier([2, 2, 3], [False, True, True])
    assert km.times.tolist() == [2, 3]
    assert km.cdf == pytest.approx([1 / 3, 1.0])


def test_km_median_without_censoring_is_the_ordinary_median() -> None:
    assert stats.km_median([4, 1, 3, 2]) == 2.5
    assert stats.km_median([5, 1, 3]) == 3
    assert stats.km_median([2, 2, 2, 7]) == 2


def test_censoring_pushes_the_median_up() -> None:
    # 1, 2, 3 observed and 4, 5 censored: F(3) = 0.6 ≥ 0.5 → 3; with 3 censored as well: F(2) = 0.4 → inf
    assert stats.km_median([1, 2, 3, 4, 5], [True, True, True, False, False]) == 3
    assert math.isinf(stats.km_median([1, 2, 3, 4, 5], [True, True, False, False, False]))


# --- distribution-free intervals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (10, (2, 9, 1 - 2 * 11 / 1024)),  # P(B≤1) = 11/1024; P(B≤2) = 56/1024 would give 0.89
        (6, (1, 6, 1 - 2 / 64)),  # [x(2), x(5)] only covers 1 − 2·7/64 = 0.78
        (5, (1, 5, 1 - 2 / 32)),  # even the range covers only 0.9375 < 0.95
    ],
)
def test_median_ci_ranks_by_the_binomial(n: int, expected: tuple[int, int, float]) -> None:
    j, k, coverage = stats.median_ci_ranks(n, 0.95)
    assert (j, k) == expected[:2]
    assert coverage == pytest.approx(expected[2], abs=1e-12)


def test_median_ci_treats_censored_values_as_unbounded_above() -> None:
    values = np.arange(1, 11, dtype=float)
    assert stats.median_ci(values)[:2] == (2.0, 9.0)
    observed = np.ones(10, dtype=bool)
    observed[8] = False  # 9 censored: the 9th smallest *observed* value is 10
    assert stats.median_ci(values, observed)[:2] == (2.0, 10.0)
    observed[9] = False  # 9 and 10 censored: only 8 observed values, the upper end is unknown
    low, high, _ = stats.median_ci(values, observed)
    assert low == 2.0 and math.isinf(high)


def test_quantile_ci_ranks_bound_the_quantile_with_the_requested_coverage() -> None:
    j, k, coverage = stats.quantile_ci_ranks(200, 0.95, 0.90)
    assert k is not None and coverage >= 0.90
    assert sps.binom.cdf(j - 1, 200, 0.95) <= 0.05 < sps.binom.cdf(j, 200, 0.95)
    assert stats.quantile_ci_ranks(20, 0.95, 0.90)[1] is None  # P(B = 20) = 0.358 > 0.05: no upper bound


# --- backtest statistics -----------------------------------------------------------------------------


def test_wilson_interval_by_hand() -> None:
    # 0/10: centre = half = (z²/20)/(1 + z²/10) = 0.19207/1.38415 = 0.13877 → [0, 0.27753]
    low, high = stats.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.277532, abs=1e-5)
    # 5/10: centre 0.5, half = z·√(0.025 + z²/400)/1.38415 = 0.26340
    assert stats.wilson_interval(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-5)


def test_kupiec_pof_by_hand() -> None:
    # x = 0 of 20 at α = 0.05: LR = −40·ln 0.95 = 2.05173, p = 2·(1 − Φ(√LR)) = 0.15203
    assert stats.kupiec_pof(0, 20, 0.05) == pytest.approx(0.152030, abs=1e-5)
    # x/n = α exactly: LR = 0, p = 1
    assert stats.kupiec_pof(1, 20, 0.05) == pytest.approx(1.0)
    # x = 5 of 20: LR = −2[5 ln .05 + 15 ln .95 − 5 ln .25 − 15 ln .75] = 9.00272, p = 0.0026963
    assert stats.kupiec_pof(5, 20, 0.05) == pytest.approx(0.0026963, abs=1e-6)


def test_pinball_loss_by_hand() -> None:
    # y=10, f=8: 0.9·2 = 1.8; y=10, f=12: 0.1·2 = 0.2 → mean 1.0
    assert stats.pinball_loss(np.array([10.0, 10.0]), np.array([8.0, 12.0]), 0.9) == pytest.approx(1.0)


# --- pooling ------------------------------------------------------------------------------------------


def test_dersimonian_laird_and_credibility_weights_by_hand() -> None:
    # y = 0, 2, 4 with v = 1: ȳ = 2, Q = 8, df = 2, Σw − Σw²/Σw = 3 − 1 = 2 → τ² = 3, weight 3/(3+1)
    tau2 = stats.dersimonian_laird([0, 2, 4], [1, 1, 1])
    assert tau2 == pytest.approx(3.0)
    assert stats.credibility_weight(tau2, 1.0) == pytest.approx(0.75)
    # y = 0, 1: Q = 0.5 < df = 1 → τ² = 0: complete pooling (weight 0)
    assert stats.dersimonian_laird([0, 1], [1, 1]) == 0.0
    assert stats.credibility_weight(0.0, 1.0) == 0.0
    assert stats.credibility_weight(0.0, 0.0) == 1.0  # no sampling noise: keep the unit's own estimate


def test_dersimonian_laird_nested_compares_units_within_their_cluster() -> None:
    # cluster a: 0, 4 (mean 2, Q = 8, df 1, denom 1); cluster b: 10, 10 (Q = 0, df 1, denom 1) → τ² = (8−2)/2
    assert stats.dersimonian_laird([0, 4, 10, 10], [1, 1, 1, 1], clusters=["a", "a", "b", "b"]) == pytest.approx(3.0)


def test_median_sampling_variance_and_robust_sigma() -> None:
    assert stats.median_sampling_variance(1.0, 2) == pytest.approx(math.pi / 4)
    assert stats.robust_sigma(np.array([-1.0, 1.0, -2.0, 2.0])) == pytest.approx(1.4826 * 1.5)


def test_each_group_gets_a_factor_from_its_own_calls_only() -> None:
    rng = np.random.default_rng(3)
    groups = [("implementation", "low"), ("implementation", "medium"), ("tests", "low")]
    sizes = [40, 6, 1]
    group_of_row = np.repeat(np.arange(3), sizes)
    r = rng.normal(0.0, 0.3, group_of_row.size) + np.repeat([0.0, 0.5, -0.4], sizes)
    model = fit_factor_model(groups, group_of_row, r, np.ones(r.size, dtype=bool), 0.05)
    big, small, single = (model.groups[g] for g in groups)
    assert (big.factor.method, big.factor.source, big.factor.pool_n) == ("km_conformal", "group", 40)
    assert big.factor.assumption is None and not big.factor.extrapolation  # distribution-free
    assert (small.factor.method, small.factor.pool_n) == ("small_group_bound", 6)
    assert "normal" in small.factor.assumption and "6 calls < 22" in small.factor.note
    # the small group's factor is its own bound exp(mean + m·s), m ≥ t_{5, .95}·√(1 + 1/6), rounded up
    own = r[group_of_row == 1]
    m = stats.small_group_multiplier(6, 0.05)
    assert m >= sps.t.ppf(0.95, 5) * math.sqrt(1 + 1 / 6)
    bound = own.mean() + m * own.std(ddof=1)
    assert small.factor.factor == (math.floor(math.exp(bound) * 1000) + 1) / 1000
    assert math.isnan(small.factor.confidence) and "no confidence claimed" in small.factor.confidence_note
    assert single.factor.method == "none" and single.factor.factor is None


def test_prediction_bound_multiplier_by_hand() -> None:
    # t_{4, 0.95} = 2.131847; √(1 + 1/5) = 1.095445
    assert stats.prediction_bound_multiplier(5, 0.05) == pytest.approx(2.131847 * 1.095445, abs=1e-5)
    assert stats.prediction_bound_multiplier(1, 0.05) == math.inf


def test_prediction_bound_confidence_matches_a_simulation_of_normal_groups() -> None:
    rng = np.random.default_rng(1)
    n, alpha, reps = 8, 0.05, 20000
    x = rng.standard_normal((reps, n))
    bound = x.mean(axis=1) + stats.prediction_bound_multiplier(n, alpha) * x.std(axis=1, ddof=1)
    coverage = sps.norm.cdf(bound)  # true μ = 0, σ = 1
    assert np.mean(coverage >= 1 - 2 * alpha) == pytest.approx(stats.prediction_bound_confidence(n, alpha), abs=0.01)
    assert np.mean(1 - coverage) == pytest.approx(alpha, abs=0.003)  # a prediction bound: exactly α on average


def test_clopper_pearson_and_binomial_exceedance_by_hand() -> None:
    # 0 of 10: upper end 1 − 0.025^(1/10) = 0.308497; 10 of 10: lower end 0.025^(1/10) = 0.691503
    assert stats.clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** 0.1), abs=1e-6)
    assert stats.clopper_pearson(10, 10) == pytest.approx((0.025 ** 0.1, 1.0), abs=1e-6)
    # P(X ≥ 2 | 5, 0.05) = 1 − 0.95^5 − 5·0.05·0.95^4 = 0.0225925
    assert stats.binomial_exceedance_p(2, 5, 0.05) == pytest.approx(1 - 0.95**5 - 5 * 0.05 * 0.95**4, abs=1e-12)
    assert stats.binomial_exceedance_p(0, 5, 0.05) == 1.0


def test_a_censored_group_whose_quantile_is_hidden_extrapolates_from_its_own_fit_with_low_confidence() -> None:
    rng = np.random.default_rng(4)
    groups = [("docs", "low"), ("docs", "medium")]
    r = np.r_[rng.normal(0.0, 0.3, 60), rng.normal(1.0, 0.5, 60)]
    observed = np.ones(120, dtype=bool)
    for start in (0, 60):  # the top 10 % of each group cut at its cap: KM never reaches 0.95
        block = r[start:start + 60]
        cap = np.quantile(block, 0.9)
        observed[start:start + 60] = block < cap
        r[start:start + 60] = np.minimum(block, cap)
    model = fit_factor_model(groups, np.repeat([0, 1], 60), r, observed, 0.05)
    low, medium = (model.groups[g].factor for g in groups)
    for info in (low, medium):
        assert info.method == "censored_fit" and info.extrapolation and "Tobit" in info.assumption
        assert math.isnan(info.confidence) and info.confidence_note
    # own fits: true factors exp(0.3·1.645) = 1.64 and exp(1 + 0.5·1.645) = 6.19, not one shared value
    assert low.factor == pytest.approx(1.64, rel=0.2) and medium.factor == pytest.approx(6.19, rel=0.25)


def test_a_group_whose_only_censored_call_is_its_largest_still_gets_a_finite_extrapolation() -> None:
    # 28 calls: the confident rank is 28, the largest, and it was cut at its cap. The fit's level is
    # 28/29 (the rank's own coverage), never 28/28 = 1, whose quantile is infinite.
    rng = np.random.default_rng(11)
    r = np.sort(rng.normal(0.0, 0.4, 28))
    observed = np.ones(28, dtype=bool)
    observed[-1] = False
    assert stats.confident_conformal_rank(28, 0.05) == 28
    model = fit_factor_model([("docs", "low")], np.zeros(28, dtype=int), r, observed, 0.05)
    info = model.groups[("docs", "low")].factor
    assert info.method == "censored_fit" and info.extrapolation
    # the law's 28/29 quantile: exp(0.4 · 1.82) = 2.07; its (1 − α) quantile exp(0.4 · 1.645) = 1.93
    assert info.factor == pytest.approx(math.exp(0.4 * 1.8189), rel=0.25)


def test_own_factor_is_just_above_the_conformal_quantile() -> None:
    r = np.log(np.arange(1, 23, dtype=float))  # ratios 1 … 22; k = 22 → the largest, 22
    model = fit_factor_model([("docs", "low")], np.zeros(22, dtype=int), r, np.ones(22, dtype=bool), 0.05)
    info = model.groups[("docs", "low")].factor
    # strictly above 22 (a call of exactly 22 × predicted reaches a ceiling of 22 × predicted: truncated)
    assert (info.method, info.factor, info.k) == ("km_conformal", 22.001, 22)


def test_the_conformal_rank_is_raised_until_truncation_above_2_alpha_is_at_most_10_percent_likely() -> None:
    # coverage of the max of n ~ Beta(n, 1): P(coverage ≥ 0.9) = 1 − 0.9^n: 0.8906 at n = 21, 0.9015 at n = 22
    assert stats.confident_conformal_rank(21, 0.05) is None
    assert stats.confident_conformal_rank(22, 0.05) == 22
    assert stats.min_confident_samples(0.05) == 22 and stats.min_confident_samples(0.10) == 11
    # for larger n the plain rank already qualifies: ⌈101·0.95⌉ = 96
    assert stats.confident_conformal_rank(100, 0.05) == stats.conformal_rank(100, 0.05) == 96


# --- the original's numbers ------------------------------------------------------------------------------


def test_original_confidence_and_median_by_hand() -> None:
    # n = 2, σ(0.5, 1.5) = 0.5: 0.6·2/12 + 0.4/1.5 = 0.1 + 0.26667
    assert stats.original_confidence([0.5, 1.5]) == pytest.approx(0.1 + 0.4 / 1.5)
    assert stats.original_confidence([1.0, 1.0, 1.0]) == pytest.approx(0.6 * 3 / 12 + 0.4)
    assert stats.original_median([1, 2, 3, 4]) == 3  # sorted[n // 2]: the upper median


# --- censored-normal fallback ----------------------------------------------------------------------------


def test_censored_normal_without_censoring_is_the_normal_mle() -> None:
    fit = stats.censored_normal_fit([1, 2, 3, 4, 5], [True] * 5)
    assert fit is not None
    assert fit.mu == pytest.approx(3.0, abs=1e-4) and fit.sigma == pytest.approx(math.sqrt(2.0), abs=1e-4)


def test_censored_normal_covariance_without_censoring_is_the_inverse_fisher_information() -> None:
    """With nothing censored the MLE's asymptotic variances are σ²/n for μ and σ²/(2n) for σ, uncorrelated."""
    values = np.random.default_rng(3).normal(1.0, 0.5, 400)
    fit = stats.censored_normal_fit(values, np.ones(values.size, dtype=bool))
    assert fit is not None
    n, s2 = values.size, fit.sigma**2
    assert fit.cov[0, 0] == pytest.approx(s2 / n, rel=1e-6) and fit.cov[1, 1] == pytest.approx(s2 / (2 * n), rel=1e-6)
    assert fit.cov[0, 1] == pytest.approx(0.0, abs=1e-9)


def test_censored_normal_fit_of_equal_values_has_no_maximum() -> None:
    """Every observed value the same and nothing above them: the likelihood grows as σ → 0, so there is no fit."""
    assert stats.censored_normal_fit([1.0, 1.0, 1.0], [True] * 3, min_observed=2) is None


def test_a_censored_normal_fit_of_many_values_matches_the_fit_of_all_of_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above ``MAX_FIT_VALUES`` the fit runs on an evenly spaced subset of the (sorted) values: 10⁵ normal values cut
    at their 95 % quantile give the same estimates as the fit of all of them, and standard errors of all of them."""
    rng = np.random.default_rng(2)
    r = rng.normal(0.1, 0.3, 100_000)
    cap = 0.1 + 0.3 * 1.645
    values, observed = stats.sort_censored(np.minimum(r, cap), r < cap)
    thinned = stats.censored_normal_fit(values, observed)
    monkeypatch.setattr(stats, "MAX_FIT_VALUES", 10**9)
    full = stats.censored_normal_fit(values, observed)
    assert thinned is not None and full is not None
    assert thinned.mu == pytest.approx(full.mu, abs=0.002) and thinned.sigma == pytest.approx(full.sigma, abs=0.002)
    assert np.sqrt(np.diag(thinned.cov)) == pytest.approx(np.sqrt(np.diag(full.cov)), rel=0.05)


def test_censored_t_fit_recovers_a_student_t_law_cut_at_its_95th_percentile() -> None:
    """2,000 draws of 0.2 + 0.5·T₄ (five times), those above the law's 95 % quantile known only as lower bounds there: the fit
    finds a heavy tail (df 3–6), the location and scale, and the law's 99 % tail beyond the cut."""
    cap = 0.2 + 0.5 * float(sps.t.ppf(0.95, 4))
    x = np.array([0.2 + 0.5 * float(sps.t.ppf(0.99, 4))])
    for seed in range(5):
        r = 0.2 + 0.5 * np.random.default_rng(seed).standard_t(4, 2000)
        fit = stats.censored_t_fit(np.minimum(r, cap), r < cap)
        assert fit is not None and 3.0 <= fit.df <= 6.0
        assert fit.loc == pytest.approx(0.2, abs=0.04) and fit.scale == pytest.approx(0.5, rel=0.1)  # ≈ 3 s.e.
        assert float(fit.sf(x)[0]) == pytest.approx(0.01, abs=0.003)


def test_censored_t_fit_needs_twenty_complete_values() -> None:
    assert stats.censored_t_fit(np.arange(30.0), np.arange(30) < 19) is None


def test_upper_quantile_extrapolates_when_censoring_hides_the_tail() -> None:
    rng = np.random.default_rng(0)
    values = np.sort(rng.normal(0, 1, 60))
    observed = np.ones(60, dtype=bool)
    observed[-4:] = False  # the four largest only known as lower bounds: KM never reaches 0.95
    uq = stats.upper_quantile(values, observed, 0.05)
    assert uq.method == "tobit" and math.isfinite(uq.value) and uq.value > values[-5]
    plain = stats.upper_quantile(values, None, 0.05)
    assert plain.method == "conformal" and plain.value == values[stats.conformal_rank(60, 0.05) - 1]
