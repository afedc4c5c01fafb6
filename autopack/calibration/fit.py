"""Joint fit of PHASE_OVERHEAD and TOKEN_WEIGHTS: median (L1) regression with censoring, as a linear program.

The estimator predicts ``(overhead[group] + Σ weight[kind, mode] · count) × SAFETY_MARGIN``. The
original multiplied PHASE_OVERHEAD by a ratio measured on the *whole* prediction, so most of the
correction was lost (reference §10.11). Here all coefficients that the data touch are fitted together:

    minimise  Σ_observed ρ_½(y − m·xθ)  +  Σ_censored ½·max(0, L − m·xθ)  +  Σ_j λ_j |θ_j − θ_j⁰|
    subject to θ ≥ 0

ρ_½ is the absolute loss (a median fit, robust to the heavy tail); a truncated call only says the true
length is ≥ L, so it only penalises predictions below L. The small L1 pull towards the current values
(λ_j = κ·m·Σ_i x_ij, κ = 0.02) only matters where the data cannot tell coefficients apart (e.g. a group
whose phases all have one backend file): there the current value is kept instead of an arbitrary vertex.
Solved with HiGHS (``scipy.optimize.linprog``) on at most ``MAX_FIT_ROWS`` rows (a fixed, stratified
subsample beyond that), then rounded to integers: the values that ship are the values used downstream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from autopack import token_estimator as te
from autopack.calibration.samples import Group, SampleSet

MAX_FIT_ROWS = 2000
BOOTSTRAP_ROWS = 500
BOOTSTRAP_REPLICATES = 30
PULL_KAPPA = 0.02
SEED = 20240613


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
    fitted_rows: int = 0
    status: str = "not fitted"


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
    groups = samples.group[rows]
    keep: list[np.ndarray] = []
    distinct, counts = np.unique(groups, return_counts=True)
    quota = max(1, limit // max(1, distinct.size))
    for g, c in zip(distinct.tolist(), counts.tolist(), strict=True):
        members = rows[groups == g]
        keep.append(members if c <= quota else rng.choice(members, size=quota, replace=False))
    chosen = np.sort(np.concatenate(keep))
    if chosen.size > limit:
        chosen = np.sort(rng.choice(chosen, size=limit, replace=False))
    return chosen


def _solve(
    x: np.ndarray,
    target: np.ndarray,
    observed: np.ndarray,
    theta0: np.ndarray,
    margin: float,
    frozen: np.ndarray,
) -> np.ndarray | None:
    """The LP above; returns θ or None if HiGHS fails."""
    n, p = x.shape
    obs = np.flatnonzero(observed)
    cen = np.flatnonzero(~observed)
    n_o, n_c = obs.size, cen.size
    # variables: θ (p) | u (n_o) | v (n_o) | h (n_c) | a (p) | b (p)
    lam = PULL_KAPPA * margin * np.maximum(x.sum(axis=0), 1.0)
    c = np.concatenate([np.zeros(p), np.full(n_o, 0.5), np.full(n_o, 0.5), np.full(n_c, 0.5), lam, lam])
    mx = sparse.csr_matrix(margin * x)
    eye_p = sparse.identity(p, format="csr")
    a_eq = sparse.vstack(
        [
            sparse.hstack(
                [mx[obs], sparse.identity(n_o), -sparse.identity(n_o), sparse.csr_matrix((n_o, n_c + 2 * p))]
            ),
            sparse.hstack([eye_p, sparse.csr_matrix((p, 2 * n_o + n_c)), -eye_p, eye_p]),
        ],
        format="csr",
    )
    b_eq = np.concatenate([target[obs], theta0])
    a_ub = None
    b_ub = None
    if n_c:
        a_ub = sparse.hstack(
            [-mx[cen], sparse.csr_matrix((n_c, 2 * n_o)), -sparse.identity(n_c), sparse.csr_matrix((n_c, 2 * p))],
            format="csr",
        )
        b_ub = -target[cen]
    bounds = [(float(t), float(t)) if f else (0.0, None) for t, f in zip(theta0, frozen, strict=True)]
    bounds += [(0.0, None)] * (2 * n_o + n_c + 2 * p)
    result = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if result.status != 0 or result.x is None:
        return None
    return np.asarray(result.x[:p])


def fit_coefficients(
    samples: SampleSet,
    rows: np.ndarray,
    current: te.Coefficients,
    *,
    free_weights: bool = True,
    confidence_threshold: float = 0.7,
) -> FitResult:
    """Fit overheads (and weights, if ``free_weights``) on ``rows``; unfitted values stay as they are.

    Weight changes whose direction fewer than ``confidence_threshold`` of the bootstrap refits agree on
    are frozen at their current value and the fit is repeated (a weight is shared by every group, so a
    change the data cannot support must not ride along).
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

    theta = _solve(x, target, observed, theta0, margin, frozen)
    if theta is None:
        return FitResult(current, groups, keys, fitted_rows=int(fit_rows.size), status="linear program failed")

    weight_conf: dict[tuple[str, str], float] = {}
    weight_int: dict[tuple[str, str], tuple[float, float]] = {}
    frozen_keys: list[tuple[str, str]] = []
    if free_weights and keys:
        boots = _bootstrap(x, target, observed, theta0, margin, frozen, rng)
        for j, key in enumerate(keys):
            col = len(groups) + j
            change = round(theta[col]) - theta0[col]
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
            refit = _solve(x, target, observed, theta0, margin, frozen)
            if refit is not None:
                theta = refit
            else:  # keep the first fit but without the unsupported weight changes
                theta[frozen] = theta0[frozen]

    new_overhead = dict(current.phase_overhead)
    for g, value in zip(groups, theta[: len(groups)], strict=True):
        rounded = int(round(value))
        if rounded != current.phase_overhead.get(g, current.default_phase_overhead) or g in current.phase_overhead:
            new_overhead[g] = rounded
    new_weights = dict(current.token_weights)
    for k, value in zip(keys, theta[len(groups) :], strict=True):
        new_weights[k] = int(round(value))
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
        fitted_rows=int(fit_rows.size),
        status="fitted",
    )


def _bootstrap(
    x: np.ndarray,
    target: np.ndarray,
    observed: np.ndarray,
    theta0: np.ndarray,
    margin: float,
    frozen: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """θ refitted on ``BOOTSTRAP_REPLICATES`` resamples (of at most ``BOOTSTRAP_ROWS`` rows each)."""
    n = x.shape[0]
    size = min(n, BOOTSTRAP_ROWS)
    out = []
    for _ in range(BOOTSTRAP_REPLICATES):
        idx = rng.integers(0, n, size=size)
        theta = _solve(x[idx], target[idx], observed[idx], theta0, margin, frozen)
        if theta is not None:
            out.append(theta)
    return np.array(out) if out else np.empty((0, theta0.size))


def implied_overheads(samples: SampleSet, rows: np.ndarray, coefficients: te.Coefficients) -> np.ndarray:
    """y / m − fixed − Σ weight·count per row: the overhead that would make each prediction exact.

    With the weights fixed, the L1-optimal overhead of a group is the median of these; their
    order-statistic interval is the distribution-free interval reported for a PHASE_OVERHEAD change.
    """
    units = samples.units
    unit = samples.unit[rows]
    weights = np.array([coefficients.token_weights.get(k, 0) for k in units.weight_keys], dtype=float)
    marginal = units.fixed_marginal[unit] + units.counts[unit] @ weights
    return samples.y[rows] / coefficients.safety_margin - marginal


def relative_change(old: float | None, new: float) -> float:
    if old is None or old == 0:
        return math.inf
    return (new - old) / old
