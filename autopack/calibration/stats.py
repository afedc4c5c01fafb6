"""Pure statistics of the calibration: plain numpy arrays in, numbers out, no I/O.

Every function here is checked against hand-computed values in ``tests/test_stats.py``. Conventions:
values are log-ratios or token counts; ``observed`` is False for a right-censored value (a truncated
call: the true value is at least the one given).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from autopack.calibration import distributions as dist

_EPS = 1e-9


# --------------------------------------------------------------------------------------------------
# Split-conformal rank
# --------------------------------------------------------------------------------------------------


def conformal_rank(n: int, alpha: float) -> int | None:
    """k = ⌈(n+1)(1−α)⌉, the order statistic that covers a new exchangeable point with prob ≥ 1−α.

    None when k > n, i.e. when there are fewer than 1/α − 1 calibration points: no finite quantile has
    the guarantee (the caller falls back to a parent group).
    """
    if n <= 0:
        return None
    k = math.ceil((n + 1) * (1.0 - alpha) - _EPS)
    return k if k <= n else None


def min_conformal_samples(alpha: float) -> int:
    """The smallest n for which ``conformal_rank(n, alpha)`` exists: ⌈1/α − 1⌉."""
    return max(1, math.ceil((1.0 - alpha) / alpha - _EPS))


#: Every factor is built so that P(its realised truncation ≤ 2α) is at least this (under its assumptions).
FACTOR_CONFIDENCE = 0.90


def confident_conformal_rank(n: int, alpha: float, confidence: float = FACTOR_CONFIDENCE) -> int | None:
    """The smallest rank k ≥ ⌈(n+1)(1−α)⌉ whose realised coverage is ≥ 1 − 2α with probability ≥ ``confidence``.

    Split conformal's k-th order statistic covers a new call with probability ≥ 1 − α on average, but
    its coverage given the data is Beta(k, n+1−k): with the minimum 19 calls at α = 5 % (k = n) it
    truncates more than 2α in 0.9¹⁹ = 13.5 % of groups. Raising k until that risk is ≤ 1 − ``confidence``
    keeps the average guarantee and adds this training-conditional one (Vovk 2012). For large n the two
    ranks coincide. None when no k ≤ n qualifies (fewer than 22 calls at α = 5 %, 11 at α = 10 %).
    """
    k = conformal_rank(n, alpha)
    while k is not None and k <= n:
        if coverage_confidence(n, k, alpha) >= confidence - _EPS:
            return k
        k += 1
    return None


@lru_cache(maxsize=64)
def min_confident_samples(alpha: float, confidence: float = FACTOR_CONFIDENCE) -> int:
    """The smallest n with a ``confident_conformal_rank``: the calls a group needs for a distribution-free factor."""
    n = min_conformal_samples(alpha)
    while confident_conformal_rank(n, alpha, confidence) is None:
        n += 1
    return n


def coverage_confidence(n: int, k: int | None, alpha: float) -> float:
    """P(the realised coverage of the k-th of n order statistics ≥ 1 − 2α).

    For exchangeable continuous data the coverage of a split-conformal quantile, given the calibration
    set, is Beta(k, n + 1 − k) distributed (Vovk 2012). This is the probability that the budget, once
    shipped, truncates at most twice the target rate.
    """
    if k is None or n <= 0 or k > n:
        return 0.0
    return float(dist.beta_sf(1.0 - 2.0 * alpha, k, n + 1 - k))


# --------------------------------------------------------------------------------------------------
# Kaplan–Meier
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KaplanMeier:
    """The Kaplan–Meier CDF evaluated at the end of each block of tied values."""

    times: np.ndarray  # distinct values, ascending
    cdf: np.ndarray  # F(t) = 1 − S(t) at each distinct value


def sort_censored(
    values: Sequence[float] | np.ndarray, observed: Sequence[bool] | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(values, observed) sorted ascending, an observed value before a censored one at a tie."""
    v = np.asarray(values, dtype=float)
    o = np.ones(v.shape, dtype=bool) if observed is None else np.asarray(observed, dtype=bool)
    return v[(order := censored_order(v, o))], o[order]


def censored_order(values: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """argsort by value, observed before censored at a tie (one float sort: a censored value is keyed
    by the next representable float above it, which sorts after its tie and before any larger value)."""
    key = np.where(observed, values, np.nextafter(values, np.inf))
    return np.argsort(key, kind="quicksort")


def kaplan_meier(
    values: Sequence[float] | np.ndarray,
    observed: Sequence[bool] | np.ndarray | None = None,
    *,
    presorted: bool = False,
) -> KaplanMeier:
    """Kaplan–Meier estimate of the distribution of right-censored ``values``.

    At a tie an observed value counts before a censored one (the usual convention). Without censoring
    F is the empirical CDF. ``presorted``: the input is already in ``sort_censored`` order (O(n) then).
    """
    if presorted:
        v = np.asarray(values, dtype=float)
        o = np.ones(v.shape, dtype=bool) if observed is None else np.asarray(observed, dtype=bool)
    else:
        v, o = sort_censored(values, observed)
    if v.size == 0:
        return KaplanMeier(np.empty(0), np.empty(0))
    at_risk = v.size - np.arange(v.size, dtype=float)
    survival = np.cumprod(np.where(o, 1.0 - 1.0 / at_risk, 1.0))
    block_end = np.r_[v[1:] != v[:-1], True]
    return KaplanMeier(v[block_end], 1.0 - survival[block_end])


def km_quantile(
    values: Sequence[float] | np.ndarray,
    observed: Sequence[bool] | np.ndarray | None,
    p: float,
    *,
    midpoint: bool = False,
    presorted: bool = False,
    km: KaplanMeier | None = None,
) -> float:
    """The smallest t with F(t) ≥ p (``inf`` if censoring never lets F reach p).

    ``midpoint``: where F equals p exactly on an interval, return the middle of it (so the p = 0.5
    quantile of uncensored data is the ordinary median). ``km``: the curve of these values, if the
    caller has it already (several quantiles of one group).
    """
    v = np.asarray(values, dtype=float)
    if v.size and (observed is None or bool(np.all(observed))):
        return _plain_quantile(v, p, midpoint=midpoint, presorted=presorted)
    km = km if km is not None else kaplan_meier(v, observed, presorted=presorted)
    i = int(np.searchsorted(km.cdf, p - _EPS, side="left"))  # F is non-decreasing
    if i >= km.cdf.size:
        return math.inf
    t = float(km.times[i])
    if midpoint and abs(km.cdf[i] - p) <= _EPS and i + 1 < km.times.size:
        later = np.flatnonzero(km.cdf[i + 1 :] > km.cdf[i] + _EPS)
        if later.size:
            t = (t + float(km.times[i + 1 + later[0]])) / 2.0
    return t


def _plain_quantile(v: np.ndarray, p: float, *, midpoint: bool, presorted: bool) -> float:
    """KM with nothing censored, in O(n): the ⌈np⌉-th order statistic (midpoint rule as above)."""
    n = v.size
    k = max(1, math.ceil(n * p - _EPS))  # F(x_(k)) = k/n ≥ p
    want_mid = midpoint and abs(k / n - p) <= _EPS and k < n
    if presorted:
        t = float(v[k - 1])
        return (t + float(v[k])) / 2.0 if want_mid else t
    if want_mid:
        part = np.partition(v, [k - 1, k])
        return (float(part[k - 1]) + float(part[k])) / 2.0
    return float(np.partition(v, k - 1)[k - 1])


def km_median(
    values: Sequence[float] | np.ndarray, observed: Sequence[bool] | np.ndarray | None = None, *,
    presorted: bool = False, km: KaplanMeier | None = None,
) -> float:
    return km_quantile(values, observed, 0.5, midpoint=True, presorted=presorted, km=km)


def conformal_quantile(
    values: Sequence[float] | np.ndarray,
    observed: Sequence[bool] | np.ndarray | None,
    alpha: float,
    *,
    presorted: bool = False,
) -> tuple[float, int | None]:
    """Split-conformal upper quantile at miscoverage α: the k-th order statistic, k = ⌈(n+1)(1−α)⌉.

    With censoring, the Kaplan–Meier quantile at level k/n (identical to the k-th order statistic when
    nothing is censored). Returns (quantile, k); (inf, None) when n < 1/α − 1 or censoring leaves the
    level unreachable.
    """
    v = np.asarray(values, dtype=float)
    k = conformal_rank(v.size, alpha)
    if k is None:
        return math.inf, None
    return km_quantile(v, observed, k / v.size, presorted=presorted), k


# --------------------------------------------------------------------------------------------------
# Distribution-free intervals from order statistics
# --------------------------------------------------------------------------------------------------


def median_ci_ranks(n: int, level: float = 0.95) -> tuple[int, int, float]:
    """1-based ranks (j, n+1−j) of the distribution-free CI for a median, and its exact coverage.

    Coverage of [x_(j), x_(n+1−j)] is 1 − 2·P(B ≤ j−1), B ~ Binomial(n, ½); j is the largest with
    coverage ≥ ``level``. When even [x_(1), x_(n)] falls short (n ≤ 5 at 95 %), that widest interval
    is returned with its (lower) coverage.
    """
    if n <= 0:
        raise ValueError("median_ci_ranks needs n >= 1")
    tail = (1.0 - level) / 2.0
    m = int(dist.binom_ppf(tail, n, 0.5))
    while m >= 0 and dist.binom_cdf(m, n, 0.5) > tail + _EPS:
        m -= 1
    while m + 1 < n and dist.binom_cdf(m + 1, n, 0.5) <= tail + _EPS:
        m += 1
    j = max(1, min(m + 1, (n + 1) // 2))
    coverage = 1.0 - 2.0 * float(dist.binom_cdf(j - 1, n, 0.5))
    return j, n + 1 - j, coverage


def quantile_ci_ranks(n: int, q: float, level: float = 0.90) -> tuple[int, int | None, float]:
    """1-based ranks (j, k) with P(x_(j) ≤ ξ_q ≤ x_(k)) ≥ ``level`` (equal tails), B ~ Binomial(n, q).

    ``k`` is None when no order statistic bounds the quantile from above at that level (too few
    samples for a high quantile).
    """
    if n <= 0:
        raise ValueError("quantile_ci_ranks needs n >= 1")
    tail = (1.0 - level) / 2.0
    # lower: largest j with P(B <= j-1) <= tail
    m = int(dist.binom_ppf(tail, n, q))
    while m >= 0 and dist.binom_cdf(m, n, q) > tail + _EPS:
        m -= 1
    while m + 1 < n and dist.binom_cdf(m + 1, n, q) <= tail + _EPS:
        m += 1
    j = max(1, m + 1)
    # upper: smallest k with P(B >= k) <= tail, i.e. cdf(k-1) >= 1 - tail
    k_minus_1 = int(dist.binom_ppf(1.0 - tail, n, q))
    while k_minus_1 > 0 and dist.binom_cdf(k_minus_1 - 1, n, q) >= 1.0 - tail - _EPS:
        k_minus_1 -= 1
    k: int | None = k_minus_1 + 1
    if k is not None and k > n:
        k = None
    upper_cdf = float(dist.binom_cdf((k if k is not None else n + 1) - 1, n, q))
    coverage = upper_cdf - float(dist.binom_cdf(j - 1, n, q))
    return j, k, coverage


def order_statistic_interval(
    values: Sequence[float] | np.ndarray,
    observed: Sequence[bool] | np.ndarray | None,
    j: int,
    k: int | None,
    *,
    presorted: bool = False,
) -> tuple[float, float]:
    """[x_(j), x_(k)] made conservative for censoring.

    A censored value is only a lower bound, so the lower end uses it as given (true order statistics can
    only be larger) and the upper end treats it as +∞ (true ones can only be smaller). ``k`` None → +∞.
    """
    v = np.asarray(values, dtype=float)
    o = np.ones(v.shape, dtype=bool) if observed is None else np.asarray(observed, dtype=bool)
    if not presorted:
        v, o = sort_censored(v, o)
    low = float(v[j - 1])
    if k is None:
        return low, math.inf
    observed_sorted = v[o]
    high = float(observed_sorted[k - 1]) if k <= observed_sorted.size else math.inf
    return low, high


def median_ci(
    values: Sequence[float] | np.ndarray,
    observed: Sequence[bool] | np.ndarray | None = None,
    level: float = 0.95,
    *,
    presorted: bool = False,
) -> tuple[float, float, float]:
    """Distribution-free CI for the median: (low, high, exact coverage). ``high`` may be inf (censoring)."""
    n = int(np.asarray(values).size)
    j, k, coverage = median_ci_ranks(n, level)
    low, high = order_statistic_interval(values, observed, j, k, presorted=presorted)
    return low, high, coverage


# --------------------------------------------------------------------------------------------------
# Backtest statistics
# --------------------------------------------------------------------------------------------------


def wilson_interval(x: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion x/n."""
    if n <= 0:
        return 0.0, 1.0
    z = float(dist.norm_ppf(1.0 - (1.0 - level) / 2.0))
    p = x / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def clopper_pearson(x: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval for a binomial proportion x/n: never below its nominal coverage."""
    if n <= 0:
        return 0.0, 1.0
    tail = (1.0 - level) / 2.0
    low = 0.0 if x <= 0 else float(dist.beta_ppf(tail, x, n - x + 1))
    high = 1.0 if x >= n else float(dist.beta_ppf(1.0 - tail, x + 1, n - x))
    return low, high


def binomial_exceedance_p(x: int, n: int, alpha: float) -> float:
    """One-sided exact binomial p-value of H0 "truncation rate ≤ α" given x truncations in n calls.

    p = P(X ≥ x) for X ~ Binomial(n, α): small when x is too many truncations for a rate of α. A
    correct budget (rate ≤ α) is rejected at level ℓ with probability at most ℓ, whatever n.
    """
    if n <= 0 or x <= 0:
        return 1.0
    return float(dist.binom_sf(x - 1, n, alpha))


#: Level of the gate's binomial test, and what "enough held-out calls" must be able to detect.
GATE_LEVEL = 0.05
EVIDENCE_POWER = 0.90
EVIDENCE_MULTIPLE = 3.0


@lru_cache(maxsize=64)
def min_evidence_calls(
    alpha: float, level: float = GATE_LEVEL, power: float = EVIDENCE_POWER, multiple: float = EVIDENCE_MULTIPLE
) -> int:
    """How many held-out calls a truncation test needs before its verdict is evidence.

    The smallest n from which on the one-sided exact binomial test of "rate ≤ α" at ``level`` rejects a
    true rate of ``multiple``·α with probability ≥ ``power`` (for n and every larger n: the power of an
    exact test saw-tooths with n, so the first n that reaches it is not enough). With fewer calls a
    3α budget passes more than 10 % of the time, so "not rejected" says little. 85 at α = 0.05, 37 at
    α = 0.10, 215 at α = 0.02 (defaults).
    """
    bad = min(0.999, multiple * alpha)
    z_a, z_b = float(dist.norm_ppf(1 - level)), float(dist.norm_ppf(power))
    guess = ((z_a * math.sqrt(alpha * (1 - alpha)) + z_b * math.sqrt(bad * (1 - bad))) / (bad - alpha)) ** 2
    top = int(4 * guess) + 50
    n = np.arange(1, top + 1)
    # critical count per n: the smallest x with P(X ≥ x | n, α) < level, i.e. ppf(1 − level) + 1 (checked)
    crit = dist.binom_ppf(1 - level, n, alpha) + 1
    crit = np.where(dist.binom_sf(crit - 1, n, alpha) < level, crit, crit + 1)
    reject_power = np.where(crit <= n, dist.binom_sf(crit - 1, n, bad), 0.0)
    short = np.flatnonzero(reject_power < power)
    return int(n[short[-1]] + 1) if short.size else 1


def _binom_loglik(x: int, n: int, p: float) -> float:
    total = 0.0
    if x > 0:
        total += x * math.log(p) if p > 0 else -math.inf
    if n - x > 0:
        total += (n - x) * math.log(1 - p) if p < 1 else -math.inf
    return total


def kupiec_pof(x: int, n: int, alpha: float) -> float:
    """Kupiec's proportion-of-failures test: p-value of H0 "truncation rate = α" (LR, χ² with 1 df)."""
    if n <= 0:
        return 1.0
    lr = -2.0 * (_binom_loglik(x, n, alpha) - _binom_loglik(x, n, x / n))
    return float(dist.chi2_sf(max(lr, 0.0), 1))


def pinball_loss(actual: np.ndarray, forecast: np.ndarray, tau: float) -> float:
    """Mean pinball (quantile) loss of ``forecast`` as the τ-quantile of ``actual``."""
    a = np.asarray(actual, dtype=float)
    f = np.asarray(forecast, dtype=float)
    if a.size == 0:
        return 0.0
    d = a - f
    return float(np.mean(np.maximum(tau * d, (tau - 1.0) * d)))


# --------------------------------------------------------------------------------------------------
# Pooling (empirical Bayes / credibility)
# --------------------------------------------------------------------------------------------------


def dersimonian_laird(
    estimates: Sequence[float] | np.ndarray,
    variances: Sequence[float] | np.ndarray,
    clusters: Sequence[object] | None = None,
) -> float:
    """Method-of-moments between-unit variance τ² (DerSimonian–Laird), ≥ 0.

    With ``clusters`` the units are compared with their own cluster's weighted mean (nested effect:
    groups within a category), degrees of freedom Σ(K_c − 1). Units with zero variance are skipped.
    """
    y = np.asarray(estimates, dtype=float)
    v = np.asarray(variances, dtype=float)
    labels = list(clusters) if clusters is not None else [0] * y.size
    q = 0.0
    df = 0
    denom = 0.0
    for label in dict.fromkeys(labels):
        idx = np.array([i for i, c in enumerate(labels) if c == label and v[i] > 0], dtype=int)
        if idx.size < 2:
            continue
        w = 1.0 / v[idx]
        mean = float(np.sum(w * y[idx]) / np.sum(w))
        q += float(np.sum(w * (y[idx] - mean) ** 2))
        df += idx.size - 1
        denom += float(np.sum(w) - np.sum(w * w) / np.sum(w))
    if df == 0 or denom <= 0:
        return 0.0
    return max(0.0, (q - df) / denom)


def credibility_weight(tau2: float, variance: float) -> float:
    """Weight on a unit's own estimate: τ² / (τ² + v). A unit with no sampling noise keeps its own."""
    if variance <= 0:
        return 1.0
    if tau2 <= 0:
        return 0.0
    return tau2 / (tau2 + variance)


def median_sampling_variance(sigma: float, n: int) -> float:
    """Large-sample variance of a sample median, π·σ²/(2n) (normal-shaped log-ratios)."""
    if n <= 0:
        return math.inf
    return math.pi * sigma * sigma / (2.0 * n)


def robust_sigma(residuals: np.ndarray) -> float:
    """1.4826 × median absolute deviation from 0 (residuals already centred on their group)."""
    r = np.asarray(residuals, dtype=float)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return 0.0
    return 1.4826 * float(np.median(np.abs(r)))


# --------------------------------------------------------------------------------------------------
# The original's numbers (reported beside ours for comparison)
# --------------------------------------------------------------------------------------------------


def original_confidence(ratios: Sequence[float] | np.ndarray) -> float:
    """The original's score 0.6·min(1, n/12) + 0.4/(1+σ), σ = population std-dev of the ratios."""
    r = np.asarray(ratios, dtype=float)
    if r.size == 0:
        return 0.0
    sigma = float(np.std(r))
    return 0.6 * min(1.0, r.size / 12.0) + 0.4 / (1.0 + sigma)


def original_median(ratios: Sequence[float] | np.ndarray) -> float:
    """The original's median: sorted[n // 2] (the upper median for even n)."""
    r = np.sort(np.asarray(ratios, dtype=float))
    return float(r[r.size // 2])


# --------------------------------------------------------------------------------------------------
# Censored-normal (Tobit) tail: the fallback when censoring hides the conformal quantile
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CensoredNormal:
    mu: float
    sigma: float
    cov: np.ndarray  # covariance of (mu, sigma)

    def quantile(self, p: float) -> float:
        return self.mu + self.sigma * float(dist.norm_ppf(p))

    def quantile_sd(self, p: float) -> float:
        grad = np.array([1.0, float(dist.norm_ppf(p))])
        return float(math.sqrt(max(0.0, grad @ self.cov @ grad)))


def evenly_spaced(size: int, most: int) -> np.ndarray:
    """Indices of at most ``most`` of ``size`` values, evenly spaced in their order (of sorted values, a stratified
    subset; all of them when there are no more): how a fit keeps its cost bounded on many values."""
    return np.linspace(0, size - 1, min(size, most)).astype(int)


#: ``censored_normal_fit`` fits more values than this on an evenly spaced subset of them (``evenly_spaced``): two
#: parameters from 20,000 values are within ≈ 1 % of σ of the full fit, and each likelihood evaluation costs the
#: values' count (a group of 10⁵ calls, fitted three times, cost 0.25 s of a 10⁶-call calibration when the fit was a
#: simplex search of a few hundred evaluations; a Newton fit takes a few dozen).
MAX_FIT_VALUES = 20_000
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def censored_normal_fit(
    values: Sequence[float] | np.ndarray, observed: Sequence[bool] | np.ndarray, min_observed: int = 5
) -> CensoredNormal | None:
    """Maximum-likelihood normal for right-censored data (Tobit), with its asymptotic covariance (of all the
    values: a fit on ``MAX_FIT_VALUES`` of them scales its covariance by their share).

    Newton's method in Olsen's parameters (δ = μ/σ, h = 1/σ), where the log-likelihood is concave: a handful of
    steps with exact derivatives, where a simplex search took a few hundred evaluations, and the covariance is
    the inverse of the same exact Hessian. None when fewer than ``min_observed`` values are observed or no
    finite maximum is found (every observed value equal, say).
    """
    from scipy.special import log_ndtr

    v = np.asarray(values, dtype=float)
    o = np.asarray(observed, dtype=bool)
    if int(o.sum()) < min_observed:
        return None
    keep = evenly_spaced(v.size, MAX_FIT_VALUES)
    share = keep.size / v.size  # the covariance is of all the values
    v, o = v[keep], o[keep]
    xo, xc = v[o], v[~o]
    sum_o, sum_oo, n_o = float(xo.sum()), float(xo @ xo), xo.size

    def loglik(theta: np.ndarray) -> float:
        d, h = theta
        if not h > 0.0:
            return -math.inf
        r = h * xo - d
        return float(n_o * math.log(h) - 0.5 * (r @ r) + (np.sum(log_ndtr(d - h * xc)) if xc.size else 0.0))

    def derivatives(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d, h = theta
        grad = np.array([h * sum_o - n_o * d, n_o / h - (h * sum_oo - d * sum_o)])
        hess = np.array([[-float(n_o), sum_o], [sum_o, -n_o / h**2 - sum_oo]])
        if xc.size:
            a = d - h * xc
            mills = np.exp(-0.5 * a * a - _HALF_LOG_2PI - log_ndtr(a))  # φ(a) / Φ(a), stable for a ≪ 0
            w = mills * (a + mills)
            grad += np.array([float(mills.sum()), -float(mills @ xc)])
            wc = float(w @ xc)
            hess -= np.array([[float(w.sum()), -wc], [-wc, float(w @ (xc * xc))]])
        return grad, hess

    sd = max(float(np.std(v)), 1e-3)
    theta = np.array([float(np.mean(v)) / sd, 1.0 / sd])
    value = loglik(theta)
    for _ in range(100):
        grad, hess = derivatives(theta)
        try:
            step = -np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return None
        if not np.all(np.isfinite(step)):
            return None
        t = 1.0
        while t > 1e-10 and not (loglik(theta + t * step) >= value):  # halve until the likelihood does not fall
            t *= 0.5
        theta, previous = theta + t * step, value
        value = loglik(theta)
        if abs(value - previous) < 1e-12 * max(1.0, abs(value)) and float(np.max(np.abs(t * step))) < 1e-9 * max(
            1.0, float(np.max(np.abs(theta)))
        ):
            break
    else:
        return None
    d, h = (float(x) for x in theta)
    if not (math.isfinite(d) and math.isfinite(h) and h > 0.0):
        return None
    _, hess = derivatives(theta)
    try:
        info_inv = np.linalg.inv(-hess)  # covariance of (δ, h)
    except np.linalg.LinAlgError:
        return None
    jac = np.array([[1.0 / h, -d / h**2], [0.0, -1.0 / h**2]])  # ∂(μ, σ) / ∂(δ, h)
    cov = jac @ info_inv @ jac.T
    if not np.all(np.isfinite(cov)) or cov[0, 0] < 0 or cov[1, 1] < 0:
        return None
    return CensoredNormal(d / h, 1.0 / h, cov * share)


@dataclass(frozen=True)
class CensoredT:
    """A Student-t law (location, scale, degrees of freedom) fitted to right-censored values."""

    df: float
    loc: float
    scale: float

    def sf(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.asarray(dist.t_sf((np.asarray(x, dtype=float) - self.loc) / self.scale, self.df))
        return out


#: The degrees of freedom ``censored_t_fit`` chooses among: a profile over a grid (df is poorly identified by a few
#: hundred calls, and a grid keeps each fit a two-parameter one).
T_DEGREES = (1.5, 2.0, 3.0, 4.0, 6.0, 10.0, 30.0)


def censored_t_fit(values: np.ndarray, observed: np.ndarray, max_values: int = 4000) -> CensoredT | None:
    """Maximum-likelihood Student-t for right-censored data: (location, scale) for each df of ``T_DEGREES``, the
    likeliest kept. More than ``max_values`` values are thinned to an evenly spaced subset (the fit's cost is
    then bounded; a tail shape needs hundreds of calls, not millions). None when fewer than 20 are observed."""
    from scipy.optimize import minimize

    keep = evenly_spaced(np.size(values), max_values)
    v, o = np.asarray(values, dtype=float)[keep], np.asarray(observed, dtype=bool)[keep]
    if int(o.sum()) < 20:
        return None
    best: tuple[float, CensoredT] | None = None
    for df in T_DEGREES:
        def nll(theta: np.ndarray, df: float = df) -> float:
            loc, log_s = theta
            u = (v - loc) / math.exp(log_s)
            censored = np.log(np.maximum(dist.t_sf(u[~o], df), 1e-300)) if (~o).any() else np.zeros(0)
            return -float(np.sum(dist.t_logpdf(u[o], df)) - o.sum() * log_s + np.sum(censored))

        start = np.array([float(np.median(v)), math.log(max(float(np.std(v)), 1e-3))])
        res = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-8, "maxiter": 2000})
        if res.success and np.all(np.isfinite(res.x)) and (best is None or res.fun < best[0]):
            best = (float(res.fun), CensoredT(df, float(res.x[0]), math.exp(float(res.x[1]))))
    return None if best is None else best[1]


def prediction_bound_multiplier(n: int, alpha: float) -> float:
    """t_{n−1, 1−α} · √(1 + 1/n): mean + this × s bounds a new normal value with probability exactly 1 − α."""
    if n < 2:
        return math.inf
    return float(dist.t_ppf(1.0 - alpha, n - 1)) * math.sqrt(1.0 + 1.0 / n)


def normal_bound_confidence(n: int, alpha: float, multiplier: float, nodes: int = 400) -> float:
    """P(the bound x̄ + m·s's realised coverage ≥ 1 − 2α) for n normal values, m = ``multiplier``.

    With x̄ ~ N(μ, σ²/n) and s/σ = S, S² ~ χ²_{n−1}/(n−1) independent, the bound covers a new value with
    probability Φ((x̄ + m·s − μ)/σ); it is ≥ 1 − 2α iff Z ≥ √n·(z_{1−2α} − m·S), Z ~ N(0, 1). So the
    confidence is E_S[Φ(√n·(m·S − z_{1−2α}))], integrated over the χ² law at ``nodes`` quantile midpoints.
    Like the conformal Beta law it depends only on n, α and m: fixed in advance.
    """
    if n < 2 or not math.isfinite(multiplier):
        return 0.0
    z = float(dist.norm_ppf(1.0 - 2.0 * alpha))
    u = (np.arange(nodes) + 0.5) / nodes
    s = np.sqrt(dist.chi2_ppf(u, n - 1) / (n - 1))
    return float(np.mean(dist.norm_cdf(math.sqrt(n) * (multiplier * s - z))))


def prediction_bound_confidence(n: int, alpha: float) -> float:
    """``normal_bound_confidence`` of the plain prediction bound (multiplier t·√(1 + 1/n))."""
    return normal_bound_confidence(n, alpha, prediction_bound_multiplier(n, alpha))


@lru_cache(maxsize=256)
def small_group_multiplier(n: int, alpha: float, confidence: float = FACTOR_CONFIDENCE) -> float:
    """m for a small group's bound x̄ + m·s: the prediction bound's t·√(1 + 1/n), raised until the bound's
    ``normal_bound_confidence`` reaches ``confidence``.

    The plain prediction bound truncates exactly α on average but more than 2α in 14–20 % of groups of
    5–10 calls; the raised one keeps that below 1 − ``confidence`` (under normality) for a little more
    reserve (at α = 5 %, n = 5: m = 2.74 instead of 2.34, mean truncation 3.3 %).
    """
    if n < 2:
        return math.inf
    low = prediction_bound_multiplier(n, alpha)
    if normal_bound_confidence(n, alpha, low) >= confidence:
        return low
    high = 2.0 * low
    while normal_bound_confidence(n, alpha, high) < confidence:
        high *= 2.0
    for _ in range(60):  # bisection on a monotone function of m
        mid = 0.5 * (low + high)
        if normal_bound_confidence(n, alpha, mid) < confidence:
            low = mid
        else:
            high = mid
    return high


@dataclass(frozen=True)
class UpperQuantile:
    """An upper quantile for budgeting: value, how it was obtained, and its confidence."""

    value: float  # inf when not identifiable
    k: int | None
    method: str  # "conformal" | "tobit" | "none"
    confidence: float
    interval: tuple[float, float]


def upper_quantile(
    values: Sequence[float] | np.ndarray, observed: Sequence[bool] | np.ndarray | None, alpha: float,
    interval_level: float = 0.90, *, presorted: bool = False, confidence: float | None = None,
    km: KaplanMeier | None = None,
) -> UpperQuantile:
    """Split-conformal quantile (KM with censoring); if censoring hides it, the Tobit extrapolation.

    ``confidence``: use ``confident_conformal_rank`` (training-conditional) instead of the plain rank.
    Confidence is P(realised coverage ≥ 1 − 2α): the Beta law for the conformal quantile, the
    normal-theory approximation Φ((q̂ − q̂_{1−2α}) / sd(q̂)) for the Tobit one.
    """
    v = np.asarray(values, dtype=float)
    o = np.ones(v.shape, dtype=bool) if observed is None else np.asarray(observed, dtype=bool)
    n = int(v.size)
    if not presorted:
        v, o = sort_censored(v, o)
    if confidence is None:
        q, k = conformal_quantile(v, o, alpha, presorted=True)
    else:
        k = confident_conformal_rank(n, alpha, confidence)
        q = km_quantile(v, o, k / n, presorted=True, km=km) if k is not None else math.inf
    if k is None:
        return UpperQuantile(math.inf, None, "none", 0.0, (math.nan, math.inf))
    if math.isfinite(q):
        j, k_hi, _ = quantile_ci_ranks(n, 1.0 - alpha, interval_level)
        low, high = order_statistic_interval(v, o, j, k_hi, presorted=True)
        return UpperQuantile(q, k, "conformal", coverage_confidence(n, k, alpha), (low, high))
    fit = censored_normal_fit(v, o)
    if fit is None:
        return UpperQuantile(math.inf, k, "none", 0.0, (math.nan, math.inf))
    # the k-th of n calls covers a new one with probability k/(n+1) (its conformal guarantee); its
    # normal counterpart is that quantile of the fit. k/n would be 1 when k = n: an infinite bound.
    level = k / (n + 1)
    value = fit.quantile(level)
    sd = fit.quantile_sd(level)
    z = float(dist.norm_ppf(1.0 - (1.0 - interval_level) / 2.0))
    margin = value - fit.quantile(1.0 - 2.0 * alpha)
    confidence = float(dist.norm_cdf(margin / sd)) if sd > 0 else 1.0
    return UpperQuantile(value, k, "tobit", confidence, (value - z * sd, value + z * sd))
