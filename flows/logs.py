"""What a flow run's log shows: autopack's refusals as one line, and no line that only repeats another.

Prefect logs a failing task or flow with the exception's traceback, and a deployment's flow run that ends
Failed once more ("Engine execution exited with unexpected exception" with a ``FailedRun`` traceback of
Prefect's own frames). For an ``AutopackError`` — a refusal a user acts on, already one line with its hint —
those tracebacks are noise: this filter keeps the line and drops the traceback, and drops the engine's
closing repeat (the "Finished in state Failed('…')" line before it says the same). Every other exception
keeps its traceback.

A ``drain-phase`` task run's "Finished in state Completed('…')" line is dropped too: the drain logs one line
per phase itself (``PrefectReporter``), and the task run's state message keeps the details.
"""

from __future__ import annotations

import logging

from autopack.errors import AutopackError

#: Prefect's loggers for flow runs and task runs: what reaches a run's log in the UI.
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
#: The task whose completions the drain reports itself.
PHASE_TASK = "drain-phase"
ENGINE_EXIT = "Engine execution exited with unexpected exception"


def _failed_run(exc: BaseException | None) -> bool:
    from prefect.exceptions import FailedRun

    return isinstance(exc, FailedRun)


class RunLogFilter(logging.Filter):
    """Drops repeats and the tracebacks of expected refusals; see the module's docstring."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and (isinstance(exc, AutopackError) or _failed_run(exc)):
            if record.msg == ENGINE_EXIT:
                return False  # the run's final state, logged just before, already says it
            record.exc_info, record.exc_text = None, None
            if isinstance(exc, AutopackError) and exc.one_line() not in record.getMessage():
                record.msg, record.args = f"{record.getMessage()}: {exc.one_line()}", ()
        elif (record.levelno == logging.INFO and getattr(record, "task_name", None) == PHASE_TASK
              and str(record.msg).startswith("Finished in state Completed")):
            return False
        return True


def quiet_run_logs() -> None:
    """Install the filter on Prefect's run loggers, once per process (each flow calls it; it is idempotent)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RunLogFilter) for f in logger.filters):
            logger.addFilter(RunLogFilter())
