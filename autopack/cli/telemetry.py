"""``autopack telemetry import``: load outside telemetry (CSV, OTLP JSON, V2 log lines) into the events table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from autopack.cli.common import ExpectDbIdOption, JsonOption, guarded
from autopack.cli.groups import command_group

telemetry_app = command_group("Telemetry: import outside data for calibration.")


@telemetry_app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The file to import.")],
    fmt: Annotated[str, typer.Option("--format", help="csv | otel-json | v2-log")] = "csv",
    mapping: Annotated[
        list[str] | None,
        typer.Option("--map", help="canonical=column (CSV) or canonical=attribute (OTLP); repeatable."),
    ] = None,
    defaults: Annotated[
        list[str] | None, typer.Option("--set", help="canonical=value for a field the file lacks; repeatable.")
    ] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Run id for rows without one.")] = None,
    expect_db_id: ExpectDbIdOption = None,
    allow_empty_db: Annotated[
        bool, typer.Option("--allow-empty-db", help="Accepted for older scripts: an import into an empty "
                                                    "(migrated) database is always allowed.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Import FILE; every row or none (bad rows are listed by line number).

    An empty migrated database is fine (filling one is what an import is for); an unmigrated one, or not
    the expected one, is refused like everywhere else.
    """
    from autopack.errors import InputError
    from autopack.telemetry.ingest import FORMATS, import_telemetry, parse_assignments

    if fmt not in FORMATS:
        raise InputError(f"unknown --format '{fmt}'", hint="one of " + ", ".join(FORMATS))
    del allow_empty_db  # importing into an empty (migrated) database is always allowed
    database = guarded(expect_db_id, allow_empty=True)
    report = import_telemetry(
        file,
        fmt,
        database=database,
        mapping=parse_assignments(mapping, "--map"),
        defaults=parse_assignments(defaults, "--set"),
        run_id=run_id,
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(f"imported {report.rows} row(s) from {file} as {report.source} "
                   f"(run id{'s' if len(report.run_ids) > 1 else ''}: {', '.join(report.run_ids)})")
        for note in report.notes:
            typer.echo(f"warning: {note}", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(telemetry_app, name="telemetry")
