"""Screenshots of a finished ``telemetry-pipeline`` run in the Prefect UI, taken by headless Chromium.

    .venv/bin/python scripts/prefect_ui_screenshot.py [--out docs/screenshots] [--chromium /usr/bin/chromium]

Starts a Prefect server with its UI (own PREFECT_HOME in a temporary directory, a free loopback port) and the
local fake GitHub from ``tests/github_server``, runs ``autopack pipeline run --init --weeks 4`` against them
(fresh SQLite database with four weeks of seed runs — one week is too few calls for the gate to pass —,
simulated LLM, a real pull request on the fake GitHub), then opens the parent run and its artifacts in
Chromium (``tests/browser.py``: every wait ends when the page shows what it waits for) and saves PNGs. Needs
Debian's ``chromium`` and, for the report's check marks, an emoji font (``apt-get install -y chromium
fonts-noto-color-emoji``). Nothing here reaches beyond 127.0.0.1. Takes a few minutes, most of them in the
drain of the 244 seed phases.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# As pytest's `pythonpath` (pyproject.toml) has it: the fake GitHub and the live-Prefect helpers live with the tests,
# which import this checkout (autopack, flows/) and bench/'s synthetic telemetry.
for folder in (ROOT / "tests", ROOT / "bench", ROOT):
    sys.path.insert(0, str(folder))

from browser import PLOT, PLOT_LOADED, Chromium, chromium_path, click_text, text_present  # noqa: E402
from github_server.fixtures import BOT_TOKEN, REPOSITORY, served_fake  # noqa: E402
from prefect_live import LiveServer, prefect_server, run_artifacts  # noqa: E402
from test_pipeline_flow import project_checkout  # noqa: E402

#: Seed weeks: four give the calibration enough calls per group for its gate to pass (one week does not).
WEEKS = 4



def heading(artifact: Any) -> str:
    """The first heading of a markdown artifact: what its page shows once rendered."""
    lines = [line.lstrip("#").strip() for line in str(artifact.data).splitlines() if line.startswith("#")]
    return lines[0] if lines else str(artifact.key)


def take_screenshots(
    browser: Chromium, server: LiveServer, run: Any, artifacts: dict[str, Any], out: Path
) -> list[Path]:
    """The parent run's Artifacts tab, the report (top and plot), the gate and the pull request.

    Each page is taken once what it must show is there: the run's name and state message, the artifact
    cards, the decoded plot, each artifact's own heading and, for the pull request, its number.
    """
    shots: list[Path] = []

    def artifact_page(key: str, ready: str) -> None:
        browser.open(f"{server.url}/artifacts/artifact/{artifacts[key].id}", ready)

    browser.open(f"{server.url}/runs/flow-run/{run.id}", text_present(run.name, run.state.message[:60]))
    if not browser.wait(click_text("Artifacts"), 30):
        raise TimeoutError("the run's page has no Artifacts tab")
    if not browser.wait(text_present("calibration-report", "calibration-gate", "calibration-pull-request")):
        raise TimeoutError("the Artifacts tab does not list the calibration artifacts")
    shots.append(out / "pipeline-run-artifacts.png")
    browser.screenshot(shots[-1])

    artifact_page("calibration-report", PLOT_LOADED)
    shots.append(out / "calibration-report.png")
    browser.screenshot(shots[-1])
    shots.append(out / "calibration-report-plot.png")
    browser.screenshot(shots[-1], centre=PLOT)

    artifact_page("calibration-gate", text_present(heading(artifacts["calibration-gate"])))
    shots.append(out / "calibration-gate.png")
    browser.screenshot(shots[-1])
    number = run.state.message.split(" ", 2)[1]  # "PR #12 opened: …"
    artifact_page("calibration-pull-request", text_present(heading(artifacts["calibration-pull-request"]), number))
    shots.append(out / "calibration-pull-request.png")
    browser.screenshot(shots[-1])
    return shots


def run_pipeline(server: LiveServer, work: Path, github_url: str) -> None:
    """``autopack pipeline run --init --weeks 4`` as a user with a Prefect server and a GitHub token runs it."""
    target = project_checkout(work / "target")
    env = server.env(DATABASE_URL=f"sqlite:///{work / 'telemetry.db'}", GITHUB_TOKEN=BOT_TOKEN,
                     GITHUB_REPOSITORY=REPOSITORY, GITHUB_API_URL=github_url)
    subprocess.run(
        [sys.executable, "-c", "from autopack.cli import run; run()", "pipeline", "run", "--init",
         "--weeks", str(WEEKS), "--target-repo", str(target), "--output-dir", str(work / "reports")],
        cwd=work, env=env, check=True, timeout=3600,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--chromium", default=chromium_path() or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    if not Path(args.chromium).exists():
        print(f"error: no Chromium at {args.chromium} (apt-get install -y chromium, or pass --chromium)",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with tempfile.TemporaryDirectory(prefix="autopack-ui-") as tmp:
        work = Path(tmp)
        with prefect_server(work / "prefect-home", ui=True) as server, served_fake() as github:
            github.create_repo(REPOSITORY, {"autopack/token_estimator.py":
                                            (ROOT / "autopack" / "token_estimator.py").read_text()})
            run_pipeline(server, work, github.url)
            with temporary_settings(updates={PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as c:
                [run] = [r for r in c.read_flow_runs() if r.parent_task_run_id is None
                         and c.read_flow(r.flow_id).name == "telemetry-pipeline"]
                artifacts = run_artifacts(c, run.id)
            state = run.state
            if state is None:
                print(f"error: flow run {run.name} has no state", file=sys.stderr)
                return 1
            print(f"flow run {run.name}: {state.type.value}: {state.message}")
            if not state.is_completed() or not str(state.message).startswith("PR #"):
                print("error: the run opened no pull request, so there is nothing to show", file=sys.stderr)
                return 1
            browser = Chromium(args.chromium, work / "chromium-profile")
            try:
                for path in take_screenshots(browser, server, run, artifacts, args.out):
                    print(path)
            finally:
                browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
