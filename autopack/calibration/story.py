"""One story for the calibration report and the pull request body: verdicts, the gate's sentence, the drift table.

Both read the calibration result (``result.CalibrationResult``) through these functions, so a verdict or a
figure cannot say one thing in the report and another in the body. Every line describes what merging ships;
the full refit appears only labelled as such (``FULL_REFIT``). A verdict says where its guarantee comes from
(the bound on the group's own fitted calls) apart from how much held-out evidence confirms it, because the
two differ by orders of magnitude (50 fitted calls, 2 held out). A new kind of verdict is one ``VerdictKind``
member with its label: every rendering goes through ``GroupVerdict.line``.

Pure: the typed result in, small frozen models and text out (no numpy, nothing read or written).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from autopack.calibration.result import (
    Backtest,
    CalibrationResult,
    DriftMetrics,
    DriftSummary,
    GroupEntry,
    GroupMethod,
    LoweringRecord,
    MethodSummary,
    Sources,
    StepRecord,
)
from autopack.params import CalibrationParams
from autopack.taxonomy import DOCS_LIKE

Group = tuple[str, str]

#: How the full refit (``backtest.proposed``: every group refitted, gated or not) is named wherever it appears.
FULL_REFIT = "full refit (not shipped)"
#: What the shipped configuration (``backtest.shipped``) is called.
THIS_PR = "this pull request"
#: The changes table's interval column: the fitted value's uncertainty, not the shipped value's (a bounded step
#: ships between today's value and the fitted one, so the new value may lie outside it).
INTERVAL_COLUMN = "Fitted value's interval"
INTERVAL_NOTE = (
    "*Fitted value's interval*: how uncertain the value the group's own fitted calls give is (a budget factor: "
    "its (1 − α) quantile's 90 % interval; a phase overhead: the bootstrap's 95 % interval of the overhead its "
    "calls fit beside its budget factor, at least 1 and within ¼–4× today's value; a token weight: the bootstrap's 90 % interval). What ships is a bounded step from today's value "
    "toward the fitted one, or a step toward α for a group cut above α, so **New** may lie outside it."
)


class VerdictKind(StrEnum):
    """What the gate decided for one group; ``label`` is how every rendering names it."""

    SHIPS = "ships"
    STEP_TOWARD_ALPHA = "step_toward_alpha"  # a group above α gets a raised ceiling (``calibration.step``)
    NOT_SHIPPED = "not_shipped"

    @property
    def label(self) -> str:
        return VERDICT_LABELS[self]

    @property
    def ships(self) -> bool:
        return self is not VerdictKind.NOT_SHIPPED


VERDICT_LABELS: dict[VerdictKind, str] = {
    VerdictKind.SHIPS: "ships",
    VerdictKind.STEP_TOWARD_ALPHA: "step toward α",
    VerdictKind.NOT_SHIPPED: "not shipped",
}


def _pct(value: float) -> str:
    return f"{value * 100:.3g} %"


# --- where a guarantee comes from, and what confirms it ---------------------------------------------


@dataclass(frozen=True)
class Guarantee:
    """The bound a group's budget factor is: its method, on how many of the group's own fitted calls."""

    method: str | None
    fitted: int | None  # calls the factor was computed from (``factor_pool_n``, else the group's n)
    rank: int | None  # the order statistic a conformal factor is (``factor_rank``)
    confidence: float | None  # P(realised truncation ≤ 2α)
    alpha: float | None
    assumption: str | None = None

    @classmethod
    def of(cls, group: GroupEntry, alpha: float | None) -> Guarantee:
        fitted = group.factor_pool_n if group.factor_pool_n is not None else group.n
        return cls(group.factor_method, fitted, group.factor_rank, group.confidence, alpha, group.assumption)

    def text(self) -> str:
        calls = f"n = {self.fitted} fitted calls of this group" if self.fitted is not None else "the group's calls"
        chance = ", no probability claimed" if self.confidence is None and self.method not in (None, "none") else ""
        if self.confidence is not None:
            level = f"2α = {_pct(2 * self.alpha)}" if self.alpha else "2α"
            chance = f", P(true truncation ≤ {level}) ≈ {self.confidence:.2f}"
        if self.method in ("km_conformal", "conformal", "kaplan_meier") and self.assumption is None:
            rank = f"rank {self.rank} of " if self.rank is not None else "quantile of "
            return f"bound: conformal {rank}{calls}{chance} (distribution-free for exchangeable calls)"
        if self.method in (None, "none"):
            return f"bound: none on {calls}" if self.method == "none" else f"bound: from {calls}{chance}"
        assumed = f", only if {self.assumption}" if self.assumption else ", under its stated assumption"
        return f"bound: {self.method} on {calls}{chance}{assumed}"


@dataclass(frozen=True)
class StepTowardAlpha:
    """A raise for a group that truncates above α today (``calibration.step.Step.record``): safe without an
    assumption (no call's ceiling falls), sized by one; what it is expected to do, and what it costs."""

    n: int | None
    today_truncations: int | None
    expected_truncation: float | None
    expected_method: str | None
    price_tokens: int | None
    sized_by: str | None
    recent_calls: int | None = None
    recent_truncations: int | None = None
    recent_days: int | None = None
    #: its calls' lengths read under today's ceilings: the larger of the step's two readings (the Kaplan–Meier
    #: curve at the typical ceiling, and the lowering's); either above α raises a group whose count is not
    estimated_today: float | None = None

    @classmethod
    def of(cls, step: StepRecord) -> StepTowardAlpha:
        readings = [v for v in (step.expected_truncation_today, step.read_truncation_today) if v is not None]
        return cls(step.n, step.today_truncations, step.expected_truncation, step.expected_method or None,
                   step.price_tokens, step.sized_by or None, step.recent_calls, step.recent_truncations,
                   step.recent_days, max(readings) if readings else None)

    def text(self) -> str:
        today = (f"{self.today_truncations} of its {self.n} calls cut today"
                 if self.today_truncations is not None and self.n is not None else "above α today")
        if self.recent_truncations and self.recent_calls and self.n and self.recent_calls < self.n:
            days = f"the last {self.recent_days} days" if self.recent_days else "the newest"
            today += f", {self.recent_truncations} of its newest {self.recent_calls} ({days})"
        if self.estimated_today is not None:
            today += f"; its calls' lengths estimate {_pct(self.estimated_today)} under today's ceilings"
        after = ("expected truncation after it unknown" if self.expected_truncation is None else
                 f"expected truncation after it {_pct(self.expected_truncation)}"
                 + (f" ({self.expected_method})" if self.expected_method else ""))
        price = f"; price +{self.price_tokens:,} reserved tokens on those calls" if self.price_tokens is not None else ""
        sized = f", sized by {self.sized_by}" if self.sized_by else ""
        return (f"bound: none needed to be safe — no call's ceiling falls, so its truncation can only fall "
                f"({today}){sized}; {after}{price}")


@dataclass(frozen=True)
class BoundedStep:
    """A lowering as it ships (``LoweringRecord``): a bounded step toward the group's factor, which is where the
    descent ends (when distribution-free), not what merging ships unless the step reaches it."""

    record: LoweringRecord
    n: int | None  # the group's calls its truncation is estimated from

    def text(self) -> str:
        low = self.record
        reached = ("it reaches that factor" if low.bound == "fitted factor" else
                   f"held by the {low.bound} a run, short of that factor ({low.fitted_factor:.3f})"
                   if low.fitted_factor_ends_descent else
                   f"held by the {low.bound} a run (its fitted factor, {low.fitted_factor:.3f}, rests on an "
                   "assumption and ends no descent)")
        calls = f"its {self.n} calls" if self.n is not None else "its calls"
        after = "" if low.estimated_truncation is None else f" → {_pct(low.estimated_truncation)}"
        return (f"ships a bounded step to {low.factor:.3f} from today's ceilings, ≈ {low.today_factor:.3f}× the prediction "
                f"in total (Σ ceiling ÷ Σ prediction over its calls), "
                f"{reached}; truncation estimated from {calls} {_pct(low.estimated_truncation_today)}{after}")


@dataclass(frozen=True)
class Confirmation:
    """How much held-out evidence confirms a change: the calls replayed, their truncations, thin or not."""

    held_out: int | None
    truncations: int | None
    truncations_upper: int | None
    thin: bool
    minimum: int | None

    @classmethod
    def of(cls, backtest: MethodSummary | GroupMethod | None, minimum: int | None, *,
           n: int | None = None) -> Confirmation:
        """From one backtest entry (a group's ``shipped`` replay, or a change's own backtest); ``n``: the held-out
        calls when the entry does not say (a group's replay: they are on the group)."""
        held = backtest.n if backtest is not None and backtest.n is not None else n
        word = backtest.evidence if backtest is not None else None
        too_few = held is None or held == 0 or (minimum is not None and held < minimum)
        thin = (not word) if word is not None else too_few
        upper = backtest.truncations_upper if backtest is not None else None
        interval = backtest.truncation_interval if backtest is not None else None
        if upper is None and held and interval is not None and interval[1] is not None:
            upper = round(interval[1] * held)  # an entry that carries the rates only
        return cls(held, backtest.truncations if backtest is not None else None, upper, thin, minimum)

    def text(self) -> str:
        if not self.held_out:
            return "not confirmed: no held-out calls" if self.held_out == 0 else "held-out confirmation unknown"
        low, high = self.truncations, self.truncations_upper
        cut = ("" if low is None else f", {low} truncated" if high in (None, low) else f", {low}–{high} truncated")
        calls = f"{self.held_out} held-out call{'s' if self.held_out != 1 else ''}{cut}"
        if not self.thin:
            return f"confirmed on {calls}"
        need = f" (≥ {self.minimum} needed to be evidence)" if self.minimum is not None else ""
        return f"confirmed on {calls}: **thin**{need}"


@dataclass(frozen=True)
class GroupVerdict:
    """One group's verdict as every rendering shows it."""

    group: Group
    kind: VerdictKind
    guarantee: Guarantee
    confirmation: Confirmation
    detail: str  # the gate's own words: its verdict when it ships, else its reasons
    step: StepTowardAlpha | None = None  # with ``STEP_TOWARD_ALPHA``: the raise, instead of a bound
    lowering: BoundedStep | None = None  # a shipped lowering: the step toward the bound, which is what merges

    @property
    def icon(self) -> str:
        return "✅" if self.kind.ships and not self.confirmation.thin else "⚠️"

    def line(self) -> str:
        """``ships — bound: …; confirmed on …``: the kind, where the guarantee comes from, what confirms it."""
        where = self.step.text() if self.kind is VerdictKind.STEP_TOWARD_ALPHA and self.step else self.guarantee.text()
        if self.lowering is not None and self.kind is VerdictKind.SHIPS:
            low = self.lowering.record
            if low.factor is not None and low.factor < low.fitted_factor:  # stepped below the bound: it covers none
                where += (f" — a bound for {low.fitted_factor:.3f}, not for the {low.factor:.3f} that ships, whose "
                          "truncation is only estimated (below)")
            where += f"; {self.lowering.text()}"
        return f"**{self.kind.label}** — {where}; {self.confirmation.text()}"


def min_heldout(result: CalibrationResult) -> int | None:
    """Held-out calls needed to carry evidence: the calibration's own number, else 1/α − 1 (conformal minimum)."""
    if result.metadata.min_evidence_calls is not None:
        return result.metadata.min_evidence_calls
    alpha = alpha_of(result)
    return math.ceil(1 / alpha - 1) if alpha else None


def alpha_of(result: CalibrationResult) -> float | None:
    return result.metadata.target_truncation


def group_verdicts(result: CalibrationResult) -> dict[Group, GroupVerdict]:
    """Every group of the calibration, with its verdict on what ships (its ``shipped`` held-out replay)."""
    alpha, minimum = alpha_of(result), min_heldout(result)
    held = {(g.category, g.complexity): g for g in result.backtest.groups}
    lowerings = {c.key: c.lowering for c in result.proposed_changes
                 if c.coefficient == "BUDGET_FACTORS" and c.lowering is not None}
    out: dict[Group, GroupVerdict] = {}
    for g in result.groups:
        key = g.key
        bt = held.get(key)
        replay = (bt.shipped if bt is not None else None) or (g.backtest.shipped if g.backtest else None)
        n = bt.n if bt is not None else g.backtest.n if g.backtest is not None else 0
        confirmation = Confirmation.of(replay, minimum, n=n)
        kind = VerdictKind.SHIPS if g.proposed else VerdictKind.NOT_SHIPPED
        step = g.step_toward_alpha
        if kind.ships and g.gate_direction == "raise" and step is not None:
            kind = VerdictKind.STEP_TOWARD_ALPHA
        detail = step.verdict if kind is VerdictKind.STEP_TOWARD_ALPHA and step and step.verdict else \
            "; ".join(g.gate_reasons)
        low = lowerings.get(key)
        out[key] = GroupVerdict(key, kind, Guarantee.of(g, alpha), confirmation, detail,
                                StepTowardAlpha.of(step) if kind is VerdictKind.STEP_TOWARD_ALPHA and step else None,
                                BoundedStep(low, g.n) if low is not None and kind is VerdictKind.SHIPS else None)
    return out


def docs_not_raised(result: CalibrationResult) -> list[str]:
    """One line per documentation group whose ceilings the pull request does not raise, saying why.

    A reviewer asks first whether the docs groups, the ones the seed's truncations came from, are raised; the
    reason sat in the JSON's step record only (the gate's reasons speak of lowerings)."""
    lines = []
    for g in result.groups:
        step = g.step_toward_alpha
        if g.category not in DOCS_LIKE or g.gate_direction == "raise" or step is None or not step.verdict:
            continue
        alpha = alpha_of(result)
        read = step.read_truncation_today
        either = ", not above α either" if read is not None and alpha is not None and read <= alpha else ""
        lengths = "" if read is None else f"; its calls' lengths estimate {read:.1%} under today's ceilings{either}"
        instead = "; lowered in a bounded step instead (its verdict above)" if g.gate_direction == "lower" else ""
        lines.append(f"{g.category}/{g.complexity} not raised: {step.verdict}{lengths}{instead}")
    return lines


def gate_sentence(result: CalibrationResult) -> str:
    """What "gate passed" means here, reconciled with any thin-evidence warning below it."""
    if not result.gate.passed:
        return "Nothing ships: no change passed the gate (reasons below)."
    shipped = [v for v in group_verdicts(result).values() if v.kind.ships]
    if not shipped:
        return "Passed on shared settings only; no group's budget factor changes."

    def groups(verdicts: list[GroupVerdict]) -> str:
        names = ", ".join(f"{v.group[0]}/{v.group[1]}" for v in verdicts)
        return f"{len(verdicts)} group{'' if len(verdicts) == 1 else 's'} ({names}) "

    bound = [v for v in shipped if v.kind is VerdictKind.SHIPS]
    steps = [v for v in shipped if v.kind is VerdictKind.STEP_TOWARD_ALPHA]
    parts = []
    if bound and any(v.lowering for v in bound):
        one = len(bound) == 1
        whose = "its" if one else "each one’s"
        rise = result.metadata.max_rise_per_run or CalibrationParams.default("max_rise_per_run")
        parts.append(f"{groups(bound)}ship{'s' if one else ''} a bounded step down: one run raises the truncation "
                     f"its calls estimate by at most +{rise * 100:g} pp (+{rise * 50:g} pp where the evidence is "
                     f"thin) and never goes past {whose} budget factor where that is distribution-free, a bound on "
                     "its own fitted calls (one that rests on an assumption ends no descent; the step, the bound and "
                     "its probability, if it claims one, are on each verdict line); the held-out replay checks only "
                     "that what ships truncates no more than today and reserves less")
    elif bound:
        one = len(bound) == 1
        parts.append(f"{groups(bound)}ship{'s' if one else ''} because {'its' if one else 'each one’s'} budget "
                     "factor is a bound on its own fitted calls (the guarantee, with its probability, is on each "
                     "verdict line); the held-out replay checks only that what ships truncates no more than today "
                     "and reserves less")
    if steps:
        one = len(steps) == 1
        parts.append(f"{groups(steps)}truncat{'es' if one else 'e'} above α today and get{'s' if one else ''} a "
                     "step toward α, safe without an assumption because no call's ceiling falls (its expected "
                     "truncation and price are on its verdict line)")
    where = "; ".join(parts)
    where = where[0].upper() + where[1:]
    thin = [v for v in shipped if v.confirmation.thin]
    if not thin:
        return where + ". There are enough held-out calls for the held-out check to be evidence."
    minimum = min_heldout(result)
    held = ", ".join(str(v.confirmation.held_out or 0) for v in thin)
    subject = "one group" if len(thin) == 1 else f"{len(thin)} groups"
    return (where + f". For {subject} the held-out check rests on too few calls ({held}"
            + (f"; {minimum} are needed" if minimum is not None else "")
            + ") to confirm the guarantee: ⚠️ thin evidence means unconfirmed, not failed.")


# --- the drift table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftRow:
    name: str  # the method's key in ``calibration_under_drift.methods``
    label: str  # how the row is named (``this pull request (`static`)``, ``full refit (not shipped) …``)
    metrics: DriftMetrics
    this_pr: bool


@dataclass(frozen=True)
class DriftTable:
    """``backtest.calibration_under_drift`` as both renderings show it."""

    rows: list[DriftRow]
    basis: str  # what configuration the rows replay
    note: str | None  # why rows coincide, when they do


def drift_table(backtest: Backtest, method: str | None = None) -> DriftTable | None:
    """The rows, which one is this pull request, and why identical rows are identical (None: no comparison)."""
    drift = backtest.calibration_under_drift
    if drift is None or not drift.methods:
        return None
    shipped_basis = drift.configuration == "shipped"
    chosen = drift.this_pull_request or (method if shipped_basis else None)
    rows = []
    for name, m in drift.methods.items():
        if shipped_basis and name == chosen:
            label = f"{THIS_PR} (`{name}`)"
        elif name == "oracle":
            label = "`oracle` (hindsight, unattainable)"
        elif shipped_basis:
            label = f"`{name}`"
        else:
            label = f"`{name}`, {FULL_REFIT}"
        rows.append(DriftRow(name, label, m, shipped_basis and name == chosen))
    basis = ("what this pull request ships, run with each method" if shipped_basis else
             f"the factors of the {FULL_REFIT}: this calibration output predates the shipped comparison, so no row "
             "is what merging ships (see the backtest's `shipped` column)")
    return DriftTable(rows, basis, _coincidence(drift, rows, backtest))


def _same(a: DriftMetrics, b: DriftMetrics) -> bool:
    if (a.truncations, a.truncations_upper, a.worst_bin_truncation) != (
            b.truncations, b.truncations_upper, b.worst_bin_truncation):
        return False
    x, y = a.reserved_over_used, b.reserved_over_used
    return x == y or (x is not None and y is not None and math.isclose(x, y, rel_tol=5e-4))


def _coincidence(drift: DriftSummary, rows: list[DriftRow], backtest: Backtest) -> str | None:
    """One line on why methods look identical to this pull request's row (they are, to the figures shown)."""
    methods = [r for r in rows if r.name != "oracle"]
    anchor = next((r for r in methods if r.this_pr), methods[0] if methods else None)
    same = [r for r in methods if r is not anchor and anchor is not None and _same(anchor.metrics, r.metrics)]
    if not same or anchor is None:
        return None
    methods = [anchor, *same]
    names = ", ".join(f"`{r.name}`" for r in methods)
    adapted = drift.adapted_groups
    if not adapted:
        return (f"{names} coincide: no group has enough own fitted calls for a reviewed quantile curve, so the "
                "adaptive methods have nothing to move and every method keeps the static factors.")
    calls = drift.adapted_calls
    if calls is None:
        held = {(g.category, g.complexity): g.n for g in backtest.groups}
        calls = sum(held.get(g, 0) for g in adapted)
    counted = [(r.name, drift.differs_from_static[r.name]) for r in same if r.name in drift.differs_from_static]
    changed = ", ".join(f"`{name}` changed {count}" for name, count in counted)
    groups = ", ".join(f"{a}/{b}" for a, b in adapted)
    return (f"{names} coincide to the figures shown: the adaptive methods move only groups with a reviewed quantile "
            f"curve (enough own fitted calls: {groups}), which have {calls} held-out call{'s' if calls != 1 else ''}"
            + (f" ({changed} of their ceilings)" if changed else "")
            + ": too few calls of feedback to move the factor.")


# --- the data's source -----------------------------------------------------------------------------


def simulated_note(sources: Sources | None) -> str | None:
    """``SIMULATED DATA: simulated/sim-builder-1 (246 of 246 samples), not a real model`` when the
    calibration's ``metadata.sources`` says so (the provider recorded with each event), else None."""
    if sources is None:
        return None
    flagged = [m for m in sources.models if m.simulated]
    if sources.simulated is not True and not flagged:
        return None
    total = sum(m.samples for m in sources.models)
    sim = sum(m.samples for m in flagged)
    names = ", ".join(f"{m.provider or '?'}/{m.model or '?'}" for m in flagged) or "simulated provider"
    share = f" ({sim} of {total} samples)" if total else ""
    return f"SIMULATED DATA: {names}{share}, not a real model"
