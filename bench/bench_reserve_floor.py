#!/usr/bin/env python
"""How low the reserve can go, and how fast, for the closed loop's workload: the floor any calibration meets.

The closed loop (``bench_closed_loop.py``) asks for two things of every merged change at once: it may raise no
group's true truncation by more than 1 pp, and by cycle 8 the reserve must be ≤ 1.15 × the oracle's (each phase
at the law's own (1 − α) quantile). This bench computes, from the simulator's law and the estimator's own
predictions (no sampling, no calibration), what those two allow:

1. With one budget factor per group set so that every group truncates exactly p (today's weights and
   overheads): the reserve ÷ oracle, per p. That is the least reserve of any factor table whose groups all sit
   at p; p* is where it crosses 1.15.
2. From today's file (each group's truncation today, p₀): the reserve at cycle 8 if every change moved each group
   by exactly +k pp toward a target (α, or the gate's aim 0.75α), never past it, one change per cycle from cycle
   1 (generous: the first calibration has one week of data): k = 1 is the best any gate can do under the 1 pp rule, with
   perfect knowledge of the law; k = 0.5 is the gate's own bound on its estimated rise, 0.25 its bound where the
   evidence is thin (the closed loop measures how far true rises stray from these estimates).

    .venv/bin/python bench/bench_reserve_floor.py [--alphas 0.05,0.10] [--cycles 8]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import brentq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe_machine  # noqa: E402

from autopack import token_estimator as te  # noqa: E402
from autopack.calibration.samples import factor_ceiling  # noqa: E402
from autopack.llm.simulated import PhaseLaw, phase_law  # noqa: E402

from closed_loop import PhaseCase, exceed_probability, oracle_ceiling, weekly_phases  # noqa: E402

Group = tuple[str, str]
RESERVE_TARGET = 1.15


@dataclass(frozen=True)
class GroupRows:
    """A group's phases: each one's prediction, today's ceiling and law."""

    group: Group
    predicted: list[int]
    today: list[int]
    laws: list[PhaseLaw]

    def ceilings(self, factor: float) -> list[float]:
        """Each phase's ceiling under ``factor``: the estimator's own rule (``samples.factor_ceiling``)."""
        predicted = np.asarray(self.predicted, dtype=float)
        return [float(c) for c in factor_ceiling(predicted, np.full(predicted.size, factor))]

    def truncation(self, ceilings: Sequence[float]) -> float:
        return float(np.mean([exceed_probability(law, c) for law, c in zip(self.laws, ceilings, strict=True)]))

    def factor_at(self, p: float) -> float:
        """The budget factor at which the group truncates p (mean over its phases)."""
        return math.exp(brentq(lambda lf: self.truncation(self.ceilings(math.exp(lf))) - p, math.log(0.02),
                               math.log(50.0), xtol=1e-7))


def group_rows(cases: Sequence[PhaseCase]) -> list[GroupRows]:
    coeffs = te.current_coefficients()
    rows: dict[Group, GroupRows] = {}
    for case in cases:
        est, decision = te.plan_call(case.features, coeffs)
        law = phase_law(case.features.category, case.features.complexity,
                        [te.deliverable_path(d) for d in case.features.deliverables])
        g = rows.setdefault(est.group, GroupRows(est.group, [], [], []))
        g.predicted.append(est.predicted_output_tokens)
        g.today.append(decision.actual_max_tokens)
        g.laws.append(law)
    return sorted(rows.values(), key=lambda g: (-len(g.predicted), g.group))


def reserve(groups: Sequence[GroupRows], truncations: dict[Group, float], alpha: float) -> float:
    """Σ ceiling ÷ Σ oracle with every group at its given truncation."""
    reserved = oracle = 0.0
    for g in groups:
        reserved += sum(g.ceilings(g.factor_at(truncations[g.group])))
        oracle += sum(oracle_ceiling(law, alpha) for law in g.laws)
    return reserved / oracle


def uniform(groups: Sequence[GroupRows], p: float, alpha: float) -> float:
    """The reserve ÷ oracle with every group at true truncation p."""
    return reserve(groups, {g.group: p for g in groups}, alpha)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alphas", default="0.05,0.10")
    parser.add_argument("--cycles", type=int, default=8)
    args = parser.parse_args()
    groups = group_rows(weekly_phases())
    print(f"{describe_machine()}\n")
    for alpha in (float(a) for a in args.alphas.split(",")):
        today = {g.group: g.truncation(g.today) for g in groups}
        today_reserve = (sum(sum(g.today) for g in groups)
                         / sum(oracle_ceiling(law, alpha) for g in groups for law in g.laws))
        print(f"## α = {alpha:g}\n")
        print("Every group at the same true truncation p (one factor per group, today's weights and overheads):\n")
        print("| p | reserve ÷ oracle |\n|---:|---:|")
        shares = (1.0, 0.9, 0.75, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
        for share in shares:
            p = share * alpha
            print(f"| {p:.2%} ({share:g}α) | {uniform(groups, p, alpha):.3f} |")
        p_star = brentq(lambda p, a=alpha: uniform(groups, p, a) - RESERVE_TARGET, 0.02 * alpha, alpha, xtol=1e-5)
        print(f"\nReserve {RESERVE_TARGET} × the oracle's needs every group at p* = {p_star:.2%} or above "
              f"(= {p_star / alpha:.2f}α).\n")
        print(f"From today's file (reserve {today_reserve:.3f}), cycle {args.cycles}, every change moving each "
              "group by exactly +k pp toward the target, one change a cycle from cycle 1:\n")
        print("| k a change | target | reserve at cycle "
              f"{args.cycles} | groups short of p* at cycle {args.cycles} (today → reached) |")
        print("|---:|---|---:|---|")
        for k in (1.0, 0.5, 0.25):
            for name, target in (("α", alpha), ("0.75α", 0.75 * alpha)):
                # a raise (truncation falling) is not bounded by the 1 pp rule: it lands on the target at once
                reached = {g: min(target, p0 + k / 100 * args.cycles) if p0 < target else target
                           for g, p0 in today.items()}
                short = [f"{'/'.join(g)} {today[g]:.1%} → {reached[g]:.1%}" for g in reached
                         if reached[g] < p_star - 1e-9]
                print(f"| {k:g} pp | {name} | {reserve(groups, reached, alpha):.3f} | {', '.join(short) or '-'} |")
        print()


if __name__ == "__main__":
    main()
