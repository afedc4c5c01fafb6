"""``autopack calibrate --method``: the backtest replays the method, the JSON states it, the PR carries its curve."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from autopack import token_estimator as te
from autopack.calibration import drift, run_calibration
from autopack.calibration.result import CalibrationResult, FeedbackSpec
from autopack.cli import main
from autopack.db.engine import get_engine
from autopack.db.handle import open_database
from autopack.db.models import TokenEstimationV2Event
from autopack.github.estimator_edit import apply_proposal
from autopack.params import CalibrationParams

from synthetic_telemetry import simulate


def insert(url: str, rows: list[dict[str, Any]]) -> None:
    with get_engine(url).begin() as connection:
        connection.execute(sa.insert(TokenEstimationV2Event.__table__), rows)


@pytest.fixture
def seeded(db_url: str) -> str:
    insert(db_url, simulate(400, seed=3))
    return db_url


def load_edited(source: str) -> types.ModuleType:
    module = types.ModuleType("edited_token_estimator")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    try:
        exec(compile(source, "token_estimator.py", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module


def test_default_method_is_the_benchmarks_choice_and_is_stated(seeded: str, tmp_path: Path) -> None:
    result = run_calibration(open_database(seeded), output_dir=tmp_path)
    md = result.metadata
    assert md.method == drift.DEFAULT_METHOD == "static" and md.method_params.items() == []
    assert not [c for c in result.proposed_changes if c.coefficient.startswith("ADAPTIVE_")]


def test_every_calibration_reports_all_methods_under_drift(seeded: str, tmp_path: Path) -> None:
    result = run_calibration(open_database(seeded), output_dir=tmp_path)
    under = result.backtest.calibration_under_drift
    assert under is not None and set(under.methods) == {"static", "rolling", "aci", "oracle"}
    test_n = result.backtest.test_n
    for m in under.methods.values():
        assert m.truncation_rate is not None and m.reserved_over_used is not None
        assert m.n == test_n and 0 <= m.truncation_rate <= 1 and m.reserved_over_used > 0
        assert m.worst_bin_truncation is not None and m.worst_bin_truncation >= m.truncation_rate - 1e-9
    # the methods replay what ships: the chosen method's row is exactly the shipped backtest (same ceilings)
    assert under.configuration == "shipped" and under.this_pull_request == "static"
    shipped, static = result.backtest.shipped, under.methods["static"]
    assert shipped is not None
    assert (static.truncations, static.truncations_upper, static.reserved_over_used) == (
        shipped.truncations, shipped.truncations_upper, shipped.reserved_over_used)
    report = Path(str(result.report_path)).read_text()
    assert "## Calibration under drift" in report and "Method `static`" in report


def test_the_every_method_comparison_replays_at_most_the_newest_calls_and_says_so(
    seeded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond ``MAX_COMPARED_CALLS`` held-out calls the report's comparison replays the newest of them, names how
    many of how many, and every method's row counts exactly those; the gate's own replay still covers all."""
    full = run_calibration(open_database(seeded), output_dir=tmp_path / "full").backtest
    cap = full.test_n // 2
    monkeypatch.setattr(drift, "MAX_COMPARED_CALLS", cap)
    capped = run_calibration(open_database(seeded), output_dir=tmp_path / "capped").backtest
    under = capped.calibration_under_drift
    assert under is not None and under.calls == f"the newest {cap} of {capped.test_n} held-out calls"
    assert {m.n for m in under.methods.values()} == {cap}
    assert capped.shipped is not None and capped.shipped.n == capped.test_n == full.test_n


def test_aci_ships_a_reviewed_curve_through_the_estimator_editor(seeded: str, tmp_path: Path) -> None:
    result = run_calibration(open_database(seeded), CalibrationParams(method="aci"), output_dir=tmp_path)
    md = result.metadata
    assert md.method == "aci" and md.method_params.gamma == 0.005
    assert md.method_params.feedback == FeedbackSpec(kind="fixed_lag", lag_calls=drift.BACKTEST_FEEDBACK_LAG)
    changes = result.proposed_changes
    factors = {c.key: c.new for c in changes if c.coefficient == "BUDGET_FACTORS"}
    curve_entries = [c for c in changes if c.coefficient == "ADAPTIVE_BUDGET_FACTORS"]
    assert factors and curve_entries
    settings = {c.key: c.new for c in changes if c.coefficient == "ADAPTIVE_SETTINGS"}
    assert settings == {("aci", "target_alpha"): 0.05, ("aci", "gamma"): 0.005}

    edited = load_edited(apply_proposal(Path(te.__file__).read_text(), changes, md))
    curves = edited.parse_adaptive_curves(edited.ADAPTIVE_BUDGET_FACTORS)
    assert set(curves) <= set(factors) and curves
    for group, curve in curves.items():
        # at the target the curve is the shipped factor: no runtime state = exactly the static ceiling
        assert curve.factor_at(0.05) == edited.BUDGET_FACTORS[group] == factors[group]
        assert list(curve.factors) == sorted(curve.factors, reverse=True)
        assert curve.alphas[0] >= 0.01 - 1e-12 and curve.alphas[-1] <= 0.1 + 1e-12
    coeffs = edited.current_coefficients()
    assert coeffs.adaptive_target == 0.05 and coeffs.adaptive_gamma == 0.005
    report = Path(str(result.report_path)).read_text()
    assert "Method `aci`" in report and "| **this pull request (`aci`)** |" in report


def test_aci_backtest_gates_the_replayed_ceilings(seeded: str, tmp_path: Path) -> None:
    static = run_calibration(open_database(seeded), CalibrationParams(method="static"), output_dir=tmp_path / "s")
    aci = run_calibration(open_database(seeded), CalibrationParams(method="aci"), output_dir=tmp_path / "a")
    assert static.backtest.calibration_under_drift is not None and aci.backtest.shipped is not None
    under = static.backtest.calibration_under_drift.methods
    # what `aci` ships is the ACI replay of the same held-out calls (the static run's comparison replays the
    # same shipped groups with its own ACI loop), not the static ceilings
    def factors(result: CalibrationResult) -> dict[tuple[str, str], float]:
        return {c.key: c.new for c in result.proposed_changes if c.coefficient == "BUDGET_FACTORS"}

    assert factors(aci) == factors(static)
    assert aci.backtest.shipped.reserved_over_used == pytest.approx(under["aci"].reserved_over_used, abs=1e-6)
    assert aci.backtest.shipped.truncations == under["aci"].truncations
    assert under["aci"].reserved_over_used != under["static"].reserved_over_used


def test_rolling_is_refused_with_one_line_and_exit_2(seeded: str, capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--method", "rolling", "--output-dir", str(tmp_path)])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "--method rolling cannot be shipped" in err and len(err.strip().splitlines()) <= 2
    assert not list(tmp_path.glob("*.json"))


def test_curve_levels_missing_for_small_groups_are_left_out() -> None:
    # 30 calls: conformal quantiles exist only down to α_j ≥ 1/31
    calls = drift.Stream(group=np.zeros(30, dtype=int), predicted=np.full(30, 100.0), y=np.arange(30.0) * 10,
                         observed=np.ones(30, dtype=bool), epoch=np.arange(30.0))
    curve = drift.group_curve(drift.scores(calls), calls.observed, 0.05, 2.0)
    assert curve is not None and curve.alphas[0] >= 1 / 31 and math.isclose(curve.factor_at(0.05), 2.0)
