"""``prefect deploy --all`` as docs/prefect.md runs it: no prompt, even in a terminal with nothing to answer.

Prefect asks "Would you like to configure schedules for this deployment?" for every deployment without a
``schedules:`` key when its output is a terminal, and with no input to read that ends in ``EOFError``. Here it
runs against a real server with its output on a pseudo-terminal and its input closed, then on plain pipes.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_live import LiveServer, prefect_server

ROOT = Path(__file__).resolve().parents[1]
POOL = "autopack-process"
DEPLOY_TIMEOUT = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as live:
        subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", POOL, "--type", "process"],
                       env=live.env(), check=True, capture_output=True, timeout=DEPLOY_TIMEOUT)
        yield live


def deploy_env(server: LiveServer, work: Path) -> dict[str, str]:
    return server.env(AUTOPACK_GIT_REPOSITORY=ROOT.as_uri(), AUTOPACK_GIT_BRANCH="main",
                      DATABASE_URL=f"sqlite:///{work / 'telemetry.db'}", AUTOPACK_OUTPUT_DIR=str(work / "reports"))


def run_on_terminal(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal and stdin closed; the exit code and what it printed."""
    master, slave = pty.openpty()
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=cwd)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        else:
            process.kill()
        returncode = process.wait(timeout=30)
    finally:
        os.close(master)
    return returncode, b"".join(chunks).decode(errors="replace")


def schedules(server: LiveServer) -> dict[str, list[Any]]:
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
        return {d.name: list(d.schedules) for d in client.read_deployments()}


@pytest.mark.slow
@pytest.mark.timeout(900)  # the module's server starts in the first test
def test_deploy_all_on_a_terminal_with_no_input_asks_nothing(server: LiveServer, tmp_path: Path) -> None:
    returncode, output = run_on_terminal([sys.executable, "-m", "prefect", "deploy", "--all"],
                                         deploy_env(server, tmp_path), ROOT, DEPLOY_TIMEOUT)
    assert returncode == 0, output[-4000:]
    assert "Would you like" not in output and "EOFError" not in output and "Traceback" not in output
    found = schedules(server)
    assert found.keys() == {"telemetry-pipeline", "scheduled-calibration", "batch-drain"}
    assert found["telemetry-pipeline"] == [] and found["batch-drain"] == []
    [weekly] = found["scheduled-calibration"]
    assert weekly.schedule.cron == "0 6 * * 1" and weekly.active is False  # paused until a token exists


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_deploy_all_without_a_terminal_succeeds(server: LiveServer, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "prefect", "deploy", "--all"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, env=deploy_env(server, tmp_path), cwd=ROOT,
                         timeout=DEPLOY_TIMEOUT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stdout + out.stderr
    assert len(schedules(server)) == 3
