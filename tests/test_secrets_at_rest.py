"""Credentials inside URLs never land in output, logs, reports, JSON, artifacts or database rows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_runner import run_cli

from autopack.config import get_settings
from autopack.db.engine import dispose_engines, get_engine, mask_url
from autopack.db.models import Base
from autopack.execution.seed_runs import V4_RUN_ID
from autopack.logging import redact
from autopack.url_credentials import mask_url_credentials, url_credentials

P1 = "telemetry-p1-string-util"


def every_stored_text(url: str) -> str:
    """Every row of every autopack table, as text."""
    chunks = []
    with get_engine(url).connect() as connection:
        for table in Base.metadata.sorted_tables:
            for row in connection.execute(sa.select(table)).mappings():
                chunks.append(json.dumps({k: str(v) for k, v in row.items()}))
    return "\n".join(chunks)


def every_file(directory: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in directory.rglob("*") if p.is_file())


# --- the pieces ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "secret", "kept"), [
    ("postgresql://app@db/autopack?password=pg-S3cret", "pg-S3cret", "app@db"),
    ("postgresql://db/autopack?sslpassword=k3y-pass&sslmode=require", "k3y-pass", "sslmode=require"),
    ("postgresql+psycopg://app:pw-S3cret@db:5432/autopack", "pw-S3cret", "app:***@db"),
])
def test_mask_url_hides_every_database_credential(url: str, secret: str, kept: str) -> None:
    masked = mask_url(url)
    assert secret not in masked and kept in masked and "***" in masked


@pytest.mark.parametrize(("text", "secret"), [
    ("git push https://ghs_Abcdefgh12345678901234@github.com/o/r.git", "ghs_Abcdefgh12345678901234"),
    ("remote https://plainTOKENvalue42@gitlab.example/o/r.git failed", "plainTOKENvalue42"),
    ("GET http://127.0.0.1:8000/v1?api_key=q-S3cret&x=1", "q-S3cret"),
    ("GET http://h/v1?foo=1&Api-Key=q-S3cret", "q-S3cret"),
    ("connect postgresql://h/db?user=a&password=pg-S3cret failed", "pg-S3cret"),
    ("proxy http://u:pw-S3cret@proxy:3128/", "pw-S3cret"),
])
def test_redact_masks_credentials_in_any_url_in_text(text: str, secret: str) -> None:
    assert secret not in redact(text, secrets=[]) and secret not in mask_url_credentials(text)


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://u:p@ssW0rd@host/db", "postgresql://u:***@host/db"),
    ("postgresql://u:p@ss/W0rd@host/db", "postgresql://u:***@host/db"),
    ("https://to@kenS3cret@host/x", "https://***@host/x"),
])
def test_a_raw_at_in_a_password_is_masked_up_to_the_last_at(url: str, masked: str) -> None:
    """Everything up to the last '@' is userinfo: cutting at the first one showed the rest as the host."""
    assert mask_url_credentials(url) == masked
    assert mask_url_credentials(f"cannot open {url}: failed") == f"cannot open {masked}: failed"


def test_mask_url_masks_a_password_with_a_raw_at() -> None:
    assert mask_url("postgresql://u:p@ssW0rd@host:5432/db") == "postgresql://u:***@host:5432/db"


def test_url_credentials_list_what_follows_each_raw_at_of_a_password() -> None:
    """A driver given ``p@ssW0rd@host`` resolves the host ``ssW0rd@host`` and echoes it."""
    secrets = url_credentials("postgresql://u:p@ssW0rd/x@host/db")
    assert {"p@ssW0rd/x", "ssW0rd/x"} <= set(secrets)
    assert "ssW0rd" not in redact("failed to resolve host 'ssW0rd/x@host'", secrets=secrets)


def test_an_at_in_a_path_is_not_taken_for_a_credential() -> None:
    for text in ("pip install git+https://github.com/o/r@v1", "sqlite:////srv/me@work/autopack.db"):
        assert mask_url_credentials(text) == text and url_credentials(text) == []


def test_plain_database_user_names_and_paths_are_kept() -> None:
    for text in ("postgresql://postgres@127.0.0.1:5432/autopack", "sqlite:////srv/autopack.db?timeout=5"):
        assert mask_url_credentials(text) == text


def test_url_credentials_lists_each_secret_once() -> None:
    assert url_credentials("https://tok%40en@h/x?key=k1&other=2") == ["tok%40en", "k1", "tok@en"]  # as written, decoded
    assert url_credentials("postgresql://user@h/db") == []  # a database user name is not a credential
    assert url_credentials("not a url") == []


def test_settings_know_the_credentials_of_every_configured_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db/autopack?password=pg-S3cret")
    monkeypatch.setenv("AUTOPACK_API_URL", "http://worker:api-S3cret@127.0.0.1:8000")
    monkeypatch.setenv("AUTOPACK_LLM_BASE_URL", "https://llm-T0ken@llm.internal/v1")
    monkeypatch.setenv("GITHUB_API_URL", "https://ghe.internal/api/v3?access_token=gh-S3cret")
    secrets = get_settings().secret_values()
    assert {"pg-S3cret", "api-S3cret", "llm-T0ken", "gh-S3cret"} <= set(secrets)
    assert "free text with pg-S3cret inside" != redact("free text with pg-S3cret inside")


# --- end to end ---------------------------------------------------------------------------------------------


def test_a_password_in_the_database_url_query_never_lands_anywhere(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """psycopg honours ``?password=``; before, every ``[db]`` line, identity JSON and log showed it."""
    if not db_url.startswith("postgresql"):
        pytest.skip("query-string passwords are a PostgreSQL (libpq) feature")
    secret = "pg-query-S3cret-0042"
    monkeypatch.setenv("DATABASE_URL", f"{db_url}?password={secret}")  # trust auth: accepted and unused
    caplog.set_level(logging.INFO)
    printed = []
    for args in (["runs", "create-telemetry-run"], ["db", "identity", "--json"], ["db", "identity", "--check"],
                 ["drain", "one", "--run-id", V4_RUN_ID, "--phase-id", P1, "--force"],
                 ["drain", "batch", "--run-id", V4_RUN_ID, "--batch-size", "2"],
                 ["calibrate", "--output-dir", str(tmp_path / "reports"), "--min-samples", "1"], ["runs", "list"]):
        code, out, err = run_cli(capsys, *args)
        text = out + err
        assert code in (0, 1), (args, text)
        printed.append(text)
    everything = "\n".join([*printed, caplog.text, every_file(tmp_path / "reports"), every_stored_text(db_url)])
    assert "password=***" in "\n".join(printed)
    assert secret not in everything
    dispose_engines()


def test_a_token_in_the_llm_base_url_never_lands_in_failure_reasons(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider that cannot be reached names its base URL; before, a token user name was stored verbatim."""
    token = "llmTOKENuser0042"
    query_key = "llm-query-key-0042"
    assert run_cli(capsys, "runs", "create-telemetry-run")[0] == 0
    monkeypatch.setenv("AUTOPACK_LLM_PROVIDER", "openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    monkeypatch.setenv("AUTOPACK_LLM_MAX_RETRIES", "0")
    monkeypatch.setenv("AUTOPACK_LLM_BASE_URL", f"http://{token}@127.0.0.1:1/v1?api_key={query_key}")
    caplog.set_level(logging.INFO)
    code, out, err = run_cli(capsys, "drain", "one", "--run-id", V4_RUN_ID, "--phase-id", P1, "--force")
    text = out + err
    assert code == 1 and "127.0.0.1:1" in text
    code, out, err = run_cli(capsys, "drain", "batch", "--run-id", V4_RUN_ID, "--batch-size", "1")
    batch_text = out + err
    everything = "\n".join([text, batch_text, caplog.text, every_stored_text(db_url)])
    assert "APIConnectionError" in everything
    assert token not in everything and query_key not in everything


# --- failure reasons a client or worker reports -------------------------------------------------------------

SERVER_KEY = "server-key-ABCDEF123456"
#: A reason carrying every kind of secret: a key-shaped token, the server's own API key, URL credentials.
LEAKY_REASON = (f"token ghp_FAKEtoken1234567890abcd key {SERVER_KEY} leaked postgresql://u:Pw5ecretXYZ@h/db "
                "see https://bob:Hunter2pw@git.example.com/x?access_token=abcdef123456")
LEAKED = ("ghp_FAKEtoken1234567890abcd", SERVER_KEY, "Pw5ecretXYZ", "Hunter2pw", "abcdef123456")


@pytest.fixture
def keyed_client(db_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The app with the server's key from AUTOPACK_API_KEY, and one run whose first phase worker w1 holds."""
    from fastapi.testclient import TestClient
    from test_api import GOOD_SPEC

    from autopack.api import create_app
    from autopack.db.handle import database_at

    monkeypatch.setenv("AUTOPACK_API_KEY", SERVER_KEY)
    with TestClient(create_app(database=database_at(db_url)), headers={"X-API-Key": SERVER_KEY}) as client:
        assert client.post("/runs", json=GOOD_SPEC).status_code == 201
        claimed = client.post("/drain/claim", json={"owner": "w1"})
        assert claimed.status_code == 200 and claimed.json()["phase_id"] == "p1", claimed.text
        yield client


def test_a_failure_reason_posted_to_the_api_is_stored_and_served_masked(keyed_client, db_url: str) -> None:  # type: ignore[no-untyped-def]
    reported = keyed_client.post("/runs/api-run/phases/p1/result",
                                 json={"owner": "w1", "final_state": "FAILED", "failure_reason": LEAKY_REASON})
    served = keyed_client.get("/runs/api-run/phases/p1")
    listed = keyed_client.get("/runs/api-run")
    assert reported.status_code == 200 and served.status_code == 200, reported.text
    assert served.json()["last_failure_reason"].startswith("token *** key *** leaked postgresql://u:***@h/db")
    everything = "\n".join([served.text, listed.text, every_stored_text(db_url)])
    assert not [secret for secret in LEAKED if secret in everything]


def test_a_state_reason_posted_to_the_api_is_stored_and_served_masked(keyed_client, db_url: str) -> None:  # type: ignore[no-untyped-def]
    keyed_client.post("/runs/api-run/phases/p1/release", json={"owner": "w1"})
    changed = keyed_client.post("/runs/api-run/phases/p2/state", json={"state": "SKIPPED", "reason": LEAKY_REASON})
    served = keyed_client.get("/runs/api-run/phases/p2")
    assert changed.status_code == 200 and served.status_code == 200, changed.text
    assert "https://bob:***@git.example.com/x?access_token=***" in served.json()["last_failure_reason"]
    everything = "\n".join([served.text, keyed_client.get("/runs/api-run/phases").text, every_stored_text(db_url)])
    assert not [secret for secret in LEAKED if secret in everything]


def test_a_reason_stored_verbatim_by_an_earlier_version_is_served_masked(keyed_client, db_url: str) -> None:  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    from autopack.db.engine import session_scope
    from autopack.db.models import Phase

    with session_scope(db_url) as db:  # what a version before the masking on write left in the row
        db.execute(sa.update(Phase).where(Phase.run_id == "api-run", Phase.phase_id == "p2")
                   .values(last_failure_reason=LEAKY_REASON + "\nsecond line"))
    served = keyed_client.get("/runs/api-run/phases/p2")
    listed = keyed_client.get("/runs/api-run/phases")
    assert served.status_code == 200 and listed.status_code == 200, served.text
    assert served.json()["last_failure_reason"].startswith("token *** key *** leaked postgresql://u:***@h/db")
    assert served.json()["last_failure_reason"].endswith(" second line")
    assert not [secret for secret in LEAKED if secret in served.text + listed.text]


def test_a_posted_reason_is_stored_on_one_printable_line(keyed_client) -> None:  # type: ignore[no-untyped-def]
    """Else a client could forge lines in whatever prints the reason, or send a terminal escape sequence."""
    forged = "failed\n2026-12-07 INFO autopack: [phase] api-run/p1 COMPLETE\x1b]0;pwned\x07\u202etxt"
    keyed_client.post("/runs/api-run/phases/p1/result", json={"owner": "w1", "final_state": "FAILED",
                                                               "failure_reason": forged})
    stored = keyed_client.get("/runs/api-run/phases/p1").json()["last_failure_reason"]
    assert stored == "failed 2026-12-07 INFO autopack: [phase] api-run/p1 COMPLETE\\x1b]0;pwned\\x07\\u202etxt"


def test_a_failure_reason_a_drain_worker_reports_is_stored_masked(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The direct-database drain writes through the same function as the API."""
    from test_drain_batch_support import make_run

    from autopack.db.engine import session_scope
    from autopack.execution import leases

    monkeypatch.setenv("AUTOPACK_API_KEY", SERVER_KEY)
    make_run(db_url, "leaky-run", ["write a util"])
    with session_scope(db_url) as db:
        claim = leases.claim_next(db, "w1")
        assert claim is not None
        leases.finish_phase(db, claim.run_id, claim.phase_id, "w1", "FAILED", failure_reason=LEAKY_REASON)
    stored = every_stored_text(db_url)
    assert "ghp_***" not in stored and "token *** key ***" in stored
    assert not [secret for secret in LEAKED if secret in stored]
