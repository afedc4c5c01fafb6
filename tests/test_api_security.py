"""The API's safety lives in the app, whichever server starts it; check commands posted to it never run.

Every write needs the key — ``AUTOPACK_API_KEY`` or the key file the app generates — whatever the peer
address or proxy headers. Real ``uvicorn`` processes: started from its command line, on a Unix socket, and
on a socket it was handed. The non-loopback case binds this machine's own interface address and connects
from this machine: no packet leaves the host.
"""

from __future__ import annotations

import copy
import os
import queue
import select
import signal
import socket
import stat
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
from test_api import API_KEY, GOOD_SPEC, KEYED, run_count

from autopack.api import create_app
from autopack.db.engine import session_scope
from autopack.db.handle import database_at
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
    upgrade_database(database_at(url))
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


#: The checkout under test: a command started from a test's directory imports this ``autopack``, not whichever
#: one the virtual environment has installed (a second worktree sharing one environment).
CHECKOUT = str(Path(__file__).resolve().parents[1])


def cli_env(url: str, **env: str) -> dict[str, str]:
    """This environment minus autopack's settings, plus the database and ``env`` (a test's key file)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPACK_")}
    path = os.pathsep.join(p for p in (CHECKOUT, environment.get("PYTHONPATH", "")) if p)
    return {**environment, "PYTHONPATH": path, "DATABASE_URL": url, **env}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server_process(args: list[str], url: str, **env: str) -> Iterator[Server]:
    env.setdefault("AUTOPACK_API_KEY_FILE", os.environ["AUTOPACK_API_KEY_FILE"])  # the test's, not the user's
    proc = subprocess.Popen(args, env=cli_env(url, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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


# --- the key: every write needs it, there is no key-less mode ------------------------------------------------


def test_uvicorn_command_line_generates_a_private_key_file_and_refuses_key_less_writes(
    sqlite_url: str, tmp_path: Path
) -> None:
    """No AUTOPACK_API_KEY: the app under the real ``uvicorn`` command writes its key file (0600, in a 0700
    directory), names it in its log, never the key, and accepts writes only with that key."""
    key_file = tmp_path / "config" / "autopack" / "api-key"
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "autopack.main:app", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(args, sqlite_url, AUTOPACK_API_KEY_FILE=str(key_file)) as server:
        log = server.wait_for("Application startup complete")
        assert log[-1], "".join(log)
        base = f"http://127.0.0.1:{port}"
        key = key_file.read_text().strip()
        key_less = httpx.post(f"{base}/runs", json=GOOD_SPEC, timeout=WAIT_SECONDS)
        keyed = httpx.post(f"{base}/runs", json=GOOD_SPEC, headers={"X-API-Key": key}, timeout=WAIT_SECONDS)
        listed = httpx.get(f"{base}/runs", timeout=WAIT_SECONDS)
    assert (key_less.status_code, keyed.status_code, listed.status_code) == (401, 201, 200)  # reads stay open
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    output = "".join(log)
    assert str(key_file) in output and key not in output
    assert run_count(sqlite_url) == 1


def test_a_unix_socket_does_not_make_writes_key_less(sqlite_url: str, tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    args = [sys.executable, "-m", "uvicorn", "autopack.main:app", "--uds", str(path)]
    key_file = tmp_path / "api-key"
    with server_process(args, sqlite_url, AUTOPACK_API_KEY_FILE=str(key_file)) as server:
        assert server.wait_for("Application startup complete")[-1]
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://local") as client:
            assert client.post("/runs", json=GOOD_SPEC, timeout=WAIT_SECONDS).status_code == 401
            headers = {"X-API-Key": key_file.read_text().strip()}
            assert client.post("/runs", json=GOOD_SPEC, headers=headers, timeout=WAIT_SECONDS).status_code == 201
    assert run_count(sqlite_url) == 1


def test_changes_from_another_address_need_the_key(sqlite_url: str) -> None:
    address = own_non_loopback_address()
    with handed_a_socket(address, sqlite_url, AUTOPACK_API_KEY="k-123456") as base:
        without = httpx.post(f"{base}/runs", json=GOOD_SPEC, timeout=WAIT_SECONDS)
        with_key = httpx.post(f"{base}/runs", json=GOOD_SPEC, headers={"X-API-Key": "k-123456"}, timeout=WAIT_SECONDS)
    assert (without.status_code, with_key.status_code) == (401, 201)


#: Headers a proxy may add (or a client may forge): none of them opens a server without a configured key.
PROXY_HEADERS = ["Via", "CF-Connecting-IP", "X-Forwarded-Proto", "Forwarded-For", "Forwarded", "X-Forwarded-For",
                 "X-Real-IP", "X-Forwarded-Host", "X-Client-IP", "True-Client-IP", "X-Original-Forwarded-For",
                 "Fastly-Client-IP", "X-Cluster-Client-IP", "X-ProxyUser-Ip", "Client-IP", None]


@pytest.mark.parametrize("header", PROXY_HEADERS)
def test_no_request_writes_without_the_key_proxied_or_not(db_url: str, header: str | None) -> None:
    headers = {header: "127.0.0.1"} if header else {}
    with TestClient(create_app(database=database_at(db_url)), client=("127.0.0.1", 50000), headers=headers) as client:
        statuses = [client.post("/runs", json=GOOD_SPEC).status_code,
                    client.post("/drain/claim", json={"owner": "w"}).status_code,
                    client.post("/runs/api-run/phases/p2/state", json={"state": "SKIPPED"}).status_code]
        assert client.get("/runs").status_code == 200
    assert statuses == [401, 401, 401]
    assert run_count(db_url) == 0


def test_the_key_is_checked_before_the_body_is_parsed(db_url: str) -> None:
    with TestClient(create_app(database=database_at(db_url), api_key=API_KEY)) as client:
        for body in (b"{not json", b'{"run_id": ""}', b"\xff" * 10):
            assert client.post("/runs", content=body, headers={"content-type": "application/json"}).status_code == 401
        wrong = client.post("/runs", content=b"{not json", headers={"X-API-Key": "wrong"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "X-API-Key"
        assert "not json" not in wrong.text
        keyed = client.post("/runs", content=b"{not json", headers={**KEYED, "content-type": "application/json"})
        assert keyed.status_code == 422


def test_options_and_wrong_methods_name_every_allowed_method(client: TestClient) -> None:
    options = client.options("/runs")
    assert options.status_code == 204 and set(options.headers["allow"].split(", ")) == {"GET", "POST", "OPTIONS"}
    deleted = client.delete("/runs")
    assert deleted.status_code == 405 and set(deleted.headers["allow"].split(", ")) == {"GET", "POST", "OPTIONS"}
    assert client.options("/drain/claim").headers["allow"] == "POST, OPTIONS"
    assert client.options("/no/such/path").status_code == 404


def test_a_key_file_others_can_read_is_refused(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autopack.errors import ConfigError

    key_file = tmp_path / "shared-key"
    key_file.write_text("a-key-everyone-can-read\n")
    key_file.chmod(0o644)
    monkeypatch.setenv("AUTOPACK_API_KEY_FILE", str(key_file))
    with pytest.raises(ConfigError, match="not a private file"):
        with TestClient(create_app(database=database_at(db_url))):
            pass


def test_the_drain_worker_authenticates_with_the_key_file(db_url: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``drain batch --api-url`` sends the key from the same file the server generated; a wrong key is refused."""
    from test_api import serve

    from autopack.db.identity import read_identity
    from autopack.errors import RefusedError
    from autopack.execution.batch import check_api_identity

    ours = read_identity(database_at(db_url)).db_id
    with serve(create_app(database=database_at(db_url))) as base:  # no key configured: generates the key file
        assert check_api_identity(base, ours)["key_accepted"] is True
        monkeypatch.setenv("AUTOPACK_API_KEY", "not-the-servers-key")
        with pytest.raises(RefusedError, match="does not accept this machine's API key"):
            check_api_identity(base, ours)


def test_autopack_api_serve_names_the_key_file_and_the_cli_uses_it(sqlite_url: str, tmp_path: Path) -> None:
    key_file = tmp_path / "state" / "api-key"
    port = free_port()
    autopack = str(Path(sys.executable).parent / "autopack")
    args = [autopack, "api", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(args, sqlite_url, AUTOPACK_API_KEY_FILE=str(key_file)) as server:
        log = server.wait_for("Application startup complete")
        assert log[-1], "".join(log)
        key = key_file.read_text().strip()
        drain = subprocess.run([autopack, "drain", "batch", "--allow-empty-db", "--api-url", f"http://127.0.0.1:{port}"],
                               env=cli_env(sqlite_url, AUTOPACK_API_KEY_FILE=str(key_file)),
                               capture_output=True, text=True, timeout=WAIT_SECONDS)
    output = "".join(log)
    assert f"key file {key_file} (created now)" in output and key not in output
    assert drain.returncode == 0, drain.stderr
    assert key not in drain.stdout + drain.stderr


# --- check commands ----------------------------------------------------------------------------------------


def test_a_posted_check_command_is_refused_and_nothing_is_written(db_url: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with TestClient(create_app(database=database_at(db_url), api_key=API_KEY), headers=KEYED) as client:
        response = client.post("/runs", json=spec_with_check(f"sh -c 'id > {marker}'"))
    assert response.status_code == 403
    detail = response.json()["detail"]
    assert "check_command is disabled for runs created through the API" in detail
    assert "AUTOPACK_API_ALLOW_CHECK_COMMANDS" in detail and "\n" not in detail
    assert run_count(db_url) == 0 and not marker.exists()


def test_the_server_setting_allows_posted_check_commands(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_API_ALLOW_CHECK_COMMANDS", "1")
    with TestClient(create_app(database=database_at(db_url), api_key=API_KEY), headers=KEYED) as client:
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
    result = execute_phase("checked-run", "p1", claim=claim, db=database_at(url), provider=SimulatedProvider(seed=1))
    return result.final_state, result.error_message


@pytest.fixture
def api_run_with_a_check(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run posted while the server allowed check commands; its check would write a marker file."""
    # the only place a sandboxed check writes
    marker = tmp_path / "ws" / str(database_at(db_url).stored_id()) / workspace_folder("checked-run") / "ran"
    monkeypatch.setenv("AUTOPACK_API_ALLOW_CHECK_COMMANDS", "1")
    with TestClient(create_app(database=database_at(db_url), api_key=API_KEY), headers=KEYED) as client:
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
    with TestClient(create_app(database=database_at(db_url), api_key=API_KEY), headers=KEYED) as c:
        yield c
