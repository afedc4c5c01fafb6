"""``autopack drain batch``: drain QUEUED and FAILED phases with sample-first triage, leases and sessions.

``drain_batch_command`` is attached to the ``drain`` command group: to the one ``autopack.cli.drain``
creates when that module registered first, otherwise to a group created here (the other module can then
find it the same way, or import ``drain_batch_command`` and attach it itself).
"""

from __future__ import annotations

from typing import Annotated

import typer

from autopack.cli.common import (
    MAX_COUNT,
    MAX_DURATION_SECONDS,
    MAX_LEASE_SECONDS,
    MAX_WORKERS,
    AllowEmptyDbOption,
    ExpectDbIdOption,
)
from autopack.config import get_settings
from autopack.execution.batch import (
    DEFAULT_LEASE_SECONDS,
    BatchOptions,
    DrainInterrupted,
    parse_states,
    run_batch_drain,
)
from autopack.execution.batch_report import format_summary, make_reporter
from autopack.execution.runs import check_run_ids


def drain_batch_command(
    run_id: Annotated[list[str] | None, typer.Option("--run-id", help="Drain only this run (repeatable; default all runs).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=MAX_COUNT, help="Phases to process in this session.")] = 10,
    api_url: Annotated[str | None, typer.Option("--api-url", help="Check that this API server uses the same database (default AUTOPACK_API_URL).")] = None,
    states: Annotated[str, typer.Option("--states", help="Phase states to drain, comma-separated.")] = "QUEUED,FAILED",
    max_consecutive_zero_yield: Annotated[int | None, typer.Option("--max-consecutive-zero-yield", min=1, help="Stop after N phases in a row without telemetry.")] = None,
    max_fingerprint_repeats: Annotated[int, typer.Option("--max-fingerprint-repeats", min=1, help="Stop a run once a failure fingerprint repeats N times.")] = 3,
    max_attempts_per_phase: Annotated[int, typer.Option("--max-attempts-per-phase", min=1, help="Attempts per phase in one session.")] = 2,
    max_timeouts_per_run: Annotated[int, typer.Option("--max-timeouts-per-run", min=1, help="Skip a run after N timeouts.")] = 2,
    phase_timeout_seconds: Annotated[float, typer.Option("--phase-timeout-seconds", min=0.001, max=MAX_DURATION_SECONDS, help="Kill a phase after this long.")] = 900.0,
    max_total_minutes: Annotated[float | None, typer.Option("--max-total-minutes", min=0.001, max=MAX_DURATION_SECONDS / 60, help="Stop starting phases after this long.")] = None,
    skip_run_prefix: Annotated[list[str] | None, typer.Option("--skip-run-prefix", help="Skip runs whose id starts with this (repeatable).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=MAX_WORKERS, help="Phases run in parallel (executor processes).")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the newest unfinished session.")] = False,
    lease_seconds: Annotated[float, typer.Option("--lease-seconds", min=1, max=MAX_LEASE_SECONDS, help="Lease length; a dead drain's phases are re-claimable after it.")] = DEFAULT_LEASE_SECONDS,
    provider_concurrency: Annotated[int | None, typer.Option("--provider-concurrency", min=0, help="Provider calls in flight across every drain on this database (default AUTOPACK_PROVIDER_CONCURRENCY; 0 = no gate).")] = None,
    expect_db_id: ExpectDbIdOption = None,
    allow_empty_db: AllowEmptyDbOption = False,
    no_telemetry: Annotated[bool, typer.Option("--no-telemetry", help="Drain without recording telemetry (allowed with TELEMETRY_DB_ENABLED off).")] = False,
) -> None:
    """Drain phases in priority order, one session saved after every phase; exit 1 if any phase failed."""
    settings = get_settings()
    options = BatchOptions(
        run_ids=list(run_id or []),
        batch_size=batch_size,
        states=parse_states(states),
        max_consecutive_zero_yield=max_consecutive_zero_yield,
        max_fingerprint_repeats=max_fingerprint_repeats,
        max_attempts_per_phase=max_attempts_per_phase,
        max_timeouts_per_run=max_timeouts_per_run,
        phase_timeout_seconds=phase_timeout_seconds,
        max_total_minutes=max_total_minutes,
        skip_run_prefixes=list(skip_run_prefix or []),
        workers=workers,
        resume=resume,
        telemetry=not no_telemetry,
        lease_seconds=lease_seconds,
        api_url=api_url or settings.api_url,
        provider_concurrency=provider_concurrency,
    )
    check_run_ids(options.run_ids, url=settings.resolved_database_url(), expect_db_id=expect_db_id)
    reporter = make_reporter()
    try:
        report = run_batch_drain(
            options,
            url=settings.resolved_database_url(),
            reporter=reporter,
            expect_db_id=expect_db_id,
            allow_empty_db=allow_empty_db,
        )
    except DrainInterrupted as exc:
        if exc.state is not None:
            typer.echo(format_summary(exc.state, exc.wall_seconds))
        raise
    typer.echo(format_summary(report.state, report.wall_seconds))
    raise typer.Exit(report.exit_code)


def _drain_group(app: typer.Typer) -> typer.Typer | None:
    for group in app.registered_groups:
        if group.name == "drain" and group.typer_instance is not None:
            return group.typer_instance
    return None


def register(app: typer.Typer) -> None:
    group = _drain_group(app)
    if group is None:
        group = typer.Typer(help="Drain phases: run them and record telemetry.", no_args_is_help=True)
        app.add_typer(group, name="drain")
    if not any(command.name == "batch" for command in group.registered_commands):
        group.command("batch")(drain_batch_command)
