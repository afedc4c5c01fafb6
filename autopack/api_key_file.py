"""The API key when ``AUTOPACK_API_KEY`` is not set: one generated file only its owner can read.

The model is a notebook server's token. The API server (``autopack api serve``, or the app started by any
ASGI server) uses ``AUTOPACK_API_KEY`` if set; otherwise it reads the key file, creating it on first start
(``AUTOPACK_API_KEY_FILE``, default ``$XDG_CONFIG_HOME/autopack/api-key``, i.e. ``~/.config/autopack/api-key``;
mode 0600 in a 0700 directory). Clients on the same machine (the CLI, drain workers) read the same file when
they have no ``AUTOPACK_API_KEY``; a client elsewhere is given the key by setting ``AUTOPACK_API_KEY``.

A key file that another user owns, or that group or others may read or write, is refused: its key is not
a secret any more (or was planted).
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from autopack.config import Settings, get_settings
from autopack.errors import ConfigError
from autopack.logging import add_secret

HEADER = "X-API-Key"
SETTING = "AUTOPACK_API_KEY_FILE"
KEY_HINT = (f"send the key as {HEADER}: set AUTOPACK_API_KEY to the server's key (on the server's machine, "
            f"clients read the key file `autopack api serve` names, {SETTING})")
_KEY_BYTES = 32


@dataclass(frozen=True)
class ApiKey:
    """The key and where it came from: a setting (``origin``) or the key file ``path``, ``created`` just now."""

    value: str
    path: Path | None = None
    created: bool = False
    origin: str = "AUTOPACK_API_KEY"

    def source(self) -> str:
        if self.path is None:
            return self.origin
        return f"the key file {self.path}" + (" (created now)" if self.created else "")


def default_key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "autopack" / "api-key"


def key_file_path(settings: Settings | None = None) -> Path:
    configured = (settings or get_settings()).api_key_file
    return Path(configured).expanduser() if configured else default_key_file()


def _configured_key(settings: Settings) -> str | None:
    key = settings.api_key.get_secret_value().strip() if settings.api_key is not None else ""
    return key or None


def read_key_file(path: Path) -> str | None:
    """The key in ``path`` (None if there is no such file); refused unless only its owner can use it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"the API key file {path} cannot be read: {exc.strerror}",
                          hint=f"fix its permissions, or set AUTOPACK_API_KEY or {SETTING}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise ConfigError(
                f"the API key file {path} is not a private file of this user (mode {stat.filemode(info.st_mode)})",
                hint=f"delete it (a new key is generated) or `chmod 600 {path}` if it is yours",
            )
        key = os.read(fd, 4096).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    if not key:
        raise ConfigError(f"the API key file {path} is empty", hint="delete it: the API server writes a new key")
    add_secret(key)
    return key


def _create_key_file(path: Path) -> bool:
    """Write a fresh key to ``path`` unless one appeared meanwhile (another server starting): True if written."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_urlsafe(_KEY_BYTES)
    add_secret(key)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, f"{key}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)  # never replaces a key another process wrote first
        return True
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)


def server_api_key(settings: Settings | None = None) -> ApiKey:
    """The key an API server requires: ``AUTOPACK_API_KEY``, else the key file (generated if missing)."""
    settings = settings or get_settings()
    configured = _configured_key(settings)
    if configured is not None:
        return ApiKey(configured)
    path = key_file_path(settings)
    key = read_key_file(path)
    if key is not None:
        return ApiKey(key, path)
    try:
        created = _create_key_file(path)
    except OSError as exc:
        raise ConfigError(f"cannot write the API key file {path}: {exc.strerror}",
                          hint=f"set AUTOPACK_API_KEY, or point {SETTING} at a writable place") from exc
    key = read_key_file(path)
    assert key is not None  # just written (by us or by a server starting at the same time)
    return ApiKey(key, path, created=created)


def client_api_key(settings: Settings | None = None) -> str | None:
    """The key a client sends: ``AUTOPACK_API_KEY``, else the key file if this machine has one, else None."""
    settings = settings or get_settings()
    return _configured_key(settings) or read_key_file(key_file_path(settings))


def client_headers(settings: Settings | None = None) -> dict[str, str]:
    """Headers that authenticate a client to the API (none when no key is known here)."""
    key = client_api_key(settings)
    return {HEADER: key} if key else {}
