"""Logging that never leaks a secret: every record and report passes through ``redact``."""

from __future__ import annotations

import logging
import re

from autopack.config import get_settings
from autopack.url_credentials import mask_url_credentials

_TOKEN_SHAPES = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,}|gh[pousr]_[A-Za-z0-9]{16,}|AIza[0-9A-Za-z_\-]{20,})\b")


def redact(text: str, secrets: list[str] | None = None) -> str:
    """Mask URL credentials, known secret values (from settings) and common API-key shapes."""
    if not text:
        return text
    if secrets is None:
        try:
            secrets = get_settings().secret_values()
        except Exception:  # redaction must never fail the caller
            secrets = []
    for secret in sorted(secrets, key=len, reverse=True):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = mask_url_credentials(text)
    return _TOKEN_SHAPES.sub("***", text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the rendered message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


def get_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger
