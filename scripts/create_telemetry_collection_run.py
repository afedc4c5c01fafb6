#!/usr/bin/env python
"""Create the telemetry-collection-v4 seed run (10 QUEUED phases).

Thin wrapper kept for the original's users: `python scripts/create_telemetry_collection_run.py ...` is `autopack runs create-telemetry-run ...`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/, for _wrapper

from _wrapper import run  # noqa: E402

if __name__ == "__main__":
    run("runs", "create-telemetry-run")
