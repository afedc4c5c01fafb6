"""The ``autopack`` command line (typer). Each command group lives in its own module."""

from autopack.cli.app import app, main, run

__all__ = ["app", "main", "run"]
