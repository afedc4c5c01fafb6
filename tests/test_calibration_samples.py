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
from autopack.calibration.synthetic import simulate


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
    # after the retry also failed, no escalation for attempt 1) is a first attempt again.
    # phase B: attempt 0 truncated without escalation event → attempt 2 is not a retry.
    phase = np.array([0, 0, 0, 1, 1, 2])
    attempt = np.array([0, 1, 3, 0, 2, 5])
    marks = escalated_retries(phase, attempt, np.array([0, 2]), np.array([0, 4]))
    assert marks.tolist() == [False, True, False, False, False, False]


def test_calls_within_a_retry_attempt_are_all_retries_in_any_row_order() -> None:
    phase = np.array([7, 7, 7, 7])
    attempt = np.array([3, 1, 1, 0])  # attempt 1 has two calls; rows not sorted
    assert escalated_retries(phase, attempt, np.array([7]), np.array([0])).tolist() == [False, True, True, False]


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
