"""The one database handle: library code takes it, entry points open it, and a pipeline run guards once.

The source checks read the code (``ast``): a ``url: str | None`` database parameter, a fallback to the expected-id
setting, or a call of the engine factory without a URL outside ``autopack/db/handle.py`` would bring back the
hand-threaded URL strings this handle replaced.
"""

from __future__ import annotations

import ast
import pickle
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runner import run_cli
from log_records import records_starting_with

from autopack.db.engine import session_scope
from autopack.db.handle import Database, database_at, open_database
from autopack.execution.seed_runs import V4_RUN_ID, ensure_seed_runs
from autopack.params import PipelineParams

ROOT = Path(__file__).resolve().parents[1]
HANDLE = ROOT / "autopack" / "db" / "handle.py"
#: The engine factory the handle is built on: it takes the URL the handle resolved.
FACTORY = ROOT / "autopack" / "db" / "engine.py"
#: Parameter names that hold a database URL (GitHub's and the LLM's URLs have other names).
DATABASE_PARAMETERS = {"url", "database_url", "db_url"}
ENGINE_FACTORY = {"get_engine", "get_sessionmaker", "session_scope", "resolve_url"}


def library_modules() -> Iterator[tuple[str, ast.Module]]:
    for folder in ("autopack", "flows", "deployments"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path not in (HANDLE, FACTORY):
                yield str(path.relative_to(ROOT)), ast.parse(path.read_text(encoding="utf-8"))


def optional_str(annotation: ast.expr) -> bool:
    return ast.unparse(annotation).replace(" ", "") in {"str|None", "None|str", "Optional[str]", "typing.Optional[str]"}


def test_no_function_outside_the_handle_takes_a_database_url_string() -> None:
    found = [
        f"{name}:{node.lineno} {node.name}({arg.arg})"
        for name, tree in library_modules()
        for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for arg in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)
        if arg.arg in DATABASE_PARAMETERS and arg.annotation is not None and optional_str(arg.annotation)
    ]
    assert found == [], "take a Database (autopack.db.handle) instead of a URL string"


def test_only_the_handle_falls_back_to_the_expected_id_setting() -> None:
    found = [f"{name}:{node.lineno}" for name, tree in library_modules() for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr == "expected_db_id"]
    assert found == [], "use autopack.db.handle.open_database / expected_db_id"


def test_only_the_handle_calls_the_engine_factory_without_a_url() -> None:
    found = [f"{name}:{node.lineno}" for name, tree in library_modules() for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)
             and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) in ENGINE_FACTORY
             and not node.args and not any(k.arg == "url" for k in node.keywords)]
    assert found == [], "the settings' database is resolved by autopack.db.handle only"


def test_the_handle_and_its_reference_never_show_the_password() -> None:
    url = "postgresql+psycopg://autopack:s3cret-pw@db.invalid:5432/autopack"
    database = Database(url, "abc123")
    ref = database.ref()
    for shown in (repr(database), str(database), repr(ref), str(ref), ref.model_dump_json(), database.masked_url):
        assert "s3cret-pw" not in shown
    assert "abc123" in repr(database) and ref.masked_url == database.masked_url
    reopened = pickle.loads(pickle.dumps(ref)).open()  # what a drain's worker process receives
    assert (reopened.url, reopened.db_id) == (url, "abc123")


def test_open_database_guards_once_and_database_at_not_at_all(empty_db_url: str) -> None:
    from autopack.db.migrate import upgrade_database
    from autopack.errors import EmptyDatabaseError

    upgrade_database(database_at(empty_db_url))
    assert database_at(empty_db_url).db_id is None  # not verified: nothing was read
    with pytest.raises(EmptyDatabaseError):
        open_database(empty_db_url)
    opened = open_database(empty_db_url, allow_empty=True)
    assert opened.identity is not None and opened.db_id == opened.identity.db_id
    assert opened.ref().open().db_id == opened.db_id


# --- the guard runs once per pipeline run ---------------------------------------------------------------


@pytest.fixture
def guards() -> Iterator[list[str]]:
    with records_starting_with("autopack.db.identity", "identity guard passed") as passed:
        yield passed


def checkout(path: Path) -> Path:
    """A git checkout with an estimator (all a dry run whose gate does not pass needs)."""
    (path / "autopack").mkdir(parents=True)
    (path / "autopack" / "token_estimator.py").write_text((ROOT / "autopack" / "token_estimator.py").read_text())
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


PIPELINE = {"run_ids": [V4_RUN_ID], "batch_size": 2, "min_samples": 50, "dry_run": True}


def test_the_pipeline_flow_guards_once_and_stores_no_database_url(
    db_url: str, prefect_harness: None, tmp_path: Path, guards: list[str]
) -> None:
    """Guard, validate, drain and calibrate all use the database: the guard subflow checks it, the others reopen it."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from flows.pipeline import telemetry_pipeline

    with session_scope(db_url) as session:
        ensure_seed_runs(session, [V4_RUN_ID])
    state = telemetry_pipeline(PipelineParams(**PIPELINE, target_repo=str(checkout(tmp_path / "target")),
                                              output_dir=str(tmp_path / "reports")), return_state=True)
    assert state.is_completed(), state.message
    assert len(guards) == 1, guards
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])))
    steps = [run for run in children if run.parameters.get("database")]
    assert len(steps) == 3  # validate, drain, calibrate (the guard subflow is the fourth child)
    assert {run.parameters["database"]["db_id"] for run in steps} == {state.result().db_id}
    assert all(db_url not in str(run.parameters) for run in steps)  # a SecretStr: Prefect stores it masked


def test_the_pipeline_command_guards_once(
    db_url: str, prefect_harness: None, tmp_path: Path, guards: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The command checks the database before Prefect starts; the flow it starts trusts that check."""
    with session_scope(db_url) as session:
        ensure_seed_runs(session, [V4_RUN_ID])
    code, out, err = run_cli(capsys, "pipeline", "run", "--dry-run", "--run-id", V4_RUN_ID, "--batch-size", "2",
                             "--min-samples", "50", "--target-repo", str(checkout(tmp_path / "target")),
                             "--output-dir", str(tmp_path / "reports"))
    assert code == 0, err
    assert len(guards) == 1, guards
