#!/usr/bin/env python
"""Micro-benchmark: ``get_settings()`` and a redacted log line, cached vs rebuilt, in one process.

The baseline is what every call cost before settings were cached: a new ``Settings()`` (environment and
``.env`` parsed, validated) per ``get_settings()``, and per log line a new ``Settings()`` plus its secret
list (the database URL parsed) inside the redacting filter. Both are measured here side by side with the
cached path, with the same environment (three API keys and a ``.env`` file, as a real set-up has).

    .venv/bin/python bench/bench_settings.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe_machine  # noqa: E402

from autopack.config import Settings, get_settings  # noqa: E402
from autopack.logging import redact  # noqa: E402


class RebuildingFilter(logging.Filter):
    """The old filter: settings and their secrets rebuilt for every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), Settings()._collect_secrets())  # noqa: SLF001
        record.args = None
        return True


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    fn()  # warm
    best = float("inf")
    for _ in range(3):  # best of three: the machine is shared
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


def logger_with(filter_: logging.Filter, name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.propagate = False
    log.addHandler(logging.StreamHandler(io.StringIO()))
    log.addFilter(filter_)
    log.setLevel(logging.INFO)
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        Path(".env").write_text("AUTOPACK_LLM_MODEL=bench-model\nAUTOPACK_LLM_TIMEOUT_SECONDS=120\n")
        os.environ.update({"DATABASE_URL": "postgresql://autopack:db-password-123@127.0.0.1:5432/autopack",
                           "OPENAI_API_KEY": "sk-bench-openai-0123456789", "GITHUB_TOKEN": "ghp_" + "x" * 36,
                           "AUTOPACK_API_KEY": "bench-api-key-value"})
        message = "phase %s finished: %d tokens via postgresql://autopack:db-password-123@127.0.0.1/autopack"
        old_log = logger_with(RebuildingFilter(), "bench.rebuilding")
        # today no filter: the record factory autopack.logging installs at import masks every record (both loggers)
        new_log = logger_with(logging.Filter(), "bench.cached")
        rows = [
            ("get_settings()", per_call_us(Settings, args.calls), per_call_us(get_settings, args.calls)),
            ("one redacted log line", per_call_us(lambda: old_log.info(message, "p-1", 1234), args.calls),
             per_call_us(lambda: new_log.info(message, "p-1", 1234), args.calls)),
        ]
    print(f"machine: {describe_machine()}")
    print()
    print("| operation | rebuilt per call (µs) | cached (µs) | speed-up |")
    print("|---|---:|---:|---:|")
    for name, old, new in rows:
        print(f"| {name} | {old:.0f} | {new:.0f} | {old / new:.0f}× |")


if __name__ == "__main__":
    main()
