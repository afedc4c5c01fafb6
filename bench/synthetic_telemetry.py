"""Synthetic telemetry with a known truth, for tests and benchmarks.

Three generators:

- ``simulate`` / ``simulate_with_escalations``: rows shaped exactly like the recorder's (dicts, for a real
  database). A phase's true output length is log-normal around ``base[group] + Σ per_kind[kind]``
  (deliberately not the estimator's coefficients); each phase is called with the ceiling ``decide_ceiling``
  chooses; a call that reaches its ceiling is recorded truncated (output = ceiling) and escalated once
  (×1.25) like the executor does, with its escalation event, so the data carry censoring and retries.
- ``simulate_groups``: the statistical test bench. Each group has a known law of r = log(actual /
  predicted) (``Law``: normal or a two-normal mixture), a size (5, 10, 20 beside large groups), fixed or
  varying caps set for a target share of censored first attempts, and escalated retries drawn from the
  tail above the old cap (the same phase again, as the real drain does). It returns ``EventColumns``
  directly, and the truth to judge a factor by (``SimulatedTelemetry.true_truncation``).
- ``feature_event_columns``: ``EventColumns`` of 10⁶ calls with stored features (the re-estimation and
  coefficient-fit path), vectorised, for timing ``calibrate()``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from autopack import token_estimator as te
from autopack.calibration import distributions as dist
from autopack.calibration.samples import factor_ceiling

#: A phase spec: (category, complexity, deliverables)
Spec = tuple[str, str, tuple[str, ...]]

DEFAULT_SPECS: tuple[Spec, ...] = (
    ("implementation", "low", ("src/string_helper.py",)),
    ("implementation", "low", ("src/number_helper.py",)),
    ("implementation", "medium", ("src/list_helper.py",)),
    ("implementation", "medium", ("src/date_helper.py", "src/dict_helper.py")),
    ("tests", "low", ("tests/test_number_helper.py",)),
    ("tests", "medium", ("tests/test_string_helper.py", "tests/conftest.py")),
    ("docs", "low", ("README.md",)),
    ("docs", "medium", ("docs/USAGE.md",)),
)


@dataclass
class Truth:
    base: Mapping[tuple[str, str], float] = field(
        default_factory=lambda: {
            ("implementation", "low"): 250, ("implementation", "medium"): 700, ("tests", "low"): 700,
            ("tests", "medium"): 1600, ("docs", "low"): 1500, ("docs", "medium"): 2600,
        }
    )
    per_kind: Mapping[str, float] = field(
        default_factory=lambda: {"backend": 1350, "test": 1700, "doc": 1300, "config": 450, "frontend": 2200}
    )
    sigma: float = 0.3
    default_base: float = 1500.0

    def median(self, features: te.PhaseFeatures, est: te.Estimate) -> float:
        base = self.base.get(est.group, self.default_base)
        category = est.category
        return base + sum(
            self.per_kind.get(te.deliverable_kind(te.deliverable_path(d), category), 1000.0)
            for d in features.deliverables
        )


def simulate(n_phases: int, **kwargs: Any) -> list[dict[str, Any]]:
    """``simulate_with_escalations`` without the escalation events (the event rows only)."""
    return simulate_with_escalations(n_phases, **kwargs)[0]


def simulate_with_escalations(
    n_phases: int,
    *,
    seed: int = 7,
    specs: Sequence[Spec] = DEFAULT_SPECS,
    truth: Truth | None = None,
    coefficients: te.Coefficients | None = None,
    run_id: str = "synthetic-run",
    start: datetime = datetime(2025, 1, 1, 12, 0, 0),
    spacing_seconds: float = 60.0,
    store_features: bool = True,
    shuffle: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n_phases`` phases drawn from ``specs`` (cycled, optionally shuffled): (event rows, escalation rows).

    The escalation rows are ``token_budget_escalation_events`` rows for the attempt that was truncated.
    """
    truth = truth or Truth()
    coeffs = coefficients or te.current_coefficients()
    rng = np.random.default_rng(seed)
    order = np.arange(n_phases) % len(specs)
    if shuffle:
        rng.shuffle(order)
    rows: list[dict[str, Any]] = []
    escalations: list[dict[str, Any]] = []
    when = start
    for p, spec_index in enumerate(order.tolist()):
        category, complexity, deliverables = specs[spec_index]
        features = te.PhaseFeatures(category, complexity, tuple(deliverables), description=f"phase {p}")
        est, decision = te.plan_call(features, coeffs)
        true_len = truth.median(features, est) * math.exp(truth.sigma * rng.standard_normal())
        ceiling = decision.actual_max_tokens
        selected = decision.selected_budget
        for attempt in range(2):
            length = max(1, int(round(true_len * math.exp(0.05 * rng.standard_normal()))))
            truncated = length >= ceiling
            actual = min(length, ceiling)
            rows.append(
                event_row(
                    run_id, f"phase-{p:05d}", attempt, when, features, est, selected, ceiling, actual, truncated,
                    store_features=store_features,
                )
            )
            when += timedelta(seconds=spacing_seconds)
            if not truncated or attempt == 1:
                break
            esc = te.escalate(selected_budget=selected, actual_max_tokens=ceiling, tokens_used=actual,
                              complexity=est.complexity)
            escalations.append({
                "run_id": run_id, "phase_id": f"phase-{p:05d}", "timestamp": when, "attempt_index": attempt,
                "reason": "truncation", "was_truncated": True, "output_utilization": 100.0 * actual / ceiling,
                "escalation_factor": esc.factor, "base_value": esc.base_value, "base_source": esc.base_source,
                "retry_max_tokens": esc.retry_max_tokens, "selected_budget": selected, "actual_max_tokens": ceiling,
                "tokens_used": actual,
            })
            ceiling = esc.retry_max_tokens
    return rows, escalations


def event_row(
    run_id: str,
    phase_id: str,
    attempt: int,
    when: datetime,
    features: te.PhaseFeatures,
    est: te.Estimate,
    selected_budget: int,
    ceiling: int,
    actual: int,
    truncated: bool,
    *,
    store_features: bool = True,
    success: bool | None = None,
) -> dict[str, Any]:
    """One ``token_estimation_v2_events`` row as the recorder writes it."""
    predicted = est.predicted_output_tokens
    return {
        "run_id": run_id,
        "phase_id": phase_id,
        "attempt_index": attempt,
        "call_index": 0,
        "timestamp": when,
        "created_at": when,
        "category": est.category,
        "complexity": est.complexity,
        "deliverable_count": est.deliverable_count,
        "deliverables_json": json.dumps(list(features.deliverables)),
        "features_json": json.dumps(te.features_record(features, est), sort_keys=True) if store_features else None,
        "predicted_output_tokens": predicted,
        "actual_output_tokens": actual,
        "selected_budget": selected_budget,
        "actual_max_tokens": ceiling,
        "success": (not truncated) if success is None else success,
        "truncated": truncated,
        "is_truncated_output": truncated,
        "stop_reason": "max_tokens" if truncated else "end_turn",
        "finish_reason": "length" if truncated else "stop",
        "provider": "synthetic",
        "model": "synthetic-1",
        "smape_percent": 200.0 * abs(predicted - actual) / max(1, predicted + actual),
        "waste_ratio": predicted / actual if actual else None,
        "underestimated": actual > predicted,
        "estimator_version": te.CALIBRATION_VERSION,
        "source": "synthetic",
    }


# --------------------------------------------------------------------------------------------------
# The statistical test bench: groups with a known law of log(actual / predicted)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Law:
    """The law of r = log(actual / predicted) in a group: a normal, or a mixture of two normals.

    ``weight2`` is the share of the second component (0 = a plain normal, i.e. a log-normal length).
    """

    mu: float = 0.0
    sigma: float = 0.3
    weight2: float = 0.0
    mu2: float = 0.0
    sigma2: float = 0.3

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        r = self.mu + self.sigma * rng.standard_normal(n)
        if self.weight2 > 0:
            second = rng.random(n) < self.weight2
            r[second] = self.mu2 + self.sigma2 * rng.standard_normal(int(second.sum()))
        return r

    def censored_sample(self, rng: np.random.Generator, n: int, cut: float) -> tuple[np.ndarray, np.ndarray]:
        """n draws, a share ``cut`` of them censored at caps spread ±1 around the (1 − cut) quantile: the values
        (each cut one at its cap) and which were observed."""
        r = self.sample(rng, n)
        observed = np.ones(n, dtype=bool)
        if cut:
            cap = self.quantile(1.0 - cut) + rng.uniform(-1.0, 1.0, n)
            observed = r < cap
            r = np.where(observed, r, cap)
        return r, observed

    def sf(self, x: np.ndarray | float) -> np.ndarray:
        """P(r ≥ x)."""
        x = np.asarray(x, dtype=float)
        first: np.ndarray = dist.norm_sf((x - self.mu) / self.sigma)
        if self.weight2 <= 0:
            return first
        mixed: np.ndarray = (1 - self.weight2) * first + self.weight2 * dist.norm_sf((x - self.mu2) / self.sigma2)
        return mixed

    def quantile(self, p: float) -> float:
        """The p-quantile of r (bisection for a mixture)."""
        if self.weight2 <= 0:
            return self.mu + self.sigma * float(dist.norm_ppf(p))
        lo = min(self.mu - 10 * self.sigma, self.mu2 - 10 * self.sigma2)
        hi = max(self.mu + 10 * self.sigma, self.mu2 + 10 * self.sigma2)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if 1.0 - float(self.sf(mid)) < p:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)


@dataclass(frozen=True)
class GroupTruth:
    """One simulated group: its size (first attempts), law, and how its calls were capped.

    ``censoring``: the target share of first attempts that reach their cap. Fixed caps put every cap at
    predicted × exp(q_{1−censoring}); varying caps spread them by ×exp(±``cap_spread``) around that
    (so some caps lie above the upper quantiles and Kaplan–Meier can reach them).
    """

    category: str
    complexity: str
    n: int
    law: Law = Law()
    censoring: float = 0.0
    varying_caps: bool = False
    cap_spread: float = 1.0
    predicted: float = 2000.0
    predicted_sigma: float = 0.3
    #: caps from today's budget factor instead (``decide_ceiling``'s ⌈predicted × factor⌉, clamped), so the
    #: recorded caps are today's ceilings; ``varying_caps`` then spreads them (calls recorded under older
    #: coefficients). ``censoring`` is ignored: the law decides how many are cut.
    cap_factor: float | None = None

    @property
    def group(self) -> tuple[str, str]:
        return (self.category, self.complexity)


@dataclass
class SimulatedTelemetry:
    """``EventColumns`` of the simulated calls, with the truth behind them."""

    columns: Any  # EventColumns (typed loosely: samples imports this module's neighbours)
    truth: dict[tuple[str, str], GroupTruth]
    is_retry: np.ndarray
    rng_seed: int

    def true_truncation(self, group: tuple[str, str], factor: float, *, draws: int = 4000) -> float:
        """The true truncation rate of ceiling = ⌈predicted × factor⌉ (≥ 512) on fresh calls of ``group``.

        Computed from the known law (P(r ≥ log(ceiling / predicted))), averaged over the group's own
        distribution of predictions: not estimated from samples.
        """
        g = self.truth[group]
        rng = np.random.default_rng(self.rng_seed + 7919)
        predicted = _predictions(rng, g, draws)
        ceiling = factor_ceiling(predicted, np.full(predicted.size, factor))
        return float(np.mean(g.law.sf(np.log(ceiling / predicted))))

    def true_quantile_factor(self, group: tuple[str, str], alpha: float) -> float:
        """exp of the law's (1 − α) quantile: the factor an oracle would pick (ignoring the 512 floor)."""
        return math.exp(self.truth[group].law.quantile(1.0 - alpha))


def _predictions(rng: np.random.Generator, g: GroupTruth, n: int) -> np.ndarray:
    return np.maximum(1.0, np.round(g.predicted * np.exp(g.predicted_sigma * rng.standard_normal(n))))


def simulate_groups(
    groups: Sequence[GroupTruth],
    *,
    seed: int = 0,
    retries: bool = True,
    provider: str = "synthetic",
    model: str = "synthetic-1",
    start_epoch: float = 1_735_732_800.0,
    spacing_seconds: float = 60.0,
) -> SimulatedTelemetry:
    """Calls of every group, interleaved in a random time order, as ``EventColumns`` without features.

    Per first attempt: predicted p (log-normal around the group's ``predicted``), true length
    T = p·exp(r), r from the group's law; cap c from the group's censoring rule; recorded output
    min(T, c) and truncated when T ≥ c. With ``retries`` every truncated first attempt is followed by its
    escalated retry: cap ⌊1.25·c⌋ (``token_estimator.escalate``), length T·exp(0.05·ε) (the same phase
    again: a draw from the tail above the old cap), flagged in ``columns.retry``.
    """
    from autopack.calibration.samples import EventColumns, Summary

    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("g", "p", "t", "c")}
    for gi, g in enumerate(groups):
        p = _predictions(rng, g, g.n)
        r = g.law.sample(rng, g.n)
        if g.cap_factor is not None:
            cap = factor_ceiling(p, np.full(g.n, g.cap_factor))
            if g.varying_caps:
                cap = np.ceil(cap * np.exp(rng.uniform(-g.cap_spread, g.cap_spread, g.n)))
        elif g.censoring > 0:
            cap_log = np.full(g.n, g.law.quantile(1.0 - g.censoring))
            if g.varying_caps:
                cap_log = cap_log + rng.uniform(-g.cap_spread, g.cap_spread, g.n)
            cap = np.ceil(p * np.exp(cap_log))
        else:
            cap = np.full(g.n, float(te.MAX_OUTPUT_TOKENS))
        parts["g"].append(np.full(g.n, gi))
        parts["p"].append(p)
        parts["t"].append(p * np.exp(r))
        parts["c"].append(np.minimum(np.maximum(cap, 1.0), te.MAX_OUTPUT_TOKENS))
    group = np.concatenate(parts["g"])
    predicted = np.concatenate(parts["p"])
    true_len = np.concatenate(parts["t"])
    cap = np.concatenate(parts["c"])
    order = rng.permutation(group.size)
    group, predicted, true_len, cap = group[order], predicted[order], true_len[order], cap[order]
    length = np.maximum(1.0, np.round(true_len))
    truncated = length >= cap
    actual = np.minimum(length, cap)
    is_retry = np.zeros(group.size, dtype=bool)
    epoch = start_epoch + spacing_seconds * np.arange(group.size)
    if retries and truncated.any():
        first_idx = np.flatnonzero(truncated)
        r_cap = np.minimum(np.floor(cap[first_idx] * te.ESCALATION_FACTOR), te.MAX_OUTPUT_TOKENS)
        r_len = np.maximum(1.0, np.round(true_len[first_idx] * np.exp(0.05 * rng.standard_normal(first_idx.size))))
        r_trunc = r_len >= r_cap
        # each retry right after its first attempt: insert by a stable sort on (time, retry flag)
        epoch = np.r_[epoch, epoch[first_idx] + 1.0]
        group = np.r_[group, group[first_idx]]
        predicted = np.r_[predicted, predicted[first_idx]]
        cap = np.r_[cap, r_cap]
        actual = np.r_[actual, np.minimum(r_len, r_cap)]
        truncated = np.r_[truncated, r_trunc]
        is_retry = np.r_[is_retry, np.ones(first_idx.size, dtype=bool)]
        by_time = np.argsort(epoch, kind="stable")
        epoch, group, predicted, cap, actual, truncated, is_retry = (
            a[by_time] for a in (epoch, group, predicted, cap, actual, truncated, is_retry)
        )
    categories = sorted({g.category for g in groups})
    complexities = sorted({g.complexity for g in groups})
    cat_code = np.array([categories.index(g.category) for g in groups], dtype=np.int32)[group]
    cx_code = np.array([complexities.index(g.complexity) for g in groups], dtype=np.int32)[group]
    n = group.size
    columns = EventColumns(
        event_id=np.arange(1, n + 1, dtype=np.int64),
        epoch=epoch,
        category_code=cat_code,
        complexity_code=cx_code,
        deliverable_count=np.ones(n, dtype=np.int64),
        features_code=np.full(n, -1, dtype=np.int32),
        predicted=predicted,
        actual=actual,
        selected_budget=cap.copy(),
        actual_max_tokens=cap,
        success=~truncated,
        truncated=truncated,
        categories=list(categories),
        complexities=list(complexities),
        features=[],
        summary=Summary(run_ids=["synthetic-groups"], successful_phases=int((~truncated & ~is_retry).sum()),
                        success_rate_all=float(np.mean(~truncated)) if n else 0.0,
                        coverage_actual_max_tokens=1.0),
        retry=is_retry.copy(),
        retry_of=np.where(is_retry, np.arange(n) - 1, -1),  # each retry right after the call it re-ran
        source_code=np.zeros(n, dtype=np.int32),
        sources=[(provider, model)],
    )
    return SimulatedTelemetry(columns, {g.group: g for g in groups}, is_retry, seed)


# --------------------------------------------------------------------------------------------------
# 10⁶ calls with stored features, vectorised (timing ``calibrate()``)
# --------------------------------------------------------------------------------------------------

_SCALE_GROUPS = (("implementation", "low"), ("implementation", "medium"), ("implementation", "high"),
                 ("tests", "low"), ("tests", "medium"), ("docs", "low"), ("docs", "medium"),
                 ("refactoring", "medium"), ("backend", "medium"), ("configuration", "low"))
_SCALE_FILES = {"backend": "src/mod_{i}.py", "test": "tests/test_mod_{i}.py", "doc": "docs/page_{i}.md",
                "config": "config/settings_{i}.yaml", "frontend": "web/view_{i}.tsx"}
_SCALE_BASE = {"implementation": 400, "tests": 900, "docs": 1800, "refactoring": 1500, "backend": 1200,
               "configuration": 300}
_SCALE_PER_KIND = {"backend": 1300, "test": 1600, "doc": 1200, "config": 400, "frontend": 2000}


def feature_event_columns(n_events: int, *, n_specs: int = 5000, seed: int = 0, sigma: float = 0.35) -> Any:
    """``EventColumns`` of ``n_events`` calls drawn from ``n_specs`` distinct phase specs with stored features.

    Each spec is planned with today's estimator (its prediction and ceiling); true lengths are log-normal
    (σ = ``sigma``) around a per-spec median that is deliberately not the estimator's; a call reaching
    its ceiling is truncated and followed by its escalated retry (×1.25), flagged in ``retry``.
    """
    from autopack.calibration.samples import EventColumns, Summary

    rng = np.random.default_rng(seed)
    kinds = list(_SCALE_FILES)
    features: list[str] = []
    spec_pred = np.empty(n_specs)
    spec_ceiling = np.empty(n_specs)
    spec_selected = np.empty(n_specs)
    spec_median = np.empty(n_specs)
    spec_cat = np.empty(n_specs, dtype=np.int32)
    spec_cx = np.empty(n_specs, dtype=np.int32)
    categories = sorted({c for c, _ in _SCALE_GROUPS})
    complexities = sorted({x for _, x in _SCALE_GROUPS})
    for s in range(n_specs):
        category, complexity = _SCALE_GROUPS[s % len(_SCALE_GROUPS)]
        deliverables = tuple(
            _SCALE_FILES[kinds[int(rng.integers(0, len(kinds)))]].format(i=f"{s}_{d}")
            for d in range(int(rng.integers(1, 4)))
        )
        feats = te.PhaseFeatures(category, complexity, deliverables, description=f"spec {s}")
        est, decision = te.plan_call(feats)
        features.append(json.dumps(te.features_record(feats, est), sort_keys=True))
        spec_pred[s] = est.predicted_output_tokens
        spec_ceiling[s] = decision.actual_max_tokens
        spec_selected[s] = decision.selected_budget
        spec_median[s] = _SCALE_BASE[category] * (1.6 if complexity == "high" else 1.0) + sum(
            _SCALE_PER_KIND[te.deliverable_kind(te.deliverable_path(d), category)] for d in deliverables
        )
        spec_cat[s] = categories.index(category)
        spec_cx[s] = complexities.index(complexity)
    # first attempts, each truncated one followed by its retry; the newest calls beyond n_events dropped
    spec = rng.integers(0, n_specs, n_events)
    true_len = spec_median[spec] * np.exp(sigma * rng.standard_normal(n_events))
    ceiling = spec_ceiling[spec]
    length = np.maximum(1.0, np.floor(true_len))
    first_idx = np.flatnonzero(length >= ceiling)
    r_cap = np.minimum(np.floor(ceiling[first_idx] * te.ESCALATION_FACTOR), te.MAX_OUTPUT_TOKENS)
    r_len = np.maximum(1.0, np.floor(true_len[first_idx] * np.exp(0.05 * rng.standard_normal(first_idx.size))))
    epoch = 1_735_732_800.0 + 30.0 * np.arange(n_events)
    all_epoch = np.r_[epoch, epoch[first_idx] + 1.0]
    by_time = np.argsort(all_epoch, kind="stable")[:n_events]
    all_spec = np.r_[spec, spec[first_idx]][by_time]
    all_epoch = all_epoch[by_time]
    all_cap = np.r_[ceiling, r_cap][by_time]
    all_len = np.r_[length, r_len][by_time]
    all_trunc = all_len >= all_cap
    is_retry = np.r_[np.zeros(n_events, dtype=bool), np.ones(first_idx.size, dtype=bool)][by_time]
    n = all_spec.size
    return EventColumns(
        event_id=np.arange(1, n + 1, dtype=np.int64),
        epoch=all_epoch,
        category_code=spec_cat[all_spec],
        complexity_code=spec_cx[all_spec],
        deliverable_count=np.ones(n, dtype=np.int64),
        features_code=all_spec.astype(np.int32),
        predicted=spec_pred[all_spec],
        actual=np.minimum(all_len, all_cap),
        selected_budget=spec_selected[all_spec],
        actual_max_tokens=all_cap,
        success=~all_trunc,
        truncated=all_trunc,
        categories=list(categories),
        complexities=list(complexities),
        features=features,
        summary=Summary(run_ids=["synthetic-scale"], successful_phases=int((~all_trunc).sum()),
                        success_rate_all=float(np.mean(~all_trunc)), coverage_actual_max_tokens=1.0),
        retry=is_retry,
        source_code=np.zeros(n, dtype=np.int32),
        sources=[("synthetic", "synthetic-1")],
    )
