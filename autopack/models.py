"""Compatibility with the original's ``from autopack.models import ...``."""

from autopack.db.models import *  # noqa: F403
from autopack.db.models import (  # noqa: F401
    Base,
    CalibrationProposal,
    CalibrationRun,
    DbMeta,
    DrainResult,
    DrainSession,
    LlmUsageEvent,
    Phase,
    PhaseState,
    ProviderSlot,
    Run,
    TokenBudgetEscalationEvent,
    TokenEstimationV2Event,
)
