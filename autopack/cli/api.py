"""``autopack api serve``: run the HTTP API (uvicorn) on this machine's database."""

from __future__ import annotations

from typing import Annotated

import typer

from autopack.api_key_file import server_api_key
from autopack.cli.groups import command_group
from autopack.config import get_settings
from autopack.errors import AutopackError, InputError

api_app = command_group("The HTTP API server.")

__all__ = ["api_app", "register"]

#: uvicorn's log levels (``uvicorn.config.LOG_LEVELS``), checked before anything starts.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _log_level(value: str) -> str:
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise typer.BadParameter(f"{value!r} is not a log level: use one of {', '.join(LOG_LEVELS)}")
    return level


@api_app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind (writes need the API key on any interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, metavar="<int>", help="TCP port to listen on.")] = 8000,
    log_level: Annotated[str, typer.Option(callback=_log_level, help=f"uvicorn log level ({' | '.join(LOG_LEVELS)}).")] = "info",
) -> None:
    """Serve the API (same as `python -m uvicorn autopack.main:app`) after checking the database.

    A DATABASE_URL autopack cannot use is refused (exit 2); a database that is unreachable or not migrated yet is
    served anyway (/health reports "degraded" and data requests answer 503 until it is fixed).

    Every write needs the API key: AUTOPACK_API_KEY, or else the key file (created on first start, mode 0600),
    whose path is printed. Clients on this machine read that file; give the key to others as AUTOPACK_API_KEY.
    """
    import uvicorn

    from autopack.api import create_app
    from autopack.db.engine import parse_url
    from autopack.db.handle import database_at
    from autopack.db.identity import read_identity

    settings = get_settings()
    database = database_at()
    parse_url(database.url)  # a URL autopack cannot use (mysql://, an async driver) is refused: no server, no key file
    key = server_api_key(settings)
    typer.echo(f"[api] writes need the API key (X-API-Key) from {key.source()}", err=True)
    try:
        report = read_identity(database)
        typer.echo(f"[db] id={report.db_id} url={report.url} revision={report.schema_revision}", err=True)
    except AutopackError as exc:  # serve anyway: /health reports "degraded" until the database is fixed
        typer.echo(f"warning: {exc.one_line()}", err=True)
    from uvicorn.config import STARTUP_FAILURE

    try:
        uvicorn.run(create_app(), host=host, port=port, log_level=log_level)
    except SystemExit as exc:  # uvicorn's exit 3 would read as autopack's DB_MISMATCH: say what happened instead
        if exc.code != STARTUP_FAILURE:
            raise
        raise InputError(f"the API server did not start on {host}:{port} (uvicorn's reason is logged above)",
                         hint="choose another --host or --port, or stop what already listens there") from None


def register(app: typer.Typer) -> None:
    app.add_typer(api_app, name="api")
