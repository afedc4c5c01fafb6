"""Calibration (T5): budget ``max_tokens`` for a target truncation rate, with a backtest and a gate.

Public entry point: ``run_calibration`` (database → report, JSON, plot, ``calibration_runs`` row), which returns a
``CalibrationResult`` (``result``: the typed JSON; ``load_result`` reads a file back). The
statistics are pure functions in ``stats``, ``model``, ``fit``, ``step``, ``backtest`` and ``core`` (the gate),
and ``assemble`` builds the result from the gate's decision; see
docs/calibration.md for the method and the reasons behind it. Importing outside telemetry is
``autopack.telemetry.ingest``; the original's log analyser is ``autopack.legacy.analyze_v3``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["METHOD_VERSION", "CalibrationResult", "NoUsableSamplesError", "load_result", "run_calibration"]

if TYPE_CHECKING:  # pragma: no cover
    from autopack.calibration.result import METHOD_VERSION, CalibrationResult, load_result
    from autopack.calibration.runner import NoUsableSamplesError, run_calibration


def __getattr__(name: str) -> Any:
    """Lazy: importing the package does not pull in numpy/scipy/matplotlib until something is used."""
    if name == "run_calibration" or name == "NoUsableSamplesError":
        from autopack.calibration import runner

        return getattr(runner, name)
    if name == "CalibrationResult" or name == "load_result":
        from autopack.calibration import result

        return getattr(result, name)
    if name == "METHOD_VERSION":
        from autopack.calibration.result import METHOD_VERSION

        return METHOD_VERSION
    raise AttributeError(name)
