"""The ``autopack`` command line (typer). Each command group lives in its own module.

Importing this package is cheap on purpose: the console script (``run``) handles Ctrl-C before the
command line's own imports begin (``autopack.cli.console``). ``main`` is ``autopack.cli.app.main``,
imported when first asked for; the Typer app itself is ``autopack.cli.app.app``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autopack.cli.console import run

if TYPE_CHECKING:  # the type checker sees ``main``; at run time it is imported on first use (below)
    from autopack.cli.app import main

__all__ = ["main", "run"]


def __getattr__(name: str) -> object:
    if name == "main":
        from autopack.cli.app import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
