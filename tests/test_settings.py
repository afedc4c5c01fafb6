"""Settings are read when asked for, never bound at import (the original's root cause, reference §10.1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from autopack.config import absolutize_sqlite_url, get_settings
from autopack.db.engine import get_engine
from autopack.db.handle import database_at
from autopack.db.migrate import upgrade_database


def test_database_url_set_after_import_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import autopack.database  # noqa: F401 - imported before the variable is set, on purpose

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'late.db'}")
    assert get_settings().resolved_database_url().endswith("/late.db")


def test_two_urls_in_one_process_reach_two_databases(tmp_path: Path) -> None:
    first, second = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    upgrade_database(database_at(first))
    upgrade_database(database_at(second))
    with get_engine(first).begin() as connection:
        connection.execute(sa.text("INSERT INTO runs (id, state) VALUES ('only-in-a', 'QUEUED')"))
    with get_engine(second).connect() as connection:
        assert connection.execute(sa.text("SELECT COUNT(*) FROM runs")).scalar_one() == 0
    with get_engine(first).connect() as connection:
        assert connection.execute(sa.text("SELECT COUNT(*) FROM runs")).scalar_one() == 1


def test_default_database_is_an_absolute_sqlite_file_in_the_current_directory(tmp_path: Path) -> None:
    assert get_settings().resolved_database_url() == f"sqlite:///{tmp_path.resolve() / 'autopack.db'}"


def test_relative_sqlite_path_is_made_absolute_once(tmp_path: Path) -> None:
    assert absolutize_sqlite_url("sqlite:///data/x.db") == f"sqlite:///{tmp_path.resolve() / 'data/x.db'}"
    assert absolutize_sqlite_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_dotenv_never_overrides_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=sqlite:///from_dotenv.db\nAUTOPACK_LLM_MODEL=dotenv-model\n")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///from_env.db")
    settings = get_settings()
    assert settings.resolved_database_url().endswith("/from_env.db")
    assert settings.llm_model == "dotenv-model"


def test_database_url_file_takes_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "url.txt").write_text("sqlite:///from_file.db\n")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///from_env.db")
    monkeypatch.setenv("DATABASE_URL_FILE", str(tmp_path / "url.txt"))
    assert get_settings().resolved_database_url().endswith("/from_file.db")


def test_importing_the_package_touches_no_database(tmp_path: Path) -> None:
    code = "import autopack.cli, autopack.database, autopack.models, autopack.token_estimator; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
    assert not list(tmp_path.glob("*.db*"))


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("0", False), ("no", False), ("", False)])
def test_telemetry_flag_parsing(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("TELEMETRY_DB_ENABLED", value)
    assert get_settings().telemetry_db_enabled is expected


def test_telemetry_is_on_by_default() -> None:
    assert get_settings().telemetry_db_enabled is True


# --- the cache: cheap, and never stale --------------------------------------------------------------


def test_settings_are_built_once_per_environment() -> None:
    assert get_settings() is get_settings()


def test_a_variable_set_after_a_call_is_seen_without_clearing_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_settings().llm_model is None
    monkeypatch.setenv("AUTOPACK_LLM_MODEL", "model-a")
    assert get_settings().llm_model == "model-a"
    monkeypatch.setenv("AUTOPACK_LLM_MODEL", "model-b")
    assert get_settings().llm_model == "model-b"
    monkeypatch.delenv("AUTOPACK_LLM_MODEL")
    assert get_settings().llm_model is None


def test_a_lower_case_variable_counts_like_the_settings_read_it(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings()
    monkeypatch.setenv("autopack_llm_model", "lower")
    assert get_settings().llm_model == "lower"


def test_an_edited_dotenv_is_seen(tmp_path: Path) -> None:
    assert get_settings().llm_model is None
    (tmp_path / ".env").write_text("AUTOPACK_LLM_MODEL=first\n")
    assert get_settings().llm_model == "first"
    (tmp_path / ".env").write_text("AUTOPACK_LLM_MODEL=second-longer\n")
    assert get_settings().llm_model == "second-longer"
    (tmp_path / ".env").unlink()
    assert get_settings().llm_model is None


def test_changing_directory_changes_the_default_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = get_settings().resolved_database_url()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert get_settings().resolved_database_url() != first
    assert get_settings().resolved_database_url().endswith("/elsewhere/autopack.db")


def test_secrets_follow_a_rewritten_database_url_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url_file = tmp_path / "url.txt"
    url_file.write_text("postgresql://u:first-password@127.0.0.1/db\n")
    monkeypatch.setenv("DATABASE_URL_FILE", str(url_file))
    assert "first-password" in get_settings().secret_values()
    url_file.write_text("postgresql://u:second-password-rotated@127.0.0.1/db\n")
    secrets = get_settings().secret_values()
    assert "second-password-rotated" in secrets and "first-password" not in secrets


def test_log_lines_redact_a_key_set_after_the_logger_was_made(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from autopack.logging import get_logger

    log = get_logger("autopack.test_settings")
    log.warning("before: %s", "nothing secret")
    monkeypatch.setenv("OPENAI_API_KEY", "plain-key-value-1234")
    log.warning("leaked? %s", "plain-key-value-1234")
    assert "plain-key-value-1234" not in caplog.text and "leaked? ***" in caplog.text
