"""The calibration itself, as a pure function of a ``SampleSet`` and the parameters (no I/O).

``calibrate`` returns the JSON-ready result object minus the file paths and the database id (the thin
shell in ``runner`` adds those). Steps, in order:

1. fit coefficients and budget factors on *all* selected samples (``fit_all``);
2. backtest: repeat step 1 on the older (1 − F) of the samples and replay the newest F under the current
   coefficients, the original's median-ratio method, and the proposal;
3. gate each group; a group's BUDGET_FACTORS (and its PHASE_OVERHEAD, which the factor is relative to)
   are proposed only if it has ≥ min_samples, its confidence clears the threshold, and on its held-out
   calls it truncates no worse than today (at α) while reserving fewer tokens per token used;
4. TOKEN_WEIGHTS are shared by every group, so their changes ship only if the whole shipped
   configuration passes the same backtest test on all held-out calls; otherwise the fit is redone with
   the weights frozen, so the shipped (coefficients, factors) pair stays consistent.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from autopack import token_estimator as te
from autopack.calibration import drift, stats
from autopack.calibration.backtest import evaluate, per_group, reserved_better, truncation_not_worse
from autopack.calibration.fit import FitResult, fit_coefficients, implied_overheads
from autopack.calibration.model import FactorModel, fit_factor_model
from autopack.calibration.samples import Group, SampleSet, configuration_ceiling, predict

METHOD_VERSION = "t5-conformal-1"
SUCCESS_MEDIAN_RANGE = (0.8, 1.5)
COLLECTION_PHASE_TARGETS = ((5, "minimum viable"), (20, "production ready"), (50, "optimal"))
COLLECTION_GROUP_TARGETS = ((1, "minimum viable"), (3, "production ready"), (5, "optimal"))


@dataclass(frozen=True)
class Params:
    min_samples: int = 5
    confidence_threshold: float = 0.7
    target_truncation: float = 0.05
    holdout_fraction: float = 0.3
    include_run_ids: tuple[str, ...] = ()
    #: How budgets follow drift at run time ("static" | "aci"), see ``drift``; the backtest replays it.
    method: str = drift.DEFAULT_METHOD

    def __post_init__(self) -> None:
        drift.method_spec(self.method)  # an unknown or unshippable method fails before any work

    @property
    def alpha(self) -> float:
        return self.target_truncation

    @property
    def spec(self) -> drift.MethodSpec:
        return drift.method_spec(self.method)


@dataclass
class Fitted:
    """One complete fit (coefficients + factor model) on a subset of the rows."""

    fit: FitResult
    predicted: np.ndarray  # every row, under fit.coefficients
    model: FactorModel
    original_medians: dict[Group, float]


@dataclass
class Variant:
    free_weights: bool
    full: Fitted
    train: Fitted | None
    backtest: dict[str, Any]
    group_backtest: dict[Group, dict[str, dict[str, Any]]]
    passing: list[Group]
    reasons: dict[Group, list[str]]
    ship_weights: bool
    global_check: str
    notes: list[str] = field(default_factory=list)
    drift_summary: dict[str, Any] = field(default_factory=dict)  # backtest.calibration_under_drift


def _log_ratio(y: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    return np.log(y / np.maximum(predicted, 1.0))


def original_medians(samples: SampleSet, rows: np.ndarray, min_samples: int) -> dict[Group, float]:
    """The original's method: per group with ≥ min_samples clean successes, sorted(actual/predicted)[n//2]."""
    clean = rows[samples.success[rows] & samples.observed[rows]]
    out: dict[Group, float] = {}
    for g in np.unique(samples.group[clean]).tolist():
        idx = clean[samples.group[clean] == g]
        if idx.size >= min_samples:
            out[samples.groups[g]] = stats.original_median(samples.y[idx] / np.maximum(samples.pred_current[idx], 1))
    return out


def fit_all(
    samples: SampleSet, rows: np.ndarray, params: Params, current: te.Coefficients, free_weights: bool
) -> Fitted:
    fit = fit_coefficients(
        samples, rows, current, free_weights=free_weights, confidence_threshold=params.confidence_threshold
    )
    predicted = predict(samples, fit.coefficients)
    r = _log_ratio(samples.y[rows], predicted[rows])
    model = fit_factor_model(samples.groups, samples.group[rows], r, samples.observed[rows], params.alpha)
    return Fitted(fit, predicted, model, original_medians(samples, rows, params.min_samples))


def _shipped(
    current: te.Coefficients, fitted: Fitted, passing: list[Group], ship_weights: bool
) -> tuple[te.Coefficients, dict[Group, float]]:
    """The coefficient set and factors that would ship: only passing groups (and weights if allowed)."""
    new = fitted.fit.coefficients
    overhead = dict(current.phase_overhead)
    for g in passing:
        if g in fitted.fit.overhead_groups and new.phase_overhead.get(g) is not None:
            overhead[g] = new.phase_overhead[g]
    weights = dict(new.token_weights) if ship_weights else dict(current.token_weights)
    factors = dict(current.budget_factors)
    for g in passing:
        info = fitted.model.factor_for(g)
        if info.factor is not None:
            factors[g] = info.factor
    coeffs = dataclasses.replace(
        current, phase_overhead=overhead, token_weights=weights, budget_factors=factors,
        version=f"{current.version}+shipped",
    )
    return coeffs, factors


def _weights_changed(current: te.Coefficients, fit: FitResult) -> bool:
    return any(fit.coefficients.token_weights.get(k) != current.token_weights.get(k) for k in fit.weight_keys)


def _run_variant(samples: SampleSet, params: Params, current: te.Coefficients, free_weights: bool) -> Variant:
    n = samples.n
    all_rows = np.arange(n)
    full = fit_all(samples, all_rows, params, current, free_weights)
    n_test = int(math.floor(params.holdout_fraction * n + 0.5)) if params.holdout_fraction > 0 else 0
    n_test = min(n_test, max(0, n - 1))
    train_rows, test_rows = all_rows[: n - n_test], all_rows[n - n_test :]
    test = samples.subset(np.isin(all_rows, test_rows))
    train: Fitted | None = None
    ceilings: dict[str, np.ndarray] = {}
    if n_test > 0:
        train = fit_all(samples, train_rows, params, current, free_weights)
        _, ceilings["current"] = configuration_ceiling(test, current, current.budget_factors)
        pred_cur = test.pred_current
        med = np.array([train.original_medians.get(g, math.nan) for g in samples.groups])[test.group]
        original = ceilings["current"].copy()
        has = ~np.isnan(med)
        original[has] = np.ceil(np.maximum(pred_cur[has], 1) * med[has])
        ceilings["original_median"] = original
        proposal_factors = {**current.budget_factors, **train.model.factors(samples.groups)}
        _, ceilings["proposed"] = configuration_ceiling(test, train.fit.coefficients, proposal_factors)
        # the chosen method at run time (drift): what the gate tests is what would run
        rows = drift.CalibrationRows.of(samples, train_rows, test_rows)
        drift_summary = drift.compare_in_calibration(params.alpha, rows, train.predicted, proposal_factors,
                                                     ceilings["proposed"])
        ceilings["proposed"] = drift.replay_configuration(params.spec, params.alpha, rows, train.predicted,
                                                          proposal_factors, ceilings["proposed"], reviewed=current)
        ceilings["current"] = drift.replay_configuration(drift.MethodSpec("static"), params.alpha, rows,
                                                         samples.pred_current, current.budget_factors,
                                                         ceilings["current"], reviewed=current)
    alpha = params.alpha
    if not ceilings:  # nothing held out: the methods are still listed, with n = 0
        ceilings = {name: np.empty(0) for name in ("current", "original_median", "proposed")}
    backtest = {name: evaluate(c, test.y, test.observed, alpha) for name, c in ceilings.items()}
    group_bt = per_group(samples.groups, test.group, ceilings, test.y, test.observed, alpha) if n_test else {}

    # gate per group
    reasons: dict[Group, list[str]] = {}
    passing: list[Group] = []
    for g, fit in full.model.groups.items():
        why: list[str] = []
        info = fit.factor
        if fit.n < params.min_samples:
            why.append(f"{fit.n} samples < --min-samples {params.min_samples}")
        if info.factor is None:
            why.append("no budget factor (too few samples overall for the target truncation rate)")
        elif info.confidence < params.confidence_threshold:
            why.append(f"confidence {info.confidence:.2f} < threshold {params.confidence_threshold:.2f}")
        bt = group_bt.get(g)
        if not bt:
            why.append("no held-out calls in the backtest")
        else:
            prop, cur = bt["proposed"], bt["current"]
            if not truncation_not_worse(prop, cur, alpha):
                why.append(
                    f"held-out truncation {prop['truncations']}/{prop['n']} worse than current "
                    f"{cur['truncations']}/{cur['n']} at α={alpha} (Kupiec p={prop['kupiec_p']})"
                )
            if not reserved_better(prop, cur):
                why.append(
                    f"held-out reserved/used {prop['reserved_over_used']} not below current {cur['reserved_over_used']}"
                )
        reasons[g] = why
        if not why:
            passing.append(g)

    ship_weights = False
    global_check = "no weight changes"
    if passing and free_weights and _weights_changed(current, full.fit):
        if train is None:
            global_check = "weight changes not proposed: no held-out calls to check them on"
        else:
            # the whole shipped configuration, with the weights, on every held-out call
            coeffs_t, factors_t = _shipped(current, train, passing, True)
            _, ceil_ship = configuration_ceiling(test, coeffs_t, factors_t)
            with_weights = evaluate(ceil_ship, test.y, test.observed, alpha)
            cur = backtest["current"]
            ship_weights = truncation_not_worse(with_weights, cur, alpha) and reserved_better(with_weights, cur)
            global_check = (
                "weight changes pass the whole-configuration backtest" if ship_weights
                else "weight changes fail the whole-configuration backtest (truncation or reserve not better than "
                "today on all held-out calls)"
            )
    variant = Variant(free_weights, full, train, backtest, group_bt, passing, reasons, ship_weights, global_check)
    if train is not None:
        coeffs_t, factors_t = _shipped(current, train, passing, ship_weights)
        _, ceil_ship = configuration_ceiling(test, coeffs_t, factors_t)
        ceil_ship = drift.replay_configuration(params.spec, alpha, rows, predict(samples, coeffs_t), factors_t, ceil_ship,
                                               adapt=passing, reviewed=current)
        variant.backtest["shipped"] = evaluate(ceil_ship, test.y, test.observed, alpha)
        variant.drift_summary = drift_summary
    return variant


@dataclass
class PlotData:
    """What the plot shows: per group, actual / predicted (proposed coefficients) and the factor."""

    groups: list[Group]
    ratios: list[np.ndarray]
    observed: list[np.ndarray]
    factors: list[float | None]
    proposed: list[bool]


@dataclass
class Calibration:
    result: dict[str, Any]
    plot: PlotData


def calibrate(samples: SampleSet, params: Params, current: te.Coefficients | None = None) -> Calibration:
    """Run the whole calibration on ``samples`` (which must be non-empty)."""
    current = current or te.current_coefficients()
    if samples.n == 0:
        raise ValueError("calibrate needs at least one usable sample")
    variant = _run_variant(samples, params, current, free_weights=True)
    notes: list[str] = []
    if variant.passing and _weights_changed(current, variant.full.fit) and not variant.ship_weights:
        notes.append(f"TOKEN_WEIGHTS frozen and coefficients refitted: {variant.global_check}")
        variant = _run_variant(samples, params, current, free_weights=False)
    variant.notes = notes
    result = _assemble(samples, params, current, variant)
    plot = PlotData([], [], [], [], [])
    for entry in result["groups"]:
        g = (entry["category"], entry["complexity"])
        idx = np.flatnonzero(samples.group == samples.groups.index(g))
        plot.groups.append(g)
        plot.ratios.append(samples.y[idx] / np.maximum(variant.full.predicted[idx], 1.0))
        plot.observed.append(samples.observed[idx])
        plot.factors.append(entry["budget_factor"])
        plot.proposed.append(bool(entry["proposed"]))
    return Calibration(result, plot)


# --------------------------------------------------------------------------------------------------
# Assembling the result object
# --------------------------------------------------------------------------------------------------


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _num(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _bt_summary(group_bt: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """A change's backtest: the proposal's numbers at top level, each method's beside them."""
    if not group_bt:
        return {"n": 0}
    prop = group_bt.get("proposed", {})
    out: dict[str, Any] = {
        "n": prop.get("n", 0),
        "truncations": prop.get("truncations"),
        "truncation_rate": prop.get("truncation_rate"),
        "reserved_over_used": prop.get("reserved_over_used"),
        "kupiec_p": prop.get("kupiec_p"),
    }
    for name, m in group_bt.items():
        out[name] = {k: m.get(k) for k in ("n", "truncations", "truncation_rate", "reserved_over_used", "kupiec_p")}
    return out


def _group_entries(samples: SampleSet, params: Params, variant: Variant) -> list[dict[str, Any]]:
    full = variant.full
    entries = []
    for gi, g in enumerate(samples.groups):
        idx = np.flatnonzero(samples.group == gi)
        if idx.size == 0:
            continue
        fit = full.model.groups[g]
        y, obs = samples.y[idx], samples.observed[idx]
        ratio = y / np.maximum(samples.pred_current[idx], 1.0)
        med = stats.km_median(ratio, obs)
        lo, hi, level = stats.median_ci(ratio, obs, 0.95)
        clean = samples.success[idx] & obs
        clean_ratio = ratio[clean]
        waste = samples.recorded_ceiling[idx] / y
        over = samples.recorded_predicted[idx] / y
        info = fit.factor
        bt = variant.group_backtest.get(g)
        entries.append(
            {
                "category": g[0],
                "complexity": g[1],
                "n": int(idx.size),
                "n_censored": int((~obs).sum()),
                "median_ratio": _num(med),
                "median_ratio_ci": [_num(lo), _num(hi)],
                "median_ratio_ci_level": _num(level, 4),
                "pooling_weight": _num(fit.pooling_weight),
                "budget_factor": info.factor,
                "confidence": _num(info.confidence),
                "original_confidence": _num(stats.original_confidence(clean_ratio)) if clean_ratio.size else None,
                "original_median_ratio": _num(stats.original_median(clean_ratio)) if clean_ratio.size else None,
                "n_clean_success": int(clean.sum()),
                "category_pooling_weight": _num(fit.category_weight),
                "location_ratio": _num(math.exp(fit.location)),
                "factor_source": info.source,
                "factor_pool_n": info.pool_n,
                "factor_interval": list(info.interval),
                "factor_note": info.note,
                "avg_actual": _num(float(np.mean(samples.actual[idx])), 1),
                "avg_predicted": _num(float(np.mean(samples.pred_current[idx])), 1),
                "median_overestimate_ratio": _num(float(np.median(over))),
                "median_ceiling_waste": _num(float(np.nanmedian(waste))) if np.isfinite(waste).any() else None,
                "p90_ceiling_waste": _num(float(np.nanquantile(waste, 0.9))) if np.isfinite(waste).any() else None,
                "avg_ceiling": _num(float(np.nanmean(samples.recorded_ceiling[idx])), 1),
                "proposed": g in variant.passing,
                "gate_reasons": variant.reasons.get(g, []),
                "backtest": _bt_summary(bt),
            }
        )
    entries.sort(key=lambda e: (-e["n"], e["category"], e["complexity"]))
    return entries


def _changes(
    samples: SampleSet, params: Params, current: te.Coefficients, variant: Variant, groups: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(proposed_changes, coefficient_fit): gated changes, and every change the fit made, old → new."""
    full = variant.full
    fit = full.fit
    by_group = {(e["category"], e["complexity"]): e for e in groups}
    fit_changes: list[dict[str, Any]] = []
    for g in fit.overhead_groups:
        old = current.phase_overhead.get(g)
        new = fit.coefficients.phase_overhead.get(g, current.default_phase_overhead)
        if new != (old if old is not None else current.default_phase_overhead):
            fit_changes.append({"coefficient": "PHASE_OVERHEAD", "key": list(g), "old": old, "new": new,
                                "n": fit.overhead_n.get(g, 0)})
    for k in fit.weight_keys:
        old_w = current.token_weights.get(k)
        new_w = fit.coefficients.token_weights.get(k)
        if new_w != old_w:
            fit_changes.append({"coefficient": "TOKEN_WEIGHTS", "key": list(k), "old": old_w, "new": new_w,
                                "n": fit.weight_n.get(k, 0)})

    changes: list[dict[str, Any]] = []
    order = sorted(variant.passing, key=lambda g: (-(by_group[g]["confidence"] or 0), -by_group[g]["n"], g))
    for g in order:
        e = by_group[g]
        info = full.model.factor_for(g)
        common = {
            "category": g[0],
            "complexity": g[1],
            "n": e["n"],
            "confidence": e["confidence"],
            "backtest": e["backtest"],
        }
        old_factor = current.budget_factors.get(g)
        if info.factor is not None and info.factor != old_factor:
            changes.append({"coefficient": "BUDGET_FACTORS", "key": list(g), "old": old_factor, "new": info.factor,
                            **common, "interval": list(info.interval)})
        if g in fit.overhead_groups:
            old = current.phase_overhead.get(g)
            new = fit.coefficients.phase_overhead.get(g, current.default_phase_overhead)
            if new != (old if old is not None else current.default_phase_overhead):
                rows = np.flatnonzero((samples.group == samples.groups.index(g)) & samples.units.linear[samples.unit])
                implied = implied_overheads(samples, rows, fit.coefficients)
                lo, hi, _ = stats.median_ci(implied, samples.observed[rows], 0.95)
                changes.append({"coefficient": "PHASE_OVERHEAD", "key": list(g), "old": old, "new": new,
                                **common, "interval": [_num(lo, 1), _num(hi, 1)]})
    if variant.ship_weights:
        shipped_bt = variant.backtest.get("shipped", {})
        for k in fit.weight_keys:
            old_w = current.token_weights.get(k)
            new_w = fit.coefficients.token_weights.get(k)
            if new_w == old_w:
                continue
            lo_w, hi_w = fit.weight_interval.get(k, (math.nan, math.nan))
            changes.append({
                "coefficient": "TOKEN_WEIGHTS", "key": list(k), "old": old_w, "new": new_w,
                "category": None, "complexity": None, "n": fit.weight_n.get(k, 0),
                "confidence": _num(fit.weight_confidence.get(k)), "interval": [_num(lo_w, 1), _num(hi_w, 1)],
                "backtest": {k2: shipped_bt.get(k2) for k2 in ("n", "truncations", "truncation_rate",
                                                                "reserved_over_used", "kupiec_p")},
            })
    return changes, fit_changes


def _targets(samples: SampleSet, params: Params, groups: list[dict[str, Any]]) -> dict[str, Any]:
    enough = sum(1 for g in groups if g["n"] >= params.min_samples)
    phases = samples.summary.successful_phases
    return {
        "successful_phases": phases,
        "groups_with_enough_samples": enough,
        "phase_targets": [{"target": t, "label": label, "met": phases >= t} for t, label in COLLECTION_PHASE_TARGETS],
        "group_targets": [{"target": t, "label": label, "met": enough >= t} for t, label in COLLECTION_GROUP_TARGETS],
    }


def _success_metrics(samples: SampleSet, params: Params, groups: list[dict[str, Any]]) -> dict[str, Any]:
    eligible = [g for g in groups if g["n"] >= params.min_samples]
    high = [g for g in eligible if (g["confidence"] or 0) >= params.confidence_threshold]
    lo, hi = SUCCESS_MEDIAN_RANGE
    in_range = [g for g in eligible if g["median_ratio"] is not None and lo <= g["median_ratio"] <= hi]
    return {
        "success_events_ratio": round(samples.summary.success_rate_all, 4),
        "success_events_at_least_half": samples.summary.success_rate_all >= 0.5,
        "high_confidence_groups": len(high),
        "at_least_one_high_confidence_group": bool(high),
        "median_ratio_range": [lo, hi],
        "groups_median_in_range": len(in_range),
        "groups_eligible": len(eligible),
        "all_median_ratios_in_range": bool(eligible) and len(in_range) == len(eligible),
        "all_confidences_at_threshold": bool(eligible) and len(high) == len(eligible),
    }


def _assemble(samples: SampleSet, params: Params, current: te.Coefficients, variant: Variant) -> dict[str, Any]:
    groups = _group_entries(samples, params, variant)
    changes, fit_changes = _changes(samples, params, current, variant, groups)
    # the method's reviewed part (aci: each shipped group's factor curve, and the settings)
    entry = {(e["category"], e["complexity"]): e for e in groups}
    shipped_factors = {g: entry[g]["budget_factor"] for g in variant.passing if entry[g]["budget_factor"] is not None}
    changes += drift.adaptive_changes(
        params.spec, params.alpha, drift.CalibrationRows.of(samples, np.arange(samples.n), np.empty(0, dtype=int)),
        variant.full.predicted, shipped_factors, current,
        {g: {"n": entry[g]["n"], "confidence": entry[g]["confidence"], "backtest": entry[g]["backtest"]}
         for g in shipped_factors},
    )
    passed = bool(changes)
    reasons: list[str] = []
    for e in groups:
        g = (e["category"], e["complexity"])
        label = f"{g[0]}/{g[1]}"
        if g in variant.passing:
            bt = e["backtest"]
            cur = bt.get("current", {})
            reasons.append(
                f"{label}: proposed (n={e['n']}, confidence {e['confidence']}, held-out truncation "
                f"{bt.get('truncations')}/{bt.get('n')} vs current {cur.get('truncations')}/{cur.get('n')}, "
                f"reserved/used {bt.get('reserved_over_used')} vs {cur.get('reserved_over_used')})"
            )
        else:
            reasons.append(f"{label}: not proposed: " + "; ".join(variant.reasons.get(g, ["no factor"])))
    if variant.passing and changes and not any(c["coefficient"] == "TOKEN_WEIGHTS" for c in changes):
        if any(fc["coefficient"] == "TOKEN_WEIGHTS" for fc in fit_changes):
            reasons.append(f"TOKEN_WEIGHTS: not proposed: {variant.global_check}")
    reasons += variant.notes
    if not passed:
        reasons.insert(0, "no group passed the gate: nothing to propose")

    full = variant.full
    test_n = variant.backtest.get("current", {}).get("n", 0)
    backtest: dict[str, Any] = {
        name: {k: v for k, v in m.items()} for name, m in variant.backtest.items()
    }
    backtest["calibration_under_drift"] = variant.drift_summary
    backtest["train_n"] = samples.n - test_n
    backtest["test_n"] = test_n
    backtest["split_at"] = _iso(float(samples.epoch[samples.n - test_n])) if test_n else None
    backtest["groups"] = [
        {
            "category": g[0], "complexity": g[1], "n": m["current"]["n"],
            **{name: {"truncations": v["truncations"], "truncation_rate": v["truncation_rate"],
                      "coverage": None if v["truncation_rate"] is None else round(1 - v["truncation_rate"], 6),
                      "reserved_over_used": v["reserved_over_used"]} for name, v in m.items()},
        }
        for g, m in sorted(variant.group_backtest.items())
    ]
    run_ids = list(samples.summary.run_ids)
    metadata = {
        "db_id": None,
        "generated_at": None,
        "total_samples": samples.n,
        "sample_counts": dict(samples.counts),
        "run_ids": run_ids,
        "time_span": {"start": _iso(float(samples.epoch.min())), "end": _iso(float(samples.epoch.max()))},
        "method_version": METHOD_VERSION,
        "method": params.method,
        "method_params": params.spec.params(params.alpha, drift.BACKTEST_FEEDBACK),
        "target_truncation": params.target_truncation,
        "holdout_fraction": params.holdout_fraction,
        "confidence_threshold": params.confidence_threshold,
        "min_samples": params.min_samples,
        "include_run_ids": list(params.include_run_ids),
        "coefficients_version": current.version,
        "weights_free": variant.free_weights,
        "fit_status": full.fit.status,
        "fitted_rows": full.fit.fitted_rows,
        "frozen_weights": [list(k) for k in full.fit.frozen_weights],
        "pooling": {
            "sigma": _num(full.model.sigma), "tau2_category": _num(full.model.tau2_category, 6),
            "tau2_group": _num(full.model.tau2_group, 6),
            "global_location_ratio": _num(math.exp(full.model.global_location)),
        },
        "coverage_actual_max_tokens": round(samples.summary.coverage_actual_max_tokens, 4),
        "spellings_normalised": samples.summary.spellings,
    }
    return {
        "metadata": metadata,
        "gate": {"passed": passed, "reasons": reasons},
        "proposed_changes": changes,
        "coefficient_fit": fit_changes,
        "groups": groups,
        "backtest": backtest,
        "collection_targets": _targets(samples, params, groups),
        "success_metrics": _success_metrics(samples, params, groups),
        "docs_truncation": samples.summary.docs_rows,
        "report_path": None,
        "json_path": None,
        "plot_path": None,
    }
