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
#: The statistics that fill the result (``metadata.method_version``, ``calibration_runs.method_version``).
METHOD_VERSION = "t5-conformal-2"

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

    n: int | None = Field(
        None, description="held-out calls replayed (null in a group's per-method entry: the group carries it)")
    truncations: int | None = Field(None, description="calls truncated, censored calls counted as fitting (lower end)")
    truncations_upper: int | None = Field(
        None, description="calls truncated, censored calls counted as truncated (upper end: what the gate tests)")
    truncation_rate: float | None = Field(None, description="truncations / n (lower end)")
    truncation_interval: Interval | None = Field(None, description="[lower, upper] truncation rate")
    reserved_over_used: float | None = Field(None, description="total ceiling tokens / total output tokens")


class MethodSummary(Truncation):
    """A method's backtest as a group or a change carries it (``MethodBacktest.summary``: the test, not the tokens)."""

    truncation_ci: Interval | None = Field(
        None, description="95 % Clopper–Pearson interval, lower end's lower bound to upper end's upper bound")
    binomial_p: float | None = Field(None, description="one-sided exact binomial p of 'rate ≤ α' on the upper end")
    evidence: bool | None = Field(None, description="enough held-out calls for the test to be evidence")
    kupiec_p: float | None = Field(None, description="Kupiec's proportion-of-failures p (rate = α, upper end)")


class MethodBacktest(MethodSummary):
    """One method's metrics on all held-out calls (``backtest.evaluate``)."""

    median_ceiling_over_actual: float | None = Field(None, description="median of ceiling / actual")
    p90_ceiling_over_actual: float | None = Field(None, description="90th percentile of ceiling / actual")
    pinball_loss: float | None = Field(None, description="quantile loss of the ceiling at 1 − α, tokens per call")
    reserved_tokens: int | None = Field(None, description="total ceiling tokens")
    used_tokens: int | None = Field(None, description="total output tokens")

    def summary(self) -> MethodSummary:
        """What a group or a change carries of these metrics."""
        return MethodSummary.model_validate(self.model_dump(include=set(MethodSummary.model_fields)))

    def group_method(self) -> GroupMethod:
        """What ``backtest.groups`` carries of these metrics for one method on one group."""
        rate = self.truncation_rate
        return GroupMethod.model_validate({**self.model_dump(include=set(GroupMethod.model_fields) - {"n"}),
                                           "coverage": None if rate is None else round(1 - rate, 6)})


class GroupBacktest(MethodSummary):
    """A group's held-out replay: the full refit's (``proposed``) figures at top level, each method's beside them."""

    current: MethodSummary | None = Field(None, description="today's ceilings")
    original_median: MethodSummary | None = Field(None, description="the original's median-ratio multiplier")
    proposed: MethodSummary | None = Field(None, description="the full refit (every group, gated or not)")
    shipped: MethodSummary | None = Field(None, description="what the pull request ships")


class GroupMethod(Truncation):
    """One method on one group's held-out calls (``backtest.groups``)."""

    binomial_p: float | None = Field(None, description="one-sided exact binomial p of 'rate ≤ α' on the upper end")
    evidence: bool | None = Field(None, description="enough held-out calls for the test to be evidence")
    coverage: float | None = Field(None, description="1 − truncation_rate")


class BacktestGroup(_Model):
    """One group's held-out calls under each method."""

    category: str = Field(description="the group's category")
    complexity: str = Field(description="the group's complexity")
    n: int = Field(description="the group's held-out calls")
    current: GroupMethod | None = Field(None, description="today's ceilings")
    original_median: GroupMethod | None = Field(None, description="the original's median-ratio multiplier")
    proposed: GroupMethod | None = Field(None, description="the full refit (not shipped)")
    shipped: GroupMethod | None = Field(None, description="what the pull request ships")


# --- calibration under drift ---------------------------------------------------------------------


class FeedbackSpec(_Model):
    """When a finished call's outcome reaches later calls in the replay (``drift.Feedback``)."""

    kind: Literal["fixed_lag", "completion_time"] = Field(description="fixed lag of calls, or completion times")
    lag_calls: int | None = Field(None, description="the fixed lag, in calls")
    first_token_seconds: float | None = Field(None, description="completion-time model: seconds to the first token")
    seconds_per_token: float | None = Field(None, description="completion-time model: seconds per output token")

    @model_serializer(mode="wrap")
    def _present(self, handler: Any) -> Any:
        return {k: v for k, v in handler(self).items() if v is not None}


class DriftMetrics(Truncation):
    """One drift method on the held-out calls in time order (``drift.evaluate`` and the oracle ratios)."""

    worst_bin_truncation: float | None = Field(None, description="truncation of the worst block of calls")
    worst_bin_n: int | None = Field(None, description="calls in the worst block")
    bins: int | None = Field(None, description="blocks counted")
    pinball_loss: float | None = Field(None, description="quantile loss at 1 − α, tokens per call")
    reserved_vs_oracle: float | None = Field(None, description="reserved/used ÷ the oracle's")
    pinball_vs_oracle: float | None = Field(None, description="pinball loss ÷ the oracle's")


class DriftSummary(_Model):
    """Every drift method replayed on the held-out calls for the configuration that ships."""

    alpha: float = Field(description="the target truncation rate")
    feedback: FeedbackSpec = Field(description="the delay with which outcomes are known")
    methods: dict[str, DriftMetrics] = Field(description="static, rolling, aci and the hindsight oracle")
    bins: str | None = Field(None, description="how the worst block is formed")
    calls: str | None = Field(None, description="which held-out calls were replayed")
    configuration: Literal["shipped"] | None = Field(None, description="'shipped': the rows replay what ships")
    this_pull_request: str | None = Field(None, description="the method whose row is this pull request")
    adapted_groups: list[Group] = Field(default_factory=list, description="groups with a reviewed quantile curve")
    adapted_calls: int | None = Field(None, description="held-out calls of the adapted groups")
    differs_from_static: dict[str, int] = Field(
        default_factory=dict, description="per adaptive method: held-out calls whose ceiling differs from static")


class Backtest(_Model):
    """The held-out replay: the older calls are fitted, the newest held out and replayed under each method."""

    current: MethodBacktest | None = Field(None, description="today's estimator")
    original_median: MethodBacktest | None = Field(None, description="the original's median-ratio method")
    proposed: MethodBacktest | None = Field(None, description="the full refit: every group, gated or not")
    shipped: MethodBacktest | None = Field(None, description="only the gated changes: this pull request")
    calibration_under_drift: DriftSummary | None = Field(
        None, description="every drift method replayed on the held-out calls; null when nothing is held out")
    train_n: int | None = Field(None, description="calls fitted (the older part)")
    test_n: int | None = Field(None, description="calls held out (the newest)")
    split_at: str | None = Field(None, description="time of the first held-out call (ISO, UTC)")
    groups: list[BacktestGroup] = Field(
        default_factory=list, description="each group's held-out figures under each method")


# --- groups --------------------------------------------------------------------------------------


class StepRecord(_Model):
    """A group's step toward α (``calibration.step.Step``): a raise under which no call's ceiling falls."""

    n: int | None = Field(None, description="the group's calls (fitted and held out)")
    today_truncations: int | None = Field(None, description="calls cut under today's ceilings")
    today_rate: float | None = Field(None, description="today_truncations / n")
    binomial_p: float | None = Field(None, description="exact binomial p of 'rate ≤ α' today")
    above_alpha: bool | None = Field(None, description="today truncates above α")
    factor: float | None = Field(None, description="the raised factor; null: no raise")
    sized_by: str | None = Field(None, description="what sized the raise")
    quantile_factor: float | None = Field(None, description="the group's fitted quantile")
    quantile_method: str | None = Field(None, description="how that quantile was fitted")
    today_factor: float | None = Field(None, description="median of today's ceiling ÷ predicted")
    expected_truncation_today: float | None = Field(None, description="estimated truncation today")
    expected_truncation: float | None = Field(None, description="estimated truncation after the raise")
    expected_method: str | None = Field(None, description="how the expected truncation was estimated")
    still_cut: int | None = Field(None, description="calls surely cut even under the raised ceilings")
    reserved_tokens_today: int | None = Field(None, description="tokens reserved today on the group's calls")
    reserved_tokens: int | None = Field(None, description="tokens reserved after the raise")
    used_tokens: int | None = Field(None, description="output tokens of the group's calls")
    verdict: str | None = Field(None, description="one line on the step")
    price_tokens: int | None = Field(None, description="extra tokens reserved on the group's calls")
    recent_calls: int | None = Field(None, description="its calls of the newest recent_days, judged on their own too")
    recent_truncations: int | None = Field(None, description="of those, cut under today's ceilings")
    recent_days: int | None = Field(None, description="how far back from its newest call the newest calls reach")
    read_truncation_today: float | None = Field(
        None, description="estimated truncation under today's ceilings as a lowering reads it (each call at its own "
        "ceiling, the larger of its two estimators); above α it raises the group")


class LoweringRecord(_Model):
    """A group's bounded lowering (``calibration.step.Lowering``): what ships, what bounded it, and the
    truncation its own calls estimate before and after (the closed loop checks these against the truth)."""

    fitted_factor: float = Field(description="the tested (fitted) factor")
    fitted_factor_ends_descent: bool = Field(
        True, description="the fitted factor is distribution-free, so the descent ends there; false: it rests on "
        "an assumption and only the bounds hold the step")
    factor: float = Field(description="the factor that ships")
    bound: str = Field(description="what bounded the step: the fitted factor, the rise bound, the step bound or the aim")
    today_factor: float = Field(description="today's reserved ÷ predicted tokens over the group's calls (Σ ÷ Σ), "
                                "where a lowering steps from")
    estimated_truncation_today: float = Field(description="the group's truncation today, estimated from its calls")
    estimated_truncation: float | None = Field(None, description="... under the shipped factor")


class GroupEntry(_Model):
    """One (category, complexity) group: its data, its budget factor and how it was obtained, the gate's word."""

    category: str = Field(description="canonical category")
    complexity: str = Field(description="canonical complexity")
    n: int = Field(description="calls of the group (first attempts)")
    n_censored: int = Field(description="calls cut at their ceiling (true length ≥ ceiling)")
    median_ratio: float | None = Field(description="Kaplan–Meier median of actual / predicted")
    median_ratio_ci: Interval = Field(description="its 95 % interval")
    median_ratio_ci_level: float | None = Field(None, description="the interval's actual coverage level")
    pooling_weight: float | None = Field(
        None, description="report only: the weight of the group's own calls in the pooled location")
    budget_factor: float | None = Field(description="the group's factor (what ships if the group passes)")
    factor_method: FactorMethod | None = Field(None, description="how the factor was obtained")
    extrapolation: bool = Field(False, description="the factor lies beyond the group's complete calls")
    assumption: str | None = Field(None, description="what the factor assumes; null: distribution-free")
    confidence: float | None = Field(description="P(realised truncation ≤ 2α); null: none claimed")
    confidence_note: str | None = Field(None, description="why no confidence is claimed")
    gate_direction: Direction | None = Field(None, description="how the group ships, if it does")
    step_toward_alpha: StepRecord | None = Field(
        None, description="the group's step toward α (every group, raised or not)")
    current_ceiling_factor: float | None = Field(
        None, description="median of today's ceiling ÷ the proposed prediction")
    original_confidence: float | None = Field(
        None, description="the original's score 0.6·min(1, n/12) + 0.4/(1+σ), for comparison")
    original_median_ratio: float | None = Field(None, description="the original's median ratio (clean successes only)")
    n_clean_success: int | None = Field(None, description="complete successful calls")
    category_pooling_weight: float | None = Field(
        None, description="report only: the category's weight in the pooled location")
    location_ratio: float | None = Field(None, description="report only: the pooled location as a ratio")
    factor_source: Literal["group"] | None = Field(None, description="'group': from the group's own calls")
    factor_pool_n: int | None = Field(None, description="calls the factor was computed from")
    factor_rank: int | None = Field(None, description="the order statistic of those calls a conformal factor is")
    factor_interval: Interval | None = Field(None, description="the factor's 90 % interval")
    factor_note: str | None = Field(None, description="a note on the factor (why none, what limits it)")
    avg_actual: float | None = Field(None, description="mean output tokens")
    avg_predicted: float | None = Field(None, description="mean recorded prediction")
    median_overestimate_ratio: float | None = Field(None, description="median of predicted / actual")
    median_ceiling_waste: float | None = Field(None, description="median of ceiling / actual")
    p90_ceiling_waste: float | None = Field(None, description="90th percentile of ceiling / actual")
    avg_ceiling: float | None = Field(None, description="mean recorded ceiling")
    proposed: bool = Field(description="the group passed the gate")
    gate_reasons: list[str] = Field(default_factory=list, description="why it did not")
    backtest: GroupBacktest | None = Field(None, description="the group's held-out replay")

    @property
    def key(self) -> Group:
        return self.category, self.complexity


# --- the gate and the changes --------------------------------------------------------------------


class WeightsVerdict(_Model):
    """The TOKEN_WEIGHTS decision."""

    changed: bool = Field(description="TOKEN_WEIGHTS changes ship")
    verdict: str | None = Field(None, description="why")


class ShippedVerdict(_Model):
    """The shipped configuration's check."""

    passed: bool = Field(description="something ships")
    verdict: str | None = Field(None, description="the shipped configuration on the held-out calls it changes")


class Gate(_Model):
    """The gate's decision and its reasons."""

    passed: bool = Field(description="at least one change ships")
    reasons: list[str] = Field(default_factory=list, description="one line per group, the weights, the shipped check")
    weights: WeightsVerdict | None = Field(None, description="the TOKEN_WEIGHTS decision and why")
    shipped: ShippedVerdict | None = Field(None, description="the shipped configuration's check")


class ProposedChange(_Model):
    """One entry the pull request writes: ``coefficient[key] = new`` where the estimator holds ``old``."""

    coefficient: Coefficient = Field(description="the estimator's table")
    key: Group = Field(description="the entry's key")
    old: int | float | None = Field(description="today's value; null: the key is absent")
    new: int | float = Field(description="the value the pull request writes")
    category: str | None = Field(None, description="the group's category (null: shared)")
    complexity: str | None = Field(None, description="the group's complexity (null: shared)")
    n: int | None = Field(None, description="calls behind it")
    confidence: float | None = Field(
        None, description="P(realised truncation ≤ 2α), or the bootstrap agreement for weights")
    backtest: GroupBacktest | None = Field(None, description="its held-out replay")
    direction: Direction | None = Field(None, description="reserve lowered, or a step toward α")
    step_toward_alpha: StepRecord | None = Field(None, description="the group's step when raised")
    lowering: LoweringRecord | None = Field(None, description="the group's bounded lowering when lowered")
    interval: Interval | None = Field(None, description="the value's interval")
    verdict: str | None = Field(None, description="one line: why it passed")

    @property
    def group(self) -> Group | None:
        return (self.category, self.complexity) if self.category is not None and self.complexity is not None else None


class FitChange(_Model):
    """A change the joint coefficient fit made, gated or not."""

    coefficient: Coefficient = Field(description="the estimator's table")
    key: Group = Field(description="its (kind, mode) or (category, complexity) key")
    old: int | float | None = Field(description="today's value (null: absent)")
    new: int | float | None = Field(description="the fitted value")
    n: int = Field(description="rows behind the coefficient")
    at_bound: bool = Field(description="on the per-run step bound")


# --- metadata ------------------------------------------------------------------------------------


class SourceModel(_Model):
    """One provider/model of the samples."""

    provider: str | None = Field(description="the provider recorded")
    model: str | None = Field(description="the model recorded")
    samples: int = Field(description="its samples")
    simulated: bool = Field(description="the simulated provider")
    share: float | None = Field(None, description="its share of the samples")


class Sources(_Model):
    """Where the samples come from."""

    simulated: bool | None = Field(None, description="any sample from the simulated provider; null: not recorded")
    models: list[SourceModel] = Field(default_factory=list, description="the samples' provider/model mix")


class TimeSpan(_Model):
    """First and last sample time (ISO, UTC)."""

    start: str = Field(description="the first")
    end: str = Field(description="the last")


class MethodParams(_Model):
    """The ceiling method's parameters (``drift.MethodSpec.params``); absent ones are left out of the JSON."""

    window: int | None = Field(None, description="rolling: calls in the window")
    gamma: float | None = Field(None, description="aci: the level's step size")
    alpha_range: Interval | None = Field(None, description="adaptive: the range the level may take")
    curve_levels: list[float] | None = Field(None, description="adaptive: the curve's levels")
    feedback: FeedbackSpec | None = Field(None, description="adaptive: the replay's feedback delay")

    @model_serializer(mode="wrap")
    def _present(self, handler: Any) -> Any:
        return {k: v for k, v in handler(self).items() if v is not None}

    def items(self) -> list[tuple[str, Any]]:
        return [(k, v) for k in type(self).model_fields if (v := getattr(self, k)) is not None]


class SampleCounts(_Model):
    """How the rows read became samples (``samples.build_sample_set``); null: an older output did not count it."""

    rows_read: int | None = Field(None, description="rows read")
    retries_excluded: int | None = Field(None, description="escalated retries: kept in the database, never fitted")
    repeats_excluded: int | None = Field(None, description="of those, repeated executions of a phase whose call "
                                         "was cut: the phase stays one sample")
    rows_retries_unknown: int | None = Field(None, description="rows from a source that does not mark retries")
    cut_calls_revealed_by_retry: int | None = Field(None, description="cut calls whose retry showed their need")
    cut_calls_raised_by_retry: int | None = Field(None, description="cut calls whose censoring a retry raised")
    selected: int | None = Field(None, description="successful or truncated first attempts")
    usable: int | None = Field(None, description="samples kept")
    censored: int | None = Field(None, description="truncated calls kept as right-censored samples")
    observed: int | None = Field(None, description="complete calls")
    excluded_failed_not_truncated: int | None = Field(None, description="failed calls that were not truncated")
    excluded_nonpositive_predicted: int | None = Field(None, description="calls with predicted ≤ 0")
    excluded_zero_actual: int | None = Field(None, description="calls with actual = 0")
    with_features: int | None = Field(None, description="re-estimated from stored features")
    without_features: int | None = Field(None, description="recorded prediction used")


class Pooling(_Model):
    """The factor model's spread (report only: factors never borrow)."""

    sigma: float | None = Field(None, description="residual spread (log)")
    tau2_category: float | None = Field(None, description="between-category variance (log)")
    tau2_group: float | None = Field(None, description="between-group variance (log)")
    global_location_ratio: float | None = Field(None, description="the overall location as a ratio")


class Metadata(_Model):
    """The run's parameters, data and provenance (``db_id``, ``generated_at`` … are set by the runner)."""

    db_id: str | None = Field(None, description="the database's identity")
    generated_at: str | None = Field(None, description="ISO time (UTC) the run was made")
    total_samples: int = Field(description="samples (first attempts) calibrated on")
    sample_counts: SampleCounts = Field(default_factory=SampleCounts, description="how the rows read became samples")
    retries_excluded: int | None = Field(None, description="escalated retries: kept in the database, never fitted")
    retries_known: bool | None = Field(
        None, description="false: no escalation events were read, or some rows come from a source without them")
    sources: Sources | None = Field(None, description="the samples' provider/model mix")
    run_ids: list[str] = Field(default_factory=list, description="runs the samples come from")
    time_span: TimeSpan | None = Field(None, description="the samples' first and last time (UTC)")
    method_version: str | None = Field(None, description="version of the calibration method")
    method: Literal["static", "rolling", "aci"] | None = Field(None, description="the ceiling method shipped")
    method_params: MethodParams = Field(default_factory=MethodParams, description="its parameters")
    target_truncation: float = Field(description="α: the target truncation rate")
    holdout_fraction: float | None = Field(None, description="share of the newest calls held out")
    confidence_threshold: float = Field(description="the gate's confidence threshold")
    min_samples: int = Field(description="calls a group needs")
    include_run_ids: list[str] = Field(default_factory=list, description="the runs selected (empty: all)")
    gate_level: float | None = Field(None, description="level of the gate's binomial test")
    min_evidence_calls: int | None = Field(None, description="held-out calls from which the test is evidence")
    max_coefficient_step: float | None = Field(None, description="largest change of a coefficient per run (×)")
    max_rise_per_run: float | None = Field(
        None, description="how far one run may raise a group's estimated truncation by lowering it (half where thin)")
    coefficients_version: str | None = Field(None, description="version of the estimator calibrated against")
    weights_free: bool | None = Field(None, description="TOKEN_WEIGHTS changes ship")
    fit_status: str | None = Field(None, description="the coefficient fit's outcome")
    fit_samples: int | None = Field(None, description="calls fitted (the older part)")
    fitted_rows: int | None = Field(None, description="rows in the fit's linear program")
    frozen_weights: list[Group] = Field(default_factory=list, description="TOKEN_WEIGHTS the bootstrap did not support")
    pooling: Pooling | None = Field(None, description="the factor model's spread")
    coverage_actual_max_tokens: float | None = Field(None, description="share of rows with a recorded ceiling")
    spellings_normalised: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="stored spellings that normalisation changed, with counts")
    window_weeks: int | None = Field(None, description="the calibration window (null: the whole history)")
    since: str | None = Field(None, description="the earliest call time asked for (--since, UTC)")
    window_start: str | None = Field(None, description="the first call time read (UTC; null: the whole history)")

    def window(self) -> str:
        """The calls read, in words: the whole history, or from when (and why)."""
        if self.window_start is None:
            return "the whole history"
        asked = [part for part in (f"--since {self.since}" if self.since else None,
                                   f"the newest {self.window_weeks} weeks" if self.window_weeks else None) if part]
        return f"calls since {self.window_start} ({' and '.join(asked)})" if asked else f"calls since {self.window_start}"
    calibration_run_id: int | None = Field(None, description="the calibration_runs row")
    timings_seconds: dict[str, float] = Field(default_factory=dict, description="seconds per stage of the run")


class Target(_Model):
    """One collection target."""

    target: int = Field(description="the count needed")
    label: str = Field(description="its name")
    met: bool = Field(description="reached")


class CollectionTargets(_Model):
    """The seed's data-collection targets and whether they are met."""

    successful_phases: int = Field(description="distinct successful phases in the data")
    groups_with_enough_samples: int = Field(description="groups with at least min_samples calls")
    phase_targets: list[Target] = Field(description="targets on successful phases (5 / 20 / 50)")
    group_targets: list[Target] = Field(description="targets on groups with enough samples (1 / 3 / 5)")


class SuccessMetrics(_Model):
    """The seed's success metrics."""

    success_events_ratio: float = Field(description="share of success=True events")
    success_events_at_least_half: bool = Field(description="at least half succeed")
    high_confidence_groups: int = Field(description="eligible groups with confidence ≥ the threshold")
    at_least_one_high_confidence_group: bool = Field(description="at least one such group")
    median_ratio_range: tuple[float, float] = Field(description="the range a median ratio should lie in")
    groups_median_in_range: int = Field(description="eligible groups whose median ratio lies in it")
    groups_eligible: int = Field(description="groups with at least min_samples calls")
    all_median_ratios_in_range: bool = Field(description="every eligible group's median ratio lies in it")
    all_confidences_at_threshold: bool = Field(description="every eligible group reaches the threshold")


class DocRow(_Model):
    """A documentation call (docs-like category, or a phase id naming doc/readme)."""

    run_id: str = Field(description="the run")
    phase_id: str = Field(description="the phase")
    category: str = Field(description="canonical category")
    complexity: str = Field(description="canonical complexity")
    actual_output_tokens: int = Field(description="output tokens (a lower bound if truncated)")
    predicted_output_tokens: int = Field(description="the recorded prediction")
    ceiling: int = Field(description="max_tokens the call ran with")
    truncated: bool = Field(description="the output reached the ceiling")
    success: bool = Field(description="the phase succeeded")


class CalibrationResult(_Model):
    """What one calibration found and proposes (the JSON file ``autopack calibrate`` writes)."""

    schema_version: int = Field(SCHEMA_VERSION, description="version of this format")
    metadata: Metadata = Field(description="parameters, data and provenance")
    gate: Gate = Field(description="the gate's decision")
    proposed_changes: list[ProposedChange] = Field(
        default_factory=list, description="exactly what the pull request writes")
    coefficient_fit: list[FitChange] = Field(
        default_factory=list, description="every change the coefficient fit made, gated or not")
    groups: list[GroupEntry] = Field(default_factory=list, description="every group, largest first")
    backtest: Backtest = Field(default_factory=Backtest, description="the held-out replay")
    collection_targets: CollectionTargets | None = Field(None, description="the seed's collection targets")
    success_metrics: SuccessMetrics | None = Field(None, description="the seed's success metrics")
    docs_truncation: list[DocRow] = Field(default_factory=list, description="documentation calls, largest first")
    report_path: str | None = Field(None, description="the markdown report")
    json_path: str | None = Field(None, description="this file")
    plot_path: str | None = Field(None, description="the plot")


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
