"""``create_app()``: the FastAPI application. Building it reads nothing; settings are read at start-up.

The app guards itself (``autopack.api.security``, ``autopack.api.inputs``) so it is equally safe under
``autopack api serve``, ``python -m uvicorn autopack.main:app`` or any other ASGI server: every write
needs the API key (``AUTOPACK_API_KEY`` or the generated key file), checked before the body is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, ProgrammingError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autopack import __version__
from autopack.api import drain, health, runs, telemetry
from autopack.api.deps import app_config, load_config
from autopack.api.inputs import BodySizeLimit, safe_validation_errors
from autopack.api.security import RequireKeyForWrites
from autopack.db.handle import Database
from autopack.errors import AutopackError, DatabaseUrlError, SchemaNotMigratedError
from autopack.logging import get_logger, redact

log = get_logger("autopack.api")


def create_app(*, database: Database | None = None, api_key: str | None = None) -> FastAPI:
    """The API app. ``database``/``api_key`` override the settings (tests); otherwise they are read at start-up."""
    overrides: dict[str, Any] = {"database": database, "api_key": api_key}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.config = load_config(**overrides)
        # A key file created just now is news the operator must see, whatever logging the server set up.
        notice = log.warning if app.state.config.api_key_created else log.info
        notice("writes need the API key (X-API-Key) from %s; reads are open", app.state.config.api_key_source)
        problem = health.database_problem(app.state.config.database)
        if problem is not None:  # served anyway, like an unreachable database: /health says "degraded"
            log.warning("database not usable: %s; data requests answer 503 until it is fixed", problem.one_line())
        yield

    app = FastAPI(
        title="autopack",
        version=__version__,
        description="Runs, phases, drain leases and token telemetry of autopack. Every write needs the API key "
                    "(`X-API-Key`); reads are open.",
        lifespan=lifespan,
    )
    app.state.overrides = overrides
    app.state.config = None
    for module in (health, runs, drain, telemetry):
        app.include_router(module.router)

    app.add_middleware(BodySizeLimit, limit=lambda scope: app_config(scope["app"]).max_body_bytes)
    app.add_middleware(RequireKeyForWrites, expected_key=lambda scope: app_config(scope["app"]).api_key)
    app.add_middleware(OneLineStartupErrors)

    @app.exception_handler(StarletteHTTPException)
    async def _method_not_allowed(request: Request, exc: StarletteHTTPException) -> Response:
        # Starlette's 405 names the methods of the first route matching the path only (``Allow: GET`` for
        # /runs, which also takes POST); name every route's, and answer OPTIONS with them.
        if exc.status_code != status.HTTP_405_METHOD_NOT_ALLOWED:
            return await http_exception_handler(request, exc)
        allowed = allowed_methods(app, request)
        if request.method == "OPTIONS":
            return Response(status_code=status.HTTP_204_NO_CONTENT, headers={"Allow": allowed})
        return JSONResponse({"detail": "Method Not Allowed"}, status_code=exc.status_code, headers={"Allow": allowed})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes every input in full and answers 500 when one is not JSON-encodable.
        return JSONResponse({"detail": safe_validation_errors(list(exc.errors()))}, status_code=422)

    @app.exception_handler(DatabaseUrlError)
    @app.exception_handler(SchemaNotMigratedError)
    async def _database_unusable(_request: Request, exc: Exception) -> JSONResponse:
        # An unusable DATABASE_URL, a missing SQLite file: one line, as the CLI says it (no URL, no traceback).
        assert isinstance(exc, AutopackError)  # both registered types are
        return _unusable(exc)

    @app.exception_handler(OperationalError)
    @app.exception_handler(ProgrammingError)
    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # A missing table (SQLite: OperationalError; PostgreSQL: ProgrammingError) means an unmigrated database:
        # say so, as the CLI does. Other errors (an unreachable server) are not probed a second time.
        if isinstance(exc, ProgrammingError) or "no such table" in str(getattr(exc, "orig", exc)):
            problem = await run_in_threadpool(health.database_problem, app_config(request.app).database)
            if problem is not None:
                return _unusable(problem)
        if not isinstance(exc, OperationalError):
            raise exc
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


def _unusable(problem: AutopackError) -> JSONResponse:
    log.warning("database not usable: %s", problem.one_line())
    return JSONResponse({"detail": problem.one_line()}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


class OneLineStartupErrors:
    """A configuration error at start-up (``AutopackError``: a key file others may read, a malformed setting, an
    unreadable ``DATABASE_URL_FILE``) fails the start with its one line and hint, as ``autopack api serve``
    says it, instead of Starlette's traceback; the server (uvicorn) then exits non-zero. The error is still
    raised, so an in-process client (``TestClient``) sees it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def hold_startup_failure(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # its text is a traceback: replaced below if the error is one of ours
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_startup_failure)
        except AutopackError as exc:
            if held:
                await send({"type": "lifespan.startup.failed",
                            "message": f"autopack API cannot start: {' '.join(exc.one_line().split())}"})
                held.clear()
            raise
        finally:
            for message in held:
                await send(message)


#: Methods an ``Allow`` header may name, in the order it names them.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(app: FastAPI, request: Request) -> str:
    """The ``Allow`` header for the request's path: every method some route takes there, and OPTIONS."""

    def routed(method: str) -> bool:
        scope = {"type": "http", "method": method, "path": request.scope["path"],
                 "root_path": request.scope.get("root_path", "")}
        return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)

    return ", ".join([method for method in _METHODS if routed(method)] + ["OPTIONS"])
