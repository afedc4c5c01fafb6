#!/usr/bin/env python
"""The parameter tables of docs/prefect.md, generated from the parameter models (``autopack.params``), the real command
line and ``prefect.yaml``, so they are regenerated rather than hand-edited.

    .venv/bin/python scripts/params_table.py            # print the tables
    .venv/bin/python scripts/params_table.py --write    # rewrite them in docs/prefect.md
    .venv/bin/python scripts/params_table.py --check    # exit 1 if docs/prefect.md is out of date (tests/test_params.py)

Each table sits between ``<!-- params-table:NAME -->`` and ``<!-- /params-table:NAME -->`` in docs/prefect.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import typer  # noqa: E402
import yaml  # noqa: E402

from autopack.params import CalibrationParams, DrainParams, ParamsModel, PipelineParams  # noqa: E402

TABLES_DOC = ROOT / "docs" / "prefect.md"
PREFECT_YAML = ROOT / "prefect.yaml"
#: (column heading, model, command path of ``autopack``), in the table's order.
FRONT_ENDS: tuple[tuple[str, type[ParamsModel], tuple[str, ...]], ...] = (
    ("`pipeline run` · `telemetry-pipeline`", PipelineParams, ("pipeline", "run")),
    ("`drain batch` · `batch-drain`", DrainParams, ("drain", "batch")),
    ("`calibrate` (command and flow)", CalibrationParams, ("calibrate",)),
)
FLOWS = {"flows/pipeline.py:telemetry_pipeline": "telemetry-pipeline", "flows/drain.py:batch_drain": "batch-drain"}


def _value(value: Any) -> str:
    return "–" if value is None else f"`{json.dumps(value)}`"


def _command(path: tuple[str, ...]) -> Any:
    from autopack.cli.app import load_commands

    command = typer.main.get_command(load_commands([]))  # every command module (they load lazily)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command


def flags(path: tuple[str, ...]) -> dict[str, str]:
    """Field name -> the option of ``autopack <path>`` built from it (``run_ids`` -> ``--run-id``)."""
    found = {}
    for param in _command(path).params:
        field = getattr(param.callback, "field", None)
        if field is not None:
            found[field] = max(param.opts, key=len)
    return found


def parameters_table() -> str:
    names = list(PipelineParams.model_fields)
    for _, model, _ in FRONT_ENDS:
        names += [name for name in model.model_fields if name not in names]
    options = [flags(path) for _, _, path in FRONT_ENDS]
    head = ["parameter", "flag", *(heading for heading, _, _ in FRONT_ENDS), "allowed", "meaning"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        spellings = sorted({found[name] for found in options if name in found})
        defaults = [_value(model.default(name)) if name in model.model_fields else "" for _, model, _ in FRONT_ENDS]
        model = next(model for _, model, _ in FRONT_ENDS if name in model.model_fields)
        bounds = model.bounds(name)
        cells = [f"`{name}`", " ".join(f"`{flag}`" for flag in spellings) or "–", *defaults,
                 f"`{bounds}`" if bounds else "", model.model_fields[name].description or ""]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def deployments_table() -> str:
    config = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))
    rows = ["| deployment | flow | what | schedule | fields of `params` set in `prefect.yaml` (the rest: the model's "
            "defaults) |",
            "|---|---|---|---|---|"]
    for deployment in config["deployments"]:
        when = ", ".join(f"`{s['cron']}` {s.get('timezone', '')}".strip()
                         + ("" if s.get("active", True) else ", deployed paused")
                         for s in deployment.get("schedules") or [])
        limit = deployment.get("concurrency_limit")
        if isinstance(limit, dict):
            when += f"; {limit['limit']} run at a time (`{limit.get('collision_strategy', 'ENQUEUE')}`)"
        parameters = ", ".join(f"`{key}: {json.dumps(value)}`"
                               for key, value in ((deployment.get("parameters") or {}).get("params") or {}).items())
        flow = FLOWS.get(deployment["entrypoint"], deployment["entrypoint"])
        rows.append(f"| `{deployment['name']}` | `{flow}` | {deployment.get('description', '')} | {when or 'manual'} "
                    f"| {parameters or '–'} |")
    return "\n".join(rows)


TABLES: dict[str, Callable[[], str]] = {"deployments": deployments_table, "parameters": parameters_table}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- params-table:{name} -->\n)(.*?)(<!-- /params-table:{name} -->)", re.DOTALL)


def _fill(table: str, match: re.Match[str]) -> str:
    return f"{match.group(1)}{table}\n{match.group(3)}"


def render(readme: str) -> str:
    """``readme`` with every table regenerated; ``ValueError`` if a table's markers are missing."""
    for name, make in TABLES.items():
        pattern = _block(name)
        if not pattern.search(readme):
            raise ValueError(f"docs/prefect.md has no <!-- params-table:{name} --> block")
        readme = pattern.sub(partial(_fill, make()), readme)
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the tables in docs/prefect.md")
    mode.add_argument("--check", action="store_true", help="exit 1 if docs/prefect.md's tables are out of date")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        for name, make in TABLES.items():
            print(f"<!-- params-table:{name} -->\n{make()}\n<!-- /params-table:{name} -->\n")
        return 0
    current = TABLES_DOC.read_text(encoding="utf-8")
    wanted = render(current)
    if args.write:
        TABLES_DOC.write_text(wanted, encoding="utf-8")
        return 0
    if wanted != current:
        print("error: docs/prefect.md's parameter tables are out of date (run: .venv/bin/python scripts/params_table.py "
              "--write)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
