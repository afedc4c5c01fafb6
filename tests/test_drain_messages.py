"""What one phase hands back to the drain (``batch_workers.run_job``): a typed message for each way it can end, and
the line the drain logs for it. The message crosses a process (or task-run) boundary; nothing reads it by key."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from autopack.db.handle import database_at
from autopack.errors import InputError
from autopack.execution.batch_report import phase_log_line
from autopack.execution.batch_workers import (
    PhaseDone,
    PhaseError,
    PhaseJob,
    PhaseLeaseLost,
    PhaseReport,
    run_job,
)
from autopack.execution.leases import Claim, LeaseLostError
from autopack.execution.triage import STAGE_BEFORE_LLM, STAGE_EXECUTION


def job(db_url: str) -> PhaseJob:
    claim = Claim(run_id="a", phase_id="p000", owner="test", expires_at=datetime.now(UTC), attempt_index=0,
                  initial_state="QUEUED")
    return PhaseJob(run_id="a", phase_id="p000", claim=claim, database=database_at(db_url).ref(), lease_seconds=60.0,
                    provider_concurrency=0)


def raising(exc: BaseException) -> Any:
    def executor(*_args: object, **_kwargs: object) -> None:
        raise exc

    return executor


def test_a_result_missing_fields_takes_their_defaults_and_survives_pickling(db_url: str) -> None:
    message = run_job(lambda *_a, **_k: SimpleNamespace(final_state="COMPLETE", success=True, llm_calls=2), job(db_url))
    assert message == PhaseDone(PhaseReport(final_state="COMPLETE", success=True, attempts=1, llm_calls=2))
    assert pickle.loads(pickle.dumps(message)) == message  # what a worker process sends through its pipe
    assert phase_log_line("a", "p000", message, []) == "a/p000 COMPLETE in 0.00s: 1 attempt, 2 LLM calls, 0 telemetry rows"


def test_a_phase_whose_lease_was_taken_back_says_so(db_url: str) -> None:
    message = run_job(raising(LeaseLostError("another drain holds a/p000")), job(db_url))
    assert message == PhaseLeaseLost("another drain holds a/p000")
    assert phase_log_line("a", "p000", message, []) == "a/p000: lease lost: another drain holds a/p000"


def test_bad_input_fails_the_phase_before_the_llm(db_url: str) -> None:
    message = run_job(raising(InputError("deliverable path escapes the workspace", hint="fix the phase spec")),
                      job(db_url))
    assert message == PhaseError("InputError: deliverable path escapes the workspace (fix the phase spec)",
                                 STAGE_BEFORE_LLM)


def test_an_executor_bug_is_an_executor_error_not_a_crash(db_url: str) -> None:
    message = run_job(raising(ZeroDivisionError("division by zero")), job(db_url))
    assert message == PhaseError("ZeroDivisionError: division by zero", STAGE_EXECUTION)
    assert phase_log_line("a", "p000", message, []) == "a/p000: executor error: ZeroDivisionError: division by zero"
