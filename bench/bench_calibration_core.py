#!/usr/bin/env python
"""Core benchmark: ``calibrate()`` alone on 10⁶ synthetic calls, as a ratio to the physical floor.

The calls come from ``synthetic_telemetry.feature_event_columns`` (5,000 distinct phase specs
with stored features, log-normal lengths, ~2 % truncated and escalated, retries flagged); building the
sample set (re-estimation) is done once and not timed. Timed, in this one process, alternately:

- floor: log(actual / predicted) and one ``np.quantile`` per group over the same arrays (what any
  per-group quantile costs, with no statistics around it);
- ``calibrate()``: coefficient fit with bootstrap, factor models, backtest, gate, result object.

Reported: the best of ``--repeat`` runs of each, wall clock and CPU time of this process (the machine
is shared: CPU time is what the code costs, wall clock what a run took while others worked), and the
ratios.

    .venv/bin/python bench/bench_calibration_core.py [--events 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe_machine  # noqa: E402

from autopack.calibration.core import Params, calibrate  # noqa: E402
from autopack.calibration.samples import build_sample_set  # noqa: E402

from synthetic_telemetry import feature_event_columns  # noqa: E402


def floor(samples, alpha: float) -> list[float]:  # type: ignore[no-untyped-def]
    r = np.log(samples.y / samples.pred_current)
    return [float(np.quantile(r[samples.group == g], 1 - alpha)) for g in range(len(samples.groups))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    columns = feature_event_columns(args.events)
    samples = build_sample_set(columns)
    params = Params()
    calibrate(samples.subset(np.arange(samples.n) < 5000), params)  # imports and caches warmed up
    best = {"floor": [float("inf")] * 2, "core": [float("inf")] * 2}
    for _ in range(args.repeat):
        for name, run in (("floor", lambda: floor(samples, params.alpha)), ("core", lambda: calibrate(samples, params))):
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            best[name] = [min(best[name][0], time.perf_counter() - wall), min(best[name][1], time.process_time() - cpu)]
    (floor_wall, floor_cpu), (core_wall, core_cpu) = best["floor"], best["core"]
    print()
    print("| calls (rows read) | samples | groups | floor wall / CPU (s) | calibrate() wall / CPU (s) | ratio wall / CPU |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {columns.size:,} | {samples.n:,} | {len(samples.groups)} | {floor_wall:.3f} / {floor_cpu:.3f} | "
          f"{core_wall:.3f} / {core_cpu:.3f} | {core_wall / floor_wall:.1f}× / {core_cpu / floor_cpu:.1f}× |")


if __name__ == "__main__":
    main()
