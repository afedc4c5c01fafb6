#!/usr/bin/env python
"""Import benchmark: ``autopack telemetry import`` of a 10⁶-row CSV, wall time and peak memory, SQLite and PostgreSQL.

Each import runs as its own process (the real command, ``autopack telemetry import FILE``) into a fresh
migrated database; its peak resident memory comes from the kernel (``wait4``). The floor beside it, in
its own process too: the same file read with ``csv.reader`` and inserted unvalidated with the driver's
``executemany`` in one transaction (what the import costs without parsing, checks, keys and streaming).

    .venv/bin/python bench/bench_import.py [--rows 1000000] [--postgres URL] [--no-postgres]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from databases import migrated_database  # noqa: E402
from machine import describe_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADER = ("timestamp,run_id,phase_id,category,complexity,predicted_output_tokens,actual_output_tokens,"
          "selected_budget,actual_max_tokens,finish_reason,model")
CATEGORIES = ("implementation", "tests", "docs", "refactoring", "backend")
COMPLEXITIES = ("low", "medium", "high")

FLOOR = r"""
import csv, sys, sqlite3
path, url = sys.argv[1], sys.argv[2]
columns = ("timestamp run_id phase_id category complexity predicted_output_tokens actual_output_tokens "
           "selected_budget actual_max_tokens finish_reason model").split()
extra = ("attempt_index", "call_index", "created_at", "deliverable_count", "deliverables_json", "truncated",
         "is_truncated_output", "success", "actual_max_tokens_backfilled", "schema_version", "source")
names = ", ".join(columns + list(extra))
if url.startswith("sqlite"):
    con = sqlite3.connect(url.removeprefix("sqlite:///"))
    sql = f"INSERT INTO token_estimation_v2_events ({names}) VALUES ({', '.join('?' * (len(columns) + len(extra)))})"
else:
    import psycopg
    con = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    sql = f"INSERT INTO token_estimation_v2_events ({names}) VALUES ({', '.join(['%s'] * (len(columns) + len(extra)))})"
with open(path, newline="") as handle:
    reader = csv.reader(handle)
    next(reader)
    cur = con.cursor()
    batch = []
    for row in reader:
        batch.append((*row, 0, 0, row[0], 0, "[]", False, False, True, False, 2, "floor"))
        if len(batch) == 5000:
            cur.executemany(sql, batch)
            batch.clear()
    if batch:
        cur.executemany(sql, batch)
con.commit()
"""


def write_csv(path: Path, rows: int) -> None:
    with path.open("w") as out:
        out.write(HEADER + "\n")
        for i in range(rows):
            predicted = 500 + (i * 37) % 4000
            ceiling = 8192
            actual = min(ceiling, 300 + (i * 7919) % 9000)
            finish = "length" if actual >= ceiling else "stop"
            out.write(f"2025-01-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:{(i // 60) % 60:02d},bench-{i // 1000},"
                      f"p-{i},{CATEGORIES[i % 5]},{COMPLEXITIES[i % 3]},{predicted},{actual},{ceiling},{ceiling},"
                      f"{finish},model-{i % 4}\n")


def measured(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    out, err = proc.communicate()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[:3]} failed: {err.decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--postgres", default=os.environ.get("AUTOPACK_TEST_POSTGRES_URL",
                                                             "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    table = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        csv_path = tmp / "calls.csv"
        write_csv(csv_path, args.rows)
        size_mb = csv_path.stat().st_size / 2**20
        for backend in ["sqlite"] + ([] if args.no_postgres else ["postgresql"]):
            results = {}
            for kind in ("floor", "autopack"):
                with migrated_database(backend, tmp, args.postgres) as url:
                    env = {**os.environ, "DATABASE_URL": url}
                    argv = ([sys.executable, "-c", FLOOR, str(csv_path), url] if kind == "floor"
                            else [sys.executable, "-c", "from autopack.cli import run; run()", "telemetry",
                                  "import", str(csv_path)])
                    results[kind] = measured(argv, env)
                print(f"  done {backend} {kind}: {results[kind][0]:.1f} s", flush=True)
            table.append((backend, results))
    print()
    print(f"CSV: {args.rows:,} rows, {size_mb:.0f} MiB")
    print()
    print("| backend | floor: csv.reader + executemany (s) | floor peak RSS (MiB) | `autopack telemetry import` (s) "
          "| import peak RSS (MiB) | ratio to floor |")
    print("|---|---:|---:|---:|---:|---:|")
    for backend, r in table:
        (fs, fm), (s, m) = r["floor"], r["autopack"]
        print(f"| {backend} | {fs:.1f} | {fm:.0f} | {s:.1f} | {m:.0f} | {s / fs:.2f} |")


if __name__ == "__main__":
    main()
