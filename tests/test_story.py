"""autopack.calibration.story: the words the report and the PR body share, from the calibration JSON alone."""

from __future__ import annotations

import dataclasses
from typing import Any

from github_server.samples import as_result, calibration

from autopack import token_estimator as te
from autopack.calibration.core import Params, calibrate
from autopack.calibration.result import Backtest, GroupEntry, MethodSummary, ProposedChange, StepRecord
from autopack.calibration.samples import build_sample_set
from autopack.calibration.story import (
    Confirmation,
    Guarantee,
    StepTowardAlpha,
    VerdictKind,
    drift_table,
    gate_sentence,
    group_verdicts,
)

from synthetic_telemetry import GroupTruth, Law, simulate_groups


def group(**fields: Any) -> GroupEntry:
    return GroupEntry(category="implementation", complexity="low", n=fields.pop("n", 0), n_censored=0,
                      median_ratio=None, median_ratio_ci=(None, None), budget_factor=1.2, confidence=None,
                      proposed=True, **fields)


def test_a_conformal_factor_names_its_rank_its_fitted_calls_and_its_probability() -> None:
    conformal = group(factor_method="km_conformal", factor_pool_n=50, factor_rank=49, n=52)
    conformal = conformal.model_copy(update={"confidence": 0.9662})
    assert Guarantee.of(conformal, 0.05).text() == (
        "bound: conformal rank 49 of n = 50 fitted calls of this group, P(true truncation ≤ 2α = 10 %) ≈ 0.97 "
        "(distribution-free for exchangeable calls)")


def test_a_factor_resting_on_an_assumption_says_so_and_claims_no_probability_it_lacks() -> None:
    tail = group(factor_method="km_conformal", factor_pool_n=40, assumption="censoring independent of length")
    assert Guarantee.of(tail, 0.05).text() == ("bound: km_conformal on n = 40 fitted calls of this group, no "
                                               "probability claimed, only if censoring independent of length")
    normal = group(factor_method="small_group_bound", factor_pool_n=8,
                   assumption="log ratios are normal").model_copy(update={"confidence": 0.9})
    assert "P(true truncation ≤ 2α = 10 %) ≈ 0.90, only if log ratios are normal" in Guarantee.of(normal, 0.05).text()


def test_confirmation_counts_held_out_calls_and_flags_too_few() -> None:
    thin = MethodSummary(n=2, truncations=0, truncations_upper=0, evidence=False)
    assert Confirmation.of(thin, 85).text() == (
        "confirmed on 2 held-out calls, 0 truncated: **thin** (≥ 85 needed to be evidence)")
    assert Confirmation.of(MethodSummary(n=120, truncations=3, truncations_upper=5), 85).text() == (
        "confirmed on 120 held-out calls, 3–5 truncated")
    assert Confirmation.of(MethodSummary(n=0), 85).text() == "not confirmed: no held-out calls"


def test_every_verdict_kind_has_its_label() -> None:
    assert [kind.label for kind in VerdictKind] == ["ships", "step toward α", "not shipped"]
    assert [kind.ships for kind in VerdictKind] == [True, True, False]


def test_a_gate_that_did_not_pass_says_nothing_ships() -> None:
    failed = as_result(calibration(gate={"passed": False}))
    assert gate_sentence(failed) == "Nothing ships: no change passed the gate (reasons below)."


def test_no_drift_comparison_is_no_table() -> None:
    empty = {"alpha": 0.05, "feedback": {"kind": "fixed_lag", "lag_calls": 8}, "methods": {}}
    assert drift_table(Backtest()) is None
    assert drift_table(Backtest.model_validate({"calibration_under_drift": empty})) is None


def test_a_shipped_lowering_says_it_ships_a_bounded_step_toward_its_factor_not_the_factor() -> None:
    """The factor is where the descent ends; what merges is the step (``LoweringRecord``), and the verdict and the
    gate's sentence say which, so the body's numbers match the diff."""
    g = ("tests", "medium")
    current = dataclasses.replace(te.current_coefficients(), budget_factors={g: 3.0})
    sim = simulate_groups([GroupTruth(*g, 60, Law(0.0, 0.35), cap_factor=3.0)], seed=1)
    result = calibrate(build_sample_set(sim.columns), Params(target_truncation=0.05), current).result
    (change,) = [c for c in result.proposed_changes if c.coefficient == "BUDGET_FACTORS"]
    assert change.lowering is not None and change.lowering.bound != "fitted factor"
    line = group_verdicts(result)[g].line()
    assert line.startswith("**ships** — bound: conformal rank")
    assert (f"; ships a bounded step to {change.new:.3f} from today's ceilings, ≈ {change.lowering.today_factor:.3f}× "
            f"the prediction in total (Σ ceiling ÷ Σ prediction over its calls), held by the {change.lowering.bound} a run, short of that factor "
            f"({change.lowering.fitted_factor:.3f}); truncation estimated from its 60 calls") in line
    assert ("ships a bounded step down: one run raises the truncation its calls estimate by at most +0.5 pp" in
            gate_sentence(result))
    assert "never goes past its budget factor where that is distribution-free" in gate_sentence(result)


def lowered_past_its_fitted_factor() -> tuple[ProposedChange, str]:
    """tests/medium, 18 calls: a normal bound reads above today's ceilings and the step goes below it; (its
    change, its verdict line)."""
    g = ("tests", "medium")
    current = dataclasses.replace(te.current_coefficients(), budget_factors={g: 2.137})
    sim = simulate_groups([GroupTruth(*g, 18, Law(0.0, 0.35), cap_factor=2.137)], seed=2)
    result = calibrate(build_sample_set(sim.columns), Params(target_truncation=0.05), current).result
    (change,) = [c for c in result.proposed_changes if c.coefficient == "BUDGET_FACTORS"]
    assert change.lowering is not None and change.lowering.fitted_factor > change.new
    return change, group_verdicts(result)[g].line()


def test_a_lowering_past_an_assumed_factor_says_that_factor_ends_no_descent() -> None:
    """A normal bound on 13 calls reads above today's ceilings; the step goes below it, so the verdict must not
    call it "short of that factor": it names the factor and says it ends no descent."""
    change, line = lowered_past_its_fitted_factor()
    assert (f"held by the {change.lowering.bound} a run (its fitted factor, {change.lowering.fitted_factor:.3f}, "
            "rests on an assumption and ends no descent)") in line
    assert "short of that factor" not in line


def test_the_gate_sentence_states_the_rise_bound_this_run_used() -> None:
    """``--max-rise-per-run`` sets how far a lowering may go; the sentence quotes it, not the default."""
    g = ("tests", "medium")
    current = dataclasses.replace(te.current_coefficients(), budget_factors={g: 3.0})
    sim = simulate_groups([GroupTruth(*g, 60, Law(0.0, 0.35), cap_factor=3.0)], seed=1)
    result = calibrate(build_sample_set(sim.columns), Params(target_truncation=0.05, max_rise_per_run=0.0125),
                       current).result
    assert "by at most +1.25 pp (+0.625 pp where the evidence is thin)" in gate_sentence(result)


def test_a_raise_decided_by_the_newest_calls_says_how_many_of_them_were_cut() -> None:
    """Over all its calls the group may sit below α; the line names the newest fortnight's cuts, which decided."""
    step = StepRecord(n=118, today_truncations=3, expected_truncation=0.03, expected_method="Kaplan–Meier",
                      price_tokens=1000, sized_by="its estimated 0.9625 quantile", recent_calls=27,
                      recent_truncations=5, recent_days=14)
    text = StepTowardAlpha.of(step).text()
    assert "3 of its 118 calls cut today, 5 of its newest 27 (the last 14 days)" in text


def test_a_raise_says_what_its_calls_lengths_estimate_under_todays_ceilings() -> None:
    """A raise on the lengths (1 of 24 calls cut: its count is not above α) names the reading that decided it, the
    larger of its two, so "truncates above α" does not contradict the count beside it."""
    step = StepRecord(n=24, today_truncations=1, expected_truncation_today=0.031, read_truncation_today=0.0612,
                      expected_truncation=0.035, expected_method="Kaplan–Meier", price_tokens=1000,
                      sized_by="its estimated 0.9625 quantile")
    text = StepTowardAlpha.of(step).text()
    assert "(1 of its 24 calls cut today; its calls' lengths estimate 6.12 % under today's ceilings)" in text


def test_a_lowering_below_its_bound_says_the_bound_does_not_cover_what_ships() -> None:
    """The quickstart's implementation/high: 'bound: small_group_bound … (mean + 2.494·s)' read as the guarantee
    of the 1.504 that ships, 1.681 being that bound: the line says whose bound it is."""
    change, line = lowered_past_its_fitted_factor()
    assert (f" — a bound for {change.lowering.fitted_factor:.3f}, not for the {change.new:.3f} that ships, whose "
            "truncation is only estimated (below); ships a bounded step") in line
