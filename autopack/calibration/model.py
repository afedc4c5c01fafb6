"""Per-group location, partial pooling and budget factors on the log of actual / predicted.

For each (category, complexity) group, on r = log(actual / predicted) of the predictions the factor
will multiply:

1. location: the Kaplan–Meier median (censoring-aware) of the group's r;
2. partial pooling (empirical Bayes): a group median is shrunk towards its category, the category
   towards the global median, with credibility weights τ²/(τ² + v); v = π·σ²/(2n) is the sampling
   variance of a median (σ from the pooled MAD), τ² the DerSimonian–Laird between-unit variance. A
   category with a single group is that group, so it is shrunk once, towards the global median;
3. budget factor: exp of the split-conformal upper quantile at miscoverage α (k = ⌈(n+1)(1−α)⌉, KM with
   censoring) of the group's own r when it has ≥ 1/α − 1 samples. A smaller group falls back to its
   parent (its category, else all groups): factor = exp(location + q), q the conformal quantile of the
   parent's *leave-one-out* residuals r_i − location_{group(i), −i}. Leave-one-out residuals include the
   error of estimating a location from few points, which is exactly what the new call will face.
4. confidence (fixed in advance): P(realised truncation ≤ 2α) for the factor, from the Beta(k, N+1−k)
   law of split-conformal coverage with N the number of calls the quantile was taken from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from autopack.calibration import stats
from autopack.calibration.samples import Group

#: Above this size a group's leave-one-out location equals its location for all practical purposes.
LOO_MAX = 60
FACTOR_DECIMALS = 3
INTERVAL_LEVEL = 0.90


@dataclass
class FactorInfo:
    factor: float | None
    log_factor: float
    source: str | None  # "group" | "category" | "global" | None
    pool_n: int
    k: int | None
    confidence: float
    interval: tuple[float | None, float | None]
    note: str = ""
    method: str = "conformal"  # "conformal" | "tobit" | "none"


@dataclass
class GroupFit:
    group: Group
    n: int
    n_censored: int
    median_log: float  # KM median of r (own data)
    location: float  # pooled location (log)
    pooling_weight: float
    category_weight: float
    factor: FactorInfo


@dataclass
class FactorModel:
    """Everything needed to give any group (seen or not) a location and a factor."""

    alpha: float
    global_location: float
    category_location: dict[str, float] = field(default_factory=dict)
    category_weight: dict[str, float] = field(default_factory=dict)
    groups: dict[Group, GroupFit] = field(default_factory=dict)
    #: residual pools, each sorted (``stats.sort_censored`` order): "category:<name>" and "global"
    pools: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    _pool_quantiles: dict[str, stats.UpperQuantile] = field(default_factory=dict, repr=False)
    sigma: float = 0.0
    tau2_category: float = 0.0
    tau2_group: float = 0.0

    def factor_for(self, group: Group) -> FactorInfo:
        fit = self.groups.get(group)
        if fit is not None:
            return fit.factor
        location = self.category_location.get(group[0], self.global_location)
        return self._pooled_factor(group[0], location, note="no samples in this group")

    def factors(self, groups: list[Group]) -> dict[Group, float]:
        out = {}
        for g in groups:
            info = self.factor_for(g)
            if info.factor is not None:
                out[g] = info.factor
        return out

    def _pooled_factor(self, category: str, location: float, note: str) -> FactorInfo:
        for source, key in (("category", f"category:{category}"), ("global", "global")):
            pool = self.pools.get(key)
            if pool is None:
                continue
            residuals, observed = pool
            uq = self._pool_quantiles.get(key)
            if uq is None:
                uq = stats.upper_quantile(residuals, observed, self.alpha, INTERVAL_LEVEL, presorted=True)
                self._pool_quantiles[key] = uq
            if not math.isfinite(uq.value):
                continue
            return _factor_info(uq, source, int(residuals.size), location, note)
        return FactorInfo(None, math.nan, None, 0, None, 0.0, (None, None), method="none",
                          note=(note + "; " if note else "") + "too few samples (or too much censoring) for any "
                          "upper quantile")


def _round_up(value: float) -> float:
    scale = 10**FACTOR_DECIMALS
    return math.ceil(value * scale - 1e-9) / scale


def _factor_info(uq: stats.UpperQuantile, source: str, n: int, shift: float, note: str) -> FactorInfo:
    low, high = uq.interval
    interval = (
        round(math.exp(shift + low), 4) if math.isfinite(low) else None,
        round(math.exp(shift + high), 4) if math.isfinite(high) else None,
    )
    if uq.method == "tobit":
        note = (note + "; " if note else "") + (
            f"censoring hides the conformal quantile of the {source} pool: censored-normal (Tobit) extrapolation"
        )
    return FactorInfo(
        _round_up(math.exp(shift + uq.value)), shift + uq.value, source, n, uq.k, uq.confidence, interval, note,
        method=uq.method,
    )


def _loo_medians(values: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """KM median of the group without each point in turn (NaN for a group of one)."""
    n = values.size
    if n == 1:
        return np.array([math.nan])
    out = np.empty(n)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        keep[i] = False
        out[i] = stats.km_median(values[keep], observed[keep])
        keep[i] = True
    return out


def _blocks(keys: np.ndarray) -> dict[int, np.ndarray]:
    """Positions of each key, in their existing order (a stable sort keeps a presorted order)."""
    if keys.size == 0:
        return {}
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    cuts = np.flatnonzero(np.diff(sorted_keys)) + 1
    starts = np.r_[0, cuts]
    return {int(sorted_keys[start]): block for start, block in zip(starts, np.split(order, cuts), strict=True)}


def fit_factor_model(
    groups: list[Group], group_of_row: np.ndarray, r: np.ndarray, observed: np.ndarray, alpha: float
) -> FactorModel:
    """Locations, pooling weights and factors from log-ratios ``r`` of rows in groups ``group_of_row``."""
    if r.size == 0:
        return FactorModel(alpha, 0.0)
    min_own = stats.min_conformal_samples(alpha)
    order = stats.censored_order(r, observed)  # sort once; every subset below keeps this order
    rs, os_, gs = r[order], observed[order], group_of_row[order].astype(np.int64)
    category_names = sorted({groups[g][0] for g in np.unique(gs).tolist()})
    category_code = {c: i for i, c in enumerate(category_names)}
    cat_of_group = np.array([category_code.get(g[0], -1) for g in groups], dtype=np.int64)
    cs = cat_of_group[gs]
    members = _blocks(gs)  # group -> positions (sorted by r)
    cat_members = _blocks(cs)

    def median_of(pos: np.ndarray) -> float:
        m = stats.km_median(rs[pos], os_[pos], presorted=True)
        return m if math.isfinite(m) else float(rs[pos].max())

    present = sorted(members)
    med = {g: median_of(members[g]) for g in present}
    resid_obs = np.concatenate([rs[members[g]][os_[members[g]]] - med[g] for g in present])
    sigma = stats.robust_sigma(resid_obs)
    global_loc = stats.km_median(rs, os_, presorted=True)
    if not math.isfinite(global_loc):
        global_loc = float(rs.max())

    # categories: shrink each category median towards the global one
    cats = [category_names[c] for c in sorted(cat_members)]
    cat_med = {category_names[c]: median_of(pos) for c, pos in cat_members.items()}
    cat_n = {category_names[c]: pos.size for c, pos in cat_members.items()}
    cat_var = {c: stats.median_sampling_variance(sigma, cat_n[c]) for c in cats}
    tau2_c = stats.dersimonian_laird([cat_med[c] for c in cats], [cat_var[c] for c in cats])
    cat_w = {c: stats.credibility_weight(tau2_c, cat_var[c]) for c in cats}
    cat_loc = {c: cat_w[c] * cat_med[c] + (1 - cat_w[c]) * global_loc for c in cats}

    # groups within categories: shrink towards their category's location
    var_g = {g: stats.median_sampling_variance(sigma, members[g].size) for g in present}
    tau2_g = stats.dersimonian_laird(
        [med[g] for g in present], [var_g[g] for g in present], clusters=[groups[g][0] for g in present]
    )
    groups_in_cat = {c: [g for g in present if groups[g][0] == c] for c in cats}

    model = FactorModel(alpha, global_loc, cat_loc, cat_w, sigma=sigma, tau2_category=tau2_c, tau2_group=tau2_g)
    residuals = np.empty(rs.size)
    locations: dict[int, tuple[float, float]] = {}
    for g in present:
        c = groups[g][0]
        pos = members[g]
        if len(groups_in_cat[c]) == 1:  # the group is its category: shrunk once, towards the global median
            weight, parent, own = cat_w[c], global_loc, cat_med[c]
        else:
            weight, parent, own = stats.credibility_weight(tau2_g, var_g[g]), cat_loc[c], med[g]
        location = weight * own + (1 - weight) * parent
        locations[g] = (location, weight)
        if pos.size == 1:
            residuals[pos] = rs[pos] - parent
        elif pos.size <= LOO_MAX:
            loo = _loo_medians(rs[pos], os_[pos])
            loo = np.where(np.isfinite(loo), loo, own)
            residuals[pos] = rs[pos] - (weight * loo + (1 - weight) * parent)
        else:
            residuals[pos] = rs[pos] - location

    # residual pools, sorted once; category pools are stable subsets of the global order
    pool_order = stats.censored_order(residuals, os_)
    e_sorted, o_sorted, c_sorted = residuals[pool_order], os_[pool_order], cs[pool_order]
    model.pools["global"] = (e_sorted, o_sorted)
    for code, pos in _blocks(c_sorted).items():
        model.pools[f"category:{category_names[code]}"] = (e_sorted[pos], o_sorted[pos])

    for g in present:
        pos = members[g]
        location, weight = locations[g]
        c = groups[g][0]
        info: FactorInfo | None = None
        note = ""
        if pos.size >= min_own:
            uq = stats.upper_quantile(rs[pos], os_[pos], alpha, INTERVAL_LEVEL, presorted=True)
            if uq.method == "conformal":
                info = _factor_info(uq, "group", int(pos.size), 0.0, "")
            else:
                note = "own conformal quantile hidden by censoring: falls back to its parent"
        else:
            note = f"{pos.size} samples < {min_own} (= 1/α − 1): falls back to its parent"
        if info is None:
            info = model._pooled_factor(c, location, note)
        model.groups[groups[g]] = GroupFit(
            group=groups[g],
            n=int(pos.size),
            n_censored=int((~os_[pos]).sum()),
            median_log=med[g],
            location=location,
            pooling_weight=weight,
            category_weight=cat_w[c],
            factor=info,
        )
    return model
