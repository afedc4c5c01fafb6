"""How one flow's steps hand over to the next: results that draw the run graph, refusals that end in one line."""

from __future__ import annotations

from typing import Any

from prefect import State
from prefect.states import Failed

from autopack.errors import AutopackError


def settle(state: State) -> Any:
    """A finished subflow run's result; a refused step raises its ``AutopackError`` again (other failures: theirs).

    The result is linked to the step's run, so passing it as the next step's ``wait_for`` draws the edge
    guard → validate → drain → calibrate → pull request in the parent run's graph (Prefect links a subflow's
    plain return value by itself, but not the data of a ``Completed(message=…)`` state the flows return).
    """
    from prefect.utilities.engine import link_state_to_flow_run_result

    value = state.result()
    if value is not None:
        link_state_to_flow_run_result(state, value)
    return value


def refusal(exc: AutopackError) -> State:
    """The Failed state of a run that refused: its message is the one line (with the hint), and the exception
    rides along so a caller's ``state.result()`` raises it again (``settle``). Prefect logs it as one line
    ("Finished in state Failed('…')"); ``flows.logs`` keeps its traceback out of the run's log."""
    return Failed(message=exc.one_line(), data=exc)
