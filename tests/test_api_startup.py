"""The API app started on a configuration or database it cannot use: one line saying what and how to fix it.

A bad setting stops the server (``uvicorn`` with the one line and its hint, no traceback; ``autopack api serve``
with ``error:`` and exit 2). A database it cannot use yet is served: ``/health`` says "degraded" and every
data request answers 503 with the line the CLI would give, never a traceback, a password or a new SQLite file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from test_api import API_KEY, GOOD_SPEC, KEYED
from test_api_security import WAIT_SECONDS, cli_env, free_port, server_process

from autopack.api import create_app
from autopack.db.handle import database_at
from autopack.db.migrate import upgrade_database

PASSWORD = "Pw5ecretXYZ"
UNSUPPORTED_URLS = [f"mysql://user:{PASSWORD}@127.0.0.1/db", f"postgresql+asyncpg://user:{PASSWORD}@127.0.0.1/db"]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    upgrade_database(database_at(url))
    return url


def uvicorn_args(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "autopack.main:app", "--host", "127.0.0.1", "--port", str(port)]


# --- configuration errors at start-up ------------------------------------------------------------------------


@pytest.fixture
def readable_key_file(tmp_path: Path) -> str:
    path = tmp_path / "shared-key"
    path.write_text("a-key-everyone-can-read\n")
    path.chmod(0o644)
    return str(path)


@pytest.mark.parametrize(("setting", "value", "message", "hint"), [
    ("AUTOPACK_API_KEY_FILE", "<readable key file>", "is not a private file of this user", "chmod 600"),
    ("AUTOPACK_API_MAX_BODY_BYTES", "abc", "invalid setting: AUTOPACK_API_MAX_BODY_BYTES", "fix the environment"),
    ("AUTOPACK_API_ALLOW_CHECK_COMMANDS", "maybe", "invalid setting: AUTOPACK_API_ALLOW_CHECK_COMMANDS",
     "fix the environment"),
    ("DATABASE_URL_FILE", "/nonexistent", "DATABASE_URL_FILE /nonexistent cannot be read",
     "point DATABASE_URL_FILE at a file"),
])
def test_uvicorn_stops_on_a_configuration_error_with_one_line_and_its_hint(
    sqlite_url: str, readable_key_file: str, setting: str, value: str, message: str, hint: str
) -> None:
    value = readable_key_file if value == "<readable key file>" else value
    env = cli_env(sqlite_url, AUTOPACK_API_KEY_FILE=str(Path(sqlite_url.removeprefix("sqlite:///")).parent / "key"))
    env[setting] = value
    started = subprocess.run(uvicorn_args(free_port()), env=env, capture_output=True, text=True, timeout=WAIT_SECONDS)
    lines = [line for line in started.stderr.splitlines() if "autopack API cannot start" in line]
    assert started.returncode != 0, started.stderr
    assert len(lines) == 1 and message in lines[0] and hint in lines[0], started.stderr
    assert "Traceback" not in started.stderr and "a-key-everyone-can-read" not in started.stderr


# --- a DATABASE_URL autopack cannot use --------------------------------------------------------------------------


@pytest.mark.parametrize("url", UNSUPPORTED_URLS)
def test_api_serve_refuses_an_unsupported_database_url(url: str, tmp_path: Path) -> None:
    autopack = str(Path(sys.executable).parent / "autopack")
    args = [autopack, "api", "serve", "--host", "127.0.0.1", "--port", str(free_port())]
    served = subprocess.run(args, env=cli_env(url, AUTOPACK_API_KEY_FILE=str(tmp_path / "key")),
                            capture_output=True, text=True, timeout=WAIT_SECONDS)
    assert served.returncode == 2, served.stderr
    assert served.stderr.startswith("error: unsupported database") and len(served.stderr.splitlines()) == 1
    assert PASSWORD not in served.stderr + served.stdout
    assert not (tmp_path / "key").exists()  # a refused start leaves no key file behind



def test_api_serve_on_a_port_in_use_ends_with_one_error_line_and_exit_2(sqlite_url: str, tmp_path: Path) -> None:
    """Not uvicorn's exit 3, which is autopack's DB_MISMATCH."""
    import socket

    autopack = str(Path(sys.executable).parent / "autopack")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = [autopack, "api", "serve", "--host", "127.0.0.1", "--port", str(port)]
        served = subprocess.run(args, env=cli_env(sqlite_url, AUTOPACK_API_KEY_FILE=str(tmp_path / "key")),
                                capture_output=True, text=True, timeout=WAIT_SECONDS)
    assert served.returncode == 2, served.stderr
    assert "address already in use" in served.stderr and "Traceback" not in served.stderr
    assert served.stderr.splitlines()[-1] == (
        f"error: the API server did not start on 127.0.0.1:{port} (uvicorn's reason is logged above) "
        "(choose another --host or --port, or stop what already listens there)")

def test_api_serve_refuses_an_unknown_log_level_in_one_line_before_anything_starts(sqlite_url: str,
                                                                                   tmp_path: Path) -> None:
    autopack = str(Path(sys.executable).parent / "autopack")
    args = [autopack, "api", "serve", "--port", str(free_port()), "--log-level", "verbose"]
    served = subprocess.run(args, env=cli_env(sqlite_url, AUTOPACK_API_KEY_FILE=str(tmp_path / "key")),
                            capture_output=True, text=True, timeout=WAIT_SECONDS)
    assert served.returncode == 2, served.stderr
    assert served.stderr.splitlines() == [
        "error: Invalid value for '--log-level': 'verbose' is not a log level: use one of critical, error, warning, "
        "info, debug, trace (see `autopack api serve --help`)"]
    assert not (tmp_path / "key").exists()


@pytest.mark.parametrize("url", UNSUPPORTED_URLS)
def test_uvicorn_answers_an_unsupported_database_url_with_a_json_503(url: str, tmp_path: Path) -> None:
    port = free_port()
    with server_process(uvicorn_args(port), url, AUTOPACK_API_KEY=API_KEY) as server:
        started = server.wait_for("Application startup complete")
        assert started[-1], "".join(started)
        base = f"http://127.0.0.1:{port}"
        listed = httpx.get(f"{base}/runs", timeout=WAIT_SECONDS)
        created = httpx.post(f"{base}/runs", json=GOOD_SPEC, headers=KEYED, timeout=WAIT_SECONDS)
        health = httpx.get(f"{base}/health", timeout=WAIT_SECONDS).json()
    log = "".join(started + server.wait_for("\0"))  # the rest of its output, up to its end
    for response in (listed, created):
        assert response.status_code == 503 and response.headers["content-type"] == "application/json"
        assert response.json()["detail"].startswith("unsupported database") and "\n" not in response.json()["detail"]
    assert (health["status"], health["db_ok"]) == ("degraded", False)
    assert "Traceback" not in log and PASSWORD not in log + listed.text + created.text


# --- a database without the schema -----------------------------------------------------------------------------


def test_a_missing_sqlite_file_is_a_503_naming_the_upgrade_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with TestClient(create_app(database=database_at(f"sqlite:///{missing}"), api_key=API_KEY), headers=KEYED) as c:
        responses = [c.get("/runs"), c.get("/runs/api-run/phases"), c.post("/runs", json=GOOD_SPEC)]
    for response in responses:
        assert response.status_code == 503
        assert response.json() == {"detail": "the database file does not exist "
                                             "(run `autopack db upgrade` first to create it)"}
    assert not missing.exists() and list(tmp_path.glob("missing.db*")) == []


def test_an_unmigrated_database_is_a_503_naming_the_upgrade(empty_db_url: str) -> None:
    """SQLite answers a missing table with an OperationalError, PostgreSQL with a ProgrammingError: both 503."""
    if empty_db_url.startswith("sqlite"):
        Path(empty_db_url.removeprefix("sqlite:///")).touch()  # an empty file is a database without tables
    with TestClient(create_app(database=database_at(empty_db_url), api_key=API_KEY), headers=KEYED) as c:
        responses = [c.get("/runs"), c.post("/runs", json=GOOD_SPEC)]
    for response in responses:
        assert response.status_code == 503
        assert response.json() == {"detail": "the database has no autopack schema (run `autopack db upgrade` first)"}
