#!/usr/bin/env python
"""BUILD-142 migration: add token_estimation_v2_events.actual_max_tokens (and every later column).

The one migration chain does it: an original Autopack database is adopted and upgraded in place (a SQLite
file is backed up first), and legacy rows get actual_max_tokens backfilled from selected_budget with
actual_max_tokens_backfilled = true, so they stay distinguishable from measured ceilings.

Thin wrapper kept for the original's users: `python scripts/migrations/add_actual_max_tokens_to_token_estimation_v2.py ...` is `autopack db upgrade ...`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for _wrapper

from _wrapper import run  # noqa: E402

if __name__ == "__main__":
    run("db", "upgrade")
