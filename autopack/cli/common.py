"""Options and checks shared by every command that touches the database."""

from __future__ import annotations

from typing import Annotated

import typer

from autopack.config import get_settings
from autopack.db.identity import IdentityReport, guard

ExpectDbIdOption = Annotated[
    str | None,
    typer.Option("--expect-db-id", help="Refuse unless the database id is this (default: AUTOPACK_EXPECTED_DB_ID)."),
]
AllowEmptyDbOption = Annotated[
    bool, typer.Option("--allow-empty-db", help="Proceed even if the database has no runs, phases or events.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


def guarded(expect_db_id: str | None = None, allow_empty: bool = False, *, quiet: bool = False) -> IdentityReport:
    """Run the DB identity guard for this command and show which database it is using."""
    settings = get_settings()
    report = guard(
        settings.resolved_database_url(),
        expect_db_id=expect_db_id or settings.expected_db_id,
        allow_empty=allow_empty,
    )
    if not quiet:
        typer.echo(f"[db] id={report.db_id} url={report.url} revision={report.schema_revision}", err=True)
    return report
