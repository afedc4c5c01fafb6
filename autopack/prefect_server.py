"""Prefect's temporary API server, started by autopack so that it never outlives the command that needs it.

With no ``PREFECT_API_URL``, Prefect 3 starts a temporary server itself (``SubprocessASGIServer``: uvicorn in a
child process) and stops it at exit. A command killed with SIGKILL runs no exit handler, so that server was
orphaned, holding its port and Prefect's SQLite database, after every ``kill -9``. ``prefect_api`` starts the
same server the same way (the same command, environment and health check), but asks the kernel to send it
SIGTERM when this process dies, by any means (Linux's parent-death signal), and points Prefect at it for the
command's duration. A user's ``PREFECT_API_URL`` is used as it is (nothing is started); where the parent-death
signal does not exist (not Linux), Prefect starts its own server as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from autopack.errors import AutopackError

#: Prefect's setting for how long to wait for its temporary server (Prefect's default: 20 s); honoured here too.
STARTUP_TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
#: uvicorn's exit code when it could not start (e.g. the port was taken after it was picked): try another port.
_UVICORN_STARTUP_FAILURE = 3
_PORT_ATTEMPTS = 3
#: Seconds a stopped server may take to shut down before it is killed (Prefect's own ``stop`` waits as long).
_STOP_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2
#: The exit code of a server whose parent died before it could ask for the parent-death signal.
_ORPHANED_EXIT = 70


def startup_failed(timeout: float, detail: str = "") -> AutopackError:
    """The one line for a temporary server (ours or Prefect's) that did not answer in time."""
    return AutopackError(
        f"the temporary Prefect server did not start within {timeout:g} s{detail}",
        hint=f"raise {STARTUP_TIMEOUT_VARIABLE}, or start one (`prefect server start`) and set PREFECT_API_URL",
        exit_code=1,
    )


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, on Linux only; None elsewhere, or when it cannot be loaded or is refused (a seccomp
    filter): then Prefect starts its own server rather than ours failing to start."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        current = ctypes.c_int()
        return prctl if prctl(_PR_GET_PDEATHSIG, ctypes.byref(current), 0, 0, 0) == 0 else None
    except (OSError, AttributeError):
        return None


def _die_with(parent: int, prctl: Callable[..., int]) -> Callable[[], None]:
    """The server's ``preexec_fn``: SIGTERM from the kernel when ``parent`` dies.

    The signal follows the thread that started the child, so the server must be started from a thread that
    lives as long as the command (the main thread). A parent that died before ``prctl`` took effect is caught by
    the ``getppid`` check (the child was re-parented already), and the server is not started at all.
    """

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(_ORPHANED_EXIT)

    return preexec


def free_port() -> int:
    """A TCP port free on the loopback interface now (the server's start retries should it be taken meanwhile)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_command(port: int) -> list[str]:
    """Prefect's own command for its temporary server (``SubprocessASGIServer._run_uvicorn_command``)."""
    import prefect

    return [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
            "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--lifespan", "on"]


def _server_environment() -> dict[str, str]:
    """Prefect's environment for its temporary server: no UI, ephemeral, and the current settings."""
    from prefect.settings import get_current_settings

    return {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1", **get_current_settings().to_environment_variables(exclude_unset=True)}


@dataclass
class TemporaryServer:
    """A running temporary Prefect server: its process and where it answers."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``_STOP_SECONDS``; the process is reaped either way."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()


def _launch(port: int, prctl: Callable[..., int]) -> subprocess.Popen[bytes]:
    """The server process, in a session of its own: a terminal's Ctrl-C reaches the command, which stops the
    server once Prefect has reported the interrupted run to it (in the command's group it stopped at once)."""
    return subprocess.Popen(_server_command(port), env=_server_environment(),
                            preexec_fn=_die_with(os.getpid(), prctl), start_new_session=True)


def _healthy(server: TemporaryServer, deadline: float) -> bool:
    """Poll ``/api/health`` until it answers 200 (True) or the process exits or ``deadline`` passes (False)."""
    import httpx

    with httpx.Client(timeout=2.0, trust_env=False) as client:  # loopback: never through a proxy
        while time.monotonic() < deadline and server.process.poll() is None:
            try:
                if client.get(f"{server.api_url}/health").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # polling a server that is still starting: nothing to wait on instead
    return False


def start_server(timeout: float, prctl: Callable[..., int]) -> TemporaryServer:
    """Start the server and wait (at most ``timeout`` s) until it answers; a server that does not is stopped."""
    deadline = time.monotonic() + timeout
    for _ in range(_PORT_ATTEMPTS):
        server = TemporaryServer(_launch(port := free_port(), prctl), port)
        try:
            if _healthy(server, deadline):
                return server
        except BaseException:  # Ctrl-C or SIGTERM while it starts: it must not be left behind either
            server.stop()
            raise
        server.stop()
        if server.process.returncode != _UVICORN_STARTUP_FAILURE or time.monotonic() >= deadline:
            break
    exited = server.process.returncode
    died = f" (it exited with code {exited})" if exited not in (None, -signal.SIGTERM, -signal.SIGKILL) else ""
    raise startup_failed(timeout, died)


def _startup_timeout() -> float:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    return float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())


@contextlib.contextmanager
def _pointed_at(api_url: str) -> Iterator[None]:
    """Prefect uses ``api_url`` in this context and in threads started without it (Prefect's own workers, whose
    settings fall back to the process-wide context: left at no URL, they would start Prefect's own server)."""
    import prefect.context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        # what prefect.testing.utilities.prefect_test_harness does for the same reason (a private helper: if a
        # later Prefect drops it, the settings context alone still serves the flow and its task threads)
        process_wide = getattr(prefect.context, "_temporary_global_settings_context", None)
        if process_wide is None:
            yield
            return
        with process_wide(prefect.context.get_settings_context()):
            yield


@contextlib.contextmanager
def prefect_api() -> Iterator[TemporaryServer | None]:
    """For the ``with`` block: the Prefect API to use, started here when needed, stopped when the block ends.

    Yields the temporary server this process started, or None when nothing was started: a
    ``PREFECT_API_URL`` is set (used as it is), or the parent-death signal is not available (Prefect starts its
    own server, which a SIGKILL would orphan, as before). Start it from the main thread (see ``_die_with``).
    """
    from prefect.logging import get_logger
    from prefect.settings import PREFECT_API_URL

    prctl = None if PREFECT_API_URL.value() else _prctl()
    if prctl is None:
        yield None
        return
    logger = get_logger()  # the "prefect" logger, where Prefect announces its own temporary server
    server = start_server(_startup_timeout(), prctl)
    logger.info("Started a temporary Prefect server on %s (it stops with this command, even if killed)",
                server.api_url)
    try:
        with _pointed_at(server.api_url):
            yield server
    finally:
        _drain_prefect_workers()
        logger.info("Stopping the temporary Prefect server on %s", server.api_url)
        server.stop()


#: Seconds Prefect's log and event workers may take to send what they hold before the server stops.
_DRAIN_SECONDS = 10.0


def _drain_prefect_workers() -> None:
    """Send the flow runs' last log lines and events while the server still answers.

    Prefect drains these workers at interpreter exit, before its own server's ``atexit`` stop; a server stopped
    at the end of the ``with`` block would otherwise meet them with "Error logging to API" at exit. Best effort:
    nothing here may keep the server from being stopped.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=_DRAIN_SECONDS)

