"""What each of the original's script names in ``scripts/`` does: run ``autopack <command> <its arguments>``.

The ``autopack`` package comes from this checkout (the folder above ``scripts/``), never from whatever autopack
is installed in the interpreter's environment: a script of a newer checkout runs that checkout's code. An
interpreter without autopack's dependencies gets one line saying which interpreter to use, not a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*command: str) -> None:
    """``autopack *command *sys.argv[1:]``, run as the ``autopack`` console script runs (Ctrl-C while it starts is
    one line too; every failure one line and an exit code)."""
    if str(ROOT) not in sys.path[:1]:
        sys.path.insert(0, str(ROOT))
    sys.argv[1:] = [*command, *sys.argv[1:]]
    try:
        from autopack.cli import run as autopack  # the standard library only: autopack.cli.console

        autopack()  # its first import is the command line's own: typer, pydantic, SQLAlchemy
    except ImportError as exc:  # before the command line started (``main`` turns any later error into one line)
        venv_python = ROOT / ".venv" / "bin" / "python"
        print(f"error: {sys.executable} cannot run autopack from {ROOT}: {exc} (install it with `bash "
              f"{ROOT / 'scripts' / 'install.sh'}`, then run this script with {venv_python})", file=sys.stderr)
        sys.exit(2)
