"""``flows.logs.RunLogFilter``: what it keeps out of a flow run's log, and what it must leave alone."""

from __future__ import annotations

import logging
import sys

from prefect.exceptions import FailedRun

from autopack.errors import ConfigError
from flows.logs import ENGINE_EXIT, RunLogFilter


def record(msg: str, exc: BaseException | None = None, level: int = logging.ERROR, **extra: str) -> logging.LogRecord:
    exc_info = None
    if exc is not None:
        try:
            raise exc
        except BaseException:
            exc_info = sys.exc_info()
    made = logging.LogRecord("prefect.flow_runs", level, __file__, 1, msg, (), exc_info)
    made.__dict__.update(extra)
    return made


def test_an_autopack_refusal_keeps_its_line_and_its_hint_but_loses_the_traceback() -> None:
    refused = record("Encountered exception during execution: ...", ConfigError("no token", hint="set one"))
    assert RunLogFilter().filter(refused)
    assert refused.exc_info is None
    assert refused.getMessage() == "Encountered exception during execution: ...: no token (set one)"


def test_the_engines_closing_repeat_of_a_failed_run_is_dropped() -> None:
    assert not RunLogFilter().filter(record(ENGINE_EXIT, FailedRun("no token")))
    assert not RunLogFilter().filter(record(ENGINE_EXIT, ConfigError("no token")))


def test_any_other_exception_keeps_its_traceback() -> None:
    crash = record("Encountered exception during execution: ...", ValueError("a bug"))
    assert RunLogFilter().filter(crash) and crash.exc_info is not None
    assert RunLogFilter().filter(record(ENGINE_EXIT, ValueError("a bug")))


def test_only_a_completed_drain_phase_task_run_loses_its_finished_line() -> None:
    done = "Finished in state Completed('r/p0 COMPLETED in 1.00s: 1 attempt')"
    assert not RunLogFilter().filter(record(done, level=logging.INFO, task_name="drain-phase"))
    assert RunLogFilter().filter(record(done, level=logging.INFO, task_name="run-calibration"))
    failed = "Finished in state Failed('r/p0: executor error')"
    assert RunLogFilter().filter(record(failed, level=logging.ERROR, task_name="drain-phase"))
