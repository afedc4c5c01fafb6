"""Who may change things through the API: whoever holds its key — decided by the app, whichever server starts it.

Every request that is not a read (any method but GET, HEAD and OPTIONS) must carry the key in
``X-API-Key``, or it is answered 401 before its body is read. There is no key-less mode: without
``AUTOPACK_API_KEY`` the app uses the key file (``autopack.api_key_file``), generating it on first start,
so a server started with ``autopack api serve``, ``python -m uvicorn autopack.main:app`` or any other ASGI
server behind any proxy is never open to writes. Reads stay open (``/health``, the runs, phases and
telemetry summaries): they hold no secret.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from autopack.api_key_file import HEADER, KEY_HINT

#: Methods that change nothing; every other one needs the key.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UNAUTHORIZED = f"missing or wrong {HEADER} ({KEY_HINT})"


def key_matches(sent: str | None, expected: str) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())


class RequireKeyForWrites:
    """Pure ASGI middleware: 401 for a write without the right ``X-API-Key``, before any body is read."""

    def __init__(self, app: ASGIApp, expected_key: Callable[[Scope], str]) -> None:
        self.app = app
        self.expected_key = expected_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READ_METHODS:
            await self.app(scope, receive, send)
            return
        if key_matches(Headers(scope=scope).get(HEADER), self.expected_key(scope)):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"detail": UNAUTHORIZED}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", HEADER.encode())]})
        await send({"type": "http.response.body", "body": body})
