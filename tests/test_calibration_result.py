"""The calibration result is one typed model (``autopack.calibration.result``): its reader, its schema, its readers.

``load_result`` is the only place a result file is read by key; everything else reads the model by attribute.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from github_server.samples import CALIBRATION, LEGACY_CALIBRATION
from pydantic import BaseModel

from autopack.calibration.result import SCHEMA_VERSION, CalibrationOutcome, CalibrationResult, load_result
from autopack.errors import InputError
from autopack.pipeline import PipelineResult

ROOT = Path(__file__).resolve().parents[1]

#: Modules that consume the calibration result (they complete, render, publish or summarise it); any other module
#: that imports ``autopack.calibration.result`` counts too (``consumers``).
NAMED_CONSUMERS = (
    "autopack/calibration/report.py",
    "autopack/calibration/story.py",
    "autopack/calibration/runner.py",
    "autopack/cli/calibrate.py",
    "autopack/github/body.py",
    "autopack/github/local.py",
    "autopack/github/pipeline.py",
    "autopack/github/proposal.py",
    "autopack/pipeline.py",
    "flows/calibrate.py",
    "flows/pipeline.py",
    "flows/pull_request.py",
)
#: Build the result: ``core`` keys its ceilings and backtests by method name (``current``, ``proposed``, ``shipped``),
#: names the result's backtest fields share, and ``assemble`` turns them into those fields; ``result`` is the model
#: itself. They are its producers, not its readers.
PRODUCERS = ("autopack/calibration/core.py", "autopack/calibration/assemble.py", "autopack/calibration/result.py")
#: (module, key): dicts that are not the calibration result but share a key with it.
ALLOWED = {
    # ``apply_proposal``/``parse_changes`` also edit the estimator from plain {coefficient, key, old, new} changes
    # and a {generated_at, total_samples} stamp (the estimator editor's own input, not a result file)
    ("autopack/github/proposal.py", "coefficient"), ("autopack/github/proposal.py", "key"),
    ("autopack/github/proposal.py", "old"), ("autopack/github/proposal.py", "new"),
    ("autopack/github/proposal.py", "generated_at"), ("autopack/github/proposal.py", "total_samples"),
    # the database guard flow's identity ({"db_id", "url"})
    ("flows/pipeline.py", "db_id"),
}


def field_names(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> set[str]:
    """Every field name of ``model`` and of the models its fields hold, however nested."""
    seen = set() if seen is None else seen
    if model in seen:
        return set()
    seen.add(model)
    names = set(model.model_fields)
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            kind = stack.pop()
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                names |= field_names(kind, seen)
            stack.extend(getattr(kind, "__args__", ()))
    return names


RESULT_KEYS = field_names(CalibrationOutcome)
#: The pipeline's result (``autopack.pipeline.PipelineResult``) and its pull request's (``PublishResult``), at any
#: depth: read by attribute too, in the modules that build, return or read it.
PIPELINE_RESULT_KEYS = field_names(PipelineResult)
PIPELINE_CONSUMERS = ("autopack/pipeline.py", "autopack/cli/pipeline.py", "autopack/artifacts.py",
                      "flows/pipeline.py", "flows/pull_request.py")


def string_key_reads(source: str, keys: set[str] = RESULT_KEYS) -> list[tuple[int, str]]:
    """``(line, key)`` of every ``x["key"]`` and ``x.get("key", …)`` whose key names a field of the result."""
    found = []
    for node in ast.walk(ast.parse(source)):
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and node.args and isinstance(node.args[0], ast.Constant)):
            key = node.args[0].value
        if isinstance(key, str) and key in keys:
            found.append((node.lineno, key))
    return found


def consumers() -> list[str]:
    """The named consumers and every module of ``autopack/`` and ``flows/`` that imports the result's module."""
    found = set(NAMED_CONSUMERS)
    for path in [*ROOT.glob("autopack/**/*.py"), *ROOT.glob("flows/*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(node, ast.ImportFrom) and node.module == "autopack.calibration.result"
               for node in ast.walk(tree)):
            found.add(path.relative_to(ROOT).as_posix())
    return sorted(found - set(PRODUCERS))


def test_no_consumer_reads_the_result_by_string_key() -> None:
    """Outside ``load_result`` the result is read by attribute: a typo is a type error, not a silent ``None``.

    Forbidden in the consumer modules (the named ones and any module importing the result's, its producers aside):
    ``x["name"]`` and ``x.get("name")`` where ``name`` is a field of the result (at any depth), except the short list
    of other dicts that share a key. Before the model existed this found
    527 reads in these modules (``result["metadata"]["db_id"]``, ``gate.get("passed")``, ``g["n"]`` …).
    """
    scanned = consumers()
    assert set(NAMED_CONSUMERS) <= set(scanned) and "autopack/github/estimator_edit.py" in scanned
    offenders = {path: [hit for hit in string_key_reads((ROOT / path).read_text(encoding="utf-8"))
                        if (path, hit[1]) not in ALLOWED]
                 for path in scanned}
    assert {path: hits for path, hits in offenders.items() if hits} == {}


def pipeline_consumers() -> list[str]:
    """The named modules and every module of ``autopack/`` and ``flows/`` that names ``PipelineResult``."""
    found = set(PIPELINE_CONSUMERS)
    for path in [*ROOT.glob("autopack/**/*.py"), *ROOT.glob("flows/*.py")]:
        if "PipelineResult" in path.read_text(encoding="utf-8"):
            found.add(path.relative_to(ROOT).as_posix())
    return sorted(found)


def test_no_consumer_reads_the_pipeline_result_by_string_key() -> None:
    """The pipeline flow's result and its pull request's are models: ``result["timings"]``, ``pr.get("status")``
    and the like fail here (before the models existed this found 50 such reads in these modules)."""
    offenders = {path: [hit for hit in string_key_reads((ROOT / path).read_text(encoding="utf-8"),
                                                        PIPELINE_RESULT_KEYS)
                        if (path, hit[1]) not in ALLOWED]
                 for path in pipeline_consumers()}
    assert {path: hits for path, hits in offenders.items() if hits} == {}


def test_the_pipeline_rule_sees_the_pipeline_and_pull_request_fields() -> None:
    source = 'pr = result["pull_request"]\nn = pr.get("pr_number")\nt = result["timings"]\nx = rows["other"]\n'
    assert string_key_reads(source, PIPELINE_RESULT_KEYS) == [(1, "pull_request"), (2, "pr_number"), (3, "timings")]


def test_the_rule_sees_subscripts_and_gets_of_result_fields_only() -> None:
    source = ('md = result["metadata"]\npassed = gate.get("passed")\nn = g["n"]\n'
              'status = pr.get("status")\nx = rows[0]\nresult.metadata.db_id\n')
    assert string_key_reads(source) == [(1, "metadata"), (2, "passed"), (3, "n")]


# --- the versioned reader ------------------------------------------------------------------------------------


def test_a_current_file_reads_back_as_the_model_that_wrote_it(tmp_path: Path) -> None:
    result = load_result(json.dumps(CALIBRATION))
    path = tmp_path / "result.json"
    path.write_text(result.model_dump_json(indent=2), encoding="utf-8")
    again = load_result(path)
    assert again == result and again.schema_version == SCHEMA_VERSION


def test_an_older_file_is_upgraded_with_what_it_lacks_left_unknown() -> None:
    legacy = load_result(json.dumps(LEGACY_CALIBRATION))
    assert legacy.backtest.shipped is None and legacy.metadata.sources is None
    assert legacy.metadata.retries_excluded is None and legacy.gate.weights is None
    assert [g.proposed for g in legacy.groups] == [True]  # it passed: its group carries the proposal's changes


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "cannot read calibration JSON"),
    ("[1, 2]", "is not an object"),
    ('{"metadata": {}}', "is not a calibration result: metadata.total_samples: Field required"),
    ('{"schema_version": 99}', "has schema_version 99"),
])
def test_a_malformed_or_unknown_file_is_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as raised:
        load_result(text)
    assert "\n" not in raised.value.one_line()


def test_a_missing_file_names_itself(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read calibration JSON .*missing.json"):
        load_result(tmp_path / "missing.json")


# --- the schema in the docs ----------------------------------------------------------------------------------


def test_the_committed_schema_is_the_models() -> None:
    committed = json.loads((ROOT / "docs" / "calibration-result.schema.json").read_text(encoding="utf-8"))
    assert committed == CalibrationResult.model_json_schema(), "run: .venv/bin/python scripts/result_schema.py --write"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "result_schema.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
