"""Import the statistics and the plotting on a second thread while the events are read.

A fresh ``autopack calibrate`` spends about a second importing scipy, the calibration modules and
matplotlib, all of it Python holding the GIL, and at 10⁶ events about as long waiting on the database
(SQLite's aggregation loop, PostgreSQL's server), with the GIL released. Overlapping the two takes the
imports off the command's wall time. Nothing is shared but ``sys.modules``; an import that fails here
is ignored here and fails again where the module is used, and is reported there.
"""

from __future__ import annotations

import importlib
import threading

#: What the calibration imports after the read: the statistics (scipy) and the plot (matplotlib).
HEAVY_MODULES = ("autopack.calibration.core", "matplotlib.pyplot")


def _import_all() -> None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)  # no display: the report's plot is a file
        for name in HEAVY_MODULES:
            importlib.import_module(name)
    except Exception:  # noqa: BLE001, S110 - raised again, as one clear error, where the module is used
        pass


def start() -> threading.Thread:
    """Begin the imports on a daemon thread; ``join()`` it before using the modules."""
    thread = threading.Thread(target=_import_all, name="autopack-preload", daemon=True)
    thread.start()
    return thread
