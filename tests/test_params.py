"""Parameters defined once (``autopack.params``): the commands, the Prefect flows, ``prefect.yaml``, the library and
docs/prefect.md all take their names, defaults, bounds and descriptions from the models, and refuse a bad value with the
model's own message."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_runner import run_cli
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import ValidationError as SchemaValidationError
from prefect.utilities.schema_tools.validation import validate as validate_schema
from test_pipeline_flow import project_checkout

import flows.calibrate
import flows.drain
import flows.pipeline
from autopack import params
from autopack.calibration import drift
from autopack.calibration import run_calibration as real_run_calibration
from autopack.calibration.result import load_result
from autopack.cli import pipeline as pipeline_command
from autopack.db.engine import session_scope
from autopack.db.handle import Database, open_database
from autopack.errors import InputError
from autopack.execution import batch
from autopack.execution.batch import BatchOptions
from autopack.execution.seed_runs import V4_RUN_ID, ensure_seed_runs
from autopack.params import CalibrationParams, DrainParams, ParamsModel, PipelineParams
from autopack.telemetry.bounds import INT32

ROOT = Path(__file__).resolve().parents[1]
FLOWS = {"telemetry-pipeline": (flows.pipeline.telemetry_pipeline, PipelineParams),
         "batch-drain": (flows.drain.batch_drain, DrainParams),
         "calibrate": (flows.calibrate.calibrate, CalibrationParams)}
#: Flow parameters that are not parameters of the flow's model: where to look, not what to compute.
FLOW_EXTRAS = {"batch-drain": {"expect_db_id", "database"},
               "calibrate": {"include_run_ids", "output_dir", "expect_db_id", "database"},
               "telemetry-pipeline": {"database", "checked"}}
COMMANDS = {("pipeline", "run"): PipelineParams, ("drain", "batch"): DrainParams, ("calibrate",): CalibrationParams}
#: Bounds as JSON schema keywords: what the Prefect UI and server check.
BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "minItems", "type", "items")


def model_message(model: type[ParamsModel], **values: Any) -> str:
    """The model's own refusal of ``values``, without the field name in front."""
    with pytest.raises(InputError) as info:
        model(**values)
    (name,) = values
    return info.value.message.removeprefix(f"{name}: ")


def flag(name: str) -> str:
    return {"run_ids": "--run-id", "skip_run_prefixes": "--skip-run-prefix"}.get(name, "--" + name.replace("_", "-"))


def schema_bounds(prop: dict[str, Any]) -> list[dict[str, Any]]:
    """The bounds of one property of a JSON schema, per branch (``anyOf`` for optional values)."""
    return [{k: v for k, v in branch.items() if k in BOUND_KEYS} for branch in prop.get("anyOf", [prop])]


# --- one definition --------------------------------------------------------------------------------------


@pytest.mark.parametrize("flow_name", list(FLOWS))
def test_each_flow_takes_its_model_as_one_parameter_whose_schema_is_the_models(flow_name: str) -> None:
    """Prefect renders ``params`` as a form from the model's own schema: defaults, bounds and descriptions."""
    flow, model = FLOWS[flow_name]
    signature = inspect.signature(flow.fn)
    assert signature.parameters["params"].annotation in (model, model.__name__)
    assert signature.parameters["params"].default == model()
    assert set(signature.parameters) - {"params"} == FLOW_EXTRAS[flow_name]
    schema = parameter_schema(flow).model_dump_for_openapi()
    assert schema["properties"]["params"]["default"] == model().model_dump(mode="json")
    assert schema["definitions"][model.__name__]["properties"] == model.model_json_schema()["properties"]


@pytest.mark.parametrize("path", list(COMMANDS))
def test_each_command_takes_its_models_fields_with_their_defaults_and_descriptions(path: tuple[str, ...]) -> None:
    table = load_params_table()
    model = COMMANDS[path]
    options = {param.callback.field: param for param in table._command(path).params  # type: ignore[attr-defined]
               if getattr(param.callback, "field", None)}
    assert set(options) == set(model.model_fields)
    for name, option in options.items():
        default = model.default(name)
        assert option.default == (",".join(default) if name == "states" else (default or None) if default == []
                                  else default), name
        assert model.model_fields[name].description in option.help, name
        assert flag(name) in option.opts, name


def test_the_shared_constants_agree_with_the_schema_and_the_calibration() -> None:
    """``autopack.params`` stays light (no ORM, no scipy): the values it restates are pinned here."""
    assert params.MAX_COUNT == INT32[1]
    assert "EXECUTING" not in params.DRAINABLE_STATES
    assert set(params.DEFAULT_DRAIN_STATES) <= set(params.DRAINABLE_STATES)
    assert set(params.SHIPPABLE_METHODS) < set(drift.METHODS)


# --- the same bad value, the same refusal ------------------------------------------------------------------

BAD_VALUES = [
    ("holdout_fraction", 0.9),
    ("target_truncation", 0.5),
    ("confidence_threshold", 1.5),
    ("min_samples", 0),
    ("batch_size", 2**31),
    ("workers", 65),
    ("phase_timeout_seconds", 0),
    ("states", ["COMPLETE"]),
    ("method", "rolling"),
]


def cli_value(value: Any) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_a_bad_value_is_refused_by_every_command_with_the_models_message(
    name: str, value: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    message = model_message(PipelineParams, **{name: value})
    for path, model in COMMANDS.items():
        if name not in model.model_fields:
            continue
        code, _, err = run_cli(capsys, *path, flag(name), cli_value(value))
        assert code == 2, (path, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: Invalid value for '{flag(name)}': {message}"), err


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_a_bad_value_is_refused_by_every_flow_and_by_prefects_schema_with_the_models_message(
    name: str, value: Any, prefect_harness: None
) -> None:
    message = model_message(PipelineParams, **{name: value})
    for flow_name, (flow, model) in FLOWS.items():
        if name not in model.model_fields:
            continue
        state = flow(params={name: value}, return_state=True)
        assert state.is_failed() and f"{name}: {message}" in (state.message or ""), (flow_name, state.message)
        with pytest.raises(SchemaValidationError, match=name):  # what the server checks `deployment run -p` with
            validate_schema({"params": {name: value}}, parameter_schema(flow).model_dump_for_openapi(),
                            raise_on_error=True)


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_a_bad_value_is_refused_by_the_library_with_the_models_message(name: str, value: Any) -> None:
    message = f"{name}: {model_message(PipelineParams, **{name: value})}"
    if name in DrainParams.model_fields:
        with pytest.raises(InputError) as info:
            BatchOptions(**{name: value})
        assert info.value.message == message


def test_a_batch_option_changed_after_construction_is_checked_by_the_model_again() -> None:
    options = BatchOptions()
    options.workers = 0
    with pytest.raises(InputError, match="workers: Input should be greater than or equal to 1"):
        options.validate()


# --- --holdout-fraction 0 ------------------------------------------------------------------------------------


def test_holdout_fraction_0_means_nothing_held_out_and_nothing_shipped_everywhere(
    seeded_calibration: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for model in (CalibrationParams, PipelineParams):
        assert model(holdout_fraction=0).holdout_fraction == 0
    for flow_name, (flow, _) in FLOWS.items():
        if flow_name != "batch-drain":
            flow.validate_parameters({"params": {"holdout_fraction": 0}})
            schema = parameter_schema(flow).model_dump_for_openapi()
            validate_schema({"params": {"holdout_fraction": 0}}, schema, raise_on_error=True)
    result = real_run_calibration(open_database(seeded_calibration), CalibrationParams(holdout_fraction=0),
                                  output_dir=tmp_path / "library")
    assert result.backtest.test_n == 0 and not result.gate.passed
    assert any("no held-out calls" in reason for reason in result.gate.reasons)
    code, _, _ = run_cli(capsys, "calibrate", "--holdout-fraction", "0", "--json", "--output-dir", str(tmp_path / "cli"))
    assert code == 0
    (json_path,) = (tmp_path / "cli").glob("*.json")
    from_cli = load_result(json_path)
    assert from_cli.backtest.test_n == 0 and from_cli.gate.reasons == result.gate.reasons


@pytest.fixture
def seeded_calibration(db_url: str) -> str:
    from test_calibration import SEEDED_PHASES, insert

    from synthetic_telemetry import simulate

    insert(db_url, simulate(SEEDED_PHASES, seed=3))
    return db_url


# --- prefect.yaml and docs/prefect.md -------------------------------------------------------------------------------


def flow_of(entrypoint: str) -> Any:
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def check_deployment_parameters(entrypoint: str, parameters: dict[str, Any]) -> None:
    """What Prefect checks (the server's schema check, the flow's own validation), and no unknown names."""
    flow = flow_of(entrypoint)
    schema = parameter_schema(flow).model_dump_for_openapi()
    model = inspect.signature(flow.fn).parameters["params"].default
    unknown = (set(parameters) - set(schema["properties"])) | (set(parameters.get("params") or {})
                                                                - set(type(model).model_fields))
    if unknown:
        raise AssertionError(f"{entrypoint}: unknown parameters {sorted(unknown)}")
    validate_schema(parameters, schema, raise_on_error=True)
    flow.validate_parameters(parameters)


def deployments() -> list[dict[str, Any]]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))["deployments"]


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["name"])
def test_every_deployments_parameters_are_valid_for_its_flow(deployment: dict[str, Any]) -> None:
    check_deployment_parameters(deployment["entrypoint"], deployment.get("parameters") or {})


@pytest.mark.parametrize(("change", "error"), [
    ({"batch_sise": 30}, AssertionError),  # a typo is not a new parameter
    ({"batch_size": 0}, SchemaValidationError),
    ({"holdout_fraction": 0.95}, SchemaValidationError),
    ({"states": ["EXECUTING"]}, SchemaValidationError),
])
def test_a_wrong_deployment_parameter_is_caught(change: dict[str, Any], error: type[Exception]) -> None:
    entrypoint = "flows/pipeline.py:telemetry_pipeline"
    parameters = copy.deepcopy(deployments()[0].get("parameters") or {})
    parameters["params"] = {**parameters.get("params", {}), **change}
    assert deployments()[0]["entrypoint"] == entrypoint
    with pytest.raises(error):
        check_deployment_parameters(entrypoint, parameters)


def load_params_table() -> Any:
    spec = importlib.util.spec_from_file_location("params_table", ROOT / "scripts" / "params_table.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_documented_parameter_tables_are_the_generated_ones() -> None:
    table = load_params_table()
    readme = (ROOT / "docs" / "prefect.md").read_text(encoding="utf-8")
    assert table.render(readme) == readme, "run: .venv/bin/python scripts/params_table.py --write"


def test_the_generated_parameter_table_lists_every_field_with_each_front_ends_default() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line.split(" | ") for line in
            load_params_table().parameters_table().splitlines()[2:]}
    for name in PipelineParams.model_fields:
        assert name in rows
    assert rows["batch_size"][2:4] == ["`500`", "`10`"]  # pipeline, drain batch
    assert rows["holdout_fraction"][2:5] == ["`0.3`", "", "`0.3`"]
    assert "0 ≤ x < 0.9" in rows["holdout_fraction"][5]


# --- the pipeline passes its parameters on unchanged -------------------------------------------------------

DRAIN_VALUES: dict[str, Any] = {
    "run_ids": [V4_RUN_ID], "batch_size": 3, "states": ["QUEUED", "TIMEOUT"], "max_consecutive_zero_yield": 4,
    "max_fingerprint_repeats": 5, "max_attempts_per_phase": 3, "max_timeouts_per_run": 4,
    "phase_timeout_seconds": 321.5, "max_total_minutes": 30.0, "skip_run_prefixes": ["zz-"], "workers": 1,
    "resume": False, "lease_seconds": 45.0, "provider_concurrency": 2,
}
CALIBRATION_VALUES: dict[str, Any] = {
    "min_samples": 7, "confidence_threshold": 0.6, "target_truncation": 0.07, "holdout_fraction": 0.25, "method": "aci",
    "window_weeks": 520, "since": datetime(2020, 1, 1), "max_rise_per_run": 0.0125,
}


def test_the_non_default_values_are_not_the_defaults() -> None:
    """Else the pass-through tests below could not tell a value passed on from a default filled in."""
    values = {**DRAIN_VALUES, **CALIBRATION_VALUES}
    assert [name for name, value in values.items() if value == PipelineParams.default(name)] == ["resume"]
    assert set(DRAIN_VALUES) == set(DrainParams.model_fields)
    assert set(CALIBRATION_VALUES) == set(CalibrationParams.model_fields)


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """The library calls of the drain and the calibration, recorded, then made for real."""
    seen: dict[str, list[Any]] = {"drain": [], "calibration": []}
    real_drain = batch.run_batch_drain

    def drain_spy(params: DrainParams, database: Database, **kwargs: Any) -> Any:
        seen["drain"].append(params)
        return real_drain(params, database, **kwargs)

    def calibration_spy(database: Database, params: CalibrationParams, **kwargs: Any) -> Any:
        seen["calibration"].append((params, kwargs))
        return real_run_calibration(database, params, **kwargs)

    monkeypatch.setattr(flows.drain, "run_batch_drain", drain_spy)
    monkeypatch.setattr(flows.calibrate, "run_calibration", calibration_spy)
    return seen


def assert_received(seen: dict[str, list[Any]]) -> None:
    (drain,) = seen["drain"]
    assert drain == DrainParams(**DRAIN_VALUES)
    ((calibration, kwargs),) = seen["calibration"]
    assert calibration == CalibrationParams(**CALIBRATION_VALUES)
    assert kwargs["include_run_ids"] == [V4_RUN_ID]


def test_the_pipeline_flow_passes_its_drain_and_calibration_parameters_on_unchanged(
    db_url: str, prefect_harness: None, tmp_path: Path, spies: dict[str, list[Any]]
) -> None:
    with session_scope(db_url) as session:
        ensure_seed_runs(session, [V4_RUN_ID])
    state = flows.pipeline.telemetry_pipeline(PipelineParams(
        **DRAIN_VALUES, **CALIBRATION_VALUES, dry_run=True, target_repo=str(project_checkout(tmp_path / "target")),
        output_dir=str(tmp_path / "reports")), return_state=True,
    )
    assert state.is_completed(), state.message
    assert_received(spies)


def test_the_pipeline_command_passes_its_parameters_to_the_flow_unchanged(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.states import Failed

    with session_scope(db_url) as session:
        ensure_seed_runs(session, [V4_RUN_ID])
    received: list[PipelineParams] = []

    def flow_spy(params: PipelineParams, **kwargs: Any) -> Any:
        received.append(params)
        return Failed(message="stopped by the test")

    monkeypatch.setattr(pipeline_command, "load_pipeline_flow", lambda root: flow_spy)
    values = {**DRAIN_VALUES, **CALIBRATION_VALUES}
    args = ["pipeline", "run", "--dry-run", "--target-repo", str(project_checkout(tmp_path / "target"))]
    for name, value in values.items():
        if isinstance(value, bool):
            args += [flag(name)] if value else []
        elif isinstance(value, list) and name != "states":
            for item in value:
                args += [flag(name), item]
        else:
            args += [flag(name), cli_value(value)]
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and "stopped by the test" in err
    (given,) = received
    assert {name: getattr(given, name) for name in values} == values
