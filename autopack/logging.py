"""Logging that never leaks a secret: one masking rule, applied to every log record of the process.

``redact`` is the rule: credentials in any URL (``autopack.url_credentials``), every configured secret
value (``Settings.secret_values()``: provider keys, ``GITHUB_TOKEN``, ``AUTOPACK_API_KEY``, the passwords and
tokens inside every configured URL), values registered at run time (``add_secret``: the ``github-token``
Secret block's value, the API key file's key) and common API-key shapes.

``install_log_masking`` applies it where no handler can be missed: it wraps the *log record factory*, so a
record is masked as it is created, before any filter or handler sees it — autopack's loggers, Prefect's
(including the ``APILogHandler`` that ships flow-run logs to Prefect's database), httpx, urllib3, PyGithub,
SQLAlchemy, uvicorn, alike. Handler filters would not do: Prefect re-reads its logging configuration
(``dictConfig``) when it sets up, replacing the handlers and their filters; the record factory survives it.
It is installed when this module is imported, which every entry point does (CLI, API app, flows).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from autopack.config import get_settings
from autopack.url_credentials import mask_url_credentials

_TOKEN_SHAPES = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,}|gh[pousr]_[A-Za-z0-9]{16,}|AIza[0-9A-Za-z_\-]{20,})\b")
#: Shorter values are not masked: replacing every "abc" in every log line would garble it and hide nothing.
MIN_SECRET_CHARS = 4

_extra_secrets: set[str] = set()
_extra_lock = threading.Lock()
_inside = threading.local()
_reading_settings = threading.local()


def add_secret(value: str | None) -> None:
    """Mask ``value`` from now on in this process (a secret not in the settings: a Secret block, a key file)."""
    if value and len(value) >= MIN_SECRET_CHARS:
        with _extra_lock:
            _extra_secrets.add(value)


def known_secrets() -> list[str]:
    """Every secret value this process knows: the settings' and those registered with ``add_secret``."""
    configured: list[str] = []
    if not getattr(_reading_settings, "active", False):  # a malformed setting raises a ConfigError, which redacts
        _reading_settings.active = True
        try:
            configured = get_settings().secret_values()
        except Exception:  # redaction must never fail the caller
            pass
        finally:
            _reading_settings.active = False
    with _extra_lock:
        return configured + sorted(_extra_secrets)


_LINE_BREAKS = re.compile(r"[\t\n\r\x0b\x0c\x85\u2028\u2029]+")
#: Control characters (C0, DEL, C1), zero-width and bidirectional marks: shown escaped, never acted on by a terminal.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def one_line(text: str) -> str:
    """``text`` as one printable line: line breaks and tabs become a space, other control, zero-width and bidi
    characters are shown escaped (``\\x1b``). For text an outsider supplies (a check command and its output, a
    reason posted to the API) before it reaches a log line, a stored row or a terminal: it cannot forge a log
    line, retitle a terminal or reorder what a reviewer reads."""
    text = _LINE_BREAKS.sub(" ", text)
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def redact(text: str, secrets: list[str] | None = None) -> str:
    """Mask URL credentials, known secret values (from settings) and common API-key shapes."""
    if not text:
        return text
    if secrets is None:
        secrets = known_secrets()
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret and len(secret) >= MIN_SECRET_CHARS:
            text = text.replace(secret, "***")
    text = mask_url_credentials(text)
    return _TOKEN_SHAPES.sub("***", text)


def _redacted_arg(value: Any, secrets: list[str]) -> Any:
    """A logging argument with its secrets masked; kept as is (type and all) when it holds none."""
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = str(value)
    masked = redact(text, secrets)
    return value if masked == text else masked


def mask_record(record: logging.LogRecord) -> None:
    """Mask ``record`` in place: its message, arguments, traceback and stack text.

    Arguments are masked one by one so formatters that read ``record.args`` (uvicorn's access log) still
    work; if the message could still show a secret, it is replaced by its masked rendering.
    """
    if getattr(_inside, "active", False):  # a log call made while masking: already inside the rule
        return
    _inside.active = True
    try:
        secrets = known_secrets()
        try:
            message = record.getMessage()
        except Exception:  # a malformed call; logging reports it later, with the masked text below
            message = f"{record.msg!s} {record.args!r}"
            record.msg, record.args = redact(message, secrets), None
            return
        masked = redact(message, secrets)
        if masked != message:
            if isinstance(record.args, tuple):
                record.args = tuple(_redacted_arg(a, secrets) for a in record.args)
            elif isinstance(record.args, dict):
                record.args = {k: _redacted_arg(v, secrets) for k, v in record.args.items()}
            if isinstance(record.msg, str):
                record.msg = redact(record.msg, secrets)
            try:
                still = record.getMessage() != redact(record.getMessage(), secrets)
            except Exception:
                still = True
            if still:
                record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[0] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text, secrets)
        elif record.exc_text:
            record.exc_text = redact(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, secrets)
    finally:
        _inside.active = False


_installed_factory: Callable[..., logging.LogRecord] | None = None


def install_log_masking() -> None:
    """Mask every log record this process creates, whatever its logger or handler (idempotent)."""
    global _installed_factory
    current = logging.getLogRecordFactory()
    if current is _installed_factory:
        return

    def masking_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        mask_record(record)
        return record

    _installed_factory = masking_factory
    logging.setLogRecordFactory(masking_factory)


def get_logger(name: str) -> logging.Logger:
    """A logger of autopack's (every record is masked by the record factory installed below)."""
    return logging.getLogger(name)


install_log_masking()
