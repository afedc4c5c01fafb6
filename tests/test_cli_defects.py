"""Defects a demanding user reported against the command line (issues 17 and 18), each pinned by a test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_runner import interrupt_once_imported, run_cli
from sqlalchemy.exc import OperationalError
from test_cli_errors import one_line
from test_migrations import _legacy_db as legacy_db  # the original Autopack's file: rollback journal, no revision

from autopack.cli.console import INTERRUPTED_EXIT
from autopack.db.engine import dispose_engines, get_engine, session_scope
from autopack.db.migrate import HEAD_REVISION, LOCK_TIMEOUT_MAX_SECONDS, check_lock_timeout
from autopack.db.models import Phase, PhaseState
from autopack.errors import InputError
from autopack.execution.run_state import DONE_FAILED, DONE_SUCCESS, PHASE_EXECUTION, QUEUED, run_state
from autopack.execution.workspace import deliverable_workspace_path

#: The installed console script (``autopack = "autopack.cli:run"``), next to the interpreter running the tests.
SCRIPT = Path(sys.executable).with_name("autopack")


def without_db_line(err: str) -> str:
    """stderr without the ``[db]`` line a command that passed the guard prints first."""
    return "".join(line for line in err.splitlines(keepends=True) if not line.startswith("[db] "))


# --- 1. Ctrl-C from the first instruction of the console script ------------------------------------------


@pytest.mark.skipif(not SCRIPT.exists(), reason="the console script is not installed next to this interpreter")
@pytest.mark.parametrize("module", ["click", "typer", "pydantic", "autopack.cli.app", "sqlalchemy",
                                    "autopack.db.identity"])
def test_ctrl_c_while_the_command_line_is_imported_is_one_line_and_130(tmp_path: Path, module: str) -> None:
    code, stderr = interrupt_once_imported([str(SCRIPT), "runs", "list"], module, tmp_path)
    assert code == INTERRUPTED_EXIT, stderr
    assert stderr == ["interrupted"]


# --- 2. read-only commands leave the database as it was ---------------------------------------------------


def _snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize("command", [["db", "identity"], ["runs", "list"], ["calibrate", "--output-dir", "out"]])
def test_refusing_a_legacy_database_leaves_its_file_untouched(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("DATABASE_URL", legacy_db(folder / "legacy.db"))
    before = _snapshot(folder / "legacy.db")
    code, _, err = run_cli(capsys, *command)
    dispose_engines()
    assert code == 2
    one_line(err, "written by the original Autopack", "autopack db upgrade")
    assert _snapshot(folder / "legacy.db") == before  # same bytes (journal mode too), same mtime, no -wal/-shm


def test_the_read_only_engine_cannot_write(tmp_path: Path) -> None:
    url = legacy_db(tmp_path / "legacy.db")
    engine = get_engine(url, read_only=True)
    for statement in ("PRAGMA journal_mode=WAL", "DELETE FROM runs"):
        with engine.connect() as connection, pytest.raises(OperationalError, match="readonly"):
            connection.execute(sa.text(statement))
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM runs")).scalar_one() == 1
        assert connection.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "delete"
    dispose_engines()


def _in_a_read_only_mount(folder: Path, args: list[str], url: str) -> subprocess.CompletedProcess[str]:
    """``autopack *args`` in a private mount namespace where ``folder`` is mounted read-only (root or not)."""
    command = (f'mount --bind -o ro "{folder}" "{folder}" && exec "{sys.executable}" -c '
               f'"from autopack.cli import run; run()" {" ".join(args)}')
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run(["unshare", "-m", "sh", "-c", command], env=env, capture_output=True, text=True,
                          timeout=120, cwd=folder.parent)


def _can_mount_read_only(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f'mount --bind -o ro "{tmp_path}" "{tmp_path}"'],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.parametrize("kind", ["legacy", "wal"])
def test_read_only_commands_work_on_a_read_only_file_system(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A read-only mount refuses every write, even root's: the real proof that nothing is written."""
    if not _can_mount_read_only(tmp_path):
        pytest.skip("cannot mount a folder read-only here (needs unshare -m and mount)")
    folder = tmp_path / "ro"
    folder.mkdir()
    if kind == "legacy":
        url = legacy_db(folder / "autopack.db")
    else:  # ours, in WAL mode, closed cleanly (no -wal, no -shm: the index must be built to read it)
        url = f"sqlite:///{folder / 'autopack.db'}"
        monkeypatch.setenv("DATABASE_URL", url)
        assert run_cli(capsys, "db", "upgrade")[0] == 0
        assert run_cli(capsys, "runs", "create-telemetry-run")[0] == 0
        dispose_engines()
        assert sorted(p.name for p in folder.iterdir()) == ["autopack.db"]
    for args in (["db", "identity"], ["runs", "list"]):
        proc = _in_a_read_only_mount(folder, args, url)
        if kind == "legacy":
            assert proc.returncode == 2, proc.stderr
            one_line(proc.stderr, "written by the original Autopack")
        else:
            assert proc.returncode == 0, proc.stderr
            assert "Runs:            1" in proc.stdout or "telemetry-collection-v4  QUEUED" in proc.stdout


# --- 3. db upgrade --lock-timeout ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e9", str(LOCK_TIMEOUT_MAX_SECONDS + 1)])
def test_a_lock_timeout_out_of_range_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], empty_db_url: str, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    code, out, err = run_cli(capsys, "db", "upgrade", "--lock-timeout", value)
    assert code == 2 and out == ""
    one_line(err, "Invalid value for '--lock-timeout'", "is not between 0 and 86400 seconds")


def test_the_library_refuses_an_endless_lock_timeout_too() -> None:
    with pytest.raises(InputError):
        check_lock_timeout(float("inf"))
    assert check_lock_timeout(0.0) == 0.0


# --- 4. JSON nested deeper than the parser goes -------------------------------------------------------------


def test_runs_create_with_deeply_nested_json_is_one_line(
    capsys: pytest.CaptureFixture[str], db_url: str, tmp_path: Path
) -> None:
    spec = tmp_path / "deep.json"
    spec.write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = run_cli(capsys, "runs", "create", str(spec))
    assert code == 2
    one_line(err, "deep.json nests arrays or objects too deeply")


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000])
def test_otel_json_nested_too_deeply_is_one_line(
    capsys: pytest.CaptureFixture[str], db_url: str, tmp_path: Path, text: str
) -> None:
    path = tmp_path / "deep.json"
    path.write_text(text)
    code, _, err = run_cli(capsys, "telemetry", "import", "--format", "otel-json", str(path))
    assert code == 2
    one_line(without_db_line(err), "deep.json: JSON nested too deeply")


# --- 5. analyze v3 options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value", "needle"), [
    ("--under-multiplier", "nan", "--under-multiplier nan is not a finite number above 0"),
    ("--under-multiplier", "inf", "--under-multiplier inf is not a finite number above 0"),
    ("--under-multiplier", "0", "--under-multiplier 0 is not a finite number above 0"),
    ("--pattern", "[", "has a '[' that is never closed"),
    ("--pattern", "*.log[", "has a '[' that is never closed"),
    ("--pattern", "", "--pattern is empty"),
    ("--pattern", "../*.log", "reaches outside --log-dir"),
])
def test_analyze_refuses_options_that_would_quietly_analyse_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, option: str, value: str, needle: str
) -> None:
    (tmp_path / "a.log").write_text("")
    code, out, err = run_cli(capsys, "analyze", "v3", "--log-dir", str(tmp_path), option, value)
    assert code == 2 and out == ""
    one_line(err, needle)


def test_analyze_accepts_a_closed_set_and_a_literal_bracket(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("[TokenEstimation] Predicted: 1,000 output tokens, Actual: 900 output tokens\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.log").write_text("[TokenEstimation] Predicted: 800 output tokens, Actual: 700 output tokens\n")
    for pattern, records in (("[ab].log", 2), ("[[]x].log", 0), ("[]].log", 0), ("sub/*.log", 1)):
        code, out, err = run_cli(capsys, "analyze", "v3", "--log-dir", str(tmp_path), "--pattern", pattern)
        if records:  # the pattern matched (recursively, as the original's rglob)
            assert code == 0 and f"Records: {records} " in out, (pattern, err)
        else:  # accepted, and matched nothing: said so, not a usage error
            assert code == 1 and "no token-estimation lines in the 0 file(s)" in err, (pattern, err)


# --- 6. a .env that is not UTF-8 ------------------------------------------------------------------------------


def test_a_binary_env_file_is_one_line_naming_it_and_the_byte(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / ".env").write_bytes(b"AUTOPACK_LLM_PROVIDER=simulated\n\xff\xfeX=1\n")
    code, _, err = run_cli(capsys, "runs", "list")
    assert code == 2
    one_line(err, f"{tmp_path / '.env'} is not UTF-8 text", "byte 32 (line 2)")


# --- 7. NUL bytes in deliverables -------------------------------------------------------------------------------


@pytest.mark.parametrize("deliverable", ["do\x00cs/a.md", "docs/a.md\x00", "\x00docs/a.md", "create docs/a.md (x\x00)",
                                         "docs/a\x00.md"])
def test_a_nul_anywhere_in_a_deliverable_is_refused(deliverable: str) -> None:
    with pytest.raises(InputError, match=r"holds a NUL byte"):
        deliverable_workspace_path(deliverable)


def test_runs_create_refuses_a_nul_in_a_deliverable(
    capsys: pytest.CaptureFixture[str], db_url: str, tmp_path: Path
) -> None:
    spec = {"run_id": "r1", "phases": [{"phase_id": "p1", "description": "d", "category": "docs",
                                        "complexity": "low", "deliverables": ["do\u0000cs/a.md"]}]}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    code, _, err = run_cli(capsys, "runs", "create", str(path))
    assert code == 2
    one_line(err, r"deliverable 'do\x00cs/a.md' holds a NUL byte")


# --- 8. adopting a legacy database names where it started ---------------------------------------------------


def test_adopting_a_legacy_database_names_the_original_schema(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", legacy_db(tmp_path / "legacy.db"))
    code, out, _ = run_cli(capsys, "db", "upgrade")
    assert code == 0
    assert f": original Autopack schema -> {HEAD_REVISION}" in out and "empty" not in out


# --- 9-11. help ---------------------------------------------------------------------------------------------------


def _every_help(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    import typer

    from autopack.cli.app import COMMANDS, load_commands

    root = typer.main.get_command(load_commands([]))
    paths: list[list[str]] = [[]]
    for name in COMMANDS:
        sub = root.commands[name]  # type: ignore[attr-defined]
        paths.append([name])
        paths += [[name, child] for child in getattr(sub, "commands", {})]
    helps = {}
    for path in paths:
        code, out, err = run_cli(capsys, *path, "--help")
        assert code == 0, (path, err)
        helps[" ".join(path)] = out
    return helps


@pytest.mark.parametrize("columns", [None, "60"])
def test_no_help_shows_bool_or_cuts_anything(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, columns: str | None
) -> None:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    helps = _every_help(capsys)
    assert len(helps) > 15
    for where, text in helps.items():
        assert "<bool>" not in text, where
        assert "…" not in text, (where, text)
        assert not [line for line in text.splitlines() if line.endswith("...") and not line.endswith("[ARGS]...")]


def test_help_is_100_columns_when_nothing_says_how_wide(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    _, out, _ = run_cli(capsys, "drain", "batch", "--help")
    assert 80 < max(len(line) for line in out.splitlines()) <= 100  # not stopped at 80, never wider
    assert "--max-consecutive-zero-yield <int>" in out  # an option's name is never cut


def test_telemetry_import_help_shows_allow_empty_db(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_cli(capsys, "telemetry", "import", "--help")
    assert "--allow-empty-db" in out


# --- 12. runs list ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("recorded", "phases", "expected"), [
    ("RUN_CREATED", {}, "RUN_CREATED"),
    ("RUN_CREATED", {"QUEUED": 10}, QUEUED),
    ("RUN_CREATED", {"QUEUED": 3, "COMPLETE": 2}, QUEUED),
    ("RUN_CREATED", {"EXECUTING": 1, "QUEUED": 3}, PHASE_EXECUTION),
    ("RUN_CREATED", {"COMPLETE": 9, "SKIPPED": 1}, DONE_SUCCESS),
    ("RUN_CREATED", {"COMPLETE": 9, "FAILED": 1}, DONE_FAILED),
    ("RUN_CREATED", {"COMPLETE": 9, "TIMEOUT": 1}, DONE_FAILED),
    ("DONE_FAILED_BUDGET_EXHAUSTED", {"FAILED": 2}, "DONE_FAILED_BUDGET_EXHAUSTED"),
    ("DONE_FAILED_REQUIRES_HUMAN_REVIEW", {"FAILED": 1, "GATE": 1}, "DONE_FAILED_REQUIRES_HUMAN_REVIEW"),
    ("RUN_CREATED", {"QUEUED": 0, "COMPLETE": 1}, DONE_SUCCESS),
])
def test_a_runs_state_is_told_by_its_phases(recorded: str, phases: dict[str, int], expected: str) -> None:
    assert run_state(recorded, phases) == expected


def test_runs_list_has_a_header_and_each_runs_real_state(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "runs", "create-telemetry-run")[0] == 0
    code, out, _ = run_cli(capsys, "runs", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["RUN", "STATE", "PHASES"]
    assert row.split()[:2] == ["telemetry-collection-v4", "QUEUED"]
    with session_scope() as session:
        session.execute(sa.update(Phase).values(state=PhaseState.COMPLETE))
    code, out, _ = run_cli(capsys, "runs", "list", "--json")
    [run] = json.loads(out)
    assert (run["state"], run["recorded_state"], run["phases"]) == (DONE_SUCCESS, "RUN_CREATED", {"COMPLETE": 10})
