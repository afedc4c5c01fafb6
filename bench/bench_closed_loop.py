#!/usr/bin/env python
"""The closed calibration loop over weeks, judged by the simulator's true law (``closed_loop``).

Each loop: a fresh SQLite database; every week the seed workload's 61 phases are drained with the estimator in
force (the real batch drain, the simulated provider), calibrated (``run_calibration``), and what the gate shipped is
merged into the estimator file the next week runs with (the pull request's libcst edit). The truth of each
week's estimator is computed from the simulator's law, not from the sample (see ``closed_loop``).

Matrix: laws (default; ``heavy``: implementation/medium with a t₂ tail; ``drift``: tests/medium's median +4 %/week;
``spread``: docs/low 1.5× the default spread) × starts (``shipped``: today's file; ``under``: every group given a
factor that truncates 50 %) × α (0.05, 0.10) × seeds; optionally exploration shares and values of one calibration
parameter (a window, the rise bound).

    .venv/bin/python bench/bench_closed_loop.py --quick             # default law, both starts, α 0.05, 2 seeds, 8 weeks
    .venv/bin/python bench/bench_closed_loop.py --jobs 2            # the full matrix: 80 loops of 12 weeks, 1-3 h
    .venv/bin/python bench/bench_closed_loop.py --laws spread --starts under --alphas 0.05 --seeds 5 --explore 0,0.1
    .venv/bin/python bench/bench_closed_loop.py --param window_weeks --values 4,8,none
    .venv/bin/python bench/bench_closed_loop.py --param max_rise_per_run --values 0.005,0.01
    .venv/bin/python bench/bench_closed_loop.py --json out.json      # keep every loop's numbers;  --from-json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe_machine  # noqa: E402

TARGET_CYCLE = 6  # every group with ≥ 5 phases a week settles within 6 weekly cycles
RESERVE_CYCLE = 8  # reserve ≤ 1.15× the oracle's by week 8
RESERVE_TARGET = 1.15
MIN_PHASES = 5
SHORT = {"implementation": "impl", "doc_sot_update": "docsot"}


@dataclass(frozen=True)
class Job:
    law: str
    start: str
    alpha: float
    seed: int
    weeks: int
    explore: float
    window: str  # "none" (the parameter's default) or the value passed as ``window_param``
    window_param: str | None

    @property
    def config_key(self) -> tuple[str, str, float, float, str]:
        return (self.law, self.start, self.alpha, self.explore, self.window)


def _window_value(text: str) -> Any:
    """The value as the parameter takes it: an int, a float, else the text (e.g. a method's name)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def run_job(job: Job) -> dict[str, Any]:
    """One loop, as plain data (it crosses a process boundary)."""
    from closed_loop import LAWS, LoopConfig, largest_raise, lowering_checks, run_loop, settled_cycle, shipped_labels

    kwargs = {} if job.window_param is None or job.window == "none" else {job.window_param: _window_value(job.window)}
    config = LoopConfig(weeks=job.weeks, alpha=job.alpha, seed=job.seed, start=job.start, laws=LAWS[job.law],
                        explore_share=job.explore, calibration_kwargs=kwargs)
    clock = time.perf_counter()
    result = run_loop(config)
    seconds = time.perf_counter() - clock
    groups = result.groups()
    raise_, raise_group, raise_cycle = largest_raise(result)
    return {
        "job": job.__dict__,
        "seconds": seconds,
        "groups": [list(g) for g in groups],
        "phases": {"/".join(g): result.phases_per_week(g) for g in groups},
        "settled": {"/".join(g): settled_cycle(result, g) for g in groups},
        "largest_raise": [raise_, "/".join(raise_group) if raise_group else None, raise_cycle],
        "lowerings": [{**check.__dict__, "group": "/".join(check.group)} for check in lowering_checks(result)],
        "cycles": [
            {
                "index": c.index,
                "overall": list(c.overall),
                "truth": {"/".join(g): [t.truncation, t.reserve_ratio] for g, t in c.truth.items()},
                "shipped": {"/".join(g): labels for g, labels in shipped_labels(c.shipped).items()},
                "gate": c.gate,
                "drain_seconds": c.drain_seconds,
                "calibrate_seconds": c.calibrate_seconds,
            }
            for c in result.cycles
        ],
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _label(group: str) -> str:
    cat, cx = group.split("/")
    return f"{SHORT.get(cat, cat)}/{cx}"


def _configs(runs: Sequence[dict[str, Any]]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        j = r["job"]
        value = j["window"] if j["window"] == "none" else f"{j['window_param'] or 'window'} {j['window']}"
        out.setdefault((j["law"], j["start"], j["alpha"], j["explore"], value), []).append(r)
    return out


def _title(key: tuple[Any, ...]) -> str:
    law, start, alpha, explore, window = key
    extra = (f", exploration {explore:g}" if explore else "") + (f", {window}" if window != "none" else "")
    return f"law {law}, start {start}, α = {alpha:g}{extra}"


def print_cycles(key: tuple[Any, ...], runs: list[dict[str, Any]]) -> None:
    """Per cycle: true truncation (mean over seeds; worst seed in brackets for the overall), reserve ÷ oracle."""
    groups = sorted({g for r in runs for g in r["phases"]}, key=lambda g: (-runs[0]["phases"].get(g, 0), g))
    print(f"\n### {_title(key)} ({len(runs)} seeds)\n")
    print("True truncation % by cycle (mean over seeds) and reserve ÷ the oracle's; cycle c = after c merged "
          "calibrations.\n")
    head = ["cycle", "overall % (worst)", "reserve ÷ oracle"] + [
        f"{_label(g)} ({runs[0]['phases'].get(g, 0)}/wk)" for g in groups] + ["changes shipped"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---:" for _ in head) + "|")
    n_cycles = min(len(r["cycles"]) for r in runs)
    for i in range(n_cycles):
        cyc = [r["cycles"][i] for r in runs]
        trunc = [c["overall"][0] for c in cyc]
        reserve = statistics.mean(c["overall"][1] for c in cyc)
        cells = [str(i), f"{_pct(statistics.mean(trunc))} ({_pct(max(trunc))})", f"{reserve:.2f}"]
        for g in groups:
            values = [c["truth"][g][0] for c in cyc if g in c["truth"]]
            cells.append(_pct(statistics.mean(values)) if values else "")
        shipped = statistics.mean(sum(len(v) for v in c["shipped"].values()) for c in cyc)
        cells.append(f"{shipped:.1f}" if i < n_cycles - 1 else "")
        print("| " + " | ".join(cells) + " |")
    print("\nReserve ÷ the oracle's by cycle (mean over seeds):\n")
    head = ["cycle", "overall"] + [_label(g) for g in groups]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---:" for _ in head) + "|")
    for i in range(n_cycles):
        cyc = [r["cycles"][i] for r in runs]
        cells = [str(i), f"{statistics.mean(c['overall'][1] for c in cyc):.2f}"]
        for g in groups:
            values = [c["truth"][g][1] for c in cyc if g in c["truth"]]
            cells.append(f"{statistics.mean(values):.2f}" if values else "")
        print("| " + " | ".join(cells) + " |")


def print_shipped(key: tuple[Any, ...], run: dict[str, Any]) -> None:
    """What each merge changed, for one seed."""
    print(f"\nWhat shipped, {_title(key)}, seed {run['job']['seed']} (F budget factor, OH phase overhead, "
          "W token weight; ∅ = new entry):\n")
    for c in run["cycles"][:-1]:
        items = [f"{_label(g) if not g.startswith('*') else g[2:]}: {', '.join(v)}"
                 for g, v in sorted(c["shipped"].items())]
        print(f"- after week {c['index'] + 1}: " + ("; ".join(items) if items else f"nothing ({c['gate']})"))


def judge(key: tuple[Any, ...], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets on one configuration, worst case over its seeds."""
    alpha = key[2]
    limit = alpha + 0.01
    big = [g for g, n in runs[0]["phases"].items() if n >= MIN_PHASES]
    settle = {g: [r["settled"].get(g) for r in runs] for g in big}
    late = {g: max((s if s is not None else 99) for s in v) for g, v in settle.items()}
    n_cycles = min(len(r["cycles"]) for r in runs)
    overall_after = [c["overall"][0] for r in runs for c in r["cycles"][TARGET_CYCLE:n_cycles]]
    reserve_at = [r["cycles"][RESERVE_CYCLE]["overall"][1] for r in runs if len(r["cycles"]) > RESERVE_CYCLE]
    reserve_from = [_reserve_from(r) for r in runs]
    raise_ = max(r["largest_raise"][0] for r in runs)
    worst_raise = max(runs, key=lambda r: r["largest_raise"][0])["largest_raise"]
    return {
        "settle_ok": all(v <= TARGET_CYCLE for v in late.values()),
        "late": late,
        "overall_ok": bool(overall_after) and max(overall_after) <= limit + 1e-12,
        "overall_worst": max(overall_after) if overall_after else None,
        "raise_ok": raise_ <= 0.01 + 1e-12,
        "raise": worst_raise,
        "reserve_ok": bool(reserve_at) and max(reserve_at) <= RESERVE_TARGET,
        "reserve": (statistics.mean(reserve_at), max(reserve_at)) if reserve_at else None,
        "reserve_from": None if None in reserve_from else max(c for c in reserve_from if c is not None),
    }


def _reserve_from(run: dict[str, Any]) -> int | None:
    """The first cycle from which the loop's reserve stays ≤ the target to its last cycle (None: not by then):
    when the reserve target is met, not only whether it is at cycle 8."""
    reserves = [c["overall"][1] for c in run["cycles"]]
    since = None
    for i, reserve in enumerate(reserves):
        if reserve > RESERVE_TARGET:
            since = None
        elif since is None:
            since = i
    return since


def print_targets(configs: dict[tuple[Any, ...], list[dict[str, Any]]]) -> None:
    print("\n### Targets (worst seed)\n")
    print(f"Groups with ≥ {MIN_PHASES} phases a week: the cycle from which each stays ≤ α + 1 pp (target ≤ "
          f"{TARGET_CYCLE}; '-' never); overall ≤ α + 1 pp from cycle {TARGET_CYCLE} on; the largest rise of a "
          f"group's true truncation caused by a merged change (same law before and after; target ≤ 1 pp); reserve "
          f"÷ oracle at cycle {RESERVE_CYCLE} (mean, worst; target ≤ {RESERVE_TARGET}) and the cycle from which it "
          f"stays ≤ {RESERVE_TARGET} in every seed ('-' not by the last cycle).\n")
    print("| configuration | seeds | settled by cycle (worst seed) | overall from cycle 6 (worst) | largest rise "
          f"by a change | reserve at cycle {RESERVE_CYCLE} | reserve ≤ {RESERVE_TARGET} from cycle | all met |")
    print("|---|---:|---|---:|---|---:|---:|:---:|")
    for key, runs in configs.items():
        v = judge(key, runs)
        settled = ", ".join(f"{_label(g)} {'-' if c == 99 else c}" for g, c in sorted(v["late"].items()))
        rise, g, cycle = v["raise"]
        rise_text = f"{_pct(rise)} pp" + (f" ({_label(g)}, cycle {cycle})" if g else "")
        reserve = "n/a" if v["reserve"] is None else f"{v['reserve'][0]:.2f}, {v['reserve'][1]:.2f}"
        overall = "n/a" if v["overall_worst"] is None else f"{_pct(v['overall_worst'])} %"
        reserve_from = "-" if v["reserve_from"] is None else str(v["reserve_from"])
        ok = all(v[k] for k in ("settle_ok", "overall_ok", "raise_ok", "reserve_ok"))
        marks = "".join("✓" if v[k] else "✗" for k in ("settle_ok", "overall_ok", "raise_ok", "reserve_ok"))
        print(f"| {_title(key)} | {len(runs)} | {settled} | {overall} | {rise_text} | {reserve} | {reserve_from} | "
              f"{'yes' if ok else 'no'} {marks} |")


def _bound_kind(bound: str) -> str:
    return bound.split(" ×")[0].split(" +")[0].split(" ")[0] if bound else "?"


def print_lowerings(runs: Sequence[dict[str, Any]]) -> None:
    """How honest the gate's estimate of a lowering's rise was: estimated against true, by what bounded the step
    and by the group's calls (the 1 pp rule is on the true rise; the gate bounds the estimated one)."""
    checks = [c for r in runs for c in r.get("lowerings", [])]
    if not checks:
        return
    print("\n### Merged lowerings: estimated against true rise of the group's truncation\n")
    print("The gate bounds the rise its own calls estimate; the target is on the true rise (same law before and "
          "after). Per bound and group size: lowerings, mean estimated and true rise, the largest true rise, and "
          "how many rose by more than 1 pp.\n")
    print("| bounded by | group's calls | lowerings | estimated rise, mean | true rise, mean | true rise, largest | "
          "> 1 pp |")
    print("|---|---|---:|---:|---:|---:|---:|")
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in checks:
        size = "< 30" if c["calls"] < 30 else "30–59" if c["calls"] < 60 else "≥ 60"
        cells.setdefault((_bound_kind(c["bound"]), size), []).append(c)
        cells.setdefault(("all", "all"), []).append(c)
    for (bound, size), rows in sorted(cells.items(), key=lambda kv: (kv[0][0] == "all", kv[0])):
        est = statistics.mean(r["estimated_rise"] for r in rows)
        true = [r["true_rise"] for r in rows]
        print(f"| {bound} | {size} | {len(rows)} | {_pct(est)} pp | {_pct(statistics.mean(true))} pp | "
              f"{_pct(max(true))} pp | {sum(t > 0.01 for t in true)} |")


def print_all(runs: Sequence[dict[str, Any]], *, shipped: bool, cycles: bool = True) -> None:
    configs = _configs(runs)
    for key, group_runs in configs.items() if cycles else ():
        print_cycles(key, group_runs)
        if shipped:
            print_shipped(key, min(group_runs, key=lambda r: r["job"]["seed"]))
    print_targets(configs)
    print_lowerings(runs)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def jobs_from(args: argparse.Namespace) -> list[Job]:
    windows = _split(args.windows) if args.window_param else ["none"]
    return [
        Job(law, start, alpha, seed, args.weeks, explore, window, args.window_param)
        for law in _split(args.laws)
        for start in _split(args.starts)
        for alpha in (float(a) for a in _split(args.alphas))
        for explore in (float(e) for e in _split(args.explore))
        for window in windows
        for seed in range(args.first_seed, args.first_seed + args.seeds)
    ]


def run_all(jobs: Iterable[Job], workers: int, save: Path | None = None) -> list[dict[str, Any]]:
    jobs = list(jobs)
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()

    def note(r: dict[str, Any]) -> None:
        j = r["job"]
        print(f"  [{len(runs)}/{len(jobs)}] {j['law']} {j['start']} α={j['alpha']} explore={j['explore']} "
              f"window={j['window']} seed={j['seed']}: {r['seconds']:.0f} s "
              f"(elapsed {time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)
        if save is not None:  # after every loop: an interrupted matrix keeps what it measured
            save.write_text(json.dumps(runs))

    if workers <= 1:
        for job in jobs:
            runs.append(run_job(job))
            note(runs[-1])
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for r in pool.map(run_job, jobs):
                runs.append(r)
                note(r)
    return runs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--laws", default="default,heavy,drift,spread")
    parser.add_argument("--starts", default="shipped,under")
    parser.add_argument("--alphas", default="0.05,0.10")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--weeks", type=int, default=12)
    parser.add_argument("--explore", default="0", help="exploration shares, e.g. 0,0.1")
    parser.add_argument("--param", "--window-param", dest="window_param", default=None,
                        help="a CalibrationParams field to vary (e.g. window_weeks, max_rise_per_run)")
    parser.add_argument("--values", "--windows", dest="windows", default="none",
                        help="its values with --param, e.g. 4,8,none or 0.005,0.01 (none: its default)")
    parser.add_argument("--quick", action="store_true", help="default law, both starts, α 0.05, 2 seeds, 8 weeks")
    parser.add_argument("--jobs", type=int, default=1, help="loops run in parallel processes")
    parser.add_argument("--shipped", action="store_true", help="list what each merge changed (first seed)")
    parser.add_argument("--json", type=Path, help="write every loop's numbers here")
    parser.add_argument("--from-json", type=Path, nargs="+", help="print the tables of saved runs instead of running")
    parser.add_argument("--only-targets", action="store_true", help="print only the targets table")
    args = parser.parse_args(argv)
    if args.quick:
        args.laws, args.starts, args.alphas, args.seeds, args.weeks = "default", "shipped,under", "0.05", 2, 8
    if args.from_json:
        runs = [run for path in args.from_json for run in json.loads(path.read_text())]
    else:
        jobs = jobs_from(args)
        print(f"{len(jobs)} loops of {args.weeks} weeks; {describe_machine()}", file=sys.stderr)
        runs = run_all(jobs, args.jobs, args.json)
    print_all(runs, shipped=args.shipped, cycles=not args.only_targets)
    total = sum(r["seconds"] for r in runs)
    print(f"\n{len(runs)} loops, {total / 60:.1f} min of loop time; {describe_machine()}")


if __name__ == "__main__":
    main()
