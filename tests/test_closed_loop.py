"""The closed calibration loop (``bench/closed_loop.py``): drain → calibrate → gate → merge, judged by the law.

The direction test runs a short loop on a few groups of the seed workload from a deliberately under-budgeted
estimator; the other tests pin the harness's truth to the simulator's draws and the merge to the pull request's
edit, so the benchmark's numbers mean what they say.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from autopack import token_estimator as te  # noqa: E402
from autopack.llm.simulated import GroupLaw, draw_length, phase_law  # noqa: E402

from closed_loop import (  # noqa: E402
    LoopConfig,
    PhaseCase,
    configuration_truth,
    exceed_probability,
    largest_raise,
    merged,
    oracle_ceiling,
    overall,
    run_loop,
    underbudgeted_source,
    weekly_phases,
)

ALPHA = 0.10
GROUPS = frozenset({("implementation", "medium"), ("tests", "medium"), ("docs", "low")})


def _case(phase_id: str) -> PhaseCase:
    return next(c for c in weekly_phases() if c.phase_id == phase_id)


def _paths(case: PhaseCase) -> list[str]:
    return [te.deliverable_path(d) for d in case.features.deliverables]


@pytest.mark.parametrize("laws", [{}, {("docs", "low"): GroupLaw(sigma_scale=1.5, tail_df=2.0, median_scale=1.3)}])
def test_truth_is_the_simulators_own_exceedance_rate(laws: dict) -> None:  # type: ignore[type-arg]
    """P(length ≥ ceiling) from the law equals the share of the simulator's draws that reach the ceiling."""
    case = _case("v6-install-docs")
    law = phase_law(case.features.category, case.features.complexity, _paths(case), laws)
    ceiling = 4096
    n = 4000
    hits = sum(
        draw_length(7, f"run-{i}", case.phase_id, 0, 0, case.features.category, case.features.complexity,
                    _paths(case), laws) >= ceiling
        for i in range(n)
    )
    p = exceed_probability(law, ceiling)
    assert abs(hits / n - p) <= 4 * math.sqrt(p * (1 - p) / n)


def test_oracle_ceiling_truncates_exactly_alpha() -> None:
    law = phase_law("tests", "medium", ["a/test_x.py", "a/conftest.py"])
    assert exceed_probability(law, oracle_ceiling(law, 0.05)) == pytest.approx(0.05, abs=1e-6)


def test_merged_file_is_what_the_estimator_runs_and_is_restored() -> None:
    """The under-budgeted start (written by the pull request's editor) is installed for the block only, and every
    group of the workload then truncates about half its calls under the law."""
    cases = weekly_phases()
    before = dict(te.current_coefficients().budget_factors)
    source = underbudgeted_source(cases)
    with merged(source) as coeffs:
        assert te.current_coefficients().budget_factors == coeffs.budget_factors
        truth = configuration_truth(cases, {}, 0.05, coefficients=coeffs)
    assert dict(te.current_coefficients().budget_factors) == before
    assert all(0.4 <= t.truncation <= 0.6 for t in truth.values())


@pytest.mark.slow
def test_closed_loop_repairs_the_groups_that_truncate(tmp_path: Path) -> None:
    """Two weekly cycles from an under-budgeted estimator (α = 10 %, three groups of the seed runs): every group
    truncating above α at the start truncates less at the end, overall truncation does not rise, and no merged
    change raises a group's true truncation by more than 1 pp."""
    result = run_loop(LoopConfig(weeks=2, alpha=ALPHA, seed=1, start="under", groups=GROUPS), workdir=tmp_path)
    start, end = result.cycles[0].truth, result.cycles[-1].truth
    high = [g for g, t in start.items() if t.truncation > ALPHA]
    assert high, "the under-budgeted start truncates above α"
    assert all(end[g].truncation < start[g].truncation for g in high), {
        g: (round(start[g].truncation, 3), round(end[g].truncation, 3)) for g in high}
    assert overall(end)[0] <= overall(start)[0]
    rise, group, cycle = largest_raise(result)
    assert rise <= 0.01, f"a merged change raised {group}'s true truncation by {rise:.3f} at cycle {cycle}"


@pytest.mark.slow
def test_closed_loop_lowers_an_over_reserved_group_without_raising_its_truncation(tmp_path: Path) -> None:
    """Five weekly cycles from today's file (α = 10 %): implementation/medium, which today's floor-and-buffer rule
    over-reserves (0.3 % true truncation), gets cheaper, and no merged change (a lowering among them) raises a
    group's true truncation by more than 1 pp. (Its first factor replaces the floor rule, whose ceilings vary
    call by call, and must reserve less on the held-out calls than the rule: a step shrunk below
    ``LOWER_STEP_CALLS`` calls does so from week 4, at 13 calls a week.)"""
    group = ("implementation", "medium")
    result = run_loop(LoopConfig(weeks=5, alpha=ALPHA, seed=1, start="shipped", groups=frozenset({group})),
                      workdir=tmp_path)
    start, end = result.cycles[0].truth[group], result.cycles[-1].truth[group]
    assert end.reserved < start.reserved
    rise, changed, cycle = largest_raise(result)
    assert rise <= 0.01, f"a merged change raised {changed}'s true truncation by {rise:.3f} at cycle {cycle}"
