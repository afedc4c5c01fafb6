"""One story for the calibration report and the pull request body: verdicts, the gate's sentence, the drift table.

Both read the calibration JSON through these functions, so a verdict or a figure cannot say one thing in
the report and another in the body. Every line describes what merging ships; the full refit appears only
labelled as such (``FULL_REFIT``). A verdict says where its guarantee comes from (the bound on the
group's own fitted calls) apart from how much held-out evidence confirms it, because the two differ by
orders of magnitude (50 fitted calls, 2 held out). A new kind of verdict is one ``VerdictKind`` member
with its label: every rendering goes through ``GroupVerdict.line``.

Pure: mappings in, small frozen models and text out (no numpy, nothing read or written).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

Group = tuple[str, str]

#: How the full refit (``backtest.proposed``: every group refitted, gated or not) is named wherever it appears.
FULL_REFIT = "full refit (not shipped)"
#: What the shipped configuration (``backtest.shipped``) is called.
THIS_PR = "this pull request"


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


def number(value: object) -> float | None:
    """A finite number, else None (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def mapping(value: object) -> Mapping[str, Any]:
    """The value when it is a JSON object, else an empty one (a key an older output lacks)."""
    return value if isinstance(value, Mapping) else {}


def records(value: object) -> list[Mapping[str, Any]]:
    """The objects of a JSON list (anything else in it, or a non-list, is left out)."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        return []
    return [v for v in value if isinstance(v, Mapping)]


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
    def of(cls, group: Mapping[str, Any], alpha: float | None) -> Guarantee:
        fitted = _int(group.get("factor_pool_n"))
        return cls(group.get("factor_method") if isinstance(group.get("factor_method"), str) else None,
                   fitted if fitted is not None else _int(group.get("n")), _int(group.get("factor_rank")),
                   number(group.get("confidence")), alpha,
                   group.get("assumption") if isinstance(group.get("assumption"), str) else None)

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
    """A raise for a group that truncates above α today (``calibration.step.Step.as_dict``): safe without an
    assumption (no call's ceiling falls), sized by one; what it is expected to do, and what it costs."""

    n: int | None
    today_truncations: int | None
    expected_truncation: float | None
    expected_method: str | None
    price_tokens: int | None
    sized_by: str | None

    @classmethod
    def of(cls, step: Mapping[str, Any]) -> StepTowardAlpha:
        text = {k: step.get(k) if isinstance(step.get(k), str) else None for k in ("expected_method", "sized_by")}
        return cls(_int(step.get("n")), _int(step.get("today_truncations")), number(step.get("expected_truncation")),
                   text["expected_method"], _int(step.get("price_tokens")), text["sized_by"])

    def text(self) -> str:
        today = (f"{self.today_truncations} of its {self.n} calls cut today"
                 if self.today_truncations is not None and self.n is not None else "above α today")
        after = ("expected truncation after it unknown" if self.expected_truncation is None else
                 f"expected truncation after it {_pct(self.expected_truncation)}"
                 + (f" ({self.expected_method})" if self.expected_method else ""))
        price = f"; price +{self.price_tokens:,} reserved tokens on those calls" if self.price_tokens is not None else ""
        sized = f", sized by {self.sized_by}" if self.sized_by else ""
        return (f"bound: none needed to be safe — no call's ceiling falls, so its truncation can only fall "
                f"({today}){sized}; {after}{price}")


@dataclass(frozen=True)
class Confirmation:
    """How much held-out evidence confirms a change: the calls replayed, their truncations, thin or not."""

    held_out: int | None
    truncations: int | None
    truncations_upper: int | None
    thin: bool
    minimum: int | None
    why: str | None = None  # the calibration's own word on the evidence, when it gave one as text

    @classmethod
    def of(cls, backtest: Mapping[str, Any], minimum: int | None, *, n: object = None,
           evidence: object = None) -> Confirmation:
        """From one backtest entry (a group's ``shipped`` replay, or a change's own backtest)."""
        held = _int(backtest.get("n", n))
        word = backtest.get("evidence", evidence)
        why = None
        thin: bool | None = None
        if isinstance(word, Mapping):
            enough = word.get("enough", word.get("sufficient"))
            thin = (not enough) if isinstance(enough, bool) else None
            word = word.get("verdict") or word.get("reason")
        if thin is None and isinstance(word, bool):
            thin = not word
        if thin is None and isinstance(word, str):
            why = word
            lowered = word.lower()
            thin = any(w in lowered for w in ("too few", "insufficient", "thin", "no held-out", "not enough", "none"))
        if thin is None:
            thin = held is None or held == 0 or (minimum is not None and held < minimum)
        upper = _int(backtest.get("truncations_upper"))
        interval = backtest.get("truncation_interval")
        if upper is None and held and isinstance(interval, Sequence) and len(interval) == 2 and number(interval[1]) \
                is not None:
            upper = round(float(interval[1]) * held)  # an entry that carries the rates only
        return cls(held, _int(backtest.get("truncations")), upper, thin, minimum, why)

    def text(self) -> str:
        if not self.held_out:
            return "not confirmed: no held-out calls" if self.held_out == 0 else "held-out confirmation unknown"
        low, high = self.truncations, self.truncations_upper
        cut = ("" if low is None else f", {low} truncated" if high in (None, low) else f", {low}–{high} truncated")
        calls = f"{self.held_out} held-out call{'s' if self.held_out != 1 else ''}{cut}"
        if not self.thin:
            return f"confirmed on {calls}"
        need = f" (≥ {self.minimum} needed to be evidence)" if self.minimum is not None and not self.why else ""
        return f"confirmed on {calls}: **thin**{need}" + (f" ({self.why})" if self.why else "")


@dataclass(frozen=True)
class GroupVerdict:
    """One group's verdict as every rendering shows it."""

    group: Group
    kind: VerdictKind
    guarantee: Guarantee
    confirmation: Confirmation
    detail: str  # the gate's own words: its verdict when it ships, else its reasons
    step: StepTowardAlpha | None = None  # with ``STEP_TOWARD_ALPHA``: the raise, instead of a bound

    @property
    def icon(self) -> str:
        return "✅" if self.kind.ships and not self.confirmation.thin else "⚠️"

    def line(self) -> str:
        """``ships — bound: …; confirmed on …``: the kind, where the guarantee comes from, what confirms it."""
        where = self.step.text() if self.kind is VerdictKind.STEP_TOWARD_ALPHA and self.step else self.guarantee.text()
        return f"**{self.kind.label}** — {where}; {self.confirmation.text()}"


def min_heldout(result: Mapping[str, Any]) -> int | None:
    """Held-out calls needed to carry evidence: the calibration's own number, else 1/α − 1 (conformal minimum)."""
    for where in (mapping(result.get("gate")), mapping(result.get("metadata"))):
        for key in ("min_heldout", "min_held_out", "min_evidence_calls"):
            value = _int(where.get(key))
            if value is not None:
                return value
    alpha = alpha_of(result)
    return math.ceil(1 / alpha - 1) if alpha else None


def alpha_of(result: Mapping[str, Any]) -> float | None:
    return number(mapping(result.get("metadata")).get("target_truncation"))


def group_verdicts(result: Mapping[str, Any]) -> dict[Group, GroupVerdict]:
    """Every group of the calibration, with its verdict on what ships (its ``shipped`` held-out replay)."""
    alpha, minimum = alpha_of(result), min_heldout(result)
    held = {(str(g.get("category")), str(g.get("complexity"))): g
            for g in records(mapping(result.get("backtest")).get("groups"))}
    changed = {(str(c.get("category")), str(c.get("complexity"))) for c in records(result.get("proposed_changes"))}
    out: dict[Group, GroupVerdict] = {}
    for g in records(result.get("groups")):
        key = (str(g.get("category")), str(g.get("complexity")))
        bt = held.get(key, {})
        replay = mapping(bt.get("shipped")) or mapping(mapping(g.get("backtest")).get("shipped"))
        confirmation = Confirmation.of(replay, minimum, n=bt.get("n", mapping(g.get("backtest")).get("n", 0)))
        kind = VerdictKind.SHIPS if g.get("proposed", key in changed) else VerdictKind.NOT_SHIPPED
        step = mapping(g.get("step_toward_alpha"))
        if kind.ships and g.get("gate_direction") == "raise" and step:
            kind = VerdictKind.STEP_TOWARD_ALPHA
        reasons = [str(r) for r in g.get("gate_reasons") or []]
        detail = str(step.get("verdict")) if kind is VerdictKind.STEP_TOWARD_ALPHA and step.get("verdict") else \
            "; ".join(reasons)
        out[key] = GroupVerdict(key, kind, Guarantee.of(g, alpha), confirmation, detail,
                                StepTowardAlpha.of(step) if kind is VerdictKind.STEP_TOWARD_ALPHA else None)
    return out


def gate_sentence(result: Mapping[str, Any]) -> str:
    """What "gate passed" means here, reconciled with any thin-evidence warning below it."""
    gate = mapping(result.get("gate"))
    if gate.get("passed") is not True:
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
    if bound:
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
    metrics: Mapping[str, Any]
    this_pr: bool


@dataclass(frozen=True)
class DriftTable:
    """``backtest.calibration_under_drift`` as both renderings show it."""

    rows: list[DriftRow]
    basis: str  # what configuration the rows replay
    note: str | None  # why rows coincide, when they do


def drift_table(backtest: Mapping[str, Any], method: object = None) -> DriftTable | None:
    """The rows, which one is this pull request, and why identical rows are identical (None: no comparison)."""
    drift = mapping(backtest.get("calibration_under_drift") or backtest.get("drift"))
    methods = mapping(drift.get("methods"))
    if not methods:
        return None
    shipped_basis = drift.get("configuration") == "shipped"
    chosen = drift.get("this_pull_request") or (method if shipped_basis else None)
    rows = []
    for name, m in methods.items():
        if not isinstance(m, Mapping):
            continue
        if shipped_basis and name == chosen:
            label = f"{THIS_PR} (`{name}`)"
        elif name == "oracle":
            label = "`oracle` (hindsight, unattainable)"
        elif shipped_basis:
            label = f"`{name}`"
        else:
            label = f"`{name}`, {FULL_REFIT}"
        rows.append(DriftRow(str(name), label, m, shipped_basis and name == chosen))
    basis = ("what this pull request ships, run with each method" if shipped_basis else
             f"the factors of the {FULL_REFIT}: this calibration output predates the shipped comparison, so no row "
             "is what merging ships (see the backtest's `shipped` column)")
    return DriftTable(rows, basis, _coincidence(drift, rows, backtest))


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = ("truncations", "truncations_upper", "worst_bin_truncation")
    if any(a.get(k) != b.get(k) for k in keys):
        return False
    x, y = number(a.get("reserved_over_used")), number(b.get("reserved_over_used"))
    return x == y or (x is not None and y is not None and math.isclose(x, y, rel_tol=5e-4))


def _coincidence(drift: Mapping[str, Any], rows: list[DriftRow], backtest: Mapping[str, Any]) -> str | None:
    """One line on why methods look identical to this pull request's row (they are, to the figures shown)."""
    methods = [r for r in rows if r.name != "oracle"]
    anchor = next((r for r in methods if r.this_pr), methods[0] if methods else None)
    same = [r for r in methods if r is not anchor and anchor is not None and _same(anchor.metrics, r.metrics)]
    if not same or anchor is None:
        return None
    methods = [anchor, *same]
    names = ", ".join(f"`{r.name}`" for r in methods)
    adapted = [tuple(g) for g in drift.get("adapted_groups") or [] if isinstance(g, Sequence) and len(g) == 2]
    if not adapted:
        return (f"{names} coincide: no group has enough own fitted calls for a reviewed quantile curve, so the "
                "adaptive methods have nothing to move and every method keeps the static factors.")
    calls = _int(drift.get("adapted_calls"))
    held = {(str(g.get("category")), str(g.get("complexity"))): _int(g.get("n"))
            for g in records(backtest.get("groups"))}
    if calls is None:
        calls = sum(held.get((str(a), str(b))) or 0 for a, b in adapted)
    differs = mapping(drift.get("differs_from_static"))
    counted = [(r.name, _int(differs.get(r.name))) for r in same if _int(differs.get(r.name)) is not None]
    changed = ", ".join(f"`{name}` changed {count}" for name, count in counted)
    groups = ", ".join(f"{a}/{b}" for a, b in adapted)
    return (f"{names} coincide to the figures shown: the adaptive methods move only groups with a reviewed quantile "
            f"curve (enough own fitted calls: {groups}), which have {calls} held-out call{'s' if calls != 1 else ''}"
            + (f" ({changed} of their ceilings)" if changed else "")
            + ": too few calls of feedback to move the factor.")


# --- the data's source -----------------------------------------------------------------------------


def simulated_note(sources: Mapping[str, Any]) -> str | None:
    """``SIMULATED DATA: simulated/sim-builder-1 (246 of 246 samples), not a real model`` when the
    calibration's ``metadata.sources`` says so (the provider recorded with each event), else None."""
    models = records(sources.get("models") or sources.get("mix") or sources.get("sources"))
    flagged = [m for m in models if m.get("simulated") is True]
    if sources.get("simulated") is not True and not flagged:
        return None
    total = sum(_int(m.get("samples")) or 0 for m in models)
    sim = sum(_int(m.get("samples")) or 0 for m in flagged)
    names = ", ".join(f"{m.get('provider') or '?'}/{m.get('model') or '?'}" for m in flagged) or "simulated provider"
    share = f" ({sim} of {total} samples)" if total else ""
    return f"SIMULATED DATA: {names}{share}, not a real model"
