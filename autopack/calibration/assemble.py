"""The calibration result (``result.CalibrationResult``) from the gate's decision (``core.decide``).

Every figure a reader sees (report, pull-request body, JSON) is built here once, from the decision and the
samples: the groups' fits and backtests, the proposed changes with their verdicts, the held-out replay of each
method, the collection targets and the run's metadata. No statistic is decided here.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from autopack import token_estimator as te
from autopack.calibration import drift, stats
from autopack.calibration import result as R
from autopack.calibration.fit import MAX_STEP, FitResult, overhead_interval
from autopack.calibration.samples import Group, SampleSet
from autopack.calibration.step import Lowering

if TYPE_CHECKING:
    from autopack.calibration.core import Decision, Params

SUCCESS_MEDIAN_RANGE = (0.8, 1.5)
COLLECTION_PHASE_TARGETS = ((5, "minimum viable"), (20, "production ready"), (50, "optimal"))
COLLECTION_GROUP_TARGETS = ((1, "minimum viable"), (3, "production ready"), (5, "optimal"))

def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _num(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _bt_summary(group_bt: dict[str, R.MethodBacktest] | None) -> R.GroupBacktest:
    """A group's backtest: the proposal's numbers at top level, each method's beside them."""
    if not group_bt:
        return R.GroupBacktest(n=0)
    top = group_bt["proposed"].summary()
    return R.GroupBacktest(**top.model_dump(), **{name: m.summary() for name, m in group_bt.items()})


def _group_entries(
    samples: SampleSet, params: Params, decision: Decision, today_ratio: np.ndarray
) -> list[R.GroupEntry]:
    model = decision.fitted.model
    entries: list[R.GroupEntry] = []
    for gi, idx in sorted(samples.rows_by_group().items()):
        g = samples.groups[gi]
        fit = model.groups.get(g)
        y, obs = samples.y[idx], samples.observed[idx]
        ratio, ratio_obs = stats.sort_censored(y / np.maximum(samples.pred_current[idx], 1.0), obs)
        med = stats.km_median(ratio, ratio_obs, presorted=True)
        lo, hi, level = stats.median_ci(ratio, ratio_obs, 0.95, presorted=True)
        clean = samples.success[idx] & obs
        clean_ratio = y[clean] / np.maximum(samples.pred_current[idx][clean], 1.0)
        waste = samples.recorded_ceiling[idx] / y
        waste = waste[np.isfinite(waste)]
        waste_median, waste_p90 = np.quantile(waste, [0.5, 0.9]) if waste.size else (math.nan, math.nan)
        over = samples.recorded_predicted[idx] / y
        info = fit.factor if fit is not None else dataclasses.replace(
            model.factor_for(g), note="no calls in the fitted (older) part")
        bt = decision.group_backtest.get(g)
        entries.append(R.GroupEntry(
            category=g[0],
            complexity=g[1],
            n=int(idx.size),
            n_censored=int((~obs).sum()),
            median_ratio=_num(med),
            median_ratio_ci=(_num(lo), _num(hi)),
            median_ratio_ci_level=_num(level, 4),
            pooling_weight=_num(fit.pooling_weight) if fit else None,
            budget_factor=info.factor,
            factor_method=info.method,
            extrapolation=info.extrapolation,
            assumption=info.assumption,
            confidence=_num(info.confidence),
            confidence_note=info.confidence_note,
            gate_direction="raise" if g in decision.raised else "lower" if g in decision.passing else None,
            step_toward_alpha=decision.steps[g].record() if g in decision.steps else None,
            current_ceiling_factor=_num(float(np.median(today_ratio[idx]))),
            original_confidence=_num(stats.original_confidence(clean_ratio)) if clean_ratio.size else None,
            original_median_ratio=_num(stats.original_median(clean_ratio)) if clean_ratio.size else None,
            n_clean_success=int(clean.sum()),
            category_pooling_weight=_num(fit.category_weight) if fit else None,
            location_ratio=_num(math.exp(fit.location)) if fit else None,
            factor_source=info.source,
            factor_pool_n=info.pool_n,
            factor_rank=info.k,  # the order statistic of the pool_n fitted calls the bound is (conformal)
            factor_interval=info.interval,
            factor_note=info.note,
            avg_actual=_num(float(np.mean(samples.actual[idx])), 1),
            avg_predicted=_num(float(np.mean(samples.pred_current[idx])), 1),
            median_overestimate_ratio=_num(float(np.median(over))),
            median_ceiling_waste=_num(float(waste_median)),
            p90_ceiling_waste=_num(float(waste_p90)),
            avg_ceiling=_num(float(np.nanmean(samples.recorded_ceiling[idx])), 1),
            proposed=g in decision.passing,
            gate_reasons=decision.reasons.get(g, []),
            backtest=_bt_summary(bt),
        ))
    entries.sort(key=lambda e: (-e.n, e.category, e.complexity))
    return entries


def _lowering_record(low: Lowering) -> R.LoweringRecord:
    assert low.factor is not None  # only lowerings that lower are kept
    return R.LoweringRecord(fitted_factor=round(low.fitted_factor, 4), factor=low.factor, bound=low.bound,
                            fitted_factor_ends_descent=low.ends_descent,
                            today_factor=round(low.today_factor, 6),
                            estimated_truncation_today=round(low.estimated_today, 12),
                            estimated_truncation=_num(low.estimated, 12))  # the verdicts print 3 digits of them


def _overhead_change(fit: FitResult, current: te.Coefficients, g: Group) -> tuple[int | None, int] | None:
    old = current.phase_overhead.get(g)
    new = fit.coefficients.phase_overhead.get(g, current.default_phase_overhead)
    if new == (old if old is not None else current.default_phase_overhead):
        return None
    return old, new


def _changes(
    samples: SampleSet, params: Params, current: te.Coefficients, decision: Decision, groups: list[R.GroupEntry]
) -> tuple[list[R.ProposedChange], list[R.FitChange]]:
    """(proposed_changes, coefficient_fit): gated changes with their verdicts, and every change the fit made."""
    fitted = decision.fitted
    fit = fitted.fit
    by_group = {e.key: e for e in groups}
    at_bound = set(fit.at_bound)
    fit_changes: list[R.FitChange] = []
    for g in fit.overhead_groups:
        change = _overhead_change(fit, current, g)
        if change is not None:
            fit_changes.append(R.FitChange(coefficient="PHASE_OVERHEAD", key=g, old=change[0], new=change[1],
                                           n=fit.overhead_n.get(g, 0), at_bound=("PHASE_OVERHEAD", g) in at_bound))
    for k in fit.weight_keys:
        old_w = current.token_weights.get(k)
        new_w = fit.coefficients.token_weights.get(k)
        if new_w != old_w:
            fit_changes.append(R.FitChange(coefficient="TOKEN_WEIGHTS", key=k, old=old_w, new=new_w,
                                           n=fit.weight_n.get(k, 0), at_bound=("TOKEN_WEIGHTS", k) in at_bound))

    def bound_note(coefficient: str, key: Group) -> str:
        return f"; limited to ×{MAX_STEP:g} per run (the data asked for more)" if (coefficient, key) in at_bound else ""

    changes: list[R.ProposedChange] = []
    order = sorted(decision.passing, key=lambda g: (-(by_group[g].confidence or 0), -by_group[g].n, g))
    for g in order:
        e = by_group[g]
        info = fitted.model.factor_for(g)
        new_factor = decision.shipped_factor(g)
        verdict = decision.verdicts.get(g, "")
        # a step toward α claims no confidence: its safety needs none, and its size rests on an extrapolation
        common: dict[str, Any] = dict(
            category=g[0], complexity=g[1], n=e.n, confidence=None if g in decision.raised else e.confidence,
            backtest=e.backtest, direction=e.gate_direction,
            step_toward_alpha=e.step_toward_alpha if g in decision.raised else None,
            lowering=_lowering_record(decision.lowered[g]) if g in decision.lowered else None)
        old_factor = current.budget_factors.get(g)
        if new_factor is not None and new_factor != old_factor:
            changes.append(R.ProposedChange(coefficient="BUDGET_FACTORS", key=g, old=old_factor, new=new_factor,
                                            **common, interval=info.interval, verdict=verdict))
        change = _overhead_change(fit, current, g) if g in fit.overhead_groups else None
        if change is not None:
            rows = samples.rows_by_group()[samples.groups.index(g)]
            rows = rows[rows < decision.fit_rows]  # the fitted (older) part is a prefix
            rows = rows[samples.units.linear[samples.unit[rows]]]
            today = current.phase_overhead.get(g, current.default_phase_overhead)
            # the fitted overhead's 95 % interval, within what a coefficient may be (≥ 1): below 1 the data ask for
            # a non-positive overhead, which is never shipped
            lo, hi = overhead_interval(samples, rows, fit.coefficients, today) or (math.nan, math.nan)
            lo, hi = (max(lo, 1.0), max(hi, 1.0)) if not math.isnan(lo) else (lo, hi)
            changes.append(R.ProposedChange(
                coefficient="PHASE_OVERHEAD", key=g, old=change[0], new=change[1], **common,
                interval=(_num(lo, 1), _num(hi, 1)),
                verdict=f"ships with its group's budget factor (the factor is relative to the prediction this "
                        f"overhead gives): {verdict}{bound_note('PHASE_OVERHEAD', g)}",
            ))
    if decision.ship_weights:
        shipped_bt = decision.backtest["shipped"]  # weights ship only where the shipped replay ran
        for k in fit.weight_keys:
            old_w = current.token_weights.get(k)
            new_w = fit.coefficients.token_weights.get(k)
            if new_w == old_w or new_w is None:
                continue
            lo_w, hi_w = fit.weight_interval.get(k, (math.nan, math.nan))
            agree = fit.weight_confidence.get(k)
            changes.append(R.ProposedChange(
                coefficient="TOKEN_WEIGHTS", key=k, old=old_w, new=new_w, category=None, complexity=None,
                n=fit.weight_n.get(k, 0), confidence=_num(agree), interval=(_num(lo_w, 1), _num(hi_w, 1)),
                backtest=R.GroupBacktest(**shipped_bt.summary().model_dump()),
                verdict=(f"{_num(agree, 2)} of the bootstrap refits agree on its direction; "
                         f"{decision.weights_verdict}{bound_note('TOKEN_WEIGHTS', k)}"),
            ))
    return changes, fit_changes


def _targets(samples: SampleSet, params: Params, groups: list[R.GroupEntry]) -> R.CollectionTargets:
    enough = sum(1 for g in groups if g.n >= params.min_samples)
    phases = samples.summary.successful_phases
    return R.CollectionTargets(
        successful_phases=phases,
        groups_with_enough_samples=enough,
        phase_targets=[R.Target(target=t, label=label, met=phases >= t) for t, label in COLLECTION_PHASE_TARGETS],
        group_targets=[R.Target(target=t, label=label, met=enough >= t) for t, label in COLLECTION_GROUP_TARGETS],
    )


def _success_metrics(samples: SampleSet, params: Params, groups: list[R.GroupEntry]) -> R.SuccessMetrics:
    eligible = [g for g in groups if g.n >= params.min_samples]
    high = [g for g in eligible if (g.confidence or 0) >= params.confidence_threshold]
    lo, hi = SUCCESS_MEDIAN_RANGE
    in_range = [g for g in eligible if g.median_ratio is not None and lo <= g.median_ratio <= hi]
    return R.SuccessMetrics(
        success_events_ratio=round(samples.summary.success_rate_all, 4),
        success_events_at_least_half=samples.summary.success_rate_all >= 0.5,
        high_confidence_groups=len(high),
        at_least_one_high_confidence_group=bool(high),
        median_ratio_range=(lo, hi),
        groups_median_in_range=len(in_range),
        groups_eligible=len(eligible),
        all_median_ratios_in_range=bool(eligible) and len(in_range) == len(eligible),
        all_confidences_at_threshold=bool(eligible) and len(high) == len(eligible),
    )


def _sources(samples: SampleSet) -> R.Sources:
    models = [R.SourceModel.model_validate(m) for m in samples.sources]
    total = sum(m.samples for m in models)
    models = [m.model_copy(update={"share": round(m.samples / total, 4) if total else None}) for m in models]
    simulated = None if not models else any(m.simulated for m in models)
    return R.Sources(simulated=simulated, models=models)


def _backtest(samples: SampleSet, decision: Decision) -> R.Backtest:
    """The held-out replay of every method, the drift comparison and each group's figures."""
    test_n = decision.backtest["current"].n or 0
    groups = [
        R.BacktestGroup(category=g[0], complexity=g[1], n=m["current"].n or 0,
                        **{name: v.group_method() for name, v in m.items()})
        for g, m in sorted(decision.group_backtest.items())
    ]
    return R.Backtest(
        **decision.backtest,
        calibration_under_drift=decision.drift_summary,
        train_n=samples.n - test_n, test_n=test_n,
        split_at=_iso(float(samples.epoch[samples.n - test_n])) if test_n else None,
        groups=groups,
    )


def _gate_reasons(groups: list[R.GroupEntry], decision: Decision, passed: bool) -> list[str]:
    reasons: list[str] = []
    for e in groups:
        label = f"{e.category}/{e.complexity}"
        if e.key in decision.passing:
            reasons.append(f"{label}: proposed: {decision.verdicts.get(e.key, '')}")
        else:
            reasons.append(f"{label}: not proposed: " + "; ".join(decision.reasons.get(e.key, ["no factor"])))
    reasons.append(decision.weights_verdict)
    if decision.tested and decision.passing:
        reasons.append(f"shipped: {decision.shipped_verdict}")
    if not passed:
        reasons.insert(0, "no group passed the gate: nothing to propose")
    return reasons


def assemble(
    samples: SampleSet, params: Params, current: te.Coefficients, decision: Decision, today_ratio: np.ndarray
) -> R.CalibrationResult:
    """The result of ``decision`` on ``samples`` (``today_ratio``: every call's ceiling today ÷ its prediction
    under the coefficients that ship)."""
    groups = _group_entries(samples, params, decision, today_ratio)
    changes, fit_changes = _changes(samples, params, current, decision, groups)
    # the method's reviewed part (aci: each shipped group's factor curve, and the settings), from the same
    # older calls the shipped factors were fitted on
    entry = {e.key: e for e in groups}
    shipped_factors = {g: f for g in decision.passing if (f := decision.shipped_factor(g)) is not None}
    changes += drift.adaptive_changes(
        params.spec, params.alpha,
        drift.CalibrationRows.of(samples, np.arange(decision.fit_rows), np.empty(0, dtype=int)),
        decision.fitted.predicted, shipped_factors, current,
        {g: {"n": entry[g].n, "confidence": entry[g].confidence, "backtest": entry[g].backtest}
         for g in shipped_factors if g in entry},
    )
    passed = bool(changes)
    fitted = decision.fitted
    counts = R.SampleCounts.model_validate(samples.counts)
    metadata = R.Metadata(
        total_samples=samples.n,
        sample_counts=counts,
        retries_excluded=counts.retries_excluded or 0,
        retries_known=samples.retries_known,
        sources=_sources(samples),
        run_ids=list(samples.summary.run_ids),
        time_span=R.TimeSpan(start=_iso(float(samples.epoch.min())), end=_iso(float(samples.epoch.max()))),
        method_version=R.METHOD_VERSION,
        method=params.method,
        method_params=params.spec.params(params.alpha, drift.BACKTEST_FEEDBACK),
        target_truncation=params.target_truncation,
        holdout_fraction=params.holdout_fraction,
        confidence_threshold=params.confidence_threshold,
        min_samples=params.min_samples,
        include_run_ids=list(params.include_run_ids),
        gate_level=stats.GATE_LEVEL,
        min_evidence_calls=stats.min_evidence_calls(params.alpha),
        max_coefficient_step=MAX_STEP,
        max_rise_per_run=params.max_rise_per_run,
        coefficients_version=current.version,
        weights_free=decision.ship_weights,
        fit_status=fitted.fit.status,
        fit_samples=decision.fit_rows,
        fitted_rows=fitted.fit.fitted_rows,
        frozen_weights=list(fitted.fit.frozen_weights),
        pooling=R.Pooling(
            sigma=_num(fitted.model.sigma), tau2_category=_num(fitted.model.tau2_category, 6),
            tau2_group=_num(fitted.model.tau2_group, 6),
            global_location_ratio=_num(math.exp(fitted.model.global_location)),
        ),
        coverage_actual_max_tokens=round(samples.summary.coverage_actual_max_tokens, 4),
        spellings_normalised=samples.summary.spellings,
    )
    return R.CalibrationResult(
        metadata=metadata,
        gate=R.Gate(
            passed=passed,
            reasons=_gate_reasons(groups, decision, passed),
            weights=R.WeightsVerdict(changed=decision.ship_weights, verdict=decision.weights_verdict),
            shipped=R.ShippedVerdict(passed=passed,
                                     verdict=decision.shipped_verdict if passed else "nothing ships"),
        ),
        proposed_changes=changes,
        coefficient_fit=fit_changes,
        groups=groups,
        backtest=_backtest(samples, decision),
        collection_targets=_targets(samples, params, groups),
        success_metrics=_success_metrics(samples, params, groups),
        docs_truncation=[R.DocRow.model_validate(r) for r in samples.summary.docs_rows],
    )
