"""Drain session state: the triage bookkeeping of ``record`` and the round trip through the database."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from autopack.db.engine import dispose_engines, session_scope
from autopack.db.handle import database_at
from autopack.db.models import DrainResult, DrainSession, utcnow
from autopack.execution.batch_report import format_summary
from autopack.execution.sessions import (
    FINAL_INTERRUPTED,
    STATUS_ABANDONED,
    STATUS_COMPLETED,
    STATUS_INTERRUPTED,
    STATUS_RUNNING,
    DrainOutcome,
    SessionLostError,
    SessionState,
    SessionStore,
    new_session_id,
    strip_url_credentials,
)
from autopack.execution.triage import TriageLimits

LIMITS = TriageLimits(max_fingerprint_repeats=2, max_attempts_per_phase=2, max_timeouts_per_run=2)


def ok(run: str, phase: str, events: int = 1) -> DrainOutcome:
    return DrainOutcome(run, phase, "COMPLETE", True, returncode=0, telemetry_events=events, llm_calls=events)


def fail(run: str, phase: str, error: str = "ImportError: no module foo", rc: int = 1) -> DrainOutcome:
    return DrainOutcome(run, phase, "FAILED", False, returncode=rc, error_message=error, zero_yield_reason="execution_error")


def test_failed_outcome_gets_a_fingerprint() -> None:
    assert fail("r", "p").failure_fingerprint == "FAILED|rc1|importerror: no module foo"
    assert ok("r", "p").failure_fingerprint is None


def test_first_result_of_a_run_samples_it() -> None:
    state = SessionState("s", 10)
    state.record(ok("r", "p0"), LIMITS)
    assert state.sampled_runs == {"r"} and state.promising_runs == {"r"}


def test_sample_with_an_already_seen_fingerprint_deprioritizes_the_run() -> None:
    state = SessionState("s", 10)
    state.record(fail("a", "p0"), LIMITS)
    notes = state.record(fail("b", "p0"), LIMITS)
    assert state.promising_runs == {"a"}
    assert state.deprioritized_runs == {"b"}
    assert any("SAMPLE-SKIP" in n for n in notes)


def test_fingerprint_repeats_stop_the_run() -> None:
    state = SessionState("s", 10)
    state.record(fail("a", "p0", "boom at line 1"), LIMITS)
    assert not state.stopped_runs
    state.record(fail("a", "p1", "boom at line 2"), LIMITS)
    assert state.stopped_runs == {"a"}
    assert state.stopped_fingerprints == {"FAILED|rc1|boom at line num"}
    assert state.fingerprint_counts == {"FAILED|rc1|boom at line num": 2}


def truncated(run: str, phase: str) -> DrainOutcome:
    return DrainOutcome(run, phase, "FAILED", False, returncode=1, failure_stage="truncation", telemetry_events=2,
                        llm_calls=2, error_message="output truncated (max_tokens) at 5000 of 5000 max_tokens")


def test_truncations_have_no_fingerprint_and_never_stop_a_run() -> None:
    state = SessionState("s", 10)
    for i in range(5):
        assert state.record(truncated("a", f"p{i}"), LIMITS) == ([] if i else ["[SAMPLE-OK] a: promising (continue draining)"])
    assert not state.stopped_runs and not state.fingerprint_counts
    assert all(r.failure_fingerprint is None for r in state.results)


def test_fingerprint_stop_rule_counts_per_run() -> None:
    state = SessionState("s", 10)
    state.record(fail("a", "p0", "boom"), LIMITS)
    state.record(fail("b", "p0", "boom"), LIMITS)  # the same fingerprint once in each run: no run stops
    assert not state.stopped_runs and state.fingerprint_counts == {"FAILED|rc1|boom": 2}
    state.record(fail("b", "p1", "boom"), LIMITS)
    assert state.stopped_runs == {"b"} and state.run_fingerprint_count("a", "FAILED|rc1|boom") == 1


def test_counters_and_zero_yield_streak() -> None:
    state = SessionState("s", 10)
    state.record(fail("a", "p0"), LIMITS)
    state.record(DrainOutcome("a", "p1", "TIMEOUT", False, returncode=-1, error_message="t"), LIMITS)
    assert state.consecutive_zero_yield == 2
    state.record(ok("a", "p2", events=3), LIMITS)
    assert state.consecutive_zero_yield == 0
    assert (state.total_processed, state.total_success, state.total_failed, state.total_timeouts) == (3, 1, 2, 1)
    assert state.total_telemetry_events == 3
    assert state.timeouts() == {"a": 1}


def test_interrupted_attempt_is_kept_but_not_counted() -> None:
    state = SessionState("s", 10)
    state.record(DrainOutcome("a", "p0", FINAL_INTERRUPTED, False, returncode=130), LIMITS)
    assert len(state.results) == 1
    assert state.total_processed == 0 and state.attempts() == {} and not state.sampled_runs
    assert state.results[0].failure_fingerprint is None


def test_attempts_per_phase() -> None:
    state = SessionState("s", 10)
    state.record(fail("a", "p0"), LIMITS)
    state.record(fail("a", "p0"), LIMITS)
    assert state.attempts() == {("a", "p0"): 2}


def _busy_state() -> SessionState:
    state = SessionState(new_session_id(), 7, params={"states": ["QUEUED", "FAILED"]}, db_id="abc")
    state.record(fail("a", "p0"), LIMITS)
    state.record(fail("b", "p0"), LIMITS)  # deprioritizes b
    state.record(fail("a", "p1"), LIMITS)  # the fingerprint's second time in run a: stops a
    state.record(ok("c", "p0", events=2), LIMITS)
    state.record(truncated("c", "p2"), LIMITS)  # saved without a fingerprint, loaded back as a truncation
    state.record(DrainOutcome("c", "p1", "TIMEOUT", False, returncode=-1, error_message="timed out after 5s"), LIMITS)
    assert state.sampled_runs and state.promising_runs and state.deprioritized_runs and state.stopped_runs
    return state


def test_dict_round_trip_with_every_set_non_empty() -> None:
    # The original's save() crashed with a TypeError on exactly this state.
    state = _busy_state()
    text = json.dumps(state.to_dict())
    again = SessionState.from_dict(json.loads(text))
    assert again.to_dict() == state.to_dict()


def test_database_round_trip(db_url: str) -> None:
    state = _busy_state()
    store = SessionStore(database_at(db_url))
    store.save(state)
    loaded = store.load(state.session_id)
    assert loaded is not None
    original = state.to_dict()
    restored = loaded.to_dict()
    for result in original["results"] + restored["results"]:
        result.pop("failure_stage")  # not a drain_results column; the zero-yield reason derived from it is
        result.pop("row_id")
    assert restored == original
    assert [r.returncode for r in loaded.results] == [1, 1, 1, 0, 1, -1]
    assert [r.truncation for r in loaded.results] == [False, False, False, False, True, False]


def test_save_twice_writes_each_result_once(db_url: str) -> None:
    state = SessionState(new_session_id(), 5)
    store = SessionStore(database_at(db_url))
    state.record(ok("a", "p0"), LIMITS)
    store.save(state)
    state.record(ok("a", "p1"), LIMITS)
    store.save(state)
    store.save(state)
    loaded = store.load(state.session_id)
    assert loaded is not None and [r.phase_id for r in loaded.results] == ["p0", "p1"]


def claimer(url: str, name: str = "me") -> SessionStore:
    return SessionStore(database_at(url), owner=f"{name}-{os.getpid()}", lease_seconds=60)


def test_claim_resumable_takes_the_newest_unfinished(db_url: str) -> None:
    store = SessionStore(database_at(db_url))
    older = SessionState("batch-drain-20250101-000000-aaaa", 5, status=STATUS_INTERRUPTED)
    newer = SessionState("batch-drain-20250102-000000-bbbb", 5, status=STATUS_INTERRUPTED)
    done = SessionState("batch-drain-20250103-000000-cccc", 5, status=STATUS_COMPLETED)
    newer.started_at = older.started_at.replace(year=older.started_at.year + 1)
    done.started_at = newer.started_at.replace(year=newer.started_at.year + 1)
    done.completed_at = done.started_at
    for s in (older, newer, done):
        store.save(s)
    found = claimer(db_url).claim_resumable()
    assert found is not None and found.session_id == newer.session_id
    assert found.status == STATUS_RUNNING
    again = claimer(db_url, "other").claim_resumable()  # the newer one is held now: the older one is next
    assert again is not None and again.session_id == older.session_id


def test_claim_resumable_skips_a_session_whose_process_is_alive(db_url: str) -> None:
    store = SessionStore(database_at(db_url))
    alive = SessionState(
        "batch-drain-20250101-000000-live",
        5,
        status=STATUS_RUNNING,
        params={"process": {"host": socket.gethostname(), "pid": os.getpid()}},
    )
    store.save(alive)
    assert claimer(db_url).claim_resumable() is None


def test_claim_resumable_takes_a_running_session_whose_process_died(db_url: str) -> None:
    dead = SessionState(
        "batch-drain-20250101-000000-dead",
        5,
        status=STATUS_RUNNING,
        params={"process": {"host": socket.gethostname(), "pid": 2**22 + 12345}},
    )
    SessionStore(database_at(db_url), owner="dead-drain", lease_seconds=600).save(dead)  # its lease has not expired yet
    found = claimer(db_url).claim_resumable()
    assert found is not None and found.session_id == dead.session_id


def test_claim_resumable_takes_a_session_whose_lease_expired(db_url: str) -> None:
    remote = SessionState(
        "batch-drain-20250101-000000-gone",
        5,
        status=STATUS_RUNNING,
        params={"process": {"host": "another-host", "pid": 1}},
    )
    held = SessionStore(database_at(db_url), owner="remote-drain", lease_seconds=600)
    held.save(remote)
    assert claimer(db_url).claim_resumable() is None  # another host, lease running: held
    with session_scope(db_url) as db:
        db.execute(sa.update(DrainSession).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    found = claimer(db_url).claim_resumable()
    assert found is not None and found.session_id == remote.session_id
    remote.record(ok("a", "p9"), LIMITS)
    with pytest.raises(SessionLostError):  # the old owner must not write to it any more
        held.save(remote)


def _dead_drains_session(url: str, name: str = "batch-drain-20250101-000000-dead") -> SessionState:
    """A session saved by a drain that then died: its owner lease has run out."""
    state = SessionState(name, 5, status=STATUS_RUNNING, params={"process": {"host": "another-host", "pid": 1}})
    SessionStore(database_at(url), owner="dead-drain", lease_seconds=600).save(state)
    with session_scope(url) as db:
        db.execute(sa.update(DrainSession).where(DrainSession.id == name)
                   .values(lease_expires_at=utcnow().replace(microsecond=0) - timedelta(minutes=5)))
    return state


def test_a_session_whose_owner_lease_expired_is_shown_abandoned_with_the_time_it_expired(db_url: str) -> None:
    dead = _dead_drains_session(db_url)
    live = SessionState(new_session_id(), 5, status=STATUS_RUNNING)
    SessionStore(database_at(db_url), owner="live-drain", lease_seconds=600).save(live)
    store = SessionStore(database_at(db_url))
    shown_dead, shown_live = store.load(dead.session_id), store.load(live.session_id)
    assert shown_dead is not None and shown_live is not None
    assert (shown_dead.status, shown_dead.shown_status(), shown_live.shown_status()) == (
        STATUS_RUNNING, STATUS_ABANDONED, STATUS_RUNNING)
    expired = shown_dead.lease_expires_at
    assert expired is not None
    assert f"Status: abandoned (owner lease expired at {expired.isoformat(timespec='seconds')})" in (
        format_summary(shown_dead).splitlines())
    assert "Status: running" in format_summary(shown_live).splitlines()


def test_marking_abandoned_sessions_stores_the_status_and_leaves_live_ones(db_url: str) -> None:
    dead = _dead_drains_session(db_url)
    live = SessionState(new_session_id(), 5, status=STATUS_RUNNING)
    SessionStore(database_at(db_url), owner="live-drain", lease_seconds=600).save(live)
    marked = claimer(db_url).mark_abandoned(noticed_by="new-drain")
    assert [session_id for session_id, _ in marked] == [dead.session_id]
    loaded = SessionStore(database_at(db_url)).load(dead.session_id)
    assert loaded is not None and loaded.status == STATUS_ABANDONED
    assert (loaded.stop_reason or "").startswith("owner lease expired at ")
    assert (loaded.stop_reason or "").endswith("; noticed by drain new-drain")
    assert format_summary(loaded).count("Status: abandoned (owner lease expired at ") == 1
    again = SessionStore(database_at(db_url)).load(live.session_id)
    assert again is not None and again.status == STATUS_RUNNING


def test_resuming_an_abandoned_session_records_the_take_over(db_url: str) -> None:
    dead = _dead_drains_session(db_url)
    claimer(db_url).mark_abandoned(noticed_by="new-drain")
    found = claimer(db_url).claim_resumable()
    assert found is not None and found.session_id == dead.session_id and found.status == STATUS_RUNNING
    (entry,) = found.params["taken_over"]
    with session_scope(db_url) as db:
        expired = db.execute(sa.select(DrainSession.stop_reason).where(DrainSession.id == dead.session_id)).scalar_one()
    assert entry["status"] == STATUS_ABANDONED and f"owner lease expired at {entry['lease_expired_at']}" in expired


def _claim_in_process(url: str, name: str, start: Any, out: Any) -> None:
    store = SessionStore(database_at(url), owner=f"{name}-{os.getpid()}", lease_seconds=60)
    out.put((name, "ready"))
    start.wait(60)
    found = store.claim_resumable()
    out.put((name, found.session_id if found else None))
    dispose_engines()


def test_two_processes_resuming_at_once_never_get_the_same_session(db_url: str) -> None:
    SessionStore(database_at(db_url)).save(SessionState(new_session_id(), 8, status=STATUS_INTERRUPTED))
    context = multiprocessing.get_context("spawn")
    for _ in range(3):  # three rounds, each on a fresh interrupted session
        start, out = context.Event(), context.Queue()
        processes = [context.Process(target=_claim_in_process, args=(db_url, f"p{i}", start, out)) for i in range(2)]
        for process in processes:
            process.start()
        assert [out.get(timeout=120)[1] for _ in processes] == ["ready", "ready"]
        start.set()  # both are at the start line: release them together
        claimed = [out.get(timeout=120)[1] for _ in processes]
        for process in processes:
            process.join(60)
        assert sorted(claimed, key=str) == sorted([None, claimed[0] or claimed[1]], key=str)  # exactly one winner
        with session_scope(db_url) as db:
            db.execute(sa.update(DrainSession).values(completed_at=utcnow()))
        SessionStore(database_at(db_url)).save(SessionState(new_session_id(), 8, status=STATUS_INTERRUPTED))


def test_urls_lose_their_credentials_before_they_are_stored(db_url: str) -> None:
    state = SessionState(new_session_id(), 5, params={"api_url": "http://user:s3cr3t@127.0.0.1:8000/x?token=s3cr3t&a=1",
                                                    "nested": ["https://:s3cr3t@host/"]})
    state.record(fail("a", "p0", error="cannot reach http://user:s3cr3t@127.0.0.1:9/health"), LIMITS)
    SessionStore(database_at(db_url)).save(state)
    with session_scope(db_url) as db:
        session = db.get(DrainSession, state.session_id)
        result = db.scalars(sa.select(DrainResult)).one()
        stored = json.dumps(session.params) + (result.error_message or "")
    assert "s3cr3t" not in stored
    assert session.params["api_url"] == "http://127.0.0.1:8000/x?token=%2A%2A%2A&a=1"
    assert "http://127.0.0.1:9/health" in (result.error_message or "")


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("http://user:pw@host:1/p", "http://host:1/p"),
        ("see https://host/p?api_key=k1&x=2 now", "see https://host/p?api_key=%2A%2A%2A&x=2 now"),
        ("postgresql://u:p@db/x and http://h/", "postgresql://db/x and http://h/"),
        ("postgresql://u:p@ss/w0rd@db/x", "postgresql://db/x"),  # a raw '@' and '/' in the password
        ("https://github.com/o/r@v1", "https://github.com/o/r@v1"),  # an '@' in a path is no userinfo
        ("no url here", "no url here"),
    ],
)
def test_strip_url_credentials(text: str, clean: str) -> None:
    assert strip_url_credentials(text) == clean
