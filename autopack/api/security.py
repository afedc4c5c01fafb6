"""Who may change things through the API, decided by the app itself — whichever server starts it.

Without ``AUTOPACK_API_KEY`` the API is for this machine only:

* at start-up, when the app can know the address it is bound to (``autopack api serve``, or the
  ``uvicorn`` command line), it refuses to start on a non-loopback address;
* on every mutating request, it answers 403 unless the request comes straight from a loopback address
  (or a Unix socket) and carries no proxy-forwarding header — so ``--host 0.0.0.0``, a server started
  some other way, or a reverse proxy in front cannot open it to the network by accident.

With a key, every mutating request must carry it (``X-API-Key``); reads stay open.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Headers a reverse proxy adds: their presence means the peer address is not the client's.
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip", "x-forwarded-host", "x-client-ip", "true-client-ip")
ProblemFn = Callable[[Scope], str | None]
KEY_HINT = "set AUTOPACK_API_KEY on the server and send it as X-API-Key, or bind to 127.0.0.1"


def is_loopback(host: str) -> bool:
    host = host.strip()
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def bind_problem(host: str | None, has_api_key: bool) -> str | None:
    """Why serving on ``host`` is refused (None when it is fine or the host is unknown)."""
    if host is None or has_api_key or is_loopback(host):
        return None
    return f"refusing to serve on {host} without an API key"


def remote_origin(connection: HTTPConnection) -> str | None:
    """Where a request came from if that is not this machine (None for a direct loopback or Unix-socket client)."""
    forwarded = [name for name in FORWARDING_HEADERS if name in connection.headers]
    if forwarded:
        return f"through a proxy ({forwarded[0]} header)"
    client = connection.client
    if client is None:  # a Unix socket: local by construction
        return None
    return None if is_loopback(client.host) else client.host


def uvicorn_command_line_host() -> str | None:
    """The ``--host`` of the ``uvicorn`` command that is running this app, if it is one (else None).

    ``uvicorn.run`` is called from inside uvicorn's click command, and the app starts in that same
    thread, so the command's parameters are still current. Unix-socket and fd binds are local.
    """
    try:
        import click
    except ImportError:  # pragma: no cover - uvicorn depends on click
        return None
    context = click.get_current_context(silent=True)
    while context is not None:
        params = context.params
        if "host" in params and "port" in params and "uds" in params:
            return None if (params.get("uds") or params.get("fd") is not None) else str(params["host"])
        context = context.parent
    return None


class StartupBindCheck:
    """Pure ASGI middleware: turns a completed start-up into a failed one (one line) if ``problem()`` says so.

    The app's own lifespan is then shut down at once (so it exits cleanly instead of being cancelled).
    """

    def __init__(self, app: ASGIApp, problem: ProblemFn) -> None:
        self.app = app
        self.problem = problem

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        refused = False

        async def checked_receive() -> Message:
            return {"type": "lifespan.shutdown"} if refused else await receive()

        async def checked_send(message: Message) -> None:
            nonlocal refused
            if refused:  # the app's reply to our shutdown: the server never asked for it
                return
            if message["type"] == "lifespan.startup.complete":
                problem = self.problem(scope)
                if problem:
                    refused = True
                    message = {"type": "lifespan.startup.failed", "message": problem}
            await send(message)

        await self.app(scope, checked_receive, checked_send)
