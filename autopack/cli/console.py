"""The ``autopack`` console script: Ctrl-C is answered from its first instruction.

Importing the command line takes most of a second (typer, pydantic, SQLAlchemy), and Python's own
Ctrl-C handling raises ``KeyboardInterrupt`` wherever an import happens to be: a traceback. Until a
command starts nothing has been read or written, so an interrupt there ends the process at once: one
line, exit 130 (128 + SIGINT, what a shell reports for an interrupted command). From the start of the
command (``command_starts``) Ctrl-C is a ``KeyboardInterrupt`` again, so that transactions roll back
and ``main`` reports it the same way.

This module imports only the standard library, and ``autopack.cli`` imports only this module.
"""

from __future__ import annotations

import os
import signal

#: The exit code of an interrupted command (128 + SIGINT).
INTERRUPTED_EXIT = 130
INTERRUPTED_LINE = "interrupted"


def _interrupted_before_start(signum: int, frame: object) -> None:
    del signum, frame
    os.write(2, f"{INTERRUPTED_LINE}\n".encode())
    os._exit(INTERRUPTED_EXIT)


def command_starts() -> None:
    """From here on Ctrl-C raises ``KeyboardInterrupt`` (a no-op unless ``run`` set the early handler)."""
    if signal.getsignal(signal.SIGINT) is _interrupted_before_start:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run() -> None:
    """The ``autopack`` console script (``autopack.cli:run``)."""
    signal.signal(signal.SIGINT, _interrupted_before_start)
    from autopack.cli.app import run as run_command_line

    run_command_line()
