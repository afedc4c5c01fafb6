"""Shared test inputs: a small estimator of the real file's shape, a calibration JSON, a target git repo."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from autopack.calibration.result import CalibrationResult, load_result

FIXTURE_ESTIMATOR = '''"""A small estimator shaped like autopack/token_estimator.py: tables of (str, str) -> number."""

from __future__ import annotations

CALIBRATION_VERSION = "v5-step2"
CALIBRATION_DATE = "2025-12-29"
CALIBRATION_SAMPLES = 45

SAFETY_MARGIN = 1.3
PHASE_OVERHEAD: dict[tuple[str, str], int] = {
    # implementation: 2000 -> 1120 -> 634 (sqrt-damped)
    ("implementation", "low"): 634,
    ("implementation", "medium"): 1176,  # v6 telemetry
    # tests
    ("tests", "low"): 915,
}
TOKEN_WEIGHTS: dict[tuple[str, str], int] = {("backend", "new"): 2000, ("backend", "modify"): 700}
BASE_BUDGET_BY_CATEGORY: dict[tuple[str, str], int] = {
    ("implementation", "low"): 8192,
    ("tests", "low"): 6144,
}
BUDGET_FACTORS: dict[tuple[str, str], float] = {}  # filled by the calibration pull request


def ceiling(category: str, complexity: str) -> int:
    """Not a literal: the edit must leave code alone."""
    key = (category, complexity)
    factor = BUDGET_FACTORS.get(key)
    predicted = int(PHASE_OVERHEAD.get(key, 2000) * SAFETY_MARGIN)
    return int(predicted * factor) if factor else max(BASE_BUDGET_BY_CATEGORY.get(key, 8192), predicted)
'''

FIXTURE_TESTS = '''from autopack.token_estimator import BUDGET_FACTORS, PHASE_OVERHEAD, ceiling


def test_tables_are_positive():
    for table in (PHASE_OVERHEAD, BUDGET_FACTORS):
        for key, value in table.items():
            assert value > 0


def test_ceiling_positive():
    assert ceiling("implementation", "low") > 0
'''

def _method(n: int, k: int, k_upper: int, ratio: float, reserved: int, p: float, evidence: bool) -> dict[str, Any]:
    return {"n": n, "truncations": k, "truncations_upper": k_upper, "truncation_rate": k / n,
            "truncation_interval": [k / n, k_upper / n], "truncation_ci": [0.0, round((k_upper + 3) / n, 3)],
            "binomial_p": p, "kupiec_p": 0.4, "evidence": evidence, "median_ceiling_over_actual": 2.1,
            "p90_ceiling_over_actual": 4.0, "reserved_over_used": ratio, "reserved_tokens": reserved,
            "used_tokens": round(reserved / ratio), "pinball_loss": 120.0}


#: The metrics a group's or a change's backtest carries (``core.SUMMARY_KEYS``).
SUMMARY_KEYS = ("n", "truncations", "truncations_upper", "truncation_rate", "truncation_interval", "truncation_ci",
                "binomial_p", "evidence", "reserved_over_used", "kupiec_p")

THIN = False  # 19 held-out calls < 85 (metadata.min_evidence_calls at α = 0.05)

#: The calibration JSON in its current shape (docs/calibration.md): censoring-aware backtest with the
#: ``shipped`` column, verdicts, evidence, data sources. The changes are the same as LEGACY_CALIBRATION's.
CALIBRATION: dict[str, Any] = {
    "metadata": {
        "generated_at": "2026-11-26T12:00:00Z",
        "db_id": "db-5f1c2a",
        "method_version": "conformal-v2",
        "method": "static",
        "method_params": {},
        "total_samples": 120,
        "retries_excluded": 7,
        "retries_known": True,
        "sources": {"simulated": True, "models": [{"provider": "simulated", "model": "simulated-v1", "samples": 120,
                                                   "simulated": True, "share": 1.0}]},
        "gate_level": 0.05,
        "min_evidence_calls": 85,
        "max_coefficient_step": 2.0,
        "run_ids": ["telemetry-collection-v4"],
        "time_span": {"start": "2026-11-01T00:00:00Z", "end": "2026-11-25T23:59:59Z"},
        "target_truncation": 0.05,
        "confidence_threshold": 0.7,
        "min_samples": 5,
        "calibration_run_id": 1,
    },
    "gate": {"passed": True,
             "reasons": ["implementation/low: 0/19 held-out truncations (upper 1/19), binomial p = 1.00; "
                         "reserves less"],
             "weights": {"changed": False, "verdict": "no TOKEN_WEIGHTS change proposed by the fit"},
             "shipped": {"passed": True, "verdict": "the shipped configuration on all 19 held-out calls: 0–1/19 "
                                                   "truncated, binomial p = 1 (thin evidence: 19 held-out calls < 85)"}},
    "proposed_changes": [
        {"coefficient": "BUDGET_FACTORS", "key": ["implementation", "low"], "old": None, "new": 1.42,
         "category": "implementation", "complexity": "low", "n": 24, "confidence": 0.81, "interval": [0.9, 1.3],
         "verdict": "ships: 0–1 of 19 held-out calls truncated, reserves 2.353 → 2.324 per token used",
         "backtest": {k: v for k, v in _method(19, 0, 1, 2.324, 23240, 1.0, THIN).items() if k in SUMMARY_KEYS}},
        {"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "low"], "old": 634, "new": 410,
         "category": "implementation", "complexity": "low", "n": 24, "confidence": 0.81,
         "verdict": "ships with its group's budget factor (the factor is relative to it)"},
    ],
    "backtest": {
        "current": _method(19, 1, 1, 2.353, 23530, 0.62, THIN),
        "shipped": _method(19, 0, 1, 2.324, 23240, 1.0, THIN),
        "proposed": _method(19, 2, 3, 2.101, 21010, 0.25, THIN),
        "original_median": _method(19, 8, 9, 1.2, 12000, 0.0001, THIN),
        "train_n": 101, "test_n": 19, "split_at": "2026-11-20T00:00:00Z",
        "calibration_under_drift": {
            "alpha": 0.05, "feedback": {"kind": "fixed_lag", "lag_calls": 5}, "calls": "all 19 held-out calls",
            "bins": "5 consecutive blocks of equal size", "adapted_groups": [["implementation", "low"]],
            "configuration": "shipped", "this_pull_request": "static", "adapted_calls": 19,
            "differs_from_static": {"rolling": 6, "aci": 4},
            "methods": {  # the static row replays what ships: the shipped backtest's 0–1 of 19, 2.324
                name: {"n": 19, "truncations": k, "truncations_upper": k_up, "truncation_rate": k / 19,
                       "truncation_interval": [k / 19, k_up / 19], "reserved_over_used": ratio,
                       "worst_bin_truncation": worst, "worst_bin_n": 4, "bins": 5, "pinball_loss": 100.0,
                       "reserved_vs_oracle": vs, "pinball_vs_oracle": 1.1}
                for name, k, k_up, ratio, worst, vs in (
                    ("static", 0, 1, 2.324, 0.0, 1.04), ("rolling", 1, 1, 2.2, 0.25, 0.98),
                    ("aci", 1, 1, 2.25, 0.25, 1.01), ("oracle", 1, 1, 2.23, 0.25, 1.0))}},
        "groups": [
            {"category": "implementation", "complexity": "low", "n": 19,
             "current": {"truncations": 1, "truncation_rate": 1 / 19, "truncation_interval": [1 / 19, 1 / 19],
                         "reserved_over_used": 2.353},
             "proposed": {"truncations": 2, "truncation_rate": 2 / 19, "truncation_interval": [2 / 19, 3 / 19],
                          "reserved_over_used": 2.101},
             "shipped": {"truncations": 0, "truncations_upper": 1, "truncation_rate": 0.0,
                         "truncation_interval": [0.0, 1 / 19],
                         "reserved_over_used": 2.324}},
        ],
    },
    "groups": [{"category": "implementation", "complexity": "low", "n": 24, "n_censored": 1, "median_ratio": 0.6,
                "median_ratio_ci": [0.5, 0.7], "pooling_weight": 0.9, "budget_factor": 1.42, "confidence": 0.81,
                "original_confidence": 0.77, "factor_method": "km_conformal", "extrapolation": False,
                "assumption": None, "factor_pool_n": 24, "factor_rank": 24, "proposed": True,
                "gate_reasons": []}],
    "report_path": "/srv/reports/token_estimator_calibration_20261126_120000.md",
    "plot_path": "/srv/reports/token_estimator_calibration_20261126_120000.png",
}

#: An older calibration JSON (before the shipped backtest, verdicts and sources existed): still renders.
LEGACY_CALIBRATION: dict[str, Any] = {
    "metadata": {
        "generated_at": "2026-11-26T12:00:00Z",
        "db_id": "db-5f1c2a",
        "method_version": "conformal-v1",
        "total_samples": 120,
        "run_ids": ["telemetry-collection-v4"],
        "time_span": {"start": "2026-11-01T00:00:00Z", "end": "2026-11-25T23:59:59Z"},
        "target_truncation": 0.05,
        "confidence_threshold": 0.7,
        "min_samples": 5,
    },
    "gate": {"passed": True, "reasons": ["proposed truncation 0.04 <= target 0.05 + tolerance",
                                         "reserved/used improves 3.4 -> 1.9"]},
    "proposed_changes": [
        {"coefficient": "BUDGET_FACTORS", "key": ["implementation", "low"], "old": None, "new": 1.42,
         "category": "implementation", "complexity": "low", "n": 24, "confidence": 0.81, "interval": [0.9, 1.3],
         "backtest": {"truncation_rate": 0.04, "reserved_over_used": 1.9}},
        {"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "low"], "old": 634, "new": 410, "n": 24,
         "confidence": 0.81},
    ],
    "backtest": {
        name: {"n": 40, "truncation_rate": rate, "truncation_ci": [0.01, 0.2], "kupiec_p": 0.2,
               "median_ceiling_over_actual": 3.1, "p90_ceiling_over_actual": 6.0, "reserved_over_used": ratio,
               "pinball_loss": 120.0}
        for name, rate, ratio in (("current", 0.1, 3.4), ("original_median", 0.3, 1.2), ("proposed", 0.04, 1.9))
    },
    "groups": [{"category": "implementation", "complexity": "low", "n": 24, "n_censored": 1, "median_ratio": 0.6,
                "median_ratio_ci": [0.5, 0.7], "pooling_weight": 0.9, "budget_factor": 1.42, "confidence": 0.81,
                "original_confidence": 0.77}],
    "report_path": "/srv/reports/token_estimator_calibration_20261126_120000.md",
    "plot_path": "/srv/reports/token_estimator_calibration_20261126_120000.png",
}


def as_result(data: dict[str, Any]) -> CalibrationResult:
    """A calibration JSON object as every consumer reads it: through the versioned reader."""
    return load_result(json.dumps(data))


def calibration(**overrides: Any) -> dict[str, Any]:
    data = copy.deepcopy(CALIBRATION)
    data.update(overrides)
    return data


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
           "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.com"}
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def make_target_repo(path: Path, *, estimator: str = FIXTURE_ESTIMATOR, tests: str | None = FIXTURE_TESTS) -> Path:
    """A git checkout shaped like the autopack repository (branch ``main``, one commit)."""
    (path / "autopack").mkdir(parents=True)
    (path / "autopack" / "__init__.py").write_text("")
    (path / "autopack" / "token_estimator.py").write_text(estimator)
    if tests is not None:
        (path / "tests").mkdir()
        (path / "tests" / "test_token_estimator.py").write_text(tests)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path
