"""Telemetry: the one recorder of usage, estimation and escalation events (``autopack.telemetry.recorder``)."""

from autopack.telemetry.recorder import (
    OUTCOME_UNCHECKED,
    CallKey,
    RecordedCall,
    RecordedSuccess,
    TelemetryValueError,
    TelemetryWriteError,
    format_log_line,
    record_call,
    record_escalation,
    record_invalid_call,
    set_phase_outcome,
    settle_call,
    smape_percent,
    unfinished_success,
    waste_ratio,
)

__all__ = [
    "OUTCOME_UNCHECKED",
    "CallKey",
    "RecordedCall",
    "RecordedSuccess",
    "TelemetryValueError",
    "TelemetryWriteError",
    "format_log_line",
    "record_call",
    "record_escalation",
    "record_invalid_call",
    "set_phase_outcome",
    "settle_call",
    "smape_percent",
    "unfinished_success",
    "waste_ratio",
]
