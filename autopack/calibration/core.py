"""The calibration itself, as a pure function of a ``SampleSet`` and the parameters (no I/O).

``calibrate`` returns the result (``result.CalibrationResult``, built from the decision by ``assemble``) minus the
file paths and the database id (the thin shell in ``runner`` adds those). ``decide`` is one pass, in this order:

1. split the samples in time: the older (1 − F) are fitted, the newest F are held out;
2. fit the coefficients on the older part (``fit.fit_coefficients``: the bootstrap decides which
   TOKEN_WEIGHTS changes the data support), with and without those weight changes, and each group's
   factor from its own calls (``model``);
3. replay the held-out calls (``heldout_ceilings``) under today's ceilings, the original's median-ratio
   method and the proposal (every group refitted: the "full refit");
4. TOKEN_WEIGHTS are shared by every group, so they are decided first, per group: on no group's held-out
   calls may the proposal with the new weights do worse than the same proposal with today's weights, and
   it must reserve less on all of them; a weight on its ×2 step bound is not shipped, nor weights that with
   today's factors cut more of some group's calls (all of them) than today by more than 0.5 % of the group's
   (``gate.weights``);
5. gate each group against today, from either side of α: a lower reserve needs ≥ min_samples, a fitted
   factor (a distribution-free ``km_conformal`` one with confidence ≥ threshold, where the descent ends, or one
   that rests on an assumption: that one claims nothing and ends no descent), and on its own held-out calls the
   truncation test (one-sided exact binomial on the upper end of the interval, evidence-aware:
   ``backtest.truncation_verdict``) and, for a distribution-free factor, fewer tokens reserved per token used
   than today; what such a group
   ships is a bounded step down (``step.bounded_lowering``: at most +0.5 pp of estimated truncation and ×0.8
   a run (less below 120 calls), never aimed below the estimated (1 − 0.75α) quantile), not the tested
   factor itself: a held-out test on a handful of calls cannot see a rise of a few points, and lowerings
   passed on 3–13 held-out calls raised groups' true truncation by up to 20 pp in a closed loop. A group
   (not above α) whose fitted factor fails its held-out truncation test or rests on an assumption, or that has
   fewer than 120 calls, still ships the bounded step, with half the rise bound, judged on those held-out calls
   by step 6: the test is of the fitted factor, not of what ships, and refusing every step kept such groups at
   1.7–2.8× the oracle's reserve, and groups of 1–7 calls a week far above their quantile for the 3–8 weeks a
   distribution-free factor needs (a factor that rests on an assumption: only while today's ceilings cut at
   most 0.75α of its calls, and the step is held by its bounds alone). A group that today truncates above α and
   cannot pass that gets a step toward α instead (``step``: a raise under which no call's ceiling falls, so
   its truncation can only fall); a raised group comes back down only by the bounded lowering;
6. the shipped configuration (only what passed) is replayed on the same held-out calls and, on the calls
   whose ceiling it lowers or moves, must pass the same two tests as a whole (a raised group's calls must
   only keep or raise their ceilings); groups are dropped, worst first, until it does.

What ships is exactly what was tested: the values fitted on the older part, whose held-out replay is
``backtest.shipped``. Refitting on all calls after the test would ship numbers nobody tested, and, since
a group ships only when its factor looks cheaper than today, would ship the luckiest-low draws
(simulated: 13–18 % truncation at α = 10 % for groups of 30). The newest calls are the test; next run's
window moves on.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from pydantic import ConfigDict, field_validator

from autopack import token_estimator as te
from autopack.calibration import drift, stats
from autopack.calibration import result as R
from autopack.calibration.assemble import assemble
from autopack.calibration.backtest import (
    evaluate,
    per_group,
    reserved_better,
    truncation_range,
    truncation_verdict,
)
from autopack.calibration.fit import FitResult, fit_coefficients
from autopack.calibration.model import FactorModel, fit_factor_model
from autopack.calibration.samples import Group, SampleSet, configuration_ceiling, predict
from autopack.calibration.step import (
    AIM,
    LOWER_STEP_CALLS,
    RECENT_DAYS,
    Lowering,
    PooledShape,
    Step,
    TailReading,
    bounded_lowering,
    log_ratio,
    pooled_shape,
    step_toward_alpha,
)
from autopack.params import CalibrationParams


class Params(CalibrationParams):
    """The statistics' parameters: ``CalibrationParams`` (defaults, bounds, checks) and the runs selected.

    ``method`` is resolved: empty means the drift benchmark's choice (``drift.DEFAULT_METHOD``).
    """

    model_config = ConfigDict(frozen=True)

    include_run_ids: tuple[str, ...] = ()

    @field_validator("method", mode="after")
    @classmethod
    def _resolve_method(cls, method: str | None) -> str:
        return method or drift.DEFAULT_METHOD

    @property
    def alpha(self) -> float:
        return self.target_truncation

    @property
    def spec(self) -> drift.MethodSpec:
        return drift.method_spec(self.method)  # type: ignore[arg-type]


@dataclass
class Fitted:
    """One complete fit (coefficients + factor model) on a subset of the rows."""

    fit: FitResult
    predicted: np.ndarray  # every row, under fit.coefficients
    model: FactorModel


@dataclass
class Decision:
    """Everything the gate decided, and the backtests it decided on."""

    fitted: Fitted  # the chosen fit of the older part (all calls when nothing is held out): what ships
    tested: bool  # there are held-out calls
    ship_weights: bool
    weights_verdict: str
    backtest: dict[str, R.MethodBacktest]  # per method (``backtest.evaluate``): on all held-out calls
    group_backtest: dict[Group, dict[str, R.MethodBacktest]]  # per group and method: on its held-out calls
    passing: list[Group]
    reasons: dict[Group, list[str]]
    verdicts: dict[Group, str]
    shipped_verdict: str
    fit_rows: int
    drift_summary: R.DriftSummary | None = None  # backtest.calibration_under_drift
    #: every group's step toward α (raised or not, and why); ``raised`` the groups that ship a raise
    steps: dict[Group, Step] = field(default_factory=dict)
    raised: dict[Group, float] = field(default_factory=dict)
    #: the groups that ship a lowering, at its bounded factor (``step.bounded_lowering``)
    lowered: dict[Group, Lowering] = field(default_factory=dict)
    #: every call's ceiling today (today's coefficients and factors)
    today: np.ndarray = field(default_factory=lambda: np.empty(0))

    def shipped_configuration(self, current: te.Coefficients) -> tuple[te.Coefficients, dict[Group, float]]:
        """The coefficient set and budget factors that merging the pull request ships."""
        return _shipped(current, self.fitted, self.passing, self.ship_weights, _new_factors(self.raised, self.lowered))

    def shipped_factor(self, g: Group) -> float | None:
        """The factor a passing group ships: its raise, its bounded lowering, else its fitted factor."""
        return _new_factors(self.raised, self.lowered).get(g, self.fitted.model.factor_for(g).factor)


def _new_factors(raised: dict[Group, float], lowered: dict[Group, Lowering]) -> dict[Group, float]:
    """The budget factors the steps set: each raised group's, each lowered group's bounded factor."""
    return {**{g: low.factor for g, low in lowered.items() if low.factor is not None}, **raised}


def _log_ratio(y: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    ratio: np.ndarray = np.log(y / np.maximum(predicted, 1.0))
    return ratio


def original_medians(samples: SampleSet, rows: np.ndarray, min_samples: int) -> dict[Group, float]:
    """The original's method: per group with ≥ min_samples clean successes, sorted(actual/predicted)[n//2]."""
    keep = np.zeros(samples.n, dtype=bool)
    keep[rows] = True
    keep &= samples.success & samples.observed
    out: dict[Group, float] = {}
    for g, idx in samples.rows_by_group().items():
        clean = idx[keep[idx]]
        if clean.size >= min_samples:
            out[samples.groups[g]] = stats.original_median(samples.y[clean] / np.maximum(samples.pred_current[clean], 1))
    return out


def _factor_model(samples: SampleSet, rows: np.ndarray, predicted: np.ndarray, alpha: float) -> FactorModel:
    """The factor model of ``rows``, a prefix 0..m−1 of the samples (all of them, or the older part)."""
    m = int(rows.size)
    r = _log_ratio(samples.y[:m], predicted[:m])
    blocks = {g: b[: int(np.searchsorted(b, m))] for g, b in samples.rows_by_group().items()}
    return fit_factor_model(samples.groups, samples.group[:m], r, samples.observed[:m], alpha, blocks=blocks)


def _fitted(samples: SampleSet, rows: np.ndarray, fit: FitResult, alpha: float) -> Fitted:
    predicted = predict(samples, fit.coefficients)
    return Fitted(fit, predicted, _factor_model(samples, rows, predicted, alpha))


def _weights_changed(current: te.Coefficients, fit: FitResult) -> bool:
    return any(fit.coefficients.token_weights.get(k) != current.token_weights.get(k) for k in fit.weight_keys)


def _shipped(
    current: te.Coefficients, fitted: Fitted, passing: list[Group], ship_weights: bool,
    chosen: dict[Group, float] | None = None,
) -> tuple[te.Coefficients, dict[Group, float]]:
    """The coefficient set and factors that would ship: only passing groups (and weights if allowed); ``chosen``
    the factors that ship instead of the fitted ones (raises, bounded lowerings)."""
    new = fitted.fit.coefficients
    overhead = dict(current.phase_overhead)
    for g in passing:
        if g in fitted.fit.overhead_groups and new.phase_overhead.get(g) is not None:
            overhead[g] = new.phase_overhead[g]
    weights = dict(new.token_weights) if ship_weights else dict(current.token_weights)
    factors = dict(current.budget_factors)
    for g in passing:
        factor = (chosen or {}).get(g, fitted.model.factor_for(g).factor)
        if factor is not None:
            factors[g] = factor
    coeffs = dataclasses.replace(
        current, phase_overhead=overhead, token_weights=weights, budget_factors=factors,
        version=f"{current.version}+shipped",
    )
    return coeffs, factors


@dataclass(frozen=True)
class HeldOut:
    """The time-ordered split a backtest replays: the older calls fit, the newest ``test`` are replayed."""

    samples: SampleSet
    train_rows: np.ndarray
    test_rows: np.ndarray
    test: SampleSet
    reviewed: te.Coefficients  # today's file: its adaptive curves are what runs for unchanged groups

    @classmethod
    def of(cls, samples: SampleSet, train_rows: np.ndarray, test_rows: np.ndarray,
           reviewed: te.Coefficients) -> HeldOut:
        test = samples.subset(np.isin(np.arange(samples.n), test_rows))
        return cls(samples, train_rows, test_rows, test, reviewed)

    def drift_rows(self) -> drift.CalibrationRows:
        return drift.CalibrationRows.of(self.samples, self.train_rows, self.test_rows)


def heldout_ceilings(
    held: HeldOut, coefficients: te.Coefficients, factors: dict[Group, float], params: Params, *,
    adapt: list[Group] | None = None, spec: drift.MethodSpec | None = None,
) -> np.ndarray:
    """The held-out calls' ceilings (oldest first) under a proposal fitted on the older calls.

    The one place the held-out replay happens (the proposal, the shipped configuration and the weights
    decision all come through here). The static method keeps each group's factor fixed for every
    held-out call; an adaptive method (``params.method``, or ``spec``) moves the factor of the groups in
    ``adapt`` (default: every group with a factor) as the held-out calls it has already seen come back,
    with delayed feedback (``drift.replay_configuration``), so the gate tests what would run.
    """
    _, ceiling = configuration_ceiling(held.test, coefficients, factors)
    spec = spec or params.spec
    if held.test.n == 0 or (spec.name == "static" and not held.reviewed.adaptive_curves):
        return ceiling
    return drift.replay_configuration(spec, params.alpha, held.drift_rows(), predict(held.samples, coefficients),
                                      factors, ceiling, adapt=adapt, reviewed=held.reviewed)


def _today_ceilings(held: HeldOut, current: te.Coefficients, params: Params) -> np.ndarray:
    """Today's ceilings on the held-out calls: today's factors, and today's reviewed adaptive curves if any."""
    return heldout_ceilings(held, current, dict(current.budget_factors), params, spec=drift.MethodSpec("static"))


def _split(samples: SampleSet, params: Params) -> tuple[np.ndarray, np.ndarray]:
    n = samples.n
    n_test = int(math.floor(params.holdout_fraction * n + 0.5)) if params.holdout_fraction > 0 else 0
    n_test = min(n_test, max(0, n - 1))
    rows = np.arange(n)
    return rows[: n - n_test], rows[n - n_test :]


def _proposal_factors(current: te.Coefficients, fitted: Fitted, groups: list[Group]) -> dict[Group, float]:
    return {**current.budget_factors, **fitted.model.factors(groups)}


def _decide_weights(
    held: HeldOut, params: Params, current: te.Coefficients, free: Fitted | None, frozen: Fitted,
    today: np.ndarray, today_held: np.ndarray,
) -> tuple[bool, str]:
    """Ship the weight changes? Judged per group, like every change: on each group's held-out calls the proposal
    with them must not do worse than the same proposal with today's weights (a group that passes the truncation
    test without them passes it with them; one that fails it does not truncate more), and on all held-out
    calls it must reserve less. (A test on all calls at once failed whenever some group truncated above α
    today, whatever the weights did.) ``today``: every call's ceiling today; ``today_held``: the held-out
    calls' (``_today_ceilings``)."""
    if free is None:
        supported = "" if not frozen.fit.frozen_weights else (
            f" ({len(frozen.fit.frozen_weights)} change(s) the bootstrap did not support were frozen)")
        return False, "no TOKEN_WEIGHTS change proposed by the fit" + supported
    test, groups = held.test, held.samples.groups
    if test.n == 0:
        return False, "TOKEN_WEIGHTS changes not shipped: no held-out calls to check them on"
    alpha = params.alpha
    ceilings = {
        "current": today_held,
        "with": heldout_ceilings(held, free.fit.coefficients, _proposal_factors(current, free, groups), params),
        "without": heldout_ceilings(held, frozen.fit.coefficients, _proposal_factors(current, frozen, groups), params),
    }
    with_w, without = (evaluate(ceilings[k], test.y, test.observed, alpha) for k in ("with", "without"))
    worse = []
    for g, m in per_group(groups, test.group, ceilings, test.y, test.observed, alpha).items():
        ok_with = truncation_verdict(m["with"], m["current"], alpha)[0]
        ok_without = truncation_verdict(m["without"], m["current"], alpha)[0]
        more = (m["with"].truncations_upper or 0) > (m["without"].truncations_upper or 0)
        if (ok_without and not ok_with) or (not ok_without and more):
            worse.append(f"{g[0]}/{g[1]} {truncation_range(m['with'])} vs {truncation_range(m['without'])}")
    # a weight on its ×½ / ×2 bound carries the prediction's level, which each factor absorbs: shipped, the
    # next run asks for the same again (a walk to the bound week after week); only the ratios are identified
    walking = [f"{k[0]}/{k[1]}" for c, k in free.fit.at_bound if c == "TOKEN_WEIGHTS"]
    cut_more = _weights_cut_more(held.samples, today, current, free, params.max_rise_per_run)
    cheaper = reserved_better(with_w, without)
    agree = ", ".join(f"{k[0]}/{k[1]} {v:.2f}" for k, v in sorted(free.fit.weight_confidence.items()))
    verdict = ("no group's held-out truncation worse than with today's weights" if not worse else
               "held-out truncation worse than with today's weights in " + ", ".join(worse))
    if walking:
        verdict += ("; " + ", ".join(walking) + " on the ×2 step bound: the data ask for the prediction's level, "
                    "which the budget factors absorb, not for the weights' ratios")
    if cut_more:
        verdict += ("; with today's factors they would cut more of these groups' calls (all calls, more than "
                    f"{params.max_rise_per_run:.1%} of each group's) than today's coefficients: " + ", ".join(cut_more))
    detail = (f"on all {with_w.n} held-out calls, per group: {verdict}; reserved/used "
              f"{with_w.reserved_over_used:.3f} vs {without.reserved_over_used:.3f} with today's weights"
              + (f"; bootstrap agreement on each direction: {agree}" if agree else ""))
    if not worse and not walking and not cut_more and cheaper:
        return True, "TOKEN_WEIGHTS changes ship: " + detail
    return False, "TOKEN_WEIGHTS changes not shipped: " + detail


def _weights_cut_more(
    samples: SampleSet, today: np.ndarray, current: te.Coefficients, free: Fitted, max_rise: float,
) -> list[str]:
    """The groups whose calls (all of them, not only the held-out ones) the fitted weights, with today's budget
    factors, cut more of than today's coefficients do (``today``: their ceilings), by more than ``max_rise``
    (``--max-rise-per-run``) of the group's calls.

    A weight moves the ceilings of every group that uses it, including groups whose factor does not change:
    held-out calls, a handful per group, cannot see what that does to them (in a closed loop a weight halved on
    such evidence raised a group that kept its factor from 4 % to 26 % true truncation). A group's own calls
    under its own ceilings can: the bound a lowering gets (``step.bounded_lowering``), here on the count.
    """
    _, with_weights = configuration_ceiling(samples, free.fit.coefficients, current.budget_factors)
    out = []
    for gi, idx in sorted(samples.rows_by_group().items()):
        more = float(np.mean(samples.y[idx] >= with_weights[idx]) - np.mean(samples.y[idx] >= today[idx]))
        if more > max_rise:
            g = samples.groups[gi]
            out.append(f"{g[0]}/{g[1]} +{more:.1%}")
    return out


#: Above this ``--confidence-threshold`` (its default) a lowering needs a distribution-free factor.
_DEFAULT_THRESHOLD: float = CalibrationParams.default("confidence_threshold")


def _gate_group(
    g: Group, fitted: Fitted, group_bt: dict[Group, dict[str, R.MethodBacktest]], params: Params
) -> tuple[list[str], str, str, str]:
    """(reasons it fails, the verdict line if it passes, the fitted factor's failed held-out truncation test or
    "", why its factor is not distribution-free or ""). The last two are not reasons: what ships is a bounded
    step (above a distribution-free fitted factor), tested on the same held-out calls by the shipped replay
    (``_shipped_check``); a factor that rests on an assumption is never shipped itself and ends no descent, so its
    held-out reserve is reported, not required to fall."""
    fit = fitted.model.groups.get(g)
    if fit is None:
        return ["no calls in the fitted (older) part: nothing to fit a factor on"], "", "", ""
    info = fit.factor
    why: list[str] = []
    assumed = ""
    if fit.n < params.min_samples:
        why.append(f"{fit.n} fitted samples < --min-samples {params.min_samples}")
    if info.factor is None:
        why.append(f"no budget factor ({info.note or 'too few samples'})")
    elif info.method != "km_conformal" or info.assumption is not None:
        assumed = (f"{info.method} factor {info.factor:.3f} reported, not shipped: it rests on an assumption the "
                   f"held-out calls cannot check ({info.assumption}); a distribution-free factor needs "
                   f"{stats.min_confident_samples(params.alpha)} fitted calls and a visible quantile")
        if params.confidence_threshold > _DEFAULT_THRESHOLD:  # stricter than the default: no step on a factor
            why.append(f"{assumed}; with --confidence-threshold above its default {_DEFAULT_THRESHOLD:g} only "
                       "groups with a distribution-free factor are lowered")
            assumed = ""
    elif info.confidence < params.confidence_threshold:
        why.append(f"confidence {info.confidence:.2f} < threshold {params.confidence_threshold:.2f}")
    bt = group_bt.get(g)
    verdict = truncation_failed = ""
    if not bt:
        why.append("no held-out calls in the backtest")
    else:
        prop, cur = bt["proposed"], bt["current"]
        ok, line = truncation_verdict(prop, cur, params.alpha)
        if not ok:
            truncation_failed = line
        test_line = line if ok else (f"its fitted factor failed the held-out test ({line}), so what ships, the "
                                     "bounded step, is judged on those calls by the shipped replay")
        if not reserved_better(prop, cur) and not assumed:
            why.append(f"held-out reserved/used {prop.reserved_over_used:.3f} not below today's "
                       f"{cur.reserved_over_used:.3f}")
        if info.factor is not None and assumed:
            verdict = (f"{info.method} factor {info.factor:.3f} from its own {fit.n} calls, not distribution-free "
                       f"({info.assumption}): it claims no confidence and ends no descent; {test_line}; the "
                       f"fitted factor's held-out reserved/used {prop.reserved_over_used:.3f} (today's "
                       f"{cur.reserved_over_used:.3f})")
        elif info.factor is not None:
            verdict = (f"{info.method} factor {info.factor:.3f} from its own {fit.n} calls (confidence "
                       f"{info.confidence:.2f} ≥ {params.confidence_threshold:.2f}); {test_line}; the fitted factor's "
                       f"held-out reserved/used {prop.reserved_over_used:.3f} < today's {cur.reserved_over_used:.3f}")
    return why, verdict, truncation_failed, assumed


def _shipped_check(
    held: HeldOut, params: Params, current: te.Coefficients, fitted: Fitted,
    passing: list[Group], ship_weights: bool, current_ceiling: np.ndarray,
    group_bt: dict[Group, dict[str, R.MethodBacktest]], raised: dict[Group, float], lowered: dict[Group, Lowering],
) -> tuple[list[Group], R.MethodBacktest, np.ndarray, str, dict[Group, str]]:
    """Replay the shipped configuration on the held-out calls; drop groups (worst first) until it passes.

    Judged on the held-out calls whose ceiling the pull request changes (all of them when the weights
    ship, else the shipped groups' calls): the same truncation test against today and a lower reserve.
    Calls it does not change keep today's ceiling, good or bad, and are no verdict on the change. A raised
    group (a step toward α) is judged by its own safety argument instead: none of its held-out calls may get
    a lower ceiling than today (then its truncation can only fall); its calls are left out of the test.
    """
    alpha = params.alpha
    test = held.test
    keep = list(passing)
    dropped: dict[Group, str] = {}
    group_ids = {g: i for i, g in enumerate(held.samples.groups)}

    def badness(g: Group) -> tuple[int, float]:
        prop, cur = group_bt[g]["proposed"], group_bt[g]["current"]
        assert prop.reserved_over_used is not None and cur.reserved_over_used  # a passing group has held-out calls
        return ((prop.truncations_upper or 0) - (cur.truncations or 0),
                prop.reserved_over_used / cur.reserved_over_used)

    while True:
        coeffs, factors = _shipped(current, fitted, keep, ship_weights and bool(keep), _new_factors(raised, lowered))
        ceiling = heldout_ceilings(held, coeffs, factors, params, adapt=keep)
        shipped = evaluate(ceiling, test.y, test.observed, alpha)
        if not keep:
            return keep, shipped, ceiling, "nothing ships", dropped
        up = [g for g in keep if g in raised]
        fell = [g for g in up if np.any((ceiling < current_ceiling)[test.group == group_ids[g]])]
        if fell:
            for g in fell:
                keep.remove(g)
                dropped[g] = ("dropped: with the rest of the pull request, some of its held-out calls got a lower "
                              "ceiling")
            continue
        down = [g for g in keep if g not in raised]
        changed = (ceiling != current_ceiling) & ~np.isin(test.group, [group_ids[g] for g in up])
        raise_line = (f"{len(up)} group(s) stepped toward α, none of whose held-out calls gets a lower ceiling"
                      if up else "")
        apart = " other than the raised groups'" if up else ""  # theirs are judged by the raise's own rule
        if not down or not changed.any():
            return keep, shipped, ceiling, raise_line or "no held-out call's ceiling changes", dropped
        mine = evaluate(ceiling[changed], test.y[changed], test.observed[changed], alpha)
        today = evaluate(current_ceiling[changed], test.y[changed], test.observed[changed], alpha)
        ok, line = truncation_verdict(mine, today, alpha)
        if ok and reserved_better(mine, today):
            return keep, shipped, ceiling, (
                f"on the {mine.n} held-out calls whose ceiling it changes{apart}: {line}; reserved/used "
                f"{mine.reserved_over_used:.3f} < today's {today.reserved_over_used:.3f}"
                + (f"; {raise_line}" if raise_line else "")), dropped
        worst = max(down, key=badness)
        keep.remove(worst)
        dropped[worst] = (f"dropped: with it, the calls the pull request changes{apart} failed together ({line}; "
                          f"reserved/used {mine.reserved_over_used:.3f} vs today's {today.reserved_over_used:.3f})")


def decide(samples: SampleSet, params: Params, current: te.Coefficients) -> Decision:
    """Fits, backtest and gate (steps 1–6 of the module docstring)."""
    alpha = params.alpha
    train_rows, test_rows = _split(samples, params)
    tested = bool(test_rows.size)
    fit_rows = train_rows if tested else np.arange(samples.n)
    held = HeldOut.of(samples, train_rows, test_rows, current)
    test = held.test

    free_fit = fit_coefficients(samples, fit_rows, current, free_weights=True,
                                confidence_threshold=params.confidence_threshold)
    frozen = _fitted(samples, fit_rows, fit_coefficients(samples, fit_rows, current, free_weights=False,
                                                          confidence_threshold=params.confidence_threshold), alpha)
    frozen.fit.frozen_weights = list(free_fit.frozen_weights)
    free = _fitted(samples, fit_rows, free_fit, alpha) if _weights_changed(current, free_fit) else None
    _, today = configuration_ceiling(samples, current, current.budget_factors)  # every call's ceiling today
    today_held = _today_ceilings(held, current, params) if tested else np.empty(0)  # ... the held-out calls'
    ship_weights, weights_verdict = _decide_weights(held, params, current, free, frozen, today, today_held)
    fitted = free if ship_weights and free is not None else frozen

    ceilings: dict[str, np.ndarray] = {}
    drift_summary: R.DriftSummary | None = None
    if tested:
        ceilings["current"] = today_held
        medians = original_medians(samples, train_rows, params.min_samples)
        med = np.array([medians.get(g, math.nan) for g in samples.groups])[test.group]
        original = ceilings["current"].copy()
        has = ~np.isnan(med)
        original[has] = np.ceil(np.maximum(test.pred_current[has], 1) * med[has])
        ceilings["original_median"] = original
        proposal_factors = _proposal_factors(current, fitted, samples.groups)
        ceilings["proposed"] = heldout_ceilings(held, fitted.fit.coefficients, proposal_factors, params)
    else:  # nothing held out: the methods are still listed, with n = 0
        ceilings = {name: np.empty(0) for name in ("current", "original_median", "proposed")}
    backtest = {name: evaluate(c, test.y, test.observed, alpha) for name, c in ceilings.items()}
    group_bt = per_group(samples.groups, test.group, ceilings, test.y, test.observed, alpha) if test.n else {}

    readings = _tail_readings(samples, fitted, today, _pooled_shape(samples, fitted))
    steps = _steps(samples, params, fitted, today, readings)
    raised: dict[Group, float] = {}
    lowered: dict[Group, Lowering] = {}
    reasons: dict[Group, list[str]] = {}
    verdicts: dict[Group, str] = {}
    passing: list[Group] = []
    for gi in sorted(samples.rows_by_group()):
        g = samples.groups[gi]
        step = steps[g]
        why, verdict, truncation_failed, assumed = _gate_group(g, fitted, group_bt, params)
        if truncation_failed and (why or step.above_alpha):  # a group above α gets its raise, not a lowering
            why.append(truncation_failed)
        if assumed and (why or step.above_alpha):
            why.append(assumed)
        elif assumed and step.today_rate > AIM * alpha:  # its cut calls are what the assumption extrapolates over
            why.append(f"{assumed}; a factor that rests on an assumption lowers a group only while today's "
                       f"ceilings cut at most {AIM * alpha:.2%} of its calls, where a lowering stops (they cut "
                       f"{step.today_truncations} of its {step.n})")
        if step.recent_calls and step.recent_truncations / step.recent_calls > alpha and not step.above_alpha:
            why.append(f"its newest {step.recent_calls} calls ({RECENT_DAYS} days) are cut more often than α "
                       f"({step.recent_truncations} of them): no lowering while they are")
        lowering = (_lowering(samples, fitted, g, params, bool(truncation_failed or assumed), readings[g], today,
                              ends_descent=not assumed)
                    if not why else None)
        if lowering is not None and lowering.factor is None:
            why = [lowering.verdict] + [line for line in (truncation_failed, assumed) if line]
        if not why and lowering is not None and lowering.factor is not None:
            # a factor that passes its held-out test, shipped as a bounded lowering
            passing.append(g)
            lowered[g] = lowering
            verdicts[g] = f"{verdict}; {lowering.verdict}"
        elif step.above_alpha and step.raises and step.n >= params.min_samples and tested:
            raised[g] = step.factor  # type: ignore[assignment]
            passing.append(g)
            verdicts[g] = step.verdict
            why = []
        elif step.above_alpha:  # only a step toward α could help it: say why there is none
            why = [step.verdict if not step.raises else f"{step.verdict}; but "
                   + (f"{step.n} calls < --min-samples {params.min_samples}" if step.n < params.min_samples
                      else "no held-out calls: nothing can be shipped")] + why
        reasons[g] = why

    shipped_verdict = "no held-out calls: nothing can be shipped"
    if tested:
        passing, backtest["shipped"], shipped_ceiling, shipped_verdict, dropped = _shipped_check(
            held, params, current, fitted, passing, ship_weights, ceilings["current"], group_bt, raised, lowered)
        for g, methods in per_group(samples.groups, test.group, {"shipped": shipped_ceiling}, test.y,
                                    test.observed, alpha).items():
            group_bt[g]["shipped"] = methods["shipped"]
        for g, low in lowered.items():
            if g in verdicts and g in group_bt:
                verdicts[g] += _shipped_line(low, group_bt[g])
        for g, dropped_why in dropped.items():
            reasons[g] = [dropped_why]
            verdicts.pop(g, None)
            raised.pop(g, None)
            lowered.pop(g, None)
    if ship_weights and not passing:
        ship_weights = False
        weights_verdict = "TOKEN_WEIGHTS changes not shipped: no group passed the gate"
    if tested:  # every drift method on what ships, for the report; the chosen method's row is the gate's replay
        coeffs, factors = _shipped(current, fitted, passing, ship_weights, _new_factors(raised, lowered))
        _, static_shipped = configuration_ceiling(test, coeffs, factors)
        drift_summary = drift.compare_in_calibration(alpha, held.drift_rows(), predict(samples, coeffs), factors,
                                                     static_shipped, chosen=(params.spec.name, shipped_ceiling))
    return Decision(fitted, tested, ship_weights, weights_verdict, backtest, group_bt, passing, reasons, verdicts,
                    shipped_verdict, int(fit_rows.size), drift_summary, steps, raised, lowered, today)


def _shipped_line(low: Lowering, bt: dict[str, R.MethodBacktest]) -> str:
    """What the bounded step itself does on the group's held-out calls: the verdict's other held-out figures are
    its fitted factor's, and a reviewer compares the verdict with the tables, which show what ships."""
    mine, cur = bt["shipped"], bt["current"]
    if low.factor is None or mine.reserved_over_used is None or cur.reserved_over_used is None:
        return ""
    return (f"; what ships ({low.factor:.3f}) on the same {mine.n} held-out calls: truncation {_count(mine)} "
            f"(today's {_count(cur)}), reserved/used {mine.reserved_over_used:.3f} (today's "
            f"{cur.reserved_over_used:.3f})")


def _count(m: R.MethodSummary) -> str:
    """``k/n``, or ``k–K/n`` when censoring leaves the count a range."""
    low, high = m.truncations or 0, m.truncations_upper if m.truncations_upper is not None else m.truncations or 0
    return f"{low}/{m.n}" if low == high else f"{low}–{high}/{m.n}"


def _pooled_shape(samples: SampleSet, fitted: Fitted) -> PooledShape | None:
    """The groups' tail shape, pooled (``step.PooledShape``), under the predictions that ship."""
    return pooled_shape([(log_ratio(samples.y[idx], fitted.predicted[idx]), samples.observed[idx])
                         for _, idx in sorted(samples.rows_by_group().items())])


def _lowering(
    samples: SampleSet, fitted: Fitted, g: Group, params: Params, unconfirmed: bool, reading: TailReading,
    today: np.ndarray, *, ends_descent: bool,
) -> Lowering | None:
    """A passing group's bounded lowering (``step.bounded_lowering``), judged on all its calls like its step
    (``today``: every call's ceiling today; ``reading``: its tail, read once for both).

    Half the rise bound where the evidence is thin: its fitted factor failed the held-out test (the held-out calls
    saw cuts the fit did not) or rests on an assumption (``unconfirmed``), or the group has fewer than
    ``LOWER_STEP_CALLS`` calls. Measured in the closed loop (80 loops, docs/closed-loop.md): with the full bound on
    every group under 60 calls, 8 of 827 merged lowerings raised a group's true truncation by more than 1 pp (up to
    1.11 pp, all on 39–52 calls); with the half bound, 1 change of 1,580, under a drifting law (1.06 pp). On 60
    calls or more the full bound stayed within 0.8 pp. With each cut phase counted once (``samples.phase_retries``)
    the threshold is 120, as for the step (``step.LOWER_STEP_CALLS``)."""
    factor = fitted.model.factor_for(g).factor
    if factor is None:
        return None
    idx = samples.rows_by_group()[samples.groups.index(g)]
    thin = unconfirmed or idx.size < LOWER_STEP_CALLS
    rise = params.max_rise_per_run
    return bounded_lowering(samples.y[idx], samples.observed[idx], fitted.predicted[idx], today[idx], factor,
                            params.alpha, rise / 2 if thin else rise, ends_descent=ends_descent, reading=reading)


def _tail_readings(
    samples: SampleSet, fitted: Fitted, today: np.ndarray, shape: PooledShape | None,
) -> dict[Group, TailReading]:
    """Each group's ``step.TailReading`` under the predictions that ship and today's ceilings (``today``), its
    tail the pooled ``shape``: read once, by its step toward α and by its lowering."""
    return {samples.groups[gi]: TailReading(samples.y[idx], samples.observed[idx], fitted.predicted[idx], today[idx],
                                            shape)
            for gi, idx in sorted(samples.rows_by_group().items())}


def _steps(
    samples: SampleSet, params: Params, fitted: Fitted, today: np.ndarray, readings: dict[Group, TailReading],
) -> dict[Group, Step]:
    """Each group's step toward α (``step``), judged on all its calls: today's ceilings (``today``) and its quantile.

    A raise needs no held-out test to be safe (no call's ceiling falls), so the sizing quantile uses every
    call of the group, under the predictions that ship with it (the fitted coefficients).
    """
    everything = _factor_model(samples, np.arange(samples.n), fitted.predicted, params.alpha)
    out: dict[Group, Step] = {}
    for gi, idx in sorted(samples.rows_by_group().items()):
        g = samples.groups[gi]
        epoch = samples.epoch[idx]
        recent = epoch >= epoch.max() - RECENT_DAYS * 86400.0
        out[g] = step_toward_alpha(samples.y[idx], samples.observed[idx], fitted.predicted[idx], today[idx],
                                   everything.factor_for(g), params.alpha, recent, readings[g])
    return out


@dataclass
class PlotData:
    """What the plot shows, per group: actual / predicted (proposed coefficients), n, today's and the new factor."""

    groups: list[Group]
    ratios: list[np.ndarray]
    observed: list[np.ndarray]
    factors: list[float | None]
    proposed: list[bool]
    n: list[int] = field(default_factory=list)
    #: today's ceiling on the same scale (ceiling today / proposed prediction): median, 10th and 90th percentile
    current: list[tuple[float, float, float] | None] = field(default_factory=list)
    #: per call: held out of the fit (the newest calls the backtest replays), drawn apart from the fitted ones
    held_out: list[np.ndarray] = field(default_factory=list)
    #: the ceiling that ships on the same scale (median, 10th and 90th percentile); None: the group's ceilings do
    #: not change. Empty (the older positional form): ``factors`` marked ``proposed`` are what ships.
    shipped: list[tuple[float, float, float] | None] = field(default_factory=list)


@dataclass
class Calibration:
    result: R.CalibrationResult
    plot: PlotData


def calibrate(samples: SampleSet, params: Params, current: te.Coefficients | None = None) -> Calibration:
    """Run the whole calibration on ``samples`` (which must be non-empty)."""
    current = current or te.current_coefficients()
    if samples.n == 0:
        raise ValueError("calibrate needs at least one usable sample")
    decision = decide(samples, params, current)
    today_ratio = decision.today / np.maximum(decision.fitted.predicted, 1.0)
    result = assemble(samples, params, current, decision, today_ratio)
    _, shipped_ceiling = configuration_ceiling(samples, *decision.shipped_configuration(current))
    shipped_ratio = shipped_ceiling / np.maximum(decision.fitted.predicted, 1.0)
    plot = PlotData([], [], [], [], [])
    rows_of = samples.rows_by_group()
    for entry in result.groups:
        g = entry.key
        idx = rows_of[samples.groups.index(g)]
        plot.groups.append(g)
        plot.ratios.append(samples.y[idx] / np.maximum(decision.fitted.predicted[idx], 1.0))
        plot.observed.append(samples.observed[idx])
        plot.held_out.append(idx >= decision.fit_rows)  # the fit is the oldest rows, the held-out calls the rest
        plot.factors.append(entry.budget_factor)
        plot.proposed.append(entry.proposed)
        plot.n.append(int(idx.size))
        plot.current.append(_median_and_range(today_ratio[idx]))
        changes = bool(np.any(shipped_ceiling[idx] != decision.today[idx]))
        plot.shipped.append(_median_and_range(shipped_ratio[idx]) if changes else None)
    return Calibration(result, plot)

def _median_and_range(values: np.ndarray) -> tuple[float, float, float]:
    q10, q50, q90 = np.quantile(values, [0.1, 0.5, 0.9])
    return float(q50), float(q10), float(q90)


__all__ = ["Calibration", "HeldOut", "Params", "calibrate", "decide", "heldout_ceilings"]
