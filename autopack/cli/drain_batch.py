"""``autopack drain batch``: drain QUEUED and FAILED phases with sample-first triage, leases and sessions.

``drain_batch_command`` is attached to the ``drain`` command group: to the one ``autopack.cli.drain``
creates when that module registered first, otherwise to a group created here (the other module can then
find it the same way, or import ``drain_batch_command`` and attach it itself).
"""

from __future__ import annotations

from typing import Annotated

import typer

from autopack.cli.common import AllowEmptyDbOption, ExpectDbIdOption, guarded
from autopack.cli.groups import command_group
from autopack.cli.options import model_option
from autopack.config import get_settings
from autopack.execution.batch import BatchOptions, DrainInterrupted, run_batch_drain
from autopack.execution.batch_report import format_summary, make_reporter
from autopack.params import DrainParams as P


def drain_batch_command(
    run_id: list[str] | None = model_option(P, "run_ids", "--run-id"),
    batch_size: int = model_option(P, "batch_size", "--batch-size"),
    api_url: Annotated[str | None, typer.Option("--api-url", help="Check that this API server uses the same database (default AUTOPACK_API_URL).")] = None,
    states: str = model_option(P, "states", "--states", csv=True),
    max_consecutive_zero_yield: int | None = model_option(
        P, "max_consecutive_zero_yield", "--max-consecutive-zero-yield"
    ),
    max_fingerprint_repeats: int = model_option(P, "max_fingerprint_repeats", "--max-fingerprint-repeats"),
    max_attempts_per_phase: int = model_option(P, "max_attempts_per_phase", "--max-attempts-per-phase"),
    max_timeouts_per_run: int = model_option(P, "max_timeouts_per_run", "--max-timeouts-per-run"),
    phase_timeout_seconds: float = model_option(P, "phase_timeout_seconds", "--phase-timeout-seconds"),
    max_total_minutes: float | None = model_option(P, "max_total_minutes", "--max-total-minutes"),
    skip_run_prefix: list[str] | None = model_option(P, "skip_run_prefixes", "--skip-run-prefix"),
    workers: int = model_option(P, "workers", "--workers"),
    resume: bool = model_option(P, "resume", "--resume"),
    lease_seconds: float = model_option(P, "lease_seconds", "--lease-seconds"),
    provider_concurrency: int | None = model_option(P, "provider_concurrency", "--provider-concurrency"),
    expect_db_id: ExpectDbIdOption = None,
    allow_empty_db: AllowEmptyDbOption = False,
    no_telemetry: Annotated[bool, typer.Option("--no-telemetry", help="Drain without recording telemetry (allowed with TELEMETRY_DB_ENABLED off).")] = False,
) -> None:
    """Drain phases in priority order, one session saved after every phase; exit 1 if any phase failed."""
    settings = get_settings()
    options = BatchOptions(
        run_ids=run_id or [],
        batch_size=batch_size,
        states=states,
        max_consecutive_zero_yield=max_consecutive_zero_yield,
        max_fingerprint_repeats=max_fingerprint_repeats,
        max_attempts_per_phase=max_attempts_per_phase,
        max_timeouts_per_run=max_timeouts_per_run,
        phase_timeout_seconds=phase_timeout_seconds,
        max_total_minutes=max_total_minutes,
        skip_run_prefixes=skip_run_prefix or [],
        workers=workers,
        resume=resume,
        telemetry=not no_telemetry,
        lease_seconds=lease_seconds,
        api_url=api_url or settings.api_url,
        provider_concurrency=provider_concurrency,
    )
    database = guarded(expect_db_id, allow_empty_db, quiet=True)
    reporter = make_reporter()
    try:
        report = run_batch_drain(options, database, reporter=reporter)
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
        group = command_group("Drain phases: run them and record telemetry.")
        app.add_typer(group, name="drain")
    if not any(command.name == "batch" for command in group.registered_commands):
        group.command("batch")(drain_batch_command)
