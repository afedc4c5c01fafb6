"""The gate's truncation rule: never more truncations than both today's ceilings and the target."""

from __future__ import annotations

from autopack.calibration.backtest import truncation_not_worse


def test_more_truncations_than_today_and_above_alpha_fails_even_when_kupiec_cannot_reject() -> None:
    assert not truncation_not_worse({"n": 4, "truncations": 1, "kupiec_p": 0.4}, {"truncations": 0}, 0.05)


def test_no_more_truncations_than_today_passes() -> None:
    assert truncation_not_worse({"n": 4, "truncations": 1, "kupiec_p": 0.4}, {"truncations": 1}, 0.05)


def test_a_rate_within_alpha_passes_even_if_today_truncates_less() -> None:
    assert truncation_not_worse({"n": 40, "truncations": 2, "kupiec_p": 0.9}, {"truncations": 0}, 0.05)


def test_no_held_out_calls_fails() -> None:
    assert not truncation_not_worse({"n": 0, "truncations": 0, "kupiec_p": None}, {"truncations": 0}, 0.05)
