"""Read the PR body of a real calibration as a reviewer would: every place that says "this pull request" agrees.

The calibration runs on a seeded database (simulated phases, as the quickstart's), the body is rendered
against the repository's own estimator before and after the edit, and its effect line, per-group table
and the drift table's "this pull request" row are read back and compared with each other and the report.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from autopack import token_estimator as te
from autopack.calibration import run_calibration, story
from autopack.calibration.result import CalibrationResult, load_result
from autopack.db.engine import get_engine
from autopack.db.handle import open_database
from autopack.db.models import TokenEstimationV2Event
from autopack.github.body import render_pr_body
from autopack.github.estimator_edit import apply_proposal

from synthetic_telemetry import simulate

PCT = r"(\d+\.\d) %"


@pytest.fixture
def result(db_url: str, tmp_path: Path) -> CalibrationResult:
    """The calibration as the pull-request step reads it: its JSON file, through the versioned reader."""
    with get_engine(db_url).begin() as connection:
        connection.execute(sa.insert(TokenEstimationV2Event.__table__), simulate(150, seed=3))
    out = run_calibration(open_database(db_url), output_dir=tmp_path)
    assert out.gate.passed is True and out.proposed_changes and out.json_path
    return load_result(Path(out.json_path))


def body_of(result: CalibrationResult) -> str:
    original = Path(te.__file__).read_text(encoding="utf-8")
    edited = apply_proposal(original, result.proposed_changes, result.metadata)
    return render_pr_body(result, None, original_source=original, edited_source=edited)


def table(body: str, header_start: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose header line starts with ``header_start``, as header → cell."""
    lines = body.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    names = [c.strip() for c in lines[head].strip("|").split("|")]
    rows = []
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, (c.strip() for c in line.strip("|").split("|")), strict=True)))
    return rows


def rates(cell: str) -> tuple[float, float]:
    """``4.1 %`` or ``4.1 %–5.4 %`` → (low, high) in percent."""
    found = [float(x) for x in re.findall(PCT, cell)]
    return (found[0], found[-1])


def test_effect_line_per_group_table_and_drift_row_tell_one_story(result: CalibrationResult) -> None:
    body = body_of(result)
    shipped = result.backtest.shipped
    assert shipped is not None
    n, low, high = shipped.n, shipped.truncations, shipped.truncations_upper

    # the effect line: today → this pull request, what the shipped backtest says
    (effect,) = [line for line in body.splitlines() if line.startswith("**Effect on the")]
    after = effect.split("→ **", 1)[1]
    count = f"{low}/{n}" if low == high else f"{low}–{high} of {n}"
    assert after.startswith(count)
    effect_rates = rates(after.split("(95 % CI")[0])
    effect_ratio = re.search(r"reserved / used [\d.]+ → \*\*([\d.]+)\*\*", effect)
    assert effect_ratio is not None

    # the per-group table: its shipped truncations add up to the effect line's counts
    groups = table(body, "| Group | Held-out |")
    column = next(k for k in groups[0] if k.startswith("Truncation today → this PR"))
    held = [int(g["Held-out"]) for g in groups]
    assert sum(held) == n  # every group with held-out calls is shown
    lows = [rates(g[column].split(" → ")[1])[0] for g in groups]
    highs = [rates(g[column].split(" → ")[1])[1] for g in groups]
    assert round(sum(h * r / 100 for h, r in zip(held, lows, strict=True))) == low
    assert round(sum(h * r / 100 for h, r in zip(held, highs, strict=True))) == high

    # the changes table: each changed factor's held-out truncation is its group's in the per-group table
    by_group = {g["Group"].replace(" (changed)", ""): g[column].split(" → ")[1] for g in groups}
    factors = [c for c in table(body, "| Coefficient | Key |") if c["Coefficient"] == "`BUDGET_FACTORS`"]
    assert factors and all(c["Key"] in by_group for c in factors)
    for change in factors:
        assert change["Held-out truncation, this PR"] == by_group[change["Key"]]

    # the drift table: its "this pull request" row is the shipped backtest, and says the same as the effect line
    drift = table(body, "| Method | truncation |")
    (this_pr,) = [r for r in drift if "this pull request" in r["Method"]]
    assert rates(this_pr["truncation"]) == pytest.approx(effect_rates)
    assert this_pr["reserved / used"] == effect_ratio.group(1)
    assert "this pull request's method" not in body
    assert not [r for r in drift if "full refit" in r["Method"]]  # the comparison replays what ships

    # the backtest's `shipped` column is this pull request; the refit is labelled as not shipped
    backtest = table(body, "| Metric |")
    ratio = next(r for r in backtest if r["Metric"] == "reserved / used")
    assert ratio["`shipped` = this pull request"] == effect_ratio.group(1)
    assert "`proposed` = full refit (not shipped)" in ratio


def test_gate_passed_is_never_above_thin_evidence_without_saying_what_it_means(result: CalibrationResult) -> None:
    body = body_of(result)
    gate = body[body.index("### Gate: passed"):]
    sentence = gate.split("\n\n")[1]
    assert sentence == story.gate_sentence(result)
    verdicts = body[body.index("### Verdicts"):body.index("### Gate")]
    if "**thin**" in verdicts:
        assert "thin evidence means unconfirmed, not failed" in sentence
    for verdict in story.group_verdicts(result).values():
        if verdict.kind.ships:
            assert verdict.line() in verdicts  # the same words as the report's
            assert verdict.line() in Path(str(result.report_path)).read_text(encoding="utf-8")
