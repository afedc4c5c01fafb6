"""Check commands run in the bubblewrap sandbox: what a hostile check tries, and sees nothing of.

Real processes throughout: a drain worker started with secrets in its environment, real sockets, real files.
Where bubblewrap cannot run, these tests skip on a developer's machine and fail under CI.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from autopack.config import get_settings
from autopack.db.engine import session_scope
from autopack.db.handle import database_at
from autopack.db.models import Phase
from autopack.execution import leases
from autopack.execution.phase_runner import execute_phase, run_check_command
from autopack.execution.runs import create_run
from autopack.execution.sandbox import SandboxUnavailableError, require_sandbox
from autopack.execution.spec import PhaseSpec, RunSpec
from autopack.execution.workspace import run_workspace
from autopack.llm.simulated import SimulatedProvider

RUN = "run-sandbox"
TIMEOUT = 60.0


@pytest.fixture
def bwrap() -> None:
    try:
        require_sandbox(get_settings())
    except SandboxUnavailableError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the sandbox tests: {exc.one_line()}")
        pytest.skip(exc.one_line())


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


def tail(reason: str | None) -> str:
    """The check's own output at the end of a failure reason (after ``exited N: <command>: ``)."""
    assert reason is not None and reason.startswith("check_command exited"), reason
    return reason.rsplit(": ", 1)[1]


def processes_with(token: str) -> list[int]:
    """Host PIDs whose command line holds ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if token.encode() in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture
def sleep_token() -> Iterator[str]:
    """A ``sleep`` argument no other process uses; whatever still runs with it is killed afterwards."""
    token = f"600.{uuid.uuid4().int % 10**9:09d}"
    yield token
    for pid in processes_with(token):
        os.kill(pid, signal.SIGKILL)


# --- what a check cannot see -------------------------------------------------------------------------


def add_phase(url: str, check_command: str) -> None:
    spec = RunSpec(run_id=RUN, phases=[PhaseSpec(phase_id="p1", description="Write the string helpers.",
                                                 category="implementation", complexity="low",
                                                 deliverables=["pkg/string_helper.py"], check_command=check_command)])
    with session_scope(url) as session:
        create_run(session, spec)


def failure_reason(url: str) -> str:
    with session_scope(url) as session:
        return session.execute(sa.select(Phase.last_failure_reason).where(Phase.run_id == RUN)).scalar_one() or ""


def drain_in_a_worker(url: str, tmp_path: Path, secrets: dict[str, str], **settings: str) -> str:
    """``autopack drain one`` in a fresh process whose environment holds ``secrets`` from its start; its output."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "DATABASE_URL": url, **secrets, **settings}
    done = subprocess.run([sys.executable, "-c", "from autopack.cli import main; main()", "drain", "one",
                           "--run-id", RUN, "--phase-id", "p1"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    return done.stdout + done.stderr


def environ_probe(prefix: str) -> str:
    """A check that prints, reversed (past any redaction), every environment line of every process holding ``prefix``."""
    return (f"sh -c 'cat /proc/[0-9]*/environ /proc/$PPID/environ 2>/dev/null | tr \"\\0\" \"\\n\" | grep {prefix} "
            f"| rev; echo probe-ran; exit 1'")


def planted_secrets(prefix: str) -> dict[str, str]:
    return {name: f"{prefix}-{name.lower()}" for name in ("AUTOPACK_TEST_CANARY", "GITHUB_TOKEN", "OPENAI_API_KEY")}


def test_the_workers_environment_reaches_neither_the_check_nor_the_records(
        db_url: str, tmp_path: Path, bwrap: None) -> None:
    prefix = f"canary{uuid.uuid4().hex[:12]}"
    add_phase(db_url, environ_probe(prefix))
    secrets = planted_secrets(prefix)
    output = drain_in_a_worker(db_url, tmp_path, secrets)
    reason = failure_reason(db_url)
    assert reason.endswith("probe-ran"), reason
    for text in (reason, output):
        for value in secrets.values():
            assert value not in text and value[::-1] not in text


def test_opted_out_the_check_runs_unsandboxed_and_sees_the_worker(db_url: str, tmp_path: Path) -> None:
    prefix = f"canary{uuid.uuid4().hex[:12]}"
    add_phase(db_url, environ_probe(prefix))
    drain_in_a_worker(db_url, tmp_path, planted_secrets(prefix), AUTOPACK_CHECK_SANDBOX="none",
                      AUTOPACK_CHECK_SANDBOX_BWRAP=str(tmp_path / "no-bwrap"))
    assert f"{prefix}-autopack_test_canary"[::-1] in failure_reason(db_url)


def test_home_prefect_home_and_the_database_file_are_unreadable(
        db_url: str, tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch, bwrap: None) -> None:
    prefect = tmp_path / "home" / ".prefect"
    prefect.mkdir(parents=True)
    (prefect / "profiles.toml").write_text("PREFECT_API_KEY = 'CANARY'\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PREFECT_HOME", str(prefect))
    database = tmp_path / "autopack.db"
    if db_url.startswith("sqlite"):
        assert database.read_bytes().startswith(b"SQLite format 3")
    reason = run_check_command(f"sh -c 'cat $HOME/.prefect/profiles.toml {prefect}/profiles.toml {database} "
                               f"../autopack.db 2>/dev/null | grep -a -c -e CANARY -e \"SQLite format 3\"; exit 1'",
                               workspace, timeout=TIMEOUT)
    assert tail(reason) == "0"


def test_secret_files_inside_a_bound_directory_are_covered(
        tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch, bwrap: None) -> None:
    shared = tmp_path / "shared"
    (shared / "prefect").mkdir(parents=True)
    (shared / "db").mkdir()
    (shared / "visible.txt").write_text("visible-marker\n")
    (shared / "prefect" / "profiles.toml").write_text("CANARY\n")
    database = shared / "db" / "autopack.db"
    sqlite3.connect(database).execute("CREATE TABLE t (x)").connection.commit()
    (shared / "url.txt").write_text(f"sqlite:///{database}\n")
    (tmp_path / ".env").write_text("CANARY=1\n")
    monkeypatch.setenv("AUTOPACK_CHECK_SANDBOX_BIND", f"{shared},{tmp_path / '.env'}")
    monkeypatch.setenv("PREFECT_HOME", str(shared / "prefect"))
    monkeypatch.setenv("DATABASE_URL_FILE", str(shared / "url.txt"))
    reason = run_check_command(f"sh -c 'cat {shared}/visible.txt; cat {shared}/prefect/profiles.toml {shared}/url.txt "
                               f"{database} {tmp_path}/.env 2>/dev/null | grep -a -c -e CANARY -e \"SQLite format\" "
                               f"-e sqlite: ; ls -A {shared}/db {shared}/prefect | wc -w; exit 1'",
                               workspace, timeout=TIMEOUT)
    assert reason is not None and tail(reason) == "visible-marker 0 2", reason  # two empty listings: their names


def test_a_database_inside_the_workspace_is_covered_and_the_workspace_kept(
        workspace: Path, monkeypatch: pytest.MonkeyPatch, bwrap: None) -> None:
    database = workspace / "autopack.db"
    sqlite3.connect(database).execute("CREATE TABLE t (x)").connection.commit()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")
    (workspace / "deliverable.txt").write_text("kept\n")
    reason = run_check_command("sh -c 'cat deliverable.txt; cat autopack.db 2>/dev/null | grep -a -c SQLite; exit 1'", workspace,
                               timeout=TIMEOUT)
    assert tail(reason) == "kept 0"


def test_writes_outside_the_workspace_never_reach_the_host(
        tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch, bwrap: None) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("AUTOPACK_CHECK_SANDBOX_BIND", str(shared))
    planted = Path("/tmp") / f"autopack-sandbox-{uuid.uuid4().hex}"
    reason = run_check_command(f"sh -c 'touch ../outside.txt {shared}/planted.txt {planted} $HOME/planted.txt; "
                               "touch inside.txt; exit 0'", workspace, timeout=TIMEOUT)
    assert reason is None
    assert (workspace / "inside.txt").exists()
    leaked = [p for p in (tmp_path / "outside.txt", shared / "planted.txt", planted,
                          Path(os.environ["HOME"]) / "planted.txt") if p.exists()]
    for path in leaked:
        path.unlink()
    assert leaked == []


def test_a_check_cannot_connect_to_a_server_on_the_host(workspace: Path, bwrap: None) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        reason = run_check_command(f"python -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 5)\"",
                                   workspace, timeout=TIMEOUT)
        assert reason is not None and "ConnectionRefusedError" in reason
        with pytest.raises(BlockingIOError):
            server.accept()


def test_nothing_a_check_started_outlives_it(workspace: Path, sleep_token: str, bwrap: None) -> None:
    reason = run_check_command(f"sh -c 'sleep {sleep_token} </dev/null >/dev/null 2>&1 & exit 0'", workspace,
                               timeout=TIMEOUT)
    assert reason is None
    assert processes_with(sleep_token) == []


def test_a_timeout_kills_everything_inside_the_sandbox(workspace: Path, sleep_token: str, bwrap: None) -> None:
    reason = run_check_command(f"sh -c 'sleep {sleep_token} & sleep {sleep_token}'", workspace, timeout=0.5)
    assert reason is not None and reason.startswith("check_command timed out")
    assert processes_with(sleep_token) == []


def test_recorded_check_output_is_redacted(workspace: Path, monkeypatch: pytest.MonkeyPatch, bwrap: None) -> None:
    token = f"ghp_{uuid.uuid4().hex}"
    monkeypatch.setenv("GITHUB_TOKEN", token)
    reason = run_check_command(f"sh -c 'echo {token} | cut -c 1-50; exit 1'", workspace, timeout=TIMEOUT)
    assert reason is not None and token not in reason and tail(reason) == "***"


def test_a_variable_passed_to_checks_is_masked_when_echoed(workspace: Path, monkeypatch: pytest.MonkeyPatch,
                                                            bwrap: None) -> None:
    """An operator's ``AUTOPACK_CHECK_COMMAND_ENV=NPM_TOKEN`` is a credential as far as the record goes."""
    value = f"npm_{uuid.uuid4().hex}"
    monkeypatch.setenv("NPM_TOKEN", value)
    monkeypatch.setenv("AUTOPACK_CHECK_COMMAND_ENV", "NPM_TOKEN")
    reason = run_check_command("sh -c 'echo \"token=$NPM_TOKEN\"; exit 1'", workspace, timeout=TIMEOUT)
    assert reason is not None and value not in reason and tail(reason) == "token=***"


def test_a_check_cannot_forge_log_lines_or_terminal_sequences(workspace: Path, bwrap: None) -> None:
    """Before: the command's newlines and the output's escape sequences reached the log, the row and the API."""
    reason = run_check_command("sh -c 'printf \"\\033]0;pwned\\007FAKE\\n[db] id=x\"; exit 1'\n[phase] forged",
                               workspace, timeout=TIMEOUT)
    assert reason is not None and "\n" not in reason and "\x1b" not in reason and "\x07" not in reason
    assert "\\x1b]0;pwned\\x07FAKE [db] id=x" in reason


def test_a_check_printing_gigabytes_costs_the_worker_a_bounded_tail(workspace: Path, bwrap: None) -> None:
    """Before: every byte was held in memory (2 GB of output, 6 GB of memory) and the phase passed."""
    reason = run_check_command("sh -c 'head -c 50000000 /dev/zero | tr \"\\0\" x; echo END; exit 1'", workspace,
                               timeout=TIMEOUT)
    assert reason is not None and "(its output was 50,000,004 bytes; the last 65,536 kept)" in reason
    assert tail(reason).endswith("xxEND")


# --- what a check still can do ------------------------------------------------------------------------


def test_a_pytest_check_on_a_deliverable_passes(workspace: Path, bwrap: None) -> None:
    (workspace / "pkg").mkdir()
    (workspace / "pkg" / "__init__.py").write_text("")
    (workspace / "pkg" / "words.py").write_text("def shout(text):\n    return text.upper() + '!'\n")
    (workspace / "test_words.py").write_text("from pkg.words import shout\n\n\ndef test_shout():\n"
                                             "    assert shout('hi') == 'HI!'\n")
    command = "env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python -m pytest -q -p no:cacheprovider test_words.py"
    assert run_check_command(command, workspace, timeout=TIMEOUT) is None
    failing = run_check_command("python -c \"import pkg.words as w; assert w.shout('a') == 'b', 'wrong'\"",
                                workspace, timeout=TIMEOUT)
    assert failing is not None and "AssertionError: wrong" in failing


# --- without a sandbox ----------------------------------------------------------------------------------


def test_without_bwrap_a_check_is_refused_in_one_line(
        tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_CHECK_SANDBOX_BWRAP", str(tmp_path / "no-bwrap"))
    reason = run_check_command("touch ran.txt", workspace, timeout=TIMEOUT)
    assert reason is not None and "\n" not in reason
    assert reason.startswith("check_command refused: no sandbox: bubblewrap") and "AUTOPACK_CHECK_SANDBOX=none" in reason
    assert not (workspace / "ran.txt").exists()


def test_a_bwrap_that_fails_its_probe_is_refused(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_CHECK_SANDBOX_BWRAP", "/bin/false")
    reason = run_check_command("touch ran.txt", workspace, timeout=TIMEOUT)
    assert reason is not None and "cannot start a sandbox here" in reason
    assert not (workspace / "ran.txt").exists()


def test_without_a_sandbox_the_phase_fails_before_any_llm_call(
        db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_CHECK_SANDBOX_BWRAP", str(tmp_path / "no-bwrap"))
    add_phase(db_url, "true")
    with session_scope(db_url) as session:
        claim = leases.claim_phase(session, RUN, "p1", "worker-1")
    assert claim is not None
    result = execute_phase(RUN, "p1", claim=claim, db=database_at(db_url), provider=SimulatedProvider(seed=1))
    assert (result.final_state, result.failure_stage, result.llm_calls) == ("FAILED", "before_llm", 0)
    assert failure_reason(db_url).startswith("check_command refused: no sandbox:")
    assert not (run_workspace(RUN) / "pkg").exists()


def test_opted_out_a_check_runs_without_bwrap(
        tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_CHECK_SANDBOX", "none")
    monkeypatch.setenv("AUTOPACK_CHECK_SANDBOX_BWRAP", str(tmp_path / "no-bwrap"))
    assert run_check_command("touch ../outside.txt", workspace, timeout=TIMEOUT) is None
    assert (tmp_path / "outside.txt").exists()
