"""Property-based fuzzing of the API from its own OpenAPI schema, against a *populated* database: no
generated input may cause a 500, and every response must match the documented schema and status codes
(including ``format: date-time``, which needs a timezone).

Driven directly through Hypothesis (one bounded run per operation) rather than schemathesis' pytest
plugin, whose lazy-fixture support does not work with this pytest version.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from autopack.api import create_app
from autopack.db.engine import get_engine, session_scope
from autopack.db.handle import database_at
from autopack.db.models import LlmUsageEvent, Phase, TokenEstimationV2Event, utcnow
from autopack.execution import leases
from autopack.execution.runs import create_run
from autopack.execution.spec import PhaseSpec, RunSpec

EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
API_KEY = "schemathesis-key"
RUNS = ("fuzz-a", "fuzz-b", "legacy-run")


def populate(url: str) -> None:
    """Runs in every state, leases, finished phases, telemetry, and a run as the original Autopack wrote it."""
    with session_scope(url) as db:
        for run_id in RUNS[:2]:
            create_run(db, RunSpec(run_id=run_id, goal="fuzz", phases=[
                PhaseSpec(phase_id=f"p{i}", description="d", category=category, complexity=complexity,
                          deliverables=[f"src/m{i}.py"])
                for i, (category, complexity) in enumerate([("implementation", "low"), ("tests", "medium"),
                                                            ("docs", "high"), ("IMPLEMENT_FEATURE", "MEDIUM")])
            ]), source="api")
    with session_scope(url) as db:
        leases.claim_phase(db, "fuzz-a", "p0", "worker-1")
        claimed = leases.claim_phase(db, "fuzz-a", "p1", "worker-2")
        assert claimed is not None
        leases.finish_phase(db, "fuzz-a", "p1", "worker-2", "COMPLETE", tokens_used=1234)
        for attempt, (success, truncated) in enumerate([(True, False), (False, True), (True, False)]):
            db.add(TokenEstimationV2Event(
                run_id="fuzz-a", phase_id="p1", attempt_index=attempt, call_index=0, category="implementation",
                complexity="low", predicted_output_tokens=900, actual_output_tokens=1100, selected_budget=4096,
                success=success, truncated=truncated))
            db.add(LlmUsageEvent(provider="simulated", run_id="fuzz-a", phase_id="p1", attempt_index=attempt,
                                 call_index=0, total_tokens=2000, prompt_tokens=900, completion_tokens=1100))
    with get_engine(url).begin() as connection:  # naive timestamps, unknown states, no names: the original's rows
        stamp = datetime(2025, 12, 20, 10, 0, 0)
        connection.execute(sa.text("INSERT INTO runs (id, state, created_at, updated_at) "
                                   "VALUES ('legacy-run', 'DONE_FAILED_REQUIRES_HUMAN_REVIEW', :t, :t)"), {"t": stamp})
        connection.execute(
            sa.insert(Phase).values(run_id="legacy-run", phase_id="old", phase_index=0, state="GATE",
                                    task_category="IMPLEMENT_FEATURE", complexity="MEDIUM", builder_attempts=2,
                                    max_builder_attempts=5, created_at=stamp, started_at=stamp,
                                    completed_at=stamp + timedelta(minutes=3), lease_owner="gone",
                                    lease_expires_at=utcnow() - timedelta(days=1)))


@pytest.fixture
def populated_url(db_url: str) -> str:
    populate(db_url)
    return db_url


def test_generated_requests_never_fail_the_server(populated_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_API_KEY", API_KEY)  # schemathesis' client is not loopback: it needs the key
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(database=database_at(populated_url)))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11
    for operation in operations:
        has_inputs = any(len(group) for group in (operation.body, operation.query, operation.path_parameters))
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_inputs else (GenerationMode.POSITIVE,)
        for mode in modes:

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(headers={"X-API-Key": API_KEY}, checks=CHECKS)

            check()


def test_reads_of_the_populated_rows_match_the_schema(populated_url: str) -> None:
    """Generated ids rarely hit a stored run: read every stored one and validate each answer."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(database=database_at(populated_url)))
    calls = [("/runs", {}), ("/health", {})]
    for run_id in RUNS:
        calls += [("/runs/{run_id}", {"run_id": run_id}), ("/runs/{run_id}/phases", {"run_id": run_id}),
                  ("/runs/{run_id}/telemetry", {"run_id": run_id})]
    calls += [("/runs/{run_id}/phases/{phase_id}", {"run_id": "legacy-run", "phase_id": "old"}),
              ("/runs/{run_id}/phases/{phase_id}", {"run_id": "fuzz-a", "phase_id": "p0"})]
    for path, parameters in calls:
        case = schema[path]["GET"].Case(path_parameters=parameters)
        response = case.call_and_validate(checks=CHECKS)
        assert response.status_code == 200, (path, parameters, response.text)
