"""``autopack pipeline run``: the ``telemetry-pipeline`` flow from the command line.

Prefect is imported only when the pipeline runs, so other commands stay fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from autopack.cli.common import ExpectDbIdOption, writable_dir
from autopack.cli.groups import command_group
from autopack.cli.options import model_option
from autopack.config import get_settings
from autopack.db.handle import database_at, expected_db_id
from autopack.errors import AutopackError
from autopack.execution.runs import require_runs
from autopack.execution.seed_runs import MAX_SEED_WEEKS
from autopack.params import PipelineParams as P

if TYPE_CHECKING:
    from prefect import State

#: Prefect's setting for how long to wait for its temporary local server (Prefect's default: 20 s).
STARTUP_TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
STARTUP_TIMEOUT_SECONDS = 180
#: The start of the error Prefect raises when that server does not answer in time.
EPHEMERAL_FAILURE = "Timed out while attempting to connect to ephemeral Prefect API server"

pipeline_app = command_group("The whole telemetry pipeline as one Prefect flow run.")


@pipeline_app.command("run")
def run(
    init: Annotated[bool, typer.Option("--init", help="Create and migrate the database and the seed runs when missing.")] = False,
    weeks: Annotated[int, typer.Option("--weeks", min=1, max=MAX_SEED_WEEKS, help="With --init: weeks of seed runs to create (61 phases each).")] = 1,
    run_ids: list[str] | None = model_option(P, "run_ids", "--run-id"),
    validate_run_id: str | None = model_option(P, "validate_run_id", "--validate-run-id"),
    validate_phase_id: str | None = model_option(P, "validate_phase_id", "--validate-phase-id"),
    batch_size: int = model_option(P, "batch_size", "--batch-size"),
    states: str = model_option(P, "states", "--states", csv=True),
    max_consecutive_zero_yield: int | None = model_option(
        P, "max_consecutive_zero_yield", "--max-consecutive-zero-yield"
    ),
    max_fingerprint_repeats: int = model_option(P, "max_fingerprint_repeats", "--max-fingerprint-repeats"),
    max_attempts_per_phase: int = model_option(P, "max_attempts_per_phase", "--max-attempts-per-phase"),
    max_timeouts_per_run: int = model_option(P, "max_timeouts_per_run", "--max-timeouts-per-run"),
    phase_timeout_seconds: float = model_option(P, "phase_timeout_seconds", "--phase-timeout-seconds"),
    max_total_minutes: float | None = model_option(P, "max_total_minutes", "--max-total-minutes"),
    skip_run_prefixes: list[str] | None = model_option(P, "skip_run_prefixes", "--skip-run-prefix"),
    workers: int = model_option(P, "workers", "--workers"),
    resume: bool = model_option(P, "resume", "--resume"),
    lease_seconds: float = model_option(P, "lease_seconds", "--lease-seconds"),
    provider_concurrency: int | None = model_option(P, "provider_concurrency", "--provider-concurrency"),
    min_samples: int = model_option(P, "min_samples", "--min-samples"),
    confidence_threshold: float = model_option(P, "confidence_threshold", "--confidence-threshold"),
    target_truncation: float = model_option(P, "target_truncation", "--target-truncation"),
    holdout_fraction: float = model_option(P, "holdout_fraction", "--holdout-fraction"),
    window_weeks: int | None = model_option(P, "window_weeks", "--window-weeks"),
    method: str | None = model_option(P, "method", "--method"),
    dry_run: bool = model_option(P, "dry_run", "--dry-run"),
    target_repo: Path = model_option(P, "target_repo", "--target-repo"),
    output_dir: Path = model_option(P, "output_dir", "--output-dir"),
    skip_drain: bool = model_option(P, "skip_drain", "--skip-drain"),
    expect_db_id: str | None = model_option(P, "expect_db_id", "--expect-db-id"),
) -> None:
    """Guard → validate one phase → batch drain → calibrate → gate → pull request."""
    import os

    # Prefect's server reports usage analytics over the internet by default; autopack never needs that.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary local Prefect server needs more than Prefect's default 20 s on a loaded machine.
    os.environ.setdefault(STARTUP_TIMEOUT_VARIABLE, str(STARTUP_TIMEOUT_SECONDS))
    from autopack.pipeline import check_publish_settings, check_target_repo, prepare_database, summarise
    from flows.pull_request import github_token

    settings = get_settings()
    writable_dir(output_dir)
    target_repo = check_target_repo(target_repo)
    check_publish_settings(dry_run=dry_run, token=None if dry_run else github_token(),
                           repository=settings.github_repository)
    prepared = prepare_database(database_at(), init=init, expect_db_id=expected_db_id(expect_db_id), weeks=weeks)
    if not skip_drain and run_ids:  # refused before Prefect starts
        with prepared.database.session() as session:
            require_runs(session, run_ids)
    for line in prepared.messages:
        typer.echo(line)

    from flows.pipeline import telemetry_pipeline

    # every value was checked by its option already; the flow gets absolute paths and the database it checked
    params = P.pick({**locals(), "target_repo": str(target_repo.resolve()), "output_dir": str(output_dir.resolve()),
                     "expect_db_id": prepared.db_id})

    called_at = time.time()
    try:
        # a synchronous call: the flow's final State, not an awaitable
        state = cast("State[Any]", telemetry_pipeline(**params.model_dump(), database=prepared.database.ref(),
                                                      return_state=True))
    except RuntimeError as exc:
        if EPHEMERAL_FAILURE not in str(exc):
            raise
        raise AutopackError(
            f"the temporary Prefect server did not start within {os.environ[STARTUP_TIMEOUT_VARIABLE]} s",
            hint=f"raise {STARTUP_TIMEOUT_VARIABLE}, or start one (`prefect server start`) and set PREFECT_API_URL",
            exit_code=1,
        ) from None
    if not state.is_completed():
        raise AutopackError(f"pipeline {state.type.value.lower()}: {state.message}", exit_code=1)
    result = state.result()
    if result.get("started_at"):  # the flow's body began after Prefect (and its temporary server) started
        result["timings"] = {"prefect_start": round(result["started_at"] - called_at, 2), **result["timings"]}
    for line in summarise(result):
        typer.echo(line)


@pipeline_app.command("init")
def init_database(
    expect_db_id: ExpectDbIdOption = None,
    weeks: Annotated[int, typer.Option("--weeks", min=1, max=MAX_SEED_WEEKS, help="Weeks of seed runs to create (61 phases each).")] = 1,
) -> None:
    """Create and migrate the database and the seed runs that are missing (what `pipeline run --init` does
    first), without running anything: the set-up step before deployments run the pipeline on a worker."""
    from autopack.pipeline import prepare_database

    prepared = prepare_database(database_at(), init=True, expect_db_id=expected_db_id(expect_db_id), weeks=weeks)
    for line in prepared.messages:
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
