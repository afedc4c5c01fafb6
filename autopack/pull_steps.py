"""The deployments' pull step: install the cloned commit into the worker's environment, unless it already is.

``prefect.yaml`` clones the repository for every flow run. Reinstalling it each time (``pip install`` of the
clone: a wheel build) costs 12–17 s per run; this step installs only when the worker's environment does not
hold exactly this commit. What it installed is remembered in ``<sys.prefix>/autopack-deployed-commit.json``:
the commit and a digest of the installed distribution's ``RECORD`` (pip's list of the files it wrote, with
their hashes), so any other install into that environment since — a ``pip install .`` by hand, an upgrade —
no longer matches and the next run installs again.

Runs in the flow run's process, before the flow is loaded, with the worker's Python (``sys.executable``, as
Prefect's own ``pip_install_requirements`` step). It is part of the installed library, not of ``flows/``: it runs
before the working directory is the clone, where the flows are loaded from (``flows/`` is never installed); it
imports nothing else from autopack.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

DISTRIBUTION = "autopack-telemetry"
MARKER = "autopack-deployed-commit.json"


def installed_record() -> str | None:
    """A digest of the installed distribution's RECORD (None when it is not installed)."""
    importlib.invalidate_caches()
    try:
        record = importlib.metadata.distribution(DISTRIBUTION).read_text("RECORD")
    except importlib.metadata.PackageNotFoundError:
        return None
    return hashlib.sha256(record.encode()).hexdigest() if record else None


def marker_path() -> Path:
    return Path(sys.prefix) / MARKER


def read_marker() -> dict[str, str]:
    try:
        data = json.loads(marker_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def head_commit(directory: str) -> str:
    return subprocess.run(["git", "-C", directory, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def install_commit(directory: str, requirements_file: str = "requirements-deploy.txt") -> dict[str, str]:
    """``pip install -r requirements_file`` in the clone at ``directory``, unless its commit is installed.

    Returns ``commit`` and ``installed`` ("true" or "false") for later steps.
    """
    commit = head_commit(directory)
    record = installed_record()
    if record is not None and read_marker() == {"commit": commit, "record": record}:
        print(f"autopack {commit[:12]} is already installed in {sys.prefix}; not reinstalling", flush=True)
        return {"commit": commit, "installed": "false"}
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-r", requirements_file],
                         cwd=directory, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"installing autopack {commit[:12]} failed (pip exit {out.returncode}):\n"
                           f"{out.stdout[-2000:]}{out.stderr[-3000:]}")
    new_record = installed_record()
    if new_record is not None:
        marker_path().write_text(json.dumps({"commit": commit, "record": new_record}), encoding="utf-8")
    # The flow is loaded next: let it import the code just installed, not modules cached before the install.
    for name in [m for m in sys.modules if m == "flows" or m.startswith(("flows.", "autopack"))]:
        del sys.modules[name]
    print(f"autopack {commit[:12]} installed in {sys.prefix}", flush=True)
    return {"commit": commit, "installed": "true"}
