"""The ``autopack`` command line run in process, the way every CLI test calls it, and as a process interrupted
while it starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from autopack.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``autopack *args``; ``main`` always ends in ``SystemExit``."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


def interrupt_once_imported(command: Sequence[str], module: str, cwd: Path) -> tuple[int, list[str]]:
    """Start ``python -X importtime *command`` in ``cwd`` (on a SQLite file there), send SIGINT as soon as
    ``module`` has been imported; (exit code, the stderr lines that are not import times).

    ``-X importtime`` writes a line as each import completes: the signal is sent on an event the process
    reports, not after a guessed delay, and lands while the command line is still being imported.
    """
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{cwd / 'none.db'}"}
    proc = subprocess.Popen([sys.executable, "-X", "importtime", *command], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    other: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if not line.startswith("import time:"):
                other.append(line.rstrip("\n"))
            elif line.rsplit("|", 1)[-1].strip() == module:
                proc.send_signal(signal.SIGINT)
                break
        else:
            pytest.fail(f"{module} was never imported: {other}")
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    other += [line for line in rest.splitlines() if not line.startswith("import time:")]
    return proc.returncode, other
