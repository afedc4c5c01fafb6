"""The report a reviewer reads and the plot: what ships, with its interval, evidence, method and source."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from autopack import token_estimator as te
from autopack.calibration import story
from autopack.calibration.core import Params, calibrate
from autopack.calibration.report import render_markdown, write_plot
from autopack.calibration.result import SourceModel, Sources
from autopack.calibration.samples import build_sample_set, configuration_ceiling

from synthetic_telemetry import GroupTruth, Law, simulate_groups


def calibration():  # type: ignore[no-untyped-def]
    groups = [GroupTruth("implementation", "low", 400, Law(0.0, 0.35)),
              GroupTruth("docs", "low", 250, Law(0.2, 0.3), 0.4, False),
              GroupTruth("tests", "low", 8, Law(0.3, 0.4))]
    return calibrate(build_sample_set(simulate_groups(groups, seed=4).columns), Params())


def test_the_report_shows_the_interval_the_evidence_the_method_and_the_source() -> None:
    result = calibration().result
    text = render_markdown(result, None)
    assert "`shipped` = this pull request" in text and "`proposed` = full refit (not shipped)" in text
    assert "held-out truncation [lower–upper]" in text and "Clopper–Pearson" in text
    assert "one-sided exact binomial p" in text and "(thin)" in text
    assert "km_conformal" in text and "censored_fit, extrapolation" in text and "small_group_bound" in text
    assert "assumes log(actual / predicted) is normal" in text
    assert "SIMULATED data" in text and "escalated retries excluded" in text
    assert "**TOKEN_WEIGHTS** (unchanged)" in text
    shipped = result.proposed_changes
    assert shipped and all(c.verdict and c.verdict in text for c in shipped)


def test_the_plot_shows_n_and_todays_ceiling_beside_the_proposed_one(tmp_path: Path) -> None:
    cal = calibration()
    drawn = write_plot(tmp_path / "plot.png", cal.plot, alpha=0.05)
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("n=400" in t for t in drawn) and any("n=8" in t for t in drawn)
    assert any("today's ceiling" in t for t in drawn)
    assert all(today is not None for today in cal.plot.current)


def test_the_report_says_where_each_shipped_guarantee_comes_from_as_the_body_does() -> None:
    result = calibration().result
    text = render_markdown(result, None)
    verdicts = story.group_verdicts(result)
    shipped = [v for v in verdicts.values() if v.kind.ships]
    assert shipped
    for v in shipped:
        assert f"- {v.icon} {v.group[0]}/{v.group[1]}: {v.line()}" in text
        if v.kind is story.VerdictKind.SHIPS:
            assert f"bound: conformal rank {v.guarantee.rank} of n = {v.guarantee.fitted} fitted calls" in v.line()
        else:  # a step toward α: safe without a bound, with what it should do and what it costs
            assert v.kind is story.VerdictKind.STEP_TOWARD_ALPHA
            assert "no call's ceiling falls" in v.line() and "expected truncation after it" in v.line()
    assert story.gate_sentence(result) in text  # the same sentence as under the body's "Gate: passed"
    assert "| **this pull request (`static`)** |" in text


def test_the_plot_says_simulated_and_draws_held_out_calls_apart(tmp_path: Path) -> None:
    cal = calibration()
    assert any(h.any() for h in cal.plot.held_out) and not all(h.all() for h in cal.plot.held_out)
    drawn = write_plot(tmp_path / "plot.png", cal.plot, alpha=0.05, sources=cal.result.metadata.sources)
    assert drawn[0].startswith("SIMULATED DATA: ") and "not a real model" in drawn[0]
    assert any(t.startswith("held-out call") for t in drawn) and "fitted call" in drawn
    real = Sources(simulated=False, models=[SourceModel(provider="openai", model="gpt-5", samples=10,
                                                        simulated=False)])
    assert not any("SIMULATED" in t for t in write_plot(tmp_path / "real.png", cal.plot, alpha=0.05, sources=real))


def test_the_plot_draws_the_ceiling_merging_ships_not_the_refits_factor(tmp_path: Path) -> None:
    """The green line is the pull request's ceilings (its changes applied to today's coefficients) ÷ the refit's
    prediction; the full refit's factor is drawn only where nothing ships, and labelled so."""
    groups = [GroupTruth("implementation", "low", 400, Law(0.0, 0.35)),
              GroupTruth("docs", "low", 250, Law(0.2, 0.3), 0.4, False)]
    samples = build_sample_set(simulate_groups(groups, seed=4).columns)
    current = te.current_coefficients()
    cal = calibrate(samples, Params(), current)
    tables = {"BUDGET_FACTORS": dict(current.budget_factors), "PHASE_OVERHEAD": dict(current.phase_overhead),
              "TOKEN_WEIGHTS": dict(current.token_weights)}
    for change in cal.result.proposed_changes:  # the merge, as the pull request's edit applies it
        tables[change.coefficient][tuple(change.key)] = change.new
    merged = dataclasses.replace(current, budget_factors=tables["BUDGET_FACTORS"],
                                 phase_overhead=tables["PHASE_OVERHEAD"], token_weights=tables["TOKEN_WEIGHTS"])
    _, ceiling = configuration_ceiling(samples, merged, merged.budget_factors)
    _, today = configuration_ceiling(samples, current, current.budget_factors)
    changed = {(c.category, c.complexity) for c in cal.result.proposed_changes}
    assert changed
    rows = samples.rows_by_group()
    for g, drawn_ships, factor in zip(cal.plot.groups, cal.plot.shipped, cal.plot.factors, strict=True):
        idx = rows[samples.groups.index(g)]
        if not np.any(ceiling[idx] != today[idx]):
            assert drawn_ships is None
            continue
        assert g in changed and drawn_ships is not None
        refit_predicted = samples.y[idx] / cal.plot.ratios[cal.plot.groups.index(g)]  # the plot's scale
        assert drawn_ships[0] == pytest.approx(float(np.median(ceiling[idx] / refit_predicted)), rel=1e-6)
        assert factor is not None and drawn_ships[0] != pytest.approx(factor, rel=1e-3)  # a bounded step
    drawn = write_plot(tmp_path / "plot.png", cal.plot, alpha=0.05)
    assert any(t.startswith("ceiling that ships") for t in drawn) and "budget factor, ships (α=0.05)" not in drawn


def test_the_older_positional_plot_call_still_draws(tmp_path: Path) -> None:
    p = calibration().plot
    drawn = write_plot(tmp_path / "plot.png", p.groups, p.ratios, p.observed, p.factors, p.proposed, 0.05)
    assert any("n=400" in t for t in drawn) and not any("today's ceiling" in t for t in drawn)


def test_the_report_header_states_the_rise_bound_the_lowerings_used() -> None:
    """``--max-rise-per-run`` decides how far a lowering may go; the report says which bound this run used."""
    groups = [GroupTruth("implementation", "low", 400, Law(0.0, 0.35))]
    samples = build_sample_set(simulate_groups(groups, seed=4).columns)
    result = calibrate(samples, Params(max_rise_per_run=0.0125)).result
    assert result.metadata.max_rise_per_run == 0.0125
    assert "a lowering at most +1.25 pp of estimated truncation a run" in render_markdown(result, None)


def test_the_reports_changes_table_explains_its_interval_as_the_body_does() -> None:
    text = render_markdown(calibration().result, None)
    assert f"| Coefficient | Key | Old | New | n | Confidence | {story.INTERVAL_COLUMN} |" in text
    assert story.INTERVAL_NOTE in text
