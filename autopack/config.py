"""The one settings object.

Read when asked for (``get_settings()``), never at import time: the original bound its engine when a
module was imported, so a ``DATABASE_URL`` set later was silently ignored (reference §10.1).
A ``.env`` file in the current directory is read, but a variable already set in the environment wins.

``get_settings()`` is cached, but never stale: the cache key is everything the settings are built from
(the values of the environment variables the fields read, the current directory, and the identity and
modification time of ``.env`` and of ``DATABASE_URL_FILE``). Setting a variable, changing directory or
editing ``.env`` gives a new object on the next call; nothing has to clear the cache.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from autopack.errors import ConfigError, DatabaseUrlError, validation_summary
from autopack.params import DEFAULT_PROVIDER_CONCURRENCY, ProviderSlots
from autopack.token_estimator import MAX_EXPLORATION_SHARE

DEFAULT_SQLITE_FILE = "autopack.db"

ProviderName = Literal["simulated", "anthropic", "openai", "gemini"]


class Settings(BaseSettings):
    """Every knob of autopack, from the environment (or ``.env``), with safe defaults."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # --- database -------------------------------------------------------------------------------
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    database_url_file: Path | None = Field(default=None, validation_alias="DATABASE_URL_FILE")
    expected_db_id: str | None = Field(default=None, validation_alias="AUTOPACK_EXPECTED_DB_ID")

    # --- telemetry ------------------------------------------------------------------------------
    # On by default (the original defaulted to off and silently wrote nothing: its most common trouble).
    telemetry_db_enabled: bool = Field(default=True, validation_alias="TELEMETRY_DB_ENABLED")

    # --- API server -----------------------------------------------------------------------------
    api_url: str | None = Field(default=None, validation_alias="AUTOPACK_API_URL")
    api_key: SecretStr | None = Field(default=None, validation_alias="AUTOPACK_API_KEY")
    # A check command is code run on every drain worker: off for runs posted to the API unless allowed here
    # (on the API server, to accept them, and on each worker, to run them).
    api_allow_check_commands: bool = Field(default=False, validation_alias="AUTOPACK_API_ALLOW_CHECK_COMMANDS")
    api_max_body_bytes: int = Field(default=1_048_576, ge=1, validation_alias="AUTOPACK_API_MAX_BODY_BYTES")
    # Where the API key lives when AUTOPACK_API_KEY is not set (autopack.api_key_file; default ~/.config/autopack/api-key).
    api_key_file: Path | None = Field(default=None, validation_alias="AUTOPACK_API_KEY_FILE")

    # --- LLM providers --------------------------------------------------------------------------
    llm_provider: ProviderName = Field(default="simulated", validation_alias="AUTOPACK_LLM_PROVIDER")
    llm_model: str | None = Field(default=None, validation_alias="AUTOPACK_LLM_MODEL")
    llm_base_url: str | None = Field(default=None, validation_alias="AUTOPACK_LLM_BASE_URL")
    llm_timeout_seconds: float = Field(default=600.0, gt=0, validation_alias="AUTOPACK_LLM_TIMEOUT_SECONDS")
    llm_max_retries: int = Field(default=4, ge=0, validation_alias="AUTOPACK_LLM_MAX_RETRIES")
    simulated_seed: int = Field(default=1234, validation_alias="AUTOPACK_SIM_SEED")
    simulated_latency_seconds: float = Field(default=0.0, ge=0, validation_alias="AUTOPACK_SIM_LATENCY_SECONDS")
    anthropic_api_key: SecretStr | None = Field(default=None, validation_alias="ANTHROPIC_API_KEY")
    openai_api_key: SecretStr | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    gemini_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("GEMINI_API_KEY", "GOOGLE_API_KEY")
    )

    # --- execution ------------------------------------------------------------------------------
    #: Provider calls in flight at once across every drain on every host sharing this database (the provider
    #: gate, a lease on a ``provider_slots`` row); 0 switches the gate off. Raise it to your rate limit.
    provider_concurrency: ProviderSlots = Field(default=DEFAULT_PROVIDER_CONCURRENCY,
                                                validation_alias="AUTOPACK_PROVIDER_CONCURRENCY")
    workspace_dir: Path = Field(default=Path(".autopack/workspaces"), validation_alias="AUTOPACK_WORKSPACE_DIR")
    # Extra environment variables a check command may see (comma-separated names), beyond PATH, HOME, LANG, ...
    check_command_env: str = Field(default="", validation_alias="AUTOPACK_CHECK_COMMAND_ENV")
    # Where check commands run: "bwrap" (a bubblewrap sandbox, refused when it cannot start) or "none"
    # (unsandboxed: the command can read this worker's secrets; the operator accepts the risk).
    check_sandbox: Literal["bwrap", "none"] = Field(default="bwrap", validation_alias="AUTOPACK_CHECK_SANDBOX")
    # The bubblewrap executable (a name looked up on PATH, or a path).
    check_sandbox_bwrap: str = Field(default="bwrap", validation_alias="AUTOPACK_CHECK_SANDBOX_BWRAP")
    # Extra host paths (comma-separated) a sandboxed check may read, e.g. a toolchain under /opt.
    check_sandbox_bind: str = Field(default="", validation_alias="AUTOPACK_CHECK_SANDBOX_BIND")
    # Resource limits of a check command, set on it before it starts (autopack.execution.sandbox.Limits): each of
    # its processes gets this much address space, CPU time, size of any one file it writes and open files; each
    # tmpfs of the sandbox (/tmp, /var/tmp, $HOME, /dev/shm) holds at most AUTOPACK_CHECK_TMP_MIB. The CPU limit
    # sits a little above the 300 s timeout, so a single busy process meets the timeout and a multi-threaded one
    # the CPU limit. The upper bounds only refuse nonsense (a value in bytes where MiB are meant).
    check_memory_mib: int = Field(default=2048, gt=0, le=1 << 20, validation_alias="AUTOPACK_CHECK_MEMORY_MIB")
    check_cpu_seconds: int = Field(default=330, gt=0, le=7 * 86400, validation_alias="AUTOPACK_CHECK_CPU_SECONDS")
    check_file_size_mib: int = Field(default=256, gt=0, le=1 << 20, validation_alias="AUTOPACK_CHECK_FILE_SIZE_MIB")
    check_open_files: int = Field(default=1024, ge=16, le=1 << 20, validation_alias="AUTOPACK_CHECK_OPEN_FILES")
    check_tmp_mib: int = Field(default=256, gt=0, le=1 << 20, validation_alias="AUTOPACK_CHECK_TMP_MIB")
    # Exploration (opt-in; 0 = off): this share of first attempts (at most MAX_EXPLORATION_SHARE) is sent at the escalation ceiling, so
    # a heavily cut group's long outputs reach the calibration uncensored; chosen per call from the seed, run,
    # phase and attempt (token_estimator.Exploration). Measured in docs/closed-loop.md before any default.
    explore_share: float = Field(default=0.0, ge=0.0, le=MAX_EXPLORATION_SHARE, validation_alias="AUTOPACK_EXPLORE_SHARE")
    explore_seed: int = Field(default=0, validation_alias="AUTOPACK_EXPLORE_SEED")

    # --- GitHub ---------------------------------------------------------------------------------
    github_token: SecretStr | None = Field(default=None, validation_alias="GITHUB_TOKEN")
    github_repository: str | None = Field(default=None, validation_alias="GITHUB_REPOSITORY")
    github_base_url: str | None = Field(default=None, validation_alias="GITHUB_API_URL")
    github_base_branch: str | None = Field(default=None, validation_alias="GITHUB_BASE_BRANCH")

    _secrets: list[str] | None = PrivateAttr(default=None)

    @field_validator("telemetry_db_enabled", mode="before")
    @classmethod
    def _truthy(cls, value: object) -> object:
        if isinstance(value, str):
            word = value.strip().lower()
            if word in {"", "0", "false", "no", "off", "f", "n"}:
                return False
            if word in {"1", "true", "yes", "on", "t", "y"}:
                return True
            raise ValueError("expected 1/0, true/false, yes/no or on/off")
        return value

    def resolved_database_url(self) -> str:
        """The database URL with relative SQLite paths made absolute (against the current directory).

        Precedence as in the original: ``DATABASE_URL_FILE`` → ``DATABASE_URL`` → a SQLite file in the
        current directory. Resolving once, here, is what lets a parent hand the exact same database to
        every subprocess.
        """
        raw = self.database_url
        source = "DATABASE_URL"
        if self.database_url_file is not None:
            raw = read_database_url_file(Path(self.database_url_file))
            source = f"DATABASE_URL_FILE {self.database_url_file}"
        if not raw:
            raw = f"sqlite:///{DEFAULT_SQLITE_FILE}"
        if is_in_memory_sqlite(raw):
            raise DatabaseUrlError(
                f"{source} names an in-memory SQLite database ({raw.strip()}), which does not outlive the command",
                hint="use a file path, e.g. sqlite:///autopack.db",
            )
        return absolutize_sqlite_url(raw)

    def secret_values(self) -> list[str]:
        """Every secret this process knows, so log and report writers can redact them (keys, tokens, and
        the credentials inside every configured URL: passwords, token user names, ``?password=``…).

        Computed once per settings object (the log filter asks on every line); a changed environment or
        ``DATABASE_URL_FILE`` yields a new settings object from ``get_settings``, so this is never stale.
        """
        if self._secrets is None:
            self._secrets = self._collect_secrets()
        return list(self._secrets)

    def _collect_secrets(self) -> list[str]:
        secrets = [
            s.get_secret_value()
            for s in (self.api_key, self.anthropic_api_key, self.openai_api_key, self.gemini_api_key, self.github_token)
            if s is not None and s.get_secret_value()
        ]
        from autopack.url_credentials import url_credentials

        try:
            database_url = self.resolved_database_url()
        except Exception:  # an unreadable DATABASE_URL_FILE: no URL, so no credential in it
            database_url = ""
        for url in (database_url, self.api_url, self.llm_base_url, self.github_base_url):
            secrets += url_credentials(url or "")
        return secrets


_cache_lock = threading.Lock()
_cached: tuple[object, Settings] | None = None
_env_names: frozenset[str] | None = None


def _setting_env_names() -> frozenset[str]:
    """Lower-cased names of every environment variable a field can be read from (aliases and field names)."""
    global _env_names
    if _env_names is None:
        names: set[str] = set()
        for name, info in Settings.model_fields.items():
            names.add(name.lower())
            alias = info.validation_alias
            choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if alias else []
            names.update(str(choice).lower() for choice in choices if isinstance(choice, str))
        _env_names = frozenset(names)
    return _env_names


def _file_identity(path: str | os.PathLike[str] | None) -> tuple[int, int, int, int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _settings_key() -> tuple[object, ...]:
    """Everything ``Settings()`` reads: relevant environment values, cwd, ``.env`` and the URL file."""
    names = _setting_env_names()
    env = tuple(sorted((k.lower(), v) for k, v in os.environ.items() if k.lower() in names))
    url_file = next((v for k, v in env if k == "database_url_file"), None)
    return (env, os.getcwd(), _file_identity(".env"), _file_identity(url_file))


def get_settings(**overrides: object) -> Settings:
    """The settings for the current environment, built once per distinct environment (see the module doc).

    With ``overrides`` a fresh object is built and not cached. Treat the returned object as read-only: it
    is shared by every caller that sees the same environment. A malformed value
    (``TELEMETRY_DB_ENABLED=garbage``) is a ``ConfigError`` naming the variable, and is never cached.
    """
    global _cached
    if overrides:
        return _build_settings(**overrides)
    key = _settings_key()
    cached = _cached
    if cached is not None and cached[0] == key:
        return cached[1]
    settings = _build_settings()
    if _settings_key() == key:  # unchanged while it was built (another thread may set variables)
        with _cache_lock:
            _cached = (key, settings)
    return settings


def clear_settings_cache() -> None:
    """Forget the cached settings (never needed for correctness; for tests that want a cold start)."""
    global _cached
    with _cache_lock:
        _cached = None


def _build_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(f"invalid setting: {validation_summary(exc)}",
                          hint="fix the environment variable (or .env) it names") from exc
    except UnicodeDecodeError as exc:  # the one file Settings() decodes is .env
        raise _undecodable_env_file(exc) from exc


def _undecodable_env_file(exc: UnicodeDecodeError) -> ConfigError:
    """One line naming ``.env`` and where its first byte that is not UTF-8 sits (offset and line)."""
    path = Path(".env").absolute()
    offset, data = exc.start, b""
    try:
        data = path.read_bytes()
        data.decode("utf-8")
    except UnicodeDecodeError as again:
        offset = again.start
    except OSError:
        pass
    line = data.count(b"\n", 0, offset) + 1
    where = f"byte {offset}" + (f" (line {line})" if data else "")
    return ConfigError(f"{path} is not UTF-8 text: {where} cannot be decoded",
                       hint="save it as UTF-8, or move it away: autopack reads the .env of the current directory")


def read_database_url_file(path: Path) -> str:
    """The URL inside ``DATABASE_URL_FILE``; unreadable or empty is an error, never a silent default."""
    try:
        raw = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"DATABASE_URL_FILE {path} cannot be read: {getattr(exc, 'strerror', None) or exc}",
                          hint="point DATABASE_URL_FILE at a file holding the database URL, or unset it") from exc
    if not raw:
        raise ConfigError(f"DATABASE_URL_FILE {path} is empty",
                          hint="write the database URL into it, or unset DATABASE_URL_FILE")
    return raw


def is_in_memory_sqlite(url: str) -> bool:
    """``sqlite://``, ``sqlite:///:memory:``, ``sqlite:///file::memory:?uri=true``, ``…?mode=memory``: a database
    that lives in one connection of one process. Fine for a library's own engine; never as the settings'
    database, which every command (and every worker) opens anew."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or not scheme.lower().startswith("sqlite"):
        return False
    path, _, query = rest.removeprefix("/").partition("?")
    if path in ("", ":memory:"):
        return True
    return path.startswith("file:") and (path.startswith("file::memory:") or "mode=memory" in query)


def absolutize_sqlite_url(url: str) -> str:
    """``sqlite:///rel.db`` → ``sqlite:////abs/cwd/rel.db``; every other URL is returned unchanged."""
    prefix_end = url.find(":///")
    if prefix_end < 0 or not url[:prefix_end].startswith("sqlite"):
        return url
    head, path_and_query = url[: prefix_end + 4], url[prefix_end + 4 :]
    path, sep, query = path_and_query.partition("?")
    if not path or path == ":memory:" or path.startswith("file:"):
        return url
    absolute = Path(path).expanduser()
    if not absolute.is_absolute():
        absolute = Path.cwd() / absolute
    return f"{head}{absolute.resolve(strict=False)}{sep}{query}"
