"""The few distribution functions the statistics need, straight from ``scipy.special``.

Each is what ``scipy.stats`` computes for it (the same special function, the same edge rules), without
``scipy.stats`` itself, whose import costs about 0.4 s in every ``autopack calibrate`` (it builds every
distribution's docstring). ``tests/test_distributions.py`` compares each with ``scipy.stats`` on a grid.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special

_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _out(value: np.ndarray) -> Any:
    """A float for scalar input, an array otherwise (as ``scipy.stats`` returns them)."""
    return float(value) if np.ndim(value) == 0 else value


def norm_cdf(x: Any) -> Any:
    return _out(special.ndtr(np.asarray(x, dtype=float)))


def norm_sf(x: Any) -> Any:
    return _out(special.ndtr(-np.asarray(x, dtype=float)))


def norm_ppf(q: Any) -> Any:
    return _out(special.ndtri(np.asarray(q, dtype=float)))


def norm_pdf(x: Any) -> Any:
    z = np.asarray(x, dtype=float)
    return _out(np.exp(-0.5 * z * z) / _SQRT_2PI)


def t_ppf(q: Any, df: Any) -> Any:
    q = np.asarray(q, dtype=float)
    inside = special.stdtrit(np.asarray(df, dtype=float), np.clip(q, 1e-300, 1.0 - 1e-16))
    return _out(np.where(q <= 0, -np.inf, np.where(q >= 1, np.inf, inside)))


def nct_ppf(q: Any, df: Any, nc: Any) -> Any:
    """Quantile of the noncentral t (df, noncentrality nc), for 0 < q < 1."""
    return _out(special.nctdtrit(np.asarray(df, dtype=float), np.asarray(nc, dtype=float),
                                 np.asarray(q, dtype=float)))


def t_sf(x: Any, df: Any) -> Any:
    """P(T > x), T ~ Student-t(df)."""
    return _out(special.stdtr(np.asarray(df, dtype=float), -np.asarray(x, dtype=float)))


def t_logpdf(x: Any, df: Any) -> Any:
    v, d = np.asarray(x, dtype=float), np.asarray(df, dtype=float)
    norm = special.gammaln((d + 1.0) / 2.0) - special.gammaln(d / 2.0) - 0.5 * np.log(d * math.pi)
    return _out(norm - (d + 1.0) / 2.0 * np.log1p(v * v / d))


def chi2_sf(x: Any, df: Any) -> Any:
    """P(X > x), X ~ χ²(df); 1 for x ≤ 0."""
    v = np.asarray(x, dtype=float)
    return _out(np.where(v > 0, special.chdtrc(np.asarray(df, dtype=float), np.maximum(v, 0.0)), 1.0))


def chi2_ppf(q: Any, df: Any) -> Any:
    return _out(2.0 * special.gammaincinv(np.asarray(df, dtype=float) / 2.0, np.asarray(q, dtype=float)))


def beta_sf(x: Any, a: Any, b: Any) -> Any:
    """P(X > x), X ~ Beta(a, b)."""
    v = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
    return _out(special.betaincc(np.asarray(a, dtype=float), np.asarray(b, dtype=float), v))


def beta_ppf(q: Any, a: Any, b: Any) -> Any:
    return _out(special.betaincinv(np.asarray(a, dtype=float), np.asarray(b, dtype=float),
                                   np.asarray(q, dtype=float)))


def binom_cdf(k: Any, n: Any, p: Any) -> Any:
    """P(X ≤ k), X ~ Binomial(n, p): 0 below the support, 1 from n on (k taken down to an integer)."""
    k, n, p = np.floor(np.asarray(k, dtype=float)), np.asarray(n, dtype=float), np.asarray(p, dtype=float)
    inside = special.bdtr(np.clip(k, 0.0, np.maximum(n - 1.0, 0.0)), n, p)
    return _out(np.where(k < 0, 0.0, np.where(k >= n, 1.0, inside)))


def binom_sf(k: Any, n: Any, p: Any) -> Any:
    """P(X > k), X ~ Binomial(n, p): 1 below the support, 0 from n on."""
    k, n, p = np.floor(np.asarray(k, dtype=float)), np.asarray(n, dtype=float), np.asarray(p, dtype=float)
    inside = special.bdtrc(np.clip(k, 0.0, np.maximum(n - 1.0, 0.0)), n, p)
    return _out(np.where(k < 0, 1.0, np.where(k >= n, 0.0, inside)))


#: A CDF within this relative distance of q counts as reaching it (``bdtr`` rounds an exact tie, such as
#: P(X ≤ 18) = ½ for Binomial(37, ½), either way).
_TIE = 1e-12


def binom_ppf(q: Any, n: Any, p: Any) -> Any:
    """The smallest k with P(X ≤ k) ≥ q (−1 at q = 0, n at q = 1), as ``scipy.stats.binom.ppf``.

    ``bdtrik`` inverts the CDF as if k were continuous; the answer is within one of its ceiling, so
    the two integers below that are checked against the CDF itself.
    """
    q, n, p = np.asarray(q, dtype=float), np.asarray(n, dtype=float), np.asarray(p, dtype=float)
    reach = q * (1.0 - _TIE)
    with np.errstate(invalid="ignore"):
        k = np.clip(np.nan_to_num(np.ceil(special.bdtrik(q, n, p)), nan=0.0), 0.0, n)
        for _ in range(2):  # step down while the integer below still reaches q
            below = np.maximum(k - 1.0, 0.0)
            k = np.where((k > 0) & (special.bdtr(below, n, p) >= reach), below, k)
        k = np.where((k < n) & (special.bdtr(k, n, p) < reach), k + 1.0, k)  # and up if k itself falls short
    return _out(np.where(q <= 0, -1.0, np.where(q >= 1, n, k)))
