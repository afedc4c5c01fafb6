"""Headless Chromium over the DevTools protocol, for the Prefect UI test and ``scripts/prefect_ui_screenshot.py``.

No browser is downloaded: it drives Debian's ``chromium`` (``scripts/test.sh`` installs it), over a WebSocket
(``websockets`` comes with Prefect). The UI is a single-page app, so a page is ready when its content is: every
wait is a JavaScript promise that a ``MutationObserver`` (and the page's ``load`` events, for images) settles
the moment its condition holds, with a deadline — no fixed sleeps.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from prefect_live import free_port, stop, wait_for

#: A condition is re-checked on every change to the page, and on every load event (an image decoded).
WAIT_SCRIPT = """
new Promise(resolve => {
  const check = () => { try { return Boolean(%(condition)s); } catch (e) { return false; } };
  if (check()) { resolve(true); return; }
  const done = value => { observer.disconnect(); document.removeEventListener('load', onEvent, true);
                          clearTimeout(timer); resolve(value); };
  const onEvent = () => { if (check()) done(true); };
  const observer = new MutationObserver(onEvent);
  observer.observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
  document.addEventListener('load', onEvent, true);
  const timer = setTimeout(() => done(check()), %(timeout_ms)d);
})
"""


def chromium_path() -> str | None:
    """Debian's Chromium (``AUTOPACK_CHROMIUM`` overrides), or None."""
    found = os.environ.get("AUTOPACK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return found if Path(found).exists() else None


class Chromium:
    """One headless Chromium with one page, closed by ``close()``."""

    def __init__(self, executable: str, profile: Path, width: int = 1440, height: int = 1100) -> None:
        import httpx
        from websockets.sync.client import connect

        port = free_port()
        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
             "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "--remote-debugging-address=127.0.0.1", f"--remote-debugging-port={port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

        def page_socket() -> str | None:
            if self.process.poll() is not None:
                raise RuntimeError(f"{executable} exited with {self.process.returncode}")
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
            except httpx.HTTPError:
                return None
            return next((t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"), None)

        self.socket = connect(wait_for("chromium start", page_socket, 60), max_size=None, open_timeout=30)
        self.calls = 0
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, timeout: float = 120, **params: Any) -> dict[str, Any]:
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries our id
            message = json.loads(self.socket.recv(timeout=timeout))
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result") or {})

    def evaluate(self, expression: str, timeout: float = 120) -> Any:
        result = self.call("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:200]}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def wait(self, condition: str, timeout: float = 90) -> bool:
        """True once the JavaScript expression ``condition`` holds, False if it still does not at the deadline.

        A navigation that replaces the document while waiting ends that wait early; the wait then starts
        again on the new document, within the same deadline.
        """
        import time

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            script = WAIT_SCRIPT % {"condition": condition, "timeout_ms": int(left * 1000)}
            try:
                return bool(self.evaluate(script, timeout=left + 30))
            except RuntimeError as exc:
                if "context" not in str(exc).lower():  # "Execution context was destroyed": a navigation
                    raise

    def open(self, url: str, ready: str, timeout: float = 90) -> None:
        """Navigate, then wait until the JavaScript expression ``ready`` holds (or fail with the page's text)."""
        self.call("Page.navigate", url=url)
        if not self.wait(ready, timeout):
            text = self.evaluate("document.body ? document.body.innerText : ''") or ""
            raise TimeoutError(f"{url}: not ready after {timeout:g} s ({ready})\npage text: {text[:1500]}")

    def screenshot(self, path: Path, *, centre: str | None = None) -> None:
        """The window, scrolled to the top or to the element ``centre`` (the UI scrolls inside its own
        container: the page is never taller than the window)."""
        if centre is not None:
            self.evaluate(f"document.querySelector({json.dumps(centre)}).scrollIntoView({{block: 'center'}})")
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            stop(self.process)


def text_present(*needles: str) -> str:
    """JavaScript: every needle is in the page's visible text."""
    return " && ".join(f"document.body.innerText.includes({json.dumps(n)})" for n in needles)


def click_text(text: str) -> str:
    """JavaScript: click the first button, link, tab or list item whose text is ``text``; true if one was found."""
    return (f"(() => {{ const e = [...document.querySelectorAll('button, a, [role=tab], li')]"
            f".find(e => e.textContent.trim() === {json.dumps(text)}); if (e) e.click(); return !!e; }})()")


#: JavaScript: the report's embedded plot has been decoded (an image that failed to load has width 0).
PLOT = 'img[src^="data:image/png"]'
PLOT_LOADED = f"document.querySelector('{PLOT}')?.complete && document.querySelector('{PLOT}').naturalWidth > 0"
PLOT_WIDTH = f"document.querySelector('{PLOT}')?.naturalWidth || 0"
