"""``autopack drain``: run phases. This module owns the group (``drain_app``) and ``drain one``;
``drain batch`` attaches to the same group from its own module."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from typing import Annotated

import typer

from autopack.cli.common import AllowEmptyDbOption, ExpectDbIdOption, JsonOption, announce, guarded
from autopack.cli.groups import command_group
from autopack.execution.drain_one import check_drainable, drain_one
from autopack.execution.phase_runner import PhaseResult

drain_app = command_group("Drain (execute) queued or failed phases.")


def configure_logging(level: int = logging.INFO) -> None:
    """Show the [TokenEstimationV2] and phase lines on stderr unless the caller configured logging."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(level)
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def format_result(result: PhaseResult) -> str:
    line = (
        f"phase {result.run_id}/{result.phase_id}: {result.final_state} "
        f"(attempts {result.attempts}, llm calls {result.llm_calls}, {result.duration_seconds:.1f}s)"
    )
    if result.recorded_call:
        return (f"{line}\ntelemetry events: {result.telemetry_events} (finished from an earlier execution's recorded "
                "call; no new LLM call)")
    return f"{line}\ntelemetry events written: {result.telemetry_events}"


@drain_app.command("one")
def one(
    run_id: Annotated[str, typer.Option("--run-id", help="Run of the phase.")],
    phase_id: Annotated[str, typer.Option("--phase-id", help="Phase to drain.")],
    force: Annotated[bool, typer.Option("--force", help="Drain even if the run has other QUEUED phases.")] = False,
    no_telemetry: Annotated[
        bool, typer.Option("--no-telemetry", help="Drain without recording telemetry (required to drain while TELEMETRY_DB_ENABLED is off).")
    ] = False,
    expect_db_id: ExpectDbIdOption = None,
    allow_empty_db: AllowEmptyDbOption = False,
    as_json: JsonOption = False,
) -> None:
    """Drain exactly one phase. Exit 0 COMPLETE, 1 FAILED, 2 refused."""
    database = guarded(expect_db_id, allow_empty_db, quiet=True)
    check_drainable(run_id, phase_id, force=force, db=database)  # refusals come alone, before anything else
    announce(database)
    configure_logging()
    result = drain_one(run_id, phase_id, force=force, no_telemetry=no_telemetry, db=database)
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=2, sort_keys=True))
    else:
        typer.echo(format_result(result))
    if not result.success:
        typer.echo(f"error: {result.failure_stage}: {result.error_message}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``drain`` group; if another module created it first, attach ``one`` to that group."""
    for group in app.registered_groups:
        if group.name == "drain" and group.typer_instance is not None:
            if group.typer_instance is not drain_app and not any(
                c.name == "one" for c in group.typer_instance.registered_commands
            ):
                group.typer_instance.command("one")(one)
            return
    app.add_typer(drain_app, name="drain")
