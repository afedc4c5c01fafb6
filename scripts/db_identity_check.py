#!/usr/bin/env python
"""Print which database this process uses: masked URL, id, revision, row counts.

Thin wrapper kept for the original's users: `python scripts/db_identity_check.py ...` is `autopack db identity ...`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/, for _wrapper

from _wrapper import run  # noqa: E402

if __name__ == "__main__":
    run("db", "identity")
