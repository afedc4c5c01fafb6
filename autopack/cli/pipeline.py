"""``autopack pipeline run``: the ``telemetry-pipeline`` flow from the command line.

Prefect is imported only when the pipeline runs, so other commands stay fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from autopack.cli.common import MAX_COUNT, MAX_DURATION_SECONDS, MAX_WORKERS, ExpectDbIdOption, writable_dir
from autopack.config import get_settings
from autopack.errors import AutopackError
from autopack.execution.runs import check_run_ids

#: Prefect's setting for how long to wait for its temporary local server (Prefect's default: 20 s).
STARTUP_TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
STARTUP_TIMEOUT_SECONDS = 180
#: The start of the error Prefect raises when that server does not answer in time.
EPHEMERAL_FAILURE = "Timed out while attempting to connect to ephemeral Prefect API server"

pipeline_app = typer.Typer(help="The whole telemetry pipeline as one Prefect flow run.", no_args_is_help=True)


@pipeline_app.command("run")
def run(
    init: Annotated[bool, typer.Option("--init", help="Create and migrate the database and the seed runs when missing.")] = False,
    weeks: Annotated[int, typer.Option("--weeks", min=1, max=52, help="With --init: weeks of seed runs to create (61 phases each).")] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Never call GitHub: write the branch to the local git checkout.")] = False,
    target_repo: Annotated[Path, typer.Option("--target-repo", help="Git checkout whose token_estimator.py the pull request edits.")] = Path("."),
    run_ids: Annotated[list[str] | None, typer.Option("--run-id", help="Runs to drain (repeatable; default: all).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=MAX_COUNT)] = 200,
    workers: Annotated[int, typer.Option("--workers", min=1, max=MAX_WORKERS)] = 2,
    max_consecutive_zero_yield: Annotated[int | None, typer.Option("--max-consecutive-zero-yield")] = 10,
    max_fingerprint_repeats: Annotated[int, typer.Option("--max-fingerprint-repeats")] = 3,
    max_attempts_per_phase: Annotated[int, typer.Option("--max-attempts-per-phase")] = 2,
    max_timeouts_per_run: Annotated[int, typer.Option("--max-timeouts-per-run")] = 2,
    phase_timeout_seconds: Annotated[float, typer.Option("--phase-timeout-seconds", min=0.001, max=MAX_DURATION_SECONDS)] = 900,
    target_truncation: Annotated[float, typer.Option("--target-truncation", min=0.001, max=0.5)] = 0.05,
    holdout_fraction: Annotated[float, typer.Option("--holdout-fraction", min=0.05, max=0.9)] = 0.3,
    min_samples: Annotated[int, typer.Option("--min-samples", min=1)] = 5,
    confidence_threshold: Annotated[float, typer.Option("--confidence-threshold", min=0.0, max=1.0)] = 0.7,
    output_dir: Annotated[Path, typer.Option("--output-dir")] = Path("reports"),
    skip_drain: Annotated[bool, typer.Option("--skip-drain", help="Only calibrate and publish (the weekly job).")] = False,
    expect_db_id: ExpectDbIdOption = None,
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
    prepared = prepare_database(settings.resolved_database_url(), init=init, expect_db_id=expect_db_id, weeks=weeks)
    if not skip_drain:
        check_run_ids(run_ids or [], url=settings.resolved_database_url(), expect_db_id=prepared.db_id)
    for line in prepared.messages:
        typer.echo(line)

    from flows.pipeline import telemetry_pipeline

    called_at = time.time()
    try:
        state = telemetry_pipeline(
            run_ids=run_ids or [],
            batch_size=batch_size,
            workers=workers,
            max_consecutive_zero_yield=max_consecutive_zero_yield,
            max_fingerprint_repeats=max_fingerprint_repeats,
            max_attempts_per_phase=max_attempts_per_phase,
            max_timeouts_per_run=max_timeouts_per_run,
            phase_timeout_seconds=phase_timeout_seconds,
            target_truncation=target_truncation,
            holdout_fraction=holdout_fraction,
            min_samples=min_samples,
            confidence_threshold=confidence_threshold,
            dry_run=dry_run,
            target_repo=str(target_repo.resolve()),
            output_dir=str(output_dir.resolve()),
            skip_drain=skip_drain,
            expect_db_id=prepared.db_id,
            return_state=True,
        )
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
    weeks: Annotated[int, typer.Option("--weeks", min=1, max=52, help="Weeks of seed runs to create (61 phases each).")] = 1,
) -> None:
    """Create and migrate the database and the seed runs that are missing (what `pipeline run --init` does
    first), without running anything: the set-up step before deployments run the pipeline on a worker."""
    from autopack.pipeline import prepare_database

    prepared = prepare_database(get_settings().resolved_database_url(), init=True, expect_db_id=expect_db_id,
                                weeks=weeks)
    for line in prepared.messages:
        typer.echo(line)


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
