#!/usr/bin/env python
"""Scale benchmark: ``run_calibration`` end to end on 10⁵ and 10⁶ stored events, SQLite and PostgreSQL.

The benchmark writes its own synthetic events (shaped like the recorder's rows, with ``features_json``,
truncations and escalated retries) into a fresh SQLite file and a fresh PostgreSQL database (created and
dropped here), then times ``run_calibration`` (guard, read, re-estimate, fit, backtest, report, JSON,
plot, ``calibration_runs`` row) in a fresh interpreter, with its peak resident memory (ru_maxrss) and the
time the DB identity guard alone takes (measured again after the run).

    .venv/bin/python bench/bench_calibration_scale.py [--sizes 100000 1000000] [--specs 5000]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres] [--no-postgres]

Writing the data is not timed. ``--specs`` is the number of distinct phase specs (distinct feature
sets) the events are drawn from; re-estimation costs one ``estimate()`` per distinct feature set.
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
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe_machine  # noqa: E402

from autopack import token_estimator as te  # noqa: E402
from autopack.db.engine import dispose_engines  # noqa: E402
from autopack.db.migrate import upgrade_database  # noqa: E402

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
           "truncated", "is_truncated_output", "stop_reason", "finish_reason", "schema_version", "source")


def make_specs(n_specs: int, rng: np.random.Generator) -> list[dict[str, object]]:
    """Distinct phase specs with their estimate, ceiling, features_json and true median length."""
    kinds = list(KIND_FILES)
    specs = []
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


def make_rows(n_events: int, specs: list[dict[str, object]], rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Yield event tuples (column order ``COLUMNS``) until ``n_events`` are produced."""
    start = datetime(2025, 1, 1)
    produced = 0
    phase = 0
    runs = max(1, n_events // 500)
    while produced < n_events:
        spec = specs[int(rng.integers(0, len(specs)))]
        true_len = float(spec["median"]) * float(np.exp(0.35 * rng.standard_t(5)))  # type: ignore[arg-type]
        ceiling = int(spec["ceiling"])  # type: ignore[arg-type]
        run_id = f"bench-run-{phase % runs}"
        for attempt in range(2):
            length = max(1, int(true_len * np.exp(0.05 * rng.standard_normal())))
            truncated = length >= ceiling
            actual = min(length, ceiling)
            ts = (start + timedelta(seconds=30 * produced)).strftime("%Y-%m-%d %H:%M:%S.%f")
            yield (run_id, f"phase-{phase}", attempt, 0, ts, ts, spec["category"], spec["complexity"],
                   spec["deliverable_count"], spec["deliverables_json"], spec["features_json"], spec["predicted"],
                   actual, spec["selected"], ceiling, False, not truncated, truncated, truncated,
                   "max_tokens" if truncated else "end_turn", "length" if truncated else "stop", 2, "bench")
            produced += 1
            if not truncated or produced >= n_events:
                break
            ceiling = min(int(ceiling * 1.25), 64000)
        phase += 1


def fill_sqlite(path: Path, n_events: int, specs: list[dict[str, object]], seed: int) -> None:
    con = sqlite3.connect(path)
    sql = f"INSERT INTO token_estimation_v2_events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    con.execute("PRAGMA synchronous=OFF")
    rows = make_rows(n_events, specs, np.random.default_rng(seed))
    while True:
        chunk = [r for _, r in zip(range(50_000), rows)]
        if not chunk:
            break
        con.executemany(sql, chunk)
    con.commit()
    con.close()


def fill_postgres(url: str, n_events: int, specs: list[dict[str, object]], seed: int) -> None:
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as con, con.cursor() as cur:
        with cur.copy(f"COPY token_estimation_v2_events ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in make_rows(n_events, specs, np.random.default_rng(seed)):
                copy.write_row(row)
        con.commit()


def timed(url: str, out: Path) -> dict[str, object]:
    """Run the calibration in a fresh interpreter: wall seconds, peak RSS, and the guard's share."""
    code = (
        "import json, resource, sys, time\n"
        "from pathlib import Path\n"
        "from autopack.calibration import run_calibration\n"
        "from autopack.db.identity import guard\n"
        "import autopack.calibration.runner, matplotlib.pyplot\n"  # imports are not the calibration's work
        "t0 = time.perf_counter()\n"
        "result = run_calibration(sys.argv[1], output_dir=Path(sys.argv[2]))\n"
        "seconds = time.perf_counter() - t0\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "t1 = time.perf_counter(); guard(sys.argv[1]); guard_s = time.perf_counter() - t1\n"
        "md = result['metadata']\n"
        "print(json.dumps({'seconds': seconds, 'peak_mib': peak, 'guard_s': guard_s,\n"
        "                  'usable': md['total_samples'], 'censored': md['sample_counts']['censored'],\n"
        "                  'groups': len(result['groups']), 'gate': result['gate']['passed']}))\n"
    )
    dispose_engines()
    proc = subprocess.run([sys.executable, "-c", code, url, str(out)], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--specs", type=int, default=5000, help="distinct phase specs (feature sets)")
    parser.add_argument("--postgres", default=os.environ.get("AUTOPACK_TEST_POSTGRES_URL",
                                                             "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    print(f"machine: {describe_machine()}")
    specs = make_specs(args.specs, np.random.default_rng(1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            backends = ["sqlite"] + ([] if args.no_postgres else ["postgresql"])
            for backend in backends:
                if backend == "sqlite":
                    db = Path(tmp) / f"bench_{n}.db"
                    url = f"sqlite:///{db}"
                    upgrade_database(url)
                    t0 = time.perf_counter()
                    fill_sqlite(db, n, specs, seed=n)
                    fill = time.perf_counter() - t0
                    cleanup = None
                else:
                    import sqlalchemy as sa

                    name = f"autopack_bench_{uuid.uuid4().hex[:10]}"
                    admin = sa.create_engine(sa.engine.make_url(args.postgres).set(drivername="postgresql+psycopg"),
                                             isolation_level="AUTOCOMMIT")
                    with admin.connect() as c:
                        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
                    url = str(sa.engine.make_url(args.postgres).set(drivername="postgresql+psycopg", database=name)
                              .render_as_string(hide_password=False))
                    upgrade_database(url)
                    t0 = time.perf_counter()
                    fill_postgres(url, n, specs, seed=n)
                    fill = time.perf_counter() - t0

                    def cleanup(name: str = name, admin: sa.Engine = admin) -> None:
                        dispose_engines()
                        with admin.connect() as c:
                            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                        admin.dispose()
                try:
                    m = timed(url, Path(tmp) / f"out_{backend}_{n}")
                finally:
                    if cleanup:
                        cleanup()
                    elif db.exists():
                        db.unlink()
                rows.append((backend, n, m["usable"], m["censored"], args.specs, fill, m["seconds"], m["guard_s"],
                             m["peak_mib"], m["groups"], m["gate"]))
                print(f"  done {backend} {n:,}: {m['seconds']:.2f} s", flush=True)
    print()
    print("| backend | events | usable samples | censored | distinct feature sets | write (s, untimed) | "
          "calibrate end to end (s) | of which DB guard (s) | peak RSS (MiB) | groups | gate |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for backend, n, usable, cens, nspecs, fill, seconds, guard_s, peak, groups, gate in rows:
        print(f"| {backend} | {n:,} | {usable:,} | {cens:,} | {nspecs:,} | {fill:.1f} | {seconds:.2f} | {guard_s:.2f} | "
              f"{peak:.0f} | {groups} | {'passed' if gate else 'not passed'} |")


if __name__ == "__main__":
    main()
