#!/usr/bin/env python3
"""The original's entry point, kept for the seed workflow: same flags as ``autopack drain batch``.

    python scripts/batch_drain_controller.py --run-id telemetry-collection-v4 --batch-size 10 \\
        --api-url http://127.0.0.1:8000
"""

from __future__ import annotations

import sys


def main() -> None:
    from autopack.cli.app import main as autopack_main

    autopack_main(["drain", "batch", *sys.argv[1:]])


if __name__ == "__main__":
    main()
