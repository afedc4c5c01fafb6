#!/usr/bin/env python3
"""The original's entry point, kept for the seed workflow: same flags as ``autopack drain batch``.

    python scripts/batch_drain_controller.py --run-id telemetry-collection-v4 --batch-size 10 \\
        --api-url http://127.0.0.1:8000

Of the original's other flags, ``--skip-runs-with-queued`` and ``--no-skip-runs-with-queued`` are accepted and have
no effect (every phase is claimed with a lease, so no phase is ever drained twice at once, whatever else its run
has queued); ``--dry-run`` is refused in one line (``autopack runs list`` shows what a drain would find).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/, for _wrapper

from _wrapper import run  # noqa: E402

#: The original's flags that lost their purpose: accepted, and dropped before ``autopack drain batch`` sees them.
NO_EFFECT = ("--skip-runs-with-queued", "--no-skip-runs-with-queued")


def main() -> None:
    args = sys.argv[1:]
    if "--dry-run" in args:
        print("error: --dry-run is not supported by `autopack drain batch` (see each run's phases by state with "
              "`autopack runs list`)", file=sys.stderr)
        sys.exit(2)
    for flag in NO_EFFECT:
        if flag in args:
            print(f"note: {flag} has no effect: phases are claimed with leases, so none is drained twice at once",
                  file=sys.stderr)
    sys.argv[1:] = [arg for arg in args if arg not in NO_EFFECT]
    run("drain", "batch")


if __name__ == "__main__":
    main()
