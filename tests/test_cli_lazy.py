"""The CLI imports only what the command it runs needs."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = ("import sys; from autopack.cli.app import load_commands; load_commands({args!r}); "
         "print(sorted(m for m in {modules!r} if m in sys.modules))")
HEAVY = ["autopack.execution.drain_one", "autopack.calibration.runner", "autopack.cli.pipeline", "scipy"]


def loaded(args: list[str]) -> list[str]:
    code = PROBE.format(args=args, modules=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return eval(out.stdout)  # noqa: S307 - our own printed list


@pytest.mark.parametrize("args", [["db", "identity"], ["telemetry", "import", "x.csv"], ["calibrate", "--help"]])
def test_a_command_does_not_import_the_others(args: list[str]) -> None:
    assert loaded(args) == []


def test_drain_loads_its_own_modules_and_help_loads_all() -> None:
    assert "autopack.execution.drain_one" in loaded(["drain", "one", "--help"])
    assert {"autopack.execution.drain_one", "autopack.cli.pipeline"} <= set(loaded(["--help"]))


@pytest.mark.parametrize("command", ["calibrate", "db", "drain"])
def test_a_command_run_alone_in_a_fresh_process_is_still_a_subcommand(command: str) -> None:
    code = f"from autopack.cli import main; main([{command!r}, '--help'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"autopack {command}" in out.stdout


def test_calibrating_needs_neither_scipy_stats_nor_alembic() -> None:
    """scipy.stats (≈0.4 s to import) and Alembic (≈0.3 s) are for tests and ``db upgrade`` only."""
    code = ("import sys, autopack.cli.calibrate, autopack.calibration.runner, autopack.db.identity; "
            "print(sorted(m for m in ('scipy.stats', 'alembic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_calibration_runner_leaves_scipy_and_matplotlib_to_the_read() -> None:
    """They are imported on a second thread while the events are read (``calibration.preload``)."""
    code = ("import sys, autopack.calibration.runner; "
            "print(sorted(m for m in ('scipy', 'matplotlib', 'autopack.calibration.core') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_console_scripts_package_imports_nothing_heavy() -> None:
    """``autopack.cli:run`` takes over Ctrl-C before typer, pydantic or SQLAlchemy are imported."""
    code = ("import sys, autopack.cli; "
            "print(sorted(m for m in ('typer', 'click', 'pydantic', 'sqlalchemy', 'autopack.cli.app') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
