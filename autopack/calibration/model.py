"""Per-group budget factors on the log of actual / predicted, each from the group's own calls only.

For each (category, complexity) group, on r = log(actual / predicted) of the predictions the factor will
multiply, the factor is exp of an upper bound for a new call's r at miscoverage α, chosen by what the
group's own data support (``factor_method``):

1. ``km_conformal``: enough calls (22 at α = 5 %, 11 at α = 10 %: ``stats.min_confident_samples``) and
   the quantile visible: the split-conformal upper quantile (the k-th order statistic; with censored
   calls the k-th value when each is taken as +∞, which is the Kaplan–Meier quantile when the censored
   calls lie above it; else the Kaplan–Meier quantile, which then rests on independent censoring and is
   reported, not shipped), at the smallest rank k ≥ ⌈(n+1)(1−α)⌉ whose
   realised truncation is ≤ 2α with probability ≥ ``stats.FACTOR_CONFIDENCE`` (0.9; the plain rank with
   the bare minimum of 1/α − 1 calls exceeds 2α in 13.5 % of groups). Distribution-free for exchangeable
   calls; the only kind of factor the gate lowers a budget to (``assumption`` null). Confidence: P(realised
   truncation ≤ 2α) from the Beta(k, n+1−k) law of conformal coverage; none for a Kaplan–Meier tail read.
2. ``censored_fit``: enough calls, but censoring hides the quantile (the largest outputs were all cut):
   the group's *own* censored-normal (Tobit) fit extrapolates it. Marked ``extrapolation``, its assumption
   stated, and no confidence claimed (``NO_CONFIDENCE``): the data cannot check the assumption it rests on.
3. ``small_group_bound``: too few calls for a distribution-free factor: a scale-aware
   normal bound of the group's own r, exp(mean + m·s) with m the prediction bound's t_{n−1,1−α}·√(1 + 1/n),
   raised where needed so that P(realised truncation ≤ 2α) is ``stats.FACTOR_CONFIDENCE`` (0.9) under
   the normal assumption it states (``stats.small_group_multiplier``: the plain prediction bound exceeds
   2α in 14–20 % of groups of 5–10 calls); no confidence is claimed (over lognormal and mixture laws its
   0.9 was 0.74–0.77). With censored calls the mean and spread come from the group's
   Tobit fit, and the factor is marked ``extrapolation``. Reported, never shipped: the held-out calls of
   such a group are too few to check the assumption, and a bound from 5–10 calls that happens to be
   cheaper than today is biased low (simulated: 24 % of those shipped truncated above 2α).
4. ``none``: a single call, no spread, or a censored fit that fails.

No group borrows another group's quantile or confidence: an atypical small group given its category's
quantile truncates far more than α while the pool's confidence reads ≈ 1 (issue 9). A random-effects
(DerSimonian–Laird) shrinkage of the group medians (``location``, ``pooling_weight``) is still computed,
for the report only: it says whether a group differs from its category beyond noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from autopack.calibration import distributions as dist
from autopack.calibration import stats
from autopack.calibration.samples import Group

FACTOR_DECIMALS = 3
INTERVAL_LEVEL = 0.90
#: A bound above this many times the prediction is no usable budget (a diverging extrapolation).
MAX_FACTOR = 1000.0

KM_ASSUMPTION = "censoring independent of output length within the group (Kaplan–Meier)"
NORMAL_ASSUMPTION = "log(actual / predicted) is normal within the group"

#: Why a method claims no confidence. A claimed P(realised truncation ≤ 2α) must match what happens: against
#: known truth (lognormal and mixture laws, 0–60 % cut, groups of 5–200; ``tests/test_gate_truth.py``,
#: ``bench/bench_gate_truth.py``) only the distribution-free conformal rank did (claimed 0.95–0.97, observed
#: 0.94–0.96).
#: The others claimed 0.50–0.97 where 0.56–0.77 was observed, with no rule that would fix them for every law.
NO_CONFIDENCE = {
    "km_tail": ("no confidence claimed: read from the Kaplan–Meier tail, whose coverage depends on where the cut "
                "calls' caps fall inside the tail (known truth: the Beta law claimed 0.97, 0.67–0.76 was observed)"),
    "censored_fit": ("no confidence claimed: an extrapolation from a censored-normal fit, right only when the law "
                     "is normal (known truth: its normal-theory value, capped at 0.5, against 0.56–0.64 observed)"),
    "small_group_bound": ("no confidence claimed: a normal bound from a handful of calls, right only when the law "
                          "is normal (known truth: 0.90 claimed, 0.74–0.77 observed over lognormal and mixture laws)"),
}


@dataclass
class FactorInfo:
    factor: float | None
    log_factor: float
    source: str | None  # "group" (the group's own calls) | None
    pool_n: int  # calls the factor was computed from
    k: int | None
    confidence: float
    interval: tuple[float | None, float | None]
    note: str = ""
    method: str = "none"  # "km_conformal" | "censored_fit" | "small_group_bound" | "none"
    extrapolation: bool = False
    assumption: str | None = None
    #: why no confidence is claimed (``confidence`` is NaN then): the method's law was not confirmed by known truth
    confidence_note: str | None = None


@dataclass
class GroupFit:
    group: Group
    n: int
    n_censored: int
    median_log: float  # KM median of r (own data)
    location: float  # pooled location (log), for the report
    pooling_weight: float
    category_weight: float
    factor: FactorInfo


@dataclass
class FactorModel:
    """Each group's factor (own data) and, for the report, the pooled locations."""

    alpha: float
    global_location: float
    category_location: dict[str, float] = field(default_factory=dict)
    category_weight: dict[str, float] = field(default_factory=dict)
    groups: dict[Group, GroupFit] = field(default_factory=dict)
    sigma: float = 0.0
    tau2_category: float = 0.0
    tau2_group: float = 0.0

    def factor_for(self, group: Group) -> FactorInfo:
        fit = self.groups.get(group)
        if fit is not None:
            return fit.factor
        return FactorInfo(None, math.nan, None, 0, None, 0.0, (None, None), note="no samples in this group")

    def factors(self, groups: list[Group]) -> dict[Group, float]:
        out = {}
        for g in groups:
            info = self.factor_for(g)
            if info.factor is not None:
                out[g] = info.factor
        return out


def round_up_factor(value: float) -> float:
    """The smallest three-decimal factor strictly above ``value``.

    Strictly: an output that reaches its ceiling is truncated, so a ceiling equal to the quantile would
    cut the calls sitting exactly on it (integer token counts tie often: on the Azure conv trace this
    alone turned 10 % into 12 % held-out truncation). With the factor above the order statistic, the
    ceiling ⌈predicted × factor⌉ lies above every output the quantile covers.
    """
    if not math.isfinite(value) or value > MAX_FACTOR:
        return math.inf
    scale: int = 10**FACTOR_DECIMALS
    return (math.floor(value * scale + 1e-9) + 1) / scale


def _exp_interval(low: float, high: float) -> tuple[float | None, float | None]:
    return (round(math.exp(low), 4) if math.isfinite(low) else None,
            round(math.exp(high), 4) if math.isfinite(high) else None)


def _none(n: int, note: str, assumption: str | None = None) -> FactorInfo:
    return FactorInfo(None, math.nan, None, n, None, 0.0, (None, None), note=note, method="none",
                      assumption=assumption)


def group_factor(
    r: np.ndarray, observed: np.ndarray, alpha: float, km: stats.KaplanMeier | None = None
) -> FactorInfo:
    """The factor of one group from its own log-ratios ``r`` (sorted: ``stats.sort_censored`` order)."""
    info = _group_factor(r, observed, alpha, km)
    if info.factor is None or (math.isfinite(info.log_factor) and info.log_factor <= math.log(MAX_FACTOR)):
        return info
    return _none(info.pool_n, f"{info.method} bound exp({info.log_factor:.3g}) is above {MAX_FACTOR:g}× the "
                 "prediction: no usable budget", info.assumption)


def _group_factor(r: np.ndarray, observed: np.ndarray, alpha: float, km: stats.KaplanMeier | None) -> FactorInfo:
    n = int(r.size)
    n_cens = int(n - observed.sum())
    if n == 0:
        return _none(0, "no samples in this group")
    if n >= stats.min_confident_samples(alpha):
        uq = stats.upper_quantile(r, observed, alpha, INTERVAL_LEVEL, presorted=True,
                                  confidence=stats.FACTOR_CONFIDENCE, km=km)
        if uq.method == "conformal":
            # distribution-free even with censoring: the k-th value when every censored call is taken as
            # +∞ (its true length is unknown above its cap) can only be above the true k-th value. It equals
            # the Kaplan–Meier quantile when the censored calls all lie above it (caps above the tail).
            complete = r[observed]
            value, assumption = uq.value, None
            if n_cens:
                if uq.k is not None and uq.k <= complete.size:
                    value = max(uq.value, float(complete[uq.k - 1]))
                else:
                    assumption = KM_ASSUMPTION + ": censored calls lie inside the tail the factor bounds"
            low, high = uq.interval
            if not math.isfinite(high):  # no order statistic bounds it at this n: normal approximation
                high = value + float(dist.norm_ppf(0.5 + INTERVAL_LEVEL / 2.0)) * _log_quantile_se(r, observed, alpha)
            return FactorInfo(
                round_up_factor(math.exp(value)), value, "group", n, uq.k,
                uq.confidence if assumption is None else math.nan,
                _exp_interval(low, max(high, value)), method="km_conformal", assumption=assumption,
                confidence_note=None if assumption is None else NO_CONFIDENCE["km_tail"],
            )
        assumption = (
            f"{NORMAL_ASSUMPTION}: censoring ({n_cens} of {n} calls cut) hides the upper quantile, which is "
            "extrapolated from the group's own censored-normal (Tobit) fit"
        )
        if uq.method == "tobit":
            return FactorInfo(
                round_up_factor(math.exp(uq.value)), uq.value, "group", n, uq.k, math.nan,
                _exp_interval(*uq.interval), note="extrapolated beyond the largest complete output",
                method="censored_fit", extrapolation=True, assumption=assumption,
                confidence_note=NO_CONFIDENCE["censored_fit"],
            )
        return _none(n, "censoring hides the upper quantile and the censored-normal fit failed", assumption)
    return _small_group_bound(r, observed, alpha)


def _log_quantile_se(r: np.ndarray, observed: np.ndarray, alpha: float) -> float:
    """Large-sample standard error of the (1 − α) quantile of r, normal-shaped: σ·√(α(1−α)/n) / φ(z_{1−α})."""
    values = r[observed] if observed.any() else r
    sigma = stats.robust_sigma(values - np.median(values))
    z = float(dist.norm_ppf(1.0 - alpha))
    return sigma * math.sqrt(alpha * (1.0 - alpha) / r.size) / float(dist.norm_pdf(z))


def _small_group_bound(r: np.ndarray, observed: np.ndarray, alpha: float) -> FactorInfo:
    """exp(mean + m·s): the raised normal prediction bound from the group's own n calls (module docstring)."""
    n = int(r.size)
    minimum = stats.min_confident_samples(alpha)
    note = f"{n} calls < {minimum}: too few for a distribution-free factor; own-group normal bound (reported only)"
    if n < 2:
        return _none(n, f"{n} call: too few for any bound")
    multiplier = stats.small_group_multiplier(n, alpha)
    censored = not bool(observed.all())
    if censored:
        fit = stats.censored_normal_fit(r, observed, min_observed=2)
        if fit is None:
            return _none(n, note + ": the censored-normal fit failed", NORMAL_ASSUMPTION)
        mean, sd = fit.mu, fit.sigma
        assumption = f"{NORMAL_ASSUMPTION}; mean and spread from a censored-normal (Tobit) fit of its {n} calls"
    else:
        mean, sd = float(np.mean(r)), float(np.std(r, ddof=1))
        assumption = f"{NORMAL_ASSUMPTION} (bound mean + {multiplier:.3f}·s of its {n} calls)"
    if not sd > 0:
        return _none(n, note + ": no spread among its calls", assumption)
    value = mean + multiplier * sd
    return FactorInfo(
        round_up_factor(math.exp(value)), value, "group", n, None, math.nan, _normal_quantile_interval(mean, sd, n, alpha),
        note=note, method="small_group_bound", extrapolation=censored, assumption=assumption,
        confidence_note=NO_CONFIDENCE["small_group_bound"],
    )


def _normal_quantile_interval(mean: float, sd: float, n: int, alpha: float) -> tuple[float | None, float | None]:
    """The (1 − α) quantile μ + z·σ's ``INTERVAL_LEVEL`` interval under the normal assumption: x̄ + k·s with k from
    the noncentral t (exact for a complete normal sample). The delta method's was far too narrow for a handful of
    calls: a group of 5 showed its bound above its own interval in 10 of 12 seeds (the quickstart's doc_sot_update/low,
    4 calls: 1.658 beside [0.726, 1.581])."""
    root_n = math.sqrt(n)
    low, high = ((1.0 - INTERVAL_LEVEL) / 2.0, (1.0 + INTERVAL_LEVEL) / 2.0)
    nc = float(dist.norm_ppf(1.0 - alpha)) * root_n
    k_low, k_high = (float(dist.nct_ppf(p, n - 1, nc)) / root_n for p in (low, high))
    return _exp_interval(mean + k_low * sd, mean + k_high * sd)


def _blocks_of(group_of_row: np.ndarray) -> dict[int, np.ndarray]:
    """Positions of each group's rows (ascending): one stable sort."""
    order = np.argsort(group_of_row, kind="stable")
    sorted_groups = group_of_row[order]
    cuts = np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1
    return {int(group_of_row[b[0]]): b for b in np.split(order, cuts) if b.size}


def _random_effects_mean(estimates: list[float], variances: list[float], tau2: float) -> float:
    """The DerSimonian–Laird weighted mean Σ w·x / Σ w, w = 1 / (v + τ²)."""
    w = 1.0 / (np.asarray(variances, dtype=float) + tau2)
    return float(np.sum(w * np.asarray(estimates, dtype=float)) / np.sum(w))


def fit_factor_model(
    groups: list[Group],
    group_of_row: np.ndarray,
    r: np.ndarray,
    observed: np.ndarray,
    alpha: float,
    *,
    blocks: dict[int, np.ndarray] | None = None,
) -> FactorModel:
    """Factors (own data per group) and the report's pooled locations from log-ratios ``r``.

    ``blocks``: positions of each group's rows in ``r`` when the caller already has them (saves a sort).
    Each group's values are sorted once, within the group: the whole is one n·log(n/G) pass.
    """
    if r.size == 0:
        return FactorModel(alpha, 0.0)
    blocks = blocks if blocks is not None else _blocks_of(np.asarray(group_of_row, dtype=np.int64))
    present = sorted(g for g, b in blocks.items() if b.size)
    sorted_r: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    curves: dict[int, stats.KaplanMeier | None] = {}
    med: dict[int, float] = {}
    for g in present:
        values, obs = r[blocks[g]], observed[blocks[g]]
        order = stats.censored_order(values, obs)
        values, obs = values[order], obs[order]
        sorted_r[g] = (values, obs)
        curves[g] = None if obs.all() else stats.kaplan_meier(values, obs, presorted=True)
        m = stats.km_median(values, obs, presorted=True, km=curves[g])
        med[g] = m if math.isfinite(m) else float(values.max())
    n_of = {g: int(blocks[g].size) for g in present}
    resid = np.concatenate([sorted_r[g][0][sorted_r[g][1]] - med[g] for g in present])
    sigma = stats.robust_sigma(resid)

    # report only: random-effects (DerSimonian–Laird) locations of categories and of all groups, from the
    # group medians; each group's median shrunk towards its category's, a lone group's towards the global
    cats = sorted({groups[g][0] for g in present})
    cat_groups = {c: [g for g in present if groups[g][0] == c] for c in cats}
    var_g = {g: stats.median_sampling_variance(sigma, n_of[g]) for g in present}
    tau2_g = stats.dersimonian_laird(
        [med[g] for g in present], [var_g[g] for g in present], clusters=[groups[g][0] for g in present]
    )
    cat_med = {c: _random_effects_mean([med[g] for g in cat_groups[c]], [var_g[g] for g in cat_groups[c]], tau2_g)
               if all(var_g[g] > 0 for g in cat_groups[c]) else float(np.mean([med[g] for g in cat_groups[c]]))
               for c in cats}
    cat_var = {c: stats.median_sampling_variance(sigma, sum(n_of[g] for g in cat_groups[c])) for c in cats}
    tau2_c = stats.dersimonian_laird([cat_med[c] for c in cats], [cat_var[c] for c in cats])
    if all(cat_var[c] > 0 for c in cats):
        global_loc = _random_effects_mean([cat_med[c] for c in cats], [cat_var[c] for c in cats], tau2_c)
    else:
        global_loc = float(np.mean([cat_med[c] for c in cats]))
    cat_w = {c: stats.credibility_weight(tau2_c, cat_var[c]) for c in cats}
    cat_loc = {c: cat_w[c] * cat_med[c] + (1 - cat_w[c]) * global_loc for c in cats}

    model = FactorModel(alpha, global_loc, cat_loc, cat_w, sigma=sigma, tau2_category=tau2_c, tau2_group=tau2_g)
    for g in present:
        c = groups[g][0]
        values, obs = sorted_r[g]
        if len(cat_groups[c]) == 1:  # the group is its category: shrunk once, towards the global location
            weight, parent, own = cat_w[c], global_loc, med[g]
        else:
            weight, parent, own = stats.credibility_weight(tau2_g, var_g[g]), cat_loc[c], med[g]
        model.groups[groups[g]] = GroupFit(
            group=groups[g],
            n=n_of[g],
            n_censored=int(n_of[g] - obs.sum()),
            median_log=med[g],
            location=weight * own + (1 - weight) * parent,
            pooling_weight=weight,
            category_weight=cat_w[c],
            factor=group_factor(values, obs, alpha, curves[g]),
        )
    return model
