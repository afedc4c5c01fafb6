"""A fake-secret sweep: with a recognisable fake secret in every place one can be configured, run the pipeline
under Prefect (its GitHub call failing), then look for each secret in everything the run left behind —
captured stdout/stderr, log records, every file in the output directory, every table of the telemetry
database and every table of Prefect's own database (flow-run logs, state messages, artifacts, parameters).
"""

from __future__ import annotations

import logging
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_pipeline_flow import project_checkout
from test_secrets_at_rest import every_file, every_stored_text

from autopack.db.engine import dispose_engines, get_engine
from autopack.db.handle import database_at
from autopack.db.migrate import upgrade_database
from autopack.db.models import TokenEstimationV2Event
from autopack.params import PipelineParams

from synthetic_telemetry import simulate

#: Each fake secret, by where it is configured. None of them has the shape of a real key (``sk-…``,
#: ``ghp_…``), so only the masking rule's knowledge of the configured values can hide them.
SECRETS = {
    "GITHUB_TOKEN": "fake-gh-env-token-SWEEP01",
    "OPENAI_API_KEY": "fake-openai-key-SWEEP02",
    "ANTHROPIC_API_KEY": "fake-anthropic-key-SWEEP03",
    "GEMINI_API_KEY": "fake-gemini-key-SWEEP04",
    "AUTOPACK_API_KEY": "fake-autopack-api-key-SWEEP05",
    "GITHUB_API_URL password": "fake-ghurl-password-SWEEP06",
    "GITHUB_API_URL access_token": "fake-ghurl-access-token-SWEEP07",
    "AUTOPACK_LLM_BASE_URL token user": "fakeLlmTokenUserSWEEP08",
    "github-token Secret block": "fake-gh-block-token-SWEEP09",
    "DATABASE_URL password": "fake-db-password-SWEEP10",
}
REPOSITORY = "sweep-owner/sweep-repo"


def dead_port() -> int:
    """A loopback port nothing listens on: the GitHub call fails there, quickly."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prefect_database_text() -> str:
    """Every row of every table of the Prefect server's SQLite database, as text."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    path = sa.engine.make_url(PREFECT_SERVER_DATABASE_CONNECTION_URL.value()).database
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        chunks = []
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 - names from sqlite_master
                chunks.append(repr(row))
        return "\n".join(chunks)
    finally:
        connection.close()


@pytest.fixture
def github_token_block(prefect_harness: None) -> Iterator[str]:
    """The ``github-token`` Secret block holding a fake token (deleted afterwards: other tests use the harness)."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    block_id = Secret(value=SECRETS["github-token Secret block"]).save("github-token", overwrite=True)
    try:
        yield "github-token"
    finally:
        with get_client(sync_client=True) as client:
            client.delete_block_document(block_id)


@pytest.fixture
def database_url_with_a_password(empty_db_url: str) -> str:
    """The telemetry database, its URL carrying a password where the backend lets a URL carry one."""
    url = empty_db_url
    if url.startswith("postgresql"):  # the test server trusts loopback: the password is sent and ignored
        url = sa.engine.make_url(url).set(password=SECRETS["DATABASE_URL password"]).render_as_string(
            hide_password=False)
    upgrade_database(database_at(url))
    with get_engine(url).begin() as connection:  # enough history for the calibration gate to pass
        connection.execute(sa.insert(TokenEstimationV2Event.__table__), simulate(300, seed=3, run_id="history"))
    return url


def test_no_configured_secret_lands_anywhere(
    database_url_with_a_password: str, github_token_block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    from flows.pipeline import telemetry_pipeline

    url = database_url_with_a_password
    port = dead_port()
    github_url = (f"http://sweep-user:{SECRETS['GITHUB_API_URL password']}@127.0.0.1:{port}/api/v3"
                  f"?access_token={SECRETS['GITHUB_API_URL access_token']}")
    for name in ("GITHUB_TOKEN", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "AUTOPACK_API_KEY"):
        monkeypatch.setenv(name, SECRETS[name])
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("GITHUB_API_URL", github_url)
    monkeypatch.setenv("GITHUB_REPOSITORY", REPOSITORY)
    monkeypatch.setenv("AUTOPACK_LLM_BASE_URL", f"https://{SECRETS['AUTOPACK_LLM_BASE_URL token user']}@llm.invalid/v1")
    caplog.set_level(logging.DEBUG)
    target = project_checkout(tmp_path / "target")
    output_dir = tmp_path / "reports"

    params = PipelineParams(target_repo=str(target), output_dir=str(output_dir), skip_drain=True)
    state = telemetry_pipeline(params, return_state=True)

    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # the flow-run logs are in Prefect's database now
    captured = capfd.readouterr()
    assert state.is_failed(), state.message
    assert "cannot reach GitHub at http://sweep-user:***@127.0.0.1" in (state.message or "")
    places = {
        "stdout": captured.out,
        "stderr": captured.err,
        "log records": caplog.text + "\n".join(repr(r.__dict__) for r in caplog.records),
        "output directory": every_file(output_dir),
        "telemetry database": every_stored_text(url),
        "Prefect database": prefect_database_text(),
    }
    assert "cannot reach GitHub" in places["Prefect database"]  # the failure was recorded there
    leaks = [f"{what} in {where}" for what, secret in SECRETS.items() for where, text in places.items()
             if secret in text]
    assert not leaks, leaks
    dispose_engines()


def test_a_logged_url_credential_is_masked_in_every_logger(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Third-party loggers (httpx, urllib3, PyGithub, uvicorn's access log) go through the same rule."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "urllib3.connectionpool", "sqlalchemy.engine", "github.Requester"):
        # whatever an earlier test in this process (Prefect's logging set-up) did to these loggers' levels
        caplog.set_level(logging.DEBUG, logger=name)
        monkeypatch.setattr(logging.getLogger(name), "disabled", False)
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    url = "https://user:hunter2-SWEEP@ghe.internal/api/v3/repos?access_token=tok-SWEEP-42"
    logging.getLogger("httpx").info('HTTP Request: GET %s "HTTP/1.1 200 OK"', url)
    logging.getLogger("urllib3.connectionpool").debug("Starting new HTTPS connection (1): %s", url)
    logging.getLogger("sqlalchemy.engine").warning(url)
    access = logging.getLogger("uvicorn.access")  # ("uvicorn" does not propagate under Prefect's logging set-up)
    access.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/runs?api_key=tok-SWEEP-42", "1.1", 200)
    access.removeHandler(caplog.handler)
    try:
        raise RuntimeError(f"cannot reach {url}")
    except RuntimeError:
        logging.getLogger("github.Requester").exception("request failed")
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "hunter2-SWEEP" not in text and "tok-SWEEP-42" not in text
    by_name = {record.name: record for record in caplog.records}
    assert by_name["uvicorn.access"].getMessage() == '127.0.0.1:1 - "GET /runs?api_key=*** HTTP/1.1" 200'
    assert by_name["uvicorn.access"].args[3] == "1.1"  # uvicorn's formatter reads the arguments: still there
    assert "user:***@ghe.internal" in by_name["httpx"].getMessage()
    assert "RuntimeError: cannot reach https://user:***@ghe.internal" in caplog.text
