"""``calibration.distributions`` computes what ``scipy.stats`` computes, on grids covering the edges."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from autopack.calibration import distributions as d

PROBABILITIES = [0.0, 1e-12, 1e-6, 0.001, 0.025, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.975, 0.999, 1 - 1e-9, 1.0]
SIZES = [1, 2, 3, 5, 10, 19, 37, 85, 100, 300, 1000, 5000]
RATES = [0.001, 0.02, 0.05, 0.1, 0.15, 0.5, 0.9, 0.999]


def close(ours: object, theirs: object) -> bool:
    """Equal to 9 digits (the two may compute a tail through different special-function code)."""
    return bool(np.allclose(np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float), rtol=1e-9, atol=1e-250,
                            equal_nan=True))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("p", RATES)
def test_binomial_cdf_and_sf_match_scipy_on_and_off_the_support(n: int, p: float) -> None:
    k = np.arange(-2, n + 3, dtype=float)
    k = np.r_[k, k + 0.5]  # non-integer counts are taken down, as scipy does
    assert close(d.binom_cdf(k, n, p), sps.binom.cdf(k, n, p))
    assert close(d.binom_sf(k, n, p), sps.binom.sf(k, n, p))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("p", RATES)
def test_binomial_quantile_matches_scipy(n: int, p: float) -> None:
    """Equal, except where P(X ≤ k) equals q to 12 digits: there k itself counts as reaching q."""
    q = np.array(PROBABILITIES)
    ours, theirs = d.binom_ppf(q, n, p), sps.binom.ppf(q, n, p)
    tie = np.isclose(sps.binom.cdf(ours, n, p), q, rtol=1e-12, atol=0) & (ours == theirs - 1)
    assert np.array_equal(ours[~tie], theirs[~tie])


def test_binomial_quantile_reaches_an_exact_tie_at_its_own_count() -> None:
    assert d.binom_ppf(0.5, 37, 0.5) == 18  # P(X ≤ 18) = ½ exactly for Binomial(37, ½)


def test_binomial_functions_broadcast_over_sizes_as_the_evidence_rule_uses_them() -> None:
    n = np.arange(1, 400)
    crit = d.binom_ppf(0.95, n, 0.05) + 1
    assert np.array_equal(crit, sps.binom.ppf(0.95, n, 0.05) + 1)
    assert close(d.binom_sf(crit - 1, n, 0.15), sps.binom.sf(crit - 1, n, 0.15))


def test_scalars_come_back_as_floats() -> None:
    assert isinstance(d.binom_cdf(3, 10, 0.5), float) and isinstance(d.norm_ppf(0.9), float)


def test_normal_functions_match_scipy() -> None:
    x = np.linspace(-8, 8, 161)
    q = np.array(PROBABILITIES)
    assert close(d.norm_cdf(x), sps.norm.cdf(x)) and close(d.norm_sf(x), sps.norm.sf(x))
    assert close(d.norm_pdf(x), sps.norm.pdf(x)) and close(d.norm_ppf(q), sps.norm.ppf(q))


@pytest.mark.parametrize("df", [1, 2, 4, 9, 21, 99, 1000])
def test_student_t_and_chi_square_match_scipy(df: int) -> None:
    q = np.array(PROBABILITIES)
    x = np.r_[-1.0, 0.0, np.geomspace(1e-6, 1e4, 60)]
    assert close(d.t_ppf(q, df), sps.t.ppf(q, df))
    assert close(d.chi2_ppf(q, df), sps.chi2.ppf(q, df))
    assert close(d.chi2_sf(x, df), sps.chi2.sf(x, df))
    t = np.r_[-x, x]
    assert close(d.t_sf(t, df), sps.t.sf(t, df)) and close(d.t_logpdf(t, df), sps.t.logpdf(t, df))


@pytest.mark.parametrize("n", [2, 4, 5, 12, 40])
def test_noncentral_t_quantiles_match_scipy(n: int) -> None:
    q = np.array([p for p in PROBABILITIES if 0 < p < 1])
    nc = 1.6448536269514722 * np.sqrt(n)
    assert close(d.nct_ppf(q, n - 1, nc), sps.nct.ppf(q, n - 1, nc))


@pytest.mark.parametrize(("a", "b"), [(1, 1), (1, 20), (19, 1), (95, 6), (0.5, 0.5), (300, 17), (4750, 251)])
def test_beta_functions_match_scipy(a: float, b: float) -> None:
    x = np.r_[-0.5, np.linspace(0.0, 1.0, 101), 1.5]
    q = np.array(PROBABILITIES)
    assert close(d.beta_sf(x, a, b), sps.beta.sf(x, a, b))
    assert close(d.beta_ppf(q, a, b), sps.beta.ppf(q, a, b))
