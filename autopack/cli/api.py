"""``autopack api serve``: run the HTTP API (uvicorn) on this machine's database."""

from __future__ import annotations

from typing import Annotated

import typer

from autopack.cli.groups import command_group

from autopack.api.security import KEY_HINT, bind_problem, is_loopback
from autopack.config import get_settings
from autopack.errors import AutopackError, RefusedError

api_app = command_group("The HTTP API server.")

__all__ = ["api_app", "check_bind", "is_loopback", "register"]


def check_bind(host: str, has_api_key: bool) -> None:
    """Anyone who can reach a non-loopback port could create runs and claim phases: require a key.

    The app applies the same rule itself at start-up and on every mutating request (``autopack.api.security``);
    checking here first gives the one-line error before uvicorn starts.
    """
    problem = bind_problem(host, has_api_key)
    if problem:
        raise RefusedError(problem, hint=KEY_HINT)


@api_app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind (non-loopback needs AUTOPACK_API_KEY).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the API (same as `python -m uvicorn autopack.main:app`) after checking the database."""
    import uvicorn

    from autopack.api import create_app
    from autopack.db.identity import read_identity

    settings = get_settings()
    check_bind(host, settings.api_key is not None and bool(settings.api_key.get_secret_value()))
    try:
        report = read_identity(settings.resolved_database_url())
        typer.echo(f"[db] id={report.db_id} url={report.url} revision={report.schema_revision}", err=True)
    except AutopackError as exc:  # serve anyway: /health reports "degraded" until the database is fixed
        typer.echo(f"warning: {exc.one_line()}", err=True)
    uvicorn.run(create_app(bind_host=host), host=host, port=port, log_level=log_level)


def register(app: typer.Typer) -> None:
    app.add_typer(api_app, name="api")
