"""The Typer app of ``autopack`` and of each subcommand group, all rendering their help the same way.

Help is Click's plain layout, as wide as the terminal: it wraps every line and never cuts an option's
name or help with "…", where Rich's panels (Typer's default) cut whatever does not fit a narrow
terminal and showed ``<bool>`` after every flag. Docstrings are prose wrapped at the source's line
length; the plain layout joins the lines of a paragraph, so a sentence is never broken mid-line.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

#: No Rich markup: Click's own help layout (see the module docstring).
HELP_MARKUP = None
#: The help width when neither ``COLUMNS`` nor a terminal says (output piped or captured).
DEFAULT_HELP_WIDTH = 100


def help_width() -> int:
    """Columns for ``--help``: ``COLUMNS`` if set, else the terminal's (on stdout, stderr or stdin), else 100."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    for fd in (1, 2, 0):
        try:
            return os.get_terminal_size(fd).columns
        except OSError:
            continue
    return DEFAULT_HELP_WIDTH


class _TerminalWidthHelp:
    """Help laid out at ``help_width()`` (Click would stop at 80), with command summaries never shortened."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        formatter.width = max(help_width() - 2, 40)  # Click's own margin of 2
        super().format_help(ctx, formatter)  # type: ignore[misc]

    def get_short_help_str(self, limit: int = 45) -> str:
        del limit  # the summary line wraps in the command list; it is not cut to fit one line with "..."
        short: str = super().get_short_help_str(limit=10_000)  # type: ignore[misc]
        return short


class HelpCommand(_TerminalWidthHelp, TyperCommand):
    """Every ``autopack`` command (see ``command_group``)."""


class HelpGroup(_TerminalWidthHelp, TyperGroup):
    """Every ``autopack`` command group (see ``command_group``)."""


class CommandGroup(typer.Typer):
    """A Typer app whose commands are ``HelpCommand``s unless told otherwise."""

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or HelpCommand, **kwargs)


def command_group(help: str, **options: Any) -> typer.Typer:  # noqa: A002 - Typer's own name for it
    """A command group that shows its help when called without a command."""
    return CommandGroup(help=help, no_args_is_help=True, rich_markup_mode=HELP_MARKUP, cls=HelpGroup, **options)
