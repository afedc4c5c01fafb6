#!/usr/bin/env python3
"""Per-phase overhead of the batch-drain machinery, with a zero-latency simulated provider.

Three measurements on fresh phases of the same shape (one ``implementation``/``low`` deliverable each):

* baseline — in this process, ``claim_phase`` + ``execute_phase`` per phase, nothing else;
* drain, 1 worker — ``BatchDrain`` (triage, lease claims, heartbeats, executor process, session save);
* drain, N workers — the same with N executor processes.

For a drain, "cycle" is the median gap between two consecutive phase completions times the number of
workers (the time one worker spends per phase, executor included); "throughput" is wall time per phase
after the first completion (so worker start-up is excluded). The overhead ratio is cycle / baseline.

    .venv/bin/python bench/bench_drain_overhead.py [--phases 60] [--workers 1 4] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import describe_machine


def make_runs(url: str, prefix: str, phases: int, runs: int) -> list[str]:
    from autopack.db.engine import session_scope
    from autopack.execution.runs import create_run
    from autopack.execution.spec import PhaseSpec, RunSpec

    run_ids = []
    per_run = max(1, phases // runs)
    for r in range(runs):
        run_id = f"{prefix}-{r:02d}"
        spec = RunSpec(
            run_id=run_id,
            phases=[
                PhaseSpec(
                    phase_id=f"p{i:03d}",
                    description=f"write helper module {r}-{i}",
                    category="implementation",
                    complexity="low",
                    deliverables=[f"src/helper_{r}_{i}.py"],
                )
                for i in range(per_run)
            ],
        )
        with session_scope(url) as db:
            create_run(db, spec)
        run_ids.append(run_id)
    return run_ids


def baseline(url: str, run_ids: list[str]) -> list[float]:
    """Seconds per phase for claim + execute_phase, in this process, no drain machinery."""
    import sqlalchemy as sa

    from autopack.db.engine import session_scope
    from autopack.db.models import Phase
    from autopack.execution import leases
    from autopack.execution.phase_runner import execute_phase

    with session_scope(url) as db:
        keys = db.execute(
            sa.select(Phase.run_id, Phase.phase_id).where(Phase.run_id.in_(run_ids)).order_by(Phase.run_id, Phase.phase_index)
        ).all()
    times = []
    for run_id, phase_id in keys:
        start = time.perf_counter()
        with session_scope(url) as db:
            claim = leases.claim_phase(db, run_id, phase_id, "bench-baseline")
        assert claim is not None
        result = execute_phase(run_id, phase_id, claim=claim, url=url)
        times.append(time.perf_counter() - start)
        assert result.final_state in ("COMPLETE", "FAILED")
    return times


class Stopwatch:
    """A drain reporter that timestamps every completion."""

    def __init__(self) -> None:
        self.done: list[float] = []
        self.latencies: list[float] = []

    def started(self, *_: Any) -> None:
        pass

    def phase_started(self, *_: Any) -> None:
        pass

    def phase_finished(self, outcome: Any, *_: Any) -> None:
        self.done.append(time.perf_counter())
        self.latencies.append(outcome.duration_seconds)

    def message(self, *_: Any) -> None:
        pass

    def finished(self, *_: Any) -> None:
        pass


def drain(url: str, run_ids: list[str], workers: int, phases: int) -> dict[str, float]:
    from autopack.execution.batch import BatchDrain, BatchOptions

    watch = Stopwatch()
    options = BatchOptions(run_ids=run_ids, batch_size=phases, workers=workers, max_attempts_per_phase=1)
    start = time.perf_counter()
    state = BatchDrain(options, url=url, reporter=watch).run()
    total = time.perf_counter() - start
    assert state.total_processed == phases, state.stop_reason
    gaps = [b - a for a, b in zip(watch.done, watch.done[1:], strict=False)]
    return {
        "cycle_ms": statistics.median(gaps) * workers * 1000,
        "throughput_ms": (watch.done[-1] - watch.done[0]) / (len(watch.done) - 1) * 1000,
        "latency_ms": statistics.median(watch.latencies) * 1000,
        "total_s": total,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", type=int, default=60, help="phases per configuration")
    parser.add_argument("--runs", type=int, default=5, help="runs the phases are spread over")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--database-url", help="default: a fresh SQLite file in a temporary directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="autopack-bench-"))
    os.chdir(work)
    os.environ.update(
        {"AUTOPACK_LLM_PROVIDER": "simulated", "AUTOPACK_SIM_LATENCY_SECONDS": "0", "TELEMETRY_DB_ENABLED": "1",
         "AUTOPACK_WORKSPACE_DIR": str(work / "workspaces")}
    )
    from autopack.db.engine import mask_url
    from autopack.db.migrate import upgrade_database

    url = args.database_url or f"sqlite:///{work / 'bench.db'}"
    os.environ["DATABASE_URL"] = url
    upgrade_database(url)
    stamp = time.strftime("%H%M%S")
    phases = max(1, args.phases // args.runs) * args.runs

    base = baseline(url, make_runs(url, f"bench-{stamp}-base", phases, args.runs))
    base_ms = statistics.median(base) * 1000
    rows = [("baseline (execute_phase in-process)", "-", phases, base_ms, sum(base) / len(base) * 1000, base_ms, 1.0)]
    for workers in args.workers:
        run_ids = make_runs(url, f"bench-{stamp}-w{workers}", phases, args.runs)
        m = drain(url, run_ids, workers, phases)
        rows.append(
            (f"drain batch", str(workers), phases, m["cycle_ms"], m["throughput_ms"], m["latency_ms"], m["cycle_ms"] / base_ms)
        )

    print(f"machine:  {describe_machine()}")
    print(f"database: {mask_url(url).split('://')[0]}   provider: simulated, zero latency   phases per row: {phases}")
    header = f"{'mode':<38}{'workers':>8}{'phases':>8}{'cycle ms':>10}{'wall ms/ph':>12}{'latency ms':>12}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for mode, workers, n, cycle, wall, latency, ratio in rows:
        print(f"{mode:<38}{workers:>8}{n:>8}{cycle:>10.1f}{wall:>12.1f}{latency:>12.1f}{ratio:>8.2f}")
    print("cycle = median time a worker spends per phase (baseline: claim+execute); wall = elapsed / phases "
          "after the first completion; latency = dispatch to result; ratio = cycle / baseline")
    from autopack.db.engine import dispose_engines

    dispose_engines()
    os.chdir(Path.home())
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
