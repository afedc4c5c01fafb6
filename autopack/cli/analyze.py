"""``autopack analyze v3``: the original's log analyser (also ``scripts/analyze_token_telemetry_v3.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from autopack.cli.groups import command_group

analyze_app = command_group("Analyse telemetry logs.")


@analyze_app.command("v3")
def v3(
    log_dir: Annotated[Path, typer.Option("--log-dir", help="Directory searched recursively.")] = Path(
        ".autonomous_runs"
    ),
    pattern: Annotated[str, typer.Option("--pattern", help="File name pattern.")] = "*.log",
    success_only: Annotated[bool, typer.Option("--success-only", help="Only V2 records with success=True.")] = False,
    stratify: Annotated[
        bool, typer.Option("--stratify", help="Tier-1 metrics by category, complexity, deliverables.")
    ] = False,
    under_multiplier: Annotated[
        float, typer.Option("--under-multiplier", help="Underestimated when actual > predicted × this.")
    ] = 1.0,
    output: Annotated[Path | None, typer.Option("--output", help="Write the markdown here (else print).")] = None,
) -> None:
    """Tier 1 (risk), Tier 2 (cost) and diagnostics from [TokenEstimationV2] log lines."""
    from autopack.cli.common import writable_dir
    from autopack.errors import InputError
    from autopack.legacy.analyze_v3 import run

    if output is not None:
        if output.is_dir():
            raise InputError(f"--output {output} is a directory", hint="name the markdown file to write")
        writable_dir(output.parent, "the directory of --output")
    text, result = run(log_dir, pattern=pattern, success_only=success_only, with_strata=stratify,
                       under_multiplier=under_multiplier, output=output)
    if output is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"{result['records']} records analysed; verdict {result['tier1']['verdict']}; report {output}")


def register(app: typer.Typer) -> None:
    app.add_typer(analyze_app, name="analyze")
