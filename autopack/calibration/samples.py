"""From telemetry rows to calibration samples: selection, censoring, canonical groups, re-estimation.

Pure: ``build_sample_set`` takes column arrays (what ``autopack.calibration.io.read_events`` returns) and
the current coefficients, and returns a ``SampleSet`` of plain numpy arrays. Nothing is read here.

Per call (one row of ``token_estimation_v2_events``):

- *a first attempt*: an escalated retry (the call made again with a raised ceiling after the same phase's
  previous attempt was truncated) is not a sample. Its output is drawn from the tail above the old cap, so
  counting it would over-weight long outputs and inflate every upper quantile; the truncated first attempt
  is already in the data as a censored sample. Nor is a *repeat*, a later execution of a phase whose call was
  cut (``phase_retries``): it draws the same phase's output again, and only cut phases are repeated. Retries
  are counted and reported (``retries_excluded``, of them ``repeats_excluded``), and each tells what its cut
  call needed (``_with_retry_outcomes``): observed when a retry came out uncut, censored at the highest
  ceiling its retries were cut at otherwise.
- *truncated* by one rule everywhere (samples, backtest, import, reports): the row says so, or its output
  reached its ceiling (``reached_ceiling``: ``output >= ceiling``).
- *selected* when it succeeded, or when it was truncated (whatever the builder then did): a truncated
  call is a right-censored observation, its true length at least ``max(actual, ceiling)``. The original
  dropped these, i.e. exactly the largest outputs (reference §10.9). Failed, untruncated calls are left
  out (failure-mode outputs, §10.20) and counted.
- *usable* when predicted > 0 and the (lower-bound) actual > 0; the others are counted and reported,
  never turned into a ratio of 0 as the original did.
- its group is the estimator's canonical (category, complexity): re-estimated from ``features_json``
  where present, else the stored strings normalised again (legacy rows hold raw spellings).

Each row points at a *prediction unit*: one per distinct ``features_json`` (or, for rows without
features, per stored category/complexity/deliverable count). A unit knows how to predict under any
coefficient set (``predict``), and the floor/buffer/override rules ``decide_ceiling`` applies to it, so
ceilings for 10⁶ rows are computed with numpy while staying equal to ``decide_ceiling`` (tested).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autopack import token_estimator as te
from autopack.llm.base import TRUNCATION_REASONS
from autopack.run_order import sorted_runs
from autopack.taxonomy import DOCS_LIKE, canonical_category, canonical_complexity, normalise_category
from autopack.truncation import reached_ceiling  # the one rule, shared with the import

Group = tuple[str, str]

def escalated_retries(
    phase_key: np.ndarray,
    attempt_index: np.ndarray,
    escalated_phase_key: np.ndarray,
    escalated_attempt_index: np.ndarray,
) -> np.ndarray:
    """Which rows are escalated retries (bool per row).

    The executor escalates once: when attempt a of a phase is truncated it records an escalation event
    for (phase, a), reserves the next attempt index and calls again with the raised ceiling. So a row is
    a retry when the phase's previous attempt index (the largest one below the row's, among the phase's
    rows) has an escalation event. A later fresh execution of the phase (its retry also truncated, or
    ``--replace``) starts from the estimator's ceiling again and is no escalated retry (``phase_retries`` makes it
    a repeat of the phase's cut call). ``phase_key`` is any
    integer code of (run_id, phase_id), the same coding for the rows and the escalation events.
    """
    phase = np.asarray(phase_key, dtype=np.int64)
    attempt = np.asarray(attempt_index, dtype=np.int64)
    out = np.zeros(phase.size, dtype=bool)
    esc_phase = np.asarray(escalated_phase_key, dtype=np.int64)
    esc_attempt = np.asarray(escalated_attempt_index, dtype=np.int64)
    if phase.size == 0 or esc_phase.size == 0:
        return out
    known = np.unique(esc_phase)  # a phase without an escalation has no retry: only the others are sorted
    candidates = np.flatnonzero(known[np.minimum(np.searchsorted(known, phase), known.size - 1)] == phase)
    if candidates.size < phase.size:
        out[candidates] = escalated_retries(phase[candidates], attempt[candidates], esc_phase, esc_attempt)
        return out
    order = np.lexsort((attempt, phase))
    p_s, a_s = phase[order], attempt[order]
    first_of_pair = np.r_[True, (p_s[1:] != p_s[:-1]) | (a_s[1:] != a_s[:-1])]
    pair_of_row = np.cumsum(first_of_pair) - 1
    pair_phase, pair_attempt = p_s[first_of_pair], a_s[first_of_pair]
    has_previous = np.r_[False, pair_phase[1:] == pair_phase[:-1]]
    previous_attempt = np.r_[-1, pair_attempt[:-1]]
    lo = int(min(pair_attempt.min(), esc_attempt.min(), -1))
    span = int(max(pair_attempt.max(), esc_attempt.max())) - lo + 1
    escalated = np.unique(esc_phase * span + (esc_attempt - lo))
    wanted = pair_phase * span + (previous_attempt - lo)
    hit = np.searchsorted(escalated, wanted)
    hit = np.minimum(hit, escalated.size - 1)
    is_retry_pair = has_previous & (escalated[hit] == wanted)
    out[order] = is_retry_pair[pair_of_row]
    return out


def retry_links(phase_key: np.ndarray, attempt_index: np.ndarray, event_id: np.ndarray,
                retry: np.ndarray) -> np.ndarray:
    """For every escalated retry, the row of the call it re-ran (-1 for other rows, or when none is found).

    The retry's previous attempt (the phase's largest attempt index below it, the one with the escalation
    event) holds the cut call. Calls are paired in order within the two attempts (the executor makes one call
    per attempt; an import numbers repeats by ``call_index``, which follows the rows' order): the k-th row of
    the retry attempt re-ran the k-th row of the previous one.
    """
    phase = np.asarray(phase_key, dtype=np.int64)
    attempt = np.asarray(attempt_index, dtype=np.int64)
    out = np.full(phase.size, -1, dtype=np.int64)
    retry = np.asarray(retry, dtype=bool)
    if not retry.any():
        return out
    in_retry_phase = np.isin(phase, np.unique(phase[retry]))  # only the phases that have a retry are sorted
    rows = np.flatnonzero(in_retry_phase)
    order = rows[np.lexsort((np.asarray(event_id)[rows], attempt[rows], phase[rows]))]
    p_s, a_s = phase[order], attempt[order]
    first_of_pair = np.r_[True, (p_s[1:] != p_s[:-1]) | (a_s[1:] != a_s[:-1])]
    pair_start = np.flatnonzero(first_of_pair)
    pair_size = np.diff(np.r_[pair_start, order.size])
    pair_of_row = np.cumsum(first_of_pair) - 1
    rank = np.arange(order.size) - pair_start[pair_of_row]
    has_previous = np.r_[False, p_s[pair_start[1:]] == p_s[pair_start[:-1]]]
    previous = np.maximum(pair_of_row - 1, 0)
    linked = retry[order] & has_previous[pair_of_row] & (rank < pair_size[previous])
    out[order[linked]] = order[pair_start[previous[linked]] + rank[linked]]
    return out


def phase_retries(phase_key: np.ndarray, attempt_index: np.ndarray, event_id: np.ndarray, escalated: np.ndarray,
                  cut: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(retry, repeat, retry_of) per row: the calls that re-ran a phase's cut call, and the row each re-ran.

    Two kinds, neither a sample: an escalated retry (``escalated``, ``escalated_retries``), and a *repeat*: any
    later execution of a phase whose call was cut (its escalated retry cut too, the drain runs the phase again
    from the estimator's ceiling, or ``--replace``). A repeat draws the same phase's output again, and only cut
    phases are repeated, so counted as a fresh first attempt it counts one long output twice: in a closed loop
    29 of 61 cut phases were repeated and cut again, every group showed about 1.5× its true truncation, and the
    gate held the groups near half their aim. Each links to the call it re-ran (``retry_links``: its previous
    attempt's, k-th call to k-th call), followed back through retries to the phase's first cut call, which stays
    the phase's one sample (``_with_retry_outcomes``)."""
    phase = np.asarray(phase_key, dtype=np.int64)
    attempt = np.asarray(attempt_index, dtype=np.int64)
    retry = np.asarray(escalated, dtype=bool).copy()
    root = np.asarray(cut, dtype=bool) & ~retry
    repeat = np.zeros(phase.size, dtype=bool)
    if root.any():
        # the first cut (non-retry) attempt of each phase that has one; every later attempt re-runs it
        cut_phase, cut_attempt = phase[root], attempt[root]
        by = np.lexsort((cut_attempt, cut_phase))
        cut_phase, cut_attempt = cut_phase[by], cut_attempt[by]
        head = np.r_[True, cut_phase[1:] != cut_phase[:-1]]
        phases, first_cut = cut_phase[head], cut_attempt[head]
        rows = np.flatnonzero(np.isin(phase, phases))
        later = attempt[rows] > first_cut[np.searchsorted(phases, phase[rows])]
        repeat[rows[later & ~retry[rows]]] = True
        retry |= repeat
    # each retry re-ran its previous attempt's call (``retry_links``); where that call is a retry too (a repeat's
    # escalation, the repeat itself), follow it back to the call the chain began with. A link always points to
    # a smaller attempt index, so the span of attempt indices bounds the hops.
    links = retry_links(phase, attempt, event_id, retry)
    for _ in range(int(attempt.max(initial=0)) - int(attempt.min(initial=0)) + 1):
        hop = (links >= 0) & retry[np.maximum(links, 0)]
        if not hop.any():
            break
        links[hop] = links[links[hop]]
    return retry, repeat, links


def is_simulated_source(provider: str | None, model: str | None) -> bool:
    """Data written by the simulated provider (or this module's synthetic generators), not a real model."""
    from autopack.llm.simulated import DEFAULT_MODEL, PROVIDER_NAME

    p = (provider or "").strip().lower()
    m = (model or "").strip().lower()
    return p in (PROVIDER_NAME, "synthetic") or "simulated" in m or m == DEFAULT_MODEL or m.startswith("synthetic")


@dataclass
class Summary:
    """Whole-selection facts computed apart from the per-row arrays (cheap SQL aggregates in the runner)."""

    run_ids: list[str] = field(default_factory=list)
    successful_phases: int = 0
    success_rate_all: float = 0.0
    coverage_actual_max_tokens: float = 0.0
    spellings: dict[str, dict[str, int]] = field(default_factory=lambda: {"category": {}, "complexity": {}})
    docs_rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EventColumns:
    """Per-row columns of ``token_estimation_v2_events`` as read (strings factorised), plus the summary.

    ``category_code``/``complexity_code``/``deliverable_count`` are only needed for rows without
    ``features_json`` (the runner does not even fetch them for the others).
    """

    event_id: np.ndarray  # int64
    epoch: np.ndarray  # float64 seconds
    category_code: np.ndarray  # int32 → categories (raw stored strings)
    complexity_code: np.ndarray  # int32 → complexities (raw)
    deliverable_count: np.ndarray  # int64
    features_code: np.ndarray  # int32 → features (-1 = none)
    predicted: np.ndarray  # float64
    actual: np.ndarray  # float64
    selected_budget: np.ndarray  # float64
    actual_max_tokens: np.ndarray  # float64, NaN = NULL
    success: np.ndarray  # bool
    truncated: np.ndarray  # bool (truncated OR is_truncated_output OR a truncation stop/finish reason)
    categories: list[str | None]
    complexities: list[str | None]
    features: list[str]
    summary: Summary = field(default_factory=Summary)
    #: bool per row: a retry of a cut call, escalated or a repeat of its phase (``phase_retries``). None = not
    #: known (nothing excluded, and the result says ``retries_known: false``).
    retry: np.ndarray | None = None
    #: bool per row: among ``retry``, a repeated execution of a phase whose call was cut (``phase_retries``).
    repeat: np.ndarray | None = None
    #: int64 per row: for a retry, the row of the cut call it re-ran (``phase_retries``), else -1.
    #: None = no links known (retries are then only excluded).
    retry_of: np.ndarray | None = None
    #: bool per row: the row came from a source that cannot tell retries (an import without retry columns):
    #: retries are then unknown (``retries_known: false``) even where escalation events exist. None = none such.
    retry_unknown: np.ndarray | None = None
    #: int32 per row → ``sources`` (-1 = unknown), the (provider, model) of the call. None = not read.
    source_code: np.ndarray | None = None
    sources: list[tuple[str | None, str | None]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.event_id.size)


@dataclass
class Units:
    """Prediction units: how each distinct feature set is predicted and capped."""

    group: np.ndarray  # int32 index into SampleSet.groups
    linear: np.ndarray  # bool: (overhead + Σ weight·count) × margin model
    counts: np.ndarray  # float64 (U × K) effective deliverable counts per weight key
    fixed_marginal: np.ndarray  # float64: marginal cost not tied to a weight key
    floor: np.ndarray  # float64 base budget (no-factor rule)
    buffer: np.ndarray  # float64 buffer multiplier (no-factor rule)
    override_min: np.ndarray  # float64 largest applicable override minimum (0 if none)
    weight_keys: list[tuple[str, str]]


@dataclass
class SampleSet:
    """The usable samples, oldest first, as arrays; plus what was excluded and why."""

    groups: list[Group]
    group: np.ndarray  # int32 per row
    epoch: np.ndarray
    event_id: np.ndarray
    y: np.ndarray  # actual, or the lower bound for censored rows
    observed: np.ndarray  # bool; False = censored (truncated)
    actual: np.ndarray  # stored actual_output_tokens
    recorded_predicted: np.ndarray
    recorded_ceiling: np.ndarray  # actual_max_tokens, else selected_budget
    pred_current: np.ndarray  # prediction of the current coefficients
    unit: np.ndarray  # int32 per row
    units: Units
    success: np.ndarray
    has_features: np.ndarray  # bool per row
    counts: dict[str, int] = field(default_factory=dict)
    summary: Summary = field(default_factory=Summary)
    #: provider/model mix of the samples: [{provider, model, samples, simulated}], most samples first
    sources: list[dict[str, Any]] = field(default_factory=list)
    retries_known: bool = False
    _rows_by_group: dict[int, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def n(self) -> int:
        return int(self.y.size)

    def subset(self, mask: np.ndarray) -> SampleSet:
        """The rows where ``mask`` is True (units and groups shared)."""
        rows = {
            f.name: getattr(self, f.name)[mask]
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }
        return dataclasses.replace(self, **rows, _rows_by_group=None)

    def rows_by_group(self) -> dict[int, np.ndarray]:
        """Row indices (oldest first) of each group present: one stable sort, cached (no per-group scan)."""
        if self._rows_by_group is None:
            order = np.argsort(self.group, kind="stable")
            sorted_groups = self.group[order]
            cuts = np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1
            self._rows_by_group = {int(self.group[rows[0]]): rows for rows in np.split(order, cuts) if rows.size}
        return self._rows_by_group


# --------------------------------------------------------------------------------------------------
# Predictions and ceilings, vectorised
# --------------------------------------------------------------------------------------------------


def coefficient_vectors(
    coefficients: te.Coefficients, groups: Sequence[Group], weight_keys: Sequence[tuple[str, str]]
) -> tuple[np.ndarray, np.ndarray]:
    """(overhead per group, weight per key) as arrays, with the estimator's defaults for missing keys."""
    overhead = np.array(
        [coefficients.phase_overhead.get(g, coefficients.default_phase_overhead) for g in groups], dtype=float
    )
    weights = np.array([coefficients.token_weights.get(k, 0) for k in weight_keys], dtype=float)
    return overhead, weights


def predict(samples: SampleSet, coefficients: te.Coefficients) -> np.ndarray:
    """Predicted output tokens of every row under ``coefficients`` (equal to ``estimate()``; tested)."""
    units = samples.units
    overhead, weights = coefficient_vectors(coefficients, samples.groups, units.weight_keys)
    unit_pred = np.floor(
        (overhead[units.group] + units.fixed_marginal + units.counts @ weights) * coefficients.safety_margin
    )
    linear_rows = units.linear[samples.unit]
    out = samples.pred_current.copy()
    out[linear_rows] = unit_pred[samples.unit[linear_rows]]
    return out


def rules_ceiling(samples: SampleSet, predicted: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """``decide_ceiling``'s floor/buffer/override path (for groups without a calibrated factor).

    ``rows``: only these rows (``predicted`` is then theirs).
    """
    u = samples.units
    unit = samples.unit if rows is None else samples.unit[rows]
    floor = u.floor[unit]
    buffer = u.buffer[unit]
    override = u.override_min[unit]
    selected = np.minimum(np.maximum(floor, np.floor(predicted * buffer)), te.MAX_OUTPUT_TOKENS)
    ceiling: np.ndarray = np.minimum(np.maximum(selected, override), te.MAX_OUTPUT_TOKENS)
    return ceiling


def factor_ceiling(predicted: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``decide_ceiling``'s calibrated path: predicted × factor rounded up, clamped to [512, 64000]."""
    raw = np.ceil(te.factor_product(predicted, factor))
    ceiling: np.ndarray = np.minimum(np.maximum(raw, te.MIN_FACTOR_CEILING), te.MAX_OUTPUT_TOKENS)
    return ceiling


def configuration_ceiling(
    samples: SampleSet, coefficients: te.Coefficients, factors: Mapping[Group, float]
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, ceiling) of every row under a coefficient set and its budget factors."""
    predicted = predict(samples, coefficients)
    factor_by_group = np.array([factors.get(g, math.nan) for g in samples.groups], dtype=float)
    f = factor_by_group[samples.group] if samples.n else np.empty(0)
    has = ~np.isnan(f)
    if has.all():
        return predicted, factor_ceiling(predicted, f)
    ceiling = np.empty(samples.n)
    ceiling[has] = factor_ceiling(predicted[has], f[has])
    rules = np.flatnonzero(~has)
    ceiling[rules] = rules_ceiling(samples, predicted[rules], rules)
    return predicted, ceiling


# --------------------------------------------------------------------------------------------------
# Building the sample set
# --------------------------------------------------------------------------------------------------


@dataclass
class _UnitInfo:
    group: Group
    linear: bool
    counts: dict[tuple[str, str], float]
    fixed_marginal: float
    predicted: float
    floor: float
    buffer: float
    override_min: float


def _effective_counts(
    features: te.PhaseFeatures, coefficients: te.Coefficients
) -> tuple[dict[tuple[str, str], float], float]:
    """Σ (file-complexity factor) per weight key, mirroring ``estimate``'s per-deliverable loop."""
    category = normalise_category(features.category).value
    counts: dict[tuple[str, str], float] = {}
    fixed = 0.0
    for text in (d for d in features.deliverables if d and d.strip()):
        path = te.deliverable_path(text)
        kind = te.deliverable_kind(path, category)
        stats = features.existing_files.get(path)
        is_new = stats is None or bool(te._NEW_VERB.match(text))  # noqa: SLF001 - the estimator's own rule
        mode = "new" if is_new else "modify"
        factor = 1.0 if is_new or stats is None else te.file_complexity_factor(stats)
        if (kind, mode) in coefficients.token_weights:
            key = (kind, mode)
        elif ("backend", mode) in coefficients.token_weights:
            key = ("backend", mode)
        else:
            fixed += 500 * factor
            continue
        counts[key] = counts.get(key, 0.0) + factor
    return counts, fixed


def _rules(
    est: te.Estimate, features: te.PhaseFeatures, coefficients: te.Coefficients, no_factor: te.Coefficients
) -> tuple[float, float, float]:
    """(floor, buffer, largest override) that ``decide_ceiling`` applies when a group has no factor.

    ``no_factor``: ``coefficients`` without budget factors (made once per sample set, not once per spec).
    """
    # with a zero prediction the ceiling before overrides is the floor, so every override that could
    # ever raise this call's ceiling (under any coefficients: floors are not calibrated) shows up
    decision = te.decide_ceiling(dataclasses.replace(est, predicted_output_tokens=0), features, no_factor)
    overrides = [c.value for c in decision.contributions if c.name == "override"]
    floor = te.base_budget(est.category, est.complexity, coefficients)
    buffer, _ = te.buffer_for(est, coefficients)
    return float(floor), float(buffer), float(max(overrides, default=0))


def _unit_from_features(text: str, coefficients: te.Coefficients, no_factor: te.Coefficients) -> _UnitInfo | None:
    try:
        record = json.loads(text)
        if not isinstance(record, Mapping):
            return None
        features = te.features_from_record(record)
        est = te.estimate(features, coefficients)
    except Exception:  # unreadable features: the row is calibrated on its recorded prediction
        return None
    linear = est.model == "overhead_plus_marginal"
    counts, fixed = _effective_counts(features, coefficients) if linear else ({}, 0.0)
    floor, buffer, override = _rules(est, features, coefficients, no_factor)
    return _UnitInfo(est.group, linear, counts, fixed, float(est.predicted_output_tokens), floor, buffer, override)


def _unit_from_record(
    raw_category: str | None, raw_complexity: str | None, deliverable_count: int, coefficients: te.Coefficients,
    no_factor: te.Coefficients,
) -> _UnitInfo:
    """Rules for a row without features: its stored group, confidence assumed ≥ 0.7, no scope."""
    cat = normalise_category(raw_category)
    cx_value = canonical_complexity(raw_complexity)
    est = te.Estimate(
        predicted_output_tokens=0,
        confidence=1.0,
        category=cat.value,
        complexity=cx_value,
        raw_category=raw_category,
        raw_complexity=raw_complexity,
        category_known=cat.known,
        complexity_known=True,
        model="recorded",
        deliverable_count=int(deliverable_count),
        breakdown={},
        deliverable_counts={},
        doc_features={},
        context_quality="none",
    )
    features = te.PhaseFeatures(category=raw_category, complexity=raw_complexity, deliverables=())
    floor, buffer, override = _rules(est, features, coefficients, no_factor)
    return _UnitInfo((cat.value, cx_value), False, {}, 0.0, math.nan, floor, buffer, override)


def build_sample_set(columns: EventColumns, coefficients: te.Coefficients | None = None) -> SampleSet:
    """Select, censor, group and re-estimate the rows (see the module docstring)."""
    coeffs = coefficients or te.current_coefficients()
    no_factor = dataclasses.replace(coeffs, budget_factors={})
    n_all = columns.size
    cut = columns.truncated | reached_ceiling(columns.actual, columns.actual_max_tokens)
    retry = columns.retry if columns.retry is not None else np.zeros(n_all, dtype=bool)
    first = ~retry
    selected = (columns.success | cut) & first
    cut_lower = np.fmax(columns.actual, np.nan_to_num(columns.actual_max_tokens, nan=0.0))
    lower = np.where(cut, cut_lower, columns.actual)
    censored_all, revealed, raised = _with_retry_outcomes(columns, cut, cut_lower, selected, lower)
    nonpositive_pred = selected & (columns.predicted <= 0)
    zero_actual = selected & ~nonpositive_pred & (lower <= 0)
    usable = selected & ~nonpositive_pred & ~zero_actual

    # prediction units: one per distinct features string among usable rows, else per stored key
    unit_of_feature: dict[int, int] = {}
    unit_of_record: dict[tuple[int, int, int], int] = {}
    infos: list[_UnitInfo] = []
    usable_idx = np.flatnonzero(usable)
    feat = columns.features_code[usable_idx]
    for code in np.unique(feat[feat >= 0]).tolist():
        info = _unit_from_features(columns.features[code], coeffs, no_factor)
        if info is not None:
            unit_of_feature[code] = len(infos)
            infos.append(info)
    row_unit = np.full(usable_idx.size, -1, dtype=np.int64)
    if unit_of_feature:
        lookup = np.full(max(len(columns.features), 1), -1, dtype=np.int64)
        for code, u in unit_of_feature.items():
            lookup[code] = u
        has = feat >= 0
        row_unit[has] = lookup[feat[has]]
    has_features = row_unit >= 0
    need = np.flatnonzero(~has_features)
    if need.size:
        keys = np.stack(
            [
                columns.category_code[usable_idx[need]].astype(np.int64),
                columns.complexity_code[usable_idx[need]].astype(np.int64),
                columns.deliverable_count[usable_idx[need]].astype(np.int64),
            ],
            axis=1,
        )
        distinct, inverse = np.unique(keys, axis=0, return_inverse=True)
        for cat_code, cx_code, dcount in distinct.tolist():
            unit_of_record[(cat_code, cx_code, dcount)] = len(infos)
            infos.append(
                _unit_from_record(columns.categories[cat_code], columns.complexities[cx_code], dcount, coeffs,
                                  no_factor)
            )
        base = len(infos) - distinct.shape[0]
        row_unit[need] = base + inverse.reshape(-1)

    groups = sorted({info.group for info in infos})
    group_index = {g: i for i, g in enumerate(groups)}
    weight_keys = sorted({k for info in infos for k in info.counts})
    key_index = {k: i for i, k in enumerate(weight_keys)}
    counts = np.zeros((len(infos), len(weight_keys)))
    for u, info in enumerate(infos):
        for k, v in info.counts.items():
            counts[u, key_index[k]] = v
    units = Units(
        group=np.array([group_index[i.group] for i in infos], dtype=np.int32),
        linear=np.array([i.linear for i in infos], dtype=bool),
        counts=counts,
        fixed_marginal=np.array([i.fixed_marginal for i in infos], dtype=float),
        floor=np.array([i.floor for i in infos], dtype=float),
        buffer=np.array([i.buffer for i in infos], dtype=float),
        override_min=np.array([i.override_min for i in infos], dtype=float),
        weight_keys=weight_keys,
    )
    unit_pred = np.array([i.predicted for i in infos], dtype=float)
    pred_current = np.where(has_features, unit_pred[row_unit], columns.predicted[usable_idx]) if infos else np.empty(0)

    # oldest first; ties by event id
    order = np.lexsort((columns.event_id[usable_idx], columns.epoch[usable_idx]))
    rows = usable_idx[order]
    row_unit = row_unit[order]
    recorded_ceiling = np.where(
        np.isnan(columns.actual_max_tokens[rows]), columns.selected_budget[rows], columns.actual_max_tokens[rows]
    )
    samples = SampleSet(
        groups=groups,
        group=units.group[row_unit] if rows.size else np.empty(0, dtype=np.int32),
        epoch=columns.epoch[rows],
        event_id=columns.event_id[rows],
        y=lower[rows],
        observed=~censored_all[rows],
        actual=columns.actual[rows],
        recorded_predicted=columns.predicted[rows],
        recorded_ceiling=recorded_ceiling,
        pred_current=pred_current[order] if rows.size else np.empty(0),
        unit=row_unit.astype(np.int32),
        units=units,
        success=columns.success[rows],
        has_features=has_features[order],
        summary=columns.summary,
    )
    unknown = int(columns.retry_unknown.sum()) if columns.retry_unknown is not None else 0
    samples.retries_known = columns.retry is not None and unknown == 0
    samples.sources = _source_mix(columns, rows)
    samples.counts = {
        "rows_read": n_all,
        "retries_excluded": int(retry.sum()),
        "repeats_excluded": int(columns.repeat.sum()) if columns.repeat is not None else 0,
        "rows_retries_unknown": unknown if columns.retry is not None else n_all,
        "cut_calls_revealed_by_retry": int((usable & revealed).sum()),
        "cut_calls_raised_by_retry": int((usable & raised).sum()),
        "selected": int(selected.sum()),
        "usable": int(usable.sum()),
        "censored": int((usable & censored_all).sum()),
        "observed": int((usable & ~censored_all).sum()),
        "excluded_failed_not_truncated": int((first & ~selected).sum()),
        "excluded_nonpositive_predicted": int(nonpositive_pred.sum()),
        "excluded_zero_actual": int(zero_actual.sum()),
        "with_features": int(has_features.sum()),
        "without_features": int((~has_features).sum()),
    }
    return samples


def _with_retry_outcomes(columns: EventColumns, cut: np.ndarray, cut_lower: np.ndarray, selected: np.ndarray,
                         lower: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the retries say about the cut calls they re-ran: (censored, revealed, raised) per row.

    A retry is never a sample; it stays one piece of information about its cut call (still one sample):

    - the retry succeeded and was not cut: the call's need is *observed*, = the retry's output, or where the
      call was cut if the retry came out shorter (the same request drawn again varies a little; the need is at
      least the cut point, and leaving such calls censored would push their weight into the tail);
    - the retry was cut too: the call stays censored, now at the retry's higher ceiling.

    Otherwise (a retry that failed for another reason, or no link) the call keeps its own censoring. ``lower``
    is updated in place.
    """
    censored = cut.copy()
    revealed = np.zeros(cut.size, dtype=bool)
    raised = np.zeros(cut.size, dtype=bool)
    if columns.retry_of is None:
        return censored, revealed, raised
    retry_rows = np.flatnonzero(columns.retry_of >= 0)
    call = columns.retry_of[retry_rows]
    usable_link = selected[call] & cut[call]
    retry_rows, call = retry_rows[usable_link], call[usable_link]
    retry_cut = cut[retry_rows]
    shows = ~retry_cut & columns.success[retry_rows]
    higher = retry_cut & (cut_lower[retry_rows] > lower[call])
    # a call may have several retries (an escalation, a repeat, its escalation): the highest cut point, and the
    # longest uncut output
    np.maximum.at(lower, call[higher], cut_lower[retry_rows[higher]])
    np.fmax.at(lower, call[shows], columns.actual[retry_rows[shows]])
    censored[call[shows]] = False
    revealed[call[shows]] = True
    raised[call[higher]] = True
    raised &= ~revealed
    return censored, revealed, raised


def _source_mix(columns: EventColumns, rows: np.ndarray) -> list[dict[str, Any]]:
    """The (provider, model) mix of the sample rows, most samples first."""
    if columns.source_code is None or rows.size == 0:
        return []
    codes, counts = np.unique(columns.source_code[rows], return_counts=True)
    out: list[dict[str, Any]] = []
    for code, count in zip(codes.tolist(), counts.tolist(), strict=True):
        provider, model = columns.sources[code] if code >= 0 else (None, None)
        out.append({"provider": provider, "model": model, "samples": int(count),
                    "simulated": is_simulated_source(provider, model)})
    out.sort(key=lambda d: (-d["samples"], str(d["provider"]), str(d["model"])))
    return out


def spellings_of(pairs: Mapping[tuple[str | None, str | None], int]) -> dict[str, dict[str, int]]:
    """Stored spellings that normalisation changed: {"category": {"testing → tests": n}, …}."""
    out: dict[str, dict[str, int]] = {"category": {}, "complexity": {}}
    for (category, complexity), n in pairs.items():
        for name, raw, canon in (("category", category, canonical_category(category)),
                                 ("complexity", complexity, canonical_complexity(complexity))):
            if raw != canon:
                key = f"{raw} → {canon}"
                out[name][key] = out[name].get(key, 0) + int(n)
    return out


def is_docs_row(category: str | None, phase_id: str | None) -> bool:
    """A documentation call: docs-like canonical category, or a phase id naming doc/readme (the seed's SQL)."""
    pid = (phase_id or "").lower()
    return canonical_category(category) in DOCS_LIKE or "doc" in pid or "readme" in pid


def docs_row(run_id: str, phase_id: str, category: str | None, complexity: str | None, actual: int, predicted: int,
             ceiling: int | None, selected_budget: int, truncated: bool, success: bool) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "phase_id": phase_id,
        "category": canonical_category(category),
        "complexity": canonical_complexity(complexity),
        "actual_output_tokens": int(actual),
        "predicted_output_tokens": int(predicted),
        "ceiling": int(selected_budget if ceiling is None else ceiling),
        "truncated": bool(truncated),
        "success": bool(success),
    }


DOCS_ROWS_LIMIT = 200


def _is_truncation(r: Mapping[str, Any]) -> bool:
    reasons = {r.get("stop_reason"), r.get("finish_reason")}
    flagged = bool(r.get("truncated")) or bool(r.get("is_truncated_output")) or bool(reasons & TRUNCATION_REASONS)
    return flagged or reached_ceiling(r.get("actual_output_tokens"), r.get("actual_max_tokens"))


def _epoch_of(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    from datetime import UTC

    return float(value.replace(tzinfo=value.tzinfo or UTC).timestamp())


def columns_from_records(
    records: Sequence[Mapping[str, Any]], escalations: Sequence[Mapping[str, Any]] | None = None
) -> EventColumns:
    """``EventColumns`` from plain dicts (tests and small tools); keys as the table's columns.

    ``escalations`` (``token_budget_escalation_events`` rows) mark the escalated retries; without them
    the retry flag is unknown (None).
    """
    factor: dict[str, dict[Any, int]] = {k: {} for k in ("cat", "cx", "feat", "phase", "src")}

    def code(kind: str, value: Any) -> int:
        table = factor[kind]
        return table.setdefault(value, len(table))

    pairs: dict[tuple[str | None, str | None], int] = {}
    for r in records:
        key = (r.get("category"), r.get("complexity"))
        pairs[key] = pairs.get(key, 0) + 1
    docs = [
        docs_row(r["run_id"], r["phase_id"], r.get("category"), r.get("complexity"), r["actual_output_tokens"],
                 r["predicted_output_tokens"], r.get("actual_max_tokens"), r.get("selected_budget") or 0,
                 _is_truncation(r), bool(r.get("success")))
        for r in records
        if is_docs_row(r.get("category"), r.get("phase_id"))
    ]
    docs.sort(key=lambda d: -d["actual_output_tokens"])
    n = len(records)
    event_id = np.array([r.get("id", i + 1) for i, r in enumerate(records)], dtype=np.int64)
    phase = np.array([code("phase", (r["run_id"], r["phase_id"])) for r in records], dtype=np.int64)
    attempt = np.array([r.get("attempt_index") or 0 for r in records], dtype=np.int64)
    truncated = np.array([_is_truncation(r) for r in records], dtype=bool)
    unknown = np.array([r.get("retries_known") is False for r in records], dtype=bool)
    retry = repeat = retry_of = None
    if escalations is not None:
        escalated = escalated_retries(
            phase, attempt,
            np.array([code("phase", (e["run_id"], e["phase_id"])) for e in escalations], dtype=np.int64),
            np.array([e["attempt_index"] for e in escalations], dtype=np.int64),
        )
        retry, repeat, retry_of = phase_retries(phase, attempt, event_id, escalated, truncated & ~unknown)
    summary = Summary(
        run_ids=sorted_runs({r["run_id"] for r in records}),
        successful_phases=len({(r["run_id"], r["phase_id"]) for r in records if r.get("success")}),
        success_rate_all=(sum(1 for r in records if r.get("success")) / n) if n else 0.0,
        coverage_actual_max_tokens=(sum(1 for r in records if r.get("actual_max_tokens") is not None) / n) if n else 0.0,
        spellings=spellings_of(pairs),
        docs_rows=docs[:DOCS_ROWS_LIMIT],
    )
    return EventColumns(
        event_id=event_id,
        epoch=np.array([_epoch_of(r.get("timestamp")) for r in records], dtype=float),
        category_code=np.array([code("cat", r.get("category")) for r in records], dtype=np.int32),
        complexity_code=np.array([code("cx", r.get("complexity")) for r in records], dtype=np.int32),
        deliverable_count=np.array([r.get("deliverable_count") or 0 for r in records], dtype=np.int64),
        features_code=np.array(
            [code("feat", r["features_json"]) if r.get("features_json") else -1 for r in records], dtype=np.int32
        ),
        predicted=np.array([r["predicted_output_tokens"] for r in records], dtype=float),
        actual=np.array([r["actual_output_tokens"] for r in records], dtype=float),
        selected_budget=np.array([r.get("selected_budget") or 0 for r in records], dtype=float),
        actual_max_tokens=np.array(
            [math.nan if r.get("actual_max_tokens") is None else r["actual_max_tokens"] for r in records], dtype=float
        ),
        success=np.array([bool(r.get("success")) for r in records], dtype=bool),
        truncated=truncated,
        categories=list(factor["cat"]),
        complexities=list(factor["cx"]),
        features=list(factor["feat"]),
        summary=summary,
        retry=retry,
        repeat=repeat,
        retry_of=retry_of,
        retry_unknown=unknown if unknown.any() else None,
        source_code=np.array([code("src", (r.get("provider"), r.get("model"))) for r in records], dtype=np.int32),
        sources=list(factor["src"]),
    )
