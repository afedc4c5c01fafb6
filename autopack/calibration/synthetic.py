"""Synthetic telemetry for tests and benchmarks: rows shaped exactly like the recorder's.

A phase's true output length is log-normal around ``base[group] + Σ per_kind[kind]`` (deliberately not the
estimator's coefficients). Each phase is called with the ceiling ``decide_ceiling`` chooses; a call whose
true length exceeds its ceiling is recorded truncated (output = ceiling) and escalated once (×1.25), like
the executor does, so the data carry censoring and retries.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from autopack import token_estimator as te

#: A phase spec: (category, complexity, deliverables)
Spec = tuple[str, str, tuple[str, ...]]

DEFAULT_SPECS: tuple[Spec, ...] = (
    ("implementation", "low", ("src/string_helper.py",)),
    ("implementation", "low", ("src/number_helper.py",)),
    ("implementation", "medium", ("src/list_helper.py",)),
    ("implementation", "medium", ("src/date_helper.py", "src/dict_helper.py")),
    ("tests", "low", ("tests/test_number_helper.py",)),
    ("tests", "medium", ("tests/test_string_helper.py", "tests/conftest.py")),
    ("docs", "low", ("README.md",)),
    ("docs", "medium", ("docs/USAGE.md",)),
)


@dataclass
class Truth:
    base: Mapping[tuple[str, str], float] = field(
        default_factory=lambda: {
            ("implementation", "low"): 250, ("implementation", "medium"): 700, ("tests", "low"): 700,
            ("tests", "medium"): 1600, ("docs", "low"): 1500, ("docs", "medium"): 2600,
        }
    )
    per_kind: Mapping[str, float] = field(
        default_factory=lambda: {"backend": 1350, "test": 1700, "doc": 1300, "config": 450, "frontend": 2200}
    )
    sigma: float = 0.3
    default_base: float = 1500.0

    def median(self, features: te.PhaseFeatures, est: te.Estimate) -> float:
        base = self.base.get(est.group, self.default_base)
        category = est.category
        return base + sum(
            self.per_kind.get(te.deliverable_kind(te.deliverable_path(d), category), 1000.0)
            for d in features.deliverables
        )


def simulate(
    n_phases: int,
    *,
    seed: int = 7,
    specs: Sequence[Spec] = DEFAULT_SPECS,
    truth: Truth | None = None,
    coefficients: te.Coefficients | None = None,
    run_id: str = "synthetic-run",
    start: datetime = datetime(2025, 1, 1, 12, 0, 0),
    spacing_seconds: float = 60.0,
    store_features: bool = True,
    shuffle: bool = True,
) -> list[dict[str, Any]]:
    """``n_phases`` phases drawn from ``specs`` (cycled, optionally shuffled), their calls as event rows."""
    truth = truth or Truth()
    coeffs = coefficients or te.current_coefficients()
    rng = np.random.default_rng(seed)
    order = np.arange(n_phases) % len(specs)
    if shuffle:
        rng.shuffle(order)
    rows: list[dict[str, Any]] = []
    when = start
    for p, spec_index in enumerate(order.tolist()):
        category, complexity, deliverables = specs[spec_index]
        features = te.PhaseFeatures(category, complexity, tuple(deliverables), description=f"phase {p}")
        est, decision = te.plan_call(features, coeffs)
        true_len = truth.median(features, est) * math.exp(truth.sigma * rng.standard_normal())
        ceiling = decision.actual_max_tokens
        selected = decision.selected_budget
        for attempt in range(2):
            length = max(1, int(round(true_len * math.exp(0.05 * rng.standard_normal()))))
            truncated = length >= ceiling
            actual = min(length, ceiling)
            rows.append(
                event_row(
                    run_id, f"phase-{p:05d}", attempt, when, features, est, selected, ceiling, actual, truncated,
                    store_features=store_features,
                )
            )
            when += timedelta(seconds=spacing_seconds)
            if not truncated:
                break
            ceiling = te.escalate(selected_budget=selected, actual_max_tokens=ceiling, tokens_used=actual,
                                  complexity=est.complexity).retry_max_tokens
    return rows


def event_row(
    run_id: str,
    phase_id: str,
    attempt: int,
    when: datetime,
    features: te.PhaseFeatures,
    est: te.Estimate,
    selected_budget: int,
    ceiling: int,
    actual: int,
    truncated: bool,
    *,
    store_features: bool = True,
    success: bool | None = None,
) -> dict[str, Any]:
    """One ``token_estimation_v2_events`` row as the recorder writes it."""
    predicted = est.predicted_output_tokens
    return {
        "run_id": run_id,
        "phase_id": phase_id,
        "attempt_index": attempt,
        "call_index": 0,
        "timestamp": when,
        "created_at": when,
        "category": est.category,
        "complexity": est.complexity,
        "deliverable_count": est.deliverable_count,
        "deliverables_json": json.dumps(list(features.deliverables)),
        "features_json": json.dumps(te.features_record(features, est), sort_keys=True) if store_features else None,
        "predicted_output_tokens": predicted,
        "actual_output_tokens": actual,
        "selected_budget": selected_budget,
        "actual_max_tokens": ceiling,
        "success": (not truncated) if success is None else success,
        "truncated": truncated,
        "is_truncated_output": truncated,
        "stop_reason": "max_tokens" if truncated else "end_turn",
        "finish_reason": "length" if truncated else "stop",
        "provider": "synthetic",
        "model": "synthetic-1",
        "smape_percent": 200.0 * abs(predicted - actual) / max(1, predicted + actual),
        "waste_ratio": predicted / actual if actual else None,
        "underestimated": actual > predicted,
        "estimator_version": te.CALIBRATION_VERSION,
        "source": "synthetic",
    }
