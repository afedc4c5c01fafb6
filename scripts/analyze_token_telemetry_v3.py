#!/usr/bin/env python
"""The original's legacy log analyser.

Thin wrapper kept for the original's users: `python scripts/analyze_token_telemetry_v3.py --log-dir
.autonomous_runs --success-only --stratify --under-multiplier 1.1 --output report.md` is `autopack analyze v3 ...`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/, for _wrapper

from _wrapper import run  # noqa: E402

if __name__ == "__main__":
    run("analyze", "v3")
