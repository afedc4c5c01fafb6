"""Budgets under drift: static, rolling-window and adaptive conformal (ACI) ceilings, replayed online.

A calibration fits on the past and ships a factor; the calls it then budgets arrive one by one, and their
output lengths drift (the Azure code trace: within the hour). This module replays a time-ordered stream of
held-out calls the way the executor would meet them, with **delayed feedback**: a call's outcome (did it
reach its ceiling?) is known only once the call has finished, so calls planned while it runs cannot use it.

Methods (each returns the ceiling it would have set for every held-out call):

- ``static``: the split-conformal quantile of the training scores, per group, fixed;
- ``rolling``: per group, the conformal quantile of the last ``window`` scores whose feedback has arrived
  (a truncated call only says "at least its ceiling": it enters the window as +∞, which can only raise the
  quantile), bounded by the reviewed factor range;
- ``aci``: adaptive conformal inference (Gibbs & Candès 2021), per group. α_t starts at the target α and
  moves with each finished call, α_{t+1} = clip(α_t + γ(α − err_t), lo, hi), err_t = 1 if the call reached
  its ceiling. The factor at α_t is read off the group's reviewed quantile curve (training quantiles at
  fixed levels, ``token_estimator.AdaptiveCurve``), so the runtime can only move between factors a human
  approved. Clipping α_t is what keeps delayed feedback from winding it up: unclipped, a burst of
  truncations seen late drives α_t below 0 and the reserve explodes (17× the oracle's, measured);
- ``oracle``: per group, the (1 − α) quantile of the held-out window itself, in hindsight (the least
  constant reserve that truncates at most α; unattainable, the yardstick).

Scores follow the repository's truncation rule, "reaching the ceiling = truncated": a call with output y
fits under a ceiling c iff y < c, so the smallest ceiling that fits it is y + 1, and the score is
log((y + 1) / predicted). A conformal quantile of these scores gives ceilings with exact coverage under
that rule. A censored call (recorded lower bound L: it reached its ceiling L) is truncated under c for
certain when c ≤ L; when c > L its fate is unknown and it counts as fitting (the lower end, as the
backtest's ``truncation_rate``); ``truncation_upper`` counts it as truncated.

Feedback delay (``Feedback``): either a fixed lag of k calls (call i's outcome is known to calls j > i + k),
or a completion time from the timestamps: a call planned at t finishes at t + first_token + per_token ×
(tokens it produced), where a truncated call produces exactly its ceiling. The defaults (0.25 s to the
first token, 40 ms per output token) are the order of magnitude the Splitwise paper (the source of the
Azure traces) measured for 70B-class models on A100/H100 serving; ``bench/bench_calibration_drift.py``
also runs fixed lags of 0, 100 and 500 calls to show the choice of method does not hinge on it.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from autopack import token_estimator as te
from autopack.calibration import stats
from autopack.calibration.result import DriftMetrics, DriftSummary, FeedbackSpec, MethodParams, ProposedChange
from autopack.params import check_shippable

MethodName = Literal["static", "rolling", "aci"]
METHODS: tuple[MethodName, ...] = ("static", "rolling", "aci")
#: The default method of ``autopack calibrate``: what the rule stated in ``bench/bench_calibration_drift.py``
#: chose on the Azure traces (see the README's "Calibration under drift").
DEFAULT_METHOD: MethodName = "static"

#: Levels of the reviewed quantile curve, as multiples of the target α (α/5 … 2α): the range α_t may take.
CURVE_MULTIPLES = (0.2, 0.3, 0.5, 0.7, 1.0, 1.4, 2.0)
#: Fixed lag (calls) the calibration's own backtest assumes: telemetry rows hold completion times only.
BACKTEST_FEEDBACK_LAG = 8
BIN_SECONDS = 300.0
#: The calibration's every-method comparison replays at most this many (newest) held-out calls: 20,000 put a
#: method's truncation within ±0.3 pp (95 %) at α = 5 % and each of its 5 blocks within ±0.7 pp; each call more
#: costs the two sequential replays about 10 µs (50,000 cost 0.3 s more of a 10⁶-call calibration) for precision
#: the report does not print.
MAX_COMPARED_CALLS = 20_000
#: A time bin with fewer calls than this is not reported as the "worst bin" (a 10-call bin is noise).
MIN_BIN_CALLS = 50


# --------------------------------------------------------------------------------------------------
# The stream, its scores and the truncation rule
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """Calls in the order they were planned: group index, prediction, outcome, planning time."""

    group: np.ndarray  # int per call
    predicted: np.ndarray  # float, > 0
    y: np.ndarray  # output tokens, or the recorded lower bound when not observed
    observed: np.ndarray  # bool; False = censored (the call reached its recorded ceiling)
    epoch: np.ndarray  # float seconds, ascending

    @property
    def n(self) -> int:
        return int(self.y.size)

    def take(self, index: np.ndarray) -> Stream:
        return Stream(self.group[index], self.predicted[index], self.y[index], self.observed[index],
                      self.epoch[index])

    def split(self, train_fraction: float) -> tuple[Stream, Stream]:
        """(oldest ``train_fraction``, the rest) of a time-ordered stream."""
        cut = int(round(train_fraction * self.n))
        idx = np.arange(self.n)
        return self.take(idx[:cut]), self.take(idx[cut:])


def scores(stream: Stream) -> np.ndarray:
    """log(smallest fitting ceiling / predicted): log((y + 1) / predicted)."""
    out: np.ndarray = np.log((stream.y + 1.0) / np.maximum(stream.predicted, 1.0))
    return out


def ceiling_tokens(predicted: np.ndarray | float, factor: np.ndarray | float) -> np.ndarray:
    """``token_estimator.ceil_tokens(predicted × factor)``, vectorised (the estimator's clamps come on top)."""
    ceiling: np.ndarray = np.ceil(te.factor_product(np.asarray(predicted, dtype=float), np.asarray(factor, dtype=float)))
    return ceiling


def truncated_under(ceiling: np.ndarray, y: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Reaching the ceiling = truncated: y ≥ c for an observed call, c ≤ L for a censored one (the same
    comparison; ``observed`` only matters for the upper end, see ``evaluate``)."""
    del observed
    return np.asarray(y >= ceiling)


# --------------------------------------------------------------------------------------------------
# Feedback delay
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Feedback:
    """When a finished call's outcome reaches the calls planned after it."""

    lag_calls: int | None = None  # fixed lag; None = completion times from the timestamps
    first_token_seconds: float = 0.25
    seconds_per_token: float = 0.04

    def describe(self) -> str:
        if self.lag_calls is not None:
            return f"fixed lag of {self.lag_calls} calls"
        return (f"completion time = planned + {self.first_token_seconds:g} s + {self.seconds_per_token * 1000:g} ms"
                " × tokens produced")

    def spec(self) -> FeedbackSpec:
        """The delay as the result reports it."""
        if self.lag_calls is not None:
            return FeedbackSpec(kind="fixed_lag", lag_calls=self.lag_calls)
        return FeedbackSpec(kind="completion_time", first_token_seconds=self.first_token_seconds,
                            seconds_per_token=self.seconds_per_token)

    def due(self, index: int, planned: float, produced: float) -> float:
        """When call ``index`` (planned at ``planned``, ``produced`` output tokens) is known to later calls:
        on the call-index clock for a fixed lag, else in seconds (see ``_loop_columns``' ``now``)."""
        if self.lag_calls is not None:
            return float(index + self.lag_calls + 1)
        return planned + self.first_token_seconds + self.seconds_per_token * produced


# --------------------------------------------------------------------------------------------------
# Method specifications
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """A method and its parameters (what ``metadata.method_params`` reports)."""

    name: MethodName = DEFAULT_METHOD
    window: int = 200  # rolling
    gamma: float = 0.005  # aci
    curve_multiples: tuple[float, ...] = CURVE_MULTIPLES  # the α_t range, × α (both adaptive methods' bounds)

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}: use one of {', '.join(METHODS)}")
        if self.window < 1 or not 0.0 < self.gamma < 1.0:
            raise ValueError("window must be ≥ 1 and gamma in (0, 1)")

    def params(self, alpha: float, feedback: Feedback | None = None) -> MethodParams:
        """The parameters this method uses at ``alpha`` (none for static)."""
        if self.name == "static":
            return MethodParams()
        levels = curve_levels(alpha, self.curve_multiples)
        return MethodParams(window=self.window if self.name == "rolling" else None,
                            gamma=self.gamma if self.name == "aci" else None,
                            alpha_range=(levels[0], levels[-1]), curve_levels=list(levels),
                            feedback=None if feedback is None else feedback.spec())


def curve_levels(alpha: float, multiples: Sequence[float] = CURVE_MULTIPLES) -> tuple[float, ...]:
    """The miscoverage levels of the reviewed curve, rounded as the table keys spell them."""
    return tuple(sorted({round(alpha * m, 4) for m in multiples if 0.0 < alpha * m < 0.5}))


# --------------------------------------------------------------------------------------------------
# Training side: static factors and reviewed curves
# --------------------------------------------------------------------------------------------------


def _round_up(factor: float) -> float:
    return math.ceil(factor * 1000 - 1e-9) / 1000


def conformal_factor(s: np.ndarray, observed: np.ndarray, alpha: float) -> float | None:
    """exp of the split-conformal upper quantile of scores ``s`` (KM with censoring), rounded up; None if none."""
    q, k = stats.conformal_quantile(s, observed, alpha)
    if k is None or not math.isfinite(q):
        return None
    return _round_up(math.exp(q))


def static_factors(train: Stream, alpha: float, n_groups: int) -> dict[int, float]:
    """Per group its own conformal factor; a group too small for one gets the pooled factor of all calls."""
    s = scores(train)
    pooled = conformal_factor(s, train.observed, alpha)
    out: dict[int, float] = {}
    for g in range(n_groups):
        m = train.group == g
        own = conformal_factor(s[m], train.observed[m], alpha) if m.any() else None
        factor = own if own is not None else pooled
        if factor is not None:
            out[g] = factor
    return out


def group_curve(
    s: np.ndarray, observed: np.ndarray, alpha: float, anchor: float, multiples: Sequence[float] = CURVE_MULTIPLES
) -> te.AdaptiveCurve | None:
    """The group's reviewed quantile curve: factor at each level α_j of ``curve_levels``.

    Shape from the group's own conformal quantiles q_j, level from the static factor: factor_j =
    anchor × exp(q_j − q_α), so the curve passes through the shipped BUDGET_FACTORS value at α (no
    runtime state = exactly today's ceiling). Levels the group has too few calls for (n < 1/α_j − 1) are
    left out; None when fewer than two levels remain (nothing to adapt between) or α itself is missing.
    """
    levels = curve_levels(alpha, multiples)
    quantiles = {}
    s, observed = stats.sort_censored(s, observed)  # once for every level
    for level in levels:
        q, k = stats.conformal_quantile(s, observed, level, presorted=True)
        if k is not None and math.isfinite(q):
            quantiles[level] = q
    target = round(alpha, 4)
    if target not in quantiles or len(quantiles) < 2:
        return None
    points = []
    previous = math.inf
    for level in sorted(quantiles):
        factor = anchor if level == target else _round_up(anchor * math.exp(quantiles[level] - quantiles[target]))
        factor = min(factor, previous)  # non-increasing in α (rounding can never reorder it)
        points.append((level, factor))
        previous = factor
    alphas, factors = zip(*points, strict=True)
    return te.AdaptiveCurve(tuple(alphas), tuple(factors))


def curves_for(
    train: Stream, alpha: float, anchors: Mapping[int, float], multiples: Sequence[float] = CURVE_MULTIPLES
) -> dict[int, te.AdaptiveCurve]:
    """A curve for each anchored group that has enough own training calls."""
    s = scores(train)
    out: dict[int, te.AdaptiveCurve] = {}
    for g, anchor in anchors.items():
        m = train.group == g
        curve = group_curve(s[m], train.observed[m], alpha, anchor, multiples) if m.any() else None
        if curve is not None:
            out[g] = curve
    return out


# --------------------------------------------------------------------------------------------------
# Online replays
# --------------------------------------------------------------------------------------------------


def replay_static(test: Stream, factors: Mapping[int, float]) -> np.ndarray:
    """Fixed factor per group (vectorised). Groups without a factor get NaN."""
    f = np.array([factors.get(g, math.nan) for g in range(int(test.group.max(initial=-1)) + 1)], dtype=float)
    per_call = f[test.group] if test.n else np.empty(0)
    return ceiling_tokens(test.predicted, per_call)


@dataclass
class AciTrace:
    """What the ACI replay saw: the level and factor each call was planned with (NaN = static group)."""

    alpha_t: np.ndarray
    factor: np.ndarray
    updates: int = 0


def replay_aci(
    test: Stream,
    curves: Mapping[int, te.AdaptiveCurve],
    static: Mapping[int, float],
    alpha: float,
    gamma: float,
    feedback: Feedback,
) -> tuple[np.ndarray, AciTrace]:
    """ACI per group with delayed feedback; groups without a curve keep their static factor.

    The update is ``token_estimator.aci_step`` (the rule the database store applies in SQL), the factor
    ``AdaptiveCurve.factor_at`` and the rounding ``token_estimator.ceil_tokens`` (what ``decide_ceiling``
    uses): the replay runs the runtime's own code. Only the adapted groups' calls are looped over.
    """
    ceilings = replay_static(test, static)
    trace = AciTrace(np.full(test.n, math.nan), np.full(test.n, math.nan))
    level: dict[int, float] = {g: c.clip(alpha) for g, c in curves.items()}
    factor: dict[int, float] = {g: c.factor_at(level[g]) for g, c in curves.items()}
    bounds = {g: (c.alphas[0], c.alphas[-1]) for g, c in curves.items()}
    rows, now, pred, y, obs, group = _loop_columns(test, curves, feedback)
    lag_due = _fixed_lag_dues(rows, feedback)
    lag = feedback.lag_calls
    # pending outcomes: with a fixed lag they come due in planning order (a FIFO), else by completion time
    fifo: deque[tuple[float, int, int]] = deque()
    heap: list[tuple[float, int, int, int]] = []
    out_c, out_a, out_f = [], [], []
    step, ceil = te.aci_step, te.ceil_tokens
    for j, i in enumerate(rows):
        t = now[j]
        while fifo and fifo[0][0] <= t:
            _, g_done, err = fifo.popleft()
            level[g_done] = step(level[g_done], err, alpha, gamma, *bounds[g_done])
            factor[g_done] = curves[g_done].factor_at(level[g_done])
        while heap and heap[0][0] <= t:
            _, _, g_done, err = heapq.heappop(heap)
            level[g_done] = step(level[g_done], err, alpha, gamma, *bounds[g_done])
            factor[g_done] = curves[g_done].factor_at(level[g_done])
        g = group[j]
        f = factor[g]
        c = ceil(pred[j] * f)
        out_c.append(c)
        out_a.append(level[g])
        out_f.append(f)
        err = 1 if y[j] >= c else 0  # reaching the ceiling = truncated (a censored call: its bound reached it)
        if lag is not None:  # due in planning order
            fifo.append((lag_due[j], g, err))
        else:
            heapq.heappush(heap, (feedback.due(i, t, min(y[j], c) if obs[j] else c), i, g, err))
    trace.updates = len(rows) - len(fifo) - len(heap)
    if rows:
        ceilings[rows] = out_c
        trace.alpha_t[rows], trace.factor[rows] = out_a, out_f
    return ceilings, trace


def _loop_columns(
    test: Stream, adapted: Mapping[int, object], feedback: Feedback
) -> tuple[list[int], list[float], list[float], list[float], list[bool], list[int]]:
    """The adapted groups' calls as plain lists (a Python loop over numpy scalars is several times slower)."""
    rows = np.flatnonzero(np.isin(test.group, list(adapted))) if adapted else np.empty(0, dtype=np.int64)
    now = rows.astype(float) if feedback.lag_calls is not None else test.epoch[rows]
    return (rows.tolist(), now.tolist(), test.predicted[rows].tolist(), test.y[rows].tolist(),
            test.observed[rows].tolist(), test.group[rows].tolist())


def _fixed_lag_dues(rows: list[int], feedback: Feedback) -> list[float]:
    """When each looped call's outcome is due under a fixed lag (``Feedback.due``, which then ignores the call's
    time and length), computed before the loop; empty for completion times, which depend on the ceiling."""
    return [feedback.due(i, 0.0, 0.0) for i in rows] if feedback.lag_calls is not None else []


def replay_rolling(
    test: Stream,
    train: Stream,
    static: Mapping[int, float],
    bounds: Mapping[int, te.AdaptiveCurve],
    alpha: float,
    window: int,
    feedback: Feedback,
) -> np.ndarray:
    """Per group, the conformal quantile of the last ``window`` finished calls' scores.

    Seeded with the group's last ``window`` training scores. A call that reached its ceiling enters as
    +∞ (its length is only known to be at least the ceiling): conservative, never an underestimate. The
    factor is clipped to the group's reviewed curve range; groups without one keep their static factor.
    """
    train_s = scores(train)
    windows: dict[int, deque[float]] = {}
    ordered: dict[int, list[float]] = {}
    for g in bounds:
        m = np.flatnonzero(train.group == g)[-window:]
        vals = [s if o else math.inf for s, o in zip(train_s[m].tolist(), train.observed[m].tolist(), strict=True)]
        windows[g] = deque(vals)
        ordered[g] = sorted(vals)
    ceilings = replay_static(test, static)
    rows, now, pred, y, obs, group = _loop_columns(test, bounds, feedback)
    lag_due = _fixed_lag_dues(rows, feedback)
    clip = {g: (c.factors[-1], c.factors[0]) for g, c in bounds.items()}  # the reviewed range
    rank: dict[int, int | None] = {}  # the conformal rank of a window of n scores, computed once per n
    # pending outcomes: with a fixed lag they come due in planning order (a FIFO), else by completion time
    lag = feedback.lag_calls
    fifo: deque[tuple[float, int, float]] = deque()
    heap: list[tuple[float, int, int, float]] = []
    exp, log, ceil, insort, bisect_left = math.exp, math.log, te.ceil_tokens, bisect.insort, bisect.bisect_left

    def finish(g_done: int, value: float) -> None:
        win, srt = windows[g_done], ordered[g_done]
        win.append(value)
        insort(srt, value)
        if len(win) > window:
            del srt[bisect_left(srt, win.popleft())]

    for j, i in enumerate(rows):
        t = now[j]
        while fifo and fifo[0][0] <= t:
            _, g_done, value = fifo.popleft()
            finish(g_done, value)
        while heap and heap[0][0] <= t:
            _, _, g_done, value = heapq.heappop(heap)
            finish(g_done, value)
        g = group[j]
        low, high = clip[g]
        srt = ordered[g]
        n = len(srt)
        k = rank[n] if n in rank else rank.setdefault(n, stats.conformal_rank(n, alpha))
        factor = exp(srt[k - 1]) if k is not None and srt[k - 1] != math.inf else high
        factor = min(max(factor, low), high)
        c = ceil(pred[j] * factor)
        ceilings[i] = c
        value = log((y[j] + 1.0) / max(pred[j], 1.0)) if obs[j] and y[j] < c else math.inf
        if lag is not None:
            fifo.append((lag_due[j], g, value))
        else:
            heapq.heappush(heap, (feedback.due(i, t, min(y[j], c) if obs[j] else c), i, g, value))
    return ceilings


def oracle_ceilings(test: Stream, alpha: float) -> np.ndarray:
    """Per group, the ⌈n(1−α)⌉-th smallest fitting ceiling of the held-out calls themselves (hindsight)."""
    s = scores(test)
    out = np.empty(test.n)
    for g in np.unique(test.group).tolist():
        m = test.group == g
        n = int(m.sum())
        k = max(1, math.ceil(n * (1 - alpha) - 1e-9))
        q = stats.km_quantile(s[m], test.observed[m], k / n)
        out[m] = ceiling_tokens(test.predicted[m], math.exp(q)) if math.isfinite(q) else test.y[m].max() + 1
    return out


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def evaluate(
    test: Stream, ceiling: np.ndarray, alpha: float, bin_seconds: float | None = BIN_SECONDS, blocks: int = 5
) -> DriftMetrics:
    """Truncation (lower and upper end), reserved/used, the worst time bin's truncation, pinball loss.

    Bins are ``bin_seconds`` long from the first held-out call (only bins with ≥ ``MIN_BIN_CALLS`` count),
    or, with ``bin_seconds=None``, ``blocks`` consecutive blocks of equal size (telemetry with a few calls
    an hour has no full 5-minute bin). The pinball loss scores the ceiling as the (1 − α) quantile of the
    smallest fitting ceiling y + 1 (the proper scoring rule for a quantile: it weighs a truncation against
    reserve in the ratio α sets).
    """
    ok = np.isfinite(ceiling)
    n = int(ok.sum())
    if n == 0:
        return DriftMetrics(n=0, truncations=0, truncations_upper=0, truncation_interval=(None, None),
                            worst_bin_n=0, bins=0)
    c, y, obs, t = ceiling[ok], test.y[ok], test.observed[ok], test.epoch[ok]
    trunc = truncated_under(c, y, obs)
    upper = trunc | (~obs)
    if bin_seconds is not None:
        bins = np.floor((t - t[0]) / bin_seconds).astype(np.int64)
        minimum = MIN_BIN_CALLS
    else:
        bins = (np.arange(n) * max(1, min(blocks, n)) // n).astype(np.int64)
        minimum = 1
    counts = np.bincount(bins)
    hits = np.bincount(bins, weights=trunc.astype(float))
    full = counts >= minimum
    rates = np.where(full, hits / np.maximum(counts, 1), -1.0)
    worst = int(np.argmax(rates)) if full.any() else -1
    return DriftMetrics(
        n=n,
        truncations=int(trunc.sum()),
        truncations_upper=int(upper.sum()),
        truncation_rate=round(float(trunc.mean()), 6),
        truncation_interval=(round(float(trunc.mean()), 6), round(float(upper.mean()), 6)),
        reserved_over_used=round(float(c.sum() / y.sum()), 6),
        worst_bin_truncation=round(float(rates[worst]), 6) if worst >= 0 else None,
        worst_bin_n=int(counts[worst]) if worst >= 0 else 0,
        bins=int(full.sum()),
        pinball_loss=round(stats.pinball_loss(y + 1.0, c, 1.0 - alpha), 4),
    )


# --------------------------------------------------------------------------------------------------
# One comparison: every method on one split
# --------------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Ceilings and metrics of every method on one held-out window."""

    alpha: float
    feedback: Feedback
    ceilings: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, DriftMetrics] = field(default_factory=dict)
    curves: dict[int, te.AdaptiveCurve] = field(default_factory=dict)
    aci_trace: AciTrace | None = None

    def summary(self) -> DriftSummary:
        """Per method its metrics, and reserved/used and pinball loss ÷ the oracle's."""
        oracle = self.metrics.get("oracle") or DriftMetrics()
        methods = {name: m.model_copy(update={
            "reserved_vs_oracle": _ratio(m.reserved_over_used, oracle.reserved_over_used),
            "pinball_vs_oracle": _ratio(m.pinball_loss, oracle.pinball_loss)}) for name, m in self.metrics.items()}
        return DriftSummary(alpha=self.alpha, feedback=self.feedback.spec(), methods=methods)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def compare(
    train: Stream,
    test: Stream,
    alpha: float,
    *,
    n_groups: int,
    specs: Mapping[str, MethodSpec] | None = None,
    feedback: Feedback = Feedback(),
    static: Mapping[int, float] | None = None,
) -> Comparison:
    """Replay ``static``, ``rolling``, ``aci`` (or the given specs) and the oracle on ``test``.

    ``static``: the factor each group ships with (default: ``static_factors`` of the training calls);
    the adaptive methods' curves are anchored on it.
    """
    specs = specs or {name: MethodSpec(name) for name in METHODS}
    factors = dict(static) if static is not None else static_factors(train, alpha, n_groups)
    comparison = Comparison(alpha, feedback)
    for label, spec in specs.items():
        comparison.ceilings[label] = method_ceilings(spec, train, test, alpha, factors, feedback, comparison)
    comparison.ceilings["oracle"] = oracle_ceilings(test, alpha)
    comparison.metrics = {k: evaluate(test, c, alpha) for k, c in comparison.ceilings.items()}
    return comparison


def method_ceilings(
    spec: MethodSpec,
    train: Stream,
    test: Stream,
    alpha: float,
    static: Mapping[int, float],
    feedback: Feedback,
    into: Comparison | None = None,
) -> np.ndarray:
    """The ceilings ``spec`` sets for the held-out calls (NaN for a group with no factor at all)."""
    if spec.name == "static":
        return replay_static(test, static)
    curves = curves_for(train, alpha, static, spec.curve_multiples)
    if into is not None:
        into.curves = curves
    if spec.name == "rolling":
        return replay_rolling(test, train, static, curves, alpha, spec.window, feedback)
    ceilings, trace = replay_aci(test, curves, static, alpha, spec.gamma, feedback)
    if into is not None:
        into.aci_trace = trace
    return ceilings


# --------------------------------------------------------------------------------------------------
# Inside a calibration: the backtest replays the chosen method, the proposal carries its reviewed part
# --------------------------------------------------------------------------------------------------

Group = tuple[str, str]
#: The calibration's own backtest: telemetry rows carry completion times, not planning times, so the
#: delay is a fixed lag of calls (about the number of calls in flight across a few drains).
BACKTEST_FEEDBACK = Feedback(lag_calls=BACKTEST_FEEDBACK_LAG)


def method_spec(name: str) -> MethodSpec:
    """The spec ``autopack calibrate --method NAME`` runs with; ``InputError`` for what cannot ship
    (``autopack.params.check_shippable``: the parameter's own check)."""
    return MethodSpec(check_shippable(name))


def describe_method(name: str, params: MethodParams) -> str:
    """The report's two sentences on the method."""
    if name == "aci":
        low, high = params.alpha_range or (None, None)
        lag = params.feedback.lag_calls if params.feedback and params.feedback.lag_calls is not None else \
            BACKTEST_FEEDBACK_LAG
        return (
            "Method `aci` (adaptive conformal inference): each calibrated group ships its static factor plus a "
            f"reviewed curve of factors for miscoverage levels {low}–{high} (`ADAPTIVE_BUDGET_FACTORS`), and at run "
            f"time its level α_t moves by γ = {params.gamma} × (α − truncated) after each finished call, "
            "kept in the database and clipped to the curve, so a ceiling never leaves the reviewed range. "
            f"The held-out backtest replays exactly that, with each call's outcome known only "
            f"{lag} calls later (delayed feedback)."
        )
    return (
        "Method `static`: each calibrated group ships one budget factor, the split-conformal quantile of its "
        "calls, and the executor uses it unchanged until the next calibration. "
        "The drift table below shows what the adaptive methods would have done on the same held-out calls."
    )


@dataclass(frozen=True)
class CalibrationRows:
    """A calibration's samples as the replays see them (oldest first), and its time-ordered split."""

    groups: Sequence[Group]
    group: np.ndarray
    y: np.ndarray
    observed: np.ndarray
    epoch: np.ndarray
    train_rows: np.ndarray
    test_rows: np.ndarray

    @classmethod
    def of(cls, samples: Any, train_rows: np.ndarray, test_rows: np.ndarray) -> CalibrationRows:
        """From a ``SampleSet`` (its ``groups``, ``group``, ``y``, ``observed``, ``epoch`` arrays)."""
        return cls(list(samples.groups), samples.group, samples.y, samples.observed, samples.epoch,
                   np.asarray(train_rows), np.asarray(test_rows))

    def streams(self, predicted: np.ndarray) -> tuple[Stream, Stream]:
        """(training, held-out) streams with the configuration's predictions."""

        def take(rows: np.ndarray) -> Stream:
            return Stream(self.group[rows], predicted[rows], self.y[rows], self.observed[rows], self.epoch[rows])

        return take(self.train_rows), take(self.test_rows)

    def index(self, groups: Mapping[Group, Any] | Sequence[Group]) -> dict[Group, int]:
        position = {g: i for i, g in enumerate(self.groups)}
        return {g: position[g] for g in groups if g in position}


def _place(static_ceiling: np.ndarray, raw: np.ndarray, test: Stream, adapted: Mapping[int, Any]) -> np.ndarray:
    """The static ceilings with the adapted groups' rows replaced, clamped as ``decide_ceiling`` clamps."""
    out = static_ceiling.astype(float, copy=True)
    rows = np.isin(test.group, list(adapted))
    out[rows] = np.minimum(np.maximum(raw[rows], te.MIN_FACTOR_CEILING), te.MAX_OUTPUT_TOKENS)
    return out


def replay_configuration(
    spec: MethodSpec,
    alpha: float,
    rows: CalibrationRows,
    predicted: np.ndarray,
    factors: Mapping[Group, float],
    static_ceiling: np.ndarray,
    *,
    adapt: Sequence[Group] | None = None,
    reviewed: te.Coefficients | None = None,
    feedback: Feedback = BACKTEST_FEEDBACK,
) -> np.ndarray:
    """The held-out ceilings of a coefficient configuration when it runs with ``spec`` at run time.

    ``static_ceiling`` is what the configuration sets with no runtime state (``decide_ceiling``'s rules and
    clamps). With ``aci``, the groups in ``adapt`` (default: every group in ``factors``) get a new curve
    from the training rows, anchored on their factor, and their held-out calls are replayed with delayed
    feedback. Groups whose factor is the one already in ``reviewed`` keep ``reviewed``'s curve, if it has
    one (that is what runs today).
    """
    train, test = rows.streams(predicted)
    out = static_ceiling.astype(float, copy=True)
    adapted: dict[int, te.AdaptiveCurve] = {}
    if spec.name == "aci":
        wanted = adapt if adapt is not None else list(factors)
        anchors = {i: factors[g] for g, i in rows.index([g for g in wanted if g in factors]).items()}
        adapted = curves_for(train, alpha, anchors, spec.curve_multiples)
        if adapted:
            raw, _ = replay_aci(test, adapted, {}, alpha, spec.gamma, feedback)
            out = _place(out, raw, test, adapted)
    if reviewed is not None and reviewed.adaptive_target is not None and reviewed.adaptive_gamma is not None:
        kept = {
            i: reviewed.adaptive_curves[g] for g, i in rows.index(list(reviewed.adaptive_curves)).items()
            if i not in adapted and g in reviewed.budget_factors and factors.get(g) == reviewed.budget_factors[g]
        }
        if kept:
            raw, _ = replay_aci(test, kept, {}, reviewed.adaptive_target, reviewed.adaptive_gamma, feedback)
            out = _place(out, raw, test, kept)
    return out


def compare_in_calibration(
    alpha: float,
    rows: CalibrationRows,
    predicted: np.ndarray,
    factors: Mapping[Group, float],
    static_ceiling: np.ndarray,
    feedback: Feedback = BACKTEST_FEEDBACK,
    *,
    chosen: tuple[str, np.ndarray] | None = None,
) -> DriftSummary:
    """``backtest.calibration_under_drift``: every method on the held-out calls, for the configuration that ships.

    ``predicted``, ``factors`` and ``static_ceiling`` describe what merging ships (the shipped
    coefficients, their factors, their ceilings with no runtime state). ``chosen`` = (the calibration's
    method, the ceilings the gate replayed for it): that method's row is those ceilings, so it equals the
    shipped backtest exactly. The other adaptive methods move the factored groups that have a reviewed
    curve (enough own fitted calls); ``differs_from_static`` counts the held-out calls whose ceiling each
    method changes, ``adapted_calls`` those it could change: with few of them the rows coincide.

    Worst bin = the worst of 5 consecutive blocks of held-out calls (telemetry rarely has 50 calls in 5
    minutes). The oracle is each group's own quantile of the held-out calls, in hindsight. Beyond
    ``MAX_COMPARED_CALLS`` held-out calls only the newest are replayed (the loops are sequential; the
    summary says so); the gate's own replay of the chosen method always covers every held-out call.
    """
    held_out = int(rows.test_rows.size)
    if held_out > MAX_COMPARED_CALLS:
        rows = dataclasses.replace(rows, test_rows=rows.test_rows[-MAX_COMPARED_CALLS:])
        static_ceiling = static_ceiling[-MAX_COMPARED_CALLS:]
        if chosen is not None:
            chosen = (chosen[0], chosen[1][-MAX_COMPARED_CALLS:])
    train, test = rows.streams(predicted)
    anchors = {i: factors[g] for g, i in rows.index(list(factors)).items()}
    comparison = Comparison(alpha, feedback)
    comparison.ceilings["static"] = static_ceiling.astype(float)
    curves = curves_for(train, alpha, anchors, CURVE_MULTIPLES)  # both adaptive methods' reviewed bounds
    for name in ("rolling", "aci"):
        spec = MethodSpec(name)
        if name == "rolling":
            raw = replay_rolling(test, train, {}, curves, alpha, spec.window, feedback)
        else:
            raw, _ = replay_aci(test, curves, {}, alpha, spec.gamma, feedback)
        comparison.ceilings[name] = _place(static_ceiling, raw, test, curves) if curves else static_ceiling
    if chosen is not None and chosen[0] in comparison.ceilings:
        comparison.ceilings[chosen[0]] = np.asarray(chosen[1], dtype=float)
    static = comparison.ceilings["static"]
    differs = {name: int(np.count_nonzero(comparison.ceilings[name] != static)) for name in ("rolling", "aci")}
    comparison.ceilings["oracle"] = oracle_ceilings(test, alpha)
    comparison.metrics = {k: evaluate(test, c, alpha, bin_seconds=None) for k, c in comparison.ceilings.items()}
    return comparison.summary().model_copy(update={
        "bins": "5 consecutive blocks of equal size",
        "calls": (f"all {held_out} held-out calls" if held_out <= MAX_COMPARED_CALLS
                  else f"the newest {MAX_COMPARED_CALLS} of {held_out} held-out calls"),
        "configuration": "shipped",
        "this_pull_request": chosen[0] if chosen is not None else None,
        "adapted_groups": sorted(rows.groups[i] for i in curves),
        "adapted_calls": int(np.isin(test.group, list(curves)).sum()),
        "differs_from_static": differs,
    })


def adaptive_changes(
    spec: MethodSpec,
    alpha: float,
    rows: CalibrationRows,
    predicted: np.ndarray,
    shipped: Mapping[Group, float],
    current: te.Coefficients,
    extras: Mapping[Group, Mapping[str, Any]] | None = None,
) -> list[ProposedChange]:
    """The reviewed part of the method, as ``proposed_changes`` entries for the libcst editor.

    ``shipped``: the groups whose BUDGET_FACTORS this proposal sets, with their new factor; ``rows`` with
    ``train_rows`` = every sample (the curve comes from all the data, like the factor). With ``aci`` each
    gets its curve in ``ADAPTIVE_BUDGET_FACTORS`` (a level the file has but the new curve lacks gets the
    new curve's value there, so no stale entry survives), and ``ADAPTIVE_SETTINGS`` its target α and γ.
    With ``static`` a shipped group that already has a curve gets it flattened to the new factor (the
    runtime then has nothing to adapt between), so the file stays consistent either way.
    """
    extras = extras or {}
    current_settings = {("aci", "target_alpha"): current.adaptive_target, ("aci", "gamma"): current.adaptive_gamma}
    old = {
        (te.adaptive_group_key(g), te.adaptive_level_key(a)): f
        for g, c in current.adaptive_curves.items() for a, f in zip(c.alphas, c.factors, strict=True)
    }
    train, _ = rows.streams(predicted)
    s = scores(train)
    changes: list[ProposedChange] = []

    def change(table: Literal["ADAPTIVE_BUDGET_FACTORS", "ADAPTIVE_SETTINGS"], key: tuple[str, str], new: float,
               group: Group | None) -> None:
        previous = old.get(key) if table == "ADAPTIVE_BUDGET_FACTORS" else current_settings.get(key)
        if previous is not None and math.isclose(previous, new, rel_tol=1e-12):
            return
        changes.append(ProposedChange(coefficient=table, key=key, old=previous, new=new,
                                      category=group[0] if group else None, complexity=group[1] if group else None,
                                      interval=(None, None), **(extras.get(group, {}) if group else {})))

    for g, i in sorted(rows.index(list(shipped)).items()):
        existing = current.adaptive_curves.get(g)
        curve: te.AdaptiveCurve | None = None
        if spec.name == "aci":
            m = train.group == i
            curve = group_curve(s[m], train.observed[m], alpha, shipped[g], spec.curve_multiples)
        if curve is None and existing is not None:  # nothing to adapt between: a flat curve at the new factor
            curve = te.AdaptiveCurve(existing.alphas, tuple(shipped[g] for _ in existing.alphas))
        if curve is None:
            continue
        new_levels = dict(zip(curve.alphas, curve.factors, strict=True))
        for a in sorted(set(new_levels) | set(existing.alphas if existing else ())):
            value = new_levels[a] if a in new_levels else _round_up(curve.factor_at(a))
            change("ADAPTIVE_BUDGET_FACTORS", (te.adaptive_group_key(g), te.adaptive_level_key(a)), value, g)
    if spec.name == "aci" and any(c.coefficient == "ADAPTIVE_BUDGET_FACTORS" for c in changes):
        change("ADAPTIVE_SETTINGS", ("aci", "target_alpha"), round(alpha, 4), None)  # as the curve keys spell it
        change("ADAPTIVE_SETTINGS", ("aci", "gamma"), spec.gamma, None)
    return changes
