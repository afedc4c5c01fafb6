"""The parameters of the drain, the calibration and the pipeline, once: type, default, bounds, description.

Every front end takes its parameters from here: ``autopack drain batch``/``calibrate``/``pipeline run`` generate
their options from these fields and build the model in one place (``autopack.cli.options.params_command``), each
Prefect flow takes one model as its ``params`` parameter (so the UI's form, ``prefect.yaml``'s ``params:`` and
``prefect deployment run -p params=…`` see the bounds and descriptions too), the library takes the models
(``run_batch_drain``, ``run_calibration``; ``BatchOptions`` is a ``DrainParams``, ``calibration.core.Params`` a
``CalibrationParams``), and ``scripts/params_table.py`` writes docs/prefect.md's parameter table from them. A bad
value is refused with the same message everywhere. ``tests/test_params_once.py`` fails when a parameter is
declared, defaulted or bounded anywhere else.

Defaults differ where the front ends legitimately do: ``autopack drain batch`` keeps the original's defaults
(10 phases, one worker, no zero-yield stop), while the pipeline drains a whole collection in one run (500
phases, two workers, stop after 10 phases in a row without telemetry). Deployments that want other values
set them as ``prefect.yaml`` parameters (the legacy-backlog drain), never as second defaults.

This module stays light (pydantic only): every command imports it to build its options.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)
from pydantic_core import PydanticCustomError

from autopack.errors import InputError, validation_summary

#: Counts are stored in 32-bit columns (``drain_sessions.batch_size``): ``autopack.telemetry.bounds.INT32``'s
#: upper end (a test pins the two together; that module imports the ORM, too heavy for every command).
MAX_COUNT = 2**31 - 1
#: Workers are processes (or threads) on one machine.
MAX_WORKERS = 64
#: A lease longer than a day is what the API refuses too.
MAX_LEASE_SECONDS = 86_400.0
MAX_DURATION_SECONDS = 7 * 86_400.0
#: Each provider-gate slot is a row of ``provider_slots``, created up front.
MAX_PROVIDER_CONCURRENCY = 1024
#: ``AUTOPACK_PROVIDER_CONCURRENCY`` when unset: what an empty ``provider_concurrency`` parameter falls back to.
DEFAULT_PROVIDER_CONCURRENCY = 4

#: A phase's deadline unless a drain says otherwise (``phase_timeout_seconds``).
PHASE_TIMEOUT_SECONDS = 900.0
#: The lease of a batch drain's claims (``lease_seconds``). The drain's own loop renews every lease it holds a
#: third of the way through, whatever its phase is doing, so the lease need not outlive a phase's deadline;
#: short, it frees a dead drain's phases within two minutes.
DRAIN_LEASE_SECONDS = 120.0
#: The lease of a claim no drain loop renews: ``autopack drain one`` (its phase renews between provider calls
#: only) and the API's claims and heartbeats (the client renews at its own pace). Such a lease must outlive the
#: phase's deadline, else a slow provider call loses the phase and its result is rejected: the deadline's default.
CLAIM_LEASE_SECONDS = PHASE_TIMEOUT_SECONDS

#: Phase states a drain may take phases from (EXECUTING ones only once their lease expired, whatever this says):
#: the drains', ``leases.claim_phase``'s and the API's ``POST /drain/claim``'s choices.
DrainableState = Literal["QUEUED", "FAILED", "TIMEOUT", "SKIPPED"]
DRAINABLE_STATES: tuple[DrainableState, ...] = get_args(DrainableState)
#: What a drain, a claim and the API take when no states are given.
DEFAULT_DRAIN_STATES: tuple[DrainableState, ...] = ("QUEUED", "FAILED")
#: Calibration methods that can ship: ``rolling`` is measured (every report's drift table) but has no runtime.
ShippableMethod = Literal["static", "aci"]
SHIPPABLE_METHODS: tuple[ShippableMethod, ...] = get_args(ShippableMethod)


# --- validators ------------------------------------------------------------------------------------------


def _drainable_states(value: Any) -> Any:
    """``"queued, FAILED"`` (the CLI's spelling) or a list: upper-cased, blanks and repeats dropped, each drainable
    (checked here, so the message names the states a drain can take)."""
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, list | tuple):
        return value  # not a list: pydantic says so
    states = list(dict.fromkeys(str(part).strip().upper() for part in parts if str(part).strip()))
    unknown = [state for state in states if state not in DRAINABLE_STATES]
    if unknown:
        raise PydanticCustomError("drainable", "cannot drain {unknown}: choose from {choices}",
                                  {"unknown": ", ".join(unknown), "choices": ", ".join(DRAINABLE_STATES)})
    return states


def _none_is_empty(value: Any) -> Any:
    """No value for a list (a repeatable option not given, ``None`` from Python) is the empty list."""
    return [] if value is None else value


def check_shippable(name: str) -> ShippableMethod:
    """``name`` as a method a calibration can ship, else ``InputError`` saying why (``rolling``: no runtime).

    ``autopack.calibration.drift.method_spec`` refuses with this too: one refusal, from the light module.
    """
    if name == "rolling":
        raise InputError(
            "--method rolling cannot be shipped: autopack has no runtime for a rolling window (its state would "
            "be the recent outcomes, and a truncated call only tells a lower bound)",
            hint="use --method aci (adapts at run time within a reviewed curve) or static; every report's "
            "'Calibration under drift' table shows what rolling would have done",
        )
    for method in SHIPPABLE_METHODS:
        if name == method:
            return method
    raise InputError(f"unknown --method {name!r}", hint=f"use one of {', '.join(SHIPPABLE_METHODS)}")


def _shippable(name: Any) -> Any:
    """The calibration's own refusal (``check_shippable``): it says why ``rolling`` cannot ship."""
    if name is None:
        return name
    try:
        return check_shippable(str(name))
    except InputError as exc:
        raise PydanticCustomError("shippable", "{reason}", {"reason": exc.one_line()}) from None


# --- the fields: type, bounds, description ---------------------------------------------------------------

Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
Finite = Annotated[float, Field(allow_inf_nan=False)]

RunIds = Annotated[
    list[str], BeforeValidator(_none_is_empty),
    Field(description="Runs to drain (empty: every run with drainable phases)."),
]
BatchSize = Annotated[Count, Field(description="Phases to process in this drain session.")]
States = Annotated[
    list[DrainableState],
    BeforeValidator(_drainable_states),
    Field(min_length=1, description="Phase states to drain (on the command line: comma-separated)."),
]
MaxConsecutiveZeroYield = Annotated[
    Count | None, Field(description="Stop after this many phases in a row without telemetry (empty: never).")
]
MaxFingerprintRepeats = Annotated[
    Count,
    Field(description="Stop a run once one failure fingerprint occurred this often in that run (counted per run "
                      "within the session; truncations are budget outcomes and never count)."),
]
MaxAttemptsPerPhase = Annotated[Count, Field(description="Attempts per phase in one session (over all sessions "
                                                        "a phase stops at its own max_builder_attempts).")]
MaxTimeoutsPerRun = Annotated[Count, Field(description="Skip a run after this many timeouts.")]
PhaseTimeoutSeconds = Annotated[
    Finite, Field(gt=0, le=MAX_DURATION_SECONDS, description="Stop a phase after this many seconds.")
]
MaxTotalMinutes = Annotated[
    Finite | None,
    Field(gt=0, le=MAX_DURATION_SECONDS / 60,
          description="Stop starting phases after this many minutes (empty: no limit)."),
]
SkipRunPrefixes = Annotated[
    list[str], BeforeValidator(_none_is_empty), Field(description="Skip runs whose id starts with one of these.")
]
Workers = Annotated[int, Field(ge=1, le=MAX_WORKERS, description="Phases run in parallel.")]
Resume = Annotated[bool, Field(description="Continue the newest unfinished drain session.")]
LeaseSeconds = Annotated[
    Finite,
    Field(ge=1, le=MAX_LEASE_SECONDS, description="Lease length: a dead drain's phases are claimable again after it."),
]
#: Provider-gate slots (0: no gate): the parameter's bound and ``AUTOPACK_PROVIDER_CONCURRENCY``'s.
ProviderSlots = Annotated[int, Field(ge=0, le=MAX_PROVIDER_CONCURRENCY)]
ProviderConcurrency = Annotated[
    ProviderSlots | None,
    Field(description="Provider calls in flight across every drain on this "
          "database (empty: AUTOPACK_PROVIDER_CONCURRENCY; 0: no gate)."),
]

MinSamples = Annotated[Count, Field(description="Fitted calls a group needs before its budget factor may change.")]
ConfidenceThreshold = Annotated[
    Finite, Field(ge=0, le=1, description="Minimum confidence for a group's change.")
]
TargetTruncation = Annotated[
    Finite, Field(gt=0, lt=0.5, description="Target truncation rate α of the proposed budgets.")
]
MaxRisePerRun = Annotated[
    Finite,
    Field(gt=0, le=0.05, description="How far one run may raise a group's estimated truncation by lowering its "
          "ceilings (0.005: half a point; half that where its evidence is thin). At the default no merged change "
          "raised a group's true truncation by more than 1 pp in the closed loop; more lowers the reserve sooner."),
]
HoldoutFraction = Annotated[
    Finite,
    Field(ge=0, lt=0.9, description="Newest fraction of the calls held out for the backtest; 0 holds out none: "
          "a report only, nothing can ship (what ships must have been tested)."),
]
#: The longest calibration window (``window_weeks``): about 20 years.
MAX_WINDOW_WEEKS = 1040
WindowWeeks = Annotated[
    int | None,
    Field(ge=1, le=MAX_WINDOW_WEEKS,
          description="Calibrate on the newest N weeks of telemetry only (by call time; empty: the whole history). "
          "The read costs what the window holds, not what the history holds."),
]


def _naive_utc(value: datetime | None) -> datetime | None:
    """The stored timestamps' form: naive UTC (an offset given is converted; none given means UTC)."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


Since = Annotated[
    datetime | None,
    AfterValidator(_naive_utc),
    Field(description="Calibrate on the calls made at or after this time only (UTC unless an offset is given; "
          "e.g. 2026-11-02 or 2026-11-02T06:00:00); with --window-weeks, the later start of the two."),
]
Method = Annotated[
    ShippableMethod | None,
    BeforeValidator(_shippable),
    Field(description="How budgets follow drift at run time: static or aci (empty: the drift benchmark's choice; "
          "rolling is only measured, in the report's drift table)."),
]

DryRun = Annotated[bool, Field(description="Never call GitHub: write the branch into target_repo's own git checkout.")]
TargetRepo = Annotated[
    str, Field(description="Git checkout whose token_estimator.py the pull request edits (under a deployment, "
               "\".\" is the run's fresh clone).")
]
OutputDir = Annotated[
    str, Field(description="Where the report, JSON, plot and PR body go (absolute under a deployment).")
]
SkipDrain = Annotated[bool, Field(description="Only calibrate and publish (the weekly job).")]
ValidateRunId = Annotated[
    str | None,
    Field(description="Run of the phase validated before the drain (empty: the first of run_ids, else any)."),
]
ValidatePhaseId = Annotated[
    str | None, Field(description="Phase validated before the drain (empty: the run's first QUEUED phase).")
]
ExpectDbId = Annotated[
    str | None, Field(description="Refuse unless the database id is this (empty: AUTOPACK_EXPECTED_DB_ID).")
]


# --- the models --------------------------------------------------------------------------------------------


ModelT = TypeVar("ModelT", bound="ParamsModel")


class ParamsModel(BaseModel):
    """A parameter set: unknown names refused, every error an ``InputError`` of one line."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @model_validator(mode="wrap")
    @classmethod
    def _one_line(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(data)
        except ValidationError as exc:
            raise InputError(validation_summary(exc)) from None

    @classmethod
    def default(cls, name: str) -> Any:
        """``name``'s default value."""
        return cls.model_fields[name].get_default(call_default_factory=True)

    @classmethod
    def bounds(cls, name: str) -> str:
        """``name``'s allowed values in a few characters (``1 ≤ x ≤ 64``, ``static | aci``), from its JSON schema."""
        return _bounds_text(_json_schema(cls)["properties"][name])

    def part(self, model: type[ModelT]) -> ModelT:
        """The fields of ``model`` (a base of this model), exactly as given here."""
        return model(**self.model_dump(include=set(model.model_fields)))


@cache
def _json_schema(model: type[ParamsModel]) -> dict[str, Any]:
    return model.model_json_schema()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _bounds_text(schema: Mapping[str, Any]) -> str:
    for branch in (schema, *schema.get("anyOf", ())):
        if "enum" in branch:
            return " | ".join(str(choice) for choice in branch["enum"])
        if "enum" in branch.get("items", {}):
            return "some of " + ", ".join(str(choice) for choice in branch["items"]["enum"])
        low = next(((op, branch[key]) for key, op in (("minimum", "≤"), ("exclusiveMinimum", "<")) if key in branch),
                   None)
        high = next(((op, branch[key]) for key, op in (("maximum", "≤"), ("exclusiveMaximum", "<")) if key in branch),
                    None)
        if low or high:
            left = f"{_number(low[1])} {low[0]} " if low else ""
            right = f" {high[0]} {_number(high[1])}" if high else ""
            return f"{left}x{right}"
    return ""


class DrainParams(ParamsModel):
    """The batch drain (``autopack drain batch``, the ``batch-drain`` flow): the original's defaults."""

    run_ids: RunIds = []
    batch_size: BatchSize = 10
    states: States = list(DEFAULT_DRAIN_STATES)
    max_consecutive_zero_yield: MaxConsecutiveZeroYield = None
    max_fingerprint_repeats: MaxFingerprintRepeats = 3
    max_attempts_per_phase: MaxAttemptsPerPhase = 2
    max_timeouts_per_run: MaxTimeoutsPerRun = 2
    phase_timeout_seconds: PhaseTimeoutSeconds = PHASE_TIMEOUT_SECONDS
    max_total_minutes: MaxTotalMinutes = None
    skip_run_prefixes: SkipRunPrefixes = []
    workers: Workers = 1
    resume: Resume = False
    lease_seconds: LeaseSeconds = DRAIN_LEASE_SECONDS
    provider_concurrency: ProviderConcurrency = None


class CalibrationParams(ParamsModel):
    """The calibration's statistics (``autopack calibrate``, the ``calibrate`` flow, ``run_calibration``)."""

    min_samples: MinSamples = 5
    confidence_threshold: ConfidenceThreshold = 0.7
    target_truncation: TargetTruncation = 0.05
    holdout_fraction: HoldoutFraction = 0.3
    method: Method = None
    window_weeks: WindowWeeks = None
    since: Since = None
    max_rise_per_run: MaxRisePerRun = 0.005

    def window_start(self, now: datetime) -> datetime | None:
        """The first call time the calibration reads (naive UTC; None: the whole history): ``since``, the newest
        ``window_weeks`` before ``now``, or the later of the two."""
        starts = [s for s in (self.since, None if self.window_weeks is None else
                              (now.astimezone(UTC).replace(tzinfo=None) - timedelta(weeks=self.window_weeks)))
                  if s is not None]
        return max(starts) if starts else None


class PipelineParams(CalibrationParams, DrainParams):
    """``autopack pipeline run`` and the ``telemetry-pipeline`` flow: every drain and calibration parameter (the
    calibration reads the drained runs, ``run_ids``) plus the pipeline's own. The drain defaults differ from
    ``drain batch``'s: the pipeline drains a whole collection in one run."""

    batch_size: BatchSize = 500
    workers: Workers = 2
    max_consecutive_zero_yield: MaxConsecutiveZeroYield = 10
    validate_run_id: ValidateRunId = None
    validate_phase_id: ValidatePhaseId = None
    dry_run: DryRun = False
    target_repo: TargetRepo = "."
    output_dir: OutputDir = "reports"
    skip_drain: SkipDrain = False
    expect_db_id: ExpectDbId = None

    def drain(self) -> DrainParams:
        """The drain's parameters, exactly as given."""
        return self.part(DrainParams)

    def calibration(self) -> CalibrationParams:
        """The calibration's parameters, exactly as given."""
        return self.part(CalibrationParams)
