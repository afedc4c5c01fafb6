"""The original's log analyser (``scripts/analyze_token_telemetry_v3.py``), tiers and metrics as it had them.

Reads ``[TokenEstimationV2] …`` lines (and legacy ``[TokenEstimation] Predicted: … Actual: … Error: …%``
lines) from log files under ``--log-dir`` (recursive ``--pattern``), and writes a markdown report:

- Tier 1 (risk): underestimation rate (actual > predicted × ``--under-multiplier``), truncation rate
  and success rate (V2 only); verdict "TUNING NEEDED" if underestimation > 5 % or truncation > 2 %.
- Tier 2 (cost): waste = predicted / actual — median, P90 (``statistics.quantiles(n=10)[8]`` when n ≥ 10,
  else the maximum) and mean; act on cost only if P90 > 3×.
- Diagnostic: SMAPE (the logged value) on non-truncated records only (truncated outputs are lower
  bounds); predicted/actual mean and median; truncated records: count, predicted mean, mean of the
  lower-bound actuals, share underestimated.
- ``--stratify`` (V2 only): Tier-1 metrics by category, complexity and deliverable bucket 1 / 2–5 / 6+.

Categories and complexities are normalised (``autopack.taxonomy``) before stratifying, so "testing" and
"tests" are one stratum (the original kept them apart, reference §10.10).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopack.errors import AutopackError, InputError
from autopack.taxonomy import canonical_category, canonical_complexity

UNDER_LIMIT_PCT = 5.0
TRUNCATION_LIMIT_PCT = 2.0
P90_COST_LIMIT = 3.0

_V2 = re.compile(r"\[TokenEstimationV2\](?P<body>.*)$")
_KV = re.compile(r"(\w+)=(\S+)")
_V1 = re.compile(
    r"\[TokenEstimation\][^\n]*?Predicted:\s*(?P<p>[\d,]+)[^\n]*?Actual:\s*(?P<a>[\d,]+)"
    r"(?:[^\n]*?Error:\s*(?P<e>-?[\d.]+)\s*%)?"
)


@dataclass(frozen=True)
class Record:
    source: str
    version: str  # "v2" | "v1"
    predicted: int
    actual: int
    smape: float | None
    category: str | None = None
    complexity: str | None = None
    deliverables: int | None = None
    success: bool | None = None
    truncated: bool | None = None
    stop_reason: str | None = None
    model: str | None = None
    selected_budget: int | None = None


def _bool(text: str | None) -> bool | None:
    if text is None:
        return None
    return text.strip().lower() in {"true", "1", "yes"}


def parse_line(line: str, source: str) -> Record | None:
    """One record from a log line, or None when the line is not telemetry (or is malformed)."""
    m = _V2.search(line)
    if m:
        kv = dict(_KV.findall(m.group("body")))
        try:
            return Record(
                source=source,
                version="v2",
                predicted=int(kv["predicted_output"]),
                actual=int(kv["actual_output"]),
                smape=float(kv["smape"].rstrip("%")) if "smape" in kv else None,
                category=canonical_category(kv.get("category")),
                complexity=canonical_complexity(kv.get("complexity")),
                deliverables=int(kv["deliverables"]) if "deliverables" in kv else None,
                success=_bool(kv.get("success")),
                truncated=_bool(kv.get("truncated")),
                stop_reason=kv.get("stop_reason"),
                model=kv.get("model"),
                selected_budget=int(kv["selected_budget"]) if "selected_budget" in kv else None,
            )
        except (KeyError, ValueError):
            return None
    m = _V1.search(line)
    if m:
        return Record(
            source=source,
            version="v1",
            predicted=int(m.group("p").replace(",", "")),
            actual=int(m.group("a").replace(",", "")),
            smape=float(m.group("e")) if m.group("e") else None,
        )
    return None


def check_pattern(pattern: str) -> str:
    """``pattern`` if it is a glob of files under ``--log-dir``; else ``InputError`` saying what is wrong.

    An unclosed ``[`` would silently match only files named with a literal ``[`` (and so nothing);
    an absolute pattern or a ``..`` part would reach outside ``--log-dir``.
    """
    if not pattern.strip():
        raise InputError("--pattern is empty", hint="give a file name pattern such as '*.log'")
    if "\x00" in pattern:
        raise InputError("--pattern holds a NUL byte")
    if pattern.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", pattern):
        raise InputError(f"--pattern '{pattern}' reaches outside --log-dir",
                         hint="give a pattern relative to --log-dir, such as '*.log' or 'run-*/*.log'")
    i = 0
    while i < len(pattern):  # the bracket rule of fnmatch: '[', an optional '!', then at least one character
        if pattern[i] == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            j = pattern.find("]", j)
            if j < 0:
                raise InputError(f"--pattern '{pattern}' has a '[' that is never closed",
                                 hint="close the set, e.g. '[0-9]', or write a literal '[' as '[[]'")
            i = j
        i += 1
    return pattern


def collect(log_dir: Path, pattern: str = "*.log", success_only: bool = False) -> tuple[list[Record], dict[str, int]]:
    """Records from every file matching ``pattern`` under ``log_dir`` (recursive), and counts per file."""
    check_pattern(pattern)
    if not log_dir.is_dir():
        raise InputError(f"--log-dir {log_dir} is not a directory")
    records: list[Record] = []
    sources: dict[str, int] = {}
    for path in sorted(p for p in log_dir.rglob(pattern) if p.is_file()):
        found = []
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                record = parse_line(line, str(path))
                if record is None:
                    continue
                if success_only and not (record.version == "v2" and record.success):
                    continue
                found.append(record)
        if found:
            sources[str(path)] = len(found)
            records += found
    return records, sources


class NoRecordsError(AutopackError):
    """The logs hold no token-estimation line to analyse (exit 1, as a calibration with no usable samples)."""

    exit_code = 1


def _pct(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def tier1(records: Sequence[Record], under_multiplier: float) -> dict[str, Any]:
    n = len(records)
    v2 = [r for r in records if r.version == "v2"]
    under = sum(1 for r in records if r.actual > r.predicted * under_multiplier)
    truncated = sum(1 for r in v2 if r.truncated)
    success = sum(1 for r in v2 if r.success)
    under_pct, trunc_pct = _pct(under, n), _pct(truncated, len(v2))
    needs = (under_pct or 0.0) > UNDER_LIMIT_PCT or (trunc_pct or 0.0) > TRUNCATION_LIMIT_PCT
    return {
        "n": n,
        "v2_n": len(v2),
        "underestimated": under,
        "underestimation_rate_pct": under_pct,
        "truncated": truncated,
        "truncation_rate_pct": trunc_pct,
        "success": success,
        "success_rate_pct": _pct(success, len(v2)),
        "verdict": "TUNING NEEDED" if needs else "WITHIN TARGETS",
    }


def p90(values: Sequence[float]) -> float:
    """statistics.quantiles(n=10)[8] when n ≥ 10, else the maximum (as the original)."""
    return statistics.quantiles(values, n=10)[8] if len(values) >= 10 else max(values)


def tier2(records: Sequence[Record]) -> dict[str, Any]:
    waste = [r.predicted / r.actual for r in records if r.actual > 0]
    if not waste:
        return {"n": 0, "median": None, "p90": None, "mean": None, "act_on_cost": False}
    value = p90(waste)
    return {"n": len(waste), "median": statistics.median(waste), "p90": value, "mean": statistics.fmean(waste),
            "act_on_cost": value > P90_COST_LIMIT}


def diagnostics(records: Sequence[Record]) -> dict[str, Any]:
    clean = [r.smape for r in records if not r.truncated and r.smape is not None]
    truncated = [r for r in records if r.truncated]
    out: dict[str, Any] = {
        "smape_n": len(clean),
        "smape_mean": statistics.fmean(clean) if clean else None,
        "smape_median": statistics.median(clean) if clean else None,
        "smape_min": min(clean) if clean else None,
        "smape_max": max(clean) if clean else None,
        "predicted_mean": statistics.fmean(r.predicted for r in records) if records else None,
        "predicted_median": statistics.median(r.predicted for r in records) if records else None,
        "actual_mean": statistics.fmean(r.actual for r in records) if records else None,
        "actual_median": statistics.median(r.actual for r in records) if records else None,
        "truncated_n": len(truncated),
        "truncated_predicted_mean": statistics.fmean(r.predicted for r in truncated) if truncated else None,
        "truncated_actual_min_mean": statistics.fmean(r.actual for r in truncated) if truncated else None,
        "truncated_underestimated_pct": _pct(sum(1 for r in truncated if r.actual > r.predicted), len(truncated)),
    }
    return out


def deliverable_bucket(count: int | None) -> str:
    if count is None or count <= 1:
        return "1"
    return "2-5" if count <= 5 else "6+"


def stratify(records: Sequence[Record], under_multiplier: float) -> dict[str, dict[str, dict[str, Any]]]:
    v2 = [r for r in records if r.version == "v2"]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    keys: tuple[tuple[str, Callable[[Record], str]], ...] = (
        ("category", lambda r: r.category or "unknown"),
        ("complexity", lambda r: r.complexity or "unknown"),
        ("deliverables", lambda r: deliverable_bucket(r.deliverables)),
    )
    for name, key in keys:
        strata: dict[str, list[Record]] = {}
        for r in v2:
            strata.setdefault(key(r), []).append(r)
        order = ("1", "2-5", "6+") if name == "deliverables" else sorted(strata)
        out[name] = {s: tier1(strata[s], under_multiplier) for s in order if s in strata}
    return out


def analyze(records: Sequence[Record], *, under_multiplier: float = 1.0, with_strata: bool = False) -> dict[str, Any]:
    result = {
        "records": len(records),
        "v2_records": sum(1 for r in records if r.version == "v2"),
        "v1_records": sum(1 for r in records if r.version == "v1"),
        "under_multiplier": under_multiplier,
        "tier1": tier1(records, under_multiplier),
        "tier2": tier2(records),
        "diagnostics": diagnostics(records),
    }
    if with_strata:
        result["strata"] = stratify(records, under_multiplier)
    return result


def _f(value: Any, fmt: str = "{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def render(result: dict[str, Any], sources: dict[str, int], *, success_only: bool) -> str:
    t1, t2, d = result["tier1"], result["tier2"], result["diagnostics"]
    lines = [
        "# Token Estimation Telemetry Analysis (V3)",
        "",
        f"- Records: {result['records']} ({result['v2_records']} V2, {result['v1_records']} V1)"
        + (" — success-only (V2 success=True)" if success_only else ""),
        f"- Underestimation threshold: actual > predicted × {result['under_multiplier']}",
        "",
        "## Data sources",
        "",
    ]
    lines += [f"- `{path}`: {count} records" for path, count in sources.items()] or ["- (none)"]
    lines += [
        "",
        "## Tier 1: Risk",
        "",
        f"- Underestimation rate: {_f(t1['underestimation_rate_pct'])}% ({t1['underestimated']}/{t1['n']}) "
        f"— target ≤ {UNDER_LIMIT_PCT:.0f}%",
        f"- Truncation rate (V2): {_f(t1['truncation_rate_pct'])}% ({t1['truncated']}/{t1['v2_n']}) "
        f"— target ≤ {TRUNCATION_LIMIT_PCT:.0f}%",
        f"- Success rate (V2): {_f(t1['success_rate_pct'])}% ({t1['success']}/{t1['v2_n']})",
        f"- **Verdict: {t1['verdict']}**",
        "",
        "## Tier 2: Cost (waste = predicted / actual)",
        "",
        f"- Median waste: {_f(t2['median'], '{:.2f}')}×",
        f"- P90 waste: {_f(t2['p90'], '{:.2f}')}×",
        f"- Mean waste: {_f(t2['mean'], '{:.2f}')}×",
        "- " + ("P90 > 3×: cost tuning is worthwhile." if t2["act_on_cost"]
                else "P90 ≤ 3×: act on risk first; cost is not a priority."),
        "",
        "## Diagnostics",
        "",
        f"- SMAPE (non-truncated, n={d['smape_n']}): mean {_f(d['smape_mean'])}%, median {_f(d['smape_median'])}%, "
        f"min {_f(d['smape_min'])}%, max {_f(d['smape_max'])}%",
        f"- Predicted: mean {_f(d['predicted_mean'], '{:.0f}')}, median {_f(d['predicted_median'], '{:.0f}')}",
        f"- Actual: mean {_f(d['actual_mean'], '{:.0f}')}, median {_f(d['actual_median'], '{:.0f}')}",
        f"- Truncated records: {d['truncated_n']}; predicted mean {_f(d['truncated_predicted_mean'], '{:.0f}')}, "
        f"actual_min mean (lower bound) {_f(d['truncated_actual_min_mean'], '{:.0f}')}, underestimated "
        f"{_f(d['truncated_underestimated_pct'])}%",
        "",
    ]
    if "strata" in result:
        lines += ["## Stratification (V2)", ""]
        for name, strata in result["strata"].items():
            lines += [f"### By {name}", "", f"| {name} | n | underestimation % | truncation % | success % | verdict |",
                      "|---|---:|---:|---:|---:|---|"]
            for key, t in strata.items():
                lines.append(f"| {key} | {t['n']} | {_f(t['underestimation_rate_pct'])} | "
                             f"{_f(t['truncation_rate_pct'])} | {_f(t['success_rate_pct'])} | {t['verdict']} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def run(
    log_dir: Path, *, pattern: str = "*.log", success_only: bool = False, with_strata: bool = False,
    under_multiplier: float = 1.0, output: Path | None = None,
) -> tuple[str, dict[str, Any]]:
    """Collect, analyse, render; write to ``output`` if given. Returns (markdown, result)."""
    if not math.isfinite(under_multiplier) or under_multiplier <= 0:
        raise InputError(f"--under-multiplier {under_multiplier:g} is not a finite number above 0",
                         hint="e.g. 1.0 counts actual > predicted, 1.1 counts actual > 1.1 × predicted")
    records, sources = collect(log_dir, pattern, success_only)
    if not records:  # a verdict on nothing would read "WITHIN TARGETS"
        files = sum(1 for p in log_dir.rglob(pattern) if p.is_file())
        kept = "successful V2 " if success_only else ""
        raise NoRecordsError(
            f"no {kept}token-estimation lines in the {files} file(s) matching '{pattern}' under {log_dir}: "
            "nothing to analyse, no report written",
            hint="point --log-dir at the agent's run logs (default .autonomous_runs) or widen --pattern"
                 + (", or drop --success-only" if success_only else ""))
    result = analyze(records, under_multiplier=under_multiplier, with_strata=with_strata)
    text = render(result, sources, success_only=success_only)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    return text, result


def records_of(lines: Iterable[str], source: str = "-") -> list[Record]:
    return [r for r in (parse_line(line, source) for line in lines) if r is not None]
