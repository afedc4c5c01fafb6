"""The API key file: generated once, private, never replaced, read by local clients; AUTOPACK_API_KEY wins."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from autopack.api_key_file import client_api_key, client_headers, key_file_path, server_api_key
from autopack.errors import ConfigError


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "xdg" / "autopack" / "api-key"
    monkeypatch.setenv("AUTOPACK_API_KEY_FILE", str(path))
    return path


def test_the_server_creates_the_key_once_and_the_client_reads_it(key_file: Path) -> None:
    assert client_api_key() is None and client_headers() == {}
    first = server_api_key()
    again = server_api_key()
    assert first.created and not again.created and first.value == again.value
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert client_headers() == {"X-API-Key": first.value}


def test_an_existing_key_file_is_used_as_it_is(key_file: Path) -> None:
    key_file.parent.mkdir(parents=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"operator-chosen-key\n")
    os.close(fd)
    key = server_api_key()
    assert (key.value, key.created, key.path) == ("operator-chosen-key", False, key_file)


def test_the_setting_wins_over_the_file(key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_API_KEY", "from-the-environment")
    assert server_api_key().value == client_api_key() == "from-the-environment"
    assert not key_file.exists()  # nothing is generated when a key is configured


def test_a_symlinked_or_empty_key_file_is_refused(key_file: Path, tmp_path: Path) -> None:
    key_file.parent.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    target.write_text("k")
    target.chmod(0o600)
    key_file.symlink_to(target)
    with pytest.raises(ConfigError, match="cannot be read"):
        server_api_key()
    key_file.unlink()
    key_file.touch(mode=0o600)
    with pytest.raises(ConfigError, match="is empty"):
        client_api_key()


def test_the_default_location_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AUTOPACK_API_KEY_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert key_file_path() == tmp_path / "cfg" / "autopack" / "api-key"


def test_the_key_is_masked_in_logs_once_read(key_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = server_api_key().value
    logging.getLogger("anything").warning("the key is %s", key)
    assert key not in caplog.text and "the key is ***" in caplog.text
