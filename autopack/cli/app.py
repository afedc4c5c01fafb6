"""Root of the CLI: registers the command groups and turns errors into one line and an exit code."""

from __future__ import annotations

import gc
import importlib
import os
import sys

import click
import typer

from autopack.cli.console import (
    INTERRUPTED_EXIT,
    INTERRUPTED_LINE,
    TERMINATED_EXIT,
    TERMINATED_LINE,
    command_starts,
    terminated,
)
from autopack.cli.groups import command_group
from autopack.errors import AutopackError
from autopack.logging import redact

app = command_group(
    "Token telemetry for LLM agent phases, calibrated into max_tokens budgets.",
    name="autopack",
    pretty_exceptions_enable=False,
    add_completion=False,
    # -h as well: the original's scripts were argparse programs, and their users type `-h` (every command inherits it)
    context_settings={"help_option_names": ["-h", "--help"]},
)

@app.callback()
def _root() -> None:
    """Keeps ``autopack`` a command group even when only one command module is loaded (see ``load_commands``)."""


#: Top-level command → the modules under autopack.cli that define it (each has ``register(app)``).
COMMANDS: dict[str, tuple[str, ...]] = {
    "db": ("db",),
    "calibrate": ("calibrate",),
    "telemetry": ("telemetry",),
    "analyze": ("analyze",),
    "api": ("api",),
    "runs": ("runs",),
    "drain": ("drain", "drain_batch"),
    "pipeline": ("pipeline",),
}
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(m for modules in COMMANDS.values() for m in modules))
_registered: set[str] = set()


def load_commands(argv: list[str] | None = None) -> typer.Typer:
    """Register the command modules ``argv`` needs (all of them for help or an unknown command).

    Lazy on purpose: a command pays for its own imports only (``drain`` brings the executor, ``calibrate``
    numpy and scipy once it runs), not for every other command's.
    """
    args = sys.argv[1:] if argv is None else argv
    name = next((arg for arg in args if not arg.startswith("-")), None)
    for module in COMMANDS.get(name or "", COMMAND_MODULES):
        if module not in _registered:
            importlib.import_module(f"autopack.cli.{module}").register(app)
            _registered.add(module)
    return app


def fail(message: str, code: int = 2) -> None:
    """Print one clear line to stderr and exit with ``code``."""
    click.echo(f"error: {' '.join(redact(message).split())}", err=True)
    sys.exit(code)


# typer >= 0.20 vendors click (``typer._click``); older typer uses click itself. Accept both.
_CLICK_ERRORS: tuple[type[Exception], ...] = (click.ClickException, typer.exceptions.TyperException)
_EXITS: tuple[type[click.exceptions.Exit] | type[typer.Exit], ...] = (click.exceptions.Exit, typer.Exit)
_ABORTS: tuple[type[BaseException], ...] = (click.exceptions.Abort, typer.Abort, KeyboardInterrupt)


def usage_line(exc: Exception) -> str:
    """One line for a command-line usage error: what was wrong, and where to read how it is used."""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    where = f"autopack {' '.join(ctx.command_path.split()[1:])}".strip() if ctx is not None else "autopack"
    return f"{message.rstrip('.')} (see `{where} --help`)"


def describe_unexpected(exc: BaseException) -> tuple[str, int]:
    """One line and an exit code for an error no command turned into an ``AutopackError``."""
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    from autopack.errors import validation_summary

    if isinstance(exc, ValidationError):
        return f"invalid input: {validation_summary(exc)}", 2
    if isinstance(exc, (SQLAlchemyError, *_driver_errors())):  # the driver's own too: fast paths read raw
        detail = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
        return (f"database error: {type(getattr(exc, 'orig', None) or exc).__name__}: {detail} "
                "(check DATABASE_URL with `autopack db identity`)"), 2
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot access{where}: {exc.strerror or exc}", 2
    return (f"unexpected {type(exc).__name__}: {exc} (a bug in autopack: please report it; "
            f"{TRACEBACK_ENV}=1 shows the traceback)"), 1


def _driver_errors() -> tuple[type[Exception], ...]:
    """The DB-API base errors of the drivers in use (PEP 249 ``Error``), as SQLAlchemy would wrap them."""
    import sqlite3

    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error,) + ((psycopg.Error,) if psycopg is not None else ())


#: Set to 1 to let an unexpected error print its traceback instead of one line.
TRACEBACK_ENV = "AUTOPACK_TRACEBACK"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: every failure ends as one line on stderr and a non-zero exit code."""
    try:
        command_line = load_commands(argv)
        command_starts()
        result = command_line(args=argv, standalone_mode=False, prog_name="autopack")
    except AutopackError as exc:
        fail(exc.one_line(), exc.exit_code)
    except _EXITS as exc:
        sys.exit(exc.exit_code)
    except _ABORTS:
        stopped()
    except _CLICK_ERRORS as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `autopack drain` alone: the help is the answer
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        fail(usage_line(exc) if hasattr(exc, "ctx") else exc.format_message(),  # type: ignore[attr-defined]
             getattr(exc, "exit_code", 2))
    except Exception as exc:  # noqa: BLE001 - the last line of defence against a traceback
        if os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
            raise
        message, code = describe_unexpected(exc)
        fail(message, code)
    if result == INTERRUPTED_EXIT:  # typer turns Ctrl-C (or SIGTERM) inside a command into this return value, silently
        stopped()
    sys.exit(result if isinstance(result, int) else 0)


def stopped() -> None:
    """Ctrl-C or SIGTERM stopped the command: one line, and 130 or 143."""
    if terminated():
        click.echo(TERMINATED_LINE, err=True)
        sys.exit(TERMINATED_EXIT)
    click.echo(INTERRUPTED_LINE, err=True)
    sys.exit(INTERRUPTED_EXIT)


def run() -> None:
    """What the console script (``autopack.cli.console.run``) runs: ``main``, then an exit that does not walk the heap.

    At interpreter exit CPython's cyclic GC passes over every object still alive (after a calibration
    of 10⁶ events about 0.5 s, a tenth of the command). Nothing of ours needs a cycle collected at exit
    (files are closed where they are written; atexit handlers, such as logging's flush, still run), so
    the heap is frozen first. ``main`` itself is unchanged for callers in a long-lived process.
    """
    try:
        main()
    finally:
        gc.disable()
        gc.freeze()
