#!/usr/bin/env python
"""Scale benchmark: calibration of 10⁵ and 10⁶ stored events against the floor, SQLite and PostgreSQL.

The benchmark writes its own synthetic events (shaped like the recorder's rows, with ``features_json``,
their keys, truncations, escalated retries and their escalation events) into a fresh SQLite file and a
fresh PostgreSQL database (created and dropped here). Writing is not timed. Then, per backend and size:

* **in process**: one interpreter with everything imported runs, alternately, the *floor* and
  ``run_calibration`` (guard, read, re-estimate, fit, backtest, report, JSON, plot, ``calibration_runs``
  row) ``--repeat`` times; the best of each, their ratio, and the project's stages
  (``metadata.timings_seconds``) are printed;
* **as a command**: ``autopack calibrate --json`` and the floor as a script, each a fresh process
  (interpreter start and imports included), best wall time of ``--repeat`` and peak resident memory
  (``wait4``).

The floor is the least any calibration must do: a plain SELECT of the columns a per-group quantile needs
(category, complexity, predicted, actual, ceiling, success, truncated) through the driver, into numpy,
and the 0.95 quantile of actual/predicted per (category, complexity) over the successful or truncated
calls (a truncated call counted at its ceiling). Ratios are what to compare: the machine is shared.

    .venv/bin/python bench/bench_calibration_scale.py [--sizes 100000 1000000] [--specs 5000] [--repeat 3]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres] [--no-postgres]

``--specs`` is the number of distinct phase specs (distinct feature sets) the events are drawn from;
re-estimation costs one ``estimate()`` per distinct feature set.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from databases import migrated_database  # noqa: E402
from machine import describe_machine  # noqa: E402

from autopack import token_estimator as te  # noqa: E402
from autopack.db import keys  # noqa: E402
from autopack.db.engine import dispose_engines  # noqa: E402
from autopack.db.handle import open_database

ROOT = Path(__file__).resolve().parents[1]

GROUPS = [("implementation", "low"), ("implementation", "medium"), ("implementation", "high"), ("tests", "low"),
          ("tests", "medium"), ("docs", "low"), ("docs", "medium"), ("refactoring", "medium"),
          ("backend", "medium"), ("configuration", "low")]
KIND_FILES = {"backend": "src/mod_{i}.py", "test": "tests/test_mod_{i}.py", "doc": "docs/page_{i}.md",
              "config": "config/settings_{i}.yaml", "frontend": "web/view_{i}.tsx"}
TRUE_BASE = {"implementation": 400, "tests": 900, "docs": 1800, "refactoring": 1500, "backend": 1200,
             "configuration": 300}
TRUE_PER_KIND = {"backend": 1300, "test": 1600, "doc": 1200, "config": 400, "frontend": 2000}
COLUMNS = ("run_id", "phase_id", "attempt_index", "call_index", "timestamp", "created_at", "category", "complexity",
           "deliverable_count", "deliverables_json", "features_json", "predicted_output_tokens",
           "actual_output_tokens", "selected_budget", "actual_max_tokens", "actual_max_tokens_backfilled", "success",
           "truncated", "is_truncated_output", "stop_reason", "finish_reason", "schema_version", "source",
           "calibration_key", "phase_key")


class Spec(TypedDict):
    """One distinct phase: its estimate, ceiling, features_json and true median length."""

    category: str
    complexity: str
    deliverable_count: int
    deliverables_json: str
    features_json: str
    predicted: int
    selected: int
    ceiling: int
    median: float


def make_specs(n_specs: int, rng: np.random.Generator) -> list[Spec]:
    """Distinct phase specs with their estimate, ceiling, features_json and true median length."""
    kinds = list(KIND_FILES)
    specs: list[Spec] = []
    for s in range(n_specs):
        category, complexity = GROUPS[s % len(GROUPS)]
        n_deliv = int(rng.integers(1, 4))
        deliverables = tuple(
            KIND_FILES[kinds[int(rng.integers(0, len(kinds)))]].format(i=f"{s}_{d}") for d in range(n_deliv)
        )
        features = te.PhaseFeatures(category, complexity, deliverables, description=f"spec {s}")
        est, decision = te.plan_call(features)
        median = TRUE_BASE[category] * (1.6 if complexity == "high" else 1.0) + sum(
            TRUE_PER_KIND[te.deliverable_kind(te.deliverable_path(d), category)] for d in deliverables
        )
        specs.append({
            "category": est.category, "complexity": est.complexity, "deliverable_count": est.deliverable_count,
            "deliverables_json": json.dumps(list(deliverables)),
            "features_json": json.dumps(te.features_record(features, est), sort_keys=True),
            "predicted": est.predicted_output_tokens, "selected": decision.selected_budget,
            "ceiling": decision.actual_max_tokens, "median": median,
        })
    return specs


def make_rows(n_events: int, specs: list[Spec], rng: np.random.Generator) -> Iterator[tuple[object, ...]]:
    """Yield event tuples (column order ``COLUMNS``) until ``n_events`` are produced."""
    start = datetime(2025, 1, 1)
    produced = 0
    phase = 0
    runs = max(1, n_events // 500)
    while produced < n_events:
        spec = specs[int(rng.integers(0, len(specs)))]
        true_len = float(spec["median"]) * float(np.exp(0.35 * rng.standard_t(5)))
        ceiling = int(spec["ceiling"])
        run_id = f"bench-run-{phase % runs}"
        phase_id = f"phase-{phase}"
        phase_key = keys.phase_key(run_id, phase_id)
        for attempt in range(2):
            length = max(1, int(true_len * np.exp(0.05 * rng.standard_normal())))
            truncated = length >= ceiling
            actual = min(length, ceiling)
            ts = (start + timedelta(seconds=30 * produced)).strftime("%Y-%m-%d %H:%M:%S.%f")
            stop, finish = ("max_tokens", "length") if truncated else ("end_turn", "stop")
            calibration_key = keys.calibration_key(spec["features_json"], spec["category"], spec["complexity"],
                                                   spec["deliverable_count"], None, None, stop, finish, phase_id)
            yield (run_id, phase_id, attempt, 0, ts, ts, spec["category"], spec["complexity"],
                   spec["deliverable_count"], spec["deliverables_json"], spec["features_json"], spec["predicted"],
                   actual, spec["selected"], ceiling, False, not truncated, truncated, truncated,
                   stop, finish, 2, "bench", calibration_key, phase_key)
            produced += 1
            if not truncated or produced >= n_events:
                break
            ceiling = min(int(ceiling * 1.25), 64000)
        phase += 1


#: One escalation event per truncated first attempt that was retried, as the executor records it.
ESCALATIONS = """
INSERT INTO token_budget_escalation_events (run_id, phase_id, timestamp, attempt_index, reason, was_truncated,
    output_utilization, escalation_factor, base_value, base_source, retry_max_tokens, selected_budget,
    actual_max_tokens, tokens_used)
SELECT e.run_id, e.phase_id, e.timestamp, e.attempt_index, 'truncation', {true}, 1.0, 1.25, e.actual_max_tokens,
    'actual_max_tokens', r.actual_max_tokens, e.selected_budget, e.actual_max_tokens, e.actual_output_tokens
FROM token_estimation_v2_events e JOIN token_estimation_v2_events r
  ON r.run_id = e.run_id AND r.phase_id = e.phase_id AND r.attempt_index = e.attempt_index + 1
WHERE e.truncated
"""


def fill_sqlite(path: Path, n_events: int, specs: list[Spec], seed: int) -> None:
    con = sqlite3.connect(path)
    sql = f"INSERT INTO token_estimation_v2_events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    con.execute("PRAGMA synchronous=OFF")
    rows = make_rows(n_events, specs, np.random.default_rng(seed))
    while True:
        chunk = list(islice(rows, 50_000))
        if not chunk:
            break
        con.executemany(sql, chunk)
    con.execute(ESCALATIONS.format(true=1))
    con.commit()
    con.close()


def fill_postgres(url: str, n_events: int, specs: list[Spec], seed: int) -> None:
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as con, con.cursor() as cur:
        with cur.copy(f"COPY token_estimation_v2_events ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in make_rows(n_events, specs, np.random.default_rng(seed)):
                copy.write_row(row)
        cur.execute(ESCALATIONS.format(true="true"))
        con.commit()
        con.autocommit = True
        con.execute("VACUUM ANALYZE token_estimation_v2_events")  # what autovacuum does after a bulk load


FLOOR_SQL = ("SELECT category, complexity, predicted_output_tokens, actual_output_tokens, actual_max_tokens, "
             "success, truncated FROM token_estimation_v2_events")


def floor(url: str) -> dict[tuple[str, str], float]:
    """The physical floor: plain SELECT into numpy, then the 0.95 quantile of actual/predicted per group."""
    if url.startswith("sqlite"):
        import sqlite3 as driver

        connection = driver.connect(url.removeprefix("sqlite:///"))
    else:
        import psycopg as driver  # type: ignore[no-redef]

        connection = driver.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    rows = connection.execute(FLOOR_SQL).fetchall()
    connection.close()
    category, complexity, predicted, actual, ceiling, success, truncated = zip(*rows, strict=True) if rows else ([],) * 7
    table: dict[tuple[str, str], int] = {}
    group = np.fromiter((table.setdefault(key, len(table)) for key in zip(category, complexity, strict=True)), dtype=np.int64,
                        count=len(rows))
    cut = np.array(truncated, dtype=bool)
    y = np.array(actual, dtype=float)
    y[cut] = np.fmax(y[cut], np.array([c or 0 for c in ceiling], dtype=float)[cut])
    ratio = y / np.maximum(np.array(predicted, dtype=float), 1.0)
    keep = np.array(success, dtype=bool) | cut
    order = np.argsort(group[keep], kind="stable")
    ratios, groups = ratio[keep][order], group[keep][order]
    bounds = np.flatnonzero(np.diff(groups)) + 1
    names = list(table)
    return {names[int(part_groups[0])]: float(np.quantile(part, 0.95))
            for part, part_groups in zip(np.split(ratios, bounds), np.split(groups, bounds), strict=True) if part.size}


FLOOR_SCRIPT = "import sys; sys.path.insert(0, sys.argv[1]); from bench_calibration_scale import floor; floor(sys.argv[2])"


def in_process(url: str, out: Path, repeat: int) -> dict[str, object]:
    """Worker: floor and project alternately in one interpreter; best of each."""
    import matplotlib

    from autopack.calibration import run_calibration

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401 - imports are not the calibration's work (the command table has them)

    best_floor, best, stages = float("inf"), float("inf"), {}
    result = None
    for i in range(repeat):
        t0 = time.perf_counter()
        floor(url)
        best_floor = min(best_floor, time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = run_calibration(open_database(url), output_dir=out / f"run{i}")
        seconds = time.perf_counter() - t0
        if seconds < best:
            best, stages = seconds, dict(result.metadata.timings_seconds)
    assert result is not None, "repeat must be at least 1"
    md = result.metadata
    return {"floor": best_floor, "project": best, "stages": stages, "usable": md.total_samples,
            "censored": md.sample_counts.censored, "groups": len(result.groups),
            "gate": result.gate.passed}


def measure(url: str, out: Path, repeat: int) -> dict[str, object]:
    env = {**os.environ, "DATABASE_URL": url}
    dispose_engines()
    worker = [sys.executable, __file__, "--worker", url, str(out), "--repeat", str(repeat)]
    got: dict[str, object] = json.loads(subprocess.run(worker, env=env, cwd=ROOT, capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    commands = {
        "floor": [sys.executable, "-c", FLOOR_SCRIPT, str(Path(__file__).parent), url],
        "project": [sys.executable, "-c", "from autopack.cli import run; run()", "calibrate", "--json",
                    "--output-dir", str(out / "cli")],
    }
    for name, argv in commands.items():
        runs = [timed_process(argv, env) for _ in range(repeat)]
        got[f"{name}_cmd"] = min(r[0] for r in runs)
        got[f"{name}_rss"] = max(r[1] for r in runs)
    return got


def timed_process(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one process, from the kernel's accounting of that child."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed: {err[-3000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--specs", type=int, default=5000, help="distinct phase specs (feature sets)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best counts")
    parser.add_argument("--postgres", default=os.environ.get("AUTOPACK_TEST_POSTGRES_URL",
                                                             "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("URL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(in_process(args.worker[0], Path(args.worker[1]), args.repeat)))
        return

    print(f"machine: {describe_machine()}")
    specs = make_specs(args.specs, np.random.default_rng(1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            backends = ["sqlite"] + ([] if args.no_postgres else ["postgresql"])
            for backend in backends:
                with migrated_database(backend, Path(tmp), args.postgres) as url:
                    t0 = time.perf_counter()
                    (fill_sqlite if backend == "sqlite" else fill_postgres)(url_path(url), n, specs, seed=n)
                    fill = time.perf_counter() - t0
                    m = measure(url, Path(tmp) / f"out_{backend}_{n}", args.repeat)
                rows.append((backend, n, fill, m))
                print(f"  done {backend} {n:,}: floor {m['floor']:.2f} s, calibration {m['project']:.2f} s",
                      flush=True)
    print_tables(rows)


def url_path(url: str) -> Any:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite") else url


def print_tables(rows: list[tuple[str, int, float, dict[str, Any]]]) -> None:
    print()
    print("In process (imports done; best of the repeats; the floor measured alternately in the same process):")
    print()
    print("| backend | events | usable samples | censored | floor (s) | calibration (s) | ratio | guard | read | "
          "samples | imports | calibrate | plot | groups | gate |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for backend, n, _, m in rows:
        st = m["stages"]
        print(f"| {backend} | {n:,} | {m['usable']:,} | {m['censored']:,} | {m['floor']:.2f} | {m['project']:.2f} | "
              f"{m['project'] / m['floor']:.2f} | {st.get('guard', 0):.2f} | {st.get('read', 0):.2f} | "
              f"{st.get('samples', 0):.2f} | {st.get('imports', 0):.2f} | {st.get('calibrate', 0):.2f} | "
              f"{st.get('plot', 0):.2f} | {m['groups']} | "
              f"{'passed' if m['gate'] else 'not passed'} |")
    print()
    print("As commands (fresh process each: interpreter start and imports included; best wall time):")
    print()
    print("| backend | events | floor script (s) | floor peak RSS (MiB) | `autopack calibrate` (s) | "
          "peak RSS (MiB) | ratio | write (s, untimed) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for backend, n, fill, m in rows:
        print(f"| {backend} | {n:,} | {m['floor_cmd']:.2f} | {m['floor_rss']:.0f} | {m['project_cmd']:.2f} | "
              f"{m['project_rss']:.0f} | {m['project_cmd'] / m['floor_cmd']:.2f} | {fill:.1f} |")


if __name__ == "__main__":
    main()
