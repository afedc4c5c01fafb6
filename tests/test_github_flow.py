"""The ``open-calibration-pr`` flow run on its own guards the database it remembers proposals in.

Inside the pipeline the step reopens the database the pipeline's guard verified (no second guard). Run on its
own (no ``database``: a deployment's or a script's run) it used to open the settings' database unguarded and
remember its proposal in whatever database that was; now the wrong, an empty or an unmigrated database ends the
run Failed in the guard's one line before anything is written: no proposal row, no branch, no pull request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from github_server.app import FakeGitHub
from github_server.fixtures import BOT_TOKEN, REPOSITORY, fake_github  # noqa: F401
from github_server.samples import CALIBRATION, FIXTURE_ESTIMATOR, as_result, git, make_target_repo
from log_records import records_starting_with
from test_github_pipeline import remembered

from autopack.db.engine import get_engine, session_scope
from autopack.db.handle import open_database
from autopack.errors import DbIdentityMismatchError, EmptyDatabaseError, SchemaNotMigratedError
from autopack.execution.seed_runs import V4_RUN_ID, ensure_seed_runs
from autopack.github.proposal import BOT_BRANCH, ESTIMATOR_PATH
from autopack.pipeline import PublishSettings
from flows.pull_request import open_calibration_pr_flow

PUBLISH = PublishSettings(dry_run=False, repository=REPOSITORY)


@pytest.fixture
def github(fake_github: FakeGitHub, monkeypatch: pytest.MonkeyPatch) -> FakeGitHub:  # noqa: F811
    fake_github.create_repo(REPOSITORY, {ESTIMATOR_PATH: FIXTURE_ESTIMATOR})
    monkeypatch.setenv("GITHUB_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("GITHUB_REPOSITORY", REPOSITORY)
    monkeypatch.setenv("GITHUB_API_URL", fake_github.url)
    monkeypatch.delenv("GITHUB_BASE_BRANCH", raising=False)  # a CI runner's own must not redirect these tests
    return fake_github


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return make_target_repo(tmp_path / "target")


@pytest.fixture
def seeded(db_url: str) -> str:
    """A migrated database with runs in it: one the guard lets through."""
    with session_scope(db_url) as session:
        ensure_seed_runs(session, [V4_RUN_ID])
    return db_url


@pytest.fixture
def guards() -> Iterator[list[str]]:
    with records_starting_with("autopack.db.identity", "identity guard passed") as passed:
        yield passed


def run_alone(target: Path, tmp_path: Path, **kwargs: Any) -> Any:
    """The step as a deployment runs it: no ``database`` from a calling flow."""
    return open_calibration_pr_flow(as_result(CALIBRATION), PUBLISH, str(target), str(tmp_path / "out"),
                                    return_state=True, **kwargs)


def refusal(state: Any) -> Exception:
    """The error a Failed run carries, after checking the run says it in one line."""
    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert state.message == error.one_line() and "\n" not in state.message
    return error


def assert_nothing_published(github: FakeGitHub, target: Path) -> None:
    repo = github.repo(REPOSITORY)
    assert repo.pulls == {} and f"refs/heads/{BOT_BRANCH}" not in repo.refs
    assert git(target, "branch", "--list", BOT_BRANCH) == ""


def test_alone_on_an_empty_database_it_refuses_in_one_line_and_writes_nothing(
    db_url: str, github: FakeGitHub, target: Path, tmp_path: Path, prefect_harness: None
) -> None:
    error = refusal(run_alone(target, tmp_path))
    assert isinstance(error, EmptyDatabaseError)
    assert remembered(db_url) == {}
    assert_nothing_published(github, target)


def test_alone_on_an_unmigrated_database_it_refuses_in_one_line_and_creates_nothing(
    empty_db_url: str, github: FakeGitHub, target: Path, tmp_path: Path, prefect_harness: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    error = refusal(run_alone(target, tmp_path))
    assert isinstance(error, SchemaNotMigratedError)
    assert sa.inspect(get_engine(empty_db_url)).get_table_names() == []
    assert_nothing_published(github, target)


def test_alone_on_another_database_than_expected_it_refuses_in_one_line_and_writes_nothing(
    seeded: str, github: FakeGitHub, target: Path, tmp_path: Path, prefect_harness: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTOPACK_EXPECTED_DB_ID", "not-this-one")
    error = refusal(run_alone(target, tmp_path))
    assert isinstance(error, DbIdentityMismatchError) and "expected not-this-one" in str(error)
    assert remembered(seeded) == {}
    assert_nothing_published(github, target)


def test_alone_on_the_expected_database_it_guards_once_opens_the_pr_and_remembers_it(
    seeded: str, github: FakeGitHub, target: Path, tmp_path: Path, prefect_harness: None,
    guards: list[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    db_id = open_database(seeded).db_id
    monkeypatch.setenv("AUTOPACK_EXPECTED_DB_ID", str(db_id))
    guards.clear()
    state = run_alone(target, tmp_path)
    assert state.is_completed(), state.message
    result = state.result()
    assert (result.status, result.pr_number) == ("opened", 1)
    assert len(guards) == 1, guards
    assert list(remembered(seeded).values()) == [("open", 1)]
    assert list(github.repo(REPOSITORY).pulls) == [1]


def test_given_the_callers_verified_database_it_does_not_guard_again(
    seeded: str, github: FakeGitHub, target: Path, tmp_path: Path, prefect_harness: None, guards: list[str],
) -> None:
    verified = open_database(seeded).ref()
    guards.clear()
    state = run_alone(target, tmp_path, database=verified)
    assert state.is_completed(), state.message
    assert guards == []
    assert list(remembered(seeded).values()) == [("open", 1)]
