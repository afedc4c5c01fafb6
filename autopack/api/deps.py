"""Request dependencies: the app's configuration, a database session, and the write-access check.

Configuration is read when the app starts (lifespan) or, if it was never started (an ASGI test client
without lifespan), on the first request — never at import time.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status
from sqlalchemy.orm import Session

from autopack.api.security import KEY_HINT, remote_origin
from autopack.config import get_settings
from autopack.db.engine import resolve_url, session_scope


@dataclass(frozen=True)
class ApiConfig:
    url: str
    api_key: str | None
    allow_check_commands: bool = False
    max_body_bytes: int = 1_048_576


def load_config(url: str | None = None, api_key: str | None = None) -> ApiConfig:
    settings = get_settings()
    key = api_key
    if key is None and settings.api_key is not None:
        key = settings.api_key.get_secret_value() or None
    return ApiConfig(
        url=resolve_url(url) if url else settings.resolved_database_url(),
        api_key=key,
        allow_check_commands=settings.api_allow_check_commands,
        max_body_bytes=settings.api_max_body_bytes,
    )


def app_config(app: object) -> ApiConfig:
    state = getattr(app, "state")
    config = getattr(state, "config", None)
    if config is None:
        config = load_config(**getattr(state, "overrides", {}))
        state.config = config
    return config


def get_config(request: Request) -> ApiConfig:
    return app_config(request.app)


ConfigDep = Annotated[ApiConfig, Depends(get_config)]


def get_db(config: ConfigDep) -> Iterator[Session]:
    with session_scope(config.url) as session:
        yield session


DbDep = Annotated[Session, Depends(get_db, scope="function")]  # commit before the response is sent


def require_api_key(
    request: Request,
    config: ConfigDep,
    x_api_key: Annotated[str | None, Header(alias="X-API-Key", description="Required when AUTOPACK_API_KEY is set.")] = None,
) -> None:
    """Mutating endpoints: ``X-API-Key`` must equal ``AUTOPACK_API_KEY``; without a key, only from this machine."""
    if config.api_key is None:
        origin = remote_origin(request)
        if origin is not None:
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"this server has no API key, so it accepts changes only from this machine, not from "
                       f"{origin} ({KEY_HINT})",
            )
        return
    if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), config.api_key.encode()):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong X-API-Key",
            headers={"WWW-Authenticate": "X-API-Key"},
        )


AuthDep = Depends(require_api_key)
