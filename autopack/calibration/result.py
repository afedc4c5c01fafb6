"""The calibration result as a typed model: what ``autopack calibrate`` writes as JSON and everything reads.

``core.calibrate`` builds ``CalibrationResult``, ``runner`` completes its provenance (database id, time,
files) and writes ``model_dump_json``; the report, the pull-request body, the CLI and the flows read it by
attribute. ``load_result`` is the one reader of a result file: a current file validates as it is, an older
one (no ``schema_version``: written before the model existed, when keys were only ever added) is upgraded
there, and nowhere else is the raw JSON read by key. ``docs/calibration-result.schema.json`` is this
model's JSON Schema (``scripts/result_schema.py``).

Fields an older output may lack have a default (``None``, empty) so an old file still renders, with the
missing figures marked unknown rather than invented.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

from autopack.errors import InputError

#: Bumped when a field changes meaning or disappears (adding a field with a default does not need it).
SCHEMA_VERSION = 1

Group = tuple[str, str]
#: (lower, upper); either end unknown (``null``) when there is nothing to compute it from.
Interval = tuple[float | None, float | None]
Coefficient = Literal["BUDGET_FACTORS", "PHASE_OVERHEAD", "TOKEN_WEIGHTS", "ADAPTIVE_BUDGET_FACTORS",
                      "ADAPTIVE_SETTINGS"]
FactorMethod = Literal["km_conformal", "censored_fit", "small_group_bound", "none"]
Direction = Literal["lower", "raise"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- backtest metrics ----------------------------------------------------------------------------


class Truncation(_Model):
    """Held-out truncation of one ceiling rule: a count and a rate, each as an interval over the censored calls."""

    n: int | None = Field(None, description="held-out calls replayed")
    truncations: int | None = Field(None, description="calls truncated, censored calls counted as fitting (lower end)")
    truncations_upper: int | None = Field(
        None, description="calls truncated, censored calls counted as truncated (upper end: what the gate tests)")
    truncation_rate: float | None = Field(None, description="truncations / n (lower end)")
    truncation_interval: Interval | None = Field(None, description="[lower, upper] truncation rate")
    reserved_over_used: float | None = Field(None, description="total ceiling tokens / total output tokens")


class MethodSummary(Truncation):
    """A method's backtest as a group or a change carries it (``core.SUMMARY_KEYS``)."""

    truncation_ci: Interval | None = Field(
        None, description="95 % Clopper–Pearson interval, lower end's lower bound to upper end's upper bound")
    binomial_p: float | None = Field(None, description="one-sided exact binomial p of 'rate ≤ α' on the upper end")
    evidence: bool | None = Field(None, description="enough held-out calls for the test to be evidence")
    kupiec_p: float | None = Field(None, description="Kupiec's proportion-of-failures p (rate = α, upper end)")


class MethodBacktest(MethodSummary):
    """One method's metrics on all held-out calls (``backtest.evaluate``)."""

    median_ceiling_over_actual: float | None = None
    p90_ceiling_over_actual: float | None = None
    pinball_loss: float | None = Field(None, description="quantile loss of the ceiling at 1 − α, tokens per call")
    reserved_tokens: int | None = None
    used_tokens: int | None = None


class GroupBacktest(MethodSummary):
    """A group's held-out replay: the full refit's (``proposed``) figures at top level, each method's beside them."""

    current: MethodSummary | None = Field(None, description="today's ceilings")
    original_median: MethodSummary | None = Field(None, description="the original's median-ratio multiplier")
    proposed: MethodSummary | None = Field(None, description="the full refit (every group, gated or not)")
    shipped: MethodSummary | None = Field(None, description="what the pull request ships")


class GroupMethod(Truncation):
    """One method on one group's held-out calls (``backtest.groups``)."""

    binomial_p: float | None = None
    evidence: bool | None = None
    coverage: float | None = Field(None, description="1 − truncation_rate")


class BacktestGroup(_Model):
    category: str
    complexity: str
    n: int = Field(description="the group's held-out calls")
    current: GroupMethod | None = None
    original_median: GroupMethod | None = None
    proposed: GroupMethod | None = None
    shipped: GroupMethod | None = None


# --- calibration under drift ---------------------------------------------------------------------


class FeedbackSpec(_Model):
    """When a finished call's outcome reaches later calls in the replay (``drift.Feedback``)."""

    kind: Literal["fixed_lag", "completion_time"]
    lag_calls: int | None = None
    first_token_seconds: float | None = None
    seconds_per_token: float | None = None

    @model_serializer(mode="wrap")
    def _present(self, handler: Any) -> Any:
        return {k: v for k, v in handler(self).items() if v is not None}


class DriftMetrics(Truncation):
    """One drift method on the held-out calls in time order (``drift.evaluate`` and the oracle ratios)."""

    worst_bin_truncation: float | None = Field(None, description="truncation of the worst block of calls")
    worst_bin_n: int | None = None
    bins: int | None = None
    pinball_loss: float | None = None
    reserved_vs_oracle: float | None = Field(None, description="reserved/used ÷ the oracle's")
    pinball_vs_oracle: float | None = Field(None, description="pinball loss ÷ the oracle's")


class DriftSummary(_Model):
    """Every drift method replayed on the held-out calls for the configuration that ships."""

    alpha: float
    feedback: FeedbackSpec
    methods: dict[str, DriftMetrics] = Field(description="static, rolling, aci and the hindsight oracle")
    bins: str | None = None
    calls: str | None = Field(None, description="which held-out calls were replayed")
    configuration: Literal["shipped"] | None = Field(None, description="'shipped': the rows replay what ships")
    this_pull_request: str | None = Field(None, description="the method whose row is this pull request")
    adapted_groups: list[Group] = Field(default_factory=list, description="groups with a reviewed quantile curve")
    adapted_calls: int | None = None
    differs_from_static: dict[str, int] = Field(
        default_factory=dict, description="per adaptive method: held-out calls whose ceiling differs from static")


class Backtest(_Model):
    """The held-out replay: the older calls are fitted, the newest held out and replayed under each method."""

    current: MethodBacktest | None = Field(None, description="today's estimator")
    original_median: MethodBacktest | None = Field(None, description="the original's median-ratio method")
    proposed: MethodBacktest | None = Field(None, description="the full refit: every group, gated or not")
    shipped: MethodBacktest | None = Field(None, description="only the gated changes: this pull request")
    calibration_under_drift: DriftSummary | None = None
    train_n: int | None = Field(None, description="calls fitted (the older part)")
    test_n: int | None = Field(None, description="calls held out (the newest)")
    split_at: str | None = Field(None, description="time of the first held-out call (ISO, UTC)")
    groups: list[BacktestGroup] = Field(default_factory=list)


# --- groups --------------------------------------------------------------------------------------


class StepRecord(_Model):
    """A group's step toward α (``calibration.step.Step``): a raise under which no call's ceiling falls."""

    n: int | None = Field(None, description="the group's calls (fitted and held out)")
    today_truncations: int | None = Field(None, description="calls cut under today's ceilings")
    today_rate: float | None = None
    binomial_p: float | None = None
    above_alpha: bool | None = Field(None, description="today truncates above α")
    factor: float | None = Field(None, description="the raised factor; null: no raise")
    sized_by: str | None = None
    quantile_factor: float | None = None
    quantile_method: str | None = None
    today_factor: float | None = Field(None, description="median of today's ceiling ÷ predicted")
    expected_truncation_today: float | None = None
    expected_truncation: float | None = Field(None, description="estimated truncation after the raise")
    expected_method: str | None = None
    still_cut: int | None = Field(None, description="calls surely cut even under the raised ceilings")
    reserved_tokens_today: int | None = None
    reserved_tokens: int | None = None
    used_tokens: int | None = None
    verdict: str | None = None
    price_tokens: int | None = Field(None, description="extra tokens reserved on the group's calls")


class GroupEntry(_Model):
    """One (category, complexity) group: its data, its budget factor and how it was obtained, the gate's word."""

    category: str
    complexity: str
    n: int = Field(description="calls of the group (first attempts)")
    n_censored: int = Field(description="calls cut at their ceiling (true length ≥ ceiling)")
    median_ratio: float | None = Field(description="Kaplan–Meier median of actual / predicted")
    median_ratio_ci: Interval = Field(description="its 95 % interval")
    median_ratio_ci_level: float | None = None
    pooling_weight: float | None = None
    budget_factor: float | None = Field(description="the group's factor (what ships if the group passes)")
    factor_method: FactorMethod | None = None
    extrapolation: bool = False
    assumption: str | None = Field(None, description="what the factor assumes; null: distribution-free")
    confidence: float | None = Field(description="P(realised truncation ≤ 2α); null: none claimed")
    confidence_note: str | None = Field(None, description="why no confidence is claimed")
    gate_direction: Direction | None = Field(None, description="how the group ships, if it does")
    step_toward_alpha: StepRecord | None = None
    current_ceiling_factor: float | None = Field(None, description="median of today's ceiling ÷ the proposed prediction")
    original_confidence: float | None = None
    original_median_ratio: float | None = None
    n_clean_success: int | None = None
    category_pooling_weight: float | None = None
    location_ratio: float | None = None
    factor_source: Literal["group"] | None = None
    factor_pool_n: int | None = Field(None, description="calls the factor was computed from")
    factor_rank: int | None = Field(None, description="the order statistic of those calls a conformal factor is")
    factor_interval: Interval | None = None
    factor_note: str | None = None
    avg_actual: float | None = None
    avg_predicted: float | None = None
    median_overestimate_ratio: float | None = Field(None, description="median of predicted / actual")
    median_ceiling_waste: float | None = Field(None, description="median of ceiling / actual")
    p90_ceiling_waste: float | None = None
    avg_ceiling: float | None = None
    proposed: bool = Field(description="the group passed the gate")
    gate_reasons: list[str] = Field(default_factory=list, description="why it did not")
    backtest: GroupBacktest | None = None

    @property
    def key(self) -> Group:
        return self.category, self.complexity


# --- the gate and the changes --------------------------------------------------------------------


class WeightsVerdict(_Model):
    changed: bool = Field(description="TOKEN_WEIGHTS changes ship")
    verdict: str | None = None


class ShippedVerdict(_Model):
    passed: bool
    verdict: str | None = Field(None, description="the shipped configuration on the held-out calls it changes")


class Gate(_Model):
    passed: bool = Field(description="at least one change ships")
    reasons: list[str] = Field(default_factory=list, description="one line per group, the weights, the shipped check")
    weights: WeightsVerdict | None = None
    shipped: ShippedVerdict | None = None


class ProposedChange(_Model):
    """One entry the pull request writes: ``coefficient[key] = new`` where the estimator holds ``old``."""

    coefficient: Coefficient
    key: Group
    old: int | float | None = Field(description="today's value; null: the key is absent")
    new: int | float
    category: str | None = None
    complexity: str | None = None
    n: int | None = None
    confidence: float | None = None
    backtest: GroupBacktest | None = None
    direction: Direction | None = Field(None, description="reserve lowered, or a step toward α")
    step_toward_alpha: StepRecord | None = None
    interval: Interval | None = None
    verdict: str | None = Field(None, description="one line: why it passed")

    @property
    def group(self) -> Group | None:
        return (self.category, self.complexity) if self.category is not None and self.complexity is not None else None


class FitChange(_Model):
    """A change the joint coefficient fit made, gated or not."""

    coefficient: Coefficient
    key: Group
    old: int | float | None
    new: int | float | None
    n: int = Field(description="rows behind the coefficient")
    at_bound: bool = Field(description="on the per-run step bound")


# --- metadata ------------------------------------------------------------------------------------


class SourceModel(_Model):
    provider: str | None
    model: str | None
    samples: int
    simulated: bool
    share: float | None = None


class Sources(_Model):
    simulated: bool | None = Field(None, description="any sample from the simulated provider; null: not recorded")
    models: list[SourceModel] = Field(default_factory=list, description="the samples' provider/model mix")


class TimeSpan(_Model):
    start: str
    end: str


class MethodParams(_Model):
    """The ceiling method's parameters (``drift.MethodSpec.params``); absent ones are left out of the JSON."""

    window: int | None = None
    gamma: float | None = None
    alpha_range: Interval | None = None
    curve_levels: list[float] | None = None
    feedback: FeedbackSpec | None = None

    @model_serializer(mode="wrap")
    def _present(self, handler: Any) -> Any:
        return {k: v for k, v in handler(self).items() if v is not None}

    def items(self) -> list[tuple[str, Any]]:
        return [(k, v) for k in type(self).model_fields if (v := getattr(self, k)) is not None]


class SampleCounts(_Model):
    """How the rows read became samples (``samples.build_sample_set``); null: an older output did not count it."""

    rows_read: int | None = None
    retries_excluded: int | None = Field(None, description="escalated retries: kept in the database, never fitted")
    rows_retries_unknown: int | None = Field(None, description="rows from a source that does not mark retries")
    cut_calls_revealed_by_retry: int | None = None
    cut_calls_raised_by_retry: int | None = None
    selected: int | None = Field(None, description="successful or truncated first attempts")
    usable: int | None = None
    censored: int | None = Field(None, description="truncated calls kept as right-censored samples")
    observed: int | None = Field(None, description="complete calls")
    excluded_failed_not_truncated: int | None = None
    excluded_nonpositive_predicted: int | None = None
    excluded_zero_actual: int | None = None
    with_features: int | None = Field(None, description="re-estimated from stored features")
    without_features: int | None = Field(None, description="recorded prediction used")


class Pooling(_Model):
    sigma: float | None = None
    tau2_category: float | None = None
    tau2_group: float | None = None
    global_location_ratio: float | None = None


class Metadata(_Model):
    """The run's parameters, data and provenance (``db_id``, ``generated_at`` … are set by the runner)."""

    db_id: str | None = None
    generated_at: str | None = Field(None, description="ISO time (UTC) the run was made")
    total_samples: int
    sample_counts: SampleCounts = Field(default_factory=SampleCounts)
    retries_excluded: int | None = Field(None, description="escalated retries: kept in the database, never fitted")
    retries_known: bool | None = Field(
        None, description="false: no escalation events were read, or some rows come from a source without them")
    sources: Sources | None = None
    run_ids: list[str] = Field(default_factory=list)
    time_span: TimeSpan | None = None
    method_version: str | None = None
    method: Literal["static", "rolling", "aci"] | None = None
    method_params: MethodParams = Field(default_factory=MethodParams)
    target_truncation: float = Field(description="α: the target truncation rate")
    holdout_fraction: float | None = None
    confidence_threshold: float
    min_samples: int
    include_run_ids: list[str] = Field(default_factory=list)
    gate_level: float | None = None
    min_evidence_calls: int | None = Field(None, description="held-out calls from which the test is evidence")
    max_coefficient_step: float | None = None
    coefficients_version: str | None = None
    weights_free: bool | None = None
    fit_status: str | None = None
    fit_samples: int | None = None
    fitted_rows: int | None = None
    frozen_weights: list[Group] = Field(default_factory=list)
    pooling: Pooling | None = None
    coverage_actual_max_tokens: float | None = None
    spellings_normalised: dict[str, dict[str, int]] = Field(default_factory=dict)
    window_weeks: int | None = None
    window_start: str | None = None
    calibration_run_id: int | None = None
    timings_seconds: dict[str, float] = Field(default_factory=dict)


class Target(_Model):
    target: int
    label: str
    met: bool


class CollectionTargets(_Model):
    successful_phases: int
    groups_with_enough_samples: int
    phase_targets: list[Target]
    group_targets: list[Target]


class SuccessMetrics(_Model):
    success_events_ratio: float
    success_events_at_least_half: bool
    high_confidence_groups: int
    at_least_one_high_confidence_group: bool
    median_ratio_range: tuple[float, float]
    groups_median_in_range: int
    groups_eligible: int
    all_median_ratios_in_range: bool
    all_confidences_at_threshold: bool


class DocRow(_Model):
    run_id: str
    phase_id: str
    category: str
    complexity: str
    actual_output_tokens: int
    predicted_output_tokens: int
    ceiling: int
    truncated: bool
    success: bool


class CalibrationResult(_Model):
    """What one calibration found and proposes (the JSON file ``autopack calibrate`` writes)."""

    schema_version: int = Field(SCHEMA_VERSION, description="version of this format")
    metadata: Metadata
    gate: Gate
    proposed_changes: list[ProposedChange] = Field(
        default_factory=list, description="exactly what the pull request writes")
    coefficient_fit: list[FitChange] = Field(default_factory=list)
    groups: list[GroupEntry] = Field(default_factory=list)
    backtest: Backtest = Field(default_factory=Backtest)
    collection_targets: CollectionTargets | None = None
    success_metrics: SuccessMetrics | None = None
    docs_truncation: list[DocRow] = Field(default_factory=list, description="documentation calls, largest first")
    report_path: str | None = None
    json_path: str | None = None
    plot_path: str | None = None


class CalibrationOutcome(_Model):
    """What the ``calibrate`` flow returns: the result, or why there is none (no usable samples: an outcome)."""

    result: CalibrationResult | None = None
    no_samples: str | None = Field(None, description="why nothing was calibrated")

    @property
    def gate_passed(self) -> bool:
        return self.result is not None and self.result.gate.passed


def load_result(source: Path | str | bytes) -> CalibrationResult:
    """A calibration result from its file (a ``Path``) or its JSON text; ``InputError`` in one line otherwise.

    The only place the raw JSON is read by key: an older file (no ``schema_version``) is upgraded here.
    """
    where = f" {source}" if isinstance(source, Path) else ""
    try:
        text = source.read_text(encoding="utf-8") if isinstance(source, Path) else source
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read calibration JSON{where}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"calibration JSON{where} is not an object")
    version = data.get("schema_version")
    if version is None:
        data = _upgrade_unversioned(data)
    elif version != SCHEMA_VERSION:
        raise InputError(f"calibration JSON{where} has schema_version {version!r}; this autopack reads "
                         f"{SCHEMA_VERSION}", hint="re-run autopack calibrate with this version")
    try:
        return CalibrationResult.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(p) for p in first["loc"])
        raise InputError(f"calibration JSON{where} is not a calibration result: {at}: {first['msg']} "
                         f"({exc.error_count()} problem(s))") from None


def _upgrade_unversioned(data: dict[str, Any]) -> dict[str, Any]:
    """Outputs written before ``schema_version``: keys were only added, so the model's defaults fill the missing
    ones; an empty ``calibration_under_drift`` (nothing held out) and an empty change backtest become null, and
    a group without ``proposed`` passed when the proposal changes it."""
    data = {**data, "schema_version": SCHEMA_VERSION}
    backtest = data.get("backtest")
    if isinstance(backtest, dict) and backtest.get("calibration_under_drift") == {}:
        data["backtest"] = {**backtest, "calibration_under_drift": None}
    changes = data.get("proposed_changes")
    if isinstance(changes, list):
        data["proposed_changes"] = changes = [
            {**c, "backtest": None} if isinstance(c, dict) and c.get("backtest") == {} else c for c in changes]
    groups = data.get("groups")
    if isinstance(groups, list):  # the earliest outputs did not say which groups passed: those with a change did
        changed = {(c.get("category"), c.get("complexity")) for c in changes or [] if isinstance(c, dict)}
        data["groups"] = [
            {**g, "proposed": (g.get("category"), g.get("complexity")) in changed}
            if isinstance(g, dict) and "proposed" not in g else g for g in groups]
    return data


__all__ = ["SCHEMA_VERSION", "CalibrationOutcome", "CalibrationResult", "load_result"]
