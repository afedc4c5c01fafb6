"""render_pr_body / proposal hash: what the reviewer reads, and that it describes exactly what ships."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from github_server.samples import CALIBRATION, FIXTURE_ESTIMATOR, LEGACY_CALIBRATION, as_result, calibration

from autopack.errors import InputError
from autopack.github.body import pr_title, render_not_updated, render_pr_body
from autopack.github.estimator_edit import apply_proposal
from autopack.github.proposal import find_marker, marker, parse_changes, proposal_hash
from autopack.github.verify import EstimatorTestRun, TableCheck, TestFailure, VerificationReport

DIGEST = proposal_hash(parse_changes(CALIBRATION["proposed_changes"]))


def _body(data: dict, *args: Any, **kwargs: Any) -> str:
    """The body of a calibration JSON object, read as the pipeline reads a file."""
    return render_pr_body(as_result(data), *args, **kwargs)


def group(category: str, complexity: str, **fields: Any) -> dict[str, Any]:
    """A group entry with what every calibration output has, and ``fields``."""
    return {"category": category, "complexity": complexity, "n": 0, "n_censored": 0, "median_ratio": None,
            "median_ratio_ci": [None, None], "budget_factor": None, "confidence": None, "proposed": False, **fields}


def report() -> VerificationReport:
    return VerificationReport(
        ok=True, module_file="/tmp/x/autopack/token_estimator.py",
        table_checks=(TableCheck("PHASE_OVERHEAD", ("implementation", "low"), 634, 410, 410, True),),
        estimates=(), tests=EstimatorTestRun("passed", "python -m pytest -q tests/test_token_estimator.py", 0),
    )


def row(body: str, label: str) -> list[str]:
    """The cells of the markdown table row starting with ``| label |``."""
    (line,) = [line for line in body.splitlines() if line.startswith(f"| {label} |")]
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def header(body: str, first: str) -> list[str]:
    (line,) = [line for line in body.splitlines() if line.startswith(f"| {first} |")]
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def with_weights(verdict: str | None) -> dict:
    data = calibration()
    data["proposed_changes"].append({"coefficient": "TOKEN_WEIGHTS", "key": ["backend", "new"], "old": 2000,
                                     "new": 1800, "n": 120})
    data["gate"]["weights"] = {"changed": True, "verdict": verdict} if verdict else {"changed": True}
    return data


# --- the proposal hash and the marker -------------------------------------------------------------


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
    body = _body(CALIBRATION, report())
    assert body.rstrip().endswith(marker(DIGEST))
    assert find_marker(body) == DIGEST
    assert find_marker("a body a human rewrote") is None


# --- what ships: the shipped column, the effect line -----------------------------------------------


def test_backtest_labels_shipped_as_this_pull_request_and_the_refit_as_not_shipped() -> None:
    body = _body(CALIBRATION, report())
    columns = header(body, "Metric")
    assert columns == ["`current` = today", "`shipped` = this pull request", "`proposed` = full refit (not shipped)",
                       "`original_median` = original method"]
    assert row(body, "truncations (censoring: lower–upper)") == ["1", "0–1", "2–3", "8–9"]
    assert row(body, "reserved / used") == ["2.353", "2.324", "2.101", "1.2"]
    assert row(body, "truncation rate, censoring bounds")[1] == "0.0 %–5.3 %"
    assert row(body, "exact binomial p (rate ≤ α)")[1] == "1"
    assert "`proposed` = this pull request" not in body and "`proposed` (this pull request)" not in body


def test_effect_line_says_today_to_this_pull_request_with_intervals() -> None:
    body = _body(CALIBRATION, report())
    (effect,) = [line for line in body.splitlines() if line.startswith("**Effect on the 19 held-out calls**")]
    assert "truncation 1/19 = 5.3 % (95 % CI 0.0 %–21.1 %) → **0–1 of 19 = 0.0 %–5.3 % (95 % CI 0.0 %–21.1 %)**" \
        in effect
    assert "reserved / used 2.353 → **2.324** (reserved tokens 23,530 → 23,240, -1.2 %)" in effect
    assert body.index("**Effect on") < body.index("### Verdicts")  # at the top, before the details


def test_older_json_without_a_shipped_backtest_says_so_and_invents_nothing() -> None:
    body = _body(LEGACY_CALIBRATION, report())
    assert "**Effect on held-out calls:** unknown" in body
    assert "no column below is exactly what this pull request ships" in body
    assert header(body, "Metric") == ["`current` = today", "`proposed` = full refit (not shipped)",
                                      "`original_median` = original method"]
    assert row(body, "truncation rate") == ["10.0 %", "4.0 %", "30.0 %"]
    assert "`shipped` = this pull request" not in body and "SIMULATED" not in body
    assert "| exact binomial p" not in body and "| evidence |" not in body  # absent keys: no invented rows


# --- verdicts and evidence --------------------------------------------------------------------------


def test_every_changed_coefficient_has_a_verdict_line_with_where_its_guarantee_comes_from() -> None:
    body = _body(CALIBRATION, report())
    verdicts = body[body.index("### Verdicts"):body.index("### Gate")]
    assert ("- ⚠️ `BUDGET_FACTORS[implementation, low]` (none) → 1.42: **ships** — bound: conformal rank 24 of "
            "n = 24 fitted calls of this group, P(true truncation ≤ 2α = 10 %) ≈ 0.81 (distribution-free for "
            "exchangeable calls); confirmed on 19 held-out calls, 0–1 truncated: **thin** (≥ 85 needed to be "
            "evidence)\n  - gate: ships: 0–1 of 19 held-out calls truncated, reserves 2.353 → 2.324 per token used"
            ) in verdicts
    assert ("- ⚠️ `PHASE_OVERHEAD[implementation, low]` 634 → 410: **ships** — bound: conformal rank 24 of n = 24"
            in verdicts)
    assert "  - gate: ships with its group's budget factor (the factor is relative to it)" in verdicts
    assert "- `TOKEN_WEIGHTS` unchanged: no TOKEN_WEIGHTS change proposed by the fit" in verdicts
    assert ("- ⚠️ everything above together: the shipped configuration on all 19 held-out calls: 0–1/19 truncated"
            in verdicts)


def test_a_passed_gate_says_where_the_guarantee_comes_from_beside_thin_evidence() -> None:
    body = _body(CALIBRATION, report())
    gate = body[body.index("### Gate: passed"):body.index("### Proposed changes")]
    assert ("1 group (implementation/low) ships because its budget factor is a bound on its own fitted calls"
            in gate)
    assert ("For one group the held-out check rests on too few calls (19; 85 are needed) to confirm the "
            "guarantee: ⚠️ thin evidence means unconfirmed, not failed.") in gate


def test_a_step_toward_alpha_says_it_is_safe_what_it_should_do_and_what_it_costs() -> None:
    data = calibration()
    data["groups"][0].update(gate_direction="raise", step_toward_alpha={
        "n": 24, "today_truncations": 6, "expected_truncation": 0.0417, "expected_method": "Kaplan–Meier",
        "price_tokens": 5100, "sized_by": "step limit ×2", "verdict": "step toward α: 6/24 cut today"})
    body = _body(data, report())
    assert ("- ⚠️ `BUDGET_FACTORS[implementation, low]` (none) → 1.42: **step toward α** — bound: none needed to be "
            "safe — no call's ceiling falls, so its truncation can only fall (6 of its 24 calls cut today), sized by "
            "step limit ×2; expected truncation after it 4.17 % (Kaplan–Meier); price +5,100 reserved tokens on "
            "those calls; confirmed on 19 held-out calls, 0–1 truncated: **thin**") in body
    assert "  - gate: ships: 0–1 of 19 held-out calls truncated" in body
    assert ("1 group (implementation/low) truncates above α today and gets a step toward α, safe without an "
            "assumption because no call's ceiling falls") in body


def test_enough_held_out_calls_is_not_flagged() -> None:
    data = calibration()
    held = data["backtest"]["groups"][0]
    held.update(n=120)
    held["shipped"]["evidence"] = True
    body = _body(data, report())
    assert ("- ✅ `BUDGET_FACTORS[implementation, low]` (none) → 1.42: **ships** — bound: conformal rank 24 of "
            "n = 24 fitted calls of this group, P(true truncation ≤ 2α = 10 %) ≈ 0.81 (distribution-free for "
            "exchangeable calls); confirmed on 120 held-out calls, 0–1 truncated\n") in body
    assert ". There are enough held-out calls for the held-out check to be evidence." in body


def test_without_an_evidence_flag_the_held_out_count_decides() -> None:
    data = calibration()
    held = data["backtest"]["groups"][0]
    held["n"] = 90
    assert "confirmed on 90 held-out calls, 0–1 truncated\n" in _body(data, report())  # ≥ 85 (metadata)
    held["n"] = 12
    assert "confirmed on 12 held-out calls, 0–1 truncated: **thin** (≥ 85 needed to be evidence)" in _body(
        data, report())
    del data["metadata"]["min_evidence_calls"]  # an older file: the conformal minimum 1/α − 1 is all we know
    assert "12 held-out calls, 0–1 truncated: **thin** (≥ 19 needed to be evidence)" in _body(data, report())


def test_a_verdict_without_its_group_falls_back_to_the_changes_own_backtest() -> None:
    data = calibration(groups=[])
    data["backtest"]["groups"] = []
    body = _body(data, report())
    assert ("- ⚠️ `BUDGET_FACTORS[implementation, low]` (none) → 1.42: ships: 0–1 of 19 held-out calls truncated, "
            "reserves 2.353 → 2.324 per token used — confirmed on 19 held-out calls, 0–1 truncated: **thin** (≥ 85 "
            "needed to be evidence) (n = 24)") in body


def test_shared_weights_get_their_gate_verdict() -> None:
    body = _body(with_weights("whole configuration: 0/19 truncations, reserves 2.35 → 2.31"), report())
    assert ("- ✅ `TOKEN_WEIGHTS` (shared: moves the prediction of every group, calibrated or not) `backend/new` "
            "2000 → 1800: whole configuration: 0/19 truncations, reserves 2.35 → 2.31") in body
    assert "`TOKEN_WEIGHTS` change too, so every group's prediction moves." in body


def test_a_weights_change_without_a_verdict_is_flagged() -> None:
    body = _body(with_weights(None), report())
    assert "- ⚠️ `TOKEN_WEIGHTS` (shared" in body and "**no gate verdict in the calibration output**" in body


def test_an_adaptive_curve_is_one_verdict_line_per_group_and_settings_are_shared() -> None:
    data = calibration()
    bf = data["proposed_changes"][0]
    for level, factor in (("alpha=0.0100", 2.1), ("alpha=0.0500", 1.42), ("alpha=0.2000", 1.1)):
        data["proposed_changes"].append({"coefficient": "ADAPTIVE_BUDGET_FACTORS", "key": ["implementation/low", level],
                                         "old": None, "new": factor, "category": "implementation",
                                         "complexity": "low", "n": 24, "backtest": bf["backtest"]})
    data["proposed_changes"].append({"coefficient": "ADAPTIVE_SETTINGS", "key": ["aci", "gamma"], "old": None,
                                     "new": 0.005, "category": None, "complexity": None})
    verdicts = _body(data, report()).split("### Verdicts")[1].split("### Gate")[0]
    assert ("- ⚠️ `ADAPTIVE_BUDGET_FACTORS` of `implementation/low` (3 levels: `alpha=0.0100` (none) → 2.1, "
            "`alpha=0.0500` (none) → 1.42, `alpha=0.2000` (none) → 1.1): **ships** — bound: conformal rank 24"
            ) in verdicts
    assert "  - gate: the run-time curve of implementation/low's budget factor" in verdicts
    assert ("- ⚠️ shared setting `ADAPTIVE_SETTINGS[aci, gamma]` (none) → 0.005: **no gate verdict in the "
            "calibration output**") in verdicts
    assert verdicts.count("ADAPTIVE_BUDGET_FACTORS") == 1


def test_drift_methods_are_compared_with_this_pull_request_marked_and_equal_to_the_shipped_backtest() -> None:
    body = _body(CALIBRATION, report())
    assert ("| Method | truncation | worst block | reserved / used | reserve ÷ oracle's | pinball ÷ oracle's |"
            in body)
    this_pr = row(body, "**this pull request (`static`)**")
    assert this_pr == ["0.0 %–5.3 %", "0.0 %", "2.324", "1.04", "1.1"]
    assert [this_pr[0], this_pr[2]] == [row(body, "truncation rate, censoring bounds")[1],
                                        row(body, "reserved / used")[1]]  # the backtest's `shipped` column
    assert row(body, "`aci`") == ["5.3 %", "25.0 %", "2.25", "1.01", "1.1"]
    assert "this pull request's method" not in body and "coincide" not in body
    assert "(all 19 held-out calls; worst of 5 consecutive blocks of equal size), replaying what this pull request " \
           "ships" in body


def test_coinciding_drift_rows_say_why() -> None:
    data = calibration()
    drift = data["backtest"]["calibration_under_drift"]
    for name in ("rolling", "aci"):
        drift["methods"][name] = dict(drift["methods"]["static"])
    drift.update(adapted_calls=2, differs_from_static={"rolling": 1, "aci": 0})
    body = _body(data, report())
    assert ("`static`, `rolling`, `aci` coincide to the figures shown: the adaptive methods move only groups with "
            "a reviewed quantile curve (enough own fitted calls: implementation/low), which have 2 held-out calls "
            "(`rolling` changed 1, `aci` changed 0 of their ceilings): too few calls of feedback to move the factor."
            ) in body


def test_a_method_coinciding_with_this_pull_request_alone_is_explained_too() -> None:
    data = calibration()
    drift = data["backtest"]["calibration_under_drift"]
    drift["methods"]["aci"] = dict(drift["methods"]["static"])
    drift.update(adapted_calls=2, differs_from_static={"rolling": 1, "aci": 0})
    body = _body(data, report())
    assert ("`static`, `aci` coincide to the figures shown: the adaptive methods move only groups with a reviewed "
            "quantile curve (enough own fitted calls: implementation/low), which have 2 held-out calls (`aci` "
            "changed 0 of their ceilings)") in body


def test_an_older_drift_comparison_of_the_full_refit_is_labelled_not_shipped() -> None:
    data = calibration()
    drift = data["backtest"]["calibration_under_drift"]
    del drift["configuration"], drift["this_pull_request"]
    body = _body(data, report())
    assert row(body, "`static`, full refit (not shipped)")[2] == "2.324"
    assert "**this pull request (`static`)**" not in body
    assert "replaying the factors of the full refit (not shipped): this calibration output predates" in body


# --- data source, provenance, glossary -------------------------------------------------------------


def test_simulated_data_is_said_loudly_at_the_top() -> None:
    body = _body(CALIBRATION, report())
    assert body.index("> **SIMULATED DATA.** 120 of 120 samples came from the simulated provider "
                      "(`simulated` / `simulated-v1`)") < body.index("**Effect on")
    assert "- Data: **simulated** (not a real model)" in body


def test_real_data_is_named_without_a_warning() -> None:
    data = calibration()
    data["metadata"]["sources"] = {"simulated": False, "models": [
        {"provider": "anthropic", "model": "claude-sonnet-4-5", "samples": 80, "simulated": False, "share": 0.667},
        {"provider": "openai", "model": "gpt-5", "samples": 40, "simulated": False, "share": 0.333}]}
    body = _body(data, report())
    assert "SIMULATED" not in body
    assert "- Data: real provider calls" in body
    assert "- Providers / models (samples): `anthropic` / `claude-sonnet-4-5`: 80, `openai` / `gpt-5`: 40" in body


def test_an_unknown_source_and_unknown_retries_are_said_to_be_unknown() -> None:
    data = calibration()
    data["metadata"].update(sources={"simulated": None, "models": []}, retries_known=False, retries_excluded=0)
    body = _body(data, report())
    assert "- Data: unknown (the calibration output names no provider or model for its samples)" in body
    assert "- Retries left out of the fit (escalated, or a cut phase run again): not known" in body
    assert "SIMULATED" not in body
    assert "- Data: unknown" in _body(LEGACY_CALIBRATION, report())


def test_code_commit_flow_run_method_and_retries_are_in_the_provenance() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    body = _body(CALIBRATION, report(), code_commit=sha, code_commit_url=f"https://h/acme/commit/{sha}",
                          flow_run_url="http://127.0.0.1:4200/runs/flow-run/6f1e")
    for text in (f"- Code commit (base of this pull request): [`0123456789ab`](https://h/acme/commit/{sha})",
                 "- Flow run: [http://127.0.0.1:4200/runs/flow-run/6f1e](http://127.0.0.1:4200/runs/flow-run/6f1e)",
                 "- Retries left out of the fit (escalated, or a cut phase run again): 7", "- Ceiling method: static",
                 "- Held-out calls needed to carry evidence: 85", "- Largest change of a coefficient per run: ×2.0",
                 "Database id: db-5f1c2a", "Run ids: telemetry-collection-v4", "Samples: 120",
                 "Time span: 2026-11-01T00:00:00Z → 2026-11-25T23:59:59Z",
                 "Report: token_estimator_calibration_20261126_120000.md"):
        assert text in body
    assert "/srv/reports" not in body  # local paths stay local


def test_without_prefect_or_git_there_is_no_flow_run_or_commit_line() -> None:
    body = _body(CALIBRATION, report())
    assert "Flow run" not in body and "Code commit" not in body


def test_jargon_is_explained_once_in_a_glossary() -> None:
    body = _body(CALIBRATION, report())
    start = body.index("<summary>Glossary</summary>")
    glossary = body[start:body.index("</details>", start)]
    for term in ("Kupiec", "pinball loss", "one-sided interval", "exact binomial test", "conformal quantile",
                 "censored"):
        assert f"- **{term}**:" in glossary
        assert body.count(f"- **{term}**:") == 1


# --- the per-group effect: from the estimator files, inline on GitHub -----------------------------


def test_per_group_effect_reads_today_and_shipped_values_from_the_estimator_files() -> None:
    original = FIXTURE_ESTIMATOR.replace("BUDGET_FACTORS: dict[tuple[str, str], float] = {}",
                                         'BUDGET_FACTORS: dict[tuple[str, str], float] = {("tests", "low"): 2.5}')
    data = calibration()
    data["backtest"]["groups"].append(
        {"category": "tests", "complexity": "low", "n": 7,
         "current": {"truncation_rate": 0.0, "reserved_over_used": 3.0},
         "proposed": {"truncation_rate": 0.14, "reserved_over_used": 1.5},
         "shipped": {"truncation_rate": 0.0, "reserved_over_used": 3.0}})
    data["groups"].append(group("tests", "low", n=7, budget_factor=1.9))  # refit, not gated
    edited = apply_proposal(original, data["proposed_changes"], data["metadata"])
    body = _body(data, report(), original_source=original, edited_source=edited)
    assert row(body, "`implementation, low` (changed)") == ["19", "floor & buffer → **1.42**", "634 → **410**",
                                                             "5.3 % → 0.0 %–5.3 %", "2.353 → 2.324"]
    # Not changed by this PR: its factor stays what the file holds, and its shipped backtest is today's.
    assert row(body, "`tests, low`") == ["7", "2.5", "915", "0.0 % → 0.0 %", "3 → 3"]
    # The groups table: the refit's factor beside the one the edited file holds.
    assert row(body, "implementation")[6:8] == ["1.42", "1.42"]
    assert row(body, "tests")[6:8] == ["1.9", "2.5"]


def test_a_body_that_would_not_match_the_edited_estimator_is_refused() -> None:
    edited = apply_proposal(FIXTURE_ESTIMATOR, CALIBRATION["proposed_changes"], CALIBRATION["metadata"])
    wrong = edited.replace('("implementation", "low"): 410,', '("implementation", "low"): 411,')
    with pytest.raises(InputError, match=r"holds 411 for PHASE_OVERHEAD\['implementation', 'low'\]"):
        _body(CALIBRATION, report(), original_source=FIXTURE_ESTIMATOR, edited_source=wrong)


def test_inline_mermaid_chart_on_github_and_none_when_asked_not_to() -> None:
    body = _body(CALIBRATION, report(), inline_chart=True)
    chart = re.search(r"```mermaid\n(.*?)```", body, re.S)
    assert chart is not None
    assert chart.group(1).splitlines() == [
        "xychart-beta",
        '    title "Held-out reserved / used per group: bars today, line this pull request"',
        '    x-axis ["implementation/low"]',
        '    y-axis "reserved / used" 0 --> 2.6',
        "    bar [2.35]",
        "    line [2.32]",
    ]
    assert "```mermaid" not in _body(CALIBRATION, report(), inline_chart=False)


def test_plot_is_embedded_from_the_given_link() -> None:
    body = _body(CALIBRATION, report(), plot_link="../reports/plot 1.png")
    assert "![calibration plot](../reports/plot%201.png)" in body


def test_plot_without_a_link_is_named_not_embedded() -> None:
    body = _body(CALIBRATION, report())
    assert "`token_estimator_calibration_20261126_120000.png` is in the calibration output (not uploaded)" in body
    assert "![" not in body


# --- the changes table, safety ---------------------------------------------------------------------


def test_body_has_one_row_per_change_with_its_evidence() -> None:
    body = _body(CALIBRATION, report())
    assert row(body, "`PHASE_OVERHEAD`") == ["`implementation, low`", "634", "410", "-35.3%", "24", "—", "0.81", "—",
                                             "—", "—"]
    assert row(body, "`BUDGET_FACTORS`") == ["`implementation, low`", "(none)", "1.42", "new entry", "24", "19",
                                             "0.81", "[0.9, 1.3]", "0.0 %–5.3 %", "2.324"]


def test_gate_and_verification_sections() -> None:
    body = _body(CALIBRATION, report())
    assert "### Gate: passed\n\n1 group (implementation/low) ships" in body
    assert "- implementation/low: 0/19 held-out truncations" in body
    assert "Estimator tests: passed (`python -m pytest -q tests/test_token_estimator.py`)" in body


def test_no_secret_reaches_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-token-value-123"
    monkeypatch.setenv("GITHUB_TOKEN", secret)
    data = calibration(gate={"passed": True, "reasons": [f"token {secret} and ghp_{'a' * 36}"]})
    body = _body(data, report())
    assert secret not in body and "ghp_" not in body
    assert "token *** and ***" in body


def test_table_cells_cannot_be_broken_by_data() -> None:
    data = calibration(groups=[group("a|b", "low\nhigh", n=1)])
    body = _body(data, report())
    assert "| a\\|b | low high | 1 |" in body


def test_title_names_version_and_count() -> None:
    # the sample calibration's data is simulated: the title says so first (tests/test_review_reading.py)
    assert pr_title(as_result(CALIBRATION)) == ("[SIMULATED DATA] Calibrate token estimator (autopack-cal-20261126): "
                                                "2 coefficient changes")


def test_a_token_passed_in_is_masked_too() -> None:
    token = "prefect-block-token-value-42"
    data = calibration(gate={"passed": True, "reasons": [f"leaked {token}"]})
    assert token not in _body(data, report(), extra_secrets=[token])


# --- the "not updated" comment ---------------------------------------------------------------------


def test_not_updated_comment_names_the_test_the_assertion_the_values_and_the_change() -> None:
    changes = parse_changes([{"coefficient": "PHASE_OVERHEAD", "key": ["implementation", "low"], "old": 634,
                              "new": 0}])
    failure = TestFailure("tests/test_token_estimator.py::test_tables_are_positive", "assert 0 > 0",
                          (("key", "('implementation', 'low')"), ("value", "0")))
    failed = VerificationReport(
        ok=False, module_file=None, table_checks=(), estimates=(),
        tests=EstimatorTestRun("failed", "python -m pytest", 1, "1 failed", failures=(failure,),
                               output="FAILED tests/test_token_estimator.py::test_tables_are_positive"),
        errors=(failure.one_line(),))
    text = render_not_updated(changes, failed, "ab" * 32, pr_number=3, flow_run_url="http://127.0.0.1:4200/r/1")
    assert "**nothing was pushed**: pull request #3 still shows the previous proposal" in text
    assert "- **Failing test:** `tests/test_token_estimator.py::test_tables_are_positive`" in text
    assert "  - assertion: `assert 0 > 0`" in text
    assert "  - values: `key = ('implementation', 'low')`, `value = 0`" in text
    assert "  - proposed entries matching those values: `PHASE_OVERHEAD[implementation, low]` 634 → 0" in text
    assert "Flow run: [http://127.0.0.1:4200/r/1]" in text
    assert text.rstrip().endswith("<!-- autopack-calibration-not-updated proposal=" + "ab" * 32 + " -->")


def test_the_changes_table_calls_its_interval_the_fitted_values_and_says_new_may_lie_outside() -> None:
    """A bounded step ships between today's value and the fitted one: an interval headed "Interval" beside a New
    outside it read as a contradiction."""
    body = _body(calibration(), report())
    assert "Fitted value's interval" in header(body, "Coefficient")
    table = body.split("### Proposed changes", 1)[1]
    assert table.index("*Fitted value's interval*: ") < table.index("\n### ")
    assert "so **New** may lie outside it" in table
