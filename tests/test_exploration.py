"""Opt-in exploration: a deterministic share of first attempts sent at the escalation ceiling (decide_ceiling)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from autopack import token_estimator as te
from autopack.config import get_settings
from autopack.db.engine import session_scope
from autopack.db.handle import database_at
from autopack.db.models import TokenEstimationV2Event
from autopack.execution import leases
from autopack.execution.phase_runner import execute_phase
from autopack.execution.runs import create_run
from autopack.execution.spec import PhaseSpec, RunSpec
from autopack.llm.simulated import SimulatedProvider

FEATURES = te.PhaseFeatures(category="implementation", complexity="medium", deliverables=("pkg/list_helper.py",))
CHOSEN = next(e for i in range(1000) if (e := te.Exploration(te.MAX_EXPLORATION_SHARE, f"key-{i}")).chosen)
NOT_CHOSEN = te.Exploration(0.0, CHOSEN.key)


def _decide(**kwargs: object) -> te.CeilingDecision:
    est = te.estimate(FEATURES)
    return te.decide_ceiling(est, FEATURES, **kwargs)  # type: ignore[arg-type]


def _names(decision: te.CeilingDecision) -> list[str]:
    return [c.name for c in decision.contributions]


def test_off_by_default() -> None:
    assert get_settings().explore_share == 0.0
    assert te.Exploration.for_call(0.0, 1, "run", "phase", 0) is None
    assert "exploration" not in _names(_decide())


def test_a_chosen_first_attempt_goes_out_at_the_escalation_ceiling() -> None:
    plain = _decide()
    assert CHOSEN.chosen and not NOT_CHOSEN.chosen
    explored = _decide(explore=CHOSEN)
    retry = te.escalate(selected_budget=plain.selected_budget, actual_max_tokens=plain.actual_max_tokens,
                        tokens_used=0, complexity="medium").retry_max_tokens
    assert explored.actual_max_tokens == retry > plain.actual_max_tokens
    assert explored.selected_budget == plain.selected_budget  # the estimator's intent is unchanged
    assert _names(explored)[-1] == "exploration"
    assert _decide(explore=NOT_CHOSEN).actual_max_tokens == plain.actual_max_tokens


def test_an_escalated_retry_is_never_explored() -> None:
    retry = _decide(escalated_to=20000, explore=CHOSEN)
    assert retry.actual_max_tokens == 20000 and "exploration" not in _names(retry)


def test_the_choice_is_deterministic_and_takes_about_the_share() -> None:
    share, n = 0.1, 5000

    def choices(seed: int) -> list[bool]:
        return [te.Exploration(share, f"{seed}|run|phase-{i}|0").chosen for i in range(n)]

    chosen = choices(7)
    assert chosen == choices(7)
    assert abs(sum(chosen) / n - share) < 4 * (share * (1 - share) / n) ** 0.5
    assert choices(8) != chosen


def test_the_share_is_bounded() -> None:
    with pytest.raises(ValueError, match="exploration share"):
        te.Exploration(te.MAX_EXPLORATION_SHARE + 0.01, "k")
    with pytest.raises(Exception, match="AUTOPACK_EXPLORE_SHARE|explore_share"):
        get_settings(explore_share=0.5)


def test_the_executor_explores_when_the_setting_asks(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With AUTOPACK_EXPLORE_SHARE set, a chosen first attempt is sent (and recorded) at the escalation ceiling."""
    run_id, phase_id = "run-explore", "p1"
    seed = next(s for s in range(1000) if te.Exploration(0.2, f"{s}|{run_id}|{phase_id}|0").chosen)
    monkeypatch.setenv("AUTOPACK_EXPLORE_SHARE", "0.2")
    monkeypatch.setenv("AUTOPACK_EXPLORE_SEED", str(seed))
    spec = RunSpec(run_id=run_id, phases=[PhaseSpec(phase_id=phase_id, description="Write chunk(items, size).",
                                                    category="implementation", complexity="medium",
                                                    deliverables=["pkg/list_helper.py"])])
    with session_scope(db_url) as session:
        create_run(session, spec)
    with session_scope(db_url) as session:
        claim = leases.claim_phase(session, run_id, phase_id, "worker-1")
    assert claim is not None
    execute_phase(run_id, phase_id, claim=claim, db=database_at(db_url), provider=SimulatedProvider(seed=1))
    with session_scope(db_url) as session:
        event = session.execute(sa.select(TokenEstimationV2Event)).scalars().one()
        contributions = json.loads(event.ceiling_contributions_json)
        assert contributions[-1]["name"] == "exploration"
        assert event.actual_max_tokens == int(event.selected_budget * te.ESCALATION_FACTOR)
