"""``create_app()``: the FastAPI application. Building it reads nothing; settings are read at start-up.

The app guards itself (``autopack.api.security``, ``autopack.api.inputs``) so it is equally safe under
``autopack api serve``, ``python -m uvicorn autopack.main:app`` or any other ASGI server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from starlette.types import Scope

from autopack import __version__
from autopack.api import drain, health, runs, telemetry
from autopack.api.deps import app_config, load_config
from autopack.api.inputs import BodySizeLimit, safe_validation_errors
from autopack.api.security import KEY_HINT, StartupBindCheck, bind_problem, uvicorn_command_line_host
from autopack.logging import get_logger, redact

log = get_logger("autopack.api")


def create_app(*, url: str | None = None, api_key: str | None = None, bind_host: str | None = None) -> FastAPI:
    """The API app. ``url``/``api_key`` override the settings (tests); otherwise they are read at start-up.

    ``bind_host``: the address the server binds (``autopack api serve`` passes it); when not given, the
    ``uvicorn`` command line's ``--host`` is used if this app runs under it. A non-loopback address
    without an API key makes the start-up fail; requests are checked one by one in any case.
    """
    overrides = {"url": url, "api_key": api_key}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.config = load_config(**overrides)
        if app.state.config.api_key is None:
            log.info("no AUTOPACK_API_KEY: changes are accepted from this machine only")
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

    def startup_problem(scope: Scope) -> str | None:
        host = bind_host if bind_host is not None else uvicorn_command_line_host()
        problem = bind_problem(host, app_config(scope["app"]).api_key is not None)
        return f"{problem} ({KEY_HINT})" if problem else None

    app.add_middleware(BodySizeLimit, limit=lambda scope: app_config(scope["app"]).max_body_bytes)
    app.add_middleware(StartupBindCheck, problem=startup_problem)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes every input in full and answers 500 when one is not JSON-encodable.
        return JSONResponse({"detail": safe_validation_errors(list(exc.errors()))}, status_code=422)

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
