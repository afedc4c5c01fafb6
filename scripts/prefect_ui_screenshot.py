"""Screenshots of a finished ``telemetry-pipeline`` run in the Prefect UI, taken by headless Chromium.

    .venv/bin/python scripts/prefect_ui_screenshot.py [--out docs/screenshots] [--chromium /usr/bin/chromium]

Starts a Prefect server with its UI (own PREFECT_HOME in a temporary directory, a free loopback port) and the
local fake GitHub from ``tests/github_server``, runs ``autopack pipeline run --init`` against them (fresh
SQLite database, simulated LLM, a real pull request on the fake GitHub), then opens the parent run and its
artifacts in Chromium and saves PNGs. Needs Debian's ``chromium`` (``apt-get install -y chromium``); nothing
here reaches beyond 127.0.0.1. Takes a few minutes: most of it is the drain.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fake GitHub and the live-Prefect helpers live with the tests

from github_server.fixtures import BOT_TOKEN, REPOSITORY, served_fake  # noqa: E402
from prefect_live import LiveServer, prefect_server, run_artifacts  # noqa: E402
from test_pipeline_flow import project_checkout  # noqa: E402

#: Screenshot name → (what to open, window height). The report is long: its plot sits two thirds down.
PAGES = {
    "pipeline-run-artifacts.png": ("run?tab=Artifacts", 1300),
    "pipeline-runs.png": ("runs", 900),
    "calibration-report.png": ("artifact:calibration-report", 7200),
    "calibration-gate.png": ("artifact:calibration-gate", 1100),
    "calibration-pull-request.png": ("artifact:calibration-pull-request", 900),
}


def screenshot(chromium: str, url: str, path: Path, height: int, profile: Path) -> None:
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         f"--user-data-dir={profile}", f"--window-size=1440,{height}", "--virtual-time-budget=20000",
         f"--screenshot={path}", url],
        check=True, capture_output=True, timeout=180,
    )


def run_pipeline(server: LiveServer, work: Path, github_url: str) -> None:
    """``autopack pipeline run --init`` as a user with a Prefect server and a GitHub token runs it."""
    target = project_checkout(work / "target")
    env = server.env(DATABASE_URL=f"sqlite:///{work / 'telemetry.db'}", GITHUB_TOKEN=BOT_TOKEN,
                     GITHUB_REPOSITORY=REPOSITORY, GITHUB_API_URL=github_url, PREFECT_LOGGING_LEVEL="WARNING")
    subprocess.run(
        [sys.executable, "-c", "from autopack.cli import main; main()", "pipeline", "run", "--init",
         "--target-repo", str(target), "--output-dir", str(work / "reports")],
        cwd=work, env=env, check=True, timeout=1800,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
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
            print(f"flow run {run.name}: {run.state.type.value} — {run.state.message}")
            for name, (page, height) in PAGES.items():
                if page.startswith("artifact:"):
                    url = f"{server.url}/artifacts/artifact/{artifacts[page.split(':', 1)[1]].id}"
                elif page.startswith("run"):
                    url = f"{server.url}/runs/flow-run/{run.id}" + page[3:]
                else:
                    url = f"{server.url}/{page}"
                screenshot(args.chromium, url, args.out / name, height, work / "chromium-profile")
                print(f"{args.out / name}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
