#!/usr/bin/env python3
"""Per-phase cost of the drain machinery and of the provider gate, and what workers buy, for both front ends.

One run, SQLite and (unless ``--no-postgres``) PostgreSQL, fresh phases of one shape (one
``implementation``/``low`` deliverable each), simulated provider:

1. Zero provider latency — what the machinery costs per phase:
   * baseline: ``claim_phase`` + ``execute_phase`` in this process, nothing else;
   * ``drain batch`` (the engine with executor processes), 1 worker, provider gate off and on;
   * the Prefect ``batch-drain`` flow (the same engine, phases as task runs on a local Prefect server),
     2 workers, gate off and on;
   rounds interleaved (alternating order) so load drift hits both gate settings alike; medians of the rounds.
2. ``AUTOPACK_SIM_LATENCY_SECONDS`` = 0.5 — what workers buy: 1 and 4 workers, gate on (default size 4),
   both front ends.

"steady" = (last − first phase completion) / (phases − 1): wall time per phase once running, worker and
flow-run start-up left out; "whole call" = wall time of the whole drain (or flow) call over its phases.

    .venv/bin/python bench/bench_drain_overhead.py [--phases 30] [--rounds 5] [--latency-phases 48] [--no-postgres]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from databases import migrated_database
from machine import describe_machine

LATENCY = 0.5


def make_runs(url: str, prefix: str, phases: int, runs: int = 3) -> list[str]:
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
                PhaseSpec(phase_id=f"p{i:03d}", description=f"write helper module {r}-{i}", category="implementation",
                          complexity="low", deliverables=[f"src/helper_{r}_{i}.py"])
                for i in range(per_run)
            ],
        )
        with session_scope(url) as db:
            create_run(db, spec)
        run_ids.append(run_id)
    return run_ids


def baseline(url: str, run_ids: list[str]) -> float:
    """Median seconds per phase for claim + execute_phase, in this process, no drain machinery."""
    import sqlalchemy as sa

    from autopack.db.engine import session_scope
    from autopack.db.handle import database_at
    from autopack.db.models import Phase
    from autopack.execution import leases
    from autopack.execution.phase_runner import execute_phase

    with session_scope(url) as db:
        keys = db.execute(sa.select(Phase.run_id, Phase.phase_id).where(Phase.run_id.in_(run_ids))).all()
    times = []
    for run_id, phase_id in keys:
        start = time.perf_counter()
        with session_scope(url) as db:
            claim = leases.claim_phase(db, run_id, phase_id, "bench-baseline")
        assert claim is not None
        result = execute_phase(run_id, phase_id, claim=claim, db=database_at(url))
        times.append(time.perf_counter() - start)
        assert result.final_state in ("COMPLETE", "FAILED"), result.error_message
    return statistics.median(times)


class Stopwatch:
    """A drain reporter that timestamps every completion."""

    def __init__(self) -> None:
        self.done: list[float] = []

    def phase_finished(self, *_: Any) -> None:
        self.done.append(time.perf_counter())

    def __getattr__(self, _name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def cli_drain(url: str, run_ids: list[str], workers: int, phases: int, gate: int) -> dict[str, float]:
    """``drain batch``'s engine and executor processes (what the CLI runs), timed per completion."""
    from autopack.db.handle import database_at
    from autopack.execution.batch import BatchDrain, BatchOptions
    from autopack.execution.batch_workers import ProcessExecutor

    watch = Stopwatch()
    options = BatchOptions(run_ids=run_ids, batch_size=phases, workers=workers, max_attempts_per_phase=1,
                           provider_concurrency=gate)
    start = time.perf_counter()
    state = BatchDrain(options, database=database_at(url), executor=ProcessExecutor(workers), reporter=watch).run()
    total = time.perf_counter() - start
    assert state.total_processed == phases, state.stop_reason  # a phase may fail (the simulated tail truncates)
    return {"steady": (watch.done[-1] - watch.done[0]) / (phases - 1), "total": total}


def flow_drain(url: str, run_ids: list[str], workers: int, phases: int, gate: int) -> dict[str, float]:
    """The Prefect ``batch-drain`` flow, timed as one call; steady throughput from the session's results."""
    import sqlalchemy as sa

    from autopack.db.engine import session_scope
    from autopack.db.models import DrainResult
    from autopack.execution.batch import DrainSummary
    from autopack.params import DrainParams
    from flows.drain import batch_drain

    os.environ["DATABASE_URL"] = url
    start = time.perf_counter()
    # the flow returns a State; called, Prefect hands back that state's data (the drain summary)
    params = DrainParams(run_ids=run_ids, batch_size=phases, workers=workers, max_attempts_per_phase=1,
                         provider_concurrency=gate)
    summary = cast(DrainSummary, batch_drain(params))
    total = time.perf_counter() - start
    assert summary.processed == phases, summary
    with session_scope(url) as db:
        stamps = sorted(db.scalars(sa.select(DrainResult.timestamp).where(DrainResult.session_id == summary.session_id)))
    return {"steady": (stamps[-1] - stamps[0]).total_seconds() / (phases - 1), "total": total}


class GateClock:
    """Time spent inside ``ProviderGate.acquire``/``release`` in this process (the flow's task threads)."""

    def __init__(self) -> None:
        import threading

        from autopack.execution.provider_gate import ProviderGate

        self.seconds = 0.0
        self.calls = 0
        self._lock = threading.Lock()
        for name in ("acquire", "release"):
            original = getattr(ProviderGate, name)

            def timed(gate: Any, *args: Any, _original: Callable[..., Any] = original, _name: str = name) -> Any:
                start = time.perf_counter()
                try:
                    return _original(gate, *args)
                finally:
                    with self._lock:
                        self.seconds += time.perf_counter() - start
                        self.calls += _name == "acquire"

            setattr(ProviderGate, name, timed)

    def take(self) -> tuple[float, int]:
        with self._lock:
            taken, self.seconds, self.calls = (self.seconds, self.calls), 0.0, 0
        return taken


def gate_cycle(url: str, calls: int) -> float:
    """Seconds per acquire + release of a free provider-gate slot (two write transactions), in this process."""
    from autopack.db.handle import database_at
    from autopack.execution.provider_gate import ProviderGate

    gate = ProviderGate(database_at(url), f"bench-{uuid.uuid4().hex[:6]}", 4)
    with gate.slot():  # creates the slot rows
        pass
    start = time.perf_counter()
    for _ in range(calls):
        with gate.slot():
            pass
    return (time.perf_counter() - start) / calls


def measure(
    kind: str, url: str, args: argparse.Namespace, clock: GateClock
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    n, gate = args.phases, args.gate
    tag = f"{kind[:2].lower()}{time.strftime('%H%M%S')}"
    os.environ["AUTOPACK_SIM_LATENCY_SECONDS"] = "0"
    flow_drain(url, make_runs(url, f"{tag}-warm", 3), 2, 3, gate)  # first flow run of a process pays imports
    base = baseline(url, make_runs(url, f"{tag}-base", n))
    cycle = gate_cycle(url, 10 * n)
    overhead: list[tuple[Any, ...]] = [(kind, "baseline: claim + execute_phase in-process", "-", "-", base, base),
                (kind, "provider gate alone: acquire + release a slot", "-", 4, cycle, cycle)]
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    clock.take()
    inside = [0.0, 0]
    for round_ in range(args.rounds):  # interleaved, alternating order, so load drift hits both settings alike
        for g in (0, gate) if round_ % 2 == 0 else (gate, 0):
            for front, run, workers in (("drain batch", cli_drain, 1), ("batch-drain flow", flow_drain, 2)):
                result = run(url, make_runs(url, f"{tag}-{front[:3]}-r{round_}-g{g}", n), workers, n, g)
                runs.setdefault((front, g), []).append(result)
                seconds, calls = clock.take()  # only the flow's tasks run in this process
                inside[0] += seconds
                inside[1] += calls
    for front, workers in (("drain batch", 1), ("batch-drain flow", 2)):
        medians = {g: {k: statistics.median(r[k] for r in runs[(front, g)]) for k in ("steady", "total")}
                   for g in (0, gate)}
        for g in (0, gate):
            overhead.append((kind, front, workers, g or "off", medians[g]["steady"], medians[g]["total"] / n))
        overhead.append((kind, f"{front}: gate cost (on − off)", workers, gate,
                         medians[gate]["steady"] - medians[0]["steady"], (medians[gate]["total"] - medians[0]["total"]) / n))
    per_call = inside[0] / max(1, inside[1])
    overhead.append((kind, f"batch-drain flow: time inside the gate per phase ({inside[1]} calls)", 2, gate,
                     per_call, per_call))

    os.environ["AUTOPACK_SIM_LATENCY_SECONDS"] = str(LATENCY)
    m = args.latency_phases
    scaling = []
    for front, run in (("drain batch", cli_drain), ("batch-drain flow", flow_drain)):
        one = run(url, make_runs(url, f"{tag}-{front[:3]}-lat-w1", m), 1, m, gate)
        four = run(url, make_runs(url, f"{tag}-{front[:3]}-lat-w4", m), 4, m, gate)
        scaling.append((kind, front, one["total"], four["total"], one["total"] / four["total"],
                        one["steady"] * 1000, four["steady"] * 1000, one["steady"] / four["steady"]))
    return overhead, scaling


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", type=int, default=30, help="phases per zero-latency configuration")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per gate setting")
    parser.add_argument("--latency-phases", type=int, default=48, help="phases per 0.5 s-latency configuration")
    parser.add_argument("--gate", type=int, default=4, help="provider gate size when on")
    parser.add_argument("--postgres", default=os.environ.get("AUTOPACK_TEST_POSTGRES_URL",
                                                             "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    args.phases = max(3, args.phases // 3 * 3)
    args.latency_phases = max(6, args.latency_phases // 3 * 3)

    work = Path(tempfile.mkdtemp(prefix="autopack-bench-"))
    os.chdir(work)
    os.environ.update({
        "AUTOPACK_LLM_PROVIDER": "simulated", "TELEMETRY_DB_ENABLED": "1", "AUTOPACK_WORKSPACE_DIR": str(work / "ws"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
    })
    from prefect.testing.utilities import prefect_test_harness

    overhead: list[tuple[Any, ...]] = []
    scaling: list[tuple[Any, ...]] = []
    load_before = os.getloadavg()[0]
    clock = GateClock()
    try:
        with prefect_test_harness(server_startup_timeout=180):
            for kind in ["SQLite"] + ([] if args.no_postgres else ["PostgreSQL"]):
                with migrated_database(kind, work, args.postgres) as url:
                    o, s = measure(kind, url, args, clock)
                overhead += o
                scaling += s
                print(f"  done {kind}", flush=True)
    finally:
        os.chdir(Path.home())
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmachine: {describe_machine()}; load average (1 min) {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print(f"provider: simulated; zero latency: {args.phases} phases a row; Prefect: a local test server "
          "(prefect_test_harness, its own SQLite)\n")
    print("| database | mode | workers | gate | steady ms per phase | whole call ms per phase |")
    print("|---|---|---:|---:|---:|---:|")
    for kind, mode, workers, gate, steady, whole in overhead:
        print(f"| {kind} | {mode} | {workers} | {gate} | {steady * 1000:.1f} | {whole * 1000:.1f} |")
    print(f"\nprovider latency {LATENCY} s, {args.latency_phases} phases a row, gate size {args.gate}\n")
    print("| database | front end | 1 worker total (s) | 4 workers total (s) | speedup | "
          "1 worker steady (ms/phase) | 4 workers steady (ms/phase) | steady speedup |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind, front, t1, t4, sp, s1, s4, ssp in scaling:
        print(f"| {kind} | {front} | {t1:.2f} | {t4:.2f} | {sp:.2f}× | {s1:.0f} | {s4:.0f} | {ssp:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
