"""render_pr_body / proposal hash: what the reviewer reads and how the bot recognises its proposal."""

from __future__ import annotations

import copy

import pytest

from autopack.github.body import pr_title, render_pr_body
from autopack.github.proposal import find_marker, marker, parse_changes, proposal_hash
from autopack.github.verify import TableCheck, EstimatorTestRun, VerificationReport
from github_server.samples import CALIBRATION, calibration

DIGEST = proposal_hash(parse_changes(CALIBRATION["proposed_changes"]))


def report() -> VerificationReport:
    return VerificationReport(
        ok=True, module_file="/tmp/x/autopack/token_estimator.py",
        table_checks=(TableCheck("PHASE_OVERHEAD", ("implementation", "low"), 634, 410, 410, True),),
        estimates=(), tests=EstimatorTestRun("passed", "python -m pytest -q tests/test_token_estimator.py", 0),
    )


def test_hash_ignores_order_and_evidence_fields() -> None:
    reordered = list(reversed(copy.deepcopy(CALIBRATION["proposed_changes"])))
    reordered[0]["confidence"] = 0.1
    assert proposal_hash(parse_changes(reordered)) == DIGEST
    assert len(DIGEST) == 64


def test_hash_changes_with_a_new_value() -> None:
    changed = copy.deepcopy(CALIBRATION["proposed_changes"])
    changed[1]["new"] = 411
    assert proposal_hash(parse_changes(changed)) != DIGEST


def test_body_ends_with_the_marker_the_bot_finds() -> None:
    body = render_pr_body(CALIBRATION, report())
    assert body.rstrip().endswith(marker(DIGEST))
    assert find_marker(body) == DIGEST
    assert find_marker("a body a human rewrote") is None


def test_body_has_one_row_per_change_with_its_evidence() -> None:
    body = render_pr_body(CALIBRATION, report())
    assert ("| `PHASE_OVERHEAD` | `implementation, low` | 634 | 410 | -35.3% | 24 | 0.81 | — | — | — |") in body
    assert ("| `BUDGET_FACTORS` | `implementation, low` | (none) | 1.42 | new entry | 24 | 0.81 | [0.9, 1.3] "
            "| 0.04 | 1.9 |") in body


def test_body_has_the_backtest_side_by_side() -> None:
    body = render_pr_body(CALIBRATION, report())
    assert "| Metric | `current` | `original_median` | `proposed` |" in body
    assert "| truncation rate | 0.1 | 0.3 | 0.04 |" in body
    assert "| reserved / used | 3.4 | 1.2 | 1.9 |" in body
    assert "| truncation rate CI | [0.01, 0.2] | [0.01, 0.2] | [0.01, 0.2] |" in body


def test_body_has_gate_provenance_and_verification() -> None:
    body = render_pr_body(CALIBRATION, report())
    assert "### Gate: passed" in body and "- reserved/used improves 3.4 -> 1.9" in body
    for text in ("Database id: db-5f1c2a", "Method version: conformal-v1", "Run ids: telemetry-collection-v4",
                 "Time span: 2026-11-01T00:00:00Z → 2026-11-25T23:59:59Z", "Samples: 120",
                 "Report: token_estimator_calibration_20261126_120000.md",
                 "Estimator tests: passed (`python -m pytest -q tests/test_token_estimator.py`)"):
        assert text in body
    assert "/srv/reports" not in body  # local paths stay local


def test_plot_is_embedded_from_the_given_link() -> None:
    body = render_pr_body(CALIBRATION, report(), plot_link="../reports/plot 1.png")
    assert "![calibration plot](../reports/plot%201.png)" in body


def test_plot_without_a_link_is_named_not_embedded() -> None:
    body = render_pr_body(CALIBRATION, report())
    assert "`token_estimator_calibration_20261126_120000.png` (in the calibration output; not uploaded)" in body
    assert "![" not in body


def test_no_secret_reaches_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-token-value-123"
    monkeypatch.setenv("GITHUB_TOKEN", secret)
    data = calibration(gate={"passed": True, "reasons": [f"token {secret} and ghp_{'a' * 36}"]})
    body = render_pr_body(data, report())
    assert secret not in body and "ghp_" not in body
    assert "token *** and ***" in body


def test_table_cells_cannot_be_broken_by_data() -> None:
    data = calibration(groups=[{"category": "a|b", "complexity": "low\nhigh", "n": 1}])
    body = render_pr_body(data, report())
    assert "| a\\|b | low high | 1 |" in body


def test_title_names_version_and_count() -> None:
    assert pr_title(CALIBRATION) == "Calibrate token estimator (autopack-cal-20261126): 2 coefficient changes"


def test_a_token_passed_in_is_masked_too() -> None:
    token = "prefect-block-token-value-42"
    data = calibration(gate={"passed": True, "reasons": [f"leaked {token}"]})
    assert token not in render_pr_body(data, report(), extra_secrets=[token])
