"""The one-line machine description every benchmark prints above its table."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe_machine() -> str:
    """``2 CPUs (nproc), <CPU model>, Python 3.11.7``: what the README quotes with each figure."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs (nproc), {model}, Python {platform.python_version()}"
