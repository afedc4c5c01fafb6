"""`autopack pipeline run` refuses bad set-ups in one line, before Prefect starts or anything is written."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runner import run_cli
from log_records import records_starting_with

from autopack.cli.console import TERMINATED_EXIT, TERMINATED_LINE

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "autopack").mkdir(parents=True)
    (repo / "autopack" / "token_estimator.py").write_text((ROOT / "autopack" / "token_estimator.py").read_text())
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def test_without_init_a_missing_database_is_refused_and_not_created(
    capsys: pytest.CaptureFixture[str], checkout: Path, tmp_path: Path
) -> None:
    code, _, err = run_cli(capsys, "pipeline", "run", "--dry-run", "--target-repo", str(checkout))
    assert code == 2 and "autopack db upgrade" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "autopack.db").exists()



def test_weeks_without_init_is_refused_rather_than_ignored(
    capsys: pytest.CaptureFixture[str], checkout: Path, tmp_path: Path
) -> None:
    """``--weeks`` only sizes what ``--init`` creates: given alone it did nothing, silently."""
    code, _, err = run_cli(capsys, "pipeline", "run", "--weeks", "4", "--dry-run", "--target-repo", str(checkout))
    assert code == 2
    assert err.strip().splitlines() == [
        "error: Invalid value for '--weeks': --weeks takes effect with --init only (see `autopack pipeline run --help`)"]
    assert not (tmp_path / "autopack.db").exists()

def test_a_target_that_is_not_an_autopack_checkout_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "pipeline", "run", "--init", "--dry-run", "--target-repo", str(tmp_path))
    assert code == 2 and "token_estimator.py" in err
    assert not (tmp_path / "autopack.db").exists()


def test_init_with_an_expected_id_refuses_to_create_a_new_database(
    capsys: pytest.CaptureFixture[str], checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOPACK_EXPECTED_DB_ID", "0" * 32)
    code, _, err = run_cli(capsys, "pipeline", "run", "--init", "--dry-run", "--target-repo", str(checkout))
    assert code == 3 and "DB_MISMATCH" in err
    assert not (tmp_path / "autopack.db").exists()


def test_an_empty_database_is_refused_without_init(
    capsys: pytest.CaptureFixture[str], checkout: Path, db_url: str
) -> None:
    code, _, err = run_cli(capsys, "pipeline", "run", "--dry-run", "--target-repo", str(checkout))
    assert code == 2 and "empty" in err


def test_pipeline_init_creates_the_database_and_the_seed_runs_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'telemetry.db'}")
    assert run_cli(capsys, "pipeline", "init")[0] == 0
    identity = json.loads(run_cli(capsys, "db", "identity", "--json")[1])
    assert identity["counts"]["runs"] == 4 and sum(identity["counts"]["phases"].values()) == 61
    code, out, _ = run_cli(capsys, "pipeline", "init")
    assert code == 0
    assert "seed runs already present; nothing created" in out


def test_the_flows_come_from_the_checkout_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh clone runs its own flows/ (not installed anywhere); elsewhere, those of the checkout autopack is
    installed from (an editable install, as scripts/install.sh makes)."""
    from autopack.cli.pipeline import PIPELINE_ENTRYPOINT, repository_root

    clone = tmp_path / "clone"
    (clone / "flows").mkdir(parents=True)
    (clone / PIPELINE_ENTRYPOINT.partition(":")[0]).write_text("")
    monkeypatch.chdir(clone)
    assert repository_root() == clone
    monkeypatch.chdir(tmp_path)
    assert repository_root() == ROOT


@pytest.fixture
def publish_checks() -> Iterator[list[str]]:
    with records_starting_with("autopack.pipeline", "publish settings checked") as checks:
        yield checks


def test_the_pipeline_command_checks_the_publish_settings_once(
    capsys: pytest.CaptureFixture[str], checkout: Path, db_url: str, prefect_harness: None, tmp_path: Path,
    publish_checks: list[str],
) -> None:
    """The command checks before it creates anything and hands its check to the flow, which does not check again."""
    code, out, err = run_cli(capsys, "pipeline", "run", "--init", "--dry-run", "--skip-drain", "--target-repo",
                             str(checkout), "--output-dir", str(tmp_path / "reports"))
    assert code == 0, err
    assert "outcome: no calibration" in out
    assert publish_checks == ["publish settings checked (dry_run=True)"]


def test_the_time_line_includes_the_guard_the_command_ran(
    capsys: pytest.CaptureFixture[str], checkout: Path, db_url: str, prefect_harness: None, tmp_path: Path,
) -> None:
    """The guard (with --init: the migration and the seed runs too) runs in the command before Prefect starts; the
    closing "time:" line left it out, though docs/benchmarks.md's quickstart table lists it."""
    code, out, err = run_cli(capsys, "pipeline", "run", "--init", "--dry-run", "--skip-drain", "--target-repo",
                             str(checkout), "--output-dir", str(tmp_path / "reports"))
    assert code == 0, err
    (line,) = [text for text in out.splitlines() if text.startswith("time: ")]
    assert line.startswith("time: init and guard ") and ", prefect start " in line


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux ``/proc``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(300)
def test_a_pipeline_run_on_its_own_temporary_prefect_server_completes_and_stops_it(
    checkout: Path, tmp_path: Path
) -> None:
    """Without PREFECT_API_URL the command starts the temporary server (``autopack.prefect_server``); the flow's
    last log lines reach it before it stops (no "Error logging to API" at exit), and nothing outlives the command:
    ``subprocess.run`` returns only once every holder of its pipes is gone."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_API_URL", "GITHUB_"))}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}", PREFECT_HOME=str(tmp_path / "prefect"),
               PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", "from autopack.cli import run; run()", "pipeline", "run", "--init", "--dry-run",
         "--skip-drain", "--target-repo", str(checkout), "--output-dir", str(tmp_path / "reports")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "outcome: no calibration" in out.stdout
    assert "Started a temporary Prefect server on http://127.0.0.1:" in out.stderr
    assert "Error logging to API" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]


def stop_a_draining_pipeline_run(checkout: Path, tmp_path: Path, how: signal.Signals) -> tuple[int, list[str]]:
    """Start ``autopack pipeline run --init`` (no PREFECT_API_URL: a temporary server), send ``how`` once the
    drain's first phase is leased; (exit code, its stderr lines). Asserts that every child process (the
    temporary Prefect server) is gone with it: the server holds the command's stderr, which must close."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_API_URL", "GITHUB_"))}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}", PREFECT_HOME=str(tmp_path / "prefect"),
               AUTOPACK_SIM_LATENCY_SECONDS="0.5", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from autopack.cli import run; run()", "pipeline", "run", "--init", "--dry-run",
         "--target-repo", str(checkout), "--output-dir", str(tmp_path / "reports")],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=lambda: [*map(lines.put, proc.stderr or ()), lines.put(None)], daemon=True)
    reader.start()
    servers: list[int] = []
    try:
        while "[1/" not in (lines.get(timeout=240) or "[1/"):  # the drain's first phase: phases are leased
            pass
        servers = children(proc.pid)
        assert servers
        proc.send_signal(how)
        code = proc.wait(timeout=120)
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in servers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
    assert not reader.is_alive(), "the temporary Prefect server outlived the command (it holds its stderr)"
    assert not any(running(pid) for pid in servers)
    return code, [line.rstrip() for line in iter(lines.get_nowait, None)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigterm_stops_a_pipeline_run_in_one_line_and_stops_its_temporary_server(
    checkout: Path, tmp_path: Path
) -> None:
    """Before: Prefect's SIGTERM bridge killed the process on the spot (exit 143, no line) and its temporary
    Prefect server went on running, orphaned (holding the command's stderr open)."""
    code, rest = stop_a_draining_pipeline_run(checkout, tmp_path, signal.SIGTERM)
    assert code == TERMINATED_EXIT
    assert TERMINATED_LINE in rest and not any("Traceback" in line for line in rest)  # then "Stopping …"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_sigkilled_pipeline_run_leaves_no_temporary_prefect_server_behind(checkout: Path, tmp_path: Path) -> None:
    """Before: Prefect's temporary server is stopped at exit only, so after a ``kill -9`` it ran on, orphaned,
    holding its port and Prefect's SQLite database."""
    code, _ = stop_a_draining_pipeline_run(checkout, tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
