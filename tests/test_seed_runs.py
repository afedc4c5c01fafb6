"""Seed runs: v4 as in reference §6, the later mixes, ensure_seed_runs and ``autopack runs``."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import sqlalchemy as sa
from cli_runner import run_cli

from autopack.db.engine import session_scope
from autopack.db.models import Phase, Run
from autopack.errors import InputError
from autopack.execution.seed_runs import (
    MAX_SEED_WEEKS,
    SEED_RUNS,
    V4_RUN_ID,
    ensure_seed_runs,
    seed_run_ids,
    seed_run_spec,
    telemetry_collection_v4_spec,
    telemetry_collection_v5_spec,
    telemetry_collection_v6_spec,
    telemetry_collection_v7_spec,
    week_run_id,
)
from autopack.run_order import sorted_runs
from autopack.token_estimator import PhaseFeatures, estimate


def mix(spec) -> Counter[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return Counter((p.category, p.complexity) for p in spec.phases)


def test_v4_has_the_ten_phases_of_the_original() -> None:
    spec = telemetry_collection_v4_spec()
    assert [p.phase_id for p in spec.phases] == [
        "telemetry-p1-string-util", "telemetry-p2-number-util", "telemetry-p3-list-util", "telemetry-p4-date-util",
        "telemetry-p5-dict-util", "telemetry-p6-string-tests", "telemetry-p7-number-tests", "telemetry-p8-list-tests",
        "telemetry-p9-readme", "telemetry-p10-file-util",
    ]
    assert mix(spec) == Counter({("implementation", "low"): 2, ("implementation", "medium"): 4, ("tests", "low"): 1,
                                 ("tests", "medium"): 2, ("docs", "low"): 1})
    p6 = spec.phases[5]
    assert p6.deliverables == ["examples/telemetry_utils/test_string_helper.py", "examples/telemetry_utils/conftest.py"]
    assert p6.read_only_context == ["examples/telemetry_utils/string_helper.py"]
    assert all(p.scope_paths == ["examples/telemetry_utils/"] for p in spec.phases)
    assert spec.token_cap == 500_000 and all(p.max_builder_attempts == 3 for p in spec.phases)


def test_later_seed_mixes() -> None:
    assert Counter(p.category for p in telemetry_collection_v5_spec().phases) == {"implementation": 15, "tests": 7, "docs": 3}
    assert mix(telemetry_collection_v6_spec()) == Counter({("docs", "low"): 10, ("docs", "medium"): 2,
                                                           ("implementation", "medium"): 2, ("testing", "medium"): 6})
    assert mix(telemetry_collection_v7_spec()) == Counter({("docs", "medium"): 3, ("tests", "low"): 1,
                                                           ("tests", "medium"): 2})
    assert sum(len(factory().phases) for factory in SEED_RUNS.values()) >= 60


@pytest.mark.parametrize("run_id", list(SEED_RUNS))
def test_goals_avoid_doc_synthesis_misfires_and_docs_are_capped(run_id: str) -> None:
    for phase in SEED_RUNS[run_id]().phases:
        text = phase.description.lower()
        assert "comprehensive" not in text and "example" not in text and "endpoint" not in text
        est = estimate(PhaseFeatures(phase.category, phase.complexity, tuple(phase.deliverables), phase.description,
                                     tuple(phase.scope_paths)))
        assert est.model != "doc_synthesis", phase.phase_id
        if est.category in ("docs", "doc_sot_update"):
            assert "at most" in text and "lines" in text, phase.phase_id


def test_ensure_seed_runs_creates_only_missing_runs(db_url: str) -> None:
    with session_scope(db_url) as session:
        assert ensure_seed_runs(session, [V4_RUN_ID]) == [V4_RUN_ID]
    with session_scope(db_url) as session:
        created = ensure_seed_runs(session, list(SEED_RUNS))
    assert created == [r for r in SEED_RUNS if r != V4_RUN_ID]
    with session_scope(db_url) as session:
        assert ensure_seed_runs(session, list(SEED_RUNS)) == []
        phases = session.execute(sa.select(sa.func.count()).select_from(Phase)).scalar_one()
        runs = session.execute(sa.select(sa.func.count()).select_from(Run)).scalar_one()
    assert phases >= 60 and runs == 4


def test_unknown_seed_run_writes_nothing(db_url: str) -> None:
    with pytest.raises(InputError), session_scope(db_url) as session:
        ensure_seed_runs(session, [V4_RUN_ID, "nope"])
    with session_scope(db_url) as session:
        assert session.execute(sa.select(sa.func.count()).select_from(Run)).scalar_one() == 0


def test_create_telemetry_run_command(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "runs", "create-telemetry-run")
    assert code == 0
    assert "10 QUEUED phases" in out and "implementation: 6 phases (2 low, 4 medium)" in out
    code, _, err = run_cli(capsys, "runs", "create-telemetry-run")
    assert code == 2 and "already exists" in err and "--replace" in err and "Traceback" not in err
    with session_scope(db_url) as session:
        session.execute(sa.update(Phase).values(state="COMPLETE"))
    code, _, _ = run_cli(capsys, "runs", "create-telemetry-run", "--replace")
    assert code == 0
    with session_scope(db_url) as session:
        states = session.execute(sa.select(Phase.state).where(Phase.run_id == V4_RUN_ID)).scalars().all()
    assert states == ["QUEUED"] * 10


def test_create_telemetry_run_with_another_id(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "runs", "create-telemetry-run", "--run-id", "my-run")[0] == 0
    with session_scope(db_url) as session:
        assert session.get(Run, "my-run") is not None


def test_runs_seed_and_list(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "runs", "seed", "--run-id", "telemetry-collection-v7")
    assert code == 0 and "telemetry-collection-v7" in out
    code, out, _ = run_cli(capsys, "runs", "list", "--json")
    assert code == 0
    (row,) = json.loads(out)
    assert row["run_id"] == "telemetry-collection-v7" and row["phases"] == {"QUEUED": 6}
    code, out, _ = run_cli(capsys, "runs", "list")
    assert "telemetry-collection-v7" in out and "QUEUED 6" in out


def test_original_script_names_still_work(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'seed.db'}"}

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    migrated = script(str(repo / "scripts/migrations/add_actual_max_tokens_to_token_estimation_v2.py"))
    assert migrated.returncode == 0, migrated.stderr
    created = script(str(repo / "scripts/create_telemetry_collection_run.py"))
    assert created.returncode == 0 and "10 QUEUED phases" in created.stdout, created.stderr
    again = script(str(repo / "scripts/create_telemetry_collection_run.py"))
    assert again.returncode == 2 and "already exists" in again.stderr


# --- weeks of collection --------------------------------------------------------------------------------------


def test_later_weeks_repeat_the_seed_phases_under_their_own_run_ids() -> None:
    ids = seed_run_ids(11)
    assert ids[:4] == list(SEED_RUNS) and len(ids) == 44 and len(set(ids)) == 44
    assert ids[4:8] == [run_id.replace("collection-", "collection-week2-") for run_id in SEED_RUNS]
    assert ids == sorted_runs(ids)  # later weeks sort after the first, in the order they were collected (week 10 too)
    week3 = seed_run_spec("telemetry-collection-week3-v4")
    assert week3.run_id == "telemetry-collection-week3-v4"
    assert [p.phase_id for p in week3.phases] == [p.phase_id for p in telemetry_collection_v4_spec().phases]


@pytest.mark.parametrize("bad", [0, -1, 53])
def test_weeks_out_of_range_are_refused(bad: int) -> None:
    with pytest.raises(InputError, match="--weeks"):
        seed_run_ids(bad)


@pytest.mark.parametrize(("week", "run_id"), [(2, "telemetry-collection-week2-v4"), (10, "telemetry-collection-week10-v4")])
def test_week_run_ids_keep_their_names_and_parse(week: int, run_id: str) -> None:
    """Databases hold week2 … week9 ids and people know them: the names did not change with the order."""
    assert week_run_id(V4_RUN_ID, week) == run_id
    assert seed_run_spec(run_id).run_id == run_id


def test_more_weeks_than_the_limit_are_refused_in_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run_cli(capsys, "pipeline", "init", "--weeks", str(MAX_SEED_WEEKS + 1))
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"less than or equal to {MAX_SEED_WEEKS}" in err
    assert not (tmp_path / "autopack.db").exists()


@pytest.mark.parametrize("run_id", ["telemetry-collection-week1-v4", "telemetry-collection-week53-v4",
                                    "telemetry-collection-week2-v9", "telemetry-collection-weekx-v4"])
def test_only_real_weeks_of_real_seed_runs_are_seed_runs(run_id: str) -> None:
    with pytest.raises(InputError, match="unknown seed run"):
        seed_run_spec(run_id)


def test_pipeline_init_with_weeks_creates_every_week_once(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "pipeline", "init", "--weeks", "2")
    assert code == 0 and "telemetry-collection-week2-v7" in out
    assert run_cli(capsys, "pipeline", "init", "--weeks", "2")[0] == 0  # nothing more to create
    with session_scope(db_url) as session:
        runs = session.execute(sa.select(sa.func.count()).select_from(Run)).scalar_one()
        phases = session.execute(sa.select(sa.func.count()).select_from(Phase)).scalar_one()
    one_week = sum(len(factory().phases) for factory in SEED_RUNS.values())
    assert runs == 8 and phases == 2 * one_week
