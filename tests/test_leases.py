"""Claims and leases: atomic under concurrency, expiring for dead workers, and guarding results and keys."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from test_drain_batch_support import make_run, phase_rows, set_phase

from autopack.db.engine import get_sessionmaker, session_scope
from autopack.db.models import TokenEstimationV2Event, utcnow
from autopack.execution import leases


def _claim_concurrently(url: str, workers: int, fn) -> list[object]:  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(workers)
    results: list[object] = [None] * workers

    def run(i: int) -> None:
        session = get_sessionmaker(url)()
        try:
            barrier.wait(timeout=30)
            results[i] = fn(session, f"w{i}")
        finally:
            session.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_only_one_of_many_concurrent_claims_on_a_phase_wins(db_url: str) -> None:
    make_run(db_url, "r", ["x"])
    results = _claim_concurrently(db_url, 6, lambda s, owner: leases.claim_phase(s, "r", "p000", owner))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert phase_rows(db_url)[("r", "p000")].lease_owner == winners[0].owner  # type: ignore[attr-defined]


def test_concurrent_claim_next_hands_out_distinct_phases(db_url: str) -> None:
    make_run(db_url, "r", ["x"] * 12)
    results = _claim_concurrently(
        db_url, 4, lambda s, owner: [leases.claim_next(s, owner, lease_seconds=60) for _ in range(3)]
    )
    claims = [c for batch in results for c in batch if c is not None]  # type: ignore[union-attr]
    assert sorted(c.phase_id for c in claims) == sorted({c.phase_id for c in claims})  # no phase twice
    assert len(claims) == 12


def test_expired_lease_is_claimed_again_with_a_new_attempt(db_url: str) -> None:
    make_run(db_url, "r", ["x"])
    with session_scope(db_url) as s:
        first = leases.claim_phase(s, "r", "p000", "dead-worker", lease_seconds=60)
    assert first is not None and first.attempt_index == 0
    with session_scope(db_url) as s:
        assert leases.claim_phase(s, "r", "p000", "other") is None  # live lease: not claimable
    set_phase(db_url, "r", "p000", lease_expires_at=utcnow() - timedelta(seconds=1))
    with session_scope(db_url) as s:
        second = leases.claim_phase(s, "r", "p000", "other")
    assert second is not None and (second.attempt_index, second.initial_state) == (1, "EXECUTING")


def test_result_on_an_expired_lease_is_rejected(db_url: str) -> None:
    make_run(db_url, "r", ["x"])
    with session_scope(db_url) as s:
        claim = leases.claim_phase(s, "r", "p000", "w1", lease_seconds=60)
    assert claim is not None
    set_phase(db_url, "r", "p000", lease_expires_at=utcnow() - timedelta(seconds=1))
    with session_scope(db_url) as s, pytest.raises(leases.LeaseLostError):
        leases.finish_phase(s, "r", "p000", "w1", "COMPLETE")
    with session_scope(db_url) as s, pytest.raises(leases.LeaseLostError):
        leases.heartbeat(s, "r", "p000", "w1")
    assert phase_rows(db_url)[("r", "p000")].state == "EXECUTING"


def test_heartbeat_extends_the_lease(db_url: str) -> None:
    make_run(db_url, "r", ["x"])
    with session_scope(db_url) as s:
        claim = leases.claim_phase(s, "r", "p000", "w1", lease_seconds=5)
    assert claim is not None
    with session_scope(db_url) as s:
        expires = leases.heartbeat(s, "r", "p000", "w1", lease_seconds=600)
    assert expires > claim.expires_at + timedelta(seconds=500)


def test_release_returns_the_phase_without_an_outcome(db_url: str) -> None:
    make_run(db_url, "r", ["x"])
    set_phase(db_url, "r", "p000", state="FAILED")
    with session_scope(db_url) as s:
        assert leases.claim_phase(s, "r", "p000", "w1") is not None
    with session_scope(db_url) as s:
        assert leases.release(s, "r", "p000", "w1", state="FAILED")
    phase = phase_rows(db_url)[("r", "p000")]
    assert (phase.state, phase.lease_owner, phase.completed_at) == ("FAILED", None, None)


def _event(attempt: int, call: int = 0) -> TokenEstimationV2Event:
    return TokenEstimationV2Event(
        run_id="r", phase_id="p000", attempt_index=attempt, call_index=call, category="implementation",
        complexity="low", predicted_output_tokens=1, actual_output_tokens=1, selected_budget=1, success=True,
        truncated=False,
    )


def test_a_sample_key_can_be_written_only_once(db_url: str) -> None:
    make_run(db_url, "r", ["x"])
    with session_scope(db_url) as s:
        s.add(_event(0))
    with pytest.raises(IntegrityError), session_scope(db_url) as s:
        s.add(_event(0))


def test_new_attempt_starts_past_recorded_samples(db_url: str) -> None:
    """An adopted legacy phase can have samples at attempts 0..1 while its counter says 0."""
    make_run(db_url, "r", ["x"])
    with session_scope(db_url) as s:
        s.add_all([_event(0), _event(1)])
    with session_scope(db_url) as s:
        claim = leases.claim_phase(s, "r", "p000", "w1")
    assert claim is not None and claim.attempt_index == 2
    with session_scope(db_url) as s:
        assert leases.reserve_attempt(s, "r", "p000", "w1") == 3  # an escalated retry continues from there
    assert phase_rows(db_url)[("r", "p000")].builder_attempts == 4


def test_rerun_after_a_dead_worker_never_reuses_its_keys(db_url: str) -> None:
    make_run(db_url, "r", ["x"])
    with session_scope(db_url) as s:
        dead = leases.claim_phase(s, "r", "p000", "dead", lease_seconds=60)
    assert dead is not None
    with session_scope(db_url) as s:
        s.add(_event(dead.attempt_index))  # it wrote a sample, then died
    set_phase(db_url, "r", "p000", lease_expires_at=utcnow() - timedelta(seconds=1))
    with session_scope(db_url) as s:
        again = leases.claim_phase(s, "r", "p000", "alive")
    assert again is not None and again.attempt_index != dead.attempt_index
    with session_scope(db_url) as s:
        s.add(_event(again.attempt_index))
    with session_scope(db_url) as s:
        keys = s.execute(sa.select(TokenEstimationV2Event.attempt_index)).scalars().all()
    assert sorted(keys) == [0, 1]


def test_a_phase_being_claimed_elsewhere_is_skipped_not_waited_for(db_url: str) -> None:
    """PostgreSQL: claim_phase reads the row FOR UPDATE SKIP LOCKED, so a row another drain holds is passed over."""
    if not db_url.startswith("postgresql"):
        pytest.skip("row locks: PostgreSQL only (SQLite serialises writers)")
    from autopack.db.engine import get_engine

    make_run(db_url, "r", ["x"])
    with get_engine(db_url).connect() as other:
        other.execute(sa.text("SELECT 1 FROM phases WHERE run_id = 'r' FOR UPDATE"))  # another drain mid-claim
        with session_scope(db_url) as s:
            s.execute(sa.text("SET LOCAL lock_timeout = '5s'"))  # waiting would fail the test, not hang it
            assert leases.claim_phase(s, "r", "p000", "w1") is None
        other.rollback()
    with session_scope(db_url) as s:
        assert leases.claim_phase(s, "r", "p000", "w1") is not None  # free again
