#!/usr/bin/env python
"""Calibration under drift: static, rolling and ACI budgets replayed online on real traces.

Data: data/azure_llm_inference_2023_{code,conv}.csv (Azure LLM inference trace 2023,
Microsoft, CC-BY 4.0): one hour of requests each, ``TIMESTAMP,ContextTokens,GeneratedTokens``. As in
``bench_calibration_quality.py``: group = context-length bucket (<1k, 1–3k, 3–6k, 6–12k, ≥12k tokens),
predicted = 100 tokens for every call, conv's 11 outputs at exactly 1000 tokens are censored (its cap).
Calls are ordered by timestamp; the oldest 60 % train, the newest 40 % are replayed one by one with
**delayed feedback** (``autopack.calibration.drift``): a call's outcome is known to later calls only once
it has finished, at planned + 0.25 s + 40 ms × tokens produced (a truncated call produces its ceiling).
The estimator's 512-token minimum ceiling is not applied (these outputs are 10–500 tokens; this measures
the statistics, exactly as the quality benchmark does).

Methods (``drift`` module; the parameters are fixed in advance, not tuned on these traces):
static (per-group split-conformal quantile of the training calls), rolling (window 200 finished calls per
group), aci (γ = 0.005, α_t clipped to [α/5, 2α], factor read off the reviewed per-group quantile curve),
oracle (each group's quantile of the held-out window itself, in hindsight).

Rule for the default method, stated before the first run: a method is *eligible* when, on both traces at
α = 0.05 and 0.10, its held-out truncation is ≤ α + 1 pp and its worst 5-minute bin is ≤ 2α. Among the
eligible, the lowest mean (reserved/used ÷ the oracle's) over the four cells wins; a method within 0.01 of
that with less runtime state wins the tie (static: none < aci: one level per group < rolling: a window of
scores per group). If no adaptive method is eligible, static stays the default.

The sensitivity table replays the same cells with fixed feedback lags (0, 100 and 500 calls) and other
γ / window values, to show whether the choice hinges on the delay model or the parameters.

    .venv/bin/python bench/bench_calibration_drift.py
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe_machine  # noqa: E402

from autopack.calibration import drift  # noqa: E402
from autopack.telemetry.ingest.rows import parse_timestamp  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
TRACES = {"code": DATA / "azure_llm_inference_2023_code.csv", "conv": DATA / "azure_llm_inference_2023_conv.csv"}
CAPS = {"code": None, "conv": 1000}  # conv's visible cap: outputs at 1000 are lower bounds
BUCKETS = (1000, 3000, 6000, 12000)
PREDICTED = 100.0
TRAIN = 0.6
ALPHAS = (0.05, 0.10)
PRIMARY = drift.Feedback()
STATE_RANK = {"static": 0, "aci": 1, "rolling": 2}


def load(trace: str) -> drift.Stream:
    with TRACES[trace].open(newline="") as f:
        rows = list(csv.DictReader(f))
    epoch = np.array([parse_timestamp(r["TIMESTAMP"]).timestamp() for r in rows])
    y = np.array([float(r["GeneratedTokens"]) for r in rows])
    group = np.digitize([int(r["ContextTokens"]) for r in rows], BUCKETS)
    cap = CAPS[trace]
    observed = np.ones(y.size, dtype=bool) if cap is None else y < cap
    order = np.argsort(epoch, kind="stable")
    stream = drift.Stream(group[order], np.full(y.size, PREDICTED), y[order], observed[order], epoch[order])
    return stream


def _f(value: float | None) -> float:
    """A metric as a number (NaN where the method had no calls to measure it on)."""
    return math.nan if value is None else value


def main() -> None:
    print(f"machine: {describe_machine()}")
    print(f"feedback: {PRIMARY.describe()}; train on the oldest {TRAIN:.0%}, replay the newest {1 - TRAIN:.0%}")
    n_groups = len(BUCKETS) + 1
    streams = {t: load(t) for t in TRACES}
    cells: dict[tuple[str, float], drift.Comparison] = {}
    for trace, stream in streams.items():
        train, test = stream.split(TRAIN)
        for alpha in ALPHAS:
            cells[(trace, alpha)] = drift.compare(train, test, alpha, n_groups=n_groups, feedback=PRIMARY)

    print()
    print("| trace | α | method | held-out calls | truncation | reserved / used | ÷ oracle | worst 5-min bin "
          "| pinball ÷ oracle |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for (trace, alpha), cmp in cells.items():
        summary = cmp.summary().methods
        for name in ("static", "rolling", "aci", "oracle"):
            m = summary[name]
            print(f"| {trace} | {alpha:.2f} | {name} | {m.n or 0:,} | {100 * _f(m.truncation_rate):.2f} % | "
                  f"{_f(m.reserved_over_used):.3f} | {_f(m.reserved_vs_oracle):.3f} | "
                  f"{100 * _f(m.worst_bin_truncation):.1f} % | {_f(m.pinball_vs_oracle):.3f} |")

    # the rule stated in the module docstring
    print()
    eligible: dict[str, float] = {}
    for name in drift.METHODS:
        ok, ratios, why, margins = True, [], [], []
        for (trace, alpha), cmp in cells.items():
            m = cmp.summary().methods[name]
            ratios.append(_f(m.reserved_vs_oracle))
            margins.append(((alpha + 0.01) * (m.n or 0) - (m.truncations or 0), f"{trace} α={alpha}"))
            if _f(m.truncation_rate) > alpha + 0.01 + 1e-12:
                ok = False
                why.append(f"{trace} α={alpha}: truncation {100 * _f(m.truncation_rate):.2f} % > α + 1 pp")
            if _f(m.worst_bin_truncation) > 2 * alpha + 1e-12:
                ok = False
                why.append(f"{trace} α={alpha}: worst bin {100 * _f(m.worst_bin_truncation):.1f} % > 2α")
        mean = float(np.mean(ratios))
        slack, where = min(margins)
        print(f"{name:<8} mean reserved/used ÷ oracle {mean:.3f}, smallest margin to α + 1 pp: {slack:.1f} calls "
              f"({where}): " + ("eligible" if ok else "; ".join(why)))
        if ok:
            eligible[name] = mean
    if not eligible:
        choice = "static"
        print("no method eligible: static stays the default")
    else:
        best = min(eligible.values())
        choice = min((n for n, v in eligible.items() if v <= best + 0.01), key=lambda n: STATE_RANK[n])
    print(f"chosen default: {choice} (drift.DEFAULT_METHOD = {drift.DEFAULT_METHOD!r})")
    done = all(
        _f(cmp.summary().methods[choice].truncation_rate) <= alpha + 0.01
        and _f(cmp.summary().methods[choice].reserved_vs_oracle) <= 1.05
        for (_, alpha), cmp in cells.items()
    )
    print(f"done-when (truncation ≤ α + 1 pp and reserved/used ≤ 1.05 × oracle in all four cells): "
          f"{'met' if done else 'NOT met'}")

    # sensitivity: delay model and parameters
    print()
    print("sensitivity (truncation % / reserved-used ÷ oracle / worst bin %):")
    variants: list[tuple[str, drift.MethodSpec, drift.Feedback]] = []
    for lag in (0, 100, 500):
        for method in ("rolling", "aci"):
            variants.append((f"{method}, lag {lag} calls", drift.MethodSpec(method), drift.Feedback(lag_calls=lag)))
    for gamma in (0.002, 0.01, 0.02):
        variants.append((f"aci γ={gamma}", drift.MethodSpec("aci", gamma=gamma), PRIMARY))
    for window in (100, 500):
        variants.append((f"rolling W={window}", drift.MethodSpec("rolling", window=window), PRIMARY))
    variants.append(("aci, α_t in [α/10, 3α]", drift.MethodSpec("aci", curve_multiples=(0.1, 0.2, 0.3, 0.5, 0.7, 1.0,
                                                                                        1.4, 2.0, 3.0)), PRIMARY))
    header = " | ".join(f"{t} {a:.2f}" for t, a in cells)
    print(f"| variant | {header} |")
    print("|---|" + "---:|" * len(cells))
    for label, spec, feedback in variants:
        parts = []
        for (trace, alpha), base in cells.items():
            train, test = streams[trace].split(TRAIN)
            ceilings = drift.method_ceilings(spec, train, test, alpha, drift.static_factors(train, alpha, n_groups),
                                             feedback)
            m = drift.evaluate(test, ceilings, alpha)
            oracle = _f(base.metrics["oracle"].reserved_over_used)
            parts.append(f"{100 * _f(m.truncation_rate):.2f} / {_f(m.reserved_over_used) / oracle:.3f} / "
                         f"{100 * _f(m.worst_bin_truncation):.1f}")
        print(f"| {label} | " + " | ".join(parts) + " |")


if __name__ == "__main__":
    main()
