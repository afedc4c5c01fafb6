"""autopack: token telemetry for LLM agent phases, turned into calibrated ``max_tokens`` budgets."""

__version__ = "0.1.0"
