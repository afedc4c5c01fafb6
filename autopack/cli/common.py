"""Options and checks shared by every command that touches the database."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from autopack.config import get_settings
from autopack.db.identity import IdentityReport, guard
from autopack.errors import InputError
from autopack.params import PipelineParams

#: ``--expect-db-id`` of every command that touches the database: the parameter's own description.
ExpectDbIdOption = Annotated[
    str | None, typer.Option("--expect-db-id", help=PipelineParams.model_fields["expect_db_id"].description),
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
        announce(report)
    return report


def announce(report: IdentityReport) -> None:
    """The one ``[db]`` line on stderr that says which database a command is using."""
    typer.echo(f"[db] id={report.db_id} url={report.url} revision={report.schema_revision}", err=True)


def writable_dir(path: Path, option: str = "--output-dir") -> Path:
    """``path`` as an existing, writable directory (created if missing); else one clear ``InputError``.

    Checked before any work starts, so a long calibration or pipeline never fails at its last step.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not path.is_dir():
            raise NotADirectoryError(20, "not a directory", str(path))
        fd, probe = tempfile.mkstemp(prefix=".autopack-write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, FileExistsError):
            reason = "a file with that name exists"
        raise InputError(f"{option} {path} is not a writable directory: {reason}",
                         hint="choose a directory you can write to") from exc
    return path
