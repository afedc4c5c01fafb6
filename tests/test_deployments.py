"""``prefect.yaml`` is real: `prefect deploy --all` registers its deployments on a Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_prefect_deploy_all_registers_the_three_deployments(prefect_harness: None) -> None:
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.actions import WorkPoolCreate

        try:
            client.create_work_pool(WorkPoolCreate(name="autopack-process", type="process"))
        except Exception:  # already created by an earlier run in this session
            pass
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "AUTOPACK_GIT_REPOSITORY": str(ROOT),
           "AUTOPACK_GIT_BRANCH": "main"}
    out = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(ROOT / "prefect.yaml")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
    assert {"telemetry-pipeline", "scheduled-calibration", "batch-drain"} <= deployments.keys()
    scheduled = deployments["scheduled-calibration"]
    assert [s.schedule.cron for s in scheduled.schedules] == ["0 6 * * 1"]
    assert scheduled.global_concurrency_limit is not None and scheduled.global_concurrency_limit.limit == 1
    assert str(scheduled.concurrency_options.collision_strategy.value) == "CANCEL_NEW"
    assert scheduled.parameters["skip_drain"] is True
    assert deployments["telemetry-pipeline"].work_pool_name == "autopack-process"
    assert deployments["batch-drain"].entrypoint == "flows/drain.py:batch_drain"
