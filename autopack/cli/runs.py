"""``autopack runs``: create the telemetry seed runs and list runs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from pydantic import ValidationError

from autopack.cli.common import ExpectDbIdOption, guarded
from autopack.cli.groups import command_group
from autopack.db.models import Phase, Run
from autopack.errors import InputError, validation_summary
from autopack.execution.run_state import run_state
from autopack.execution.runs import create_run
from autopack.execution.seed_runs import SEED_RUNS, V4_RUN_ID, ensure_seed_runs, telemetry_collection_v4_spec
from autopack.execution.spec import RunSpec
from autopack.run_order import run_order
from autopack.taxonomy import canonical_category, canonical_complexity

runs_app = command_group("Runs and their phases.")


def mix_summary(spec: RunSpec) -> list[str]:
    """Phases per canonical category and complexity, counted from the spec (not hand-written)."""
    by_category: dict[str, Counter[str]] = {}
    for phase in spec.phases:
        by_category.setdefault(canonical_category(phase.category), Counter())[canonical_complexity(phase.complexity)] += 1
    lines = []
    for category, counts in sorted(by_category.items()):
        detail = ", ".join(f"{n} {cx}" for cx, n in sorted(counts.items()))
        lines.append(f"  {category}: {_phases(sum(counts.values()))} ({detail})")
    return lines



def _phases(count: int, kind: str = "") -> str:
    """``1 QUEUED phase``, ``10 QUEUED phases``."""
    return f"{count} {kind}phase{'' if count == 1 else 's'}"

@runs_app.command("create-telemetry-run")
def create_telemetry_run(
    run_id: Annotated[str, typer.Option("--run-id", help="Id of the run to create.")] = V4_RUN_ID,
    replace: Annotated[bool, typer.Option("--replace", help="Delete and recreate the run and its phases if it exists (its telemetry is kept).")] = False,
    expect_db_id: ExpectDbIdOption = None,
) -> None:
    """Create the ten-phase telemetry collection run (the original's telemetry-collection-v4)."""
    try:
        spec = telemetry_collection_v4_spec(run_id)
    except ValidationError as exc:
        raise InputError(f"--run-id {run_id!r} is not a valid run id: {validation_summary(exc)}",
                         hint="use letters, digits and . _ : - (starting with a letter or digit, at most 201)") from exc
    database = guarded(expect_db_id, allow_empty=True)
    with database.session() as session:
        create_run(session, spec, replace=replace, source="seed")
    typer.echo(f"created run {run_id}: {_phases(len(spec.phases), 'QUEUED ')}")
    for line in mix_summary(spec):
        typer.echo(line)
    typer.echo(f"next: autopack drain one --run-id {run_id} --phase-id {spec.phases[0].phase_id} --force")


@runs_app.command("seed")
def seed(
    run_id: Annotated[list[str] | None, typer.Option("--run-id", help="Seed run to create (repeatable; default: all).")] = None,
    expect_db_id: ExpectDbIdOption = None,
) -> None:
    """Create the missing telemetry seed runs (v4, v5, v6, v7: 61 phases)."""
    database = guarded(expect_db_id, allow_empty=True)
    with database.session() as session:
        created = ensure_seed_runs(session, run_id or list(SEED_RUNS))
    typer.echo(f"created: {', '.join(created)}" if created else "every seed run already exists")


@runs_app.command("list")
def list_runs(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array (an object per run) instead of text.")] = False,
    expect_db_id: ExpectDbIdOption = None,
) -> None:
    """Each run with its state (told by its phases) and its phase counts by state; reads only."""
    database = guarded(expect_db_id, allow_empty=True, quiet=as_json, read_only=True)
    with database.session() as session:
        runs = session.execute(sa.select(Run.id, Run.state, Run.created_at).order_by(Run.created_at, *run_order(Run.id))).all()
        counts = session.execute(sa.select(Phase.run_id, Phase.state, sa.func.count()).group_by(Phase.run_id, Phase.state)).all()
    states: dict[str, dict[str, int]] = {}
    for rid, state, n in counts:
        states.setdefault(rid, {})[state] = n
    listed = [(rid, recorded, created, dict(sorted(states.get(rid, {}).items()))) for rid, recorded, created in runs]
    if as_json:
        typer.echo(json.dumps([{"run_id": rid, "state": run_state(recorded, phases), "recorded_state": recorded,
                                "created_at": created.isoformat() if created else None, "phases": phases}
                               for rid, recorded, created, phases in listed], indent=2))
        return
    if not listed:
        typer.echo("no runs")
        return
    table = [("RUN", "STATE", "PHASES")] + [
        (rid, run_state(recorded, phases), ", ".join(f"{s} {n}" for s, n in phases.items()) or "no phases")
        for rid, recorded, _, phases in listed
    ]
    id_width = max(len(line[0]) for line in table)
    state_width = max(len(line[1]) for line in table)
    for rid, state, phase_counts in table:
        typer.echo(f"{rid:<{id_width}}  {state:<{state_width}}  {phase_counts}")


def load_run_spec(path: Path) -> RunSpec:
    """A run spec from a JSON file, or ``InputError`` naming the first bad field (the API's 422, as one line)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read the run spec {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InputError(f"the run spec {path} is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # the parser's own limit: the API answers such a body with 422 as well
        raise InputError(f"the run spec {path} nests arrays or objects too deeply to be a run spec",
                         hint="a run spec is an object of phases, a few levels deep") from exc
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InputError(f"run spec {path}: {where}: {message}{more}",
                         hint="its fields are those of `POST /runs`: RunSpec in the API docs at /docs") from exc


@runs_app.command("create")
def create(
    spec_file: Annotated[Path, typer.Argument(metavar="SPEC_FILE", help="JSON run spec: run_id, goal, phases[...] (the API's RunSpec).")],
    replace: Annotated[bool, typer.Option("--replace", help="Delete and recreate the run and its phases if it exists (its telemetry is kept).")] = False,
    expect_db_id: ExpectDbIdOption = None,
) -> None:
    """Create a run and its QUEUED phases from a spec file, validated exactly as `POST /runs` validates it."""
    spec = load_run_spec(spec_file)
    database = guarded(expect_db_id, allow_empty=True)
    with database.session() as session:
        create_run(session, spec, replace=replace, source="cli", other_id=f"change run_id in {spec_file}")
    typer.echo(f"created run {spec.run_id}: {_phases(len(spec.phases), 'QUEUED ')}")


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
