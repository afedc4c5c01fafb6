"""Each parameter of record (a field of ``autopack.params``' models) is declared, defaulted and bounded there only.

The command line, the flows' signatures, ``prefect.yaml`` and docs/prefect.md are read against the models, and the
source of the library, the flows and the scripts is read (``ast``) for a literal default given to a name of
record: each of those would be a second definition that can drift from the first.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import typer
import yaml

import flows.calibrate
import flows.drain
import flows.guard
import flows.pipeline
import flows.pull_request
import flows.validate
from autopack.cli.app import load_commands
from autopack.params import CalibrationParams, DrainParams, ParamsModel, PipelineParams

ROOT = Path(__file__).resolve().parents[1]
#: Every name of record: ``PipelineParams`` holds the drain's and the calibration's fields and its own.
RECORD = PipelineParams.model_fields
#: The model of each command built from one.
COMMAND_MODELS: dict[tuple[str, ...], type[ParamsModel]] = {
    ("pipeline", "run"): PipelineParams, ("drain", "batch"): DrainParams, ("calibrate",): CalibrationParams,
}
#: The flows that take a model, and each one's arguments that are not in it (where to look, not what to compute).
FLOW_MODELS = {flows.pipeline.telemetry_pipeline: (PipelineParams, {"database", "checked"}),
               flows.drain.batch_drain: (DrainParams, {"expect_db_id", "database"}),
               flows.calibrate.calibrate: (CalibrationParams,
                                           {"include_run_ids", "output_dir", "expect_db_id", "database"})}
OTHER_FLOWS = (flows.guard.db_identity_guard, flows.validate.validate_single_phase,
               flows.pull_request.open_calibration_pr_flow)
#: Options named like a parameter of record that are the command's own, and why.
OWN_OPTIONS = {
    ("calibrate", "output_dir"): "`autopack calibrate` writes into the working directory, as the original did",
}
#: Source names spelled like a parameter of record whose value there is not the parameter's, and why.
NOT_THE_PARAMETER = {
    ("autopack/api/schemas.py", "run_ids"): "the API's cap on one request body's size, not a limit of the drain",
    ("autopack/calibration/model.py", "method"): "a group's interval method (km_conformal, censored_fit, …)",
    ("autopack/db/models.py", "method"): "the runtime method that moved a stored adaptive level (only aci has one)",
    ("autopack/db/checkpoints.py", "resume"): "the name of an environment variable of the migration tests",
}
SCANNED = ("autopack", "flows", "scripts")


def commands(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    subcommands = getattr(command, "commands", None)  # a group (typer's own click classes)
    if subcommands is not None:
        for name, sub in subcommands.items():
            yield from commands(sub, (*path, name))
    else:
        yield path, command


def every_command() -> list[tuple[tuple[str, ...], click.Command]]:
    return list(commands(typer.main.get_command(load_commands([]))))


# --- the command line --------------------------------------------------------------------------------------


def test_the_walk_sees_every_command_built_from_a_model() -> None:
    assert set(COMMAND_MODELS) <= {path for path, _ in every_command()}


@pytest.mark.parametrize(("path", "command"), every_command(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_option_named_like_a_parameter_is_the_models(path: tuple[str, ...], command: click.Command) -> None:
    """Generated from the model (its default, help and check), or, for a model-less command, the parameter's
    own default and description (``--expect-db-id``)."""
    model = COMMAND_MODELS.get(path)
    for param in command.params:
        name = param.name or ""
        if name not in RECORD or (path[-1], name) in OWN_OPTIONS:
            continue
        field = getattr(param.callback, "field", None)
        if model is not None and name in model.model_fields:
            assert field == name, f"{' '.join(path)} --{name}: not generated from {model.__name__}"
            continue
        assert field is None or field == name, (path, name)
        assert param.default == RECORD[name].default, f"{' '.join(path)} --{name}: a default of its own"
        assert RECORD[name].description in (getattr(param, "help", "") or ""), f"{' '.join(path)} --{name}: own help"
    if model is not None:
        generated = {getattr(p.callback, "field", None) for p in command.params}
        assert set(model.model_fields) <= generated, set(model.model_fields) - generated


def test_a_command_with_an_option_of_its_own_is_caught() -> None:
    @click.command()
    @click.option("--batch-size", default=25)
    def rogue(batch_size: int) -> None: ...

    with pytest.raises(AssertionError, match="batch_size"):
        test_every_option_named_like_a_parameter_is_the_models(("drain", "batch"), rogue)


# --- the flows ---------------------------------------------------------------------------------------------


def flow_arguments() -> Iterator[tuple[Any, inspect.Parameter]]:
    for flow in [*FLOW_MODELS, *OTHER_FLOWS]:
        for parameter in inspect.signature(flow.fn).parameters.values():
            yield flow, parameter


def test_each_flow_takes_its_model_and_names_of_record_only_through_it() -> None:
    for flow, (model, extras) in FLOW_MODELS.items():
        parameters = inspect.signature(flow.fn).parameters
        assert parameters["params"].default == model(), flow.name
        assert set(parameters) - {"params"} == extras, flow.name
    for flow, parameter in flow_arguments():
        if parameter.name in RECORD and parameter.default is not inspect.Parameter.empty:
            assert parameter.default == RECORD[parameter.name].default, (flow.name, parameter.name)


# --- prefect.yaml and docs/prefect.md ----------------------------------------------------------------------


def test_prefect_yaml_sets_fields_of_params_only() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    entrypoints = {"flows/pipeline.py:telemetry_pipeline": PipelineParams, "flows/drain.py:batch_drain": DrainParams}
    for deployment in config["deployments"]:
        parameters = deployment.get("parameters") or {}
        assert set(parameters) <= {"params"}, deployment["name"]
        model = entrypoints[deployment["entrypoint"]]
        assert set(parameters.get("params") or {}) <= set(model.model_fields), deployment["name"]


def test_the_documented_table_is_the_models() -> None:
    """Each row of docs/prefect.md's parameter table: the field's default in each front end and its description."""
    text = (ROOT / "docs" / "prefect.md").read_text(encoding="utf-8")
    table = text.split("<!-- params-table:parameters -->")[1].split("<!-- /params-table:parameters -->")[0]
    rows = {cells[0].strip("`"): cells for cells in ([c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
                                                      for line in table.strip().splitlines()[2:])}
    assert set(rows) == set(RECORD)
    for name, cells in rows.items():
        for column, model in zip(cells[2:5], (PipelineParams, DrainParams, CalibrationParams), strict=True):
            default = model.default(name) if name in model.model_fields else ""
            assert column == ("" if default == "" else "–" if default is None else f"`{json.dumps(default)}`"), name
        assert PipelineParams.bounds(name).replace("|", "\\|") in cells[5], name
        assert cells[6] == RECORD[name].description, name


# --- the source: no literal default for a name of record outside autopack/params.py ----------------------


def literal(node: ast.expr) -> bool:
    """A value written out (``10``, ``"reports"``, ``["QUEUED"]``, ``-1``); None and empty collections say
    "not given" and are not defaults of record."""
    if isinstance(node, ast.Constant):
        return node.value is not None
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.operand, ast.Constant)
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return bool(node.elts) and all(isinstance(element, ast.Constant) for element in node.elts)
    return False


#: Keywords that bound a value (pydantic's ``Field``, typer's and click's options).
BOUND_KEYWORDS = frozenset({"ge", "gt", "le", "lt", "min", "max", "min_length", "max_length", "multiple_of"})


def own_definition(value: ast.expr) -> bool:
    """A literal, or a call given a literal ``default`` or a literal bound (``Field(default=10)``, ``Field(ge=1)``,
    ``typer.Option(1, min=1)``)."""
    if literal(value):
        return True
    return isinstance(value, ast.Call) and any(
        (k.arg == "default" or k.arg in BOUND_KEYWORDS) and literal(k.value) for k in value.keywords)


def literal_defaults(source: str) -> Iterator[tuple[int, str]]:
    """``(line, name)`` of each default or bound of its own given to a name of record: a function's parameter,
    a class's field (``name: T = 10``, ``Field(default=10)``, ``Field(ge=1)``, ``mapped_column(..., default=10)``),
    and a module constant spelled as the name (``BATCH_SIZE = 10``)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = [*zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True),
                     *((a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None)]
            yield from ((d.lineno, a.arg) for a, d in pairs if a.arg in RECORD and own_definition(d))
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                        and statement.target.id in RECORD and statement.value is not None):
                    continue
                if own_definition(statement.value):
                    yield statement.lineno, statement.target.id
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.isupper() and name.lower() in RECORD and literal(node.value):
                yield node.lineno, name.lower()


def test_the_scan_finds_each_kind_of_second_default() -> None:
    source = '''
def drain(batch_size=10, *, workers: int = 2, run_ids=None, states=()): ...
class Options:
    lease_seconds: float = 120.0
    method: str = Field(default="aci")
    resume: bool = Field(default=None)
    provider_concurrency: int | None = Field(default=None, ge=0, le=64)
def drain_command(max_attempts_per_phase: int = typer.Option(None, min=1)): ...
PHASE_TIMEOUT_SECONDS = 900
'''
    assert sorted(name for _, name in literal_defaults(source)) == [
        "batch_size", "lease_seconds", "max_attempts_per_phase", "method", "phase_timeout_seconds",
        "provider_concurrency", "workers"]


def test_no_module_gives_a_name_of_record_a_default_of_its_own() -> None:
    found = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative == "autopack/params.py":
                continue
            found += [f"{relative}:{line}: {name}" for line, name in literal_defaults(path.read_text(encoding="utf-8"))
                      if (relative, name) not in NOT_THE_PARAMETER]
    assert found == [], "a default of record outside autopack/params.py (use the model's):\n" + "\n".join(found)
