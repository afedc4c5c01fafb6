"""The original's script names in ``scripts/`` (README "How it fits together"): each runs this checkout's
``autopack`` with the original's flags, and a wrong interpreter or a dropped flag is one line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: script -> the `autopack` command it stands for (its --help's usage line).
WRAPPERS = {
    "db_identity_check.py": "autopack db identity",
    "create_telemetry_collection_run.py": "autopack runs create-telemetry-run",
    "drain_one_phase.py": "autopack drain one",
    "batch_drain_controller.py": "autopack drain batch",
    "calibrate_token_estimator.py": "autopack calibrate",
    "analyze_token_telemetry_v3.py": "autopack analyze v3",
    "migrations/add_actual_max_tokens_to_token_estimation_v2.py": "autopack db upgrade",
}


def _script(name: str, *args: str, python: tuple[str, ...] = (sys.executable,), env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*python, str(REPO / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_a_wrapper_runs_its_own_checkouts_autopack(name: str, tmp_path: Path) -> None:
    """Another ``autopack`` first on the path (an older install) is not what the checkout's script runs."""
    decoy = tmp_path / "decoy" / "autopack"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise SystemExit('the decoy autopack was imported')\n")
    env = {**os.environ, "PYTHONPATH": str(decoy.parent)}
    proc = _script(name, "--help", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"Usage: {WRAPPERS[name]} [OPTIONS]" in proc.stdout


@pytest.mark.parametrize("name", ["db_identity_check.py", "migrations/add_actual_max_tokens_to_token_estimation_v2.py",
                                  "batch_drain_controller.py"])
def test_an_interpreter_without_autopacks_dependencies_gets_one_line(name: str, tmp_path: Path) -> None:
    """``python3 scripts/x.py`` with a Python that lacks typer & co. (no site-packages: ``-S``)."""
    proc = _script(name, "--help", python=(sys.executable, "-I", "-S"), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: ") and "cannot run autopack from" in lines[0]
    assert str(REPO / ".venv" / "bin" / "python") in lines[0]


@pytest.mark.parametrize("flag", ["--skip-runs-with-queued", "--no-skip-runs-with-queued"])
def test_batch_drain_controller_accepts_the_originals_queued_flags(flag: str, tmp_path: Path) -> None:
    proc = _script("batch_drain_controller.py", flag, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: autopack drain batch [OPTIONS]" in proc.stdout
    assert proc.stderr.strip() == f"note: {flag} has no effect: phases are claimed with leases, so none is drained " \
                                  "twice at once"


def test_batch_drain_controller_refuses_the_originals_dry_run_in_one_line(tmp_path: Path) -> None:
    proc = _script("batch_drain_controller.py", "--dry-run", "--batch-size", "5", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: --dry-run is not supported by `autopack drain batch` (see each run's phases by state with "
        "`autopack runs list`)"
    ]
    assert not list(tmp_path.iterdir())  # no database was opened or created


@pytest.mark.parametrize("name", ["calibrate_token_estimator.py", "drain_one_phase.py"])
def test_a_wrapper_takes_argparses_short_help(name: str, tmp_path: Path) -> None:
    """The original's scripts were argparse programs: ``-h`` printed their help."""
    proc = _script(name, "-h", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"Usage: {WRAPPERS[name]} [OPTIONS]" in proc.stdout and "-h, --help" in proc.stdout


def test_ctrl_c_while_a_wrapper_starts_is_one_line_and_130(tmp_path: Path) -> None:
    """As for the console script: SIGINT once typer is imported (``-X importtime`` reports it) is "interrupted"."""
    from cli_runner import interrupt_once_imported

    from autopack.cli.console import INTERRUPTED_EXIT, INTERRUPTED_LINE

    code, other = interrupt_once_imported([str(REPO / "scripts" / "db_identity_check.py")], "typer", tmp_path)
    assert code == INTERRUPTED_EXIT, other
    assert other == [INTERRUPTED_LINE]
