"""What a batch drain shows: a live progress bar (or plain lines off a terminal) and the final summary."""

from __future__ import annotations

import sys
from collections import Counter
from datetime import datetime
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autopack.execution.batch import BatchOptions, CallSample
from autopack.execution.batch_workers import PhaseDone, PhaseLeaseLost, PhaseMessage
from autopack.execution.sessions import DrainOutcome, SessionState
from autopack.execution.triage import Candidate
from autopack.logging import redact
from autopack.run_order import sorted_runs

RULE = "=" * 80
#: How a phase finished from an earlier execution's recorded call is marked in its lines.
RECORDED_CALL_NOTE = "finished from an earlier execution's recorded call; no new LLM call"


def _short(text: str | None, limit: int = 160) -> str:
    return redact(" ".join((text or "").split()))[:limit]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def phase_log_line(run_id: str, phase_id: str, message: PhaseMessage, samples: list[CallSample]) -> str:
    """One informative line for a finished phase attempt: outcome, attempts, telemetry rows, tokens, ceilings."""
    where = f"{run_id}/{phase_id}"
    if not isinstance(message, PhaseDone):
        kind = "lease lost" if isinstance(message, PhaseLeaseLost) else "executor error"
        return f"{where}: {kind}: {_short(message.message, 300)}"
    result = message.result
    head = f"{where} {result.final_state}"
    if result.failure_stage:
        head += f" (stage {result.failure_stage})"
    line = (
        f"{head} in {result.duration_seconds:.2f}s: {_plural(result.attempts, 'attempt')}, "
        f"{_plural(result.llm_calls, 'LLM call')}, {_plural(result.telemetry_events, 'telemetry row')}"
    )
    if result.recorded_call:
        line += f" ({RECORDED_CALL_NOTE})"
    if samples:
        calls = [
            f"attempt {s.attempt_index}: {s.actual} output tokens of ceiling {s.ceiling if s.ceiling is not None else '?'}"
            f" (predicted {s.predicted}{', truncated' if s.truncated else ''})"
            for s in samples
        ]
        line += "; " + "; ".join(calls)
    if result.reached_llm_boundary:
        line += " [LLM-BOUNDARY]"
    if not result.success and result.error_message:
        line += f" — {_short(result.error_message, 300)}"
    return line


def outcome_line(outcome: DrainOutcome, state: SessionState) -> str:
    where = f"{outcome.run_id}/{outcome.phase_id}"
    progress = f"[{state.total_processed}/{state.batch_size}]"
    if outcome.success:
        line = f"{progress} OK   {where}: {outcome.final_state}, {outcome.telemetry_events} events, {outcome.duration_seconds:.1f}s"
        if outcome.recorded_call:
            line += f" ({RECORDED_CALL_NOTE})"
    else:
        line = f"{progress} FAIL {where}: {outcome.final_state}: {_short(outcome.error_message)}"
    if outcome.telemetry_events == 0 and outcome.zero_yield_reason:
        line += f" [0 events: {outcome.zero_yield_reason}]"
    if outcome.reached_llm_boundary:
        line += " [LLM-BOUNDARY]"
    return line


class LineReporter:
    """One line per phase on stderr: for logs, CI and any non-terminal output."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def started(self, state: SessionState, options: BatchOptions) -> None:
        scope = ", ".join(options.run_ids) if options.run_ids else "all runs"
        self._print(
            f"[drain] session {state.session_id}: up to {state.batch_size} phases from {scope} "
            f"(states {','.join(options.states)}, {options.workers} worker(s), "
            f"phase timeout {options.phase_timeout_seconds:g}s)"
        )

    def phase_started(self, candidate: Candidate, worker: int) -> None:
        self._print(f"[drain] w{worker} start {candidate.run_id}/{candidate.phase_id} ({candidate.state})")

    def phase_finished(self, outcome: DrainOutcome, state: SessionState, notes: list[str]) -> None:
        self._print(outcome_line(outcome, state))
        for note in notes:
            self._print(f"    {note}")

    def progress(self, done: int, planned: int) -> None:
        pass  # each finished phase already prints its line with [done/batch]

    def message(self, text: str) -> None:
        self._print(f"[drain] {text}")

    def finished(self, state: SessionState) -> None:
        pass


class RichReporter:
    """A live bar: phases done, successes, telemetry events and the phases running now."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress_bar = Progress(
            TextColumn("[bold]drain[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ok {task.fields[ok]}  fail {task.fields[failed]}  events {task.fields[events]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[current]}"),
            console=self.console,
            transient=False,
        )
        self.task: Any = None
        self.current: dict[int, str] = {}

    def started(self, state: SessionState, options: BatchOptions) -> None:
        self.progress_bar.start()
        self.task = self.progress_bar.add_task(
            "drain",
            total=state.batch_size,
            completed=state.total_processed,
            ok=state.total_success,
            failed=state.total_failed,
            events=state.total_telemetry_events,
            current="",
        )
        self.console.print(f"session {state.session_id} ({options.workers} worker(s))")

    def _current(self) -> str:
        return _short(", ".join(self.current[k] for k in sorted(self.current)), 60)

    def phase_started(self, candidate: Candidate, worker: int) -> None:
        self.current[worker] = f"{candidate.run_id}/{candidate.phase_id}"
        self.progress_bar.update(self.task, current=self._current())

    def phase_finished(self, outcome: DrainOutcome, state: SessionState, notes: list[str]) -> None:
        key = f"{outcome.run_id}/{outcome.phase_id}"
        for worker, where in list(self.current.items()):
            if where == key:
                del self.current[worker]
        self.progress_bar.update(
            self.task,
            completed=state.total_processed,
            ok=state.total_success,
            failed=state.total_failed,
            events=state.total_telemetry_events,
            current=self._current(),
        )
        if not outcome.success:
            self.console.print(outcome_line(outcome, state))
        for note in notes:
            self.console.print(f"  {note}")

    def progress(self, done: int, planned: int) -> None:
        if self.task is not None:
            self.progress_bar.update(self.task, total=max(planned, 1), completed=done)

    def message(self, text: str) -> None:
        self.console.print(text)

    def finished(self, state: SessionState) -> None:
        self.progress_bar.stop()


def make_reporter(stream: IO[str] | None = None) -> LineReporter | RichReporter:
    console = Console(stderr=True)
    if stream is None and console.is_terminal:
        return RichReporter(console)
    return LineReporter(stream)


def progress_percent(done: int, planned: int) -> float:
    """``done`` of ``planned`` phases in percent, to 0.1 (100 when nothing was planned; never above 100)."""
    return 100.0 if planned <= 0 else round(min(100.0, 100.0 * done / planned), 1)


def session_line(state: SessionState, now: datetime | None = None) -> str:
    """One line of ``drain sessions``: id, status as an operator reads it (``abandoned`` when its drain died), counts."""
    return (f"{state.session_id}  {_short(state.status_line(now), 200)}  started "
            f"{state.started_at.isoformat(timespec='seconds')}  {state.total_processed} processed "
            f"({state.total_success} ok, {state.total_failed} failed, {state.total_timeouts} timeouts), "
            f"{_plural(state.total_telemetry_events, 'telemetry event')}")


def format_summary(state: SessionState, wall_seconds: float | None = None) -> str:
    """The original's summary: rates, yield, zero-yield breakdown, boundary hits, stopped runs, per run."""
    results = [r for r in state.results if r.counts]
    lines = [
        RULE,
        "BATCH DRAIN SUMMARY",
        RULE,
        f"Session ID: {state.session_id}",
        f"Started: {state.started_at.isoformat(timespec='seconds')}",
        f"Completed: {state.completed_at.isoformat(timespec='seconds') if state.completed_at else 'not completed'}",
        f"Status: {state.status_line()}",
        "",
        f"Total Processed: {state.total_processed}",
        f"  [OK] Succeeded: {state.total_success}",
        f"  [FAIL] Failed: {state.total_failed}",
        f"  [TIMEOUT] Timeouts: {state.total_timeouts}",
    ]
    if state.total_processed:
        lines.append(f"Success Rate: {100.0 * state.total_success / state.total_processed:.1f}%")
    lines += ["", "Telemetry Collection:", f"  Total Events: {state.total_telemetry_events}"]
    lines.append(f"  LLM Calls: {sum(r.llm_calls for r in results)}")
    busy_minutes = sum(r.duration_seconds for r in results if not r.timed_out) / 60
    if state.total_telemetry_events and busy_minutes > 0:
        lines.append(f"  Overall Yield: {state.total_telemetry_events / busy_minutes:.2f} events/minute (non-timeout phase time)")
    if state.total_telemetry_events and wall_seconds:
        lines.append(f"  Wall-clock Yield: {state.total_telemetry_events / (wall_seconds / 60):.2f} events/minute")
    zero = Counter(r.zero_yield_reason or "unknown" for r in results if r.telemetry_events == 0)
    if zero:
        lines += ["", "Zero-Yield Breakdown:"]
        lines += [f"  {reason}: {count}" for reason, count in sorted(zero.items(), key=lambda kv: (-kv[1], kv[0]))]
    boundary = sum(1 for r in results if r.reached_llm_boundary)
    if boundary:
        lines += ["", f"LLM Boundary Hits: {boundary} phases hit message/context limits"]
    lines += [
        "",
        "Triage:",
        f"  Sampled Runs: {len(state.sampled_runs)} (promising {len(state.promising_runs)}, "
        f"deprioritized {len(state.deprioritized_runs)})",
        "Stop Conditions:",
        f"  Stopped Runs: {len(state.stopped_runs)}",
    ]
    lines += [f"    - {run_id}" for run_id in sorted_runs(state.stopped_runs)]
    lines += [
        f"  Unique Fingerprints: {len(state.fingerprint_counts)}",
        f"  Repeat Limit Hits: {len(state.stopped_fingerprints)}",
        "",
        "Results by Run:",
        "-" * 80,
    ]
    by_run: dict[str, list[DrainOutcome]] = {}
    for result in results:
        by_run.setdefault(result.run_id, []).append(result)
    for run_id in sorted_runs(by_run):
        run_results = by_run[run_id]
        ok = sum(1 for r in run_results if r.success)
        timeouts = sum(1 for r in run_results if r.timed_out)
        events = sum(r.telemetry_events for r in run_results)
        flags = " [STOPPED]" if run_id in state.stopped_runs else ""
        flags += " [DEPRIORITIZED]" if run_id in state.deprioritized_runs else ""
        lines.append(f"  {run_id}{flags}: {ok}/{len(run_results)} succeeded, {timeouts} timeouts, {events} events")
    lines.append(RULE)
    return "\n".join(lines)
