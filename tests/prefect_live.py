"""A real Prefect set-up for tests and the screenshot script: server, process worker, a clone to deploy from.

Everything runs on 127.0.0.1 with its own ``PREFECT_HOME`` (SQLite) in a temporary directory; every wait is a
poll with a deadline. The worker runs in its own virtual environment whose only packages are this test
environment's (a ``.pth`` line), so the deployments' pull step installs autopack *there*, offline, and never
touches the environment running the tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

ROOT = Path(__file__).resolve().parents[1]

#: Variables a worker or server must not inherit from the developer's shell or from other tests.
PRIVATE_PREFIXES = ("PREFECT_", "DATABASE_URL", "AUTOPACK_", "GITHUB_", "ANTHROPIC_", "OPENAI_", "GEMINI_",
                    "GOOGLE_API", "TELEMETRY_DB", "PIP_")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_PREFIXES)}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float, log: Path | None = None) -> Any:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` seconds with the log's tail."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise TimeoutError(f"{what}: not done after {timeout:g} s\n{tail}")
        time.sleep(0.5)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL what is left after 30 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@dataclass
class LiveServer:
    home: Path
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a CLI or worker talking to this server."""
        return clean_env(PREFECT_HOME=str(self.home), PREFECT_API_URL=self.api_url, **extra)


@contextlib.contextmanager
def prefect_server(home: Path, *, ui: bool = False, timeout: float = 180) -> Iterator[LiveServer]:
    """``prefect server start`` on a free loopback port with SQLite in ``home``; stopped on exit."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = home / "server.log"
    env = clean_env(PREFECT_HOME=str(home), PREFECT_UI_ENABLED="true" if ui else "false",
                    PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_UI_URL=f"http://127.0.0.1:{port}")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = LiveServer(home, f"http://127.0.0.1:{port}", process, log)

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            return httpx.get(f"{server.api_url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for("prefect server start", healthy, timeout, log)
        yield server
    finally:
        stop(process)


def worker_python(venv: Path) -> Path:
    """A virtual environment that sees this one's packages but installs into its own ``site-packages``.

    It also sees this checkout's ``autopack``, and only that (what docs/prefect.md's one ``pip install .`` into
    the worker's environment gives): the pull step comes from there until it has installed a commit, and the
    flows come from each run's clone (``flows/`` is never installed).
    """
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    library = venv / "autopack-only"  # this checkout's autopack without its flows/
    library.mkdir(exist_ok=True)
    if not (library / "autopack").exists():
        (library / "autopack").symlink_to(ROOT / "autopack", target_is_directory=True)
    (Path(site) / "_autopack_test_parent_env.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n{library}\n")
    return python


#: What the worker needs to run the pull step's ``pip install`` without a package index.
OFFLINE_PIP = {"PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@contextlib.contextmanager
def process_worker(
    server: LiveServer, python: Path, pool: str, log: Path, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``prefect worker start --pool POOL`` in ``python``'s environment, polling every second; stopped on exit."""
    worker_env = server.env(PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5", **OFFLINE_PIP,
                            **env)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(python), "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
             "--name", "autopack-test-worker"],
            env=worker_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=log.parent,
        )
    try:
        yield process
    finally:
        stop(process)


def source_clone(path: Path, branch: str = "deploy") -> str:
    """A clone of this checkout at its current commit, on ``branch``: what the deployments pull from.

    Uncommitted changes are not in it (a deployment only ever runs committed code); nothing is committed.
    """
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "checkout", "--quiet", "-B", branch, head], check=True)
    return path.resolve().as_uri()


def final_flow_run(client: Any, flow_run_id: UUID, timeout: float, log: Path | None = None) -> Any:
    """The flow run once its state is final (Completed, Failed, Crashed, Cancelled)."""

    def done() -> Any:
        run = client.read_flow_run(flow_run_id)
        return run if run.state is not None and run.state.is_final() else None

    return wait_for(f"flow run {flow_run_id}", done, timeout, log)


def run_artifacts(client: Any, flow_run_id: UUID) -> dict[str, Any]:
    """The artifacts created by this flow run itself (not by its subflows), by key."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    )
    return {a.key: a for a in artifacts if a.key}


def tree_artifacts(client: Any, flow_run_id: UUID) -> dict[str, Any]:
    """The artifacts of this flow run and of its subflow runs, by key (the run's own win)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    children = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
    )
    found: dict[str, Any] = {}
    for child in children:
        found.update(run_artifacts(client, child.id))
    found.update(run_artifacts(client, flow_run_id))
    return found


def run_graph(client: Any, flow_run_id: UUID) -> dict[str, list[str]]:
    """The run graph the UI draws for a flow run: each subflow's flow name -> the flow names of its parents."""
    graph = client._client.get(f"/flow_runs/{flow_run_id}/graph-v2").raise_for_status().json()
    nodes = {node_id: node for node_id, node in graph["nodes"]}
    names = {node_id: str(node["label"]).split(" / ")[0] for node_id, node in nodes.items()}
    return {names[node_id]: sorted({names[edge["id"]] for edge in node["parents"] if edge["id"] in names})
            for node_id, node in nodes.items() if node["kind"] == "flow-run"}


def run_logs(client: Any, flow_run_ids: list[UUID]) -> list[Any]:
    """Every log line of these flow runs (and their task runs), oldest first."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    found: list[Any] = []
    while True:
        page = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)),
                                sort=LogSort.TIMESTAMP_ASC, limit=200, offset=len(found))
        found.extend(page)
        if len(page) < 200:
            return found


def child_runs(client: Any, flow_run_id: UUID) -> dict[str, Any]:
    """The subflow runs of a flow run, by flow name."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    children = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
    )
    return {client.read_flow(child.flow_id).name: child for child in children}


def steps_in_order(graph: dict[str, list[str]]) -> list[str]:
    """The chain of subflows the run graph links, from the one without parents, each step a parent of the
    next (other edges, where a later step also uses an earlier step's data, are allowed); [] if there is none."""
    roots = [name for name, parents in graph.items() if not parents]
    if len(roots) != 1:
        return []
    chain = roots
    while True:
        following = [name for name, parents in graph.items()
                     if name not in chain and chain[-1] in parents and set(parents) <= set(chain)]
        if len(following) != 1:
            return chain
        chain.append(following[0])


def flush_to_server(timeout: float = 120) -> None:
    """Send the logs and events this process still holds to the server, before the server stops.

    A flow run in the test's own process hands them to background services; left queued, those keep
    retrying a stopped server for the rest of the session.
    """
    from prefect._internal.concurrency.services import QueueService

    QueueService.drain_all(timeout=timeout, at_exit=False)
