"""What the API accepts and what it answers: strict JSON, bounded bodies and 422s, UTC timestamps, and
deliverables checked by the very function the drain uses."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from test_api import API_KEY, GOOD_SPEC, KEYED, run_count, serve

from autopack.api import create_app
from autopack.db.engine import session_scope
from autopack.db.handle import database_at
from autopack.db.models import Phase, Run, utcnow
from autopack.errors import InputError
from autopack.execution.phase_runner import _deliverable_paths
from autopack.execution.spec import PhaseSpec
from autopack.execution.workspace import deliverable_workspace_path

JSON = {"content-type": "application/json"}
MIB = 1024 * 1024


def raw(client: TestClient, path: str, body: str | bytes) -> httpx.Response:
    return client.post(path, content=body.encode() if isinstance(body, str) else body, headers=JSON)


def spec_text(**replace: str) -> str:
    """GOOD_SPEC as JSON text, with some values replaced by raw JSON text (e.g. NaN, a lone surrogate)."""
    text = json.dumps(GOOD_SPEC)
    for key, value in replace.items():
        text = text.replace(json.dumps(GOOD_SPEC[key]), value, 1)
    return text


# --- bodies that are not strict JSON ---------------------------------------------------------------------


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_422_not_500(client: TestClient, constant: str) -> None:
    response = raw(client, "/drain/claim", f'{{"owner": "w", "lease_seconds": {constant}}}')
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert constant.lstrip("-") in response.json()["detail"][0]["ctx"]["error"]


@pytest.mark.parametrize(
    "body",
    [
        '{"owner": "\\ud800"}',  # a lone high surrogate
        '{"owner": "w\\udfff"}',  # a lone low surrogate
        '{"owner": "w", "\\ud83d": 1}',  # in a key
    ],
)
def test_lone_surrogates_are_422_not_500(client: TestClient, body: str) -> None:
    response = raw(client, "/drain/claim", body)
    assert response.status_code == 422 and "surrogate" in response.text


def test_a_lone_surrogate_in_a_run_goal_writes_nothing(client: TestClient, db_url: str) -> None:
    response = raw(client, "/runs", spec_text(goal='"goal \\udc00"'))
    assert response.status_code == 422
    assert run_count(db_url) == 0


def test_a_paired_surrogate_is_an_ordinary_character(client: TestClient, db_url: str) -> None:
    response = raw(client, "/runs", spec_text(goal='"rocket \\ud83d\\ude80"'))
    assert response.status_code == 201 and response.json()["goal"] == "rocket \U0001f680"


@pytest.mark.parametrize("body", ["[" * 100_000 + "]" * 100_000, '{"owner": "w", "lease_seconds": 1' + "0" * 5000 + "}"])
def test_absurd_nesting_and_numbers_are_422(client: TestClient, body: str) -> None:
    assert raw(client, "/drain/claim", body).status_code == 422


def test_invalid_utf8_is_422(client: TestClient) -> None:
    assert raw(client, "/drain/claim", b'{"owner": "\xff\xfe"}').status_code == 422


# --- 422s do not echo what they were sent ----------------------------------------------------------------


def test_a_422_does_not_echo_a_large_input(client: TestClient) -> None:
    response = client.post("/drain/claim", json={"owner": "x" * 900_000})
    assert response.status_code == 422
    assert len(response.content) < 4_000
    assert response.json()["detail"][0]["input"].endswith("… (900000 characters)")


def test_a_422_does_not_echo_a_multi_megabyte_input(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_API_MAX_BODY_BYTES", str(16 * MIB))
    spec = {**GOOD_SPEC, "goal": "g" * (5 * MIB)}
    with TestClient(create_app(database=database_at(db_url), api_key=API_KEY), headers=KEYED) as client:
        response = client.post("/runs", json=spec)
    assert response.status_code == 422 and len(response.content) < 4_000
    assert run_count(db_url) == 0


def test_a_422_lists_at_most_fifty_errors(client: TestClient) -> None:
    phase = {"phase_id": "p", "description": "", "category": "astrology", "complexity": "?", "deliverables": []}
    response = client.post("/runs", json={**GOOD_SPEC, "phases": [phase] * 500})
    detail = response.json()["detail"]
    assert response.status_code == 422 and len(detail) == 51
    assert detail[-1]["type"] == "too_many_errors" and detail[-1]["msg"].startswith("and ")


# --- the body-size limit ---------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_and_writes_nothing(client: TestClient, db_url: str) -> None:
    spec = {**GOOD_SPEC, "goal": "g" * (2 * MIB)}
    response = client.post("/runs", json=spec)
    assert response.status_code == 413 and "AUTOPACK_API_MAX_BODY_BYTES" in response.json()["detail"]
    assert run_count(db_url) == 0


def test_a_streamed_body_over_the_limit_is_413(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_API_MAX_BODY_BYTES", "1000")

    def chunks() -> Any:  # no Content-Length: the limit is counted while reading
        yield b'{"owner": "'
        for _ in range(20):
            yield b"w" * 100
        yield b'"}'

    with serve(create_app(database=database_at(db_url), api_key=API_KEY)) as base:
        small = httpx.post(f"{base}/drain/claim", json={"owner": "w"}, headers=KEYED, timeout=30)
        big = httpx.post(f"{base}/drain/claim", content=chunks(), headers={**JSON, **KEYED}, timeout=30)
    assert small.status_code == 204
    assert big.status_code == 413


def test_the_limit_applies_under_a_real_server(db_url: str) -> None:
    with serve(create_app(database=database_at(db_url), api_key=API_KEY)) as base:
        response = httpx.post(f"{base}/runs", json={**GOOD_SPEC, "goal": "g" * (2 * MIB)}, headers=KEYED, timeout=30)
    assert response.status_code == 413
    assert run_count(db_url) == 0


# --- timestamps ------------------------------------------------------------------------------------------


def timestamps(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k.endswith("_at") and isinstance(v, str)]
        return found + [t for v in value.values() for t in timestamps(v)]
    if isinstance(value, list):
        return [t for v in value for t in timestamps(v)]
    return []


def test_every_timestamp_in_a_response_is_utc_with_an_offset(client: TestClient, db_url: str) -> None:
    from datetime import datetime

    assert client.post("/runs", json=GOOD_SPEC).status_code == 201
    with session_scope(db_url) as db:  # a run as the original wrote it: a naive timestamp, as text
        db.execute(sa.text("INSERT INTO runs (id, state, created_at) VALUES ('legacy', 'DONE', '2025-12-20 10:00:00')"))
        db.execute(sa.update(Phase).where(Phase.phase_id == "p2").values(
            started_at=utcnow() - timedelta(minutes=5), completed_at=utcnow()))
    claim = client.post("/drain/claim", json={"owner": "w1"}).json()
    beat = client.post(f"/runs/api-run/phases/{claim['phase_id']}/heartbeat", json={"owner": "w1"}).json()
    bodies = [claim, beat, client.get("/runs").json(), client.get("/runs/api-run").json(),
              client.get("/runs/api-run/phases").json(), client.get("/runs/legacy").json()]
    stamps = [t for body in bodies for t in timestamps(body)]
    assert len(stamps) >= 10
    for stamp in stamps:
        parsed = datetime.fromisoformat(stamp)
        assert parsed.utcoffset() == timedelta(0), stamp
    assert client.get("/runs/legacy").json()["created_at"] == "2025-12-20T10:00:00Z"


# --- counts are integers: not booleans, strings or floats -------------------------------------------------------


def spec_with(field: str, value: object) -> dict[str, Any]:
    """GOOD_SPEC with ``token_cap`` (of the run) or ``max_builder_attempts`` (of its first phase) set to ``value``."""
    spec = copy.deepcopy(GOOD_SPEC)
    (spec if field == "token_cap" else spec["phases"][0])[field] = value
    return spec


@pytest.mark.parametrize("value", [True, False, "5", 5.0])
@pytest.mark.parametrize(("field", "loc"), [("token_cap", ["body", "token_cap"]),
                                            ("max_builder_attempts", ["body", "phases", 0, "max_builder_attempts"])])
def test_a_count_that_is_not_an_integer_is_422_and_writes_nothing(client: TestClient, db_url: str, field: str,
                                                                  loc: list[object], value: object) -> None:
    """``true`` was stored as 1 (pydantic's lax mode), ``"5"`` and ``5.0`` as 5."""
    response = client.post("/runs", json=spec_with(field, value))
    assert response.status_code == 422
    assert loc in [error["loc"] for error in response.json()["detail"]]
    assert run_count(db_url) == 0


def test_integer_counts_are_still_accepted(client: TestClient, db_url: str) -> None:
    spec = spec_with("token_cap", 5000)
    spec["phases"][0]["max_builder_attempts"] = 2
    response = client.post("/runs", json=spec)
    assert response.status_code == 201 and response.json()["phases"][0]["max_builder_attempts"] == 2
    with session_scope(db_url) as db:
        assert db.execute(sa.select(Run.token_cap)).scalar_one() == 5000


def test_a_boolean_tokens_used_in_a_result_is_422(client: TestClient, db_url: str) -> None:
    assert client.post("/runs", json=GOOD_SPEC).status_code == 201
    assert client.post("/drain/claim", json={"owner": "w1"}).status_code == 200
    response = client.post("/runs/api-run/phases/p1/result",
                           json={"owner": "w1", "final_state": "COMPLETE", "tokens_used": True})
    assert response.status_code == 422
    assert ["body", "tokens_used"] in [error["loc"] for error in response.json()["detail"]]


# --- deliverables: the drain's own rule -------------------------------------------------------------------


@pytest.mark.parametrize("deliverable", ["create /abs/x.py", "~/x.py", "C:/x.py", "C:\\x.py", "..", "create ../x.py",
                                         "src/../../x.py", "/etc/passwd", "update ~/.bashrc"])
def test_deliverables_the_drain_would_refuse_are_422(client: TestClient, db_url: str, deliverable: str) -> None:
    spec = copy.deepcopy(GOOD_SPEC)
    spec["phases"][0]["deliverables"] = ["src/ok.py", deliverable]
    response = client.post("/runs", json=spec)
    assert response.status_code == 422
    assert ["body", "phases", 0, "deliverables"] in [error["loc"] for error in response.json()["detail"]]
    assert run_count(db_url) == 0


@pytest.mark.parametrize("path", ["~/.ssh/id_rsa", "/etc", "../sibling", "D:/data"])
def test_context_paths_outside_the_workspace_are_422(client: TestClient, path: str) -> None:
    spec = copy.deepcopy(GOOD_SPEC)
    spec["phases"][0]["read_only_context"] = [path]
    assert client.post("/runs", json=spec).status_code == 422


def _accepted_by_the_api(deliverable: str) -> bool:
    try:
        PhaseSpec(phase_id="p", description="d", category="implementation", complexity="low", deliverables=[deliverable])
    except ValueError:
        return False
    return True


def _accepted_by_the_drain(deliverable: str) -> bool:
    try:
        _deliverable_paths([deliverable])
    except InputError:
        return False
    return True


PATHISH = st.text(alphabet=st.sampled_from(list("ab./\\~:C- _")), max_size=14)


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(verb=st.sampled_from(["", "create ", "update ", "Add "]), path=PATHISH, suffix=st.sampled_from(["", ".py", ".md"]))
def test_the_api_accepts_exactly_the_deliverables_the_drain_accepts(verb: str, path: str, suffix: str) -> None:
    deliverable = f"{verb}{path}{suffix}"
    assert _accepted_by_the_api(deliverable) == _accepted_by_the_drain(deliverable), deliverable


def test_the_drain_writes_where_the_api_said(client: TestClient) -> None:
    spec = copy.deepcopy(GOOD_SPEC)
    spec["phases"][0]["deliverables"] = ["create ./src\\util.py (the helper)"]
    assert client.post("/runs", json=spec).status_code == 201
    assert deliverable_workspace_path("create ./src\\util.py (the helper)") == "src/util.py"
    assert _deliverable_paths(["create ./src\\util.py (the helper)"]) == ("src/util.py",)


@pytest.fixture
def client(db_url: str) -> Any:
    with TestClient(create_app(database=database_at(db_url), api_key=API_KEY), headers=KEYED) as c:
        yield c

