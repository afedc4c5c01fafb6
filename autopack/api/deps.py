"""Request dependencies: the app's configuration, a database session, and the write-access check.

Configuration is read when the app starts (lifespan) or, if it was never started (an ASGI test client
without lifespan), on the first request — never at import time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session
from starlette.applications import Starlette

from autopack.api.security import UNAUTHORIZED, key_matches
from autopack.api_key_file import HEADER, ApiKey, server_api_key
from autopack.config import get_settings
from autopack.db.handle import Database, database_at
from autopack.db.identity import UPGRADE_HINT
from autopack.db.migrate import sqlite_path
from autopack.errors import SchemaNotMigratedError
from autopack.logging import add_secret


@dataclass(frozen=True)
class ApiConfig:
    #: Opened at start-up without the guard: ``/health`` reports an unmigrated or missing database as degraded.
    database: Database
    api_key: str
    #: Where the key came from (AUTOPACK_API_KEY, the key file, a test's override): logged, never the key.
    api_key_source: str = "AUTOPACK_API_KEY"
    api_key_created: bool = False
    allow_check_commands: bool = False
    max_body_bytes: int = 1_048_576


def load_config(database: Database | None = None, api_key: str | None = None) -> ApiConfig:
    """The app's configuration; the key is ``api_key``, else ``AUTOPACK_API_KEY``, else the key file (created
    if missing): there is no configuration without a key."""
    settings = get_settings()
    key = ApiKey(api_key, origin="create_app(api_key=...)") if api_key else server_api_key(settings)
    add_secret(key.value)  # masked wherever it shows up: logs, and failure reasons a client posts
    return ApiConfig(
        database=database or database_at(),
        api_key=key.value,
        api_key_source=key.source(),
        api_key_created=key.created,
        allow_check_commands=settings.api_allow_check_commands,
        max_body_bytes=settings.api_max_body_bytes,
    )


def app_config(app: Starlette) -> ApiConfig:
    state = app.state
    config = getattr(state, "config", None)
    if config is None:
        config = load_config(**getattr(state, "overrides", {}))
        state.config = config
    return config


def get_config(request: Request) -> ApiConfig:
    return app_config(request.app)


ConfigDep = Annotated[ApiConfig, Depends(get_config)]


def refuse_missing_database_file(database: Database) -> None:
    """Raise if ``database`` cannot be used as is: a URL autopack cannot use (``DatabaseUrlError``), or a SQLite
    file that does not exist (``SchemaNotMigratedError``) — opening it would create an empty one. Both are
    answered 503 with their one line (``autopack.api.app``); neither names the URL or the path."""
    path = sqlite_path(database.url)
    if path is not None and not path.exists():
        raise SchemaNotMigratedError("the database file does not exist", hint=f"{UPGRADE_HINT} to create it")


def get_db(config: ConfigDep) -> Iterator[Session]:
    refuse_missing_database_file(config.database)
    with config.database.session() as session:
        yield session


DbDep = Annotated[Session, Depends(get_db, scope="function")]  # commit before the response is sent


API_KEY_HEADER = APIKeyHeader(name=HEADER, auto_error=False, description="The API key: required by every write.")


def require_api_key(
    config: ConfigDep,
    x_api_key: Annotated[str | None, Security(API_KEY_HEADER)] = None,
) -> None:
    """Mutating endpoints need ``X-API-Key``. ``RequireKeyForWrites`` has already checked it before the body
    was read; checking again here keeps a router mounted without that middleware closed, and puts the
    requirement into the OpenAPI description."""
    if not key_matches(x_api_key, config.api_key):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail=UNAUTHORIZED,
            headers={"WWW-Authenticate": HEADER},
        )


AuthDep = Depends(require_api_key)
