"""``autopack runs create SPEC``: a run from a JSON spec, refused in one line exactly where ``POST /runs`` refuses."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_api import GOOD_SPEC, run_count

from autopack.cli.app import main
from autopack.db.engine import session_scope
from autopack.db.models import Run


def create(tmp_path: Path, spec: object, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec) if not isinstance(spec, str) else spec, encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        main(["runs", "create", str(path), *args])
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_a_spec_file_creates_a_run_marked_as_from_the_cli(db_url: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = create(tmp_path, GOOD_SPEC, capsys)
    assert code == 0 and "created run api-run: 2 QUEUED phases" in out
    with session_scope(db_url) as session:
        assert session.execute(sa.select(Run.source)).scalar_one() == "cli"



def test_a_run_of_one_phase_says_one_phase(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = copy.deepcopy(GOOD_SPEC)
    spec["phases"] = spec["phases"][:1]  # type: ignore[index]
    code, out, _ = create(tmp_path, spec, capsys)
    assert code == 0 and out.splitlines()[-1] == "created run api-run: 1 QUEUED phase"

def test_a_run_that_exists_is_refused_naming_what_to_change_in_the_spec(
        db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``runs create`` has no --run-id: the hint names the spec's run_id (and --replace)."""
    assert create(tmp_path, GOOD_SPEC, capsys)[0] == 0
    code, _, err = create(tmp_path, GOOD_SPEC, capsys)
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err
    assert "run 'api-run' already exists" in line and "--replace" in line and "change run_id in" in line
    assert "--run-id" not in line


@pytest.mark.parametrize("deliverable", ["create /abs/x.py", "~/x.py", "C:/x.py", "src/../../x.py"])
def test_a_deliverable_the_drain_would_refuse_is_one_line(db_url: str, tmp_path: Path, deliverable: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    spec = copy.deepcopy(GOOD_SPEC)
    spec["phases"][1]["deliverables"] = [deliverable]
    code, _, err = create(tmp_path, spec, capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "phases.1.deliverables" in lines[0], err
    assert run_count(db_url) == 0


def test_a_file_that_is_not_json_is_one_line(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = create(tmp_path, '{"run_id": ', capsys)
    assert code == 2 and err.count("\n") == 1 and "not valid JSON" in err


def test_a_boolean_token_cap_in_a_spec_file_is_one_line(db_url: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The file shares the API's RunSpec: ``true`` is not a token cap there either (it was stored as 1)."""
    code, _, err = create(tmp_path, {**GOOD_SPEC, "token_cap": True}, capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "token_cap" in lines[0], err
    assert run_count(db_url) == 0
