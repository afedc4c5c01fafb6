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
    pools: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # "category:x"/"global"
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
            uq = stats.upper_quantile(residuals, observed, self.alpha, INTERVAL_LEVEL)
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


def fit_factor_model(
    groups: list[Group], group_of_row: np.ndarray, r: np.ndarray, observed: np.ndarray, alpha: float
) -> FactorModel:
    """Locations, pooling weights and factors from log-ratios ``r`` of rows in groups ``group_of_row``."""
    if r.size == 0:
        return FactorModel(alpha, 0.0)
    min_own = stats.min_conformal_samples(alpha)
    present = sorted(set(group_of_row.tolist()))
    members = {g: np.flatnonzero(group_of_row == g) for g in present}
    med = {g: stats.km_median(r[idx], observed[idx]) for g, idx in members.items()}
    med = {g: (m if math.isfinite(m) else float(np.max(r[members[g]]))) for g, m in med.items()}

    resid_obs = np.concatenate([r[idx][observed[idx]] - med[g] for g, idx in members.items()])
    sigma = stats.robust_sigma(resid_obs)
    global_loc = stats.km_median(r, observed)
    if not math.isfinite(global_loc):
        global_loc = float(np.max(r))

    # categories
    cats = sorted({groups[g][0] for g in present})
    cat_rows = {c: np.concatenate([members[g] for g in present if groups[g][0] == c]) for c in cats}
    cat_med = {c: stats.km_median(r[idx], observed[idx]) for c, idx in cat_rows.items()}
    cat_med = {c: (m if math.isfinite(m) else float(np.max(r[cat_rows[c]]))) for c, m in cat_med.items()}
    cat_var = {c: stats.median_sampling_variance(sigma, idx.size) for c, idx in cat_rows.items()}
    tau2_c = stats.dersimonian_laird([cat_med[c] for c in cats], [cat_var[c] for c in cats])
    cat_w = {c: stats.credibility_weight(tau2_c, cat_var[c]) for c in cats}
    cat_loc = {c: cat_w[c] * cat_med[c] + (1 - cat_w[c]) * global_loc for c in cats}

    # groups within categories
    var_g = {g: stats.median_sampling_variance(sigma, members[g].size) for g in present}
    tau2_g = stats.dersimonian_laird(
        [med[g] for g in present], [var_g[g] for g in present], clusters=[groups[g][0] for g in present]
    )
    groups_in_cat = {c: [g for g in present if groups[g][0] == c] for c in cats}

    model = FactorModel(alpha, global_loc, cat_loc, cat_w, sigma=sigma, tau2_category=tau2_c, tau2_group=tau2_g)
    residuals = np.empty(r.size)
    locations: dict[int, tuple[float, float]] = {}
    for g in present:
        c = groups[g][0]
        idx = members[g]
        single = len(groups_in_cat[c]) == 1
        if single:
            weight, parent, own = cat_w[c], global_loc, cat_med[c]
        else:
            weight, parent, own = stats.credibility_weight(tau2_g, var_g[g]), cat_loc[c], med[g]
        location = weight * own + (1 - weight) * parent
        locations[g] = (location, weight)
        if idx.size <= LOO_MAX:
            loo = _loo_medians(r[idx], observed[idx])
            loo = np.where(np.isfinite(loo), loo, own)
            loo_loc = np.where(np.isnan(loo), parent, weight * loo + (1 - weight) * parent)
            if idx.size == 1:
                loo_loc = np.array([parent])
            residuals[idx] = r[idx] - loo_loc
        else:
            residuals[idx] = r[idx] - location

    for c in cats:
        idx = cat_rows[c]
        model.pools[f"category:{c}"] = (residuals[idx], observed[idx])
    model.pools["global"] = (residuals, observed)

    for g in present:
        idx = members[g]
        location, weight = locations[g]
        c = groups[g][0]
        info: FactorInfo | None = None
        note = ""
        if idx.size >= min_own:
            uq = stats.upper_quantile(r[idx], observed[idx], alpha, INTERVAL_LEVEL)
            if uq.method == "conformal":
                info = _factor_info(uq, "group", int(idx.size), 0.0, "")
            else:
                note = "own conformal quantile hidden by censoring: falls back to its parent"
        else:
            note = f"{idx.size} samples < {min_own} (= 1/α − 1): falls back to its parent"
        if info is None:
            info = model._pooled_factor(c, location, note)
        model.groups[groups[g]] = GroupFit(
            group=groups[g],
            n=int(idx.size),
            n_censored=int((~observed[idx]).sum()),
            median_log=med[g],
            location=location,
            pooling_weight=weight,
            category_weight=cat_w[c],
            factor=info,
        )
    return model
