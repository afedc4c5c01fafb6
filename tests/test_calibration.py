"""``autopack calibrate`` / ``run_calibration`` end to end on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from cli_runner import run_cli

from autopack import token_estimator as te
from autopack.calibration import run_calibration
from autopack.calibration.result import load_result
from autopack.calibration.runner import NoUsableSamplesError
from autopack.calibration.samples import build_sample_set, columns_from_records, configuration_ceiling, predict
from autopack.calibration.story import gate_sentence
from autopack.db.engine import get_engine
from autopack.db.handle import database_at, open_database
from autopack.db.identity import read_identity
from autopack.db.models import CalibrationRun, TokenBudgetEscalationEvent, TokenEstimationV2Event
from autopack.errors import DbIdentityMismatchError, EmptyDatabaseError
from autopack.github.body import step_lines
from autopack.params import CalibrationParams

from synthetic_telemetry import event_row, simulate, simulate_with_escalations

REPO = Path(__file__).resolve().parents[1]

TOP_KEYS = {"metadata", "gate", "proposed_changes", "groups", "backtest", "report_path", "json_path", "plot_path"}
METADATA_KEYS = {"db_id", "generated_at", "total_samples", "sample_counts", "run_ids", "time_span", "method_version",
                 "target_truncation", "holdout_fraction", "confidence_threshold", "min_samples", "sources",
                 "retries_excluded", "retries_known", "min_evidence_calls", "gate_level", "max_coefficient_step"}
CHANGE_KEYS = {"coefficient", "key", "old", "new", "category", "complexity", "n", "confidence", "interval", "backtest",
               "verdict"}
BACKTEST_KEYS = {"n", "truncations", "truncations_upper", "truncation_rate", "truncation_interval", "truncation_ci",
                 "binomial_p", "evidence", "kupiec_p", "median_ceiling_over_actual", "p90_ceiling_over_actual",
                 "reserved_over_used", "pinball_loss"}
GROUP_KEYS = {"category", "complexity", "n", "n_censored", "median_ratio", "median_ratio_ci", "pooling_weight",
              "budget_factor", "confidence", "original_confidence", "factor_method", "extrapolation", "assumption",
              "current_ceiling_factor"}


def insert(url: str, rows: list[dict[str, Any]]) -> None:
    with get_engine(url).begin() as connection:
        connection.execute(sa.insert(TokenEstimationV2Event.__table__), rows)


SEEDED_PHASES = 150


@pytest.fixture
def seeded(db_url: str) -> str:
    """150 synthetic phases (incl. a few truncated and escalated): the gate passes on this data.

    Its two implementation groups have ≥ 22 calls in the fitted (older) part, the minimum for a
    distribution-free factor at α = 5 %; the smaller groups are reported, not shipped.
    """
    insert(db_url, simulate(SEEDED_PHASES, seed=3))
    return db_url


# --- the result object -----------------------------------------------------------------------------------


def test_result_has_exactly_the_documented_shape(seeded: str, tmp_path: Path) -> None:
    """The file on disk (what a user opens): its keys, as docs/calibration.md and the JSON Schema list them."""
    result = json.loads(Path(str(run_calibration(open_database(seeded), output_dir=tmp_path).json_path)).read_text())
    assert TOP_KEYS <= result.keys()
    assert METADATA_KEYS <= result["metadata"].keys()
    assert set(result["metadata"]["time_span"]) == {"start", "end"}
    assert set(result["gate"]) == {"passed", "reasons", "weights", "shipped"}
    assert set(result["gate"]["weights"]) == {"changed", "verdict"}
    assert {"current", "original_median", "proposed", "shipped"} <= result["backtest"].keys()
    for method in ("current", "original_median", "proposed", "shipped"):
        m = result["backtest"][method]
        assert BACKTEST_KEYS <= m.keys()
        assert len(m["truncation_ci"]) == 2 and len(m["truncation_interval"]) == 2
        assert m["truncations"] <= m["truncations_upper"]
        assert isinstance(m["evidence"], bool) and 0 <= m["binomial_p"] <= 1
    assert set(result["metadata"]["sources"]) == {"simulated", "models"}
    for group in result["groups"]:
        assert GROUP_KEYS <= group.keys()
        assert group["factor_method"] in {"km_conformal", "censored_fit", "small_group_bound", "none"}
        assert isinstance(group["extrapolation"], bool)
    for change in result["proposed_changes"]:
        assert CHANGE_KEYS <= change.keys() and change["verdict"]
        assert change["coefficient"] in {"BUDGET_FACTORS", "PHASE_OVERHEAD", "TOKEN_WEIGHTS"}
        assert isinstance(change["key"], list) and len(change["key"]) == 2
        assert all(isinstance(k, str) for k in change["key"])
        assert isinstance(change["new"], (int, float))


def test_gate_passes_and_changes_are_keyed_like_the_estimator_literals(seeded: str, tmp_path: Path) -> None:
    result = run_calibration(open_database(seeded), output_dir=tmp_path)
    assert result.gate.passed is True
    current = te.current_coefficients()
    tables = {"BUDGET_FACTORS": current.budget_factors, "PHASE_OVERHEAD": current.phase_overhead,
              "TOKEN_WEIGHTS": current.token_weights}
    factors = [c for c in result.proposed_changes if c.coefficient == "BUDGET_FACTORS"]
    assert factors
    for change in result.proposed_changes:
        key = tuple(change.key)
        assert change.old == tables[change.coefficient].get(key)  # what the editor will compare against
        if change.coefficient != "TOKEN_WEIGHTS":
            assert (change.category, change.complexity) == change.key
    proposed_groups = {(g.category, g.complexity) for g in result.groups if g.proposed}
    assert {tuple(c.key) for c in factors} == proposed_groups


def test_shipped_coefficients_and_factors_are_a_consistent_pair(seeded: str, tmp_path: Path) -> None:
    """Applying the proposal to the estimator reproduces the ceilings the factors were computed for."""
    result = run_calibration(open_database(seeded), output_dir=tmp_path)
    current = te.current_coefficients()
    tables: dict[str, dict[Any, Any]] = {"PHASE_OVERHEAD": dict(current.phase_overhead),
                                         "TOKEN_WEIGHTS": dict(current.token_weights), "BUDGET_FACTORS": {}}
    for change in result.proposed_changes:
        tables[change.coefficient][tuple(change.key)] = change.new
    shipped = te.Coefficients("test", tables["PHASE_OVERHEAD"], tables["TOKEN_WEIGHTS"], current.base_budgets,
                              tables["BUDGET_FACTORS"])
    group = next(g for g in result.groups if g.proposed)
    features = te.PhaseFeatures(group.category, group.complexity, ("src/new_module.py",))
    est, decision = te.plan_call(features, shipped)
    factor = tables["BUDGET_FACTORS"][(group.category, group.complexity)]
    assert decision.calibrated
    assert decision.actual_max_tokens == max(te.MIN_FACTOR_CEILING, int(np.ceil(est.predicted_output_tokens * factor)))


def test_report_json_and_plot_are_written_and_linked(seeded: str, tmp_path: Path) -> None:
    result = run_calibration(open_database(seeded), output_dir=tmp_path / "out")
    report, data, plot = (Path(str(p)) for p in (result.report_path, result.json_path, result.plot_path))
    assert report.name.startswith("token_estimator_calibration_") and report.suffix == ".md"
    assert data.stem == report.stem == plot.stem and plot.suffix == ".png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data.read_text() == result.model_dump_json(indent=2) + "\n"  # the file is exactly the model's dump
    assert load_result(data) == result  # and reads back as the same result
    text = report.read_text()
    assert f"]({plot.name})" in text
    for section in ("## Summary", "## Recommendations", "## Detailed Results", "## Collection targets",
                    "## Success metrics", "## Cost-aware analysis", "## Backtest", "## Doc-phase truncation",
                    "## Gate and proposed changes", "## Notes"):
        assert section in text
    assert "| Category | Complexity | Samples | Avg Actual | Avg Est | Median Ratio | Confidence | Proposed Mult |" in text
    assert "ceiling_waste" in text and "overestimate_ratio" in text


def test_each_calibration_is_recorded(seeded: str, tmp_path: Path) -> None:
    result = run_calibration(open_database(seeded), CalibrationParams(min_samples=3), output_dir=tmp_path)
    with get_engine(seeded).connect() as connection:
        rows = connection.execute(sa.select(CalibrationRun)).mappings().all()
    assert len(rows) == 1
    row = rows[0]
    assert row["db_id"] == read_identity(database_at(seeded)).db_id == result.metadata.db_id
    # one sample per phase: a cut phase's second attempt re-ran its cut call (phase_retries)
    assert row["sample_count"] == result.metadata.total_samples == SEEDED_PHASES < len(simulate(SEEDED_PHASES, seed=3))
    assert row["outcome"] == ("gate_passed" if result.gate.passed else "gate_not_passed")
    assert row["params"]["min_samples"] == 3
    assert row["run_ids"] == ["synthetic-run"]
    assert row["report_path"] == result.report_path and row["json_path"] == result.json_path
    assert row["data_start"] is not None and row["data_end"] >= row["data_start"]


# --- what counts as a sample -----------------------------------------------------------------------------


def test_the_database_path_excludes_retries_and_reports_the_source(db_url: str, tmp_path: Path) -> None:
    rows, escalations = simulate_with_escalations(60, seed=11)
    assert escalations
    insert(db_url, rows)
    with get_engine(db_url).begin() as connection:
        connection.execute(sa.insert(TokenBudgetEscalationEvent.__table__), escalations)
    result = run_calibration(open_database(db_url), output_dir=tmp_path)
    assert result.metadata.retries_excluded == len(escalations)
    assert result.metadata.total_samples == len(rows) - len(escalations)
    assert result.metadata.sources.models[0].model == "synthetic-1"


def test_truncated_calls_are_kept_as_censored_samples(db_url: str, tmp_path: Path) -> None:
    rows = [r for r in simulate(60, seed=11) if r["attempt_index"] == 0]  # no retry tells a cut call's need
    truncated = [r for r in rows if r["truncated"]]
    assert truncated and all(not r["success"] for r in truncated)
    insert(db_url, rows)
    result = run_calibration(open_database(db_url), output_dir=tmp_path)
    counts = result.metadata.sample_counts
    assert counts.censored == len(truncated)
    assert result.metadata.total_samples == len(rows)
    assert sum(g.n_censored for g in result.groups) == len(truncated)


def test_nonpositive_predictions_and_zero_outputs_are_counted_not_used(db_url: str, tmp_path: Path) -> None:
    rows = simulate(40, seed=5, run_id="good")
    features = te.PhaseFeatures("implementation", "low", ("src/x.py",))
    est, decision = te.plan_call(features)
    when = datetime(2025, 2, 1)
    bad = []
    for i in range(3):  # predicted 0 (no features: the recorded prediction is what there is)
        row = event_row("bad", f"p{i}", 0, when, features, est, decision.selected_budget, decision.actual_max_tokens,
                        900, False, store_features=False)
        row["predicted_output_tokens"] = 0
        bad.append(row)
    for i in range(2):  # actual 0
        bad.append(event_row("bad", f"z{i}", 0, when, features, est, decision.selected_budget,
                             decision.actual_max_tokens, 0, False))
    insert(db_url, rows + bad)
    result = run_calibration(open_database(db_url), output_dir=tmp_path)
    counts = result.metadata.sample_counts
    assert counts.excluded_nonpositive_predicted == 3
    assert counts.excluded_zero_actual == 2
    assert result.metadata.total_samples == len(rows)
    assert sum(g.n for g in result.groups) == len(rows)
    assert all(g.median_ratio is None or g.median_ratio > 0 for g in result.groups)


def test_failed_untruncated_calls_are_excluded_and_counted(db_url: str, tmp_path: Path) -> None:
    rows = simulate(40, seed=6)
    for row in rows[:4]:
        row.update(success=False, truncated=False, is_truncated_output=False, stop_reason="end_turn",
                   finish_reason="stop")
    insert(db_url, rows)
    result = run_calibration(open_database(db_url), output_dir=tmp_path)
    assert result.metadata.sample_counts.excluded_failed_not_truncated == 4
    assert result.metadata.total_samples == len(rows) - 4


def test_legacy_spellings_are_normalised_into_one_group(db_url: str, tmp_path: Path) -> None:
    features = te.PhaseFeatures("tests", "medium", ("tests/test_a.py",))
    est, decision = te.plan_call(features)
    rows = []
    for i, (category, complexity) in enumerate([("testing", "MEDIUM"), ("tests", "medium"), ("TESTING", "Medium")] * 4):
        row = event_row("legacy", f"p{i}", 0, datetime(2025, 3, 1) + timedelta(minutes=i), features, est,
                        decision.selected_budget, decision.actual_max_tokens, 2000 + 37 * i, False,
                        store_features=False)
        row.update(category=category, complexity=complexity)
        rows.append(row)
    insert(db_url, rows)
    result = run_calibration(open_database(db_url), output_dir=tmp_path)
    assert [(g.category, g.complexity, g.n) for g in result.groups] == [("tests", "medium", 12)]
    spellings = result.metadata.spellings_normalised
    assert spellings["category"] == {"testing → tests": 4, "TESTING → tests": 4}
    assert spellings["complexity"]["MEDIUM → medium"] == 4


def test_include_run_id_selects_runs(db_url: str, tmp_path: Path) -> None:
    insert(db_url, simulate(30, seed=1, run_id="run-a") + simulate(30, seed=2, run_id="run-b"))
    result = run_calibration(open_database(db_url), output_dir=tmp_path, include_run_ids=["run-b"])
    assert result.metadata.run_ids == ["run-b"]
    assert result.metadata.total_samples == 30  # its phases: a cut phase's second attempt is a retry


# --- the gate ----------------------------------------------------------------------------------------------


def test_gate_fails_with_reasons_when_no_group_has_enough_samples(seeded: str, tmp_path: Path) -> None:
    result = run_calibration(open_database(seeded), CalibrationParams(min_samples=500), output_dir=tmp_path)
    assert result.gate.passed is False
    assert result.proposed_changes == []
    assert any("--min-samples 500" in r for r in result.gate.reasons)
    assert Path(result.report_path).exists()


def test_a_confidence_below_the_threshold_refuses_every_lowering(seeded: str, tmp_path: Path) -> None:
    """Only steps toward α remain: a raise is safe without any confidence (no call's ceiling falls)."""
    result = run_calibration(open_database(seeded), CalibrationParams(confidence_threshold=0.999), output_dir=tmp_path)
    assert all(c.direction == "raise" for c in result.proposed_changes)
    assert any("confidence" in r and "< threshold 1.00" in r for r in result.gate.reasons)


def test_a_group_cut_above_alpha_at_its_floor_gets_a_step_toward_alpha(db_url: str, tmp_path: Path) -> None:
    """docs/low sits at its 4096 floor with ~3000-token outputs and is cut in ~17 % of its phases: a budget for
    5 % cannot reserve less than today (the old gate refused it for that), but a raise is safe: it ships."""
    specs = (("docs", "low", ("README.md",)),)
    insert(db_url, simulate(60, seed=4, specs=specs))
    result = run_calibration(open_database(db_url), output_dir=tmp_path)
    (group,) = result.groups
    step = group.step_toward_alpha
    assert group.proposed and group.gate_direction == "raise" and step.today_rate > 0.1
    (change,) = [c for c in result.proposed_changes if c.coefficient == "BUDGET_FACTORS"]
    assert change.new > step.today_factor and change.verdict.startswith("step toward α")
    assert step.price_tokens > 0 and step.expected_truncation < step.today_rate
    # one line each in the report and the pull-request body
    assert "docs/low: step toward α" in Path(result.report_path).read_text()
    (line,) = [x for x in step_lines(result) if x]
    assert line.startswith("- `docs, low`: **step toward α**") and "reserved tokens" in line


# --- exit codes and the CLI --------------------------------------------------------------------------------


def test_cli_json_prints_exactly_the_result_object(seeded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "calibrate", "--json", "--output-dir", str(tmp_path))
    assert code == 0
    printed = json.loads(out)
    assert printed == json.loads(Path(printed["json_path"]).read_text())


def test_cli_exit_0_when_the_gate_does_not_pass(seeded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "calibrate", "--confidence-threshold", "0.999", "--min-samples", "30",
                           "--output-dir", str(tmp_path))
    assert code == 0 and "gate: not passed" in out
    assert "Nothing ships: no change passed the gate" in out  # the same sentence as the report and the PR body


def test_cli_summary_says_what_passing_means_and_labels_the_refit(seeded: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "calibrate", "--output-dir", str(tmp_path))
    result = load_result(next(tmp_path.glob("token_estimator_calibration_*.json")))
    assert code == 0 and gate_sentence(result) in out
    # the database named as every command names it (README: the URL "shown by every command")
    assert f"[db] id={result.metadata.db_id} url=" in err and " revision=" in err
    assert "full refit (not shipped)" in out or not result.backtest.test_n


def test_cli_exit_1_when_no_group_reaches_min_samples(seeded: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "calibrate", "--min-samples", "500", "--output-dir", str(tmp_path))
    assert code == 1 and "gate: not passed" in out
    (line,) = err.strip().splitlines()[-1:]
    assert "no group reaches --min-samples 500" in line and "lower --min-samples" in line
    assert list(tmp_path.glob("token_estimator_calibration_*.md"))  # the report says why


def test_no_usable_samples_exits_1_and_is_recorded(db_url: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rows = simulate(5, seed=9)
    for row in rows:
        row.update(success=False, truncated=False, is_truncated_output=False, stop_reason="end_turn",
                   finish_reason="stop")
    insert(db_url, rows)
    with pytest.raises(NoUsableSamplesError):
        run_calibration(open_database(db_url), output_dir=tmp_path)
    code, _, err = run_cli(capsys, "calibrate", "--output-dir", str(tmp_path))
    assert code == 1 and "no usable calibration samples" in err and len(err.strip().splitlines()) <= 2
    with get_engine(db_url).connect() as connection:
        outcomes = connection.execute(sa.select(CalibrationRun.outcome)).scalars().all()
    assert outcomes == ["no_samples", "no_samples"]
    assert not list(tmp_path.glob("token_estimator_calibration_*"))


def test_empty_database_is_refused_unless_allowed(db_url: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(EmptyDatabaseError):
        run_calibration(open_database(db_url), output_dir=tmp_path)
    code, _, _ = run_cli(capsys, "calibrate", "--output-dir", str(tmp_path))
    assert code == 2
    code, _, _ = run_cli(capsys, "calibrate", "--allow-empty-db", "--output-dir", str(tmp_path))
    assert code == 1  # allowed, but nothing to calibrate


def test_wrong_database_id_is_refused_with_exit_3(seeded: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DbIdentityMismatchError):
        run_calibration(open_database(seeded, expect_db_id="someone-else"), output_dir=tmp_path)
    code, _, err = run_cli(capsys, "calibrate", "--expect-db-id", "someone-else", "--output-dir", str(tmp_path))
    assert code == 3 and "DB_MISMATCH" in err
    with get_engine(seeded).connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(CalibrationRun)).scalar_one() == 0


def test_bad_flags_are_one_line_errors(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "calibrate", "--target-truncation", "0.7")
    assert code == 2 and "--target-truncation" in err


def test_script_keeps_the_seed_flags(seeded: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "calibrate_token_estimator.py"), "--min-samples", "5",
         "--confidence-threshold", "0.7", "--output-dir", str(tmp_path), "--include-run-id", "synthetic-run",
         "--allow-empty-db"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.glob("token_estimator_calibration_*.md"))


# --- re-estimation equals the estimator (pure) --------------------------------------------------------------


def _varied_rows() -> list[dict[str, Any]]:
    rng = np.random.default_rng(8)
    kinds = ["src/a{}.py", "tests/test_b{}.py", "docs/c{}.md", "cfg/d{}.yaml", "web/e{}.tsx", "db/f{}.sql"]
    rows = []
    for i in range(120):
        deliverables = tuple(kinds[int(rng.integers(0, len(kinds)))].format(i * 10 + j)
                             for j in range(int(rng.integers(1, 5))))
        existing = {deliverables[0]: te.FileStats(int(rng.integers(10, 900)), int(rng.integers(0, 30)),
                                                  int(rng.integers(0, 24)))} if i % 3 == 0 else {}
        category = ["implementation", "tests", "docs", "frontend", "backend", "deployment"][i % 6]
        complexity = ["low", "medium", "high"][i % 3]
        features = te.PhaseFeatures(category, complexity, deliverables, description="modify things",
                                    scope_paths=tuple(f"p{j}" for j in range(i % 5)), existing_files=existing,
                                    builder_mode="full_file" if i % 7 == 0 else None)
        est, decision = te.plan_call(features)
        rows.append(event_row("r", f"p{i}", 0, datetime(2025, 1, 1) + timedelta(minutes=i), features, est,
                              decision.selected_budget, decision.actual_max_tokens, 1000 + i, False))
    return rows


def test_vectorised_predictions_and_ceilings_equal_the_estimator() -> None:
    rows = _varied_rows()
    samples = build_sample_set(columns_from_records(rows))
    current = te.current_coefficients()
    other = te.Coefficients(
        "other",
        {**current.phase_overhead, ("implementation", "low"): 111, ("docs", "medium"): 0},
        {k: v // 2 + 37 for k, v in current.token_weights.items()},
        current.base_budgets,
        {("tests", "high"): 1.7, ("docs", "low"): 0.9},
    )
    by_id = {r["phase_id"]: r for r in rows}
    for coefficients in (current, other):
        predicted, ceiling = configuration_ceiling(samples, coefficients, coefficients.budget_factors)
        assert np.array_equal(predicted, predict(samples, coefficients))
        for i, event_id in enumerate(samples.event_id.tolist()):
            record = json.loads(by_id[f"p{event_id - 1}"]["features_json"])
            features = te.features_from_record(record)
            est, decision = te.plan_call(features, coefficients)
            assert abs(predicted[i] - est.predicted_output_tokens) <= 1  # float order of Σ weight·factor
            if predicted[i] == est.predicted_output_tokens:
                assert ceiling[i] == decision.actual_max_tokens
