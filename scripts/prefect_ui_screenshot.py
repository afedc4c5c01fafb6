"""Screenshots of a finished ``telemetry-pipeline`` run in the Prefect UI, taken by headless Chromium.

    .venv/bin/python scripts/prefect_ui_screenshot.py [--out docs/screenshots] [--chromium /usr/bin/chromium]

Starts a Prefect server with its UI (own PREFECT_HOME in a temporary directory, a free loopback port) and the
local fake GitHub from ``tests/github_server``, runs ``autopack pipeline run --init`` against them (fresh
SQLite database, simulated LLM, a real pull request on the fake GitHub), then opens the parent run and its
artifacts in Chromium and saves PNGs. Needs Debian's ``chromium`` and, for the report's check marks, an emoji
font (``apt-get install -y chromium fonts-noto-color-emoji``). Nothing here reaches beyond 127.0.0.1. Takes a
few minutes, most of them in the drain.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fake GitHub and the live-Prefect helpers live with the tests

from github_server.fixtures import BOT_TOKEN, REPOSITORY, served_fake  # noqa: E402
from prefect_live import LiveServer, free_port, prefect_server, run_artifacts, stop, wait_for  # noqa: E402
from test_pipeline_flow import project_checkout  # noqa: E402



class Chromium:
    """Headless Chromium driven over the DevTools protocol (``websockets`` comes with Prefect): the UI is a
    single-page app, so a page is ready when its content is, not when it has loaded."""

    def __init__(self, executable: str, profile: Path, width: int = 1440, height: int = 1100) -> None:
        import httpx
        from websockets.sync.client import connect

        port = free_port()
        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "--remote-debugging-address=127.0.0.1", f"--remote-debugging-port={port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

        def page_socket() -> str | None:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
            except httpx.HTTPError:
                return None
            return next((t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"), None)

        self.socket = connect(wait_for("chromium start", page_socket, 60), max_size=None, open_timeout=30)
        self.calls = 0
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries our id
            message = json.loads(self.socket.recv(timeout=120))
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result") or {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def open(self, url: str, ready: str, timeout: float = 90) -> None:
        """Navigate, then wait until the JavaScript expression ``ready`` is true."""
        self.call("Page.navigate", url=url)
        wait_for(f"{url}: {ready}", lambda: self.evaluate(f"Boolean({ready})"), timeout)

    def screenshot(self, path: Path, *, centre: str | None = None) -> None:
        """The window, scrolled to the top or to the element ``centre`` (the UI scrolls inside its own
        container: the page is never taller than the window)."""
        if centre is not None:
            self.evaluate(f"document.querySelector({json.dumps(centre)}).scrollIntoView({{block: 'center'}})")
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.socket.close()
        stop(self.process)


def text_present(*needles: str) -> str:
    return " && ".join(f"document.body.innerText.includes({json.dumps(n)})" for n in needles)


def click_text(text: str) -> str:
    return (f"(() => {{ const e = [...document.querySelectorAll('button, a, [role=tab], li')]"
            f".find(e => e.textContent.trim() === {json.dumps(text)}); if (e) e.click(); return !!e; }})()")


def take_screenshots(
    browser: Chromium, server: LiveServer, run: Any, artifacts: dict[str, Any], out: Path
) -> list[Path]:
    """The parent run's Artifacts tab, the report (top and plot), the gate and the pull request."""
    shots: list[Path] = []

    def artifact_page(key: str, ready: str) -> None:
        browser.open(f"{server.url}/artifacts/artifact/{artifacts[key].id}", ready)

    browser.open(f"{server.url}/runs/flow-run/{run.id}", text_present(run.name, "Completed", "Artifacts"))
    wait_for("the Artifacts tab", lambda: browser.evaluate(click_text("Artifacts")), 30)
    wait_for("the artifact cards", lambda: browser.evaluate(
        text_present("calibration-report", "calibration-gate", "calibration-pull-request")), 30)
    shots.append(out / "pipeline-run-artifacts.png")
    browser.screenshot(shots[-1])

    plot = 'img[src^="data:image/png"]'
    artifact_page("calibration-report", f"document.querySelector('{plot}')?.complete && "
                                        f"document.querySelector('{plot}').naturalWidth > 0")
    shots.append(out / "calibration-report.png")
    browser.screenshot(shots[-1])
    shots.append(out / "calibration-report-plot.png")
    browser.screenshot(shots[-1], centre=plot)

    artifact_page("calibration-gate", text_present("Calibration gate"))
    shots.append(out / "calibration-gate.png")
    browser.screenshot(shots[-1])
    artifact_page("calibration-pull-request", text_present("Calibration pull request", "PR #"))
    shots.append(out / "calibration-pull-request.png")
    browser.screenshot(shots[-1])
    return shots


def run_pipeline(server: LiveServer, work: Path, github_url: str) -> None:
    """``autopack pipeline run --init`` as a user with a Prefect server and a GitHub token runs it."""
    target = project_checkout(work / "target")
    env = server.env(DATABASE_URL=f"sqlite:///{work / 'telemetry.db'}", GITHUB_TOKEN=BOT_TOKEN,
                     GITHUB_REPOSITORY=REPOSITORY, GITHUB_API_URL=github_url)
    subprocess.run(
        [sys.executable, "-c", "from autopack.cli import run; run()", "pipeline", "run", "--init",
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
            print(f"flow run {run.name}: {run.state.type.value}: {run.state.message}")
            browser = Chromium(args.chromium, work / "chromium-profile")
            try:
                for path in take_screenshots(browser, server, run, artifacts, args.out):
                    print(path)
            finally:
                browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
