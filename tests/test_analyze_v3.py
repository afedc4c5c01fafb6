"""``autopack analyze v3``: the original's log analyser on the original's real log lines (read-only).

Expected numbers are computed here from the files with their own small parser, not with the module's.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from autopack.cli import main
from autopack.legacy.analyze_v3 import NoRecordsError, run

DATA = Path(__file__).resolve().parents[1] / "data"
PATTERN = "autopack_*_tokenestimationv2.log"
REPO = Path(__file__).resolve().parents[1]


def v2_lines() -> list[str]:
    lines: list[str] = []
    for path in sorted(DATA.glob(PATTERN)):
        lines += [line for line in path.read_text().splitlines() if "[TokenEstimationV2]" in line]
    return lines


def field(line: str, name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", line)
    assert match, (name, line)
    return match.group(1)


@pytest.fixture(scope="module")
def expected() -> dict[str, object]:
    lines = v2_lines()
    pred = [int(field(x, "predicted_output")) for x in lines]
    act = [int(field(x, "actual_output")) for x in lines]
    truncated = [field(x, "truncated") == "True" for x in lines]
    success = [field(x, "success") == "True" for x in lines]
    waste = sorted(p / a for p, a in zip(pred, act, strict=True))
    smape_clean = [float(field(x, "smape").rstrip("%")) for x, t in zip(lines, truncated, strict=True) if not t]
    return {
        "n": len(lines),
        "truncated": sum(truncated),
        "success": sum(success),
        "under": sum(a > p for p, a in zip(pred, act, strict=True)),
        "under_1_1": sum(a > p * 1.1 for p, a in zip(pred, act, strict=True)),
        "waste_median": statistics.median(waste),
        "waste_p90": statistics.quantiles(waste, n=10)[8],
        "smape_clean_mean": statistics.fmean(smape_clean),
        "smape_clean_n": len(smape_clean),
        "truncated_actual": [a for a, t in zip(act, truncated, strict=True) if t],
    }


def test_tier1_risk_on_the_shared_logs(expected: dict[str, object]) -> None:
    _, result = run(DATA, pattern=PATTERN)
    t1 = result["tier1"]
    n = expected["n"]
    assert t1["n"] == n == 39  # 25 v5 lines + 14 BUILD-132 lines
    assert t1["truncated"] == expected["truncated"] == 1
    assert t1["success"] == expected["success"]
    assert t1["underestimated"] == expected["under"]
    assert t1["underestimation_rate_pct"] == pytest.approx(100 * expected["under"] / n)  # type: ignore[operator]
    assert t1["truncation_rate_pct"] == pytest.approx(100 / 39)
    assert t1["verdict"] == "TUNING NEEDED"  # underestimation far above 5 %


def test_under_multiplier_raises_the_bar(expected: dict[str, object]) -> None:
    _, result = run(DATA, pattern=PATTERN, under_multiplier=1.1)
    assert result["tier1"]["underestimated"] == expected["under_1_1"]


def test_tier2_cost_and_diagnostics(expected: dict[str, object]) -> None:
    _, result = run(DATA, pattern=PATTERN)
    t2, diag = result["tier2"], result["diagnostics"]
    assert t2["median"] == pytest.approx(expected["waste_median"])
    assert t2["p90"] == pytest.approx(expected["waste_p90"])
    assert t2["act_on_cost"] is (expected["waste_p90"] > 3)  # type: ignore[operator]
    assert diag["smape_n"] == expected["smape_clean_n"] == 38  # the truncated line is left out
    assert diag["smape_mean"] == pytest.approx(expected["smape_clean_mean"])
    assert diag["truncated_n"] == 1
    truncated_actual: list[int] = expected["truncated_actual"]  # type: ignore[assignment]
    assert diag["truncated_actual_min_mean"] == pytest.approx(statistics.fmean(truncated_actual))
    assert diag["truncated_underestimated_pct"] == 100.0


def test_v5_drain_matches_the_originals_published_numbers() -> None:
    """Reference §9.2: v5 had 4/25 (16 %) underestimated, 1 truncated; success=True on 24 of 25."""
    only_v5 = "autopack_v5_drain_tokenestimationv2.log"
    _, result = run(DATA, pattern=only_v5)
    t1 = result["tier1"]
    assert (t1["n"], t1["underestimated"], t1["truncated"], t1["success"]) == (25, 4, 1, 24)
    _, success_only = run(DATA, pattern=only_v5, success_only=True)
    assert success_only["tier1"]["n"] == 24 and success_only["tier1"]["success_rate_pct"] == 100.0


def test_stratification_by_category_complexity_and_deliverables(expected: dict[str, object]) -> None:
    _, result = run(DATA, pattern=PATTERN, with_strata=True)
    strata = result["strata"]
    lines = v2_lines()
    by_category: dict[str, int] = {}
    for line in lines:
        category = {"documentation": "docs", "testing": "tests"}.get(field(line, "category"), field(line, "category"))
        by_category[category] = by_category.get(category, 0) + 1
    assert {k: v["n"] for k, v in strata["category"].items()} == by_category
    buckets = {"1": 0, "2-5": 0, "6+": 0}
    for line in lines:
        d = int(field(line, "deliverables"))
        buckets["1" if d <= 1 else "2-5" if d <= 5 else "6+"] += 1
    assert {k: v["n"] for k, v in strata["deliverables"].items()} == {k: v for k, v in buckets.items() if v}
    assert sum(v["n"] for v in strata["complexity"].values()) == expected["n"]


def test_report_lists_sources_and_tiers(tmp_path: Path) -> None:
    out = tmp_path / "reports" / "telemetry.md"
    text, _ = run(DATA, pattern=PATTERN, with_strata=True, output=out)
    assert out.read_text() == text
    for heading in ("## Data sources", "## Tier 1: Risk", "## Tier 2: Cost", "## Diagnostics", "## Stratification"):
        assert heading in text
    assert "autopack_v5_drain_tokenestimationv2.log`: 25 records" in text
    assert "autopack_build132_tokenestimationv2.log`: 14 records" in text


def test_v1_lines_are_read_but_never_success(tmp_path: Path) -> None:
    logs = tmp_path / "logs" / "nested"
    logs.mkdir(parents=True)
    (logs / "old.log").write_text(
        "[TokenEstimation] Predicted: 1,000 output tokens, Actual: 1,500 output tokens, Error: 40.0%\n"
        "[TokenEstimation] Predicted: 800 output tokens, Actual: 700 output tokens, Error: 13.3%\nnoise\n"
    )
    _, result = run(tmp_path / "logs")
    assert result["v1_records"] == 2 and result["tier1"]["underestimated"] == 1
    assert result["tier1"]["v2_n"] == 0 and result["tier1"]["truncation_rate_pct"] is None
    with pytest.raises(NoRecordsError, match="no successful V2 token-estimation lines in the 1 file"):
        run(tmp_path / "logs", success_only=True)


def test_cli_and_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    for path in DATA.glob(PATTERN):
        shutil.copy(path, logs / (path.stem + ".log"))
    with pytest.raises(SystemExit) as info:
        main(["analyze", "v3", "--log-dir", str(logs), "--stratify", "--success-only"])
    out, _ = capsys.readouterr()
    assert info.value.code in (0, None) and "Tier 1: Risk" in out and "By deliverables" in out
    report = tmp_path / "r.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "analyze_token_telemetry_v3.py"), "--log-dir", str(logs),
         "--success-only", "--stratify", "--under-multiplier", "1.1", "--output", str(report)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Underestimation threshold: actual > predicted × 1.1" in report.read_text()


def test_missing_log_dir_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["analyze", "v3", "--log-dir", str(tmp_path / "nope")])
    _, err = capsys.readouterr()
    assert info.value.code == 2 and "not a directory" in err
