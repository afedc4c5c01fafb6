"""The ``autopack`` command line run in process, the way every CLI test calls it."""

from __future__ import annotations

import pytest

from autopack.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``autopack *args``; ``main`` always ends in ``SystemExit``."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err
