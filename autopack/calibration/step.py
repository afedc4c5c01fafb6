"""The gate's bounded steps toward α: a raise for a group that today truncates more than α, and how far one
run may lower a group that truncates less.

The lower-reserve rule (``core._gate_group``) can never pass a group above α: a call cut at today's cap counts
as truncated under any new ceiling at the upper end of the held-out interval, and any budget that fits
more of its calls reserves more than today. Yet a raise is the one change that needs no assumption to be
*safe*: if no call's ceiling falls, no call that fits today can be cut, so the group's truncation can only
fall, whatever the law of its outputs. An assumption is only needed to *size* the raise, so the size is
the smallest of

- where it aims (``_aimed_raise``): the estimated (1 − ``RAISE_AIM``·α) quantile of a new call's actual /
  predicted where the evidence that it truncates above α is strong (``RAISE_STRONG``), else (1 − ``AIM``·α):
  a point estimate from all its calls that allows for its fit's location and spread being estimates
  (``predictive_z``; the censored-normal fit's, or today's factor moved by the fit's spread from today's cut
  share, whichever is smaller); the group's fitted factor when there is no fit;
- ``RAISE_STEP`` (×2.5) times today's median ceiling ÷ predicted: one run never raises the group's typical
  ceiling more than that, so a wrong extrapolation costs at most one such step per run;
- the estimator's hard cap on every ceiling (``MAX_OUTPUT_TOKENS``, enforced by ``decide_ceiling``);

and never below ``MIN_RAISE`` (×1.1) times the largest of today's ceiling ÷ predicted over the group's
calls: so no call's ceiling falls (the safety argument) and every one rises by at least ×1.1 (each run makes
progress even where the estimate, contradicted by today's cut calls, sits below today's ceilings). Where
today's ceilings vary by more than ×1.8 across the group's calls (a floor: a factor replaces the floor, so
lowering none of them would more than double the typical ceiling, ``FLOOR_STEP``), there is no safe step and the
group is left as it is, said so. Why aim below α and not at a bound: in a closed loop a raise sized by the
distribution-free bound, or by the executor's ×1.25, took groups at 6–7 % to 1–2 % and left them there (reserve
1.3–1.4× the oracle's); aiming at α itself lands above it half the time, and each landing above is raised again.
Why further below α than a lowering stops (``RAISE_AIM`` against ``AIM``), and only on strong evidence: see there.

A group counts as truncating above α when its calls cut under today's ceilings (surely, or by the
Kaplan–Meier tail for calls cut at older, lower caps) are more than α of its calls and the one-sided exact
binomial test of "rate ≤ α" gives p < ``RAISE_LEVEL``: the test only has to name the direction (a raise
cannot harm truncation; a needless one costs tokens until the bounded lowering takes it back), not prove it.
In a group of 5 one cut call is enough (p = 0.23 at α = 5 %): a group cut 20 % shows no cut at all in a third
of its runs, so a rule that waited for two raised such groups in 10–65 % of runs against the 67 % its calls
allow; in a group of 20 or more one cut is not (its share is not above α). In the closed loop the single-cut
raises cost nothing measurable (reserve at cycle 8 1.40 → 1.41) and docs/low settled earlier.
Or, with at least one call cut and ``VALUE_TRIGGER_CALLS`` calls or more, when its estimated truncation under
today's typical ceiling is above α (``_expected_truncation``: its Kaplan–Meier curve, or beyond its complete
calls its censored-normal fit): the lengths of its calls, not only their count, say it is cut too often. A group
cut 17 % with 12 calls a week shows at most one cut in a third of its weeks; in a closed loop such a group
(α = 10 %) waited up to 7 weeks for its count. The cut call may be one cut under the older, lower ceiling it ran
under: it is tail evidence all the same. A raise held to its step limit (docs/low 1.5× as spread, from half its
calls cut to 7.9 % at α = 5 %) otherwise waited for a cut under its new ceiling, up to eight weeks in a closed
loop, while its calls estimated 5–6 % above it. The lengths are read two ways, and either above α raises: the
Kaplan–Meier curve at today's typical ceiling, and the reading a lowering refuses on (``TailReading.today``: each
call at its own ceiling, a new call's tail, the larger of two estimators). Read only the first way, a group could
sit between the two directions, too high for a lowering to move and not high enough to raise: docs/low at 6.8 %
(α = 5 %) for six weeks in a closed loop, its count at 2–3 % of 48–96 calls, the lowering's reading 4.3–7.2 %.

The newest calls are judged on their own too (``RECENT_DAYS``): a group whose outputs grow week by week is
raised when its newest fortnight alone rejects "rate ≤ α" (p < ``RECENT_LEVEL``), and is not lowered while more
than α of those calls are cut. Over all its calls the older, shorter ones hide the growth: in a closed loop a
group drifting +4 % a week was lowered four weeks running and climbed from 3 % to 14 % true truncation.

The other direction (``bounded_lowering``): a group with a fitted factor below today's ceilings is lowered, but
one run moves it a bounded step only, and it is never aimed past ``AIM``·α; see there why. Where the evidence
is thin (the fitted factor failed its held-out test or rests on an assumption, or the group has fewer than
``LOWER_STEP_CALLS`` calls) the step's rise bound is halved (``max_rise``), and the step itself must pass the
held-out test in the shipped replay (``core``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from autopack.calibration import distributions as dist
from autopack.calibration import stats
from autopack.calibration.model import FactorInfo, round_up_factor
from autopack.calibration.result import StepRecord
from autopack.calibration.samples import factor_ceiling
from autopack.params import CalibrationParams

#: A raise never more than multiplies the group's median ceiling ÷ predicted by this per run. From half its calls
#: cut, a group of spread σ needs ×exp(1.96σ) to reach α/2 at α = 5 %: ×2 fell short for σ above 0.35, and in a
#: closed loop left docs/low at 6.2–6.3 % (α = 5 %), where its counts could not show the excess for eight weeks.
RAISE_STEP = 2.5
#: ... but a raise that only the safety argument sizes (×1.1 on the largest of today's ceilings ÷ predicted, the
#: estimate asking for less) never more than doubles the typical ceiling: where today's ceilings vary more than
#: ×1.8 across the group's calls there is no step (it would reserve ×2.5 for a group barely above α).
FLOOR_STEP = 2.0
#: Every call's ceiling rises by at least this, so each run makes progress (the executor's escalation step, ×1.25,
#: overshot in a closed loop: a group at 6–7 % fell to 2 %, then held far below α).
MIN_RAISE = 1.1
#: Both directions aim below α, not at α itself: a step's size rests on an estimate from a few dozen calls, and
#: landing at α, half the time above it, would be stepped again and again. A lowering stops at the estimated
#: (1 − AIM·α) quantile ...
AIM = 0.75
#: ... and a raise aims further down, at the (1 − RAISE_AIM·α) quantile: the two misses are not alike. A raise
#: that lands a point above α stays there, since a group's cut calls cannot tell 6 % from 5 % in fewer than
#: hundreds of calls (a closed loop kept implementation/low at 12 % with α = 10 % for eight weeks, 4 of its 67
#: calls cut); one that lands below the aim is taken back by the bounded lowerings, which read every call's length.
#: 0.5 while a phase run again after its cut counted as a second cut call (every group showed 1.5× its truncation,
#: a margin the aim leaned on); with each phase counted once, 0.35 (with ``VALUE_TRIGGER_CALLS``) settles the same
#: groups from today's file (docs/closed-loop.md).
RAISE_AIM = 0.35
#: ... where the evidence that today truncates above α is strong: the exact binomial p of "rate ≤ α" below this,
#: on all its calls or on its newest fortnight's. On weaker evidence (a count whose p is below ``RAISE_LEVEL`` only,
#: or the trigger on the calls' lengths) the group may well sit at or below α, and a raise aims where a lowering
#: stops, at the (1 − AIM·α) quantile: aimed at 0.35α, such raises took docs/medium (its law: 5.3 %) to 0.3–2.2 %,
#: the largest share of the reserve's excess at cycle 8 in a closed loop, and it came back in small steps. At 0.75α
#: the reserve at cycle 8 fell by 0.02–0.08 in all 16 configurations, and settling was met in 9 of them, not 7
#: (docs/closed-loop.md).
RAISE_STRONG = 0.05
#: A raise moves today's typical factor by the fit's spread from today's cut share to the aim; the share is read up
#: to this (its normal quantile is unbounded at 1). Capped at one half, a group with 70 % of its calls cut was sized
#: as if today's factor were its median, and landed at 12.6 % with α = 10 % (200 calls of a known law).
RAISE_SHIFT_CAP = 0.9
#: "Today truncates above α" when the exact binomial p of "rate ≤ α" on its surely-cut calls is below this ...
RAISE_LEVEL = 0.5
#: ... or, from this many calls (one of them cut, under today's ceilings or the lower ones it ran under), when its
#: estimated truncation under today's typical ceiling is above α.
VALUE_TRIGGER_CALLS = 10
#: The group's newest calls (those of the ``RECENT_DAYS`` before its newest call) are judged on their own as well:
#: a group whose outputs grow week by week shows it there first, while its older, shorter calls hold the share
#: over all its calls below α (in a closed loop a group drifting +4 % a week climbed from 3 % to 14 % true
#: truncation and was lowered, never raised) ...
RECENT_DAYS = 14
#: ... a raise when the exact binomial p of "rate ≤ α" on them is below this (evidence, not only a direction: a
#: fortnight is a third of the calls or fewer, tested besides all of them), and no lowering while more than α of
#: them are cut.
RECENT_LEVEL = 0.2


@dataclass(frozen=True)
class Step:
    """One group's step toward α (or why there is none): what ``core`` ships and the report says."""

    n: int  # the group's calls (fitted and held out)
    today_truncations: int  # cut under today's ceilings: surely, or by the Kaplan–Meier tail
    today_rate: float
    binomial_p: float
    above_alpha: bool
    factor: float | None  # the raised factor; None: no raise
    sized_by: str  # "quantile (<method>)" | "step limit ×2" | "no call's ceiling may fall"
    quantile_factor: float | None
    quantile_method: str
    today_factor: float  # median of today's ceiling ÷ predicted over its calls
    expected_truncation_today: float | None
    expected_truncation: float | None  # after the raise, estimated from the group's calls
    expected_method: str
    still_cut: int  # calls surely cut even under the raised ceilings (a floor on the rate after it)
    reserved_tokens_today: int
    reserved_tokens: int
    used_tokens: int
    verdict: str
    recent_calls: int = 0  # its calls of the newest RECENT_DAYS
    recent_truncations: int = 0  # ... cut under today's ceilings
    recent_days: int = RECENT_DAYS
    #: its estimated truncation under today's ceilings as a lowering reads it (``TailReading.today``)
    read_truncation_today: float | None = None

    @property
    def raises(self) -> bool:
        return self.factor is not None

    def record(self) -> StepRecord:
        """The step as the result carries it: its estimates rounded, with its price."""
        out = asdict(self)
        for k in ("today_rate", "binomial_p", "today_factor", "expected_truncation_today", "expected_truncation",
                  "read_truncation_today"):
            v = out[k]
            out[k] = None if v is None or not math.isfinite(v) else round(float(v), 12)  # verdicts print 3 digits
        return StepRecord.model_validate({**out, "price_tokens": self.reserved_tokens - self.reserved_tokens_today})


def _pct(rate: float) -> str:
    """An estimated truncation as the verdict lines above it print it (``story``: three significant digits), so
    one estimate does not read 3.75 % in one line and 3.7 % in the next."""
    return f"{rate * 100:.3g}%"


def _expected_truncation(r: np.ndarray, observed: np.ndarray, log_factor: float) -> tuple[float | None, str]:
    """P(r ≥ log factor) from the group's calls: Kaplan–Meier while the factor lies within its complete calls,
    beyond them the group's censored-normal fit (an extrapolation, said so)."""
    complete = r[observed]
    if complete.size and log_factor <= float(complete.max()):
        km = stats.kaplan_meier(r, observed)
        i = int(np.searchsorted(km.times, log_factor, side="left")) - 1  # F just below the factor
        return (1.0 - (float(km.cdf[i]) if i >= 0 else 0.0)), "Kaplan–Meier"
    fit = stats.censored_normal_fit(r, observed, min_observed=2)
    if fit is None:
        return None, "no estimate (beyond its complete calls, and no censored-normal fit)"
    return float(predictive_sf((log_factor - fit.mu) / fit.sigma, r.size)), "censored-normal extrapolation"


def _cut_today(r: np.ndarray, observed: np.ndarray, log_today: np.ndarray, sure: int) -> int:
    """How many of the group's calls today's ceilings cut: the surely cut ones, or, when more, the Kaplan–Meier
    count Σ P(r ≥ log(today's ceiling ÷ predicted)) over its calls (a call cut at an older, lower cap is then
    counted by the tail above its cap rather than as fitting). Beyond its largest complete call the curve says
    nothing, and such calls count only when surely cut."""
    complete = r[observed]
    if observed.all() or not complete.size:
        return sure
    km = stats.kaplan_meier(r, observed)
    inside = log_today <= complete.max()
    i = np.searchsorted(km.times, log_today[inside], side="left") - 1  # F just below each ceiling
    survival = 1.0 - np.where(i >= 0, km.cdf[np.maximum(i, 0)], 0.0)
    return max(sure, int(round(float(survival.sum()))))


def predictive_scale(n: int) -> float:
    """How much wider a new call's law is than the fit's, in σ̂ units, when μ̂ and σ̂ come from n calls:
    √(1 + 1/n) for the location's error times √(n / (n − 1)) for the maximum-likelihood σ̂ (the normal prediction
    bound, ``stats.prediction_bound_multiplier``, is Student-t times the first, for the sample standard deviation).
    ``predictive_z`` and ``predictive_sf`` both read a new call's law through it, so they are each other's inverse."""
    return math.sqrt((1.0 + 1.0 / n) * n / (n - 1))


def predictive_z(q: float, n: int) -> float:
    """The (q) quantile of a new call in σ̂ units when μ̂ and σ̂ come from n calls: Student-t with n − 1 degrees of
    freedom, widened by ``predictive_scale``. Why: a raise sized by the plug-in z from a week's 7 calls (σ̂ 0.25
    where the law's is 0.3 with t₄ tails) landed at 11–13 % in a closed loop aiming at 3.5 %. The widening fades
    with n: at α = 5–10 %, ×1.40–1.49 at 7 calls, ×1.01 at 200."""
    return float(dist.t_ppf(q, n - 1)) * predictive_scale(n)


def predictive_sf(z: Any, n: int) -> Any:
    """P(a new call lies above μ̂ + z·σ̂) when μ̂ and σ̂ are the normal fit of n calls: Student-t with n − 1 degrees
    of freedom at z ÷ ``predictive_scale`` (the inverse of ``predictive_z``). Read with the plug-in normal, a
    group's estimated truncation from a few dozen calls sits below its true one more often than not (σ̂ is low
    more often than high): 30 calls of a known law lowered to where the plug-in read 3.75 % landed at 3.9–4.6 %."""
    return dist.t_sf(np.asarray(z, dtype=float) / predictive_scale(n), n - 1)


def _aimed_raise(r: np.ndarray, observed: np.ndarray, alpha: float, today_factor: float, rate: float,
                 aim: float) -> float | None:
    """Where a raise aims: the (1 − aim·α) quantile of a new call's actual ÷ predicted under the group's
    censored-normal fit (``predictive_z``: its location and spread are estimates from its n calls), a point
    estimate, not a bound (a raise needs none to be safe; a bound sized it ×1.5–×2 above the quantile in groups of
    20–40 calls). The smaller of two estimates: μ̂ + σ̂·z, and today's typical factor moved by the fit's spread from
    today's cut share to the aim, σ̂·(z − Φ⁻¹(1 − rate)): its location is today's count of cut calls, not the fit's
    extrapolated one, which one long call in a few dozen moved ×1.5 in a closed loop."""
    fit = stats.censored_normal_fit(r, observed, min_observed=2)
    if fit is None:
        return None
    target = predictive_z(1.0 - aim * alpha, r.size)
    shift = fit.sigma * (target - float(dist.norm_ppf(1.0 - min(max(rate, alpha), RAISE_SHIFT_CAP))))
    return min(math.exp(fit.mu + fit.sigma * target), today_factor * math.exp(shift))


def step_toward_alpha(
    y: np.ndarray, observed: np.ndarray, predicted: np.ndarray, today_ceiling: np.ndarray, info: FactorInfo,
    alpha: float, recent: np.ndarray | None = None, reading: TailReading | None = None,
) -> Step:
    """The step for one group from all its calls: ``predicted`` under the coefficients that ship with it,
    ``today_ceiling`` today's ceilings, ``info`` its factor fitted on all its calls (the quantile); ``recent``
    marks its newest calls (``RECENT_DAYS``), judged on their own as well; ``reading`` the group's
    ``TailReading`` where the caller has one (``core`` reads it once for the step and the lowering; else it is
    read here, from the group's own tail)."""
    n = int(y.size)
    pred = np.maximum(predicted, 1.0)
    r = np.log(y / pred)
    ratio = today_ceiling / pred
    x = _cut_today(r, observed, np.log(ratio), int((y >= today_ceiling).sum()))
    rate = x / n if n else 0.0
    p = stats.binomial_exceedance_p(x, n, alpha)
    above = n > 0 and rate > alpha and p < RAISE_LEVEL
    newest = np.zeros(n, dtype=bool) if recent is None else recent
    n_recent, x_recent = int(newest.sum()), int((y[newest] >= today_ceiling[newest]).sum())
    p_recent = stats.binomial_exceedance_p(x_recent, n_recent, alpha)
    trigger_line, sizing_rate = "", rate  # what raised it besides its count; the share a raise is sized from
    if not above and n_recent and x_recent / n_recent > alpha and p_recent < RECENT_LEVEL:
        above, sizing_rate = True, x_recent / n_recent
        trigger_line = (f"; its newest {n_recent} calls ({RECENT_DAYS} days) {x_recent} cut ({sizing_rate:.1%}; "
                        f"p = {p_recent:.3g} < {RECENT_LEVEL:g}): its outputs have grown")
    today_factor = float(np.median(ratio)) if n else math.nan
    expected_today, how_today = _expected_truncation(r, observed, float(np.log(today_factor))) if n else (None, "")
    cut_ever = x > 0 or not observed.all()  # cut under today's ceilings, or under the lower ones it ran under
    if not above and n >= VALUE_TRIGGER_CALLS and cut_ever and expected_today is not None and expected_today > alpha:
        above, sizing_rate = True, expected_today
        trigger_line = (f"; its estimated truncation under today's typical ceiling is {expected_today:.1%} "
                        f"({how_today}): more than α")
    if reading is None and n:
        reading = TailReading(y, observed, predicted, today_ceiling)
    read_today = reading.today if reading is not None else None
    if not above and n >= VALUE_TRIGGER_CALLS and cut_ever and read_today is not None and read_today > alpha:
        above, sizing_rate = True, read_today
        trigger_line = (f"; its estimated truncation under today's ceilings, as a lowering reads it, is "
                        f"{read_today:.1%}: more than α")
    quantile = info.factor if info.factor is not None and math.isfinite(info.factor) else None
    common: dict[str, Any] = dict(
        n=n, today_truncations=x, today_rate=rate, binomial_p=p, above_alpha=above, quantile_factor=quantile,
        quantile_method=info.method, today_factor=today_factor, expected_truncation_today=expected_today,
        used_tokens=int(y.sum()), reserved_tokens_today=int(today_ceiling.sum()), recent_calls=n_recent,
        recent_truncations=x_recent, read_truncation_today=read_today,
    )
    today_line = (f"today {x}/{n} of its calls cut ({rate:.1%}; one-sided exact binomial p = {p:.3g} "
                  f"for rate ≤ {alpha:g}){trigger_line}")

    def none(why: str) -> Step:
        return Step(factor=None, sized_by="", expected_truncation=None, expected_method="", still_cut=x,
                    reserved_tokens=int(today_ceiling.sum()), verdict=f"{today_line}: {why}", **common)

    if not above:
        return none(f"not above α (a raise needs more than {alpha:.0%} of its calls cut, and p < {RAISE_LEVEL:g})")
    floor = float(np.max(ratio))  # below this some call's ceiling would fall
    step_cap = RAISE_STEP * today_factor
    if MIN_RAISE * floor > FLOOR_STEP * today_factor:
        spread = floor / today_factor
        return none(f"no safe step within ×{FLOOR_STEP:g}: today's ceilings vary ×{spread:.2f} across its calls "
                    "(a floor), so a factor that lowers none of them would more than double its typical ceiling")
    candidates = [(step_cap, f"step limit ×{RAISE_STEP:g}")]
    strong = p < RAISE_STRONG or (n_recent > 0 and p_recent < RAISE_STRONG)
    aim = RAISE_AIM if strong else AIM
    aimed = _aimed_raise(r, observed, alpha, today_factor, sizing_rate, aim)
    if aimed is not None:
        candidates.append((aimed, f"its estimated {1 - aim * alpha:.4g} quantile" + (
            "" if strong else f" (weak evidence, p ≥ {RAISE_STRONG:g}: aimed where a lowering stops)")))
    elif quantile is not None:
        candidates.append((quantile, f"its fitted quantile ({info.method})"))
    value, sized_by = min(candidates)
    if value < MIN_RAISE * floor:
        value, sized_by = MIN_RAISE * floor, (f"the smallest step, ×{MIN_RAISE:g} on every call's ceiling (its "
                                              "fitted quantile does not raise today's ceilings enough)")
    factor = round_up_factor(value)
    if not math.isfinite(factor):
        return none("no usable raise (the factor would exceed the estimator's cap)")
    ceiling = factor_ceiling(predicted, np.full(n, factor))  # decide_ceiling's rule, clamped to [512, 64000]
    if np.any(ceiling < today_ceiling):  # cannot happen above the floor, but the safety argument needs it
        return none("some call's ceiling would fall under the raised factor: not a safe step")
    if not np.any(ceiling > today_ceiling):
        return none("every ceiling is already at the estimator's cap")
    expected, how = _expected_truncation(r, observed, math.log(factor))
    still = int((y >= ceiling).sum())
    reserved = int(ceiling.sum())
    exp_text = "unknown" if expected is None else f"≈ {_pct(expected)}"
    verdict = (f"step toward α: {today_line}; factor {factor:.3f} (today's ceilings ≈ {today_factor:.2f}× the "
               f"prediction, median over its calls; sized by {sized_by}); no call's ceiling falls, so its truncation can only fall; "
               f"expected truncation after it {exp_text} ({how}; {still} of its calls surely cut even so); price "
               f"+{reserved - int(today_ceiling.sum()):,} reserved tokens on its {n} calls (reserved/used "
               f"{today_ceiling.sum() / y.sum():.3f} → {reserved / y.sum():.3f})")
    return Step(factor=factor, sized_by=sized_by, expected_truncation=expected, expected_method=how, still_cut=still,
                reserved_tokens=reserved, verdict=verdict, **common)


# --------------------------------------------------------------------------------------------------
# The other direction, bounded: how far one run may lower a group's ceilings
# --------------------------------------------------------------------------------------------------

#: One run's lowering may raise the group's estimated truncation by at most this by default (percentage points /
#: 100; ``CalibrationParams.max_rise_per_run``) ...
LOWER_RISE: float = CalibrationParams.default("max_rise_per_run")
#: ... and never takes its typical ceiling ÷ predicted below this times today's.
LOWER_STEP = 0.8
#: ... a group of fewer calls a smaller step, LOWER_STEP ** (n / LOWER_STEP_CALLS): with n calls its estimates do
#: not resolve a change of less than about 1/n (×0.8 steps on 18–40 calls raised groups by 1.6–2.1 pp while the
#: estimates said +0.5). 60 while a cut phase run again counted twice; with each phase counted once, steps of
#: ×0.96 on 12 calls of a group near α raised it 1.0–1.3 pp in a closed loop; with 120 no change outside a
#: drifting law raised a group more than 0.9 pp.
LOWER_STEP_CALLS = 120
#: ... except far below α: a group whose estimated truncation today is at most ``LOWER_FAR``·α takes the full step
#: from ``LOWER_FAR_CALLS`` calls, LOWER_STEP ** (n / LOWER_FAR_CALLS) below that if none of its calls was ever cut
#: (the rise bound still holds it). The smaller step guards groups near α, where a step's true rise strayed from
#: its estimate by as much as the step. Far below α, with a new call's estimates (``predictive_sf``), no merged
#: change rose more than 1 pp in 100 closed loops (0.96 pp at most) and from today's file the reserve at cycle 8
#: fell by 0.04–0.06; from 20 calls, 1.1 pp. Graded for the groups never cut (today's file leaves
#: implementation/high at 3 calls a week, 0.6 % truncated, ×0.98 a week): the reserve at cycle 8 from today's file
#: fell by another 0.04–0.06, with no merged change above 0.87 pp in 100 loops. Graded for every group it rose
#: 1.37 pp: a group raised from half its calls cut also reads far below α, from an extrapolated tail
#: (docs/closed-loop.md).
LOWER_FAR = 0.5
LOWER_FAR_CALLS = 30


@dataclass(frozen=True)
class Lowering:
    """How far one run may lower a group's ceilings (toward its fitted factor, when that ends the descent)."""

    fitted_factor: float  # the tested factor (fitted on the older calls)
    factor: float | None  # what ships: the largest of its bounds (the fitted factor among them if it ends the
    #                       descent); None: no lowering left
    bound: str  # "fitted factor" | "rise bound" | "step bound" | "aim"
    today_factor: float  # today's reserved ÷ predicted tokens over its calls (Σ ceiling ÷ Σ predicted)
    estimated_today: float  # estimated truncation under today's ceilings (all its calls)
    estimated: float | None  # ... under the shipped factor
    verdict: str
    ends_descent: bool = True  # the fitted factor is a floor (distribution-free); else the bounds alone hold it

    @property
    def lowers(self) -> bool:
        return self.factor is not None


#: Groups of fewer calls do not add to the pooled tail shape: their own fit's location and scale are too noisy to
#: standardise by.
POOL_MIN_CALLS = 20
#: ... and a larger group adds an evenly spaced subset of this many (a shape needs hundreds of calls, not millions,
#: and each group's fit costs its size).
POOL_MAX_CALLS = 2000


@dataclass(frozen=True)
class PooledShape:
    """The shape of the groups' tails, pooled: a Student-t fitted to every group's calls (of ``POOL_MIN_CALLS`` or
    more) standardised by the group's own censored-normal fit, z = (log(actual ÷ predicted) − μ̂) ÷ σ̂.

    Why: a group's own calls place its upper tail only at the calls it has seen, so a lowering that crosses its
    largest call reads a jump of 1/n (1.6 pp on 63 calls) however little true mass lies between, and no step
    under the rise bound can cross it: in a closed loop one long call pinned a group's ceiling at that call for
    weeks (2.2× its oracle's reserve, 0.4 % truncation at α = 5 %). The groups' standardised tails share a shape,
    which hundreds of calls resolve where one group's dozens cannot."""

    tail: stats.CensoredT
    calls: int
    groups: int

    @property
    def text(self) -> str:
        return f"a Student-t tail (df {self.tail.df:g}) pooled over {self.calls} calls of {self.groups} groups"


def log_ratio(y: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """log(actual ÷ predicted) as a lowering reads a group's calls (both at least one token): the values the pooled
    shape is fitted on and the ones it is placed by must be the same."""
    out: np.ndarray = np.log(np.maximum(y, 1.0) / np.maximum(predicted, 1.0))
    return out


def pooled_shape(groups: list[tuple[np.ndarray, np.ndarray]]) -> PooledShape | None:
    """The pooled shape from each group's (``log_ratio``, observed), in the groups' own row order; None below 200
    pooled calls."""
    zs, flags = [], []
    for values, complete in groups:
        keep = stats.evenly_spaced(values.size, POOL_MAX_CALLS)
        r, observed = values[keep], complete[keep]
        fit = stats.censored_normal_fit(r, observed, min_observed=2) if r.size >= POOL_MIN_CALLS else None
        if fit is not None:
            zs.append((r - fit.mu) / fit.sigma)
            flags.append(observed)
    calls = sum(z.size for z in zs)
    tail = stats.censored_t_fit(np.concatenate(zs), np.concatenate(flags)) if calls >= 200 else None
    return None if tail is None else PooledShape(tail, calls, len(zs))


def _survivals(r: np.ndarray, observed: np.ndarray, shape: PooledShape | None = None,
               ) -> list[Callable[[np.ndarray], np.ndarray]]:
    """x ↦ P(r ≥ x) estimated from a group's calls, two ways: its tail (``shape`` given: the pooled shape placed by
    the group's own censored-normal fit; else its own Kaplan–Meier curve, a step of 1/n between its calls) and
    the censored-normal fit's (smooth, thin-tailed). A bound holds under both: neither reads the far tail as
    empty where the other sees mass. Both fitted readings are a *new* call's (``predictive_sf``, and the pooled
    shape widened by ``predictive_scale``): the fit's μ̂ and σ̂ are estimates from the group's n calls.

    Beyond the largest complete call the Kaplan–Meier curve says nothing (the mass of calls cut at older, lower
    caps stays there, unplaced), so there it reads as the fit, as ``_expected_truncation`` and ``_cut_today`` do;
    without a fit it keeps that mass (the cautious reading). Read as mass at every ceiling, two calls cut at a
    week-old cap held a group's estimate at 10.5 % under ceilings twice that cap, so no lowering could reach the
    aim and the group stayed twice as high as it needed for eight weeks in a closed loop."""
    km = stats.kaplan_meier(r, observed)
    fit = stats.censored_normal_fit(r, observed, min_observed=2)
    complete = r[observed]
    last = float(complete.max()) if complete.size else -math.inf

    def normal(x: np.ndarray) -> np.ndarray:
        assert fit is not None
        out: np.ndarray = predictive_sf((x - fit.mu) / fit.sigma, r.size)
        return out

    def pooled(x: np.ndarray) -> np.ndarray:
        assert fit is not None and shape is not None
        return shape.tail.sf((x - fit.mu) / (fit.sigma * predictive_scale(r.size)))

    def kaplan_meier(x: np.ndarray) -> np.ndarray:
        i = np.searchsorted(km.times, x, side="left") - 1  # F just below x
        out: np.ndarray = 1.0 - np.where(i >= 0, km.cdf[np.maximum(i, 0)], 0.0)
        if fit is not None:
            out = np.where(x > last, normal(x), out)
        return out

    if fit is None:
        return [kaplan_meier]
    return [pooled if shape is not None else kaplan_meier, normal]


class TailReading:
    """A group's estimated truncation under any factor, as a lowering reads it: each call at its own ceiling, by
    both estimators of ``_survivals`` (its tail: the pooled ``shape`` where there is one). ``today`` is the larger
    of the two under today's ceilings: the number a lowering must keep below its aim, and a raise reads above α.

    A call's ceiling ÷ predicted depends only on its prediction and its ceiling: each distinct pair is read once,
    weighted by its calls (a group of 10⁵ calls has a few hundred; the survivals are the costly part)."""

    def __init__(self, y: np.ndarray, observed: np.ndarray, predicted: np.ndarray, today_ceiling: np.ndarray,
                 shape: PooledShape | None = None) -> None:
        self.shape = shape
        self.survivals = _survivals(log_ratio(y, predicted), observed, shape)
        pairs, self._calls = np.unique(predicted + 1j * today_ceiling, return_counts=True)  # one complex sort
        self._predicted, self._pred = pairs.real, np.maximum(pairs.real, 1.0)
        self.today_each = self._each(np.log(pairs.imag / self._pred))  # each estimator's, today's ceilings
        self.today = float(self.today_each.max())

    def _each(self, log_ratio: np.ndarray) -> np.ndarray:
        """Each estimator's truncation over the group's calls, for ceilings at these log(ceiling ÷ predicted) of
        the distinct pairs."""
        return np.array([float(np.average(survival(log_ratio), weights=self._calls)) for survival in self.survivals])

    def at(self, factor: float) -> np.ndarray:
        """Each estimator's truncation over the group's calls under ``factor`` (``decide_ceiling``'s rule)."""
        ceiling = factor_ceiling(self._predicted, np.full(self._predicted.size, factor))
        return self._each(np.log(ceiling / self._pred))


def bounded_lowering(
    y: np.ndarray, observed: np.ndarray, predicted: np.ndarray, today_ceiling: np.ndarray, fitted_factor: float,
    alpha: float, max_rise: float = LOWER_RISE, ends_descent: bool = True, reading: TailReading | None = None,
) -> Lowering:
    """The factor a lowering ships, from all the group's calls (``predicted`` under the coefficients that ship
    with it, ``today_ceiling`` today's ceilings): the largest of

    - the fitted, tested factor, where it is distribution-free (``ends_descent``: the gate's target, a bound at α
      whose guarantee holds at any ceiling above it). A factor that rests on an assumption (a normal bound on a
      few calls, a censored-normal extrapolation, a Kaplan–Meier tail over cut calls) ends no descent: it is one
      more estimate of the kind the rise bound and the aim read, inflated for a confidence it cannot claim, and as
      a floor it held groups far below α (a closed loop: tests/low at 1.1 % with α = 5 % for five weeks, its
      Kaplan–Meier tail read over cut calls above today's ceilings);
    - the rise bound: the smallest factor whose estimated truncation over the group's calls (at each call's
      ceiling) is at most ``max_rise`` (``--max-rise-per-run``, by default ``LOWER_RISE``; half that where the
      evidence is thin, ``core._lowering``)
      above the estimate under today's ceilings, by both estimators of
      ``_survivals`` (each against its own estimate of today: the larger estimate of both against the larger
      of today let one estimator's high reading of today license another's rise, +3.8 pp in a closed loop);
      read through the group's ``TailReading`` (``reading``: the one ``core`` built for the group's step, its
      tail the pooled shape ``core`` fits once over all groups; else built here from the group's own tail);
    - the step bound: ``LOWER_STEP`` (a smaller step below ``LOWER_STEP_CALLS`` calls, or below
      ``LOWER_FAR_CALLS`` where the group is far below α and none of its calls was ever cut: ``LOWER_FAR``) times
      today's reserved ÷ predicted tokens (Σ ceiling ÷ Σ predicted);
    - the aim: the smallest factor whose estimated truncation is at most ``AIM``·α (a lowering never aims at α
      itself: near α a point of truncation is a few per cent of the factor, well inside the estimate's noise);

    and no lowering (``factor`` None) when that is not below today's reserved ÷ predicted tokens. Not the median
    ceiling ÷ predicted: where today's ceilings are a floor (one ceiling for phases predicted 4,128 and 6,728), a
    factor stepped from the median raised the larger phases' ceilings by more than the smaller ones lost, and in
    a closed loop the first lowering of such a group raised its reserve (×3.39 → ×3.63 the oracle's).

    Why bounded: a lowering is tested on the group's held-out calls, a handful a week, and no test on a handful
    can see a rise of a point or two (the exact binomial needs ≈ 4,400 held-out calls to detect 6 % against 5 %
    with power 0.9). In a closed loop, lowerings passed on 3–13 held-out calls raised groups' true truncation by
    up to 20 pp (a first factor replacing the floor rule far below it, a factor halved). Near α one point of
    truncation is ≈ 5 % of the factor (σ 0.3, t₄ tail), so the bound is on the estimated truncation, not on the
    factor: a group far below α moves in large steps (capped at ×0.8), one near α in small ones, and the fitted
    factor ends the descent.
    """
    pred = np.maximum(predicted, 1.0)
    if reading is None:
        reading = TailReading(y, observed, predicted, today_ceiling)
    ratio = today_ceiling / pred
    today_factor = float(today_ceiling.sum() / pred.sum())  # its reserve, token-weighted: what a lowering lowers
    today_each, today = reading.today_each, reading.today

    def rise(factor: float) -> float:  # the larger of the two estimators' rises, each against its own today
        return float(np.max(reading.at(factor) - today_each))

    def estimated(factor: float) -> float:
        return float(np.max(reading.at(factor)))

    far = today <= LOWER_FAR * alpha and (y.size >= LOWER_FAR_CALLS or bool(observed.all()))
    shrink = LOWER_STEP ** min(1.0, y.size / (LOWER_FAR_CALLS if far else LOWER_STEP_CALLS))
    step = shrink * today_factor
    floor = max(fitted_factor, step) if ends_descent else step
    candidates = [(step, f"step bound ×{shrink:.3g}")] + ([(fitted_factor, "fitted factor")] if ends_descent else [])

    def smallest(exceeds: Callable[[float], bool]) -> float:
        """The smallest factor at which ``exceeds`` is false (bisection: both tests fall as the factor rises)."""
        lo, hi = math.log(floor), math.log(max(float(np.max(ratio)), floor)) + 1.0
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if exceeds(math.exp(mid)) else (lo, mid)
        return math.exp(hi)

    if rise(floor) > max_rise:
        candidates.append((smallest(lambda f: rise(f) > max_rise), f"rise bound +{max_rise * 100:g} pp"))
    if estimated(floor) > AIM * alpha:
        candidates.append((smallest(lambda f: estimated(f) > AIM * alpha), f"aim {AIM * alpha:.2%}"))
    value, bound = max(candidates)
    factor = round_up_factor(value)
    tail = (reading.shape.text if reading.shape is not None and len(reading.survivals) > 1 else
            "its own Kaplan–Meier curve")
    line = (f"estimated truncation over its {y.size} calls {_pct(today)} today (today's ceilings ≈ {today_factor:.3f}× the "
            f"prediction in total; its tail read as {tail})")
    fitted = (f"the fitted factor {fitted_factor:.3f}" if ends_descent else
              f"its fitted {fitted_factor:.3f} rests on an assumption and ends no descent")
    if not factor < today_factor:
        return Lowering(fitted_factor, None, bound, today_factor, today, None,
                        f"{line}: a lowering bounded by +{max_rise * 100:g} pp of estimated truncation and "
                        f"×{shrink:.3g} a run would not lower its typical ceiling ({fitted}; bounded "
                        f"{factor:.3f})", ends_descent)
    after = estimated(factor)
    how = ("its fitted factor" if bound == "fitted factor" else
           f"the fitted {fitted_factor:.3f} bounded ({bound} a run)" if ends_descent else f"{bound} a run; {fitted}")
    return Lowering(fitted_factor, factor, bound, today_factor, today, after,
                    f"lowered to {factor:.3f} ({how}): {line} → {_pct(after)}", ends_descent)
