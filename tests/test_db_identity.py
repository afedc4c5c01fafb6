"""`autopack db identity` and the guard every writing command shares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_runner import run_cli

from autopack.db.engine import get_engine, mask_url
from autopack.db.handle import database_at
from autopack.db.identity import guard, read_identity
from autopack.errors import DbIdentityMismatchError, EmptyDatabaseError, SchemaNotMigratedError


def _add_run(url: str) -> None:
    with get_engine(url).begin() as connection:
        connection.execute(sa.text("INSERT INTO runs (id, state) VALUES ('r1', 'RUN_CREATED')"))
        connection.execute(
            sa.text("INSERT INTO phases (run_id, phase_id, phase_index, state, builder_attempts, max_builder_attempts)"
                    " VALUES ('r1', 'p1', 0, 'QUEUED', 0, 3), ('r1', 'p2', 1, 'COMPLETE', 0, 3)")
        )


def test_identity_json_has_the_documented_keys(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _add_run(db_url)
    code, out, _ = run_cli(capsys, "db", "identity", "--json")
    data = json.loads(out)
    assert code == 0
    assert {"db_id", "url", "dialect", "schema_revision", "counts"} <= data.keys()
    assert {"runs", "phases", "llm_usage_events", "token_estimation_v2_events"} <= data["counts"].keys()
    assert data["counts"]["runs"] == 1
    assert data["counts"]["phases"] == {"COMPLETE": 1, "QUEUED": 1}
    assert data["db_id"] == read_identity(database_at(db_url)).db_id


def test_identity_text_shows_file_size_for_sqlite(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "db", "identity")
    assert code == 0 and "Database id:" in out
    if db_url.startswith("sqlite"):
        assert "File size:" in out and str(Path(db_url.removeprefix("sqlite:///"))) in out


def test_wrong_expected_id_is_refused_with_exit_3(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _add_run(db_url)
    monkeypatch.setenv("AUTOPACK_EXPECTED_DB_ID", "not-this-one")
    code, _, err = run_cli(capsys, "db", "identity", "--check")
    assert code == 3 and "DB_MISMATCH" in err and len(err.strip().splitlines()) == 1


def test_expected_id_flag_wins_and_matching_id_passes(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _add_run(db_url)
    db_id = read_identity(database_at(db_url)).db_id
    code, _, _ = run_cli(capsys, "db", "identity", "--check", "--expect-db-id", db_id)
    assert code == 0


def test_empty_database_is_refused_unless_allowed(db_url: str) -> None:
    with pytest.raises(EmptyDatabaseError):
        guard(database_at(db_url))
    assert guard(database_at(db_url), allow_empty=True).is_empty


def test_guard_mismatch_raises_with_exit_code_3(db_url: str) -> None:
    _add_run(db_url)
    with pytest.raises(DbIdentityMismatchError) as info:
        guard(database_at(db_url), expect_db_id="0" * 32)
    assert info.value.exit_code == 3


def test_unmigrated_database_says_to_upgrade(empty_db_url: str, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if empty_db_url.startswith("sqlite"):
        Path(empty_db_url.removeprefix("sqlite:///")).touch()
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    code, _, err = run_cli(capsys, "db", "identity")
    assert code == 2 and "autopack db upgrade" in err and len(err.strip().splitlines()) == 1


def test_missing_sqlite_file_is_not_created_by_a_read(tmp_path: Path) -> None:
    with pytest.raises(SchemaNotMigratedError):
        read_identity(database_at(f"sqlite:///{tmp_path / 'nope.db'}"))
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.parametrize("url", ["not a url", "mysql://u@h/db", "postgresql://u:s3cretpw@127.0.0.1:1/db"])
def test_bad_urls_give_one_line_and_never_the_password(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    code, out, err = run_cli(capsys, "db", "identity")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert "s3cretpw" not in out + err and "Traceback" not in err


@pytest.mark.parametrize("password", ["p@ssS3cretPWxyz987", "p@ss/wS3cretPWxyz987"])
def test_a_raw_at_in_the_password_is_refused_before_connecting(
    password: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy ends the password at the first '@'; the driver then echoed the rest as the host name."""
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres:{password}@127.0.0.1:5499/audita_pw")
    code, out, err = run_cli(capsys, "db", "identity")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "error: DATABASE_URL's user name or password contains a raw '@' "
        "(percent-encode it: '@' as %40, '/' as %2F)"
    ]
    assert not any(fragment in err for fragment in ("S3cret", "ss/w", "@ss", "xyz987"))


def test_mask_url_hides_passwords() -> None:
    assert mask_url("postgresql://autopack:hunter22@db:5432/x") == "postgresql://autopack:***@db:5432/x"
    assert "hunter22" not in mask_url("postgresql://autopack:hunter22@db:5432/x?sslmode=require")


def test_identity_json_never_contains_the_password(monkeypatch: pytest.MonkeyPatch, db_url: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("passwords only exist in server URLs")
    with_password = sa.engine.make_url(db_url).set(password="topsecret1").render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", with_password)
    code, out, err = run_cli(capsys, "db", "identity", "--json")  # trust auth ignores the password
    assert code == 0 and "topsecret1" not in out + err and "***" in json.loads(out)["url"]


def test_upgrade_command_reports_what_it_did(empty_db_url: str, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    code, out, _ = run_cli(capsys, "db", "upgrade")
    assert code == 0 and "upgraded" in out
    code, out, _ = run_cli(capsys, "db", "upgrade")
    assert code == 0 and "nothing to do" in out


def _add_event(url: str) -> None:
    with get_engine(url).begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO token_estimation_v2_events (run_id, phase_id, attempt_index, call_index, timestamp,"
            " created_at, category, complexity, deliverable_count, deliverables_json, predicted_output_tokens,"
            " actual_output_tokens, selected_budget, actual_max_tokens_backfilled, success, truncated,"
            " is_truncated_output, schema_version, source) VALUES ('imp', '1', 0, 0, '2025-01-01 00:00:00',"
            " '2025-01-01 00:00:00', 'docs', 'low', 1, '[]', 100, 90, 200, false, true, false, false, 2, 'import')"
        ))


@pytest.mark.parametrize("fill", [_add_run, _add_event], ids=["a run", "an estimation event"])
def test_guard_probes_emptiness_without_counting(db_url: str, fill) -> None:  # type: ignore[no-untyped-def]
    fill(db_url)
    report = guard(database_at(db_url))  # would raise EmptyDatabaseError if the probe missed the row
    assert not report.is_empty
    assert report.counts == {} and report.estimation == {}  # the per-category scan is identity's alone


def test_identity_report_still_counts_everything(db_url: str) -> None:
    _add_run(db_url)
    _add_event(db_url)
    report = guard(database_at(db_url), counts=True)
    assert report.counts["runs"] == 1 and report.counts["token_estimation_v2_events"] == 1
    assert report.estimation["success_by_category"] == {"docs": 1}
    assert read_identity(database_at(db_url)).counts == report.counts
