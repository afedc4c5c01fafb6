"""Shared fixtures: a real database per test (SQLite file and, when configured, PostgreSQL)."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from autopack.db.engine import dispose_engines
from autopack.db.handle import database_at
from autopack.db.migrate import upgrade_database

# Tests talk to loopback only: Prefect's server must not try to send usage analytics anywhere.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# A test process started in the background of a non-interactive shell inherits SIGINT *ignored*, and so
# would every command it starts (an ignored signal survives exec): the tests that interrupt
# `autopack db upgrade` with Ctrl-C would then wait for nothing. Tests run with the ordinary handler.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: Set by .ci/run; a PostgreSQL server URL whose user may CREATE/DROP DATABASE.
POSTGRES_ADMIN_URL = os.environ.get("AUTOPACK_TEST_POSTGRES_URL")


def _backends() -> list[object]:
    marks = [] if POSTGRES_ADMIN_URL else [pytest.mark.skip(reason="AUTOPACK_TEST_POSTGRES_URL not set")]
    return ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, *marks])]


def _admin_engine() -> sa.Engine:
    assert POSTGRES_ADMIN_URL
    url = sa.engine.make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+psycopg")
    return sa.create_engine(url, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session", autouse=True)
def _postgres_reachable() -> None:
    """In CI a configured but unreachable PostgreSQL is a failure, not a skip."""
    if POSTGRES_ADMIN_URL:
        engine = _admin_engine()
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()


def create_postgres_database() -> str:
    name = f"autopack_test_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine()
    with engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return str(sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False))


def drop_postgres_database(url: str) -> None:
    name = sa.engine.make_url(url).database
    engine = _admin_engine()
    with engine.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(params=_backends())
def empty_db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A URL to a database that exists but has no schema: a SQLite file path or a fresh PostgreSQL db."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'autopack.db'}"
        dispose_engines()
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        dispose_engines()
        drop_postgres_database(url)


@pytest.fixture
def db_url(empty_db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated database, also exported as DATABASE_URL for code that reads the settings."""
    upgrade_database(database_at(empty_db_url))
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    return empty_db_url


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No test reads the developer's .env, secrets or database by accident."""
    monkeypatch.chdir(tmp_path)
    for name in (
        "DATABASE_URL",
        "DATABASE_URL_FILE",
        "AUTOPACK_EXPECTED_DB_ID",
        "AUTOPACK_API_URL",
        "AUTOPACK_API_KEY",
        "GITHUB_TOKEN",
        "GITHUB_REPOSITORY",
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "AUTOPACK_LLM_PROVIDER",
        "TELEMETRY_DB_ENABLED",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUTOPACK_API_KEY_FILE", str(tmp_path / "api-key"))  # never the developer's key file


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for the whole session (it takes seconds to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
