"""Stage timings: how long each named step of a command or flow took (printed and stored with its result)."""

from __future__ import annotations

import time


class StageClock:
    """``lap(name)`` records the seconds since the previous lap (or since the clock was made) under ``name``."""

    def __init__(self, digits: int = 3) -> None:
        self.digits = digits
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._last, self.digits)
        self._last = now
