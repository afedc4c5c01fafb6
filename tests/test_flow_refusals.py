"""The ``validate-single-phase`` and ``calibrate`` flows run on their own guard their database once.

Inside the pipeline each step reopens the database the pipeline's guard verified (no second guard). Run on its
own (no ``database``: a deployment's or a script's run), validation drained a phase of whatever database the
settings named, unguarded (an empty one: "skipped", Completed), and calibration refused from inside its task, so
the run's message was Prefect's exception text. Now the wrong, an empty or an unmigrated database ends the run
Failed with exactly the guard's one line before anything is written: no attempt, no telemetry, no calibration
run recorded, no report. A validation that fails (no telemetry recorded, a phase that cannot be drained) ends
the run Failed the same way, in its one line, not in Prefect's exception text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from log_records import records_starting_with
from test_flows import make_run

from autopack.db.engine import get_engine
from autopack.db.handle import open_database
from autopack.errors import (
    AutopackError,
    DbIdentityMismatchError,
    EmptyDatabaseError,
    InputError,
    RefusedError,
    SchemaNotMigratedError,
)
from autopack.pipeline import ValidationFailed
from flows.calibrate import calibrate
from flows.validate import validate_single_phase


def validate_alone(out: Path, **kwargs: Any) -> Any:
    return validate_single_phase(return_state=True, **kwargs)


def calibrate_alone(out: Path, **kwargs: Any) -> Any:
    return calibrate(output_dir=str(out), return_state=True, **kwargs)


#: Each flow as a deployment runs it: no ``database`` from a calling flow (``out``: where reports would go).
STEPS: dict[str, Callable[..., Any]] = {"validate-single-phase": validate_alone, "calibrate": calibrate_alone}


@pytest.fixture(params=list(STEPS))
def step(request: pytest.FixtureRequest) -> Callable[..., Any]:
    return STEPS[request.param]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def with_run(db_url: str) -> str:
    """A migrated database the guard lets through, with a QUEUED phase that records telemetry when drained."""
    make_run(db_url, "r", "write a helper")
    return db_url


@pytest.fixture
def guards() -> Iterator[list[str]]:
    with records_starting_with("autopack.db.identity", "identity guard passed") as passed:
        yield passed


def rows(url: str) -> dict[str, int]:
    """Every table's row count: what a step wrote, whichever table it wrote to."""
    engine = get_engine(url)
    tables = sa.MetaData()
    tables.reflect(engine)
    with engine.connect() as connection:
        return {name: connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                for name, table in tables.tables.items()}


def refusal(state: Any) -> Exception:
    """The error a Failed run carries, after checking the run's message is exactly its one line."""
    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert state.message == error.one_line() and "\n" not in state.message
    return error


def test_alone_on_an_empty_database_it_refuses_in_one_line_and_writes_nothing(
    step: Callable[..., Any], db_url: str, out: Path, prefect_harness: None
) -> None:
    before = rows(db_url)
    error = refusal(step(out))
    assert isinstance(error, EmptyDatabaseError)
    assert rows(db_url) == before
    assert not out.exists()


def test_alone_on_an_unmigrated_database_it_refuses_in_one_line_and_creates_nothing(
    step: Callable[..., Any], empty_db_url: str, out: Path, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    error = refusal(step(out))
    assert isinstance(error, SchemaNotMigratedError)
    assert sa.inspect(get_engine(empty_db_url)).get_table_names() == []
    assert not out.exists()


def test_alone_on_another_database_than_expected_it_refuses_in_one_line_and_writes_nothing(
    step: Callable[..., Any], with_run: str, out: Path, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOPACK_EXPECTED_DB_ID", "not-this-one")
    before = rows(with_run)
    error = refusal(step(out))
    assert isinstance(error, DbIdentityMismatchError) and "expected not-this-one" in str(error)
    assert rows(with_run) == before
    assert not out.exists()


def test_alone_given_another_expected_id_it_refuses_in_one_line_and_writes_nothing(
    step: Callable[..., Any], with_run: str, out: Path, prefect_harness: None
) -> None:
    before = rows(with_run)
    error = refusal(step(out, expect_db_id="not-this-one"))
    assert isinstance(error, DbIdentityMismatchError) and "expected not-this-one" in str(error)
    assert rows(with_run) == before


def test_alone_on_the_expected_database_it_guards_once_and_completes(
    step: Callable[..., Any], with_run: str, out: Path, prefect_harness: None, guards: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTOPACK_EXPECTED_DB_ID", str(open_database(with_run).db_id))
    before = rows(with_run)
    guards.clear()
    state = step(out)
    assert state.is_completed(), state.message
    assert len(guards) == 1, guards
    assert rows(with_run) != before  # it did its work on that database (an attempt, or a calibration run)


def test_given_the_callers_verified_database_it_does_not_guard_again(
    step: Callable[..., Any], with_run: str, out: Path, prefect_harness: None, guards: list[str]
) -> None:
    verified = open_database(with_run).ref()
    before = rows(with_run)
    guards.clear()
    state = step(out, database=verified)
    assert state.is_completed(), state.message
    assert guards == []
    assert rows(with_run) != before


#: Validations that cannot pass: the phase's description, the phase validated, the settings, the error.
FAILING_VALIDATIONS: dict[str, tuple[str, str, dict[str, str], type[AutopackError]]] = {
    "no telemetry recorded": ("write a helper [sim:auth-error]", "p0", {}, ValidationFailed),
    "no such phase": ("write a helper", "p9", {}, InputError),
    "telemetry off": ("write a helper", "p0", {"TELEMETRY_DB_ENABLED": "0"}, RefusedError),
}


@pytest.mark.parametrize("case", list(FAILING_VALIDATIONS))
def test_alone_a_validation_that_fails_ends_failed_in_its_one_line(
    case: str, db_url: str, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    description, phase_id, settings, expected = FAILING_VALIDATIONS[case]
    make_run(db_url, "r", description)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    state = validate_single_phase("r", phase_id, return_state=True)
    error = refusal(state)
    assert type(error) is expected, state.message
    assert not state.message.startswith("Flow run encountered an exception"), state.message
