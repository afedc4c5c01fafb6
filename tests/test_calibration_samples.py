"""What counts as a calibration sample: the truncation rule, escalated retries, the data's source."""

from __future__ import annotations

import math

import numpy as np

from autopack.calibration.samples import (
    build_sample_set,
    columns_from_records,
    escalated_retries,
    is_simulated_source,
    reached_ceiling,
)

from synthetic_telemetry import simulate


def test_reaching_the_ceiling_is_truncated_one_rule_for_scalars_and_arrays() -> None:
    assert reached_ceiling(4096, 4096) is True
    assert reached_ceiling(4095, 4096) is False
    assert reached_ceiling(5000, None) is False and reached_ceiling(5000, 0) is False
    assert reached_ceiling(5000, math.nan) is False
    out = reached_ceiling(np.array([10.0, 11.0, 9.0, 5.0]), np.array([10.0, 10.0, 10.0, math.nan]))
    assert out.tolist() == [True, True, False, False]


def test_a_row_that_reached_its_ceiling_is_censored_even_if_not_flagged() -> None:
    rows = simulate(30, seed=1)
    row = next(r for r in rows if not r["truncated"])
    row["actual_output_tokens"] = row["actual_max_tokens"]  # cut exactly at the ceiling, flags say nothing
    samples = build_sample_set(columns_from_records(rows))
    assert samples.counts["censored"] == sum(r["truncated"] for r in rows) + 1


def test_the_retry_after_an_escalation_is_marked_and_a_later_fresh_execution_is_not() -> None:
    # phase A: attempt 0 truncated and escalated → attempt 1 is the retry; attempt 3 (a fresh execution
    # after the retry also failed, no escalation for attempt 1) is no escalated retry (phase_retries makes it
    # a repeat of the phase's cut call).
    # phase B: attempt 0 truncated without escalation event → attempt 2 is not a retry.
    phase = np.array([0, 0, 0, 1, 1, 2])
    attempt = np.array([0, 1, 3, 0, 2, 5])
    marks = escalated_retries(phase, attempt, np.array([0, 2]), np.array([0, 4]))
    assert marks.tolist() == [False, True, False, False, False, False]


def test_calls_within_a_retry_attempt_are_all_retries_in_any_row_order() -> None:
    phase = np.array([7, 7, 7, 7])
    attempt = np.array([3, 1, 1, 0])  # attempt 1 has two calls; rows not sorted
    assert escalated_retries(phase, attempt, np.array([7]), np.array([0])).tolist() == [False, True, True, False]


def _retries_by_definition(phase: np.ndarray, attempt: np.ndarray, escalated: set[tuple[int, int]]) -> list[bool]:
    """Per row: the phase's largest attempt index below the row's has an escalation event."""
    out = []
    for p, a in zip(phase.tolist(), attempt.tolist(), strict=True):
        earlier = [b for q, b in zip(phase.tolist(), attempt.tolist(), strict=True) if q == p and b < a]
        out.append(bool(earlier) and (p, max(earlier)) in escalated)
    return out


def test_retries_match_their_definition_on_random_phases_with_and_without_escalations() -> None:
    rng = np.random.default_rng(11)
    for _ in range(30):
        n = int(rng.integers(1, 60))
        phase = rng.integers(-3, 6, n) * (2**40)  # wide keys, as the stored 64-bit phase keys are
        attempt = rng.integers(0, 4, n)
        k = int(rng.integers(1, 6))
        esc_phase, esc_attempt = rng.integers(-3, 9, k) * (2**40), rng.integers(0, 4, k)
        escalated = set(zip(esc_phase.tolist(), esc_attempt.tolist(), strict=True))
        got = escalated_retries(phase, attempt, esc_phase, esc_attempt).tolist()
        assert got == _retries_by_definition(phase, attempt, escalated)


def test_the_source_mix_and_the_simulated_flag() -> None:
    rows = simulate(20, seed=2)
    for r in rows[:5]:
        r.update(provider="anthropic", model="claude-sonnet-4")
    for r in rows[5:8]:
        r.update(provider="simulated", model="sim-builder-1")
    samples = build_sample_set(columns_from_records(rows))
    mix = {(m["provider"], m["model"]): (m["samples"], m["simulated"]) for m in samples.sources}
    assert mix[("anthropic", "claude-sonnet-4")] == (5, False)
    assert mix[("simulated", "sim-builder-1")] == (3, True)
    assert sum(n for n, _ in mix.values()) == samples.n
    assert is_simulated_source("simulated", None) and is_simulated_source(None, "my-simulated-model")
    assert not is_simulated_source("openai", "gpt-4o")
