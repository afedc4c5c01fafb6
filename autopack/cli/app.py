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

#: Command-group modules under autopack.cli; each defines ``register(app)``.
COMMAND_MODULES: tuple[str, ...] = (
    "db",
    "calibrate",
    "telemetry",
    "analyze",
    "api",
    "runs",
    "drain",
    "drain_batch",
    "pipeline",
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"autopack.cli.{_name}").register(app)


def fail(message: str, code: int = 2) -> None:
    """Print one clear line to stderr and exit with ``code``."""
    click.echo(f"error: {' '.join(redact(message).split())}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        result = app(args=argv, standalone_mode=False, prog_name="autopack")
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
