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
#: The exit code and line of a command stopped by SIGTERM (``stop_on_sigterm``).
TERMINATED_EXIT = 143
TERMINATED_LINE = "terminated (SIGTERM)"
_terminated = False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so that it stops a command as cleanly (transactions rolled back,
    phases given back, Prefect's temporary server stopped) instead of killing the process on the spot."""


def _raise_terminated(signum: int, frame: object) -> None:
    del signum, frame
    global _terminated
    _terminated = True
    raise Terminated()


def stop_on_sigterm() -> None:
    """From here on SIGTERM (a service manager's stop, a timeout) stops the command as Ctrl-C does."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def terminated() -> bool:
    """Whether the command was stopped by SIGTERM (``stop_on_sigterm``)."""
    return _terminated


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
