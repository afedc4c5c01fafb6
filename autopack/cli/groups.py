"""The Typer app of ``autopack`` and of each subcommand group, all rendering their help the same way."""

from __future__ import annotations

from typing import Any

import typer

#: Docstrings are prose wrapped at the source's line length: in Markdown one newline is a space, where
#: Typer's "rich" mode would keep it as a line break in the middle of a sentence.
HELP_MARKUP = "markdown"


def command_group(help: str, **options: Any) -> typer.Typer:  # noqa: A002 - Typer's own name for it
    """A command group that shows its help when called without a command."""
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=HELP_MARKUP, **options)
