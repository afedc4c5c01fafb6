"""A reviewer's reading of a real calibration: every figure beside what ships describes what ships, or says whose it is.

The calibration runs on a seeded database (simulated phases, as the quickstart's) where groups are lowered in
bounded steps, so the refit's factor and the shipped one differ.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from autopack import token_estimator as te
from autopack.calibration import run_calibration, story
from autopack.calibration.report import render_markdown
from autopack.calibration.result import CalibrationResult, load_result
from autopack.db.engine import get_engine
from autopack.db.handle import open_database
from autopack.db.models import TokenEstimationV2Event
from autopack.github.body import pr_title, render_pr_body
from autopack.github.estimator_edit import apply_proposal

from synthetic_telemetry import simulate


def calibrated(db_url: str, tmp_path: Path, *, seed: int) -> CalibrationResult:
    """The calibration of 150 simulated calls (``seed``), as its JSON result file reads back."""
    with get_engine(db_url).begin() as connection:
        connection.execute(sa.insert(TokenEstimationV2Event.__table__), simulate(150, seed=seed))
    out = run_calibration(open_database(db_url), output_dir=tmp_path)
    assert out.json_path
    return load_result(Path(out.json_path))


@pytest.fixture
def result(db_url: str, tmp_path: Path) -> CalibrationResult:
    loaded = calibrated(db_url, tmp_path, seed=3)
    assert any(c.lowering is not None and c.lowering.factor != c.lowering.fitted_factor
               for c in loaded.proposed_changes)
    return loaded


def body_of(result: CalibrationResult) -> str:
    original = Path(te.__file__).read_text(encoding="utf-8")
    edited = apply_proposal(original, result.proposed_changes, result.metadata)
    return render_pr_body(result, None, original_source=original, edited_source=edited)


def test_a_lowered_groups_verdict_gives_what_ships_on_its_held_out_calls(result: CalibrationResult) -> None:
    """The gate's held-out figures are its fitted factor's; the bounded step that ships is replayed beside them."""
    lowered = [c for c in result.proposed_changes if c.coefficient == "BUDGET_FACTORS" and c.lowering]
    assert lowered
    for change in lowered:
        group = next(g for g in result.groups if (g.category, g.complexity) == tuple(change.key))
        assert group.backtest and group.backtest.shipped and group.backtest.current
        shipped, today = group.backtest.shipped, group.backtest.current
        assert shipped.reserved_over_used is not None and today.reserved_over_used is not None
        assert (f"what ships ({change.new:.3f}) on the same {shipped.n} held-out calls: truncation "
                f"{shipped.truncations}/{shipped.n}") in change.verdict
        assert f"reserved/used {shipped.reserved_over_used:.3f} (today's {today.reserved_over_used:.3f})" \
            in change.verdict
        before = change.verdict.split("; what ships")[0]
        for figure in re.findall(r"(\S+ \S+) held-out reserved/used", before):
            assert figure in ("fitted factor's", "the fitted"), before


def test_today_s_ceiling_figures_say_which_average_they_are(result: CalibrationResult) -> None:
    """A token-weighted reserve and a median of ratios are two numbers: each says which it is."""
    body = body_of(result)
    lowered = [c for c in result.proposed_changes if c.coefficient == "BUDGET_FACTORS" and c.lowering]
    assert lowered
    for change in lowered:
        assert change.lowering is not None
        assert f"≈ {change.lowering.today_factor:.3f}× the prediction in total (Σ ceiling ÷ Σ prediction" in body
        assert f"today's ceilings ≈ {change.lowering.today_factor:.3f}× the prediction in total;" in change.verdict
    assert "| Today's ceiling ÷ refit's prediction (median) |" in render_markdown(result, None)


def test_the_reports_recommendations_and_factor_table_show_the_factor_that_ships(result: CalibrationResult) -> None:
    text = render_markdown(result, None)
    assert "— proposed" not in text and "**Proposed budget factor**" not in text
    for change in result.proposed_changes:
        if change.coefficient != "BUDGET_FACTORS":
            continue
        assert change.new is not None
        table = text.split("### Budget factors")[1]
        row = next(line for line in table.splitlines() if line.startswith(f"| {change.key[0]} | {change.key[1]} |"))
        assert row.rstrip().endswith(f"| ✅ {change.new:.3f} |"), row
    assert "(its median rule, not what ships)" in text or "No high-confidence groups." in text


def test_the_glossary_says_kupiec_rejects_too_few_truncations_as_well(result: CalibrationResult) -> None:
    """0 of 73 held-out calls cut at α = 5 % gives Kupiec p = 0.006: the glossary must not say it rejects nothing."""
    kupiec = next(line for line in body_of(result).splitlines() if line.startswith("- **Kupiec**"))
    assert "rejects nothing" not in kupiec
    assert "too many truncations or too few" in kupiec and "one-sided exact binomial test" in kupiec


def test_each_docs_group_not_raised_says_why_in_one_line(result: CalibrationResult) -> None:
    """The issue: the quickstart's PR raises the docs groups' ceilings, or names in one line why not."""
    body, report = body_of(result), render_markdown(result, None)
    docs = [g for g in result.groups if g.category in ("docs", "doc_synthesis", "doc_sot_update")]
    not_raised = [g for g in docs if g.gate_direction != "raise"]
    assert not_raised and any(g.gate_direction == "raise" for g in docs)
    for g in not_raised:
        assert g.step_toward_alpha is not None and g.step_toward_alpha.verdict
        line = f"- {g.category}/{g.complexity} not raised: {g.step_toward_alpha.verdict}"
        assert sum(text.startswith(line) for text in body.splitlines()) == 1
        assert sum(text.startswith(line) for text in report.splitlines()) == 1
        assert "not above α" in g.step_toward_alpha.verdict or "but" in g.step_toward_alpha.verdict


@pytest.fixture
def overhead_result(db_url: str, tmp_path: Path) -> CalibrationResult:
    """A calibration that moves a phase overhead a half log-step toward its fitted value, short of its bounds."""
    return calibrated(db_url, tmp_path, seed=1)


def test_a_phase_overheads_interval_holds_the_value_it_steps_toward(overhead_result: CalibrationResult) -> None:
    """new = √(fitted × old) (the half log-step), so the fitted value is new² / old: its interval must hold it
    (the quickstart showed 1176 → 1040 beside [1, 1], the interval of another estimator)."""
    (change,) = [c for c in overhead_result.proposed_changes if c.coefficient == "PHASE_OVERHEAD"]
    assert change.old is not None and change.new is not None
    assert change.old / 2 < change.new < change.old * 2  # not on a bound: the fitted value is known
    fitted = change.new**2 / change.old
    lo, hi = change.interval
    assert lo is not None and hi is not None and lo < hi
    assert lo <= fitted * 1.01 and fitted * 0.99 <= hi, (lo, fitted, hi)


def test_the_title_and_the_branch_commit_say_the_data_is_simulated(result: CalibrationResult, tmp_path: Path) -> None:
    """A list of pull requests shows titles only; the quickstart's said nothing of its simulated data there."""
    assert result.metadata.sources is not None and result.metadata.sources.simulated
    assert pr_title(result).startswith("[SIMULATED DATA] Calibrate token estimator (")
    real = result.model_copy(update={"metadata": result.metadata.model_copy(update={"sources": None})})
    assert pr_title(real).startswith("Calibrate token estimator (")


def test_the_doc_phase_count_says_it_includes_retries(result: CalibrationResult) -> None:
    """The quickstart's report said '12 of 86 documentation calls truncated' above a Summary of 2 truncated first
    attempts: the docs table lists every recorded call, retries too, and says so beside its count."""
    docs = render_markdown(result, None).split("## Doc-phase truncation")[1].split("\n## ")[0]
    assert result.docs_truncation
    count = f"{sum(r.truncated for r in result.docs_truncation)} of {len(result.docs_truncation)} documentation calls"
    assert f"{count} truncated, retries included" in docs and "leaves retries out" in docs


def test_the_docs_lines_come_after_everything_above_together(result: CalibrationResult) -> None:
    """'Everything above together' sums up what ships: a docs group not raised is not part of it."""
    verdicts = body_of(result).split("### Verdicts")[1].split("\n### ")[0].splitlines()
    together = next(i for i, line in enumerate(verdicts) if "everything above together" in line)
    assert all(i > together for i, line in enumerate(verdicts) if " not raised: " in line)
    assert "then one line per documentation group not raised" in verdicts[2]


def test_the_drift_table_uses_the_same_words_in_the_report_and_the_body(result: CalibrationResult) -> None:
    """docs/pull-requests.md: the same words appear in each (the report said 'worst bin' and '÷ oracle')."""
    def columns(text: str) -> set[str]:
        head = next(line for line in text.splitlines() if line.lower().startswith("| method | truncation |"))
        return {c.strip().lower() for c in head.strip("|").split("|")}

    assert columns(render_markdown(result, None)) == columns(body_of(result))


def test_an_estimated_truncation_reads_the_same_in_the_verdict_and_the_gate_line(result: CalibrationResult) -> None:
    """The quickstart printed 0.826 % → 1.08 % in a verdict and 0.8% → 1.1% in the gate line under it."""
    verdicts = story.group_verdicts(result)
    lowered = [c for c in result.proposed_changes if c.coefficient == "BUDGET_FACTORS" and c.lowering]
    raised = [g for g in result.groups if g.gate_direction == "raise" and g.step_toward_alpha]
    assert lowered and raised
    for change in lowered:
        low = change.lowering
        assert low is not None and low.estimated_truncation is not None
        for rate in (low.estimated_truncation_today, low.estimated_truncation):
            assert f"{rate * 100:.3g} %" in verdicts[tuple(change.key)].line()  # type: ignore[index]
            assert f"{rate * 100:.3g}%" in change.verdict
    for g in raised:
        step = g.step_toward_alpha
        assert step is not None and step.expected_truncation is not None and step.verdict
        assert f"expected truncation after it ≈ {step.expected_truncation * 100:.3g}%" in step.verdict


def test_the_groups_table_says_whose_confidence_it_shows(result: CalibrationResult) -> None:
    """docs/low showed confidence 0.92 beside its shipped 1.996, a step toward α that claims none: it is the refit's."""
    body = body_of(result)
    header = next(line for line in body.splitlines() if line.startswith("| Category | Complexity | n | Censored |"))
    assert "| Full refit's confidence |" in header and "| Confidence |" not in header


def test_a_small_groups_bound_lies_inside_its_quantiles_interval() -> None:
    """A group of 5 showed its normal bound above its own 90 % interval in 10 of 12 seeds (the quickstart's
    doc_sot_update/low: 1.658 beside [0.726, 1.581]); the exact interval of the quantile holds it."""
    from autopack.calibration.core import Params, calibrate
    from autopack.calibration.samples import build_sample_set

    from synthetic_telemetry import GroupTruth, Law, simulate_groups

    for seed in range(6):
        groups = [GroupTruth("implementation", "low", 200, Law(0.0, 0.35)), GroupTruth("tests", "low", 5, Law(0.3, 0.4))]
        result = calibrate(build_sample_set(simulate_groups(groups, seed=seed).columns), Params()).result
        (small,) = [g for g in result.groups if g.factor_method == "small_group_bound"]
        low, high = small.factor_interval or (None, None)
        assert small.budget_factor is not None and low is not None and high is not None
        assert low <= small.budget_factor <= high, (seed, small.budget_factor, low, high)
