"""An expected refusal in the middle of a pipeline run ends it in one line: no Prefect traceback anywhere.

GitHub unreachable when the pull request is opened: the task, its subflow and the parent used to print a
traceback each; now ``autopack pipeline run`` prints the reason once and exits 1, and the log lines that say
so are one line each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from github_server.fixtures import BOT_TOKEN, REPOSITORY
from prefect_live import free_port
from test_pipeline_flow import project_checkout

from autopack.db.engine import dispose_engines, get_engine
from autopack.db.handle import database_at
from autopack.db.models import TokenEstimationV2Event
from autopack.pipeline import prepare_database

from synthetic_telemetry import simulate


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pipeline_cli_with_github_unreachable_fails_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    prepare_database(database_at(url), init=True)
    with get_engine(url).begin() as connection:  # earlier weeks' telemetry: enough for the gate to pass
        connection.execute(sa.insert(TokenEstimationV2Event.__table__), simulate(150, seed=3, run_id="history"))
    dispose_engines()
    target = project_checkout(tmp_path / "target")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GITHUB_", "DATABASE_URL"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DATABASE_URL=url, GITHUB_TOKEN=BOT_TOKEN, GITHUB_REPOSITORY=REPOSITORY,
               GITHUB_API_URL=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    out = subprocess.run(
        [sys.executable, "-c", "from autopack.cli import run; run()", "pipeline", "run", "--skip-drain",
         "--target-repo", str(target), "--output-dir", str(tmp_path / "reports")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540,
    )
    printed = out.stdout + out.stderr
    assert out.returncode == 2, printed[-4000:]  # refused before anything is drained (it was found after, exit 1)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot reach GitHub at http://127.0.0.1:"), printed
    assert "Traceback" not in printed, printed[-6000:]
    assert not (tmp_path / "reports").exists()
