"""Joint fit of PHASE_OVERHEAD and TOKEN_WEIGHTS: median (L1) regression with censoring, as a linear program.

The estimator predicts ``(overhead[group] + Σ weight[kind, mode] · count) × SAFETY_MARGIN``. The
original multiplied PHASE_OVERHEAD by a ratio measured on the *whole* prediction, so most of the
correction was lost (reference §10.11). Here all coefficients that the data touch are fitted together:

    minimise  Σ_observed ρ_½(y − m·xθ)  +  Σ_censored ½·max(0, L − m·xθ)  +  Σ_j λ_j |θ_j − θ_j⁰|
    subject to  max(1, θ_j⁰ / 2) ≤ θ_j ≤ 2·θ_j⁰     (integers after rounding, inside the same bounds)

ρ_½ is the absolute loss (a median fit, robust to the heavy tail); a truncated call only says the true
length is ≥ L, so it only penalises predictions below L. The small L1 pull towards the current values
(λ_j = κ·m·Σ_i x_ij, κ = 0.02) only matters where the data cannot tell coefficients apart (e.g. a group
whose phases all have one backend file): there the current value is kept instead of an arbitrary vertex.

The bounds are the invariants ``tests/test_token_estimator.py`` asserts on the file (every overhead and
weight ≥ 1: a 0 predicts nothing for a group, and the pull request's verification fails on it) plus a
bounded step per run, ×½ … ×2 (``MAX_STEP``): one week of data can halve or double a coefficient, not
zero it (the original applied at most 44 % reductions by hand, under a "50 % safety limit"). A value
on its bound is reported (``at_bound``): the data asked for more, the next run can continue.

Solved with HiGHS (``scipy.optimize.linprog``) in its dual form (one constraint per coefficient, one
bounded variable per row: ~6× faster than the primal), on at most ``MAX_FIT_ROWS`` rows (a fixed,
stratified subsample beyond that), then rounded to integers inside the bounds: the values that ship are
the values used downstream. Weight changes need bootstrap support (below); a bootstrap replicate is the
same LP with each row's cost scaled by its multiplicity.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog

from autopack import token_estimator as te
from autopack.calibration.samples import Group, SampleSet

MAX_FIT_ROWS = 2000
BOOTSTRAP_ROWS = 500
BOOTSTRAP_REPLICATES = 30
PULL_KAPPA = 0.02
SEED = 20240613
#: A coefficient moves by at most this factor per calibration run (up or down), and never below 1.
MAX_STEP = 2.0


@dataclass
class FitResult:
    coefficients: te.Coefficients
    overhead_groups: list[Group]
    weight_keys: list[tuple[str, str]]
    #: rows (of the fitted subset) per parameter, for reporting
    overhead_n: dict[Group, int] = field(default_factory=dict)
    weight_n: dict[tuple[str, str], int] = field(default_factory=dict)
    #: bootstrap share agreeing on the direction of each weight change, and its 90 % interval
    weight_confidence: dict[tuple[str, str], float] = field(default_factory=dict)
    weight_interval: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    frozen_weights: list[tuple[str, str]] = field(default_factory=list)
    #: coefficients whose fitted value sits on its ×½ / ×2 / ≥ 1 bound: ("PHASE_OVERHEAD"|"TOKEN_WEIGHTS", key)
    at_bound: list[tuple[str, tuple[str, str]]] = field(default_factory=list)
    fitted_rows: int = 0
    status: str = "not fitted"
    #: overhead groups whose design cannot tell the overhead from the budget factor: kept at today's value
    kept_overheads: list[Group] = field(default_factory=list)


def _design(samples: SampleSet, rows: np.ndarray) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    """Dense design for the linear rows: [one-hot overhead group | effective counts]."""
    units = samples.units
    unit = samples.unit[rows]
    group_ids = sorted(set(units.group[unit].tolist()))
    col_of_group = {g: i for i, g in enumerate(group_ids)}
    counts = units.counts[unit]
    used_keys = [k for k in range(counts.shape[1]) if counts[:, k].sum() > 0]
    x = np.zeros((rows.size, len(group_ids) + len(used_keys)))
    x[np.arange(rows.size), [col_of_group[g] for g in units.group[unit].tolist()]] = 1.0
    x[:, len(group_ids) :] = counts[:, used_keys]
    fixed = units.fixed_marginal[unit]
    return x, group_ids, fixed, used_keys


def _subsample(samples: SampleSet, rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` rows, every group represented in proportion (small groups kept whole)."""
    if rows.size <= limit:
        return rows
    wanted = np.zeros(samples.n, dtype=bool)
    wanted[rows] = True
    by_group = [b[wanted[b]] for _, b in sorted(samples.rows_by_group().items())]
    by_group = [b for b in by_group if b.size]
    keep: list[np.ndarray] = []
    quota = max(1, limit // max(1, len(by_group)))
    for members in by_group:
        keep.append(members if members.size <= quota else rng.choice(members, size=quota, replace=False))
    chosen = np.sort(np.concatenate(keep))
    if chosen.size > limit:
        chosen = np.sort(rng.choice(chosen, size=limit, replace=False))
    return chosen


def coefficient_bounds(theta0: np.ndarray, frozen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer bounds per coefficient: [max(1, ⌈θ⁰/MAX_STEP⌉), ⌊θ⁰·MAX_STEP⌋]; a frozen one stays at θ⁰."""
    lo = np.maximum(1.0, np.ceil(theta0 / MAX_STEP - 1e-9))
    hi = np.maximum(lo, np.floor(theta0 * MAX_STEP + 1e-9))
    lo = np.where(frozen, theta0, lo)
    hi = np.where(frozen, theta0, hi)
    return lo, hi


def _solve(
    x: np.ndarray,
    target: np.ndarray,
    observed: np.ndarray,
    theta0: np.ndarray,
    margin: float,
    lo: np.ndarray,
    hi: np.ndarray,
    multiplicity: np.ndarray | None = None,
    kappa: float = PULL_KAPPA,
) -> np.ndarray | None:
    """The LP above, solved in its dual form; returns θ or None if HiGHS fails.

    Primal: min Σ c⁺ s⁺ + c⁻ s⁻ s.t. Aθ + s⁺ − s⁻ = b, lo ≤ θ ≤ hi, s ≥ 0, with one row per call
    (observed: c⁺ = c⁻ = ½; censored: c⁺ = ½, c⁻ = 0) and one pull row per coefficient (c± = λ_j).
    Dual: max b'u − hi'P + lo'Q s.t. A'u − P + Q = 0, −c⁻ ≤ u ≤ c⁺, P, Q ≥ 0; θ is minus the marginals
    of its equality constraints. ``multiplicity`` scales each call's costs (a bootstrap replicate).
    """
    n, p = x.shape
    weight = np.ones(n) if multiplicity is None else np.asarray(multiplicity, dtype=float)
    keep = weight > 0
    a_rows = margin * x[keep]
    w = weight[keep]
    lam = kappa * margin * np.maximum((x * weight[:, None]).sum(axis=0), 1.0)
    c_plus = np.concatenate([0.5 * w, lam])
    c_minus = np.concatenate([np.where(observed[keep], 0.5, 0.0) * w, lam])
    b = np.concatenate([target[keep], theta0])
    a_t = np.hstack([a_rows.T, np.eye(p)])  # A' (p × rows), pull rows are the identity
    objective = np.concatenate([-b, hi, -lo])
    a_eq = np.hstack([a_t, -np.eye(p), np.eye(p)])
    bounds = np.concatenate([np.stack([-c_minus, c_plus], axis=1), np.tile([0.0, np.inf], (2 * p, 1))])
    result = linprog(objective, A_eq=a_eq, b_eq=np.zeros(p), bounds=bounds, method="highs")
    if result.status != 0 or result.eqlin is None:
        return None
    theta = -np.asarray(result.eqlin.marginals, dtype=float)
    clipped: np.ndarray = np.clip(theta, lo, hi)
    return clipped


def fit_coefficients(
    samples: SampleSet,
    rows: np.ndarray,
    current: te.Coefficients,
    *,
    free_weights: bool = True,
    confidence_threshold: float,
    frozen_weights: set[tuple[str, str]] | None = None,
) -> FitResult:
    """Fit overheads (and weights, if ``free_weights``) on ``rows``; unfitted values stay as they are.

    Weight changes whose direction fewer than ``confidence_threshold`` of the bootstrap refits agree on
    are frozen at their current value and the fit is repeated (a weight is shared by every group, so a
    change the data cannot support must not ride along). ``frozen_weights`` gives that decision
    instead (no bootstrap): the backtest's refit on the older calls reuses the full fit's decision.
    """
    rng = np.random.default_rng(SEED)
    linear_rows = rows[samples.units.linear[samples.unit[rows]]]
    if linear_rows.size == 0:
        return FitResult(current, [], [], status="no rows with estimator features")
    fit_rows = _subsample(samples, linear_rows, MAX_FIT_ROWS, rng)
    x, group_ids, fixed, key_ids = _design(samples, fit_rows)
    groups = [samples.groups[g] for g in group_ids]
    keys = [samples.units.weight_keys[k] for k in key_ids]
    margin = current.safety_margin
    target = samples.y[fit_rows] - margin * fixed
    observed = samples.observed[fit_rows]
    theta0 = np.array(
        [current.phase_overhead.get(g, current.default_phase_overhead) for g in groups]
        + [current.token_weights.get(k, 0) for k in keys],
        dtype=float,
    )
    frozen = np.zeros(theta0.size, dtype=bool)
    if not free_weights:
        frozen[len(groups) :] = True
    elif frozen_weights is not None:
        frozen[len(groups) :] = [k in frozen_weights for k in keys]

    lo, hi = coefficient_bounds(theta0, frozen)
    theta = _solve(x, target, observed, theta0, margin, lo, hi)
    if theta is None:
        return FitResult(current, groups, keys, fitted_rows=int(fit_rows.size), status="linear program failed")

    weight_conf: dict[tuple[str, str], float] = {}
    weight_int: dict[tuple[str, str], tuple[float, float]] = {}
    frozen_keys: list[tuple[str, str]] = [k for j, k in enumerate(keys) if frozen[len(groups) + j]] if (
        free_weights and frozen_weights is not None) else []
    cols = np.arange(len(groups), theta0.size)
    changes = np.clip(np.round(theta[cols]), lo[cols], hi[cols]) - theta0[cols]
    if free_weights and keys and frozen_weights is None and np.any(changes != 0):

        def decided(boots: np.ndarray) -> bool:
            """Every changed weight's share of agreeing replicates is settled whatever the rest say."""
            done = boots.shape[0]
            left = BOOTSTRAP_REPLICATES - done
            need = confidence_threshold * BOOTSTRAP_REPLICATES
            for c, change in zip(cols, changes, strict=True):
                if change == 0:
                    continue
                agree = int(np.sum(np.sign(boots[:, c] - theta0[c]) == np.sign(change))) if done else 0
                if agree < need <= agree + left:
                    return False
            return True

        boots = _bootstrap(x, target, observed, theta0, margin, lo, hi, rng, decided)
        for j, key in enumerate(keys):
            col = len(groups) + j
            change = float(changes[j])
            samples_j = boots[:, col] if boots.size else np.empty(0)
            if samples_j.size:
                weight_int[key] = (float(np.quantile(samples_j, 0.05)), float(np.quantile(samples_j, 0.95)))
            if change == 0:
                continue
            agree = float(np.mean(np.sign(samples_j - theta0[col]) == np.sign(change))) if samples_j.size else 0.0
            weight_conf[key] = agree
            if agree < confidence_threshold:
                frozen[col] = True
                frozen_keys.append(key)
        if frozen_keys:
            lo, hi = coefficient_bounds(theta0, frozen)
            refit = _solve(x, target, observed, theta0, margin, lo, hi)
            if refit is not None:
                theta = refit
            else:  # keep the first fit but without the unsupported weight changes
                theta[frozen] = theta0[frozen]

    rounded_theta = np.clip(np.round(theta), lo, hi)  # integers inside the bounds (the bounds are integers)
    # overheads: relative to the budget factor, which absorbs the group's scale (identifiability fix)
    n_groups = len(groups)
    marginal = fixed + x[:, n_groups:] @ rounded_theta[n_groups:]
    kept_overheads: list[Group] = []
    for j, g in enumerate(groups):
        if frozen[j]:
            continue
        rows_j = x[:, j] > 0
        value = scale_free_overhead(samples.y[fit_rows][rows_j], observed[rows_j], marginal[rows_j], theta0[j], margin)
        if value is None or value < 1.0:
            # not identifiable, or the data ask for an overhead ≤ 0: the weights (over-)predict the deliverables'
            # growth and no overhead can fix it; moving it would walk it to its bound week after week
            rounded_theta[j] = theta0[j]
            kept_overheads.append(g)
        else:  # half the log-step toward the estimate: a noisy week moves it a little, a settled one converges
            rounded_theta[j] = float(np.clip(round(math.sqrt(value * max(theta0[j], 1.0))), lo[j], hi[j]))
    at_bound = [
        ("PHASE_OVERHEAD" if j < len(groups) else "TOKEN_WEIGHTS", (groups + keys)[j])
        for j in range(theta0.size)
        if not frozen[j] and lo[j] < hi[j] and rounded_theta[j] in (lo[j], hi[j]) and rounded_theta[j] != theta0[j]
    ]
    new_overhead = dict(current.phase_overhead)
    for g, value in zip(groups, rounded_theta[: len(groups)], strict=True):
        rounded = int(value)
        if rounded != current.phase_overhead.get(g, current.default_phase_overhead) or g in current.phase_overhead:
            new_overhead[g] = rounded
    new_weights = dict(current.token_weights)
    for k, value in zip(keys, rounded_theta[len(groups) :], strict=True):
        new_weights[k] = int(value)
    coefficients = te.Coefficients(
        version=f"{current.version}+fit",
        phase_overhead=new_overhead,
        token_weights=new_weights,
        base_budgets=current.base_budgets,
        budget_factors=current.budget_factors,
        safety_margin=current.safety_margin,
        buffer_margin=current.buffer_margin,
        default_phase_overhead=current.default_phase_overhead,
    )
    overhead_n = {g: int(np.sum(x[:, i] > 0)) for i, g in enumerate(groups)}
    weight_n = {k: int(np.sum(x[:, len(groups) + j] > 0)) for j, k in enumerate(keys)}
    return FitResult(
        coefficients,
        groups,
        keys,
        overhead_n=overhead_n,
        weight_n=weight_n,
        weight_confidence=weight_conf,
        weight_interval=weight_int,
        frozen_weights=frozen_keys,
        at_bound=at_bound,
        fitted_rows=int(fit_rows.size),
        status="fitted",
        kept_overheads=kept_overheads,
    )


#: The pull toward today's values in the scale-free fit: only breaks ties (the joint LP's κ would move a
#: two-point design's intercept by several calls' worth of quantile).
SCALE_FREE_KAPPA = 0.001
#: A group's overhead is identifiable from its budget factor only with ≥ this many calls at each of two
#: distinct marginal costs (e.g. one-file and two-file phases) ...
MIN_DESIGN_ROWS = 5
#: ... that differ by at least this ratio.
MIN_DESIGN_SPREAD = 1.1


def scale_free_overhead(
    y: np.ndarray, observed: np.ndarray, marginal: np.ndarray, today: float, margin: float
) -> float | None:
    """The overhead a group's budget factor leaves to fit: its intercept relative to its slope, or None.

    A group with a factor gets the ceiling predicted × factor, so the factor absorbs any common scale of
    its predictions; what the overhead still decides is how the prediction grows with the deliverables.
    Fitting it on the level instead (the joint LP above) let it carry the scale: with the weights fixed
    and over-predicting, it was halved every run toward its bound while the factor rose to compensate
    (1176 → 588 → … → 3 in a closed loop). So: the median (L1, censored) regression y ≈ m·(a + b·marginal),
    a free scale b > 0, gives overhead = a / b (regularised toward today's value by the ×½ … ×2 step and a tie-breaking
pull). When the group's calls do not have ≥ ``MIN_DESIGN_ROWS`` at
    each of two marginal costs at least ``MIN_DESIGN_SPREAD`` apart, a and b cannot be told apart: None
    (the overhead stays at today's value). The caller also keeps today's value when a / b < 1 (the data ask
    for a non-positive overhead: the weights are off, which no overhead can fix) and otherwise moves half the
    log-step toward a / b (the geometric mean with today's), so a week's noise moves it a little.
    """
    values, counts = np.unique(np.round(marginal, 6), return_counts=True)
    supported = values[counts >= MIN_DESIGN_ROWS]
    if supported.size < 2 or supported.max() < MIN_DESIGN_SPREAD * max(supported.min(), 1e-9):
        return None
    level = float(np.median(y)) / (margin * (today + float(np.median(marginal))))
    theta0 = np.array([today * level, level])
    design = np.column_stack([np.ones(y.size), marginal])
    theta = _solve(design, y.astype(float), observed, theta0, margin, np.array([0.0, 1e-6]),
                   np.array([10.0 * float(y.max()) + 1.0, 1e4]),  # finite: the dual's objective holds them
                   kappa=SCALE_FREE_KAPPA)
    if theta is None or theta[1] <= 0:
        return None
    return float(theta[0] / theta[1])


def _bootstrap(
    x: np.ndarray,
    target: np.ndarray,
    observed: np.ndarray,
    theta0: np.ndarray,
    margin: float,
    lo: np.ndarray,
    hi: np.ndarray,
    rng: np.random.Generator,
    decided: Callable[[np.ndarray], bool] | None = None,
) -> np.ndarray:
    """θ refitted on up to ``BOOTSTRAP_REPLICATES`` resamples of at most ``BOOTSTRAP_ROWS`` rows each.

    A resample is the same LP with each row's cost multiplied by how often it was drawn (rows drawn
    zero times drop out), so no design matrix is copied. ``decided(replicates so far)`` stops early
    once more replicates cannot change any decision.
    """
    n = x.shape[0]
    size = min(n, BOOTSTRAP_ROWS)
    out = []
    for _ in range(BOOTSTRAP_REPLICATES):
        multiplicity = np.bincount(rng.integers(0, n, size=size), minlength=n)
        theta = _solve(x, target, observed, theta0, margin, lo, hi, multiplicity)
        if theta is not None:
            out.append(theta)
        if decided is not None and decided(np.array(out)):
            break
    return np.array(out) if out else np.empty((0, theta0.size))


def implied_overheads(samples: SampleSet, rows: np.ndarray, coefficients: te.Coefficients) -> np.ndarray:
    """y / m − fixed − Σ weight·count per row: the overhead that would make each prediction exact.

    With the weights fixed, the L1-optimal overhead of a group is the median of these; their
    order-statistic interval is the distribution-free interval reported for a PHASE_OVERHEAD change.
    """
    units = samples.units
    weights = np.array([coefficients.token_weights.get(k, 0) for k in units.weight_keys], dtype=float)
    marginal = (units.fixed_marginal + units.counts @ weights)[samples.unit[rows]]
    overheads: np.ndarray = samples.y[rows] / coefficients.safety_margin - marginal
    return overheads


#: Resamples behind a phase overhead's reported interval (``overhead_interval``).
OVERHEAD_REPLICATES = 200


def overhead_interval(
    samples: SampleSet, rows: np.ndarray, coefficients: te.Coefficients, today: float, level: float = 0.95,
) -> tuple[float, float] | None:
    """The bootstrap's ``level`` interval of the overhead ``scale_free_overhead`` fits on ``rows`` (a group's fitted
    calls), within ``today`` ÷ / × ``MAX_STEP``² (a fitted value beyond moves the overhead to its ×½ / ×2 bound all the
    same: the half log-step), or None when fewer than half the resamples can tell the overhead from the factor.

    That fit is the value a changed overhead steps toward, so the reported interval is of it: the median of
    ``implied_overheads`` is another estimator (the level fit's), which put the quickstart's 1176 → 1040 beside
    [1, 1]. Resamples of at most ``BOOTSTRAP_ROWS`` rows, seeded: the same data give the same interval.
    """
    units = samples.units
    weights = np.array([coefficients.token_weights.get(k, 0) for k in units.weight_keys], dtype=float)
    marginal = (units.fixed_marginal + units.counts @ weights)[samples.unit[rows]]
    y, observed = samples.y[rows], samples.observed[rows]
    rng = np.random.default_rng(SEED)
    size = min(rows.size, BOOTSTRAP_ROWS)
    values = []
    for _ in range(OVERHEAD_REPLICATES):
        pick = rng.integers(0, rows.size, size=size)
        value = scale_free_overhead(y[pick], observed[pick], marginal[pick], today, coefficients.safety_margin)
        if value is not None:
            values.append(value)
    if len(values) < OVERHEAD_REPLICATES / 2:
        return None
    lo, hi = np.clip(np.quantile(values, [(1 - level) / 2, (1 + level) / 2]), today / MAX_STEP**2, today * MAX_STEP**2)
    return float(lo), float(hi)


def relative_change(old: float | None, new: float) -> float:
    if old is None or old == 0:
        return math.inf
    return (new - old) / old
