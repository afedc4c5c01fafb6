"""Impossible numbers from a provider or a drain worker: refused before any write, the call still recorded
as far as it can be, and the lease always released (SQLite and PostgreSQL alike)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from cli_runner import run_cli
from fastapi.testclient import TestClient
from llm_fake_server import INPUT_TOKENS, FakeLLMServer
from sqlalchemy.exc import OperationalError
from test_api import API_KEY, KEYED

from autopack.api import create_app
from autopack.db.engine import session_scope
from autopack.db.handle import database_at
from autopack.db.models import LlmUsageEvent, Phase, TokenBudgetEscalationEvent, TokenEstimationV2Event
from autopack.execution import leases
from autopack.execution.phase_runner import PhaseFinishError, execute_phase
from autopack.execution.runs import create_run
from autopack.execution.seed_runs import V4_RUN_ID
from autopack.execution.spec import PhaseSpec, RunSpec
from autopack.llm.base import LLMRequest, LLMResponse, ProviderResponseError, RetryPolicy
from autopack.llm.openai_provider import OpenAIProvider
from autopack.llm.simulated import SimulatedProvider
from autopack.telemetry import CallKey, TelemetryValueError, record_call, record_escalation
from autopack.telemetry.usage import validate_response
from autopack.token_estimator import PhaseFeatures, escalate, plan_call

P1 = "telemetry-p1-string-util"
KEY = "sk-test-0123456789abcdef"
HUGE = 3_000_000_000


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    server = FakeLLMServer().start()
    yield server
    server.stop()


def openai(server: FakeLLMServer) -> OpenAIProvider:
    return OpenAIProvider(api_key=KEY, base_url=server.url + "/v1", timeout=10,
                          policy=RetryPolicy(max_retries=3, base_delay=0.5), sleep=lambda _s: None)


def rows(url: str, model: type) -> list:  # type: ignore[type-arg]
    with session_scope(url) as session:
        return list(session.execute(sa.select(model)).scalars())


def phase(url: str, run_id: str = V4_RUN_ID, phase_id: str = P1) -> Phase:
    with session_scope(url) as session:
        return session.execute(sa.select(Phase).where(Phase.run_id == run_id, Phase.phase_id == phase_id)).scalar_one()


# --- the provider boundary ----------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "why"), [
    ("completion_tokens", HUGE, "is outside 0..2147483647"),
    ("prompt_tokens", -4, "is negative"),
    ("completion_tokens", float("inf"), "not a token count"),
    ("total_tokens", 2.5, "not a token count"),
])
def test_openai_adapter_and_telemetry_refuse_impossible_usage_without_retrying(
    fake_llm: FakeLLMServer, field: str, value: object, why: str
) -> None:
    """A count that is not a whole number is the adapter's refusal; one out of its column's range, telemetry's."""
    fake_llm.usage_overrides = {field: value}
    with pytest.raises(ProviderResponseError) as info:
        validate_response(openai(fake_llm).complete(LLMRequest(system="s", prompt="p", max_tokens=300)))
    assert len(fake_llm.requests) == 1 and not info.value.retryable
    assert info.value.message.startswith("openai ") and why in info.value.message
    assert field in info.value.message or field in str(info.value.problems)


def test_validate_response_checks_the_summed_total_too() -> None:
    response = LLMResponse(text="", provider="p", model="m", max_tokens=10, input_tokens=2**31 - 10,
                           output_tokens=100, stop_reason="stop", finish_reason="stop", truncated=False)
    with pytest.raises(ProviderResponseError) as info:
        validate_response(response)
    assert set(info.value.problems) == {"reported_total"}
    assert validate_response(dataclasses.replace(response, input_tokens=5)).reported_total == 105


# --- drain one through a real OpenAI-protocol server ----------------------------------------------------


@pytest.fixture
def v4(db_url: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert run_cli(capsys, "runs", "create-telemetry-run")[0] == 0
    return db_url


def test_drain_one_with_3e9_completion_tokens_fails_the_phase_and_releases_the_lease(
    v4: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake_llm: FakeLLMServer
) -> None:
    monkeypatch.setenv("AUTOPACK_LLM_PROVIDER", "openai")
    monkeypatch.setenv("AUTOPACK_LLM_BASE_URL", fake_llm.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    fake_llm.usage_overrides = {"completion_tokens": HUGE, "total_tokens": HUGE + INPUT_TOKENS}
    code, out, err = run_cli(capsys, "drain", "one", "--run-id", V4_RUN_ID, "--phase-id", P1, "--force")
    assert code == 1 and "FAILED" in out and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "provider" in line and "3000000000" in line and "completion_tokens" in line
    row = phase(v4)
    assert row.state == "FAILED" and row.lease_owner is None and row.lease_expires_at is None
    assert "3000000000" in (row.last_failure_reason or "") and row.tokens_used == 0
    (usage,) = rows(v4, LlmUsageEvent)
    assert usage.split_kind == "invalid" and usage.provider == "openai"
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (INPUT_TOKENS, None, 0)
    assert rows(v4, TokenEstimationV2Event) == []  # never a calibration sample


class _Reporting(SimulatedProvider):
    """The simulated builder's real output, with usage numbers replaced."""

    def __init__(self, **usage: object) -> None:
        super().__init__(seed=1)
        self.usage = usage

    def complete(self, request: LLMRequest) -> LLMResponse:
        return dataclasses.replace(super().complete(request), **self.usage)  # type: ignore[arg-type]


def _claimed_phase(url: str) -> leases.Claim:
    spec = RunSpec(run_id="r", phases=[PhaseSpec(phase_id="p", description="Write helpers.", category="implementation",
                                                  complexity="low", deliverables=["pkg/a.py"])])
    with session_scope(url) as session:
        create_run(session, spec)
        claim = leases.claim_phase(session, "r", "p", "w1")
    assert claim is not None
    return claim


@pytest.mark.parametrize("usage", [{"output_tokens": HUGE}, {"input_tokens": -1}, {"cached_tokens": 2**40},
                                   {"total_tokens": 2**31}])
def test_any_provider_is_validated_by_the_phase_runner(db_url: str, usage: dict[str, int]) -> None:
    claim = _claimed_phase(db_url)
    result = execute_phase("r", "p", claim=claim, db=database_at(db_url), provider=_Reporting(**usage))  # type: ignore[arg-type]
    assert (result.final_state, result.failure_stage) == ("FAILED", "provider")
    assert "impossible usage" in (result.error_message or "")
    row = phase(db_url, "r", "p")
    assert row.state == "FAILED" and row.lease_owner is None and row.tokens_used == 0
    (usage_row,) = rows(db_url, LlmUsageEvent)
    assert usage_row.split_kind == "invalid" and rows(db_url, TokenEstimationV2Event) == []


def test_without_telemetry_nothing_is_recorded_but_the_phase_still_finishes(db_url: str) -> None:
    claim = _claimed_phase(db_url)
    result = execute_phase("r", "p", claim=claim, db=database_at(db_url), provider=_Reporting(output_tokens=HUGE),  # type: ignore[arg-type]
                           telemetry=False)
    assert result.final_state == "FAILED" and rows(db_url, LlmUsageEvent) == []
    assert phase(db_url, "r", "p").lease_owner is None


def test_a_database_refusing_the_final_write_gives_the_phase_back(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = _claimed_phase(db_url)

    def refuse(*_a: object, **_k: object) -> None:
        raise OperationalError("UPDATE phases", {}, Exception("disk I/O error"))

    monkeypatch.setattr(leases, "finish_phase", refuse)
    with pytest.raises(PhaseFinishError) as info:
        execute_phase("r", "p", claim=claim, db=database_at(db_url), provider=SimulatedProvider(seed=1))
    assert "disk I/O error" in info.value.one_line() and "put back in the queue" in info.value.one_line()
    row = phase(db_url, "r", "p")
    assert row.state == "QUEUED" and row.lease_owner is None


# --- the recorder refuses what it cannot store ------------------------------------------------------------

FEATURES = PhaseFeatures(category="implementation", complexity="low", deliverables=("a.py",), description="d")
EST, DECISION = plan_call(FEATURES)


def _response(**usage: object) -> LLMResponse:
    base = LLMResponse(text="x", provider="simulated", model="sim", max_tokens=DECISION.actual_max_tokens,
                       input_tokens=800, output_tokens=1200, stop_reason="end_turn", finish_reason="stop",
                       truncated=False)
    return dataclasses.replace(base, **usage)  # type: ignore[arg-type]


def test_record_call_with_impossible_usage_writes_only_the_invalid_usage_row(db_url: str) -> None:
    with pytest.raises(TelemetryValueError) as info:
        record_call(CallKey("r", "p", 0), FEATURES, EST, DECISION, _response(output_tokens=HUGE), success=True,
                    db=database_at(db_url))
    assert "output_tokens" in info.value.message and "split_kind=invalid" in info.value.message
    (usage,) = rows(db_url, LlmUsageEvent)
    assert (usage.split_kind, usage.prompt_tokens, usage.completion_tokens) == ("invalid", 800, None)
    assert rows(db_url, TokenEstimationV2Event) == []


def test_record_escalation_out_of_range_writes_nothing(db_url: str) -> None:
    esc = escalate(selected_budget=4096, actual_max_tokens=4096, tokens_used=4096, complexity="low")
    with pytest.raises(TelemetryValueError) as info:
        record_escalation("r", "p", 0, esc, was_truncated=True, output_tokens=HUGE, selected_budget=4096,
                          actual_max_tokens=4096, db=database_at(db_url))
    assert "token_budget_escalation_events.tokens_used=3000000000" in info.value.message
    assert rows(db_url, TokenBudgetEscalationEvent) == []


# --- the API's result endpoint ------------------------------------------------------------------------------

SPEC = {"run_id": "api-run", "phases": [{"phase_id": "p1", "description": "d", "category": "implementation",
                                          "complexity": "low", "deliverables": ["a.py"]}]}


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(database=database_at(db_url), api_key=API_KEY), headers=KEYED) as c:
        assert c.post("/runs", json=SPEC).status_code == 201
        yield c


@pytest.mark.parametrize("tokens_used", [HUGE, 2**64, 10**30])
def test_result_with_tokens_beyond_the_column_is_422_and_the_lease_is_released(
    client: TestClient, db_url: str, tokens_used: int
) -> None:
    assert client.post("/drain/claim", json={"owner": "w1"}).json()["phase_id"] == "p1"
    response = client.post("/runs/api-run/phases/p1/result",
                           json={"owner": "w1", "final_state": "COMPLETE", "tokens_used": tokens_used})
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "tokens_used"] and "outside 0..2147483647" in detail["msg"]
    row = phase(db_url, "api-run", "p1")
    assert row.state == "FAILED" and row.lease_owner is None and row.lease_expires_at is None
    assert row.tokens_used == 0 and "reported COMPLETE" in (row.last_failure_reason or "")


def test_result_whose_running_total_would_overflow_is_refused_too(client: TestClient, db_url: str) -> None:
    for expected in (200, 200, 422):  # 3 x 1e9 tokens: the third would overflow PostgreSQL's INTEGER
        assert client.post("/drain/claim", json={"owner": "w1"}).status_code == 200
        response = client.post("/runs/api-run/phases/p1/result",
                               json={"owner": "w1", "final_state": "FAILED", "tokens_used": 1_000_000_000})
        assert response.status_code == expected
    row = phase(db_url, "api-run", "p1")
    assert row.tokens_used == 2_000_000_000 and row.lease_owner is None and row.state == "FAILED"
    assert "would make phases.tokens_used=3000000000" in (row.last_failure_reason or "")


def test_a_plausible_result_is_recorded_as_given(client: TestClient, db_url: str) -> None:
    client.post("/drain/claim", json={"owner": "w1"})
    response = client.post("/runs/api-run/phases/p1/result",
                           json={"owner": "w1", "final_state": "COMPLETE", "tokens_used": 1234})
    assert response.status_code == 200
    assert (phase(db_url, "api-run", "p1").state, phase(db_url, "api-run", "p1").tokens_used) == ("COMPLETE", 1234)


def test_a_token_cap_beyond_the_column_is_refused_before_anything_is_created(db_url: str) -> None:
    with TestClient(create_app(database=database_at(db_url), api_key=API_KEY), headers=KEYED) as c:
        response = c.post("/runs", json={**SPEC, "run_id": "capped", "token_cap": HUGE})
        assert response.status_code == 422 and "2147483647" in response.text
        assert c.get("/runs/capped").status_code == 404
