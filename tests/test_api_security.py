"""The API's safety lives in the app, whichever server starts it; check commands posted to it never run.

Real ``uvicorn`` processes: started from its command line (the app reads ``--host``), and started some other
way (``uvicorn.run`` on a socket it was handed: the app cannot know the address, so every mutating request
is checked). The non-loopback case binds this machine's own interface address and connects from this
machine: no packet leaves the host.
"""

from __future__ import annotations

import copy
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from test_api import GOOD_SPEC, LOCAL_CLIENT, run_count

from autopack.api import create_app
from autopack.db.engine import session_scope
from autopack.db.migrate import upgrade_database
from autopack.db.models import Phase, Run
from autopack.execution import leases
from autopack.execution.phase_runner import check_command_env, execute_phase, run_check_command
from autopack.execution.workspace import workspace_folder
from autopack.llm.simulated import SimulatedProvider

WAIT_SECONDS = 60
SERVER_SCRIPT = """
import socket, sys, uvicorn
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
sock = socket.socket(family, socket.SOCK_STREAM)
sock.bind((sys.argv[1], 0))
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config("autopack.main:app", log_level="info")).run(sockets=[sock])
"""


def spec_with_check(command: str, run_id: str = "checked-run") -> dict[str, Any]:
    spec = copy.deepcopy(GOOD_SPEC)
    spec["run_id"] = run_id
    spec["phases"][0]["check_command"] = command
    return spec


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    upgrade_database(url)
    return url


class Server:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put("")  # the process closed its stderr

    def wait_for(self, text: str) -> list[str]:
        """stderr lines up to the one containing ``text`` (or up to the end of the output)."""
        seen = []
        while True:
            line = self.lines.get(timeout=WAIT_SECONDS)
            seen.append(line)
            if not line or text in line:
                return seen


@contextmanager
def server_process(args: list[str], url: str, **env: str) -> Iterator[Server]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPACK_")}
    environment.update({"DATABASE_URL": url, **env})
    proc = subprocess.Popen(args, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield Server(proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait(timeout=WAIT_SECONDS)


@contextmanager
def handed_a_socket(host: str, url: str, **env: str) -> Iterator[str]:
    """The app under ``uvicorn.Server(...).run(sockets=[...])``: it cannot know where it is bound."""
    with server_process([sys.executable, "-c", SERVER_SCRIPT, host], url, **env) as server:
        assert server.proc.stdout is not None
        port = int(server.proc.stdout.readline())
        lines = server.wait_for("Application startup complete")
        assert lines[-1], "".join(lines)
        yield f"http://{host if ':' not in host else f'[{host}]'}:{port}"


def own_non_loopback_address() -> str:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # picks the outgoing interface; UDP connect sends nothing
        address = probe.getsockname()[0]
    except OSError:
        address = "127.0.0.1"
    finally:
        probe.close()
    if address.startswith("127."):
        pytest.skip("this machine has no non-loopback interface address")
    return address


# --- the uvicorn command line ------------------------------------------------------------------------------


def test_uvicorn_command_line_on_all_interfaces_without_a_key_refuses_to_start(sqlite_url: str) -> None:
    args = [sys.executable, "-m", "uvicorn", "autopack.main:app", "--host", "0.0.0.0", "--port", "1"]
    with server_process(args, sqlite_url) as server:
        server.proc.wait(timeout=WAIT_SECONDS)
        output = "".join(server.wait_for("\x00"))
    assert server.proc.returncode == 3
    refusals = [line for line in output.splitlines() if "refusing to serve on 0.0.0.0 without an API key" in line]
    assert len(refusals) == 1 and "AUTOPACK_API_KEY" in refusals[0]
    assert "Traceback" not in output


def test_uvicorn_command_line_on_a_unix_socket_serves_changes(sqlite_url: str, tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    args = [sys.executable, "-m", "uvicorn", "autopack.main:app", "--uds", str(path)]
    with server_process(args, sqlite_url) as server:
        assert server.wait_for("Application startup complete")[-1]
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://local") as client:
            assert client.post("/runs", json=GOOD_SPEC, timeout=WAIT_SECONDS).status_code == 201
    assert run_count(sqlite_url) == 1


# --- a server the app cannot see the address of -------------------------------------------------------------


def test_changes_from_another_address_are_refused_without_a_key(sqlite_url: str) -> None:
    address = own_non_loopback_address()
    with handed_a_socket(address, sqlite_url) as base:
        refused = httpx.post(f"{base}/runs", json=GOOD_SPEC, timeout=WAIT_SECONDS)
        claim = httpx.post(f"{base}/drain/claim", json={"owner": "w"}, timeout=WAIT_SECONDS)
        listed = httpx.get(f"{base}/runs", timeout=WAIT_SECONDS)
    assert refused.status_code == 403 and claim.status_code == 403
    assert f"not from {address}" in refused.json()["detail"] and "AUTOPACK_API_KEY" in refused.json()["detail"]
    assert listed.status_code == 200  # reads stay open
    assert run_count(sqlite_url) == 0


def test_changes_from_another_address_are_accepted_with_the_key(sqlite_url: str) -> None:
    address = own_non_loopback_address()
    with handed_a_socket(address, sqlite_url, AUTOPACK_API_KEY="k-123456") as base:
        without = httpx.post(f"{base}/runs", json=GOOD_SPEC, timeout=WAIT_SECONDS)
        with_key = httpx.post(f"{base}/runs", json=GOOD_SPEC, headers={"X-API-Key": "k-123456"}, timeout=WAIT_SECONDS)
    assert (without.status_code, with_key.status_code) == (401, 201)


def test_changes_through_a_proxy_are_refused_without_a_key(sqlite_url: str) -> None:
    with handed_a_socket("127.0.0.1", sqlite_url) as base:
        direct = httpx.post(f"{base}/runs", json=GOOD_SPEC, timeout=WAIT_SECONDS)
        proxied = httpx.post(f"{base}/runs", json={**GOOD_SPEC, "run_id": "via-proxy"},
                             headers={"X-Forwarded-For": "203.0.113.9"}, timeout=WAIT_SECONDS)
    assert direct.status_code == 201
    assert proxied.status_code == 403 and "through a proxy" in proxied.json()["detail"]
    assert run_count(sqlite_url) == 1


@pytest.mark.parametrize(("host", "allowed"), [("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
                                               ("10.1.2.3", False), ("192.0.2.2", False), ("testclient", False)])
def test_only_loopback_clients_change_a_server_without_a_key(db_url: str, host: str, allowed: bool) -> None:
    with TestClient(create_app(url=db_url), client=(host, 50000)) as client:
        statuses = [client.post("/runs", json=GOOD_SPEC).status_code,
                    client.post("/drain/claim", json={"owner": "w"}).status_code,
                    client.post("/runs/api-run/phases/p2/state", json={"state": "SKIPPED"}).status_code]
        assert client.get("/runs").status_code == 200
    assert statuses == ([201, 200, 200] if allowed else [403, 403, 403])


# --- check commands ----------------------------------------------------------------------------------------


def test_a_posted_check_command_is_refused_and_nothing_is_written(db_url: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with TestClient(create_app(url=db_url), client=LOCAL_CLIENT) as client:
        response = client.post("/runs", json=spec_with_check(f"sh -c 'id > {marker}'"))
    assert response.status_code == 403
    detail = response.json()["detail"]
    assert "check_command is disabled for runs created through the API" in detail
    assert "AUTOPACK_API_ALLOW_CHECK_COMMANDS" in detail and "\n" not in detail
    assert run_count(db_url) == 0 and not marker.exists()


def test_the_server_setting_allows_posted_check_commands(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_API_ALLOW_CHECK_COMMANDS", "1")
    with TestClient(create_app(url=db_url), client=LOCAL_CLIENT) as client:
        assert client.post("/runs", json=spec_with_check("true")).status_code == 201
    with session_scope(db_url) as session:
        assert session.get(Run, "checked-run").source == "api"  # type: ignore[union-attr]


def test_an_unparseable_check_command_is_a_422(client: TestClient, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    response = client.post("/runs", json=spec_with_check("pytest 'unbalanced"))
    assert response.status_code == 422 and "check_command" in response.text
    assert run_count(db_url) == 0


def _drain_checked_phase(url: str) -> tuple[str, str | None]:
    with session_scope(url) as session:
        claim = leases.claim_phase(session, "checked-run", "p1", "worker-1")
    assert claim is not None
    result = execute_phase("checked-run", "p1", claim=claim, url=url, provider=SimulatedProvider(seed=1))
    return result.final_state, result.error_message


@pytest.fixture
def api_run_with_a_check(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run posted while the server allowed check commands; its check would write a marker file."""
    marker = tmp_path / "ws" / workspace_folder("checked-run") / "ran"  # the only place a sandboxed check writes
    monkeypatch.setenv("AUTOPACK_API_ALLOW_CHECK_COMMANDS", "1")
    with TestClient(create_app(url=db_url), client=LOCAL_CLIENT) as client:
        assert client.post("/runs", json=spec_with_check(f"touch {marker}")).status_code == 201
    monkeypatch.setenv("AUTOPACK_WORKSPACE_DIR", str(tmp_path / "ws"))
    return marker


def test_a_worker_without_the_setting_refuses_an_api_runs_check_command(db_url: str, api_run_with_a_check: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOPACK_API_ALLOW_CHECK_COMMANDS")
    state, reason = _drain_checked_phase(db_url)
    assert state == "FAILED" and "check_command is disabled for runs created through the API" in (reason or "")
    assert not api_run_with_a_check.exists()


def test_a_worker_with_the_setting_runs_an_api_runs_check_command(db_url: str, api_run_with_a_check: Path) -> None:
    state, reason = _drain_checked_phase(db_url)
    assert state == "COMPLETE", reason
    assert api_run_with_a_check.exists()


def test_a_check_command_sees_only_the_allow_listed_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GH_TOKEN", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "SOME_NEW_SECRET", "PROJECT_HOME"):
        monkeypatch.setenv(name, f"value-of-{name}")
    monkeypatch.setenv("AUTOPACK_CHECK_COMMAND_ENV", "PROJECT_HOME")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    out = tmp_path / "env.txt"
    assert run_check_command(f"{sys.executable} -c \"import os; open('{out}', 'w').write(repr(sorted(os.environ)))\"",
                             tmp_path) is None
    names = eval(out.read_text())  # noqa: S307 - our own repr of a list of names
    assert not {"GH_TOKEN", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "SOME_NEW_SECRET"} & set(names)
    assert {"PATH", "PROJECT_HOME", "LC_ALL"} <= set(names)


def test_the_allow_list_is_the_only_way_in() -> None:
    environ = {"PATH": "/bin", "HOME": "/h", "GH_TOKEN": "t", "DATABASE_URL": "x", "LC_CTYPE": "C", "X": "1"}
    assert check_command_env(environ, extra="") == {"PATH": "/bin", "HOME": "/h", "LC_CTYPE": "C"}
    assert check_command_env(environ, extra=" X ,") == {"PATH": "/bin", "HOME": "/h", "LC_CTYPE": "C", "X": "1"}


def test_a_check_command_is_not_given_to_a_shell(tmp_path: Path) -> None:
    problem = run_check_command("test -e pwned ; touch pwned", tmp_path)
    assert problem is not None and "exited" in problem  # `test` got four odd arguments; nothing ran after ';'
    assert not (tmp_path / "pwned").exists()
    assert run_check_command("test -d $HOME", tmp_path) is not None  # no variable expansion either


def test_a_missing_program_is_one_line(tmp_path: Path) -> None:
    problem = run_check_command("no-such-program-here --version", tmp_path)
    assert problem is not None and "could not start 'no-such-program-here'" in problem and "\n" not in problem


def test_a_timed_out_check_command_is_killed_with_everything_it_started(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_CHECK_SANDBOX", "none")  # the process-group kill; the sandbox: test_check_sandbox.py
    script = "sleep 300 & echo $! > child; wait"
    problem = run_check_command(f"sh -c '{script}'", tmp_path, timeout=1)
    assert problem is not None and "timed out" in problem
    child = int((tmp_path / "child").read_text())
    assert exits_within(child, seconds=10)  # the background sleep died with its process group


def exits_within(pid: int, *, seconds: float) -> bool:
    """Await the process's exit (its pidfd turns readable), bounded in time.

    The group's SIGKILL closes the sleep's end of the pipe a moment before the kernel marks it dead,
    so a look at /proc right after the check returns can still see it running.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True  # already gone and reaped
    try:
        readable, _, _ = select.select([fd], [], [], seconds)
        return bool(readable)
    finally:
        os.close(fd)


def test_runs_posted_by_the_api_are_marked(client: TestClient, db_url: str) -> None:
    assert client.post("/runs", json=GOOD_SPEC).status_code == 201
    with session_scope(db_url) as session:
        assert session.execute(sa.select(Run.source)).scalar_one() == "api"
        assert session.execute(sa.select(sa.func.count()).select_from(Phase)).scalar_one() == 2


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(url=db_url), client=LOCAL_CLIENT) as c:
        yield c
