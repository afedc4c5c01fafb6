"""The batch drain loop with an injected executor: triage and stop rules, timeouts, crashes, Ctrl-C, resume.

Most tests run the executor inline (fast, same rules); the ones about killing run it in the real executor
processes. The fakes are in ``test_drain_batch_support`` (spawned workers import them by reference).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_drain_batch_support import behaviour, event_keys, fake_execute_phase, make_run, phase_rows, set_phase

from autopack.db.engine import session_scope
from autopack.db.handle import database_at, open_database
from autopack.db.models import DrainResult, DrainSession, Phase, PhaseState, utcnow
from autopack.errors import ConfigError, InputError, RefusedError
from autopack.execution.batch import (
    STOP_BATCH_SIZE,
    STOP_NO_PHASES,
    STOP_ZERO_YIELD,
    BatchDrain,
    BatchOptions,
    DrainInterrupted,
    NullReporter,
    parse_states,
    run_batch_drain,
)
from autopack.execution.batch_report import format_summary, outcome_line
from autopack.execution.batch_workers import InlineExecutor, ProcessExecutor, make_executor
from autopack.execution.sessions import (
    FINAL_INTERRUPTED,
    FINAL_WORKER_LOST,
    STATUS_COMPLETED,
    STATUS_INTERRUPTED,
    SessionState,
    SessionStore,
)
from autopack.execution.triage import ZeroYield

INLINE = "inline"


def drain(url: str, *, isolation: str = INLINE, reporter: Any = None, executor: Any = fake_execute_phase, **opts: Any) -> SessionState:
    options = BatchOptions(**opts)
    return BatchDrain(options, executor=make_executor(isolation, options.workers, executor), reporter=reporter, database=database_at(url)).run()


def drained(state: SessionState) -> list[str]:
    return [f"{r.run_id}/{r.phase_id}" for r in state.results]


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(interval)


def executing(url: str, run_id: str, phase_id: str) -> bool:
    with session_scope(url) as db:
        state = db.execute(sa.select(Phase.state).where(Phase.run_id == run_id, Phase.phase_id == phase_id)).scalar_one()
    return state == PhaseState.EXECUTING


# --- what gets drained ---------------------------------------------------------------------------------


def test_drains_queued_and_failed_phases_by_default(db_url: str) -> None:
    make_run(db_url, "r", [behaviour("ok"), behaviour("ok"), behaviour("ok")])
    set_phase(db_url, "r", "p001", state="FAILED", last_failure_reason="earlier failure")
    state = drain(db_url)
    assert sorted(drained(state)) == ["r/p000", "r/p001", "r/p002"]
    assert {p.state for p in phase_rows(db_url).values()} == {"COMPLETE"}
    assert state.status == STATUS_COMPLETED and state.stop_reason == STOP_NO_PHASES
    assert not state.any_failed


class Messages(NullReporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def test_a_phase_that_used_its_max_builder_attempts_in_earlier_sessions_is_left_and_named(db_url: str) -> None:
    """Before: a phase failing every week was retried by every weekly drain (attempt 14 and counting)."""
    make_run(db_url, "r", [behaviour("ok"), behaviour("ok"), behaviour("ok")])
    set_phase(db_url, "r", "p000", state="FAILED", builder_attempts=3, max_builder_attempts=3)
    set_phase(db_url, "r", "p001", state="FAILED", builder_attempts=2, max_builder_attempts=3)
    set_phase(db_url, "r", "p002", state="QUEUED", builder_attempts=5, max_builder_attempts=3)  # requeued by hand
    reporter = Messages()
    state = drain(db_url, reporter=reporter)
    assert sorted(drained(state)) == ["r/p001", "r/p002"]
    assert phase_rows(db_url)[("r", "p000")].state == "FAILED"
    (line,) = [m for m in reporter.lines if "not drained" in m]
    assert line.startswith("1 phase(s) not drained: r/p000 (3 of 3) used its max_builder_attempts")
    assert "autopack drain one" in line


def test_a_phase_left_executing_by_a_dead_drain_is_taken_back_even_with_its_attempts_used(db_url: str) -> None:
    make_run(db_url, "r", [behaviour("ok")])
    set_phase(db_url, "r", "p000", state="EXECUTING", builder_attempts=3, max_builder_attempts=3,
              lease_owner="dead", lease_expires_at=utcnow() - timedelta(minutes=1))
    assert drained(drain(db_url)) == ["r/p000"]
    assert phase_rows(db_url)[("r", "p000")].state == "COMPLETE"


def test_states_option_limits_what_is_drained(db_url: str) -> None:
    make_run(db_url, "r", [behaviour("ok"), behaviour("ok")])
    set_phase(db_url, "r", "p001", state="FAILED")
    state = drain(db_url, states=("FAILED",))
    assert drained(state) == ["r/p001"]


def test_run_ids_limit_the_scope(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("ok")])
    make_run(db_url, "b", [behaviour("ok")])
    assert drained(drain(db_url, run_ids=["b"])) == ["b/p000"]


def test_skip_run_prefix(db_url: str) -> None:
    make_run(db_url, "legacy-1", [behaviour("ok")])
    make_run(db_url, "new-1", [behaviour("ok")])
    assert drained(drain(db_url, skip_run_prefixes=["legacy-"])) == ["new-1/p000"]


def test_batch_size_bounds_the_session(db_url: str) -> None:
    make_run(db_url, "r", [behaviour("ok")] * 5)
    state = drain(db_url, batch_size=2)
    assert state.total_processed == 2 and state.stop_reason == STOP_BATCH_SIZE
    assert drained(state) == ["r/p000", "r/p001"]


def test_priority_failure_buckets_then_phase_index(db_url: str) -> None:
    make_run(db_url, "r", [behaviour("ok")] * 4)
    set_phase(db_url, "r", "p000", state="FAILED", last_failure_reason="timed out after 900s")
    set_phase(db_url, "r", "p001", state="FAILED", last_failure_reason="patch failed")
    set_phase(db_url, "r", "p002", state="FAILED", last_failure_reason="ImportError: x")
    # p003 is QUEUED, no failure reason: first bucket
    assert drained(drain(db_url)) == ["r/p003", "r/p002", "r/p001", "r/p000"]


# --- sample-first triage and stop rules -------------------------------------------------------------------


def test_sample_first_deprioritizes_a_run_failing_like_another(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("fail", error="ImportError: foo"), behaviour("ok")])
    make_run(db_url, "b", [behaviour("fail", error="ImportError: foo"), behaviour("ok")])
    state = drain(db_url)
    assert state.promising_runs == {"a"} and state.deprioritized_runs == {"b"}
    # unsampled runs are sampled before promising runs continue, retries come last, b's second phase never
    assert drained(state) == ["a/p000", "b/p000", "a/p001", "a/p000"]
    assert phase_rows(db_url)[("b", "p001")].state == "QUEUED"


def test_fingerprint_repeats_stop_the_run(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("fail", error=f"boom at line {i}") for i in range(4)])
    state = drain(db_url, max_fingerprint_repeats=2, max_attempts_per_phase=1)
    assert drained(state) == ["a/p000", "a/p001"]
    assert state.stopped_runs == {"a"}
    assert state.stopped_fingerprints == {"FAILED|rc1|boom at line num"}


def test_a_run_whose_phases_truncate_is_drained_completely(db_url: str) -> None:
    error = "output truncated (max_tokens) at 4096 of 4096 max_tokens"
    make_run(db_url, "docs", [behaviour("fail", error=error, stage="truncation", calls=2) for _ in range(6)])
    state = drain(db_url, max_fingerprint_repeats=2, max_attempts_per_phase=1)
    assert sorted(drained(state)) == [f"docs/p{i:03d}" for i in range(6)]
    assert not state.stopped_runs and not state.stopped_fingerprints


def test_failed_phase_is_retried_up_to_max_attempts(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("fail", error="flaky A"), behaviour("fail", error="flaky B")])
    state = drain(db_url, max_attempts_per_phase=2, max_fingerprint_repeats=5)
    # retries come after every untried phase
    assert drained(state) == ["a/p000", "a/p001", "a/p000", "a/p001"]
    assert [r.attempt_index for r in state.results] == [0, 0, 1, 1]


def test_one_attempt_per_phase_means_no_retry(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("fail", error="flaky")])
    assert drained(drain(db_url, max_attempts_per_phase=1)) == ["a/p000"]


def test_consecutive_zero_yield_stops_the_batch(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("ok", calls=0)] * 4)
    state = drain(db_url, max_consecutive_zero_yield=2)
    assert state.total_processed == 2
    assert (state.stop_reason or "").startswith(STOP_ZERO_YIELD)
    assert state.status == STATUS_COMPLETED


class Lines(NullReporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def phase_finished(self, outcome: Any, state: SessionState, notes: list[str]) -> None:
        self.lines.append(outcome_line(outcome, state))


def test_a_phase_finished_from_a_recorded_call_yields_its_event_and_says_no_call_was_made(db_url: str) -> None:
    """An earlier execution recorded a successful call and died before the finish: the real executor finishes
    the phase from it; its one event counts, so the zero-yield rule does not stop the batch."""
    from test_telemetry_recorder import DECISION, EST, FEATURES, response

    from autopack.execution.phase_runner import execute_phase
    from autopack.telemetry import CallKey, record_call

    make_run(db_url, "a", [behaviour("ok")])
    record_call(CallKey("a", "p000", 0, 0), FEATURES, EST, DECISION, response(), success=True, db=database_at(db_url))
    reporter = Lines()
    state = drain(db_url, executor=execute_phase, reporter=reporter, max_consecutive_zero_yield=1)
    (outcome,) = state.results
    assert (outcome.final_state, outcome.telemetry_events, outcome.llm_calls) == ("COMPLETE", 1, 0)
    assert state.stop_reason == STOP_NO_PHASES and state.total_telemetry_events == 1
    assert reporter.lines == [f"[1/{state.batch_size}] OK   a/p000: COMPLETE, 1 events, "
                              f"{outcome.duration_seconds:.1f}s (finished from an earlier execution's recorded call; "
                              "no new LLM call)"]


def test_zero_yield_rule_is_ignored_without_telemetry(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("ok", calls=1)] * 3)
    state = drain(db_url, max_consecutive_zero_yield=1, telemetry=False)
    assert state.total_processed == 3 and state.total_telemetry_events == 0
    assert event_keys(db_url) == []


def test_max_total_minutes_stops_starting_phases(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("ok")] * 3)
    ticks = iter(range(0, 10_000, 100))  # every clock read advances 100 s
    options = BatchOptions(max_total_minutes=1.0)
    state = BatchDrain(options, executor=InlineExecutor(fake_execute_phase, workers=1), clock=lambda: float(next(ticks)),
                       database=database_at(db_url)).run()
    assert state.stop_reason == "max total minutes reached"
    assert state.total_processed < 3


# --- zero-yield reasons and per-phase telemetry, from the structured result ----------------------------


@pytest.mark.parametrize(
    ("desc", "reason"),
    [
        (behaviour("ok", calls=0), ZeroYield.SUCCESS_NO_LLM_CALLS),
        (behaviour("fail", error="no deliverables", stage="before_llm"), ZeroYield.FAILED_BEFORE_LLM),
        (behaviour("boundary"), ZeroYield.LLM_BOUNDARY_HIT),
        (behaviour("fail", error="bad output", stage="validation"), ZeroYield.EXECUTION_ERROR),
        (behaviour("raise", error="executor bug"), ZeroYield.EXECUTION_ERROR),
        (behaviour("fail", error="???", stage=None), ZeroYield.UNKNOWN),
        (behaviour("ok", calls=2), None),
    ],
)
def test_zero_yield_reason_recorded(db_url: str, desc: str, reason: str | None) -> None:
    make_run(db_url, "a", [desc])
    state = drain(db_url, max_attempts_per_phase=1)
    with session_scope(db_url) as db:
        row = db.scalars(sa.select(DrainResult).where(DrainResult.session_id == state.session_id)).one()
    assert row.zero_yield_reason == reason


def test_boundary_hit_is_flagged(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("boundary")])
    state = drain(db_url, max_attempts_per_phase=1)
    assert state.results[0].reached_llm_boundary
    assert "LLM Boundary Hits: 1" in format_summary(state)


def test_telemetry_is_counted_per_phase(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("ok", calls=3), behaviour("ok", calls=1), behaviour("fail", calls=2, error="x")])
    state = drain(db_url, max_attempts_per_phase=1)
    per_phase = {r.phase_id: r.telemetry_events for r in state.results}
    assert per_phase == {"p000": 3, "p001": 1, "p002": 2}
    assert state.total_telemetry_events == len(event_keys(db_url)) == 6


def test_executor_crash_fails_the_phase_and_the_drain_goes_on(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("raise", error="kaboom"), behaviour("ok")])
    state = drain(db_url, max_attempts_per_phase=1)
    phases = phase_rows(db_url)
    assert phases[("a", "p000")].state == "FAILED"
    assert "RuntimeError: kaboom" in (phases[("a", "p000")].last_failure_reason or "")
    assert phases[("a", "p001")].state == "COMPLETE"
    assert state.any_failed


def test_phase_without_deliverables_fails_cleanly(db_url: str) -> None:
    """A legacy phase with no deliverables: the real executor fails it before any LLM call."""
    pytest.importorskip("autopack.execution.phase_runner")
    make_run(db_url, "legacy", [behaviour("ok")])
    set_phase(db_url, "legacy", "p000", state="FAILED", scope={"deliverables": []}, task_category="IMPLEMENT_FEATURE", complexity="MEDIUM")
    state = drain(db_url, executor="autopack.execution.phase_runner:execute_phase")
    result = state.results[0]
    assert (result.final_state, result.zero_yield_reason) == ("FAILED", ZeroYield.FAILED_BEFORE_LLM)
    assert "no deliverables" in (result.error_message or "")


# --- session persistence and resume -------------------------------------------------------------------


class SavedCheck(NullReporter):
    """After every phase, the database already holds the session as it is in memory."""

    def __init__(self, url: str) -> None:
        self.store = SessionStore(database_at(url))
        self.checked = 0

    def phase_finished(self, outcome: Any, state: SessionState, notes: list[str]) -> None:
        saved = self.store.load(state.session_id)
        assert saved is not None
        assert saved.total_processed == state.total_processed
        assert len(saved.results) == len(state.results)
        assert saved.sampled_runs == state.sampled_runs
        self.checked += 1


def test_session_is_saved_after_every_phase(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("ok"), behaviour("fail", error="x"), behaviour("ok")])
    reporter = SavedCheck(db_url)
    drain(db_url, reporter=reporter, max_attempts_per_phase=1)
    assert reporter.checked == 3


class InterruptAfter(NullReporter):
    def __init__(self, n: int) -> None:
        self.n = n

    def phase_finished(self, outcome: Any, state: SessionState, notes: list[str]) -> None:
        if state.total_processed == self.n:
            raise KeyboardInterrupt


def test_resume_continues_the_interrupted_session(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("ok")] * 4)
    with pytest.raises(DrainInterrupted) as info:
        drain(db_url, batch_size=3, reporter=InterruptAfter(1))
    assert info.value.exit_code == 130
    first = SessionStore(database_at(db_url)).load(info.value.state.session_id)  # type: ignore[union-attr]
    assert first is not None and first.status == STATUS_INTERRUPTED and first.completed_at is None

    resumed = drain(db_url, batch_size=3, resume=True)
    assert resumed.session_id == first.session_id
    assert drained(resumed) == ["a/p000", "a/p001", "a/p002"]  # continued up to the batch size
    assert resumed.status == STATUS_COMPLETED and resumed.total_processed == 3
    assert phase_rows(db_url)[("a", "p003")].state == "QUEUED"


def test_a_killed_drains_session_is_marked_abandoned_by_the_next_drain_and_resume_says_it_took_it_over(
        db_url: str) -> None:
    dead = SessionState("batch-drain-20250101-000000-dead", 5, params={"process": {"host": "gone", "pid": 1}})
    SessionStore(database_at(db_url), owner="killed-drain", lease_seconds=600).save(dead)
    expired = utcnow().replace(microsecond=0) - timedelta(minutes=5)
    with session_scope(db_url) as db:
        db.execute(sa.update(DrainSession).values(lease_expires_at=expired))
    make_run(db_url, "a", [behaviour("ok")] * 2)
    reporter = Messages()
    drain(db_url, reporter=reporter, batch_size=1)
    when = expired.isoformat(timespec="seconds")
    assert (f"session {dead.session_id} was abandoned by its drain (owner lease expired at {when}); marked "
            "abandoned, --resume continues it") in reporter.lines
    stored = SessionStore(database_at(db_url)).load(dead.session_id)
    assert stored is not None and stored.status == "abandoned"

    reporter = Messages()
    resumed = drain(db_url, reporter=reporter, resume=True)
    assert resumed.session_id == dead.session_id and drained(resumed) == ["a/p001"]
    assert (f"resuming session {dead.session_id} (taken over from its dead drain: owner lease expired at {when}): "
            "0 processed, 0 succeeded, 0 failed") in reporter.lines
    assert [entry["lease_expired_at"] for entry in resumed.params["taken_over"]] == [when]


def test_drain_sessions_lists_a_dead_drains_session_as_abandoned_and_a_live_one_as_running(
        db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from cli_runner import run_cli

    dead = SessionState("batch-drain-20250101-000000-dead", 5)
    SessionStore(database_at(db_url), owner="killed-drain", lease_seconds=600).save(dead)
    expired = utcnow().replace(microsecond=0) - timedelta(minutes=5)
    with session_scope(db_url) as db:
        db.execute(sa.update(DrainSession).values(lease_expires_at=expired))
    live = SessionState("batch-drain-20250102-000000-live", 5)
    SessionStore(database_at(db_url), owner="live-drain", lease_seconds=600).save(live)
    code, out, err = run_cli(capsys, "drain", "sessions")
    assert code == 0, err
    assert out.splitlines() == [
        f"{live.session_id}  running  started {live.started_at.isoformat(timespec='seconds')}  0 processed "
        "(0 ok, 0 failed, 0 timeouts), 0 telemetry events",
        f"{dead.session_id}  abandoned (owner lease expired at {expired.isoformat(timespec='seconds')})  started "
        f"{dead.started_at.isoformat(timespec='seconds')}  0 processed (0 ok, 0 failed, 0 timeouts), 0 telemetry events",
    ]


def test_resume_without_an_unfinished_session_starts_a_new_one(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("ok")])
    state = drain(db_url, resume=True)
    assert state.total_processed == 1


# --- leases: other drains, dead drains ---------------------------------------------------------------


def test_phase_of_a_dead_drain_is_claimed_again(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("ok")])
    set_phase(db_url, "a", "p000", state="EXECUTING", lease_owner="dead-drain", lease_expires_at=utcnow().replace(year=2000), builder_attempts=1)
    state = drain(db_url)
    assert drained(state) == ["a/p000"]
    assert state.results[0].initial_state == "EXECUTING" and state.results[0].attempt_index == 1
    assert phase_rows(db_url)[("a", "p000")].state == "COMPLETE"


def test_drain_waits_for_a_foreign_lease_to_expire(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("ok")])
    from datetime import timedelta

    set_phase(db_url, "a", "p000", state="EXECUTING", lease_owner="other-drain", lease_expires_at=utcnow() + timedelta(seconds=1))
    state = drain(db_url)
    assert drained(state) == ["a/p000"]


def test_phase_held_by_a_live_lease_is_left_alone_without_waiting(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("ok")])
    from datetime import timedelta

    set_phase(db_url, "a", "p000", state="EXECUTING", lease_owner="other", lease_expires_at=utcnow() + timedelta(hours=1))
    state = drain(db_url, wait_for_leases=False)
    assert state.results == [] and state.stop_reason == STOP_NO_PHASES


# --- executor processes: timeouts, killed workers, Ctrl-C -----------------------------------------------


def test_timeout_kills_the_phase_and_records_it(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("sleep", seconds=120), behaviour("sleep", seconds=120)])
    state = drain(db_url, isolation="process", phase_timeout_seconds=1.0, max_timeouts_per_run=1)
    # the second phase is skipped: the run reached its timeout limit
    assert drained(state) == ["a/p000"]
    result = state.results[0]
    assert (result.final_state, result.zero_yield_reason, result.returncode) == ("TIMEOUT", ZeroYield.TIMEOUT, -1)
    assert "timed out after 1s" in (result.error_message or "")
    phase = phase_rows(db_url)[("a", "p000")]
    assert (phase.state, phase.lease_owner, phase.lease_expires_at) == ("TIMEOUT", None, None)
    assert state.total_timeouts == 1


def _kill_worker_when_busy(drain_: BatchDrain, url: str, release_file: Path) -> threading.Thread:
    def act() -> None:
        wait_until(lambda: executing(url, "a", "p000") and 0 in drain_.running and drain_.executor.slots[0].process is not None)
        process = drain_.executor.slots[0].process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        release_file.touch()  # the retry (in a fresh worker) may finish

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


def test_killed_worker_releases_the_phase_which_is_drained_again(db_url: str, tmp_path: Path) -> None:
    release = tmp_path / "go"
    make_run(db_url, "a", [behaviour("wait_file", path=str(release))])
    d = BatchDrain(BatchOptions(), executor=ProcessExecutor(1, fake_execute_phase), database=database_at(db_url))
    thread = _kill_worker_when_busy(d, db_url, release)
    state = d.run()
    thread.join(timeout=10)
    assert [r.final_state for r in state.results] == [FINAL_WORKER_LOST, "COMPLETE"]
    lost = state.results[0]
    assert lost.returncode == 128 + signal.SIGKILL and lost.zero_yield_reason == ZeroYield.EXECUTION_ERROR
    assert phase_rows(db_url)[("a", "p000")].state == "COMPLETE"


def test_sigint_saves_releases_and_exits_130(db_url: str, tmp_path: Path) -> None:
    never = tmp_path / "never"
    make_run(db_url, "a", [behaviour("wait_file", path=str(never), max_seconds=120)])
    set_phase(db_url, "a", "p000", state="FAILED", last_failure_reason="before")
    d = BatchDrain(BatchOptions(), executor=ProcessExecutor(1, fake_execute_phase), database=database_at(db_url))

    def interrupt() -> None:
        wait_until(lambda: executing(db_url, "a", "p000"))
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    with pytest.raises(DrainInterrupted) as info:
        d.run()
    thread.join(timeout=10)
    assert info.value.exit_code == 130
    phase = phase_rows(db_url)[("a", "p000")]
    assert (phase.state, phase.lease_owner) == ("FAILED", None)  # given back to the state it was claimed from
    saved = SessionStore(database_at(db_url)).load(info.value.state.session_id)  # type: ignore[union-attr]
    assert saved is not None and saved.status == STATUS_INTERRUPTED
    assert [r.final_state for r in saved.results] == [FINAL_INTERRUPTED]
    assert saved.total_processed == 0  # an interrupted attempt is not an outcome


def test_executor_that_cannot_load_is_a_clear_error(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("ok")])
    with pytest.raises(ConfigError, match="cannot load the phase executor"):
        drain(db_url, isolation="process", executor="test_drain_batch_support:no_such_function")
    phase = phase_rows(db_url)[("a", "p000")]
    assert phase.state == "QUEUED"  # nothing was claimed before the worker was ready
    with session_scope(db_url) as db:
        session = db.scalars(sa.select(DrainSession)).one()
        assert session.status == "failed" and "cannot load the phase executor" in (session.stop_reason or "")


# --- preflight ---------------------------------------------------------------------------------------


def test_telemetry_disabled_refuses_unless_no_telemetry(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    make_run(db_url, "a", [behaviour("ok")])
    monkeypatch.setenv("TELEMETRY_DB_ENABLED", "0")
    with pytest.raises(RefusedError, match="TELEMETRY_DB_ENABLED is off") as info:
        run_batch_drain(BatchOptions(), open_database(db_url), executor=fake_execute_phase, isolation=INLINE)
    assert info.value.exit_code == 2
    assert phase_rows(db_url)[("a", "p000")].state == "QUEUED"
    report = run_batch_drain(BatchOptions(telemetry=False), open_database(db_url), executor=fake_execute_phase, isolation=INLINE)
    assert report.exit_code == 0 and event_keys(db_url) == []


def test_empty_database_refused_unless_allowed(db_url: str) -> None:
    from autopack.errors import EmptyDatabaseError

    with pytest.raises(EmptyDatabaseError):
        run_batch_drain(BatchOptions(), open_database(db_url), executor=fake_execute_phase, isolation=INLINE)
    report = run_batch_drain(BatchOptions(), open_database(db_url, allow_empty=True), executor=fake_execute_phase, isolation=INLINE)
    assert report.state.total_processed == 0 and report.exit_code == 0


def test_expect_db_id_mismatch_refused(db_url: str) -> None:
    from autopack.errors import DbIdentityMismatchError

    make_run(db_url, "a", [behaviour("ok")])
    with pytest.raises(DbIdentityMismatchError) as info:
        run_batch_drain(BatchOptions(), open_database(db_url, expect_db_id="nope"), executor=fake_execute_phase, isolation=INLINE)
    assert info.value.exit_code == 3


def test_exit_code_is_1_when_a_phase_failed(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("fail", error="x")])
    report = run_batch_drain(BatchOptions(), open_database(db_url), executor=fake_execute_phase, isolation=INLINE)
    assert report.exit_code == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
        ({"workers": 0}, "workers: Input should be greater than or equal to 1"),
        ({"states": ("COMPLETE",)}, "cannot drain COMPLETE"),
        ({"states": ("EXECUTING",)}, "cannot drain EXECUTING"),
        ({"phase_timeout_seconds": 0}, "phase_timeout_seconds: Input should be greater than 0"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        BatchOptions(**options).validate()


def test_parse_states() -> None:
    assert parse_states(" queued, FAILED ,failed") == ["QUEUED", "FAILED"]
    with pytest.raises(InputError):
        parse_states(" , ")


def test_summary_lists_runs_and_breakdowns(db_url: str) -> None:
    make_run(db_url, "a", [behaviour("ok", calls=2), behaviour("fail", error="x", stage="before_llm")])
    state = drain(db_url, max_attempts_per_phase=1)
    text = format_summary(state, wall_seconds=60.0)
    assert "Success Rate: 50.0%" in text
    assert "failed_before_llm: 1" in text
    assert "a: 1/2 succeeded, 0 timeouts, 2 events" in text
    assert "Wall-clock Yield: 2.00 events/minute" in text


def test_progress_bar_renders_on_a_terminal(db_url: str) -> None:
    import io

    from rich.console import Console

    from autopack.execution.batch_report import RichReporter

    make_run(db_url, "a", [behaviour("ok", calls=2), behaviour("fail", error="nope")])
    out = io.StringIO()
    reporter = RichReporter(Console(file=out, force_terminal=True, width=160))
    state = drain(db_url, reporter=reporter, max_attempts_per_phase=1)
    import re

    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # drop the terminal escapes
    assert state.session_id in text
    # the bar counts phases done of those eligible (2 here), not of the batch size (10): it ends full
    assert re.search(r"━ 2/2 ok 1 +fail 1 +events 2", text)
    assert "FAIL a/p001" in text  # failures are printed above the bar


def test_batch_command_joins_the_drain_group_in_either_order() -> None:
    import typer

    from autopack.cli import drain as drain_cli
    from autopack.cli import drain_batch

    for order in ((drain_cli, drain_batch), (drain_batch, drain_cli)):
        app = typer.Typer()
        for module in order:
            module.register(app)
        groups = [g for g in app.registered_groups if g.name == "drain"]
        assert len(groups) == 1
        assert sorted(c.name for c in groups[0].typer_instance.registered_commands) == ["batch", "one", "sessions"]


def test_cli_bad_states_is_one_line_exit_2(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from autopack.cli.app import main

    make_run(db_url, "a", [behaviour("ok")])
    with pytest.raises(SystemExit) as info:
        main(["drain", "batch", "--states", "QUEUED,COMPLETE"])
    assert info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot drain COMPLETE" in errors[0]
    assert phase_rows(db_url)[("a", "p000")].state == "QUEUED"


def test_api_url_credentials_never_reach_the_database(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_api import serve

    from autopack.api import create_app
    from autopack.cli.app import main
    from autopack.db.engine import get_engine
    from autopack.db.models import Base

    make_run(db_url, "a", [behaviour("ok")])
    with serve(create_app(database=database_at(db_url))) as base:
        monkeypatch.setenv("AUTOPACK_API_URL", base.replace("http://", "http://drain:s3cr3t-pw@"))
        with pytest.raises(SystemExit) as info:
            main(["drain", "batch", "--provider-concurrency", "0"])
    assert info.value.code == 0
    with get_engine(db_url).connect() as connection:
        dump = "\n".join(str(row) for table in Base.metadata.sorted_tables
                         for row in connection.execute(sa.select(table)))
    assert "s3cr3t-pw" not in dump
    assert "'api_url': 'http://127.0.0.1:" in dump  # the URL is stored, minus its credentials
    assert "s3cr3t-pw" not in "".join(capsys.readouterr())


def test_a_killed_phase_gives_its_provider_slot_back(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from autopack.db.models import ProviderSlot

    monkeypatch.setenv("AUTOPACK_SIM_LATENCY_SECONDS", "60")  # the call holds its slot when the timeout kills it
    make_run(db_url, "a", [behaviour("ok")])
    state = drain(db_url, isolation="process", executor="autopack.execution.phase_runner:execute_phase",
                  phase_timeout_seconds=5.0, provider_concurrency=1)
    assert state.results[0].final_state == "TIMEOUT"
    with session_scope(db_url) as db:
        assert db.execute(sa.select(ProviderSlot.slot, ProviderSlot.owner)).all() == [(0, None)]  # not left to expire
