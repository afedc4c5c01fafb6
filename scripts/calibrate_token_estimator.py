#!/usr/bin/env python
"""Calibrate the token estimator from telemetry (the seed's T5 job).

Thin wrapper kept for the original's users: `python scripts/calibrate_token_estimator.py --min-samples 5
--confidence-threshold 0.7 ...` is `autopack calibrate ...` (same flags, plus --target-truncation,
--holdout-fraction, --json, --expect-db-id).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/, for _wrapper

from _wrapper import run  # noqa: E402

if __name__ == "__main__":
    run("calibrate")
