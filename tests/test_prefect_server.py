"""The temporary Prefect server autopack starts (``autopack.prefect_server``) dies with the process that started it,
however that process dies; a configured ``PREFECT_API_URL`` is used instead of starting one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autopack.prefect_server import _die_with, _prctl, prefect_api

ROOT = Path(__file__).resolve().parents[1]

linux_only = pytest.mark.skipif(_prctl() is None, reason="the parent-death signal is Linux's")

#: Starts the server through the module, says where it is and what Prefect now uses, then waits to be killed.
CHILD = """
import sys
from prefect.settings import PREFECT_API_URL
from autopack.prefect_server import prefect_api
with prefect_api() as server:
    print(server.process.pid, server.port, PREFECT_API_URL.value(), flush=True)
    sys.stdin.read()
"""


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet (a container's init may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def listening(port: int) -> bool:
    """Whether something still listens on 127.0.0.1:``port`` (a bind that only TIME_WAIT sockets allow succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def wait_until(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(condition())  # type: ignore[operator]


@linux_only
@pytest.mark.timeout(240)
def test_the_temporary_server_stops_when_the_process_that_started_it_is_sigkilled(tmp_path: Path) -> None:
    """Before: Prefect's own temporary server is stopped at exit only, so a ``kill -9`` orphaned it (port and
    SQLite database held) after every killed ``autopack pipeline run``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", PYTHONPATH=str(ROOT))
    parent = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    server_pid = 0
    try:
        assert parent.stdout is not None
        pid, port, api_url = parent.stdout.readline().split()
        server_pid = int(pid)
        assert api_url == f"http://127.0.0.1:{port}/api" and listening(int(port))  # Prefect uses it
        parent.kill()
        parent.wait(timeout=30)
        assert wait_until(lambda: gone(server_pid), 30), "the server outlived the process that started it"
        assert wait_until(lambda: not listening(int(port)), 10)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if server_pid and not gone(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_a_configured_prefect_api_url_is_used_and_no_server_is_started() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}), prefect_api() as server:
        assert server is None
        assert PREFECT_API_URL.value() == "http://127.0.0.1:9/api"


def test_without_the_parent_death_signal_prefect_starts_its_own_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not Linux: nothing is started here and Prefect is left pointing at no server (it starts its own)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setattr(sys, "platform", "darwin")
    with temporary_settings(restore_defaults={PREFECT_API_URL}), prefect_api() as server:
        assert server is None and PREFECT_API_URL.value() is None


@linux_only
def test_a_server_whose_parent_died_before_it_asked_for_the_signal_does_not_start() -> None:
    """The race ``prctl`` alone leaves open: the parent died between fork and ``prctl``, the child was re-parented."""
    prctl = _prctl()
    assert prctl is not None
    not_the_parent = os.getppid()  # a live process that is not the child's parent
    out = subprocess.run([sys.executable, "-c", "print('started')"], preexec_fn=_die_with(not_the_parent, prctl),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and out.stdout == ""
