"""``autopack pipeline run``: the ``telemetry-pipeline`` flow from the command line.

Prefect is imported only when the pipeline runs, so other commands stay fast. The flow is loaded as a worker
loads it: by its entrypoint path in the repository (``flows/`` is the repository's folder of entry points, never
installed), with Prefect's own ``load_flow_from_entrypoint``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from autopack.cli.common import ExpectDbIdOption, writable_dir
from autopack.cli.groups import command_group
from autopack.cli.options import params_command
from autopack.db.handle import database_at, expected_db_id
from autopack.errors import AutopackError, InputError
from autopack.execution.runs import require_runs
from autopack.execution.seed_runs import MAX_SEED_WEEKS
from autopack.params import PipelineParams as P
from autopack.prefect_server import STARTUP_TIMEOUT_VARIABLE, prefect_api, startup_failed

if TYPE_CHECKING:
    from prefect import State

    from autopack.pipeline import PipelineResult

#: How long to wait for the temporary local Prefect server (Prefect's default: 20 s).
STARTUP_TIMEOUT_SECONDS = 180
#: The start of the error Prefect raises when its own temporary server (not Linux) does not answer in time.
EPHEMERAL_FAILURE = "Timed out while attempting to connect to ephemeral Prefect API server"

#: The flow ``autopack pipeline run`` runs, as ``prefect.yaml`` names it: relative to the repository.
PIPELINE_ENTRYPOINT = "flows/pipeline.py:telemetry_pipeline"


def repository_root() -> Path:
    """The checkout whose ``flows/`` the command runs: the working directory when it is one (a fresh clone, the
    quickstart), else the checkout this autopack is installed from (an editable install)."""
    import autopack

    relative = Path(PIPELINE_ENTRYPOINT.partition(":")[0])
    for root in (Path.cwd(), Path(autopack.__file__).resolve().parents[1]):
        if (root / relative).is_file():
            return root
    raise InputError(f"no {relative} here: `autopack pipeline run` runs the flows of a checkout of autopack",
                     hint="run it from the repository (or install it editable from one: bash scripts/install.sh)")


def load_pipeline_flow(root: Path) -> Any:
    """The ``telemetry-pipeline`` flow, loaded by path from the checkout ``root`` (its ``flows.*`` imports too)."""
    import sys

    from prefect.flows import load_flow_from_entrypoint

    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # ``from flows.drain import …`` inside the entry point
    path, _, name = PIPELINE_ENTRYPOINT.partition(":")
    return load_flow_from_entrypoint(f"{root / path}:{name}")


pipeline_app = command_group("The whole telemetry pipeline as one Prefect flow run.")


@pipeline_app.command("run")
@params_command(P)
def run(
    params: P,
    init: Annotated[bool, typer.Option("--init", help="Create and migrate the database and the seed runs when missing.")] = False,
    weeks: Annotated[int | None, typer.Option("--weeks", min=1, max=MAX_SEED_WEEKS, metavar="<int>", help="With --init: weeks of seed runs to create (61 phases each; default 1).")] = None,
) -> None:
    """Guard → validate one phase → batch drain → calibrate → gate → pull request."""
    import os

    if weeks is not None and not init:  # it would be ignored: the seed runs are created by --init only
        raise typer.BadParameter("--weeks takes effect with --init only", param_hint="'--weeks'")

    from autopack.cli.console import stop_on_sigterm

    # Prefect answers SIGTERM by crashing the flow run and sending it again to the previous handler: by default
    # that killed the process on the spot, without a line and before its temporary server was stopped
    stop_on_sigterm()
    # Prefect's server reports usage analytics over the internet by default; autopack never needs that.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary local Prefect server needs more than Prefect's default 20 s on a loaded machine.
    os.environ.setdefault(STARTUP_TIMEOUT_VARIABLE, str(STARTUP_TIMEOUT_SECONDS))
    from autopack.pipeline import preflight, prepare_database, summarise

    root = repository_root()
    output_dir = writable_dir(Path(params.output_dir))
    # before anything is created (--init); the flow trusts it (``checked``) and does not check again
    checked = preflight(params, in_deployment=False)
    guard_started = time.time()
    prepared = prepare_database(database_at(), init=init, expect_db_id=expected_db_id(params.expect_db_id),
                                weeks=weeks or 1)
    # the guard runs here, not in the flow: timed here, or the "time:" line would leave out a stage it took
    guard = {"init_and_guard" if init else "guard": round(time.time() - guard_started, 2)}
    if not params.skip_drain and params.run_ids:  # refused before Prefect starts
        with prepared.database.session() as session:
            require_runs(session, params.run_ids)
    for line in prepared.messages:
        typer.echo(line)

    telemetry_pipeline = load_pipeline_flow(root)

    # the flow gets absolute paths and the database this command checked
    params = params.model_copy(update={"target_repo": checked.target_repo, "output_dir": str(output_dir.resolve()),
                                       "expect_db_id": prepared.db_id})

    called_at = time.time()
    try:
        # a server Prefect would start itself is started here, so that it dies with this process, even by SIGKILL
        with prefect_api():
            # a synchronous call: the flow's final State, not an awaitable
            state = cast("State[Any]", telemetry_pipeline(params, database=prepared.database.ref(), checked=checked,
                                                                  return_state=True))
            if not state.is_completed():
                raise AutopackError(f"pipeline {state.type.value.lower()}: {state.message}", exit_code=1)
            result: PipelineResult = state.result()
    except RuntimeError as exc:  # Prefect's own temporary server (where it cannot be made to die with us)
        if EPHEMERAL_FAILURE not in str(exc):
            raise
        raise startup_failed(float(os.environ[STARTUP_TIMEOUT_VARIABLE])) from None
    if result.started_at:  # the flow's body began after Prefect (and its temporary server) started
        timings = {**guard, "prefect_start": round(result.started_at - called_at, 2), **result.timings}
        result = result.model_copy(update={"timings": timings})
    for line in summarise(result):
        typer.echo(line)


@pipeline_app.command("init")
def init_database(
    expect_db_id: ExpectDbIdOption = None,
    weeks: Annotated[int, typer.Option("--weeks", min=1, max=MAX_SEED_WEEKS, metavar="<int>", help="Weeks of seed runs to create (61 phases each).")] = 1,
) -> None:
    """Create and migrate the database and the seed runs that are missing (what `pipeline run --init` does
    first), without running anything: the set-up step before deployments run the pipeline on a worker."""
    from autopack.pipeline import prepare_database

    prepared = prepare_database(database_at(), init=True, expect_db_id=expected_db_id(expect_db_id), weeks=weeks)
    for line in prepared.messages:
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
