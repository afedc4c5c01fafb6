"""Adaptive budgets at run time: the level in the database, moved by the one telemetry recorder.

Every test runs on SQLite and PostgreSQL (``db_url``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import sqlalchemy as sa

from autopack import token_estimator as te
from autopack.db.engine import session_scope
from autopack.db.handle import database_at
from autopack.db.models import AdaptiveBudgetState, TokenEstimationV2Event
from autopack.execution.batch import BatchDrain, BatchOptions
from autopack.execution.batch_workers import InlineExecutor
from autopack.execution.runs import create_run
from autopack.execution.spec import PhaseSpec, RunSpec
from autopack.llm.base import LLMResponse
from autopack.telemetry import CallKey, TelemetryWriteError, record_call
from autopack.telemetry.adaptive_state import apply_feedback, level_reader, read_level

GROUP = ("implementation", "low")
FINGERPRINT = "a" * 16


def use(fingerprint: str = FINGERPRINT, *, gamma: float = 0.01, raw_ceiling: int = 1000) -> te.AdaptiveUse:
    return te.AdaptiveUse(GROUP, 0.05, 2.0, raw_ceiling, 0.05, gamma, 0.01, 0.1, fingerprint)


def feed(url: str, u: te.AdaptiveUse, err: int) -> None:
    with session_scope(url) as session:
        apply_feedback(session, u, err)


def state(url: str) -> AdaptiveBudgetState | None:
    with session_scope(url) as session:
        return session.get(AdaptiveBudgetState, GROUP)


def test_a_group_without_finished_calls_has_no_level(db_url: str) -> None:
    assert level_reader(database_at(db_url))(GROUP) is None


def test_database_update_equals_the_rule_on_a_known_stream(db_url: str) -> None:
    errs = [0, 0, 1, 0, 1, 1, 1, 1, 1, 0]
    expected, alpha = [], 0.05
    for err in errs:
        alpha = te.aci_step(alpha, err, 0.05, 0.01, 0.01, 0.1)
        expected.append(alpha)
    seen = []
    for err in errs:
        feed(db_url, use(), err)
        level = level_reader(database_at(db_url))(GROUP)
        assert level is not None
        seen.append(level.alpha_t)
    assert seen == pytest.approx(expected, abs=1e-12)
    row = state(db_url)
    assert row is not None and (row.n_feedback, row.n_truncated) == (10, 6)
    assert min(seen) == 0.01  # clipped at the curve's smallest level


def test_a_new_reviewed_curve_restarts_the_level_from_the_target(db_url: str) -> None:
    for _ in range(3):
        feed(db_url, use(), 1)
    feed(db_url, use("b" * 16), 0)
    row = state(db_url)
    assert row is not None and row.curve_fingerprint == "b" * 16
    assert row.alpha_t == pytest.approx(0.05 + 0.01 * 0.05) and (row.n_feedback, row.n_truncated) == (1, 0)


WORKER = """
import sys
from autopack.db.engine import session_scope
from autopack.telemetry.adaptive_state import apply_feedback
from autopack.token_estimator import AdaptiveUse
url, n = sys.argv[1], int(sys.argv[2])
use = AdaptiveUse(("implementation", "low"), 0.05, 2.0, 1000, 0.05, 0.001, 0.001, 0.5, "c" * 16)
print("ready", flush=True)
sys.stdin.readline()
for _ in range(n):
    with session_scope(url) as session:
        apply_feedback(session, use, 0)
print("done", flush=True)
"""


def test_concurrent_updates_from_two_processes_lose_nothing(db_url: str) -> None:
    n = 60
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, db_url, str(n)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:  # both start their loops together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    row = state(db_url)
    assert row is not None and row.n_feedback == 2 * n
    assert row.alpha_t == pytest.approx(0.05 + 2 * n * 0.001 * 0.05, abs=1e-9)


# --- through the recorder --------------------------------------------------------------------------------


def adaptive_coefficients(gamma: float = 0.01) -> te.Coefficients:
    curve = te.AdaptiveCurve((0.01, 0.025, 0.05, 0.1), (0.9, 0.5, 0.3, 0.2))
    return te.Coefficients(
        version="test", phase_overhead=te.PHASE_OVERHEAD, token_weights=te.TOKEN_WEIGHTS,
        base_budgets=te.BASE_BUDGET_BY_CATEGORY, budget_factors={GROUP: 0.3}, adaptive_curves={GROUP: curve},
        adaptive_target=0.05, adaptive_gamma=gamma,
    )


FEATURES = te.PhaseFeatures(category="implementation", complexity="low", deliverables=("src/a.py",))


def response(output: int, *, truncated: bool = False) -> LLMResponse:
    return LLMResponse(text="x", provider="simulated", model="sim", max_tokens=output, input_tokens=10,
                       output_tokens=output, stop_reason="max_tokens" if truncated else "end_turn",
                       finish_reason="length" if truncated else "stop", truncated=truncated)


def test_recorder_moves_the_level_once_per_recorded_call(db_url: str) -> None:
    est, decision = te.plan_call(FEATURES, adaptive_coefficients())
    assert decision.adaptive is not None
    key = CallKey("run-a", "p1", 0, 0)
    for _ in range(2):  # the second write is a retry of the same call: no second update
        record_call(key, FEATURES, est, decision, response(decision.actual_max_tokens, truncated=True),
                    success=False, db=database_at(db_url))
    row = state(db_url)
    assert row is not None and (row.n_feedback, row.n_truncated) == (1, 1)
    assert row.alpha_t == pytest.approx(0.05 - 0.01 * 0.95)


def test_recorder_skips_escalated_retries_and_failed_untruncated_calls(db_url: str) -> None:
    coeffs = adaptive_coefficients()
    est, first = te.plan_call(FEATURES, coeffs)
    _, retry = te.plan_call(FEATURES, coeffs, escalated_to=50000)
    record_call(CallKey("run-a", "p1", 1, 0), FEATURES, est, retry, response(800), success=True, db=database_at(db_url))
    record_call(CallKey("run-a", "p2", 0, 0), FEATURES, est, first, response(100), success=False, db=database_at(db_url))
    assert state(db_url) is None


def test_state_update_shares_the_telemetry_rows_transaction(db_url: str) -> None:
    est, decision = te.plan_call(FEATURES, adaptive_coefficients())
    with session_scope(db_url) as session:
        session.execute(sa.text("DROP TABLE adaptive_budget_state"))
    with pytest.raises(TelemetryWriteError):
        record_call(CallKey("run-a", "p1", 0, 0), FEATURES, est, decision, response(100), success=True, db=database_at(db_url))
    with session_scope(db_url) as session:
        assert session.execute(sa.select(sa.func.count()).select_from(TokenEstimationV2Event)).scalar_one() == 0


# --- end to end: a drain of simulated phases -------------------------------------------------------------

RUN = "adaptive-run"
ALPHA_IN_DETAIL = re.compile(r"alpha_t=([0-9.]+)")


def test_a_drain_moves_the_level_and_later_phases_plan_with_it(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the reviewed part: a deliberately tight factor, so the simulated builder's outputs truncate
    monkeypatch.setattr(te, "BUDGET_FACTORS", {GROUP: 0.3})
    monkeypatch.setattr(te, "ADAPTIVE_BUDGET_FACTORS", {
        ("implementation/low", "alpha=0.0100"): 0.9, ("implementation/low", "alpha=0.0250"): 0.5,
        ("implementation/low", "alpha=0.0500"): 0.3, ("implementation/low", "alpha=0.1000"): 0.2,
    })
    monkeypatch.setattr(te, "ADAPTIVE_SETTINGS", {("aci", "target_alpha"): 0.05, ("aci", "gamma"): 0.01})
    phases = [PhaseSpec(phase_id=f"p{i}", description=f"Write helper module {i}.", category="implementation",
                        complexity="low", deliverables=[f"pkg/helper_{i}.py"]) for i in range(5)]
    with session_scope(db_url) as session:
        create_run(session, RunSpec(run_id=RUN, phases=phases))

    BatchDrain(BatchOptions(run_ids=[RUN], batch_size=5, max_attempts_per_phase=1),
               executor=InlineExecutor(workers=1), database=database_at(db_url)).run()

    with session_scope(db_url) as session:
        events = list(session.execute(sa.select(TokenEstimationV2Event).order_by(TokenEstimationV2Event.id))
                      .scalars())
    # each phase ran once (max_attempts_per_phase=1): its first attempt is its lowest attempt index; an
    # escalated retry after it feeds nothing back (its ceiling was not the adaptive factor's choice alone)
    first_index = {}
    for e in events:
        first_index[e.phase_id] = min(first_index.get(e.phase_id, e.attempt_index), e.attempt_index)
    first = []
    for e in events:
        if e.attempt_index == first_index[e.phase_id]:
            (detail,) = [c["detail"] for c in json.loads(e.ceiling_contributions_json) if c["name"] == "adaptive"]
            first.append((e, float(ALPHA_IN_DETAIL.search(detail).group(1))))  # type: ignore[union-attr]
    assert len(first) == 5
    # each first attempt was planned at the level the earlier ones left (the drain runs them one by one)
    alpha, fed = 0.05, 0
    for e, planned_at in first:
        assert planned_at == pytest.approx(alpha, abs=5e-5)
        if e.success or e.truncated:
            err = int(e.truncated or e.actual_output_tokens >= e.actual_max_tokens)
            alpha = te.aci_step(alpha, err, 0.05, 0.01, 0.01, 0.1)
            fed += 1
    row = state(db_url)
    assert row is not None and row.n_feedback == fed and row.alpha_t == pytest.approx(alpha, abs=1e-12)
    assert row.n_truncated >= 1 and row.alpha_t < 0.05  # the tight factor truncated: the level moved down
    ceilings = [e.actual_max_tokens for e, _ in first]
    assert ceilings[-1] > ceilings[0]  # ... and later phases got more room, within the reviewed curve
    assert max(ceilings) <= 0.9 * first[0][0].predicted_output_tokens + 1
    with session_scope(db_url) as session:
        assert read_level(session, ("tests", "low")) is None  # other groups untouched


def test_runtime_through_the_database_sets_the_ceilings_the_backtest_replays(db_url: str) -> None:
    import numpy as np

    from autopack.calibration import drift

    coeffs = adaptive_coefficients(gamma=0.02)
    curve = coeffs.adaptive_curves[GROUP]
    est = te.estimate(FEATURES, coeffs)
    rng = np.random.default_rng(4)
    lengths = np.round(est.predicted_output_tokens * 0.3 * np.exp(0.4 * rng.standard_normal(60))).astype(int)

    runtime, levels = [], []
    for i, y in enumerate(lengths.tolist()):  # one call at a time: each outcome is known before the next plan
        level = level_reader(database_at(db_url))(GROUP)
        decision = te.decide_ceiling(est, FEATURES, coeffs, adaptive=level)
        assert decision.adaptive is not None
        runtime.append(decision.adaptive.raw_ceiling)
        levels.append(decision.adaptive.alpha_t)
        cut = y >= decision.actual_max_tokens
        record_call(CallKey("run-r", f"p{i}", 0, 0), FEATURES, est, decision,
                    response(min(y, decision.actual_max_tokens), truncated=cut), success=not cut, db=database_at(db_url))

    calls = drift.Stream(np.zeros(60, dtype=int), np.full(60, float(est.predicted_output_tokens)),
                         lengths.astype(float), np.ones(60, dtype=bool), np.arange(60.0))
    replayed, trace = drift.replay_aci(calls, {0: curve}, {}, 0.05, 0.02, drift.Feedback(lag_calls=0))
    assert runtime == replayed.astype(int).tolist()
    assert levels == pytest.approx(trace.alpha_t.tolist(), abs=1e-12)
    assert len(set(runtime)) > 1  # the level did move
