"""execute_phase: the contract the drains rely on, on SQLite and PostgreSQL, with the simulated provider."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from autopack.config import get_settings
from autopack.db.engine import get_engine, session_scope
from autopack.db.handle import database_at
from autopack.db.models import LlmUsageEvent, Phase, Run, TokenBudgetEscalationEvent, TokenEstimationV2Event, utcnow
from autopack.execution import leases
from autopack.execution.phase_runner import PhaseResult, check_output, execute_phase
from autopack.execution.runs import create_run
from autopack.execution.sandbox import SandboxUnavailableError, require_sandbox
from autopack.execution.spec import PhaseSpec, RunSpec
from autopack.execution.workspace import run_workspace
from autopack.llm.base import LLMRequest, LLMResponse
from autopack.llm.simulated import SimulatedProvider
from autopack.pipeline import validation_phase
from autopack.telemetry import OUTCOME_UNCHECKED, unfinished_success

RUN = "run-x"


def add_phase(url: str, phase_id: str = "p1", *, description: str = "Write capitalize_words and reverse_string.",
              category: str = "implementation", complexity: str = "low",
              deliverables: tuple[str, ...] = ("pkg/string_helper.py",), **extra: object) -> None:
    spec = RunSpec(run_id=RUN, phases=[PhaseSpec(phase_id=phase_id, description=description, category=category,
                                                 complexity=complexity, deliverables=list(deliverables), **extra)])
    with session_scope(url) as session:
        if session.get(Run, RUN) is None:
            create_run(session, spec)
        else:
            session.add(Phase(run_id=RUN, phase_id=phase_id, phase_index=1, description=description,
                              task_category=category, complexity=complexity, scope=spec.phases[0].scope(),
                              check_command=spec.phases[0].check_command))


def run(url: str, phase_id: str = "p1", *, provider: object | None = None, telemetry: bool = True) -> PhaseResult:
    with session_scope(url) as session:
        claim = leases.claim_phase(session, RUN, phase_id, "worker-1")
    assert claim is not None
    return execute_phase(RUN, phase_id, claim=claim, db=database_at(url), provider=provider or SimulatedProvider(seed=1),  # type: ignore[arg-type]
                         telemetry=telemetry)


def rows(url: str, model: type) -> list:  # type: ignore[type-arg]
    with session_scope(url) as session:
        return list(session.execute(sa.select(model).order_by(model.id)).scalars())


def phase_row(url: str, phase_id: str = "p1") -> Phase:
    with session_scope(url) as session:
        return session.execute(sa.select(Phase).where(Phase.run_id == RUN, Phase.phase_id == phase_id)).scalar_one()


def test_success_completes_writes_files_and_one_event(db_url: str) -> None:
    add_phase(db_url)
    result = run(db_url)
    assert (result.final_state, result.success, result.failure_stage) == ("COMPLETE", True, None)
    assert (result.attempts, result.llm_calls, result.telemetry_events) == (1, 1, 1)
    assert not result.reached_llm_boundary and result.error_message is None
    written = run_workspace(RUN, db_id=database_at(db_url).stored_id()) / "pkg" / "string_helper.py"
    compile(written.read_text(), str(written), "exec")
    phase = phase_row(db_url)
    assert phase.state == "COMPLETE" and phase.lease_owner is None and phase.tokens_used > 0


class ReturnsThenGivenBack(SimulatedProvider):
    """The simulated provider; once its call has returned, the drain gives the phase back (Ctrl-C)."""

    returned = False

    def complete(self, request: LLMRequest) -> LLMResponse:
        response = super().complete(request)
        self.returned = True
        return response


class NeverCalled(SimulatedProvider):
    def complete(self, request: LLMRequest) -> LLMResponse:
        raise AssertionError("the phase was done: no second call")


def test_a_phase_given_back_after_its_call_was_recorded_is_finished_from_it_not_run_again(db_url: str) -> None:
    add_phase(db_url)
    db = database_at(db_url)
    with session_scope(db_url) as session:
        claim = leases.claim_phase(session, RUN, "p1", "worker-1")
    assert claim is not None
    provider = ReturnsThenGivenBack(seed=1)

    def beat() -> None:  # the give-back lands between the heartbeat after the call and the telemetry write
        if provider.returned:
            with db.session() as session:
                leases.release(session, RUN, "p1", "worker-1")

    with pytest.raises(leases.LeaseLostError):
        execute_phase(RUN, "p1", claim=claim, db=db, provider=provider, heartbeat=beat)
    (event,) = rows(db_url, TokenEstimationV2Event)
    assert event.success and event.phase_outcome is None and phase_row(db_url).state == "QUEUED"
    assert validation_phase(db, None, None) is None  # finished without a call, it would validate nothing

    result = run(db_url, provider=NeverCalled(seed=1))
    assert (result.final_state, result.llm_calls, result.recorded_call) == ("COMPLETE", 0, True)
    (event,) = rows(db_url, TokenEstimationV2Event)
    assert event.phase_outcome == "COMPLETE" and len(rows(db_url, LlmUsageEvent)) == 1
    assert phase_row(db_url).state == "COMPLETE"


def test_a_phase_finished_from_a_recorded_call_counts_its_tokens_and_its_event(db_url: str) -> None:
    add_phase(db_url)
    db = database_at(db_url)
    with session_scope(db_url) as session:
        claim = leases.claim_phase(session, RUN, "p1", "worker-1")
    assert claim is not None
    provider = ReturnsThenGivenBack(seed=1)

    def beat() -> None:
        if provider.returned:
            with db.session() as session:
                leases.release(session, RUN, "p1", "worker-1")

    with pytest.raises(leases.LeaseLostError):
        execute_phase(RUN, "p1", claim=claim, db=db, provider=provider, heartbeat=beat)
    (usage,) = rows(db_url, LlmUsageEvent)
    assert usage.total_tokens > 0 and not phase_row(db_url).tokens_used

    result = run(db_url, provider=NeverCalled(seed=1))
    assert (result.llm_calls, result.telemetry_events) == (0, 1)
    assert phase_row(db_url).tokens_used == usage.total_tokens


def test_estimation_row_holds_the_call(db_url: str) -> None:
    add_phase(db_url, category="IMPLEMENT_FEATURE", complexity="LOW")
    run(db_url)
    (event,) = rows(db_url, TokenEstimationV2Event)
    assert (event.category, event.complexity) == ("implementation", "low")
    assert event.actual_max_tokens is not None and event.actual_max_tokens >= event.selected_budget > 0
    assert event.provider == "simulated" and event.success and event.phase_outcome == "COMPLETE"
    assert (event.attempt_index, event.call_index) == (0, 0)
    assert event.stop_reason == "end_turn" and event.finish_reason == "stop" and not event.truncated
    assert json.loads(event.features_json)["category"] == "IMPLEMENT_FEATURE"
    assert json.loads(event.ceiling_contributions_json)[0]["name"] == "predicted"
    (usage,) = rows(db_url, LlmUsageEvent)
    assert usage.split_kind == "exact" and usage.completion_tokens == event.actual_output_tokens
    assert usage.prompt_tokens == event.input_tokens


def test_forced_truncation_escalates_once_with_a_second_attempt_row(db_url: str) -> None:
    add_phase(db_url, description="Write the helpers. [sim:truncate-once]")
    result = run(db_url)
    assert result.final_state == "COMPLETE" and result.attempts == 2 and result.llm_calls == 2
    assert result.telemetry_events == 2
    first, second = rows(db_url, TokenEstimationV2Event)
    assert (first.attempt_index, second.attempt_index) == (0, 1)
    assert first.truncated and first.is_truncated_output and not first.success
    assert second.success and not second.truncated
    (escalation,) = rows(db_url, TokenBudgetEscalationEvent)
    assert escalation.attempt_index == 0 and escalation.reason == "truncation" and escalation.was_truncated
    assert escalation.retry_max_tokens == min(int(escalation.base_value * 1.25), 64000)
    assert second.actual_max_tokens == escalation.retry_max_tokens
    assert second.selected_budget == first.selected_budget
    assert {first.phase_outcome, second.phase_outcome} == {"COMPLETE"}
    assert phase_row(db_url).builder_attempts == 2


def test_truncation_after_escalation_fails(db_url: str) -> None:
    add_phase(db_url, description="Write the helpers. [sim:truncate]")
    result = run(db_url)
    assert (result.final_state, result.failure_stage, result.attempts) == ("FAILED", "truncation", 2)
    assert "truncated" in (result.error_message or "")
    assert len(rows(db_url, TokenEstimationV2Event)) == 2 and len(rows(db_url, TokenBudgetEscalationEvent)) == 1
    assert phase_row(db_url).last_failure_reason == result.error_message


def test_phase_without_deliverables_fails_before_the_llm(db_url: str) -> None:
    add_phase(db_url)
    with session_scope(db_url) as session:
        session.execute(sa.update(Phase).values(scope={"deliverables": []}))
    calls: list[object] = []

    class Spy(SimulatedProvider):
        def complete(self, request):  # type: ignore[no-untyped-def]
            calls.append(request)
            return super().complete(request)

    result = run(db_url, provider=Spy())
    assert (result.final_state, result.failure_stage, result.llm_calls) == ("FAILED", "before_llm", 0)
    assert calls == [] and rows(db_url, TokenEstimationV2Event) == []


def test_path_escaping_the_workspace_fails_before_the_llm(db_url: str) -> None:
    add_phase(db_url)
    with session_scope(db_url) as session:
        session.execute(sa.update(Phase).values(scope={"deliverables": ["../../outside.py"]}))
    result = run(db_url)
    assert (result.failure_stage, result.llm_calls) == ("before_llm", 0)
    assert "escapes the run workspace" in (result.error_message or "")


def test_context_window_error_reaches_the_llm_boundary(db_url: str) -> None:
    add_phase(db_url, description="[sim:boundary]")
    result = run(db_url)
    assert (result.final_state, result.failure_stage, result.reached_llm_boundary) == ("FAILED", "llm_boundary", True)
    assert result.llm_calls == 1 and result.telemetry_events == 0


def test_provider_error_fails_with_one_line(db_url: str) -> None:
    add_phase(db_url, description="[sim:auth-error]")
    result = run(db_url)
    assert (result.final_state, result.failure_stage, result.reached_llm_boundary) == ("FAILED", "provider", False)
    assert "\n" not in (result.error_message or "x\n") and "401" in (result.error_message or "")


def test_python_that_does_not_compile_fails_validation_and_is_recorded(db_url: str) -> None:
    add_phase(db_url, description="capitalize_words [sim:invalid-output]")
    result = run(db_url)
    assert (result.final_state, result.failure_stage) == ("FAILED", "validation")
    assert "does not compile" in (result.error_message or "")
    (event,) = rows(db_url, TokenEstimationV2Event)
    assert not event.success and event.phase_outcome == "FAILED"
    assert not (run_workspace(RUN, db_id=database_at(db_url).stored_id()) / "pkg" / "string_helper.py").exists()


def test_missing_deliverable_fails_validation(db_url: str) -> None:
    add_phase(db_url, description="[sim:missing-file]", deliverables=("pkg/a.py", "pkg/b.py"))
    result = run(db_url)
    assert result.failure_stage == "validation" and "pkg/b.py" in (result.error_message or "")


def test_check_command_runs_in_the_workspace(db_url: str) -> None:
    add_phase(db_url, check_command="test -f pkg/string_helper.py")
    add_phase(db_url, "p2", check_command="sh -c 'exit 3'")
    assert run(db_url).success
    failed = run(db_url, "p2")
    assert failed.failure_stage == "validation" and "exited 3" in (failed.error_message or "")


def test_no_telemetry_writes_no_rows(db_url: str) -> None:
    add_phase(db_url)
    result = run(db_url, telemetry=False)
    assert result.success and result.telemetry_events == 0
    assert rows(db_url, TokenEstimationV2Event) == [] and rows(db_url, LlmUsageEvent) == []


def _reject_usage_inserts(url: str) -> None:
    """A real write failure: the database refuses every insert into llm_usage_events."""
    engine = get_engine(url)
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.execute(sa.text("CREATE TRIGGER reject_usage BEFORE INSERT ON llm_usage_events "
                                       "BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
        else:
            connection.execute(sa.text("CREATE FUNCTION reject_usage() RETURNS trigger AS $$ BEGIN "
                                       "RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql"))
            connection.execute(sa.text("CREATE TRIGGER reject_usage BEFORE INSERT ON llm_usage_events "
                                       "FOR EACH ROW EXECUTE FUNCTION reject_usage()"))


def test_failed_telemetry_write_fails_the_phase_loudly(db_url: str) -> None:
    add_phase(db_url)
    _reject_usage_inserts(db_url)
    result = run(db_url)
    assert (result.final_state, result.failure_stage) == ("FAILED", "execution")
    assert "telemetry write failed" in (result.error_message or "") and "disk full" in (result.error_message or "")
    assert phase_row(db_url).state == "FAILED"
    assert rows(db_url, TokenEstimationV2Event) == []  # the call's two rows are written together or not at all


def test_a_lost_lease_rejects_the_result(db_url: str) -> None:
    add_phase(db_url)
    with session_scope(db_url) as session:
        claim = leases.claim_phase(session, RUN, "p1", "worker-1")
    assert claim is not None
    with session_scope(db_url) as session:
        session.execute(sa.update(Phase).values(lease_owner="someone-else"))
    with pytest.raises(leases.LeaseLostError):
        execute_phase(RUN, "p1", claim=claim, db=database_at(db_url), provider=SimulatedProvider(seed=1))


def test_heartbeat_is_called_around_each_call(db_url: str) -> None:
    add_phase(db_url)
    beats: list[int] = []
    with session_scope(db_url) as session:
        claim = leases.claim_phase(session, RUN, "p1", "worker-1")
    assert claim is not None
    result = execute_phase(RUN, "p1", claim=claim, db=database_at(db_url), provider=SimulatedProvider(seed=1),
                           heartbeat=lambda: beats.append(1))
    assert result.success and len(beats) == 2


def test_existing_deliverable_is_estimated_as_a_modification(db_url: str) -> None:
    add_phase(db_url)
    target = run_workspace(RUN, db_id=database_at(db_url).stored_id()) / "pkg" / "string_helper.py"
    target.parent.mkdir(parents=True)
    target.write_text("import os\n" + "x = 1\n" * 300)
    run(db_url)
    (event,) = rows(db_url, TokenEstimationV2Event)
    features = json.loads(event.features_json)
    assert features["deliverable_counts"] == {"backend:modify": 1}
    assert features["existing_files"]["pkg/string_helper.py"]["loc"] == 301


def test_docs_phase_prompt_caps_context_and_size(db_url: str, tmp_path: Path) -> None:
    context = [f"src/m{i}.py" for i in range(14)]
    add_phase(db_url, category="docs", deliverables=("README.md",), read_only_context=context)
    prompts: list[str] = []

    class Spy(SimulatedProvider):
        def complete(self, request):  # type: ignore[no-untyped-def]
            prompts.append(request.prompt)
            return super().complete(request)

    assert run(db_url, provider=Spy()).success
    assert prompts[0].count("(not found in the workspace)") == 10
    assert "at most 150 lines" in prompts[0] and "4 more context files omitted" in prompts[0]


def test_check_output_requires_closed_blocks() -> None:
    text = "=== FILE: a.py ===\nx = 1\n=== END FILE ===\n=== FILE: b.py ===\ny = 2\n"
    check = check_output(text, ["a.py", "b.py"])
    assert not check.success and "output cut inside b.py" in (check.message or "")
    assert check_output(text, ["a.py"]).success


def test_recreated_run_gets_fresh_attempt_keys_instead_of_dropping_samples(db_url: str) -> None:
    add_phase(db_url)
    assert run(db_url).telemetry_events == 1
    spec = RunSpec(run_id=RUN, phases=[PhaseSpec(phase_id="p1", description="again", category="implementation",
                                                 complexity="low", deliverables=["pkg/string_helper.py"])])
    with session_scope(db_url) as session:
        create_run(session, spec, replace=True)  # keeps telemetry; the attempt counter starts at 0 again
    result = run(db_url)
    assert result.telemetry_events == 1
    assert [e.attempt_index for e in rows(db_url, TokenEstimationV2Event)] == [0, 1]
    assert [u.attempt_index for u in rows(db_url, LlmUsageEvent)] == [0, 1]


def test_lease_is_kept_alive_during_a_long_provider_call(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from autopack.execution import phase_runner

    monkeypatch.setattr(phase_runner, "HEARTBEAT_INTERVAL_SECONDS", 0.01)
    add_phase(db_url)
    beat_during_call = threading.Event()
    in_call = threading.Event()

    def heartbeat() -> None:
        if in_call.is_set():
            beat_during_call.set()

    class SlowProvider(SimulatedProvider):
        def complete(self, request):  # type: ignore[no-untyped-def]
            in_call.set()
            assert beat_during_call.wait(timeout=10), "no heartbeat while the provider call was running"
            in_call.clear()
            return super().complete(request)

    with session_scope(db_url) as session:
        claim = leases.claim_phase(session, RUN, "p1", "worker-1")
    assert claim is not None
    result = execute_phase(RUN, "p1", claim=claim, db=database_at(db_url), provider=SlowProvider(seed=1), heartbeat=heartbeat)
    assert result.success


def test_lease_lost_during_the_call_rejects_the_result(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from autopack.execution import phase_runner

    monkeypatch.setattr(phase_runner, "HEARTBEAT_INTERVAL_SECONDS", 0.01)
    add_phase(db_url)
    lost = threading.Event()

    def heartbeat() -> None:
        if lost.is_set():
            raise leases.LeaseLostError("lease lost")

    class LosingProvider(SimulatedProvider):
        def complete(self, request):  # type: ignore[no-untyped-def]
            lost.set()
            return super().complete(request)

    with session_scope(db_url) as session:
        claim = leases.claim_phase(session, RUN, "p1", "worker-1")
    assert claim is not None
    with pytest.raises(leases.LeaseLostError):
        execute_phase(RUN, "p1", claim=claim, db=database_at(db_url), provider=LosingProvider(seed=1), heartbeat=heartbeat)


def _wait_for(path: Path, worker: subprocess.Popen[bytes], deadline_seconds: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_seconds
    while not path.exists():
        assert worker.poll() is None, "the worker ended before its check started"
        assert time.monotonic() < deadline, f"{path.name} not created before the deadline"
        time.sleep(0.01)


def test_a_worker_killed_during_its_check_keeps_the_calls_sample_and_the_phase_calls_again(db_url: str) -> None:
    """Before: the call was recorded only after the check command, so a SIGKILL meanwhile lost a paid call's sample."""
    try:
        require_sandbox(get_settings())
    except SandboxUnavailableError as exc:
        pytest.skip(exc.one_line())
    add_phase(db_url, check_command="sh -c 'test -e go || { touch started; cat gate; }'")  # the first check blocks
    workspace = run_workspace(RUN, db_id=database_at(db_url).stored_id())
    os.mkfifo(workspace / "gate")
    worker = subprocess.Popen([sys.executable, "-c", "from autopack.cli import main; main()", "drain", "one",
                               "--run-id", RUN, "--phase-id", "p1"], env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(workspace / "started", worker)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    (dead,) = rows(db_url, TokenEstimationV2Event)
    assert (dead.success, dead.phase_outcome) == (False, OUTCOME_UNCHECKED) and len(rows(db_url, LlmUsageEvent)) == 1
    assert unfinished_success(RUN, "p1", db=database_at(db_url)) is None  # an unchecked call never finishes the phase

    (workspace / "go").touch()
    with session_scope(db_url) as session:  # the dead worker's lease runs out
        session.execute(sa.update(Phase).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    result = run(db_url)
    assert (result.final_state, result.llm_calls, result.recorded_call) == ("COMPLETE", 1, False)
    dead, again = rows(db_url, TokenEstimationV2Event)
    assert dead.attempt_index < again.attempt_index and len(rows(db_url, LlmUsageEvent)) == 2
    assert (dead.success, dead.phase_outcome) == (False, OUTCOME_UNCHECKED)
    assert (again.success, again.phase_outcome) == (True, "COMPLETE")
