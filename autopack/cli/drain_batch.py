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
from autopack.cli.options import params_command
from autopack.config import get_settings
from autopack.execution.batch import BatchOptions, DrainInterrupted, run_batch_drain
from autopack.execution.batch_report import format_summary, make_reporter, session_line
from autopack.execution.sessions import SessionStore
from autopack.params import DrainParams as P


@params_command(P)
def drain_batch_command(
    params: P,
    api_url: Annotated[str | None, typer.Option("--api-url", help="Check that this API server uses the same database (empty: AUTOPACK_API_URL).")] = None,
    expect_db_id: ExpectDbIdOption = None,
    allow_empty_db: AllowEmptyDbOption = False,
    no_telemetry: Annotated[bool, typer.Option("--no-telemetry", help="Drain without recording telemetry (required to drain while TELEMETRY_DB_ENABLED is off).")] = False,
) -> None:
    """Drain phases in priority order, one session saved after every phase; exit 1 if any phase failed."""
    settings = get_settings()
    options = BatchOptions.of(params, telemetry=not no_telemetry, api_url=api_url or settings.api_url)
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


def drain_sessions_command(
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="How many of the newest sessions to list.")] = 20,
    expect_db_id: ExpectDbIdOption = None,
) -> None:
    """List the newest drain sessions, newest first; a session whose drain died (its owner lease expired) shows as
    abandoned, with the time its lease expired (`drain batch --resume` continues it)."""
    database = guarded(expect_db_id, allow_empty=True, quiet=True, read_only=True)
    sessions = SessionStore(database).recent(limit)
    if not sessions:
        typer.echo("no drain sessions")
    for state in sessions:
        typer.echo(session_line(state))


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
    if not any(command.name == "sessions" for command in group.registered_commands):
        group.command("sessions")(drain_sessions_command)
