"""``autopack db``: create/upgrade the schema and show which database is in use."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from autopack.cli.common import AllowEmptyDbOption, ExpectDbIdOption, JsonOption
from autopack.cli.groups import command_group
from autopack.db.handle import database_at, expected_db_id
from autopack.db.identity import format_identity, guard, read_identity
from autopack.db.migrate import LOCK_TIMEOUT_MAX_SECONDS, LOCK_TIMEOUT_SECONDS, check_lock_timeout, upgrade_database
from autopack.errors import InputError

db_app = command_group("Database schema and identity.")


def _lock_timeout(value: float) -> float:
    """A usage error (before anything is opened) for a wait that is not a number of seconds in range."""
    try:
        return check_lock_timeout(value)
    except InputError as exc:
        raise typer.BadParameter(exc.message.removeprefix("--lock-timeout ")) from None


@db_app.command("upgrade")
def upgrade(
    expect_db_id: ExpectDbIdOption = None,
    create: Annotated[
        bool | None,
        typer.Option(
            "--create/--no-create",
            help="Create a database where there is none (default: only when no expected database id is set).",
        ),
    ] = None,
    lock_timeout: Annotated[
        float,
        typer.Option("--lock-timeout", callback=_lock_timeout,
                     help=f"Seconds to wait for another upgrade of this database (0 to {LOCK_TIMEOUT_MAX_SECONDS:g})."),
    ] = LOCK_TIMEOUT_SECONDS,
) -> None:
    """Create or migrate the database to the current schema (adopts an original Autopack database).

    Atomic (one transaction) and exclusive (a second upgrade waits for the first as long as the lock timeout
    allows, then refuses). Refuses with DB_MISMATCH
    when the database is not the expected one (AUTOPACK_EXPECTED_DB_ID or --expect-db-id), and refuses a
    database holding another application's tables (exit 3, nothing written).
    """
    report = upgrade_database(
        database_at(),
        expect_db_id=expected_db_id(expect_db_id),
        create=create,
        lock_timeout=lock_timeout,
    )
    if report.backup_path:
        typer.echo(f"backup written: {report.backup_path}")
    for line in report.repaired:
        typer.echo(f"repaired an interrupted upgrade: {line}")
    if report.legacy:
        typer.echo("adopted a database written by the original Autopack (every row kept)")
    if report.created:
        typer.echo(f"created a new database at {report.url} (id {report.db_id})")
    if report.changed:
        typer.echo(f"upgraded {report.url}: {report.starting_point} -> {report.revision_after}")
    else:
        typer.echo(f"{report.url} is already at {report.revision_after}; nothing to do")


@db_app.command("identity")
def identity(
    as_json: JsonOption = False,
    expect_db_id: ExpectDbIdOption = None,
    check: bool = typer.Option(False, "--check", help="Also apply the write guard (expected id, non-empty)."),
    allow_empty_db: AllowEmptyDbOption = False,
) -> None:
    """Print the masked URL, file, database id, schema revision and counts."""
    expected = expected_db_id(expect_db_id)
    if check or expected:
        report = guard(database_at(), expect_db_id=expected, allow_empty=allow_empty_db or not check, counts=True)
    else:
        report = read_identity(database_at())
    typer.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True) if as_json else format_identity(report))


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
