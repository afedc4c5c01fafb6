"""Counting how often a real code path ran by the debug record it emits (nothing is mocked)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _Matching(logging.Handler):
    """Keeps the messages of the records that start with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__(logging.DEBUG)
        self.prefix = prefix
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.messages.append(record.getMessage())


@contextmanager
def records_starting_with(logger_name: str, prefix: str) -> Iterator[list[str]]:
    """The messages ``logger_name`` logs (at DEBUG too) that start with ``prefix``, while the block runs."""
    logger = logging.getLogger(logger_name)
    handler, level = _Matching(prefix), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
