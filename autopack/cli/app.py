"""Root of the CLI: registers the command groups and turns errors into one line and an exit code."""

from __future__ import annotations

import importlib
import sys

import click
import typer

from autopack.errors import AutopackError
from autopack.logging import redact

app = typer.Typer(
    name="autopack",
    help="Token telemetry for LLM agent phases, calibrated into max_tokens budgets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        result = load_commands(argv)(args=argv, standalone_mode=False, prog_name="autopack")
    except AutopackError as exc:
        fail(exc.one_line(), exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)
