"""Bad input, as a careless operator types it: one line on stderr (what was wrong, what to do), a non-zero
exit code, no traceback, nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_runner import run_cli

from autopack.cli import main
from autopack.db.engine import session_scope
from autopack.db.models import CalibrationRun, DrainSession, Phase
from autopack.execution.seed_runs import V4_RUN_ID

P1 = "telemetry-p1-string-util"


def one_line(err: str, *needles: str) -> str:
    """The single ``error:`` line of ``err``; fails if there is more, or a traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def console(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """The installed ``autopack`` entry point, as an operator runs it."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "TELEMETRY_DB"))}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", "from autopack.cli import run; run()", *args], env=full_env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def v4(db_url: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert run_cli(capsys, "runs", "create-telemetry-run")[0] == 0
    return db_url


# --- command-line usage ---------------------------------------------------------------------------------


def test_unknown_option_is_one_line_from_the_real_entry_point(tmp_path: Path) -> None:
    proc = console(["drain", "one", "--bogus"], DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}")
    assert proc.returncode == 2
    one_line(proc.stderr, "No such option: --bogus", "autopack drain one --help")
    assert proc.stdout == ""


def test_help_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "drain", "one", "--help")
    assert code == 0 and "Usage" in out and "--run-id" in out and err == ""


@pytest.mark.parametrize(("args", "needle"), [
    (["drain", "one"], "Missing option '--run-id'"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["drain", "batch", "--batch-size", "abc"], "Invalid value for '--batch-size'"),
    (["calibrate", "--min-samples", "1.5"], "Invalid value for '--min-samples'"),
    (["runs", "list", "extra"], "unexpected extra argument"),
])
def test_usage_errors(capsys: pytest.CaptureFixture[str], args: list[str], needle: str) -> None:
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    one_line(err, needle, "--help`")


@pytest.mark.parametrize("args", [
    ["drain", "batch", "--batch-size", str(2**64)],
    ["drain", "batch", "--batch-size", str(2**31)],
    ["drain", "batch", "--workers", str(2**64)],
    ["drain", "batch", "--lease-seconds", "inf"],
    ["drain", "batch", "--max-total-minutes", "1e300"],
    ["pipeline", "run", "--batch-size", str(2**64)],
    ["pipeline", "run", "--phase-timeout-seconds", "nan"],
])
def test_numbers_beyond_what_is_stored_or_possible(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    """Before: 2**64 as --batch-size overflowed SQLite INTEGER with a traceback; 2**64 workers was OOM-killed."""
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    one_line(err, "Invalid value for", "--help`")


def test_an_unexpected_error_is_one_line_unless_asked_for_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import autopack.cli.runs as runs_cli

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(runs_cli, "guarded", broken)
    code, _, err = run_cli(capsys, "runs", "list")
    assert code == 1
    one_line(err, "unexpected RuntimeError: boom", "AUTOPACK_TRACEBACK=1")
    monkeypatch.setenv("AUTOPACK_TRACEBACK", "1")
    with pytest.raises(RuntimeError):
        main(["runs", "list"])


# --- the database -------------------------------------------------------------------------------------


@pytest.fixture(params=["random", "text", "json"])
def not_sqlite(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "autopack.db"
    content = {"random": os.urandom(8192), "text": b"this is my shopping list\n", "json": b'{"runs": []}'}
    path.write_bytes(content[request.param])
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    return path


@pytest.mark.parametrize("args", [
    ["runs", "list"],
    ["db", "identity"],
    ["drain", "one", "--run-id", V4_RUN_ID, "--phase-id", P1],
    ["drain", "batch"],
    ["calibrate", "--output-dir", "out"],
    ["runs", "create-telemetry-run"],
])
def test_a_file_that_is_not_sqlite_is_named_and_left_untouched(
    capsys: pytest.CaptureFixture[str], not_sqlite: Path, args: list[str]
) -> None:
    before = not_sqlite.read_bytes()
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    one_line(err, f"{not_sqlite} is not a SQLite database", "check DATABASE_URL")
    assert not_sqlite.read_bytes() == before and not Path(f"{not_sqlite}-wal").exists()


def test_a_garbage_database_from_the_real_entry_point(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(os.urandom(4096))
    proc = console(["runs", "list"], DATABASE_URL=f"sqlite:///{path}")
    assert proc.returncode == 2
    one_line(proc.stderr, "is not a SQLite database")


def test_a_directory_as_the_database(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}")
    code, _, err = run_cli(capsys, "runs", "list")
    assert code == 2
    one_line(err, "is a directory", "name a database file")


def test_a_corrupt_page_is_one_line(capsys: pytest.CaptureFixture[str], v4: str) -> None:
    from autopack.db.engine import dispose_engines
    from autopack.db.migrate import sqlite_path

    path = sqlite_path(v4)
    if path is None:
        pytest.skip("a SQLite file is needed")
    dispose_engines()
    with path.open("r+b") as handle:  # keep the header, wreck the pages after it
        handle.seek(4096)
        handle.write(b"\xff" * 16384)
    code, _, err = run_cli(capsys, "runs", "list")
    assert code == 2
    one_line(err, "database disk image is malformed", "autopack db identity")


@pytest.mark.parametrize("url", ["postgresql+asyncpg://postgres@127.0.0.1/postgres",
                                 "sqlite+aiosqlite:///x.db", "postgresql+pg8000://postgres@127.0.0.1/x"])
def test_unsupported_drivers(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    code, _, err = run_cli(capsys, "runs", "list")
    assert code == 2
    one_line(err, f"unsupported database driver '{url.split(':')[0]}'", "postgresql+psycopg://")


def test_a_postgres_url_is_told_to_say_postgresql(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Heroku-style ``postgres://`` URLs: SQLAlchemy knows PostgreSQL as ``postgresql``."""
    monkeypatch.setenv("DATABASE_URL", "postgres://postgres@127.0.0.1/x")
    code, _, err = run_cli(capsys, "runs", "list")
    assert code == 2
    one_line(err, "unsupported database backend 'postgres'", "write postgresql://")


# --- settings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("variable", "value", "needle"), [
    ("TELEMETRY_DB_ENABLED", "garbage", "expected 1/0, true/false"),
    ("AUTOPACK_LLM_PROVIDER", "bogus", "'simulated'"),
    ("AUTOPACK_SIM_SEED", "1.5x", "integer"),
    ("AUTOPACK_LLM_TIMEOUT_SECONDS", "soon", "number"),
    ("AUTOPACK_LLM_TIMEOUT_SECONDS", "-5", "greater than 0"),
    ("AUTOPACK_LLM_MAX_RETRIES", "-1", "greater than or equal to 0"),
    ("AUTOPACK_SIM_LATENCY_SECONDS", "-1", "greater than or equal to 0"),
    ("AUTOPACK_CHECK_MEMORY_MIB", "0", "greater than 0"),
    ("AUTOPACK_CHECK_CPU_SECONDS", "-30", "greater than 0"),
    ("AUTOPACK_CHECK_FILE_SIZE_MIB", "268435456", "less than or equal to 1048576"),
    ("AUTOPACK_CHECK_OPEN_FILES", "3", "greater than or equal to 16"),
    ("AUTOPACK_CHECK_TMP_MIB", "lots", "integer"),
])
def test_a_malformed_setting_names_the_variable(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                 variable: str, value: str, needle: str) -> None:
    monkeypatch.setenv(variable, value)
    code, _, err = run_cli(capsys, "runs", "list")
    assert code == 2
    one_line(err, f"invalid setting: {variable}:", needle, "fix the environment variable")


def test_telemetry_db_enabled_garbage_from_the_real_entry_point(tmp_path: Path) -> None:
    proc = console(["drain", "one", "--run-id", "r", "--phase-id", "p"], TELEMETRY_DB_ENABLED="garbage",
                   DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}")
    assert proc.returncode == 2
    one_line(proc.stderr, "TELEMETRY_DB_ENABLED")


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_database_url_file_missing_or_empty(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path, content: str | None) -> None:
    """Before: a missing file was a traceback, an empty one silently meant ./autopack.db."""
    path = tmp_path / "url.txt"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("DATABASE_URL_FILE", str(path))
    code, _, err = run_cli(capsys, "runs", "create-telemetry-run")
    assert code == 2
    one_line(err, f"DATABASE_URL_FILE {path}", "cannot be read" if content is None else "is empty")
    assert not (tmp_path / "autopack.db").exists()


def test_the_settings_error_does_not_echo_the_value(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_LLM_PROVIDER", "sk-live-secretvalue0123456789")
    code, _, err = run_cli(capsys, "runs", "list")
    assert code == 2 and "secretvalue" not in err


# --- output directories ------------------------------------------------------------------------------------


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("x")
    return path


@pytest.mark.parametrize("command", [["calibrate"], ["pipeline", "run", "--skip-drain", "--dry-run"]])
@pytest.mark.parametrize(("where", "needle"), [("under-a-file", "Not a directory"), ("is-a-file", "a file with that name exists"),
                                               ("proc", "No such file or directory")])
def test_unwritable_output_dir(capsys: pytest.CaptureFixture[str], a_file: Path, command: list[str], where: str,
                               needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'never-created.db'}")
    target = {"under-a-file": a_file / "reports", "is-a-file": a_file, "proc": Path("/proc/autopack-reports")}[where]
    code, out, err = run_cli(capsys, *command, "--output-dir", str(target))
    assert code == 2
    one_line(err, f"--output-dir {target} is not a writable directory", needle, "choose a directory")
    assert not (tmp_path / "never-created.db").exists()


@pytest.mark.parametrize("args", [["--expect-db-id", "another-db"], ["--include-run-id", "nope"]])
def test_a_calibration_that_refuses_leaves_no_output_directory(
    capsys: pytest.CaptureFixture[str], v4: str, tmp_path: Path, args: list[str]
) -> None:
    """Before: the output directory (and its missing parents) was created before the refusal."""
    target = tmp_path / "new" / "reports"
    code, _, err = run_cli(capsys, "calibrate", "--output-dir", str(target), *args)
    assert code in (2, 3)
    one_line(err)
    assert not (tmp_path / "new").exists()


def test_analyze_with_no_log_lines_says_so_instead_of_a_verdict(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    """Before: 'Records: 0 … Verdict: WITHIN TARGETS', exit 0."""
    (tmp_path / "run.log").write_text("nothing about tokens here\n")
    code, out, err = run_cli(capsys, "analyze", "v3", "--log-dir", str(tmp_path), "--output", str(tmp_path / "r.md"))
    assert code == 1 and out == ""
    one_line(err, "no token-estimation lines in the 1 file(s) matching '*.log'", "--log-dir")
    assert not (tmp_path / "r.md").exists()


def test_analyze_output_in_an_unwritable_place(capsys: pytest.CaptureFixture[str], a_file: Path, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "analyze", "v3", "--log-dir", str(tmp_path), "--output", str(a_file / "r.md"))
    assert code == 2
    one_line(err, "is not a writable directory")
    code, _, err = run_cli(capsys, "analyze", "v3", "--log-dir", str(tmp_path), "--output", str(tmp_path))
    assert code == 2
    one_line(err, "is a directory")


# --- run ids that are not in the database ---------------------------------------------------------------


def test_drain_one_with_an_unknown_run(capsys: pytest.CaptureFixture[str], v4: str) -> None:
    code, out, err = run_cli(capsys, "drain", "one", "--run-id", "telemetry-collection-v44", "--phase-id", P1)
    assert code == 2 and out == ""
    one_line(err, "--run-id 'telemetry-collection-v44' is not in this database", "autopack runs list")


@pytest.mark.parametrize("run_ids", [["nope"], ["nope", V4_RUN_ID]])
def test_drain_batch_with_an_unknown_run_drains_nothing_and_fails(
    capsys: pytest.CaptureFixture[str], v4: str, run_ids: list[str]
) -> None:
    """Before: exit 0 after a session that drained nothing."""
    args = [arg for run_id in run_ids for arg in ("--run-id", run_id)]
    code, out, err = run_cli(capsys, "drain", "batch", *args)
    assert code == 2 and out == ""
    one_line(err, "--run-id 'nope' is not in this database", "nothing was drained")
    with session_scope(v4) as session:
        assert session.execute(sa.select(sa.func.count()).select_from(DrainSession)).scalar_one() == 0
        assert set(session.execute(sa.select(Phase.state)).scalars()) == {"QUEUED"}


@pytest.mark.parametrize("run_ids", [["nope"], ["nope", V4_RUN_ID]])
def test_calibrate_with_an_unknown_run_names_it_and_calibrates_nothing(
    capsys: pytest.CaptureFixture[str], v4: str, run_ids: list[str], tmp_path: Path
) -> None:
    """Before: 'no usable calibration samples' alone, or a calibration of the other runs that never named it."""
    args = [arg for run_id in run_ids for arg in ("--include-run-id", run_id)]
    code, out, err = run_cli(capsys, "calibrate", "--output-dir", str(tmp_path / "reports"), *args)
    assert code == 2 and out == ""
    one_line(err, "--include-run-id 'nope'", "no telemetry in this database", "autopack runs list")
    assert not (tmp_path / "reports").exists()
    with session_scope(v4) as session:
        assert session.execute(sa.select(sa.func.count()).select_from(CalibrationRun)).scalar_one() == 0


def test_an_unknown_run_on_the_wrong_database_is_reported_as_the_wrong_database(
    capsys: pytest.CaptureFixture[str], v4: str
) -> None:
    code, _, err = run_cli(capsys, "drain", "batch", "--run-id", "nope", "--expect-db-id", "another-db")
    assert code == 3
    one_line(err, "expected another-db")


def test_runs_create_with_a_malformed_id(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    code, _, err = run_cli(capsys, "runs", "create-telemetry-run", "--run-id", "../x")
    assert code == 2
    one_line(err, "--run-id '../x' is not a valid run id", "letters, digits")


def test_pipeline_with_an_unknown_run_refuses_before_prefect_starts(
    capsys: pytest.CaptureFixture[str], v4: str, tmp_path: Path
) -> None:
    import subprocess as sp

    repo = tmp_path / "repo"
    (repo / "autopack").mkdir(parents=True)
    (repo / "autopack" / "token_estimator.py").write_text(
        (Path(__file__).resolve().parents[1] / "autopack" / "token_estimator.py").read_text())
    sp.run(["git", "init", "-q", str(repo)], check=True)
    code, out, err = run_cli(capsys, "pipeline", "run", "--dry-run", "--target-repo", str(repo), "--run-id", "nope",
                             "--output-dir", str(tmp_path / "reports"))
    assert code == 2
    one_line(err, "--run-id 'nope' is not in this database")


def test_the_console_script_exits_with_the_commands_code_and_output(tmp_path: Path) -> None:
    """``run`` (the installed script) is ``main`` plus a faster exit: same code, same single line."""
    missing = tmp_path / "absent.db"
    proc = console(["db", "identity"], DATABASE_URL=f"sqlite:///{missing}")
    assert proc.returncode != 0
    one_line(proc.stderr, str(missing))
    assert console(["--help"]).returncode == 0


def test_a_corrupt_page_of_events_under_calibrate_is_one_line(tmp_path: Path, db_url: str) -> None:
    """The calibration's read goes through the driver itself; its errors read like every database error."""
    import sqlite3

    from autopack.db.engine import dispose_engines, get_engine
    from autopack.db.migrate import sqlite_path
    from autopack.db.models import TokenEstimationV2Event

    from synthetic_telemetry import simulate

    path = sqlite_path(db_url)
    if path is None:
        pytest.skip("a SQLite file is needed")
    with get_engine(db_url).begin() as connection:
        connection.execute(sa.insert(TokenEstimationV2Event), simulate(400, seed=3))
    dispose_engines()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = raw.execute("PRAGMA page_size").fetchone()[0]
        leaves = [r[0] for r in raw.execute(
            "SELECT pageno FROM dbstat WHERE name = 'token_estimation_v2_events' AND pagetype = 'leaf'")]
    with path.open("r+b") as handle:  # one page of the events table, the guard's probes pass over it
        handle.seek(size * (leaves[len(leaves) // 2] - 1))
        handle.write(b"\xde\xad\xbe\xef" * (size // 4))
    proc = console(["calibrate", "--output-dir", str(tmp_path / "out")], DATABASE_URL=db_url)
    assert proc.returncode == 2
    one_line(proc.stderr, "database error: DatabaseError: database disk image is malformed", "autopack db identity")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_help_prose_is_wrapped_to_the_terminal_not_to_the_source_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # wide enough for the whole paragraph on one line
    code, out, _ = run_cli(capsys, "telemetry", "import", "--help")
    assert code == 0
    # the docstring breaks this sentence after "or not"; the help must not
    assert "an unmigrated one, or not the expected one, is refused" in out
