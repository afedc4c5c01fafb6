"""autopack.calibration.story: the words the report and the PR body share, from the calibration JSON alone."""

from __future__ import annotations

from autopack.calibration.story import Confirmation, Guarantee, VerdictKind, drift_table, gate_sentence


def test_a_conformal_factor_names_its_rank_its_fitted_calls_and_its_probability() -> None:
    group = {"factor_method": "km_conformal", "factor_pool_n": 50, "factor_rank": 49, "confidence": 0.9662, "n": 52}
    assert Guarantee.of(group, 0.05).text() == (
        "bound: conformal rank 49 of n = 50 fitted calls of this group, P(true truncation ≤ 2α = 10 %) ≈ 0.97 "
        "(distribution-free for exchangeable calls)")


def test_a_factor_resting_on_an_assumption_says_so_and_claims_no_probability_it_lacks() -> None:
    tail = {"factor_method": "km_conformal", "factor_pool_n": 40, "confidence": None,
            "assumption": "censoring independent of length"}
    assert Guarantee.of(tail, 0.05).text() == ("bound: km_conformal on n = 40 fitted calls of this group, no "
                                               "probability claimed, only if censoring independent of length")
    normal = {"factor_method": "small_group_bound", "factor_pool_n": 8, "confidence": 0.9,
              "assumption": "log ratios are normal"}
    assert "P(true truncation ≤ 2α = 10 %) ≈ 0.90, only if log ratios are normal" in Guarantee.of(normal, 0.05).text()


def test_confirmation_counts_held_out_calls_and_flags_too_few() -> None:
    assert Confirmation.of({"n": 2, "truncations": 0, "truncations_upper": 0, "evidence": False}, 85).text() == (
        "confirmed on 2 held-out calls, 0 truncated: **thin** (≥ 85 needed to be evidence)")
    assert Confirmation.of({"n": 120, "truncations": 3, "truncations_upper": 5}, 85).text() == (
        "confirmed on 120 held-out calls, 3–5 truncated")
    assert Confirmation.of({"n": 0}, 85).text() == "not confirmed: no held-out calls"
    said = Confirmation.of({"n": 30, "evidence": "too few held-out calls for this group"}, 85)
    assert said.thin and said.text().endswith("**thin** (too few held-out calls for this group)")


def test_every_verdict_kind_has_its_label() -> None:
    assert [kind.label for kind in VerdictKind] == ["ships", "step toward α", "not shipped"]
    assert [kind.ships for kind in VerdictKind] == [True, True, False]


def test_a_gate_that_did_not_pass_says_nothing_ships() -> None:
    assert gate_sentence({"gate": {"passed": False}}) == "Nothing ships: no change passed the gate (reasons below)."


def test_no_drift_comparison_is_no_table() -> None:
    assert drift_table({}) is None and drift_table({"calibration_under_drift": {"methods": {}}}) is None
