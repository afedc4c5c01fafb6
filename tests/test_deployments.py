"""``prefect.yaml`` runs for real: a Prefect server, ``prefect deploy --all``, a process worker, each deployment.

As a user would: the work pool and the deployments are created with the ``prefect`` CLI, the worker clones
the repository (a clone of this checkout's current commit), installs it with the pull step and runs the
flows against a fresh SQLite telemetry database that only the deployments' job variables name (the worker's
own environment has no ``DATABASE_URL``). The weekly ``scheduled-calibration`` is triggered now and opens a
pull request on the local fake GitHub, with the token in the ``github-token`` Secret block.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from github_server.app import FakeGitHub
from github_server.fixtures import BOT_TOKEN, REPOSITORY, served_fake
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_live import (
    LiveServer,
    child_runs,
    final_flow_run,
    prefect_server,
    process_worker,
    run_artifacts,
    run_graph,
    run_logs,
    source_clone,
    steps_in_order,
    tree_artifacts,
    worker_python,
)
from test_pipeline_flow import project_checkout

from autopack.db.engine import dispose_engines, get_engine
from autopack.db.handle import database_at
from autopack.db.models import TokenEstimationV2Event
from autopack.execution.seed_runs import V4_RUN_ID
from autopack.github.proposal import BOT_BRANCH, ESTIMATOR_PATH
from autopack.pipeline import prepare_database

from synthetic_telemetry import simulate

ROOT = Path(__file__).resolve().parents[1]
POOL = "autopack-process"
#: Per flow run: clone, offline install, a full drain of the seed runs on 2 cores shared with other work.
RUN_TIMEOUT = 600
#: The drain's one log line per phase (``autopack.execution.batch_report.outcome_line``).
PHASE_LINE = re.compile(r"^\[\d+/\d+\] (OK|FAIL) ")


def prefect_cli(server: LiveServer, *args: str, cwd: Path, **env: str) -> str:
    out = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], cwd=cwd, env=server.env(**env),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[Any]:
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as c:
        yield c


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with served_fake() as fake:
        fake.create_repo(REPOSITORY, {ESTIMATOR_PATH: (ROOT / ESTIMATOR_PATH).read_text()})
        yield fake


def phase_states(url: str) -> dict[str, int]:
    with get_engine(url).connect() as connection:
        rows = connection.execute(sa.text("SELECT state, COUNT(*) FROM phases GROUP BY state")).all()
    return {state: n for state, n in rows}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_each_deployment_runs_on_a_process_worker(
    server: LiveServer, client: Any, github: FakeGitHub, tmp_path: Path
) -> None:
    from prefect.blocks.system import Secret

    work = tmp_path.resolve()
    database_url = f"sqlite:///{work / 'telemetry.db'}"
    prepare_database(database_at(database_url), init=True)  # `autopack pipeline run --init`: schema and the seed runs
    # earlier weeks' telemetry: one week of seed phases leaves every group below the 22 calls a
    # distribution-free factor needs (docs/calibration.md), so nothing could ship without it
    with get_engine(database_url).begin() as connection:
        connection.execute(sa.insert(TokenEstimationV2Event.__table__), simulate(150, seed=3, run_id="history"))
    dispose_engines()
    reports = work / "reports"
    source = source_clone(work / "source")
    target = project_checkout(work / "target")  # the checkout a dry run writes its branch into

    prefect_cli(server, "work-pool", "create", POOL, "--type", "process", cwd=work)
    prefect_cli(
        server, "deploy", "--all", "--prefect-file", str(work / "source" / "prefect.yaml"), cwd=work / "source",
        AUTOPACK_GIT_REPOSITORY=source, AUTOPACK_GIT_BRANCH="deploy", DATABASE_URL=database_url,
        AUTOPACK_OUTPUT_DIR=str(reports), GITHUB_REPOSITORY=REPOSITORY, GITHUB_API_URL=github.url,
    )
    deployments = {d.name: d for d in client.read_deployments()}
    assert deployments.keys() == {"telemetry-pipeline", "scheduled-calibration", "batch-drain"}
    scheduled = deployments["scheduled-calibration"]
    assert [(s.schedule.cron, s.active) for s in scheduled.schedules] == [("0 6 * * 1", False)]  # paused
    assert deployments["telemetry-pipeline"].schedules == [] and deployments["batch-drain"].schedules == []
    assert scheduled.concurrency_options is not None
    assert str(scheduled.concurrency_options.collision_strategy.value) == "CANCEL_NEW"
    assert scheduled.job_variables["env"]["DATABASE_URL"] == database_url
    assert "GITHUB_TOKEN" not in scheduled.job_variables["env"]  # the token stays in the Secret block

    worker_log = work / "worker.log"
    python = worker_python(work / "worker-venv")
    with process_worker(server, python, POOL, worker_log):

        def run(name: str, **parameters: Any) -> Any:
            flow_run = client.create_flow_run_from_deployment(deployments[name].id, parameters=parameters)
            return final_flow_run(client, flow_run.id, RUN_TIMEOUT, worker_log)

        def tracebacks(*flow_run_ids: Any) -> list[str]:
            return [log.message for log in run_logs(client, list(flow_run_ids)) if "Traceback" in log.message]

        # 0. the weekly job before the Secret block exists: Failed, in one line, no traceback in its log
        untokened = run("scheduled-calibration")
        assert untokened.state.is_failed(), (untokened.state, worker_log.read_text()[-6000:])
        assert untokened.state.message.startswith("dry_run is false but no GitHub token is available")
        assert tracebacks(untokened.id) == []
        assert "installed in" in worker_log.read_text()  # the first run installed the commit
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            Secret(value=BOT_TOKEN).save("github-token", overwrite=True)

        # 1. batch-drain, a small batch of one run
        drain = run("batch-drain", params={"run_ids": [V4_RUN_ID], "batch_size": 3})
        assert drain.state.is_completed(), (drain.state, worker_log.read_text()[-4000:])
        assert "batch-drain-summary" in tree_artifacts(client, drain.id)
        assert sum(n for state, n in phase_states(database_url).items() if state != "QUEUED") == 3

        # 2. telemetry-pipeline, as docs/prefect.md starts it: a dry run needs an absolute target_repo (a run's
        # params replace the deployment's, so output_dir is given again)
        refused = run("telemetry-pipeline", params={"dry_run": True, "output_dir": str(reports)})
        assert refused.state.is_failed()
        assert refused.state.message.startswith("target_repo '.' is not an absolute path")
        assert "\n" not in refused.state.message
        assert tracebacks(refused.id) == []
        assert "is already installed" in worker_log.read_text()  # later runs of that commit skip the install

        given = {"dry_run": True, "target_repo": str(target), "output_dir": str(reports)}
        prefect_cli(server, "deployment", "run", "telemetry-pipeline/telemetry-pipeline", "-p",
                    f"params={json.dumps(given)}", cwd=work)
        [started] = [r for r in client.read_flow_runs() if r.deployment_id == deployments["telemetry-pipeline"].id
                     and r.id != refused.id]
        pipeline = final_flow_run(client, started.id, RUN_TIMEOUT, worker_log)
        assert pipeline.state.is_completed(), (pipeline.state, worker_log.read_text()[-4000:])
        assert pipeline.state.message.startswith(f"dry run: branch {BOT_BRANCH} written to {target}")
        assert phase_states(database_url).get("QUEUED", 0) == 0
        assert steps_in_order(run_graph(client, pipeline.id)) == [  # linked, in order, in the UI's run graph
            "db-identity-guard", "validate-single-phase", "batch-drain", "calibrate", "open-calibration-pr"]
        drain_run = child_runs(client, pipeline.id)["batch-drain"]
        drain_logs = run_logs(client, [drain_run.id])
        processed = int(drain_run.state.message.split(" phases:")[0])  # "60 phases: 58 ok, …"
        phase_lines = [log.message for log in drain_logs if PHASE_LINE.match(log.message)]
        assert processed > 0 and len(phase_lines) == processed  # one log line per drained phase
        assert not [log for log in drain_logs if log.task_run_id is not None]  # task runs add no line
        assert tracebacks(pipeline.id, drain_run.id) == []
        artifacts = run_artifacts(client, pipeline.id)
        assert {"batch-drain-summary", "calibration-report", "calibration-groups", "calibration-gate",
                "calibration-pull-request"} <= artifacts.keys()
        assert "](data:image/png;base64,iVBORw0KGgo" in str(artifacts["calibration-report"].data)
        assert "Calibration gate passed" in str(artifacts["calibration-gate"].data)
        assert f"`{BOT_BRANCH}`" in str(artifacts["calibration-pull-request"].data)
        branch = subprocess.run(["git", "-C", str(target), "rev-parse", "--verify", "--quiet", BOT_BRANCH],
                                capture_output=True, text=True)
        assert branch.returncode == 0  # the dry run's branch is in the durable checkout, not in the deleted clone
        assert list(reports.glob("token_estimator_calibration_*.png"))

        # 3. the weekly scheduled-calibration, triggered now: a real pull request (on the fake GitHub)
        weekly = run("scheduled-calibration")
        assert weekly.state.is_completed(), (weekly.state, worker_log.read_text()[-4000:])
        [number] = github.repo(REPOSITORY).pulls.keys()
        prefix = f"PR #{number} opened: "
        assert weekly.state.message.startswith(prefix), weekly.state.message
        url = weekly.state.message[len(prefix):]
        assert url.endswith(f"/{REPOSITORY}/pull/{number}")
        pr_artifact = str(run_artifacts(client, weekly.id)["calibration-pull-request"].data)
        assert f"]({url})" in pr_artifact  # a link a reviewer can click
