"""Options and checks shared by every command that touches the database."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from autopack.db.handle import Database, open_database
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


def guarded(
    expect_db_id: str | None = None, allow_empty: bool = False, *, quiet: bool = False, read_only: bool = False
) -> Database:
    """This command's database, opened once (the identity guard runs here), and the line saying which it is."""
    database = open_database(expect_db_id=expect_db_id, allow_empty=allow_empty, read_only=read_only)
    if not quiet:
        announce(database)
    return database


def announce(database: Database) -> None:
    """The one ``[db]`` line on stderr that says which database a command is using."""
    revision = database.identity.schema_revision if database.identity else "unknown"
    typer.echo(f"[db] id={database.db_id} url={database.masked_url} revision={revision}", err=True)


def writable_dir(path: Path, option: str = "--output-dir") -> Path:
    """``path`` as a directory the command can write to (an existing one, or one it can create); else one clear
    ``InputError``.

    Checked before any work starts, so a long calibration or pipeline never fails at its last step. The check
    leaves nothing behind (what it creates to try, it removes): a command that then refuses (a wrong database,
    no samples) leaves no empty directory. The writer creates a missing directory when it writes.
    """
    created = [p for p in (path, *path.parents) if not p.exists()]  # innermost first: removed in this order
    try:
        try:
            path.mkdir(parents=True, exist_ok=True)
            if not path.is_dir():
                raise NotADirectoryError(20, "not a directory", str(path))
            fd, probe = tempfile.mkstemp(prefix=".autopack-write-check-", dir=path)
            os.close(fd)
            os.unlink(probe)
        finally:
            for made in created:
                with contextlib.suppress(OSError):
                    made.rmdir()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, FileExistsError):
            reason = "a file with that name exists"
        raise InputError(f"{option} {path} is not a writable directory: {reason}",
                         hint="choose a directory you can write to") from exc
    return path
