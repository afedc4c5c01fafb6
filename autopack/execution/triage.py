"""Pure triage rules of the batch drain: fingerprints, zero-yield reasons, skip rules and priorities.

Everything here is a function of its arguments (no database, no clock), so each rule of reference §4.4–4.5
is tested on its own. The rules are the original controller's, with its defects fixed: zero-yield reasons
come from the executor's structured result instead of substring searches of stdout (§10.19), and the
"other" priority group the original declared but never filled now holds same-session retries.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from autopack.run_order import run_order_key

# --- return codes (the original's subprocess exit codes, kept as the fingerprint vocabulary) -----------

RC_SUCCESS = 0
RC_FAILED = 1
RC_TIMEOUT = -1
RC_SIGTERM = 143
#: LeaseLostError's exit code: the phase was taken over while we ran it.
RC_LEASE_LOST = 4
RC_INTERRUPTED = 130
TIMEOUT_RETURNCODES = frozenset({RC_TIMEOUT, RC_SIGTERM})


def rc_bucket(returncode: int | None) -> str | None:
    """−1 → ``timeout``, 0 → ``rc0``, 1 → ``rc1``, 143 → ``timeout143``, otherwise ``rc<N>`` (§4.5)."""
    if returncode is None:
        return None
    if returncode == RC_TIMEOUT:
        return "timeout"
    if returncode == RC_SIGTERM:
        return "timeout143"
    return f"rc{returncode}"


def returncode_for_signal(signum: int) -> int:
    """A child killed by signal N reports 128+N, as a shell would (SIGTERM → 143, SIGKILL → 137)."""
    return 128 + signum


# --- error normalisation and fingerprints -------------------------------------------------------------

# The steps of §4.5, applied in this exact order; each is tested on its own.
NORMALISATION_STEPS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("date", re.compile(r"\d{4}-\d{2}-\d{2}"), "date"),
    ("time", re.compile(r"\d{2}:\d{2}:\d{2}"), "time"),
    ("windows_path", re.compile(r"[a-z]:\\[\w\\.\-]+"), "path"),
    ("unix_path", re.compile(r"/[\w/.\-]+"), "path"),
    ("address", re.compile(r"0x[0-9a-f]+"), "addr"),
    ("line_number", re.compile(r"line \d+"), "line num"),
    ("colon_number", re.compile(r":\d+"), ":num"),
    ("session_id", re.compile(r"(session|run|batch|drain)-\d{8}-\d{6}"), r"\1-id"),
    ("number", re.compile(r"\b\d+\b"), "num"),
    ("whitespace", re.compile(r"\s+"), " "),
)
FINGERPRINT_ERROR_CHARS = 200


def normalize_error_text(text: str | None) -> str:
    """Lower-case, then replace dates, times, paths, addresses, line numbers, ids and numbers (§4.5)."""
    if not text:
        return ""
    normalised = text.lower()
    for _name, pattern, replacement in NORMALISATION_STEPS:
        normalised = pattern.sub(replacement, normalised)
    return normalised.strip()


def failure_fingerprint(final_state: str, returncode: int | None, error_message: str | None) -> str:
    """``final_state|rc bucket|first 200 chars of the normalised error`` (absent parts left out)."""
    parts = [final_state]
    bucket = rc_bucket(returncode)
    if bucket is not None:
        parts.append(bucket)
    if error_message:
        parts.append(normalize_error_text(error_message)[:FINGERPRINT_ERROR_CHARS])
    return "|".join(parts)


# --- zero-yield reasons ---------------------------------------------------------------------------------


class ZeroYield:
    SUCCESS_NO_LLM_CALLS = "success_no_llm_calls"
    TIMEOUT = "timeout"
    FAILED_BEFORE_LLM = "failed_before_llm"
    LLM_BOUNDARY_HIT = "llm_boundary_hit"
    EXECUTION_ERROR = "execution_error"
    UNKNOWN = "unknown"

    ALL = (SUCCESS_NO_LLM_CALLS, TIMEOUT, FAILED_BEFORE_LLM, LLM_BOUNDARY_HIT, EXECUTION_ERROR, UNKNOWN)


#: ``PhaseResult.failure_stage`` values of the phase executor.
STAGE_BEFORE_LLM = "before_llm"
STAGE_LLM_BOUNDARY = "llm_boundary"
STAGE_PROVIDER = "provider"
STAGE_EXECUTION = "execution"
STAGE_VALIDATION = "validation"
#: The output was cut at its ceiling (the escalated retry too, or no retry was left): an expected outcome of a
#: budget experiment, recorded as a censored sample, never a repeated failure (no fingerprint, no stop rule).
STAGE_TRUNCATION = "truncation"
_ERROR_STAGES = frozenset({STAGE_PROVIDER, STAGE_EXECUTION, STAGE_VALIDATION, STAGE_TRUNCATION})


def zero_yield_reason(
    *,
    telemetry_events: int,
    success: bool,
    timed_out: bool,
    reached_llm_boundary: bool,
    failure_stage: str | None,
) -> str | None:
    """Why a phase gave no telemetry, from the structured result; first matching rule wins (§4.5)."""
    if telemetry_events > 0:
        return None
    if success:
        return ZeroYield.SUCCESS_NO_LLM_CALLS
    if timed_out:
        return ZeroYield.TIMEOUT
    if reached_llm_boundary or failure_stage == STAGE_LLM_BOUNDARY:
        return ZeroYield.LLM_BOUNDARY_HIT
    if failure_stage == STAGE_BEFORE_LLM:
        return ZeroYield.FAILED_BEFORE_LLM
    if failure_stage in _ERROR_STAGES:
        return ZeroYield.EXECUTION_ERROR
    return ZeroYield.UNKNOWN


# --- sample-first triage -----------------------------------------------------------------------------


def sample_is_promising(
    *,
    success: bool,
    telemetry_events: int,
    timed_out: bool,
    fingerprint: str | None,
    fingerprint_counts: Mapping[str, int],
) -> bool:
    """The first drained phase of a run decides: promising unless it failed with an already-seen fingerprint.

    ``fingerprint_counts`` are the counts *before* this result is added (as in the original), so a
    fingerprint "already seen" means seen on an earlier phase.
    """
    if success or telemetry_events > 0 or timed_out or not fingerprint:
        return True
    return fingerprint_counts.get(fingerprint, 0) < 1


# --- skip rules and priorities ------------------------------------------------------------------------


@dataclass(frozen=True)
class TriageLimits:
    #: A run is stopped once one failure fingerprint has occurred this often *in that run* within the session
    #: (``fingerprint_stops_run``); truncations have no fingerprint and never count.
    max_fingerprint_repeats: int
    max_attempts_per_phase: int
    max_timeouts_per_run: int


@dataclass(frozen=True)
class TriageView:
    """The session facts the skip and priority rules read (a read-only view of the session state)."""

    sampled_runs: frozenset[str] = frozenset()
    promising_runs: frozenset[str] = frozenset()
    deprioritized_runs: frozenset[str] = frozenset()
    stopped_runs: frozenset[str] = frozenset()
    #: (run_id, phase_id) → attempts made in this session (outcomes only; interruptions do not count).
    attempts: Mapping[tuple[str, str], int] | None = None
    #: run_id → timeouts in this session.
    timeouts: Mapping[str, int] | None = None


def fingerprint_stops_run(run_fingerprint_count: int, limits: TriageLimits) -> bool:
    """The fingerprint stop rule: a run stops once one failure fingerprint occurred ``max_fingerprint_repeats``
    times in that run within the session. The count is per (run, fingerprint), so failures of other runs never
    stop this one, and a truncation (``STAGE_TRUNCATION``) has no fingerprint: it never counts."""
    return run_fingerprint_count >= limits.max_fingerprint_repeats


def skip_reason(run_id: str, phase_id: str, view: TriageView, limits: TriageLimits) -> str | None:
    """Why this phase must not be drained now (the original's ``_should_skip_phase``), or None."""
    if run_id in view.deprioritized_runs:
        return f"run {run_id} deprioritized (sample-first triage)"
    if run_id in view.stopped_runs:
        return f"run {run_id} stopped (failure fingerprint repeated)"
    timeouts = (view.timeouts or {}).get(run_id, 0)
    if timeouts >= limits.max_timeouts_per_run:
        return f"run {run_id} has {timeouts} timeouts (limit: {limits.max_timeouts_per_run})"
    attempts = (view.attempts or {}).get((run_id, phase_id), 0)
    if attempts >= limits.max_attempts_per_phase:
        return f"phase attempted {attempts} times this session (limit: {limits.max_attempts_per_phase})"
    return None


def failure_bucket(last_failure_reason: str | None) -> int:
    """0 none → 1 collection/import → 2 deliverable/missing → 3 patch/no-op/manifest → 4 other → 5 timeout."""
    if not last_failure_reason:
        return 0
    reason = last_failure_reason.lower()
    if "collection" in reason or "import" in reason:
        return 1
    if "deliverable" in reason or "missing" in reason:
        return 2
    if "patch" in reason or "no-op" in reason or "manifest" in reason:
        return 3
    if "timeout" in reason or "timed out" in reason:
        return 5
    return 4


GROUP_UNSAMPLED = 0
GROUP_PROMISING = 1
GROUP_RETRY = 2


@dataclass(frozen=True)
class Candidate:
    run_id: str
    phase_id: str
    phase_index: int
    state: str
    last_failure_reason: str | None = None
    #: the phase's attempts so far, over every session (``builder_attempts``), and its own limit
    #: (``max_builder_attempts``; None: none)
    attempts_used: int = 0
    max_attempts: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.run_id, self.phase_id)

    @property
    def exhausted(self) -> bool:
        """The phase has used its ``max_builder_attempts`` over all sessions: a weekly drain must not retry a
        phase that keeps failing every week (each retry is a paid call). A QUEUED phase is drained whatever its
        count (a requeue, ``POST …/state``, asks for another try), and one left EXECUTING by a dead drain is taken
        back, so that it ends in a state."""
        return (self.max_attempts is not None and self.attempts_used >= self.max_attempts
                and self.state not in ("QUEUED", "EXECUTING"))


def skip_run_prefix(run_id: str, prefixes: Iterable[str]) -> bool:
    return any(run_id.startswith(prefix) for prefix in prefixes if prefix)


def order_candidates(
    candidates: Iterable[Candidate],
    view: TriageView,
    limits: TriageLimits,
    *,
    in_flight: Collection[tuple[str, str]] = (),
    skip_run_prefixes: Collection[str] = (),
) -> list[Candidate]:
    """Eligible phases, best first: unsampled runs, then promising runs, then same-session retries.

    Within a group: failure bucket (§4.4), then lowest phase_index. While a run's sample phase is in
    flight, its other phases wait: the sample decides whether the run is worth more tokens.
    """
    attempts = view.attempts or {}
    in_flight_keys = set(in_flight)
    runs_in_flight = {run_id for run_id, _ in in_flight_keys}
    ranked: list[tuple[tuple[int, int, int, tuple[str, int, str], str], Candidate]] = []
    for candidate in candidates:
        if (candidate.key in in_flight_keys or skip_run_prefix(candidate.run_id, skip_run_prefixes)
                or candidate.exhausted):
            continue
        if skip_reason(candidate.run_id, candidate.phase_id, view, limits) is not None:
            continue
        if candidate.run_id not in view.sampled_runs:
            if candidate.run_id in runs_in_flight:
                continue  # the run's sample is running
            group = GROUP_UNSAMPLED
        elif attempts.get(candidate.key, 0) > 0:
            group = GROUP_RETRY
        elif candidate.run_id in view.promising_runs:
            group = GROUP_PROMISING
        else:
            continue
        rank = (
            group,
            failure_bucket(candidate.last_failure_reason),
            candidate.phase_index,
            run_order_key(candidate.run_id),
            candidate.phase_id,
        )
        ranked.append((rank, candidate))
    ranked.sort(key=lambda item: item[0])
    return [candidate for _, candidate in ranked]
