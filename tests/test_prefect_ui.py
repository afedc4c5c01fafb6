"""The Prefect UI in a real browser: a finished ``telemetry-pipeline`` run, as a reviewer opens it.

A Prefect server with its UI (own home, free loopback port), a pipeline run against it (the seed runs plus
earlier weeks' telemetry, calibrate and a dry-run pull request: the drain is covered elsewhere), then headless
Chromium (Debian's ``chromium``; nothing is downloaded) opens the parent run and its artifacts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from browser import PLOT_LOADED, PLOT_WIDTH, Chromium, chromium_path, click_text, text_present
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings
from prefect_live import (
    LiveServer,
    flush_to_server,
    prefect_server,
    run_artifacts,
    run_graph,
    run_logs,
    steps_in_order,
)
from test_pipeline_flow import project_checkout

from autopack.db.engine import dispose_engines, get_engine
from autopack.db.handle import database_at
from autopack.db.models import TokenEstimationV2Event
from autopack.params import PipelineParams
from autopack.pipeline import prepare_database

from synthetic_telemetry import simulate


@pytest.fixture(scope="module")
def chromium_executable() -> str:
    found = chromium_path()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no Chromium (apt-get install -y chromium; scripts/test.sh does): CI must not skip the UI test")
        pytest.skip("no Chromium (apt-get install -y chromium)")
    return found


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with prefect_server(tmp_path_factory.mktemp("prefect-ui-home"), ui=True) as live:
        yield live


@pytest.fixture(scope="module")
def finished_run(ui_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any]]:
    """A completed pipeline run with a passed gate and a dry-run pull request, and its artifacts by key."""
    from flows.pipeline import telemetry_pipeline

    work = tmp_path_factory.mktemp("ui-pipeline")
    url = f"sqlite:///{work / 'telemetry.db'}"
    prepare_database(database_at(url), init=True)
    with get_engine(url).begin() as connection:  # earlier weeks' telemetry: enough calls for the gate
        connection.execute(sa.insert(TokenEstimationV2Event.__table__), simulate(150, seed=3, run_id="history"))
    target = project_checkout(work / "target")
    old = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: ui_server.api_url, PREFECT_UI_URL: ui_server.url}):
            params = PipelineParams(skip_drain=True, dry_run=True, target_repo=str(target),
                                    output_dir=str(work / "reports"))
            state = telemetry_pipeline(params, return_state=True)
            flush_to_server()  # its logs are read below, and nothing is left to send once the server stops
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(state.state_details.flow_run_id)
                artifacts = run_artifacts(client, run.id)
    finally:
        if old is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = old
        dispose_engines()
    assert run.state.is_completed() and run.state.message.startswith("dry run: branch "), run.state
    return run, artifacts


@pytest.fixture
def browser(chromium_executable: str, tmp_path: Path) -> Iterator[Chromium]:
    chromium = Chromium(chromium_executable, tmp_path / "profile")
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.mark.slow
@pytest.mark.timeout(900)  # the module's server and pipeline run start in the first test
def test_the_parent_run_shows_its_state_message_and_its_artifacts(
    ui_server: LiveServer, finished_run: tuple[Any, dict[str, Any]], browser: Chromium
) -> None:
    run, _ = finished_run
    browser.open(f"{ui_server.url}/runs/flow-run/{run.id}", text_present(run.name, "Completed"))
    assert browser.wait(text_present(run.state.message[:60])), "the state message is not on the run's page"
    assert browser.wait(click_text("Artifacts"), timeout=30)
    assert browser.wait(text_present("calibration-report", "calibration-gate", "calibration-pull-request"))


@pytest.mark.slow
@pytest.mark.timeout(900)  # the module's server and pipeline run start in the first test
def test_the_report_artifact_shows_its_plot_and_the_gate_and_pull_request_artifacts_open(
    ui_server: LiveServer, finished_run: tuple[Any, dict[str, Any]], browser: Chromium
) -> None:
    _, artifacts = finished_run
    browser.open(f"{ui_server.url}/artifacts/artifact/{artifacts['calibration-report'].id}", PLOT_LOADED)
    assert browser.evaluate(PLOT_WIDTH) > 0
    browser.open(f"{ui_server.url}/artifacts/artifact/{artifacts['calibration-gate'].id}",
                 text_present("Calibration gate passed"))
    browser.open(f"{ui_server.url}/artifacts/artifact/{artifacts['calibration-pull-request'].id}",
                 text_present("Calibration pull request", "Dry run"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_run_graph_links_the_steps_in_order_and_the_log_has_no_traceback(
    ui_server: LiveServer, finished_run: tuple[Any, dict[str, Any]]
) -> None:
    run, _ = finished_run
    with temporary_settings(updates={PREFECT_API_URL: ui_server.api_url}), get_client(sync_client=True) as client:
        graph = run_graph(client, run.id)
        logs = run_logs(client, [run.id])
    assert steps_in_order(graph) == ["db-identity-guard", "calibrate", "open-calibration-pr"]
    assert logs and not [log.message for log in logs if "Traceback" in log.message]
