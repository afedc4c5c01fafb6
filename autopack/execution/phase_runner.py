"""Run one claimed phase: estimate, call the provider, validate and write the deliverables, record telemetry.

Contract (the batch drain and ``drain one`` depend on it): ``execute_phase`` runs a phase the caller has
already claimed (``leases.claim_phase``) and always finishes it through ``leases.finish_phase`` with the
caller's lease owner, COMPLETE or FAILED (with ``last_failure_reason``). It returns a ``PhaseResult``; it
raises only ``LeaseLostError`` (the lease expired or was taken over, so the result was rejected),
``PhaseFinishError`` (the database refused the final write; the phase was given back when possible) and
``KeyboardInterrupt`` (after giving the phase back). A phase whose earlier execution recorded a successful call
but was given back (or died) before its finish is finished from that call, without a new one
(``telemetry.recorder.unfinished_success``): its deliverables were written and checked before the call was settled.
The call is recorded as soon as the provider returns (outcome unknown, ``OUTCOME_UNCHECKED``) and settled once
its deliverables are written and checked, so a worker killed during a long check keeps the call's sample; such
a call never finishes the phase (it was not checked): the phase runs again under a fresh attempt index.

A provider reporting usage no telemetry column can hold (``telemetry.usage.validate_response``) fails the phase
at stage ``provider``; the call is still recorded as a ``split_kind = 'invalid'`` usage row.

One execution is one attempt, plus at most one escalated retry: when the output is truncated, the ceiling
is escalated once (``token_estimator.escalate``: ×1.25, capped), an escalation event is recorded, a new
attempt index is reserved under the lease, and the call is made again with
``decide_ceiling(..., escalated_to=retry)``. Every call writes its own telemetry rows.

Success means: every deliverable came back as a complete ``=== FILE ===`` block, every ``.py`` compiles,
and the phase's optional ``check_command`` passes (run in the run workspace with a timeout).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from autopack.config import get_settings
from autopack.db.handle import Database
from autopack.db.models import (
    LlmUsageEvent,
    Phase,
    PhaseState,
    Run,
    TokenBudgetEscalationEvent,
    TokenEstimationV2Event,
)
from autopack.errors import AutopackError, InputError
from autopack.execution import leases
from autopack.execution.leases import Claim, LeaseLostError
from autopack.execution.prompt import build_prompt, max_context_files
from autopack.execution.sandbox import SandboxUnavailableError, launch, require_sandbox, run_check
from autopack.execution.spec import check_command_argv, refuse_untrusted_check_command
from autopack.execution.workspace import (
    collect_file_stats,
    confined,
    deliverable_workspace_path,
    read_context,
    run_workspace,
    write_files,
)
from autopack.llm import get_provider
from autopack.llm.base import (
    LLMBoundaryError,
    LLMProvider,
    LLMRequest,
    LLMResponse,
    ProviderError,
    ProviderResponseError,
    TaskHints,
)
from autopack.llm.builder_format import parse_files
from autopack.logging import get_logger, known_secrets, one_line, redact
from autopack.taxonomy import DOCS_LIKE, canonical_category
from autopack.telemetry.adaptive_state import level_reader
from autopack.telemetry.recorder import (
    CallKey,
    RecordedSuccess,
    TelemetryWriteError,
    record_call,
    record_escalation,
    record_invalid_call,
    set_phase_outcome,
    settle_call,
    unfinished_success,
)
from autopack.telemetry.usage import validate_response
from autopack.token_estimator import (
    MAX_OUTPUT_TOKENS,
    Exploration,
    PhaseFeatures,
    deliverable_kind,
    escalate,
    plan_call,
)

log = get_logger(__name__)

CHECK_COMMAND_TIMEOUT_SECONDS = 300.0
MAX_REASON_CHARS = 2000
#: The only environment a check command sees (plus ``LC_*`` and the names in ``AUTOPACK_CHECK_COMMAND_ENV``):
#: an allow-list, so a new secret in the worker's environment never reaches it.
CHECK_COMMAND_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "USER", "LOGNAME", "TERM",
                     "VIRTUAL_ENV", "PYTHONPATH", "SYSTEMROOT", "PATHEXT", "COMSPEC")

FAILURE_STAGES = ("before_llm", "llm_boundary", "provider", "execution", "validation", "truncation")


@dataclass
class PhaseResult:
    run_id: str
    phase_id: str
    final_state: str  # "COMPLETE" | "FAILED"
    success: bool
    attempts: int  # attempts made by this execution (2 when a truncation escalated once)
    llm_calls: int  # provider calls made
    telemetry_events: int  # token_estimation_v2_events rows this execution wrote, or the recorded call it finished from
    error_message: str | None
    failure_stage: str | None  # None on success, else one of FAILURE_STAGES
    reached_llm_boundary: bool
    duration_seconds: float
    #: finished from a call an earlier execution recorded (``_recorded_success``): no new call was made
    recorded_call: bool = False


@dataclass(frozen=True)
class PhaseSnapshot:
    """The phase row's fields, read once (no ORM object is held across the provider call)."""

    run_id: str
    phase_id: str
    description: str
    category: str | None
    complexity: str | None
    deliverables: tuple[str, ...]
    read_only_context: tuple[str, ...]
    scope_paths: tuple[str, ...]
    builder_mode: str | None
    check_command: str | None
    run_source: str | None = None  # runs.source: "api" for runs posted to the HTTP API


def load_phase(run_id: str, phase_id: str, *, db: Database) -> PhaseSnapshot | None:
    with db.session() as session:
        phase = session.execute(
            sa.select(Phase).where(Phase.run_id == run_id, Phase.phase_id == phase_id)
        ).scalar_one_or_none()
        if phase is None:
            return None
        return PhaseSnapshot(
            run_id=run_id,
            phase_id=phase_id,
            description=phase.description or phase.name or phase_id,
            category=phase.task_category,
            complexity=phase.complexity,
            deliverables=tuple(d for d in phase.deliverables if d and d.strip()),
            read_only_context=tuple(phase.read_only_context),
            scope_paths=tuple(phase.scope_paths),
            builder_mode=phase.builder_mode,
            check_command=phase.check_command,
            run_source=session.execute(sa.select(Run.source).where(Run.id == run_id)).scalar_one_or_none(),
        )


@dataclass
class BuildCheck:
    """Did one provider output satisfy the phase? ``files`` holds the parsed deliverables."""

    success: bool
    files: dict[str, str] = field(default_factory=dict)
    message: str | None = None


def check_output(text: str, deliverable_paths: Sequence[str]) -> BuildCheck:
    """Every deliverable present as a complete block, and every Python deliverable compiles."""
    parsed = parse_files(text)
    missing = [p for p in deliverable_paths if p not in parsed.files]
    if missing:
        cut = f"; output cut inside {parsed.unterminated}" if parsed.unterminated else ""
        found = f" (got: {', '.join(sorted(parsed.files)) or 'no file blocks'})"
        return BuildCheck(False, message=f"missing deliverables: {', '.join(missing)}{cut}{found}")
    files = {p: parsed.files[p] for p in deliverable_paths}
    for path, content in files.items():
        if PurePosixPath(path).suffix in (".py", ".pyi"):
            try:
                compile(content, path, "exec", dont_inherit=True)
            except SyntaxError as exc:
                return BuildCheck(False, files, f"{path}:{exc.lineno}: does not compile: {exc.msg}")
            except ValueError as exc:  # e.g. null bytes
                return BuildCheck(False, files, f"{path}: does not compile: {exc}")
    return BuildCheck(True, files)


def check_command_env(environ: Mapping[str, str] | None = None, extra: str | None = None) -> dict[str, str]:
    """The allow-listed environment of a check command (``extra``: comma-separated names to add)."""
    environ = os.environ if environ is None else environ
    if extra is None:
        extra = get_settings().check_command_env
    names = set(CHECK_COMMAND_ENV) | {name.strip() for name in extra.split(",") if name.strip()}
    return {k: v for k, v in environ.items() if k in names or k.startswith("LC_")}


def run_check_command(command: str, workspace: Path, *, timeout: float = CHECK_COMMAND_TIMEOUT_SECONDS,
                      database: Database | None = None) -> str | None:
    """Run the phase's check in the workspace; None when it passes, else a one-line reason (redacted).

    One program and its arguments (``spec.check_command_argv``: shell quoting, never a shell), with the
    allow-listed environment, in the sandbox (``sandbox.run_check``: bounded output, a timeout that kills
    everything it started, the workspace's setuid and world-write bits stripped afterwards; ``database``'s file
    is hidden too when it is not the configured one). Refused, in one line, when the sandbox cannot run and the
    operator did not opt out. The reason is on one printable line, with what the operator passed in beyond
    the basics (``AUTOPACK_CHECK_COMMAND_ENV=NPM_TOKEN``) masked like a secret.
    """
    environment = check_command_env()
    secrets = known_secrets() + [v for k, v in environment.items()
                                 if k not in CHECK_COMMAND_ENV and not k.startswith("LC_")]
    try:
        argv = check_command_argv(command)
        done = run_check(argv, workspace, environment, get_settings(), timeout=timeout, database=database)
    except (InputError, SandboxUnavailableError) as exc:
        problem: str | None = redact(exc.one_line(), secrets)
    else:
        problem = done.reason(command, argv[0], timeout, secrets)
    return None if problem is None else one_line(problem)


HEARTBEAT_INTERVAL_SECONDS = 60.0


class _BackgroundHeartbeat:
    """Keep the lease alive while a (possibly many-minute) provider call runs.

    ``beat`` is called from a helper thread every ``interval`` seconds, never at the same time as the
    main thread's own calls (the thread is stopped and joined before the call returns). A lost lease is
    re-raised in the main thread; other heartbeat errors are logged and left to the next regular beat.
    """

    def __init__(self, beat: Callable[[], None], interval: float) -> None:
        self._beat = beat
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="phase-heartbeat", daemon=True)
        self.lost: LeaseLostError | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except LeaseLostError as exc:
                self.lost = exc
                return
            except Exception as exc:  # noqa: BLE001 - a DB hiccup must not kill the call; the next beat retries
                log.warning("heartbeat failed: %s", exc)

    def __enter__(self) -> _BackgroundHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.lost is not None and exc_info[0] is None:
            raise self.lost


class _Failure(Exception):
    """Internal: stop the execution with a failure stage and message."""

    def __init__(self, stage: str, message: str, *, boundary: bool = False) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.boundary = boundary


@dataclass
class _Counters:
    attempts: int = 0
    llm_calls: int = 0
    telemetry_events: int = 0
    tokens_used: int = 0
    attempt_indices: list[int] = field(default_factory=list)
    recorded_call: bool = False


def _default_heartbeat(claim: Claim, db: Database) -> Callable[[], None]:
    def beat() -> None:
        with db.session() as session:
            leases.heartbeat(session, claim.run_id, claim.phase_id, claim.owner)

    return beat


def execute_phase(
    run_id: str,
    phase_id: str,
    *,
    claim: Claim,
    db: Database,
    provider: LLMProvider | None = None,
    telemetry: bool = True,
    heartbeat: Callable[[], None] | None = None,
) -> PhaseResult:
    """Run a claimed phase to COMPLETE or FAILED (see the module docstring for the contract)."""
    start = time.monotonic()
    counters = _Counters()
    beat = heartbeat or _default_heartbeat(claim, db)
    try:
        recorded = _recorded_success(run_id, phase_id, db) if telemetry else None
        if recorded is None:
            _run(run_id, phase_id, claim=claim, db=db, provider=provider, telemetry=telemetry, beat=beat,
                 counters=counters)
        else:  # the earlier call's tokens and its sample are this phase's yield (no new call: llm_calls stays 0)
            counters.attempt_indices.append(recorded.attempt_index)
            counters.tokens_used += recorded.reported_tokens
            counters.telemetry_events += recorded.estimation_events
            counters.recorded_call = True
        stage, message, boundary = None, None, False
    except _Failure as failure:
        stage, message, boundary = failure.stage, failure.message, failure.boundary
    except LeaseLostError:
        raise
    except KeyboardInterrupt:
        _give_back(claim, db)
        raise
    except TelemetryWriteError as exc:
        stage, message, boundary = "execution", exc.one_line(), False
    except Exception as exc:  # a bug or an I/O error must still finish the phase, never leave it EXECUTING
        log.exception("phase %s/%s: unexpected error", run_id, phase_id)
        stage, message, boundary = "execution", f"{type(exc).__name__}: {exc}", False

    final_state = PhaseState.COMPLETE if stage is None else PhaseState.FAILED
    reason = None if message is None else redact(message)[:MAX_REASON_CHARS]
    rejected = _finish(claim, final_state, reason, counters.tokens_used, db)
    if rejected is not None:
        final_state, stage, reason = PhaseState.FAILED, stage or "execution", redact(rejected)[:MAX_REASON_CHARS]
    if telemetry and counters.attempt_indices:
        # after the finish: a phase given back before it (its lease lost) leaves its recorded calls without an
        # outcome, so the next execution finishes it from them (``_recorded_success``) instead of calling again
        try:
            set_phase_outcome(run_id, phase_id, counters.attempt_indices, final_state, db=db)
        except TelemetryWriteError as exc:
            log.warning("phase %s/%s is %s, but its telemetry rows do not say so: %s", run_id, phase_id,
                        final_state, exc.one_line())
    result = PhaseResult(
        run_id=run_id,
        phase_id=phase_id,
        final_state=final_state,
        success=final_state == PhaseState.COMPLETE,
        attempts=counters.attempts,
        llm_calls=counters.llm_calls,
        telemetry_events=counters.telemetry_events,
        error_message=reason,
        failure_stage=stage,
        reached_llm_boundary=boundary,
        duration_seconds=time.monotonic() - start,
        recorded_call=counters.recorded_call,
    )
    log.info("[phase] %s/%s %s attempts=%d llm_calls=%d telemetry_events=%d%s%s", run_id, phase_id, final_state,
             result.attempts, result.llm_calls, result.telemetry_events,
             " (finished from an earlier execution's recorded call; no new call)" if counters.recorded_call else "",
             f" stage={stage} reason={reason}" if stage else "")
    return result


class PhaseFinishError(AutopackError):
    """The phase's outcome could not be written (the database failed); the phase was given back if possible."""

    exit_code = 1


def _finish(claim: Claim, final_state: str, reason: str | None, tokens_used: int, db: Database) -> str | None:
    """``leases.finish_phase``; if the database refuses the write, give the lease back rather than keep it."""
    try:
        with db.session() as session:
            return leases.finish_phase(session, claim.run_id, claim.phase_id, claim.owner, final_state,
                                       failure_reason=reason, tokens_used=tokens_used)
    except SQLAlchemyError as exc:
        released = _give_back(claim, db)
        detail = (redact(str(getattr(exc, "orig", exc))).strip().splitlines() or [""])[0]
        raise PhaseFinishError(
            f"could not record {final_state} for {claim.run_id}/{claim.phase_id}: {type(exc).__name__}: {detail}",
            hint="the phase was put back in the queue" if released
            else "its lease expires on its own; check the database (autopack db identity)",
        ) from exc


def _recorded_success(run_id: str, phase_id: str, db: Database) -> RecordedSuccess | None:
    """The attempt whose successful call an earlier execution recorded before it was given back or died.

    Its deliverables were written and checked before the call was settled as a success, so the phase is done: it
    is finished from that call rather than run again (a second call, and the phase counted twice).
    """
    try:
        recorded = unfinished_success(run_id, phase_id, db=db)
    except TelemetryWriteError as exc:
        raise _Failure("before_llm", exc.one_line()) from exc
    if recorded is not None:
        log.info("[phase] %s/%s: attempt %d's call was recorded as a success before the phase was given back; "
                 "finished from it (%d reported tokens), no new call", run_id, phase_id, recorded.attempt_index,
                 recorded.reported_tokens)
    return recorded


def _give_back(claim: Claim, db: Database) -> bool:
    try:
        with db.session() as session:
            return leases.release(session, claim.run_id, claim.phase_id, claim.owner)
    except Exception:  # best effort while interrupted or failing; the lease expires anyway
        log.warning("could not release %s/%s; its lease will expire", claim.run_id, claim.phase_id)
        return False


def _run(
    run_id: str,
    phase_id: str,
    *,
    claim: Claim,
    db: Database,
    provider: LLMProvider | None,
    telemetry: bool,
    beat: Callable[[], None],
    counters: _Counters,
) -> None:
    phase = load_phase(run_id, phase_id, db=db)
    if phase is None:
        raise _Failure("before_llm", f"phase {run_id}/{phase_id} not found")
    try:
        refuse_untrusted_check_command(phase.run_source, phase.check_command,
                                       allowed=get_settings().api_allow_check_commands)
    except AutopackError as exc:
        raise _Failure("before_llm", exc.one_line()) from exc
    if phase.check_command:  # a check that cannot run would fail the phase after the tokens are spent
        try:
            require_sandbox(get_settings())
        except SandboxUnavailableError as exc:
            raise _Failure("before_llm", exc.one_line()) from exc
    if not phase.deliverables:
        raise _Failure("before_llm", "phase has no deliverables: nothing for the builder to produce")

    try:
        workspace = run_workspace(run_id, db_id=db.stored_id())
        paths = _deliverable_paths(phase.deliverables)
        for path in (*paths, *phase.read_only_context):
            confined(workspace, path)
        existing = collect_file_stats(workspace, paths)
        docs = canonical_category(phase.category) in DOCS_LIKE or all(
            deliverable_kind(p, canonical_category(phase.category)) == "doc" for p in paths
        )
        context, omitted = read_context(workspace, phase.read_only_context, max_files=max_context_files(docs))
        if phase.check_command:
            argv = check_command_argv(phase.check_command)
            if "/" not in argv[0]:  # found on the sandbox's PATH, or never (a ./script may be a deliverable)
                launch(argv, workspace, check_command_env(), get_settings(), database=db)
    except AutopackError as exc:
        raise _Failure("before_llm", exc.one_line()) from exc
    except OSError as exc:
        raise _Failure("before_llm", f"workspace error: {exc}") from exc

    features = PhaseFeatures(
        category=phase.category,
        complexity=phase.complexity,
        deliverables=phase.deliverables,
        description=phase.description,
        scope_paths=phase.scope_paths,
        read_only_context=phase.read_only_context,
        builder_mode=phase.builder_mode,
        existing_files=existing,
    )
    prompt = build_prompt(phase_id=phase_id, goal=phase.description, deliverables=paths, context=context,
                          omitted_context=omitted, docs=docs, existing=tuple(existing))
    if provider is None:
        try:
            provider = get_provider(get_settings())
        except AutopackError as exc:
            raise _Failure("before_llm", exc.one_line()) from exc
    model_max = int(getattr(provider, "max_output_tokens", MAX_OUTPUT_TOKENS) or MAX_OUTPUT_TOKENS)

    attempt_index = claim.attempt_index
    if telemetry:
        attempt_index = _fresh_attempt_index(run_id, phase_id, claim.owner, attempt_index, db)
    escalated_to: int | None = None
    settings = get_settings()
    while True:
        counters.attempts += 1
        counters.attempt_indices.append(attempt_index)
        explore = None if escalated_to is not None else Exploration.for_call(
            settings.explore_share, settings.explore_seed, run_id, phase_id, attempt_index)
        # adaptive: the group's runtime ACI level, read now (only for groups with a reviewed adaptive curve)
        est, decision = plan_call(features, escalated_to=escalated_to, model_max_output=model_max,
                                  adaptive=level_reader(db), explore=explore)
        beat()
        request = LLMRequest(
            system=prompt.system,
            prompt=prompt.user,
            max_tokens=decision.actual_max_tokens,
            hints=TaskHints(run_id=run_id, phase_id=phase_id, attempt_index=attempt_index, call_index=0,
                            category=phase.category, complexity=phase.complexity, deliverables=paths,
                            description=phase.description),
        )
        log.info("[phase] %s/%s attempt %d: provider=%s model=%s predicted=%d selected_budget=%d max_tokens=%d",
                 run_id, phase_id, attempt_index, provider.name, getattr(provider, "model", "?"),
                 est.predicted_output_tokens, decision.selected_budget, decision.actual_max_tokens)
        counters.llm_calls += 1
        try:
            with _BackgroundHeartbeat(beat, HEARTBEAT_INTERVAL_SECONDS):
                response = validate_response(provider.complete(request))
        except LLMBoundaryError as exc:
            raise _Failure("llm_boundary", exc.one_line(), boundary=True) from exc
        except ProviderResponseError as exc:
            if telemetry:
                _record_invalid(CallKey(run_id, phase_id, attempt_index, 0), provider, exc, db)
            raise _Failure("provider", exc.one_line()) from exc
        except ProviderError as exc:
            raise _Failure("provider", exc.one_line()) from exc
        beat()
        counters.tokens_used += int(response.reported_total or 0)

        key = CallKey(run_id, phase_id, attempt_index, 0)
        if telemetry:  # durable before the check, which can take minutes: a worker killed meanwhile keeps its sample
            recorded = record_call(key, features, est, decision, response, success=None, db=db)
            counters.telemetry_events += int(recorded.estimation_created)
        check = _validate(response, paths, workspace, phase.check_command, db)
        if telemetry:
            settle_call(key, est, decision, response, success=check.success, db=db)
        if check.success:
            return
        if response.truncated and escalated_to is None:
            esc = escalate(selected_budget=decision.selected_budget, actual_max_tokens=decision.actual_max_tokens,
                           tokens_used=int(response.output_tokens or 0), complexity=phase.complexity or "")
            if telemetry:
                record_escalation(run_id, phase_id, attempt_index, esc, was_truncated=True,
                                  output_tokens=response.output_tokens, selected_budget=decision.selected_budget,
                                  actual_max_tokens=decision.actual_max_tokens, db=db)
            log.info("[phase] %s/%s attempt %d truncated at %s tokens: escalating %s -> %d", run_id, phase_id,
                     attempt_index, response.output_tokens, decision.actual_max_tokens, esc.retry_max_tokens)
            with db.session() as session:
                attempt_index = leases.reserve_attempt(session, run_id, phase_id, claim.owner)
            escalated_to = esc.retry_max_tokens
            continue
        stage = "truncation" if response.truncated else "validation"  # a cut output: a budget outcome, not a defect
        raise _Failure(stage, check.message or "builder output rejected")


def _record_invalid(key: CallKey, provider: LLMProvider, exc: ProviderResponseError, db: Database) -> None:
    """Keep a trace of a call whose usage was impossible; the phase fails on the provider error either way."""
    response = exc.response
    try:
        record_invalid_call(key, exc.provider or provider.name,
                            response.model if response else getattr(provider, "model", None), response,
                            exc.problems, db=db)
    except TelemetryWriteError as write_error:
        log.warning("%s", write_error.one_line())


MAX_ATTEMPT_SKIPS = 10_000


def _fresh_attempt_index(run_id: str, phase_id: str, owner: str, attempt_index: int, db: Database) -> int:
    """An attempt index no telemetry row of this phase uses yet.

    The claim's counter can lag behind existing rows (adopted legacy rows, or a run recreated with
    ``--replace``, which keeps its telemetry). Recording is idempotent on (run, phase, attempt, call), so
    reusing such a key would silently drop the new sample; reserve indices past the used ones instead.
    """
    with db.session() as session:
        try:
            used = _max_used_attempt(session, run_id, phase_id)
        except SQLAlchemyError as exc:
            raise TelemetryWriteError(f"telemetry tables unreadable for {run_id}/{phase_id}: {type(exc).__name__}: "
                                      f"{getattr(exc, 'orig', exc)}") from exc
        skips = 0
        while attempt_index <= used:
            if skips >= MAX_ATTEMPT_SKIPS:
                raise _Failure("before_llm", f"cannot find a free attempt index above {used}")
            attempt_index = leases.reserve_attempt(session, run_id, phase_id, owner)
            skips += 1
    return attempt_index


def _max_used_attempt(session: sa.orm.Session, run_id: str, phase_id: str) -> int:
    used = -1
    for model in (TokenEstimationV2Event, LlmUsageEvent, TokenBudgetEscalationEvent):
        value = session.execute(
            sa.select(sa.func.max(model.attempt_index)).where(model.run_id == run_id, model.phase_id == phase_id)
        ).scalar_one_or_none()
        if value is not None:
            used = max(used, int(value))
    return used


def _validate(response: LLMResponse, paths: Sequence[str], workspace: Path, check_command: str | None,
              db: Database) -> BuildCheck:
    if response.truncated:
        return BuildCheck(False, message=f"output truncated ({response.stop_reason}) at {response.output_tokens} of "
                                         f"{response.max_tokens} max_tokens")
    check = check_output(response.text, paths)
    if not check.success:
        return check
    try:
        write_files(workspace, check.files)
    except InputError as exc:  # a path a check command left as a directory or a FIFO: a failed check, not a crash
        return BuildCheck(False, check.files, exc.one_line())
    except OSError as exc:
        return BuildCheck(False, check.files, f"could not write the deliverables: {exc}")
    if check_command:
        problem = run_check_command(check_command, workspace, database=db)
        if problem:
            return BuildCheck(False, check.files, problem)
    return check


def _deliverable_paths(deliverables: Sequence[str]) -> tuple[str, ...]:
    """The file path each deliverable names (the rule the API and the CLI validated it with), without duplicates."""
    out: list[str] = []
    for text in deliverables:
        path = deliverable_workspace_path(text)
        if path not in out:
            out.append(path)
    return tuple(out)
