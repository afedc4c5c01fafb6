"""Errors a user can act on. Each carries the exit code the CLI uses and one line of advice."""

from __future__ import annotations


class AutopackError(Exception):
    """A failure with a clear message for the user; the CLI prints it as one line, no traceback."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None) -> None:
        # Masked once, here: the message also travels where no log filter sees it (Prefect state messages).
        from autopack.logging import redact

        message, hint = redact(message), redact(hint) if hint else hint
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def one_line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(AutopackError):
    """Bad settings: an unreadable URL, a missing token, an unknown provider."""


class DatabaseUrlError(ConfigError):
    """The database URL cannot be parsed or reached."""


class SchemaNotMigratedError(AutopackError):
    """The database exists but its schema is missing or behind the code."""


class EmptyDatabaseError(AutopackError):
    """The database has no runs and no phases: probably the wrong file or a fresh one."""


class DbIdentityMismatchError(AutopackError):
    """The database's id is not the one the caller expects (``AUTOPACK_EXPECTED_DB_ID``)."""

    exit_code = 3


class ForeignDatabaseError(AutopackError):
    """The database holds another application's tables: autopack neither reads nor adopts it (a wrong database)."""

    exit_code = 3


class InputError(AutopackError):
    """Malformed input: a phase spec, an import file, an unknown category."""


class RefusedError(AutopackError):
    """A command declined to act (exclusivity rule, telemetry disabled, existing run)."""


class ProviderError(AutopackError):
    """An LLM provider failed in a way retries did not fix."""


def validation_summary(exc: Exception, *, limit: int = 3) -> str:
    """One line from a pydantic ``ValidationError``: ``field: message`` for the first few errors.

    The offending *input* is never shown: it may be a secret (a key or URL in the wrong variable) or
    megabytes long.
    """
    errors = exc.errors() if hasattr(exc, "errors") else []
    parts = []
    for error in errors[:limit]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__") or "input"
        message = " ".join(str(error.get("msg", "invalid")).split()).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more if parts else " ".join(str(exc).split())[:300]
