"""Check commands run in the bubblewrap sandbox: what a hostile check tries, and sees nothing of.

Real processes throughout: a drain worker started with secrets in its environment, real sockets, real files.
Where bubblewrap cannot run, these tests skip on a developer's machine and fail under CI.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
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
from autopack.execution.phase_runner import check_command_env, execute_phase, run_check_command
from autopack.execution.runs import create_run
from autopack.execution.sandbox import (
    MAX_PROCESSES,
    OUTPUT_LIMIT_BYTES,
    CheckRun,
    SandboxUnavailableError,
    launch,
    require_sandbox,
    run_check,
)
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
    if os.environ.get("PYTHONPATH"):  # a checkout run from a worktree: the worker imports this autopack
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
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


def test_a_passed_variable_is_masked_before_the_reason_keeps_its_last_characters(
        workspace: Path, monkeypatch: pytest.MonkeyPatch, bwrap: None) -> None:
    """The reason keeps the output's last 300 characters: a secret cut across that edge must not survive."""
    value = f"npm_{uuid.uuid4().hex}"
    monkeypatch.setenv("NPM_TOKEN", value)
    monkeypatch.setenv("AUTOPACK_CHECK_COMMAND_ENV", "NPM_TOKEN")
    padding = "B" * 290  # the token's tail falls within the last 300 characters, its head before them
    reason = run_check_command(f"sh -c 'echo \"${{NPM_TOKEN}}{padding}\"; exit 1'", workspace, timeout=TIMEOUT)
    assert reason is not None and value[-8:] not in reason and tail(reason).endswith(padding)


def test_a_check_cannot_forge_log_lines_or_terminal_sequences(workspace: Path, bwrap: None) -> None:
    """Before: the command's newlines and the output's escape sequences reached the log, the row and the API."""
    reason = run_check_command("sh -c 'printf \"\\033]0;pwned\\007FAKE\\n[db] id=x\"; exit 1'\n[phase] forged",
                               workspace, timeout=TIMEOUT)
    assert reason is not None and "\n" not in reason and "\x1b" not in reason and "\x07" not in reason
    assert "\\x1b]0;pwned\\x07FAKE [db] id=x" in reason


def check(argv: list[str], workspace: Path, timeout: float = TIMEOUT) -> CheckRun:
    return run_check(argv, workspace, check_command_env(), get_settings(), timeout=timeout)


def modes(workspace: Path) -> dict[str, int]:
    """The permission bits (setuid, setgid and sticky included) of everything in the workspace but symlinks."""
    found = {".": stat.S_IMODE(workspace.lstat().st_mode)}
    for path in workspace.rglob("*"):
        if not path.is_symlink():
            found[str(path.relative_to(workspace))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_setuid_setgid_sticky_and_world_write_bits_do_not_survive_a_check(workspace: Path, bwrap: None) -> None:
    done = check(["sh", "-c", "cp /bin/sh bsh && chmod 4755 bsh && mkdir d && chmod 3777 d && touch d/f "
                  "&& chmod 6777 d/f && mkdir locked && touch locked/g && chmod 4777 locked/g && chmod 0 locked "
                  "&& chmod 0777 ."], workspace)
    assert done.returncode == 0, done.output
    assert modes(workspace) == {".": 0o700, "bsh": 0o755, "d": 0o775, "d/f": 0o775, "locked": 0o700,
                                "locked/g": 0o775}


def test_the_workspace_is_closed_to_other_users_before_the_check_starts(workspace: Path, bwrap: None) -> None:
    workspace.chmod(0o755)
    done = check(["stat", "-c", "%a", "."], workspace)
    assert (done.returncode, done.output) == (0, "700\n")


def test_the_bits_are_stripped_after_a_timeout_once_nothing_can_set_them_again(
        workspace: Path, bwrap: None) -> None:
    done = check(["sh", "-c", "cp /bin/sh bsh; while :; do chmod 4755 bsh; chmod 0777 .; done"], workspace,
                 timeout=1.0)
    assert done.timed_out
    assert modes(workspace) == {".": 0o700, "bsh": 0o755}


def test_the_workspace_walk_does_not_follow_symlinks(tmp_path: Path, workspace: Path, bwrap: None) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o1777)
    done = check(["ln", "-s", str(outside), "link"], workspace)
    assert done.returncode == 0, done.output
    assert stat.S_IMODE(outside.stat().st_mode) == 0o1777


def test_an_allowed_variable_reaches_the_check_but_not_the_command_line(
        workspace: Path, monkeypatch: pytest.MonkeyPatch, bwrap: None) -> None:
    value = f"value-{uuid.uuid4().hex}"
    monkeypatch.setenv("AUTOPACK_CHECK_COMMAND_ENV", "MY_CHECK_SECRET")
    monkeypatch.setenv("MY_CHECK_SECRET", value)
    argv = ["sh", "-c", f'test "$MY_CHECK_SECRET" = {value}']
    started = launch(argv, workspace, check_command_env(), get_settings())
    assert [a for a in started.argv if value in a] == [argv[2]]  # the command's own text, nothing bwrap was given
    assert started.env["MY_CHECK_SECRET"] == value
    assert check(argv, workspace).returncode == 0


def test_a_check_printing_gigabytes_keeps_only_the_end(workspace: Path, bwrap: None) -> None:
    done = check(["head", "-c", "50000000", "/dev/zero"], workspace)
    assert (done.returncode, done.truncated, len(done.output)) == (0, True, OUTPUT_LIMIT_BYTES)


def test_a_truncated_output_says_so_in_the_failure_reason(workspace: Path, bwrap: None) -> None:
    done = check(["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x; echo; echo the-end; exit 1"], workspace)
    reason = done.reason("cmd", "sh", TIMEOUT)
    assert reason is not None and reason.startswith("check_command exited 1 (output truncated to its last 64 KiB)")
    assert reason.endswith("the-end")


def test_a_check_that_prints_the_start_failure_line_exited_with_its_own_status(workspace: Path, bwrap: None) -> None:
    command = "sh -c 'echo \"bwrap: execvp sh: No such file or directory\"; exit 3'"
    assert run_check_command(command, workspace, timeout=TIMEOUT) == (
        f"check_command exited 3: {command}: bwrap: execvp sh: No such file or directory")
    done = check(["sh", "-c", "echo 'bwrap: execvp sh: No such file or directory'; exit 3"], workspace)
    assert (done.returncode, done.not_started) == (3, None)


def test_a_program_whose_exec_fails_inside_the_sandbox_could_not_start(workspace: Path, bwrap: None) -> None:
    script = workspace / "check.sh"
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o755)
    done = check(["./check.sh"], workspace)
    assert done.reason("./check.sh", "./check.sh", TIMEOUT) == (
        "check_command could not start './check.sh': No such file or directory")


def test_a_fork_bomb_runs_out_of_processes(workspace: Path, sleep_token: str, bwrap: None) -> None:
    done = check(["sh", "-c", f"i=0; while [ $i -lt {2 * MAX_PROCESSES} ]; do sleep {sleep_token} & i=$((i+1)); "
                  "done; echo started-all"], workspace)
    assert not done.timed_out and "fork" in done.output.lower() and "started-all" not in done.output, done.output
    assert processes_with(sleep_token) == []


def test_the_default_api_key_file_is_covered(
        tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch, bwrap: None) -> None:
    config = tmp_path / "config"
    (config / "autopack").mkdir(parents=True)
    key = f"key-{uuid.uuid4().hex}"
    (config / "autopack" / "api-key").write_text(key)
    (config / "autopack" / "other").write_text("visible")
    monkeypatch.delenv("AUTOPACK_API_KEY_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.setenv("AUTOPACK_CHECK_SANDBOX_BIND", str(config))
    done = check(["sh", "-c", f"cat {config}/autopack/other {config}/autopack/api-key"], workspace)
    assert done.output.startswith("visible") and "api-key: Permission denied" in done.output and key not in done.output


# --- resource limits ---------------------------------------------------------------------------------------


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Limits a test can reach in a fraction of a second."""
    for name, value in (("MEMORY_MIB", "256"), ("CPU_SECONDS", "1"), ("FILE_SIZE_MIB", "1"), ("TMP_MIB", "1")):
        monkeypatch.setenv(f"AUTOPACK_CHECK_{name}", value)


def test_a_check_allocating_beyond_its_memory_limit_fails_naming_the_limit(
        workspace: Path, small_limits: None, bwrap: None) -> None:
    assert run_check_command("python -c 'bytearray(16 << 20)'", workspace, timeout=TIMEOUT) is None
    reason = run_check_command("python -c 'bytearray(512 << 20)'", workspace, timeout=TIMEOUT)
    assert reason is not None and reason.startswith(
        "check_command probably exceeded its memory limit (256 MiB of address space per process, "
        "AUTOPACK_CHECK_MEMORY_MIB): exited 1: "), reason
    assert reason.endswith("MemoryError")


def test_a_cpu_spinning_check_is_stopped_by_its_cpu_limit_long_before_its_timeout(
        workspace: Path, small_limits: None, bwrap: None) -> None:
    started = time.monotonic()
    reason = run_check_command("sh -c 'while :; do :; done'", workspace, timeout=TIMEOUT)
    assert reason == ("check_command exceeded its CPU limit (1 s per process, AUTOPACK_CHECK_CPU_SECONDS): "
                      "killed by SIGXCPU: sh -c 'while :; do :; done': ")
    assert time.monotonic() - started < 10


def test_a_check_writing_a_file_beyond_its_size_limit_fails_naming_the_limit(
        workspace: Path, small_limits: None, bwrap: None) -> None:
    reason = run_check_command("dd if=/dev/zero of=big bs=64K count=32", workspace, timeout=TIMEOUT)
    assert reason is not None and reason.startswith(
        "check_command exceeded its file size limit (1 MiB per file, AUTOPACK_CHECK_FILE_SIZE_MIB): "
        "killed by SIGXFSZ: "), reason
    assert (workspace / "big").stat().st_size == 1 << 20


def test_a_python_check_refused_a_large_file_probably_exceeded_its_size_limit(
        workspace: Path, small_limits: None, bwrap: None) -> None:
    """Python ignores SIGXFSZ: its write fails with EFBIG, which only its output tells."""
    reason = run_check_command("python -c 'open(\"big\", \"wb\").write(bytes(2 << 20))'", workspace, timeout=TIMEOUT)
    assert reason is not None and reason.startswith("check_command probably exceeded its file size limit (1 MiB")
    assert reason.endswith("OSError: [Errno 27] File too large")


def test_the_limits_are_in_effect_inside_the_sandbox(
        workspace: Path, monkeypatch: pytest.MonkeyPatch, bwrap: None) -> None:
    for name, value in (("MEMORY_MIB", "300"), ("CPU_SECONDS", "7"), ("FILE_SIZE_MIB", "3"), ("OPEN_FILES", "100")):
        monkeypatch.setenv(f"AUTOPACK_CHECK_{name}", value)
    done = check(["cat", "/proc/self/limits"], workspace)
    assert done.returncode == 0, done.output
    limits = {line[:26].strip(): line[26:].split()[:2] for line in done.output.splitlines()[1:]}
    assert limits["Max address space"] == [str(300 << 20)] * 2
    assert limits["Max cpu time"] == ["7", "8"]
    assert limits["Max file size"] == [str(3 << 20)] * 2
    assert limits["Max open files"] == ["100", "100"]
    assert limits["Max core file size"] == ["0", "0"]
    assert limits["Max processes"] == [str(MAX_PROCESSES)] * 2


def test_the_sandboxs_temporary_space_is_bounded_and_its_root_and_dev_read_only(
        workspace: Path, small_limits: None, monkeypatch: pytest.MonkeyPatch, bwrap: None) -> None:
    monkeypatch.setenv("AUTOPACK_CHECK_FILE_SIZE_MIB", "16")
    monkeypatch.setenv("HOME", "/home/checker")
    done = check(["sh", "-c", "for d in /tmp /var/tmp $HOME /dev/shm; do head -c 2000000 /dev/zero > $d/f "
                  "|| echo \"full $d\"; done; touch /f || echo 'no /f'; touch /dev/f || echo 'no /dev/f'"], workspace)
    for what in ("full /tmp", "full /var/tmp", "full /home/checker", "full /dev/shm", "no /f", "no /dev/f"):
        assert what in done.output, done.output
    reason = done.reason("head", "head", TIMEOUT)
    assert reason is None  # the last command succeeded: a full /tmp alone does not fail a check
    failing = check(["sh", "-c", "head -c 2000000 /dev/zero > /tmp/f"], workspace)
    assert (failing.reason("head", "head", TIMEOUT) or "").startswith(
        "check_command probably filled its temporary space (each tmpfs 1 MiB, AUTOPACK_CHECK_TMP_MIB)")


def test_a_check_cannot_write_the_report_of_how_it_ended(workspace: Path, bwrap: None) -> None:
    """The helper that reports it is the sandbox's PID 1, with the report pipe open: ``/proc/1/fd`` stays closed."""
    forged = '{"not_started": "forged"}\n{"exit": -24, "cpu": 999}'
    done = check(["sh", "-c", f"for fd in /proc/1/fd/*; do echo '{forged}' > $fd; done; exit 3"], workspace)
    assert done.reason("x", "x", TIMEOUT) == "check_command exited 3: x: " + done.output.strip().replace("\n", " ")
    assert "Permission denied" in done.output


def test_a_check_starts_with_no_signal_ignored(workspace: Path, bwrap: None) -> None:
    """Before: it inherited the SIGPIPE and SIGXFSZ Python ignores (``yes | head -1``: "Broken pipe"; no SIGXFSZ)."""
    done = check(["grep", "SigIgn", "/proc/self/status"], workspace)
    assert done.output.split() == ["SigIgn:", "0" * 16]


def test_a_check_over_its_cpu_limit_fails_its_phase_in_validation(
        db_url: str, monkeypatch: pytest.MonkeyPatch, bwrap: None) -> None:
    monkeypatch.setenv("AUTOPACK_CHECK_CPU_SECONDS", "1")
    add_phase(db_url, "python -c 'while True: pass'")
    with session_scope(db_url) as session:
        claim = leases.claim_phase(session, RUN, "p1", "worker-1")
    assert claim is not None
    result = execute_phase(RUN, "p1", claim=claim, db=database_at(db_url), provider=SimulatedProvider(seed=1))
    assert (result.final_state, result.failure_stage) == ("FAILED", "validation")
    with session_scope(db_url) as session:
        state = session.execute(sa.select(Phase.state).where(Phase.run_id == RUN)).scalar_one()
    assert state != "EXECUTING"
    assert failure_reason(db_url).startswith("check_command exceeded its CPU limit (1 s per process, "
                                             "AUTOPACK_CHECK_CPU_SECONDS): killed by SIGXCPU")


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


def failed_before_any_call(url: str, check_command: str) -> str:
    """Drain a phase with this check once; it must fail before the LLM call. Its stored failure reason."""
    add_phase(url, check_command)
    with session_scope(url) as session:
        claim = leases.claim_phase(session, RUN, "p1", "worker-1")
    assert claim is not None
    result = execute_phase(RUN, "p1", claim=claim, db=database_at(url), provider=SimulatedProvider(seed=1))
    assert (result.final_state, result.failure_stage, result.llm_calls) == ("FAILED", "before_llm", 0)
    return failure_reason(url)


def test_without_a_sandbox_the_phase_fails_before_any_llm_call(
        db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_CHECK_SANDBOX_BWRAP", str(tmp_path / "no-bwrap"))
    assert failed_before_any_call(db_url, "true").startswith("check_command refused: no sandbox:")
    assert not (run_workspace(RUN, db_id=database_at(db_url).stored_id()) / "pkg").exists()


def test_a_check_program_the_sandbox_cannot_find_fails_the_phase_before_any_llm_call(db_url: str, bwrap: None) -> None:
    """Before: found after the call, its tokens spent. A ./script is not checked early: it may be a deliverable."""
    assert failed_before_any_call(db_url, "no-such-checker-xyz --strict").startswith(
        "check_command could not start 'no-such-checker-xyz': not found on the sandbox's PATH")


def test_opted_out_a_check_runs_without_bwrap(
        tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_CHECK_SANDBOX", "none")
    monkeypatch.setenv("AUTOPACK_CHECK_SANDBOX_BWRAP", str(tmp_path / "no-bwrap"))
    assert run_check_command("touch ../outside.txt", workspace, timeout=TIMEOUT) is None
    assert (tmp_path / "outside.txt").exists()
