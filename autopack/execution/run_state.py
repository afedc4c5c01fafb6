"""A run's state, as its phases tell it.

``runs.state`` is written once, when a run is created (``RUN_CREATED``); draining moves phases, not runs.
So the state shown to a user is derived from the run's phase counts, in the original Autopack's words
(its ``RunState``), where they fit:

* ``PHASE_EXECUTION``: a phase is executing now;
* ``QUEUED``: phases wait to be drained (none executing);
* ``DONE_SUCCESS``: every phase is COMPLETE (or SKIPPED);
* ``DONE_FAILED_REQUIRES_HUMAN_REVIEW``: every phase is finished and some FAILED or timed out (a
  ``DONE_FAILED_*`` state the original recorded is kept: it says why);
* otherwise the recorded state: a run without phases, or one with phase states autopack does not move
  (the original's GATE, CI_RUNNING), whose state is the original's own account.
"""

from __future__ import annotations

from collections.abc import Mapping

from autopack.db.models import PhaseState

DONE_SUCCESS = "DONE_SUCCESS"
DONE_FAILED = "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
PHASE_EXECUTION = "PHASE_EXECUTION"
QUEUED = "QUEUED"


def run_state(recorded: str, phases: Mapping[str, int]) -> str:
    """The state of a run whose phases number ``phases`` (state → count); ``recorded`` is ``runs.state``."""
    present = {state for state, count in phases.items() if count > 0}
    if not present:
        return recorded
    if PhaseState.EXECUTING in present:
        return PHASE_EXECUTION
    if PhaseState.QUEUED in present:
        return QUEUED
    if present <= {PhaseState.COMPLETE, PhaseState.SKIPPED}:
        return DONE_SUCCESS
    if present <= set(PhaseState.TERMINAL):
        return recorded if recorded.startswith("DONE_FAILED") else DONE_FAILED
    return recorded
