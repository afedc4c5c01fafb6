"""``create_app()``: the FastAPI application. Building it reads nothing; settings are read at start-up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from autopack import __version__
from autopack.api import drain, health, runs, telemetry
from autopack.api.deps import load_config
from autopack.logging import get_logger, redact

log = get_logger("autopack.api")


def create_app(*, url: str | None = None, api_key: str | None = None) -> FastAPI:
    """The API app. ``url``/``api_key`` override the settings (tests); otherwise they are read at start-up."""
    overrides = {"url": url, "api_key": api_key}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.config = load_config(**overrides)
        yield

    app = FastAPI(
        title="autopack",
        version=__version__,
        description="Runs, phases, drain leases and token telemetry of autopack.",
        lifespan=lifespan,
    )
    app.state.overrides = overrides
    app.state.config = None
    for module in (health, runs, drain, telemetry):
        app.include_router(module.router)

    @app.exception_handler(OperationalError)
    async def _database_unavailable(_request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error: %s", redact(str(exc.orig)))
        return JSONResponse({"detail": "database unavailable"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)

    @app.exception_handler(DataError)
    async def _bad_data(_request: Request, exc: DataError) -> JSONResponse:
        # Same shape as FastAPI's own 422 (e.g. a NUL byte PostgreSQL refuses to store in a text column).
        message = f"value rejected by the database: {redact(str(exc.orig)).splitlines()[0]}"
        return JSONResponse({"detail": [{"loc": ["body"], "msg": message, "type": "value_error"}]}, status_code=422)

    @app.exception_handler(IntegrityError)
    async def _conflict(_request: Request, exc: IntegrityError) -> JSONResponse:
        return JSONResponse({"detail": "conflicts with existing data"}, status_code=status.HTTP_409_CONFLICT)

    return app
