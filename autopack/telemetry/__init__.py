"""Telemetry: the one recorder of usage, estimation and escalation events (``autopack.telemetry.recorder``)."""

from autopack.telemetry.recorder import (
    CallKey,
    RecordedCall,
    TelemetryWriteError,
    format_log_line,
    record_call,
    record_escalation,
    set_phase_outcome,
    smape_percent,
    waste_ratio,
)

__all__ = [
    "CallKey",
    "RecordedCall",
    "TelemetryWriteError",
    "format_log_line",
    "record_call",
    "record_escalation",
    "set_phase_outcome",
    "smape_percent",
    "waste_ratio",
]
