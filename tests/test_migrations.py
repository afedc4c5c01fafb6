"""One migration chain: it matches the ORM exactly, adopts legacy databases, and is idempotent."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from autopack.db.engine import get_engine
from autopack.db.handle import database_at
from autopack.db.migrate import (
    HEAD_REVISION,
    alembic_config,
    current_revision,
    head_revision,
    known_revisions,
    scripts_head,
    upgrade_database,
)
from autopack.db.models import Base


def _drift(url: str) -> list[object]:
    with get_engine(url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_migrated_schema_matches_the_orm_exactly(db_url: str) -> None:
    assert _drift(db_url) == []


def test_upgrade_creates_a_database_id_and_reaches_head(db_url: str) -> None:
    with get_engine(db_url).connect() as connection:
        ids = connection.execute(sa.text("SELECT db_id FROM db_meta")).scalars().all()
    assert len(ids) == 1 and len(ids[0]) == 32


def test_the_code_needs_the_newest_migration_script() -> None:
    assert HEAD_REVISION == scripts_head()


def test_the_known_revisions_are_the_scripts_revisions() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config())
    assert known_revisions() == {script.revision for script in scripts.walk_revisions()}


def test_the_schema_check_reads_the_revision_alembic_wrote(db_url: str) -> None:
    with get_engine(db_url).connect() as connection:
        assert current_revision(connection) == MigrationContext.configure(connection).get_current_revision()
        assert current_revision(connection) == HEAD_REVISION


def test_a_database_without_alembic_version_has_no_revision(tmp_path: Path) -> None:
    assert current_revision(get_engine(f"sqlite:///{tmp_path / 'bare.db'}")) is None


def test_second_upgrade_is_a_no_op(db_url: str) -> None:
    report = upgrade_database(database_at(db_url))
    assert not report.changed and report.revision_after == head_revision() and report.backup_path is None


def test_two_databases_get_different_ids(empty_db_url: str, tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade_database(database_at(empty_db_url))
    upgrade_database(database_at(other))
    ids = set()
    for url in (empty_db_url, other):
        with get_engine(url).connect() as connection:
            ids.add(connection.execute(sa.text("SELECT db_id FROM db_meta")).scalar_one())
    assert len(ids) == 2


# --- legacy databases (written by the original Autopack, reference §9.1) ------------------------------

LEGACY_SCHEMA = """
CREATE TABLE runs (id VARCHAR PRIMARY KEY, state VARCHAR(64) NOT NULL, safety_profile VARCHAR NOT NULL,
    token_cap INTEGER, tokens_used INTEGER, created_at TIMESTAMP, goal_anchor TEXT);
CREATE TABLE tiers (id INTEGER PRIMARY KEY, tier_id VARCHAR NOT NULL, run_id VARCHAR REFERENCES runs(id), name VARCHAR);
CREATE TABLE phases (id INTEGER PRIMARY KEY, phase_id VARCHAR NOT NULL, run_id VARCHAR NOT NULL REFERENCES runs(id),
    tier_id INTEGER NOT NULL REFERENCES tiers(id), phase_index INTEGER NOT NULL, name VARCHAR NOT NULL,
    description TEXT, state VARCHAR(16) NOT NULL, task_category VARCHAR, complexity VARCHAR, builder_mode VARCHAR,
    scope JSON, max_builder_attempts INTEGER, builder_attempts INTEGER, last_failure_reason TEXT,
    CONSTRAINT uq_phases_run_id_phase_id UNIQUE (run_id, phase_id));
CREATE TABLE llm_usage_events (id INTEGER PRIMARY KEY, provider VARCHAR NOT NULL, model VARCHAR NOT NULL,
    run_id VARCHAR, phase_id VARCHAR, role VARCHAR NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, created_at TIMESTAMP NOT NULL, is_doctor_call BOOLEAN);
CREATE TABLE token_estimation_v2_events (event_id INTEGER PRIMARY KEY, run_id VARCHAR NOT NULL,
    phase_id VARCHAR NOT NULL, timestamp TIMESTAMP NOT NULL, category VARCHAR NOT NULL, complexity VARCHAR NOT NULL,
    deliverable_count INTEGER NOT NULL, deliverables_json TEXT NOT NULL, predicted_output_tokens INTEGER NOT NULL,
    actual_output_tokens INTEGER NOT NULL, selected_budget INTEGER NOT NULL, success BOOLEAN NOT NULL,
    truncated BOOLEAN NOT NULL, stop_reason VARCHAR, model VARCHAR, smape_percent FLOAT, waste_ratio FLOAT,
    underestimated BOOLEAN, created_at TIMESTAMP NOT NULL, is_truncated_output BOOLEAN NOT NULL,
    api_reference_required BOOLEAN, examples_required BOOLEAN, research_required BOOLEAN,
    usage_guide_required BOOLEAN, context_quality VARCHAR,
    FOREIGN KEY (run_id, phase_id) REFERENCES phases (run_id, phase_id) ON DELETE CASCADE);
CREATE TABLE decision_log (id INTEGER PRIMARY KEY, run_id VARCHAR, decision TEXT);
"""

LEGACY_ROWS = """
INSERT INTO runs VALUES ('legacy-run', 'DONE_FAILED_REQUIRES_HUMAN_REVIEW', 'normal', 5000000, 12, '2025-12-20 10:00:00', NULL);
INSERT INTO tiers VALUES (1, 'T1', 'legacy-run', 'Tier');
INSERT INTO phases VALUES (1, 'p1', 'legacy-run', 1, 0, 'P1', 'goal', 'FAILED', 'IMPLEMENT_FEATURE', 'MEDIUM', NULL,
    '{"deliverables": ["src/a.py"]}', 5, 2, 'patch failed');
INSERT INTO phases VALUES (2, 'p2', 'legacy-run', 1, 1, 'P2', 'goal', 'GATE', 'docs', 'low', NULL, NULL, 5, 0, NULL);
INSERT INTO llm_usage_events VALUES (1, 'anthropic', 'claude', 'legacy-run', 'p1', 'builder', 400, 600, '2025-12-20 10:01:00', FALSE);
INSERT INTO llm_usage_events VALUES (2, 'openai', 'gpt', 'legacy-run', 'p1', 'doctor', 700, 300, '2025-12-20 10:02:00', TRUE);
INSERT INTO token_estimation_v2_events (event_id, run_id, phase_id, timestamp, category, complexity, deliverable_count,
    deliverables_json, predicted_output_tokens, actual_output_tokens, selected_budget, success, truncated,
    created_at, is_truncated_output) VALUES
    (1, 'legacy-run', 'p1', '2025-12-20 10:01:00', 'IMPLEMENT_FEATURE', 'MEDIUM', 1, '[]', 7020, 12288, 12288, FALSE, TRUE, '2025-12-20', FALSE),
    (2, 'legacy-run', 'p1', '2025-12-20 10:03:00', 'IMPLEMENT_FEATURE', 'MEDIUM', 1, '[]', 7020, 12288, 12288, FALSE, TRUE, '2025-12-20', FALSE),
    (3, 'legacy-run', 'p2', '2025-12-20 10:05:00', 'documentation', 'low', 1, '[]', 2600, 1200, 8192, TRUE, FALSE, '2025-12-20', FALSE);
INSERT INTO decision_log VALUES (1, 'legacy-run', 'kept as is');
"""


def _legacy_db(path: Path) -> str:
    connection = sqlite3.connect(path)
    connection.executescript(LEGACY_SCHEMA + LEGACY_ROWS)
    connection.commit()
    connection.close()
    return f"sqlite:///{path}"


def _rows(url: str, sql: str) -> list[tuple]:
    with get_engine(url).connect() as connection:
        return [tuple(r) for r in connection.execute(sa.text(sql)).all()]


def test_legacy_upgrade_keeps_every_row_and_writes_a_backup(tmp_path: Path) -> None:
    url = _legacy_db(tmp_path / "autopack_legacy.db")
    report = upgrade_database(database_at(url))
    assert report.legacy
    assert report.backup_path is not None and report.backup_path.exists()
    assert "autopack_legacy.db" in report.backup_path.name
    for table, count in report.row_counts_before.items():
        assert report.row_counts_after[table] == count, table


def test_legacy_upgrade_is_safe_to_run_twice(tmp_path: Path) -> None:
    url = _legacy_db(tmp_path / "legacy.db")
    first = upgrade_database(database_at(url))
    second = upgrade_database(database_at(url))
    assert not second.changed and second.backup_path is None
    assert second.row_counts_after == first.row_counts_after


def test_legacy_upgrade_backfills_ceiling_and_marks_it(tmp_path: Path) -> None:
    url = _legacy_db(tmp_path / "legacy.db")
    upgrade_database(database_at(url))
    rows = _rows(url, "SELECT event_id, actual_max_tokens, actual_max_tokens_backfilled, attempt_index, source, "
                      "schema_version FROM token_estimation_v2_events ORDER BY event_id")
    assert rows == [(1, 12288, 1, 0, "legacy", 1), (2, 12288, 1, 1, "legacy", 1), (3, 8192, 1, 0, "legacy", 1)]


def test_legacy_upgrade_keeps_foreign_values_and_unused_tables(tmp_path: Path) -> None:
    url = _legacy_db(tmp_path / "legacy.db")
    upgrade_database(database_at(url))
    assert _rows(url, "SELECT state, task_category, complexity FROM phases ORDER BY id") == [
        ("FAILED", "IMPLEMENT_FEATURE", "MEDIUM"),
        ("GATE", "docs", "low"),
    ]
    assert _rows(url, "SELECT decision FROM decision_log") == [("kept as is",)]
    assert _rows(url, "SELECT safety_profile FROM runs") == [("normal",)]
    assert _rows(url, "SELECT name FROM tiers") == [("Tier",)]


def test_legacy_usage_rows_get_a_total_and_are_marked_unverified(tmp_path: Path) -> None:
    url = _legacy_db(tmp_path / "legacy.db")
    upgrade_database(database_at(url))
    assert _rows(url, "SELECT total_tokens, split_kind FROM llm_usage_events ORDER BY id") == [
        (1000, "legacy_unverified"),
        (1000, "legacy_unverified"),
    ]


def test_upgraded_legacy_database_accepts_new_rows(tmp_path: Path) -> None:
    url = _legacy_db(tmp_path / "legacy.db")
    upgrade_database(database_at(url))
    with get_engine(url).begin() as connection:
        connection.execute(
            sa.text("INSERT INTO llm_usage_events (provider, total_tokens, split_kind, created_at) "
                    "VALUES ('openai', 10, 'total_only', CURRENT_TIMESTAMP)")
        )
        connection.execute(sa.text("INSERT INTO runs (id, state) VALUES ('new-run', 'RUN_CREATED')"))
    assert _rows(url, "SELECT COUNT(*) FROM llm_usage_events WHERE prompt_tokens IS NULL") == [(1,)]
    missing = {f"{diff[2]}.{diff[3].name}" for diff in _drift(url) if diff[0] == "add_column"}
    assert not missing


def test_legacy_postgres_database_is_dumped_then_adopted(empty_db_url: str) -> None:
    if not empty_db_url.startswith("postgresql"):
        pytest.skip("the SQLite case is covered above")
    with get_engine(empty_db_url).begin() as connection:
        for statement in filter(str.strip, (LEGACY_SCHEMA + LEGACY_ROWS).split(";")):
            connection.execute(sa.text(statement))
    report = upgrade_database(database_at(empty_db_url))
    assert report.legacy and report.backup_path is not None
    assert "CREATE TABLE public.token_estimation_v2_events" in report.backup_path.read_text()
    for table, count in report.row_counts_before.items():
        assert report.row_counts_after[table] == count, table
    assert _rows(empty_db_url, "SELECT actual_max_tokens, source FROM token_estimation_v2_events ORDER BY event_id") == [
        (12288, "legacy"), (12288, "legacy"), (8192, "legacy")]
    assert not upgrade_database(database_at(empty_db_url)).changed
