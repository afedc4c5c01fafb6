"""Bounded, well-formed input and output for the API: a body-size limit, strict JSON, and 422s that are safe.

* ``BodySizeLimit``: a request body over ``AUTOPACK_API_MAX_BODY_BYTES`` is answered 413 before any
  endpoint sees it (declared ``Content-Length`` or counted while streaming).
* ``StrictJsonRoute``: bodies are parsed as strict JSON — ``NaN``/``Infinity`` (which Python's parser
  accepts), lone UTF-16 surrogates (which no database column can store) and absurd nesting are a 422
  ``json_invalid``, never a 500.
* ``safe_validation_errors``: what a 422 echoes back is truncated and JSON-safe, however large or strange
  the input was.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Longest string echoed back in a 422 (the rest is summarised), and how many items/errors are shown.
MAX_ECHO_CHARS = 200
MAX_ECHO_ITEMS = 10
MAX_ERRORS = 50
_MAX_ECHO_DEPTH = 3


class BodySizeLimit:
    """Pure ASGI middleware: 413 for a body over ``limit(scope)`` bytes; the body is replayed otherwise."""

    def __init__(self, app: ASGIApp, limit: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                await self.app(scope, _replay([message], receive), send)
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await _too_large(send, limit)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replayed() -> Message:
        return messages.pop(0) if messages else await receive()

    return replayed


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"detail": f"request body larger than {limit} bytes (AUTOPACK_API_MAX_BODY_BYTES)"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def strict_json_loads(body: bytes) -> Any:
    """``json.loads`` that refuses what JSON (RFC 8259) or our databases cannot hold; JSONDecodeError if so."""
    try:
        value = json.loads(body, parse_constant=_no_constants)
    except RecursionError as exc:
        raise json.JSONDecodeError("nested too deeply", "", 0) from exc
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError):
            raise
        raise json.JSONDecodeError(str(exc), "", 0) from exc  # e.g. an integer of more than 4300 digits
    _no_lone_surrogates(value)
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _no_lone_surrogates(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _encodable(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                _encodable(key)
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


def _encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise json.JSONDecodeError("a string holds a lone UTF-16 surrogate (not valid Unicode)", "", 0) from exc


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_json_loads(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """The routes of this API: request bodies go through ``strict_json_loads``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict


def safe_validation_errors(errors: list[Any]) -> list[dict[str, Any]]:
    """FastAPI's 422 ``detail`` list, with every echoed value truncated and made JSON-safe."""
    shown = [_safe(dict(error)) for error in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        shown.append({"type": "too_many_errors", "loc": ["body"], "msg": f"and {len(errors) - MAX_ERRORS} more errors"})
    return shown


def _safe(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= MAX_ECHO_CHARS else f"{text[:MAX_ECHO_CHARS]}… ({len(text)} characters)"
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else _safe(f"an integer of {value.bit_length()} bits")
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        if depth >= _MAX_ECHO_DEPTH:
            return f"{{… {len(value)} keys}}"
        items = list(value.items())
        out = {_safe(str(k)): _safe(v, depth + 1) for k, v in items[:MAX_ECHO_ITEMS]}
        if len(items) > MAX_ECHO_ITEMS:
            out["…"] = f"{len(items) - MAX_ECHO_ITEMS} more keys"
        return out
    if isinstance(value, (list, tuple)):
        if depth >= _MAX_ECHO_DEPTH:
            return f"[… {len(value)} items]"
        out_list = [_safe(v, depth + 1) for v in value[:MAX_ECHO_ITEMS]]
        if len(value) > MAX_ECHO_ITEMS:
            out_list.append(f"… {len(value) - MAX_ECHO_ITEMS} more items")
        return out_list
    return _safe(str(value))
