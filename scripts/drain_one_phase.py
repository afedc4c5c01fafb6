#!/usr/bin/env python
"""Drain exactly one phase (exit 0 COMPLETE, 1 FAILED, 2 refused).

Thin wrapper kept for the original's users: `python scripts/drain_one_phase.py ...` is `autopack drain one ...`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/, for _wrapper

from _wrapper import run  # noqa: E402

if __name__ == "__main__":
    run("drain", "one")
