"""Named points inside ``autopack db upgrade`` where a test can stop the process and observe it.

Interrupting an upgrade "about 2 s in" is not a test; interrupting it *after the tables were copied* is.
When ``AUTOPACK_TEST_PAUSE_AT`` names a step, the process writes the step's name (one line) to the file
``AUTOPACK_TEST_PAUSE_READY`` names (a pipe, typically), then blocks until it reads a line from
``AUTOPACK_TEST_PAUSE_RESUME`` (or its writer closes it) — or, without one, until a signal arrives
(bounded). Nothing happens when the variable is unset, which is always outside tests.
"""

from __future__ import annotations

import os
import time

PAUSE_AT = "AUTOPACK_TEST_PAUSE_AT"
READY = "AUTOPACK_TEST_PAUSE_READY"
RESUME = "AUTOPACK_TEST_PAUSE_RESUME"
MAX_PAUSE_SECONDS = 120.0


def checkpoint(step: str) -> None:
    """Pause here if a test asked for this step (see the module docstring); otherwise return at once."""
    if os.environ.get(PAUSE_AT) != step:
        return
    ready = os.environ.get(READY)
    if ready:
        with open(ready, "a", encoding="utf-8") as channel:
            channel.write(f"{step}\n")
    resume = os.environ.get(RESUME)
    if resume:
        with open(resume, encoding="utf-8") as channel:
            channel.readline()
    else:
        time.sleep(MAX_PAUSE_SECONDS)  # a signal (SIGINT, SIGTERM, SIGKILL) is expected before this ends
