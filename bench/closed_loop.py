"""The closed calibration loop, week by week, judged by the simulator's own law (a bench/test tool, not library).

One loop, as the weekly schedule runs it: a week passes (``age_one_week``), a week of the seed runs
(``seed_runs.week_run_id``) is added to a fresh SQLite database and drained with the real batch drain
(``run_batch_drain``, inline executor, the pipeline's drain parameters) and the simulated provider, calibrated with
the real ``run_calibration``, and what the gate shipped is merged: the proposal is applied to the estimator's source
text with the pull request's own libcst editor (``estimator_edit.apply_proposal``), and that edited file is what the
next week's drain and calibration run with (``merged``: its coefficient tables are installed into
``autopack.token_estimator`` for the week, then restored). The repository's file is never touched.

Truth comes from the law the simulator draws from (``simulated.phase_law``), not from the sample: for each phase of
a week, the ceiling its first attempt gets (``plan_call`` under the week's file) truncates with probability
P(length ≥ ceiling) = E_Z[P(σ·T_df ≥ log(ceiling/median) − a·Z)], integrated over the attempt noise Z by
Gauss–Hermite quadrature; the oracle's ceiling is the law's own (1 − α) quantile. A group's true truncation is the
mean over its phases, its reserve is Σ ceiling ÷ Σ oracle ceiling. With exploration on, a share s of first attempts
goes out at the escalation ceiling: truncation and reserve are the mixture.

Cycle c is the estimator after c merged calibrations: cycle 0 is the start, week w drains under cycle w − 1.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from scipy.optimize import brentq
from scipy.special import stdtr

from autopack import token_estimator as te
from autopack.calibration.result import CalibrationResult
from autopack.calibration.runner import NoUsableSamplesError, run_calibration
from autopack.db.engine import dispose_engines, session_scope
from autopack.db.handle import database_at, open_database
from autopack.db.migrate import upgrade_database
from autopack.db.models import TokenBudgetEscalationEvent, TokenEstimationV2Event
from autopack.execution.batch import BatchOptions, run_batch_drain
from autopack.execution.phase_runner import execute_phase
from autopack.execution.seed_runs import SEED_RUNS, ensure_seed_runs, seed_run_spec, week_run_id
from autopack.github.estimator_edit import apply_proposal, read_tables
from autopack.llm.simulated import GroupLaw, PhaseLaw, SimulatedProvider, phase_law
from autopack.params import CalibrationParams, PipelineParams

Group = tuple[str, str]
ESTIMATOR_SOURCE = Path(te.__file__).read_text(encoding="utf-8")
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(48)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


# --------------------------------------------------------------------------------------------------
# The law's truth
# --------------------------------------------------------------------------------------------------


def exceed_probability(law: PhaseLaw, ceiling: float) -> float:
    """P(drawn length ≥ ceiling): the call reaches its ceiling (= truncated). The draw is rounded to whole tokens."""
    if ceiling - 0.5 <= law.min_tokens:
        return 1.0
    x = math.log((ceiling - 0.5) / law.median)
    t = (x - law.attempt_sigma * _NODES) / law.sigma
    return float(np.dot(_WEIGHTS, 1.0 - stdtr(law.df, t)))


def oracle_ceiling(law: PhaseLaw, alpha: float) -> float:
    """The law's (1 − α) quantile as a ceiling: the smallest ceiling that truncates exactly α."""
    lo, hi = math.log(law.min_tokens + 1.0), math.log(law.median) + 60.0 * law.sigma + 1.0

    def gap(log_c: float) -> float:
        return exceed_probability(law, math.exp(log_c)) - alpha

    return math.exp(brentq(gap, lo, hi, xtol=1e-9))


@dataclass(frozen=True)
class PhaseCase:
    """One phase of the weekly workload: what the estimator sees and what the simulator draws from."""

    run: str
    phase_id: str
    features: te.PhaseFeatures

    @property
    def raw_group(self) -> Group:
        return (self.features.category or "", self.features.complexity or "")


def weekly_phases() -> list[PhaseCase]:
    """The seed workload's phases (the same every week; only the run ids and so the draws change)."""
    cases = []
    for run_id in SEED_RUNS:
        spec = seed_run_spec(run_id)
        for p in spec.phases:
            features = te.PhaseFeatures(
                category=p.category, complexity=p.complexity, deliverables=tuple(p.deliverables),
                description=p.description, scope_paths=tuple(p.scope_paths),
                read_only_context=tuple(p.read_only_context), builder_mode=p.builder_mode,
            )
            cases.append(PhaseCase(run_id, p.phase_id, features))
    return cases


@dataclass(frozen=True)
class GroupTruth:
    group: Group
    phases: int
    truncation: float  # mean over the group's phases of P(truncated) for a first attempt
    reserved: float  # Σ expected first-attempt ceiling
    oracle: float  # Σ the law's (1 − α) quantile

    @property
    def reserve_ratio(self) -> float:
        return self.reserved / self.oracle


def configuration_truth(
    cases: Sequence[PhaseCase], laws: Mapping[Group, GroupLaw], alpha: float, explore_share: float = 0.0,
    coefficients: te.Coefficients | None = None,
) -> dict[Group, GroupTruth]:
    """Each estimator group's true truncation and reserve under the law, for the estimator in force."""
    acc: dict[Group, list[float]] = {}
    for case in cases:
        est, decision = te.plan_call(case.features, coefficients)
        law = phase_law(case.features.category, case.features.complexity,
                        [te.deliverable_path(d) for d in case.features.deliverables], laws)
        ceiling = decision.actual_max_tokens
        explored = te.escalate(selected_budget=decision.selected_budget, actual_max_tokens=ceiling, tokens_used=0,
                               complexity=est.complexity).retry_max_tokens
        p = (1 - explore_share) * exceed_probability(law, ceiling) + explore_share * exceed_probability(law, explored)
        reserved = (1 - explore_share) * ceiling + explore_share * explored
        row = acc.setdefault(est.group, [0.0, 0.0, 0.0, 0.0])
        row[0] += 1
        row[1] += p
        row[2] += reserved
        row[3] += oracle_ceiling(law, alpha)
    return {g: GroupTruth(g, int(n), t / n, r, o) for g, (n, t, r, o) in acc.items()}


def overall(truth: Mapping[Group, GroupTruth]) -> tuple[float, float]:
    """(true truncation over every phase, Σ reserved ÷ Σ oracle)."""
    n = sum(t.phases for t in truth.values())
    return (sum(t.truncation * t.phases for t in truth.values()) / n,
            sum(t.reserved for t in truth.values()) / sum(t.oracle for t in truth.values()))


# --------------------------------------------------------------------------------------------------
# The estimator file in force
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def source_tables(source: str) -> Mapping[str, Mapping[Group, float]]:
    """The coefficient tables of an estimator source text (every ``NAME = {(str, str): number}`` literal), read
    with the pull request's own reader: the only lines a calibration pull request changes."""
    return {name: dict(table) for name, table in read_tables(source).items() if hasattr(te, name)}


@contextlib.contextmanager
def merged(source: str) -> Iterator[te.Coefficients]:
    """Run with ``source`` as if it were the merged ``token_estimator.py``: its coefficient tables replace the
    module's (``current_coefficients()`` reads them on every call), and the module is restored afterwards."""
    tables = source_tables(source)
    saved = {name: getattr(te, name) for name in tables}
    try:
        for name, value in tables.items():
            setattr(te, name, dict(value))
        yield te.current_coefficients()
    finally:
        for name, value in saved.items():
            setattr(te, name, value)


def underbudgeted_source(cases: Sequence[PhaseCase], truncation: float = 0.5, source: str = ESTIMATOR_SOURCE) -> str:
    """The shipped file with a BUDGET_FACTORS entry for every group of the workload, each chosen so the group
    truncates ``truncation`` under the default law: a deliberately under-budgeted start."""
    with merged(source) as coeffs:
        by_group: dict[Group, list[tuple[int, PhaseLaw]]] = {}
        for case in cases:
            est = te.estimate(case.features, coeffs)
            law = phase_law(case.features.category, case.features.complexity,
                            [te.deliverable_path(d) for d in case.features.deliverables])
            by_group.setdefault(est.group, []).append((est.predicted_output_tokens, law))
    changes = []
    for g, rows in sorted(by_group.items()):

        def gap(log_f: float, rows: list[tuple[int, PhaseLaw]] = rows) -> float:
            f = math.exp(log_f)
            return float(np.mean([exceed_probability(law, max(te.MIN_FACTOR_CEILING, math.ceil(pred * f)))
                                  for pred, law in rows])) - truncation

        factor = round(math.exp(brentq(gap, math.log(0.05), math.log(20.0), xtol=1e-6)), 3)
        changes.append({"coefficient": "BUDGET_FACTORS", "key": list(g), "old": None, "new": factor})
    return apply_proposal(source, changes, {"generated_at": "2026-01-01T00:00:00Z", "total_samples": 0})


# --------------------------------------------------------------------------------------------------
# One loop
# --------------------------------------------------------------------------------------------------

#: A scenario's law for week w (1-based): per-group changes to the simulator's default law.
LawSchedule = Callable[[int], Mapping[Group, GroupLaw]]


def default_law(week: int) -> Mapping[Group, GroupLaw]:
    """The simulator's own law, every week."""
    return {}


HEAVY_GROUP: Group = ("implementation", "medium")
DRIFT_GROUP: Group = ("tests", "medium")
SPREAD_GROUP: Group = ("docs", "low")
DRIFT_PER_WEEK = 1.04


def heavy_law(week: int) -> Mapping[Group, GroupLaw]:
    """implementation/medium with a heavier tail: Student-t with 2 degrees of freedom instead of 4."""
    return {HEAVY_GROUP: GroupLaw(tail_df=2.0)}


def drift_law(week: int) -> Mapping[Group, GroupLaw]:
    """tests/medium drifting: its median grows 4 % a week (×1.60 by week 13)."""
    return {DRIFT_GROUP: GroupLaw(median_scale=DRIFT_PER_WEEK ** (week - 1))}


def spread_law(week: int) -> Mapping[Group, GroupLaw]:
    """docs/low 1.5× as spread out as the simulator's default."""
    return {SPREAD_GROUP: GroupLaw(sigma_scale=1.5)}


LAWS: dict[str, LawSchedule] = {"default": default_law, "heavy": heavy_law, "drift": drift_law, "spread": spread_law}


@dataclass(frozen=True)
class LoopConfig:
    weeks: int = 12
    alpha: float = 0.05
    seed: int = 1
    start: str = "shipped"  # "shipped" (today's file) or "under" (every group truncating about half its calls)
    laws: LawSchedule = default_law
    explore_share: float = 0.0
    #: Further ``CalibrationParams`` fields of the loop's calibrations (e.g. ``window_weeks``).
    calibration_kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: Draw the report's plot (off: an empty PNG; the numbers are the same, a week is about a second faster).
    plot: bool = False
    #: Restrict the workload to the seed phases of these estimator groups (None: all 61 phases).
    groups: frozenset[Group] | None = None


@dataclass
class Cycle:
    """The estimator after ``index`` merged calibrations, judged under the law of the week it drains."""

    index: int
    truth: dict[Group, GroupTruth]
    shipped: list[dict[str, Any]] = field(default_factory=list)  # what the calibration after this week shipped
    #: Each group's true truncation under the *previous* cycle's estimator and this cycle's law (the change's effect).
    before: dict[Group, GroupTruth] = field(default_factory=dict)
    gate: str = ""
    drain_seconds: float = 0.0
    calibrate_seconds: float = 0.0
    events: int = 0  # telemetry events the week's drain wrote
    drained: int = 0  # phase executions the week's drain made

    @property
    def overall(self) -> tuple[float, float]:
        return overall(self.truth)


@dataclass
class LoopResult:
    config: LoopConfig
    cycles: list[Cycle]
    start_source: str
    final_source: str

    def groups(self) -> list[Group]:
        return sorted({g for c in self.cycles for g in c.truth})

    def phases_per_week(self, g: Group) -> int:
        return self.cycles[0].truth[g].phases if g in self.cycles[0].truth else 0


def _select(cases: Sequence[PhaseCase], groups: frozenset[Group] | None) -> list[PhaseCase]:
    """The phases whose estimator group (``estimate().group``: no coefficient moves a phase between groups) is in
    ``groups``."""
    if groups is None:
        return list(cases)
    return [c for c in cases if te.estimate(c.features).group in groups]


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _plot(draw: bool) -> Iterator[None]:
    """With ``draw`` false, the calibration report's plot is an empty file (nothing else changes)."""
    from autopack.calibration import report

    if draw:
        yield
        return
    saved = report.write_plot
    report.write_plot = lambda path, *args, **kwargs: Path(path).write_bytes(b"")  # type: ignore[assignment]
    try:
        yield
    finally:
        report.write_plot = saved


def age_one_week(url: str) -> None:
    """Move every recorded call a week into the past, as a week passing would: the weeks are drained minutes apart
    here, and a calibration window (``window_weeks``) counts weeks back from now."""
    week = timedelta(days=7)
    with session_scope(url) as session:
        for model in (TokenEstimationV2Event, TokenBudgetEscalationEvent):
            rows = session.execute(sa.select(model.id, model.timestamp)).all()
            if rows:
                session.execute(sa.update(model), [{"id": i, "timestamp": t - week} for i, t in rows])


def _create_week(url: str, week: int, cases: Sequence[PhaseCase]) -> list[str]:
    """The week's seed runs, restricted to ``cases``' phases (created in one transaction)."""
    from autopack.execution.runs import create_run

    wanted = {(c.run, c.phase_id) for c in cases}
    run_ids = []
    with session_scope(url) as session:
        for run_id in SEED_RUNS:
            if not any(r == run_id for r, _ in wanted):
                continue
            week_id = week_run_id(run_id, week)
            spec = seed_run_spec(week_id)
            phases = [p for p in spec.phases if (run_id, p.phase_id) in wanted]
            if len(phases) == len(spec.phases):
                ensure_seed_runs(session, [week_id])
            else:
                create_run(session, spec.model_copy(update={"phases": phases}), source="seed")
            run_ids.append(week_id)
    return run_ids


def run_loop(config: LoopConfig, workdir: Path | None = None,
             on_cycle: Callable[[Cycle], None] | None = None) -> LoopResult:
    """Run ``config.weeks`` weeks of drain → calibrate → gate → merge; return every cycle's truth and what shipped."""
    logging.getLogger("autopack").setLevel(logging.WARNING)
    cases = _select(weekly_phases(), config.groups)
    if not cases:
        raise ValueError("no phase of the seed workload is in the selected groups")
    source = ESTIMATOR_SOURCE if config.start == "shipped" else underbudgeted_source(cases)
    start_source = source
    with contextlib.ExitStack() as stack:
        scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None  # a week's drain commits often: no disk flush
        folder = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="closed-loop-", dir=scratch)))
        url = f"sqlite:///{folder / 'telemetry.db'}"
        stack.enter_context(_environment({
            "AUTOPACK_WORKSPACE_DIR": str(folder / "workspaces"),
            "AUTOPACK_EXPLORE_SHARE": repr(config.explore_share),
            "AUTOPACK_EXPLORE_SEED": str(config.seed),
            "AUTOPACK_PROVIDER_CONCURRENCY": "0",
        }))
        stack.enter_context(_plot(config.plot))
        upgrade_database(database_at(url))
        cycles: list[Cycle] = []
        previous: str | None = None
        for week in range(1, config.weeks + 1):
            laws = config.laws(week)
            if week > 1:
                age_one_week(url)
            if previous is not None:
                with merged(previous) as coeffs:
                    before = configuration_truth(cases, laws, config.alpha, config.explore_share, coeffs)
            with merged(source) as coeffs:
                cycle = Cycle(week - 1, configuration_truth(cases, laws, config.alpha, config.explore_share, coeffs))
                if previous is not None:
                    cycle.before = before
                clock = time.perf_counter()
                run_ids = _create_week(url, week, cases)
                options = BatchOptions(**{**PipelineParams().drain().model_dump(), "run_ids": run_ids, "workers": 1,
                                          "provider_concurrency": 0})
                provider = SimulatedProvider(seed=config.seed, laws=laws)
                report = run_batch_drain(options, open_database(url),
                                         executor=functools.partial(execute_phase, provider=provider),
                                         isolation="inline", handle_signals=False)
                cycle.events = report.state.total_telemetry_events
                cycle.drained = report.state.total_processed
                cycle.drain_seconds = time.perf_counter() - clock
                clock = time.perf_counter()
                try:
                    params = CalibrationParams(target_truncation=config.alpha, **dict(config.calibration_kwargs))
                    result: CalibrationResult | None = run_calibration(open_database(url), params,
                                                                       output_dir=folder / "reports")
                except NoUsableSamplesError:
                    result = None
                cycle.calibrate_seconds = time.perf_counter() - clock
            passed = result is not None and result.gate.passed
            cycle.gate = "passed" if passed else "not passed"
            if result is not None and passed and result.proposed_changes:
                cycle.shipped = [c.model_dump(mode="json") for c in result.proposed_changes]
                previous, source = source, apply_proposal(source, result.proposed_changes, result.metadata)
            else:
                previous = source
            cycles.append(cycle)
            if on_cycle is not None:
                on_cycle(cycle)
        laws = config.laws(config.weeks + 1)
        with merged(previous or source) as coeffs:
            before = configuration_truth(cases, laws, config.alpha, config.explore_share, coeffs)
        with merged(source) as coeffs:
            last = Cycle(config.weeks, configuration_truth(cases, laws, config.alpha, config.explore_share, coeffs),
                         before=before)
        cycles.append(last)
        if on_cycle is not None:
            on_cycle(last)
        dispose_engines()
    return LoopResult(config, cycles, start_source, source)


def shipped_labels(changes: Sequence[Mapping[str, Any]]) -> dict[Group, list[str]]:
    """What a cycle's merge changed, per group (TOKEN_WEIGHTS under ("*", kind/mode))."""
    out: dict[Group, list[str]] = {}
    for ch in changes:
        key = tuple(ch["key"])
        short = {"BUDGET_FACTORS": "F", "PHASE_OVERHEAD": "OH", "TOKEN_WEIGHTS": "W"}.get(ch["coefficient"], "?")
        old = "∅" if ch.get("old") is None else f"{ch['old']:g}"
        label = f"{short} {old}→{ch['new']:g}"
        group = ("*", f"{key[0]}/{key[1]}") if ch["coefficient"] == "TOKEN_WEIGHTS" else (key[0], key[1])
        out.setdefault(group, []).append(label)
    return out


__all__ = [
    "LAWS", "Cycle", "GroupTruth", "LoopConfig", "LoopResult", "PhaseCase", "configuration_truth", "default_law",
    "exceed_probability", "largest_raise", "merged", "oracle_ceiling", "overall", "run_loop", "settled_cycle",
    "shipped_labels", "underbudgeted_source",
    "weekly_phases",
]


# --------------------------------------------------------------------------------------------------
# The targets (issue 16), judged on one loop
# --------------------------------------------------------------------------------------------------

TOLERANCE = 0.01  # "α + 1 pp"


def settled_cycle(result: LoopResult, g: Group) -> int | None:
    """The first cycle from which the group's true truncation stays ≤ α + 1 pp to the end (None: never)."""
    limit = result.config.alpha + TOLERANCE
    first = None
    for cycle in result.cycles:
        t = cycle.truth.get(g)
        if t is None:
            continue
        if t.truncation <= limit + 1e-12:
            first = cycle.index if first is None else first
        else:
            first = None
    return first


def largest_raise(result: LoopResult) -> tuple[float, Group | None, int]:
    """The largest rise of a group's true truncation a merged change caused (same law before and after):
    (rise, group, cycle). Rises from drift alone are not counted."""
    worst: tuple[float, Group | None, int] = (0.0, None, 0)
    for cycle in result.cycles:
        for g, before in cycle.before.items():
            after = cycle.truth.get(g)
            if after is not None and after.truncation - before.truncation > worst[0]:
                worst = (after.truncation - before.truncation, g, cycle.index)
    return worst


@dataclass(frozen=True)
class LoweringCheck:
    """One merged lowering: what the gate estimated from the group's calls against what the law says."""

    cycle: int  # the cycle it created (cycle − 1 → cycle)
    group: Group
    calls: int
    bound: str
    estimated_rise: float
    true_rise: float  # same law before and after


def lowering_checks(result: LoopResult) -> list[LoweringCheck]:
    """Every merged budget-factor lowering with its estimated and its true rise of the group's truncation."""
    out = []
    for previous, cycle in zip(result.cycles, result.cycles[1:], strict=False):
        for change in previous.shipped:
            low = change.get("lowering") if change.get("coefficient") == "BUDGET_FACTORS" else None
            if not low or low.get("estimated_truncation") is None:
                continue
            g = (change["key"][0], change["key"][1])
            before, after = cycle.before.get(g), cycle.truth.get(g)
            if before is None or after is None:
                continue
            out.append(LoweringCheck(cycle.index, g, int(change.get("n") or 0), low["bound"],
                                     low["estimated_truncation"] - low["estimated_truncation_today"],
                                     after.truncation - before.truncation))
    return out
