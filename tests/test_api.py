"""The HTTP API: health and identity, runs and phases, the drain endpoints and API-key auth."""

from __future__ import annotations

import os
import re
import socket
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from test_drain_batch_support import make_run, phase_rows, set_phase

from autopack.api import create_app
from autopack.api.health import database_identity
from autopack.db.engine import session_scope
from autopack.db.handle import database_at
from autopack.db.identity import read_identity
from autopack.db.migrate import head_revision, upgrade_database
from autopack.db.models import Run, TokenEstimationV2Event, utcnow

GOOD_SPEC: dict[str, Any] = {
    "run_id": "api-run",
    "goal": "exercise the API",
    "phases": [
        {
            "phase_id": "p1",
            "description": "write a util",
            "category": "implementation",
            "complexity": "low",
            "deliverables": ["src/util.py"],
        },
        {
            "phase_id": "p2",
            "description": "test it",
            "category": "tests",
            "complexity": "low",
            "deliverables": ["tests/test_util.py"],
        },
    ],
}


#: The key test apps are created with (``create_app(api_key=API_KEY)``) and test clients send: every write needs one.
API_KEY = "test-api-key-0042"
KEYED = {"X-API-Key": API_KEY}


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(database=database_at(db_url), api_key=API_KEY), headers=KEYED) as c:
        yield c


def run_count(url: str) -> int:
    with session_scope(url) as db:
        return db.execute(sa.select(sa.func.count()).select_from(Run)).scalar_one()


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 (an ephemeral port), stopped on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# --- health ---------------------------------------------------------------------------------------------


def test_health_reports_the_database_identity(client: TestClient, db_url: str) -> None:
    body = client.get("/health").json()
    identity = read_identity(database_at(db_url))
    assert body["service"] == "autopack" and body["status"] == "ok" and body["db_ok"] is True
    assert body["db_id"] == identity.db_id
    assert body["schema_revision"] == head_revision()
    assert re.fullmatch(r"[0-9a-f]{12}", body["database_identity"])
    assert body["database_identity"] == database_identity(database_at(db_url))


def test_health_never_shows_the_url_or_password() -> None:
    url = "postgresql://autopack:s3cr3t-pw@127.0.0.1:1/nowhere"
    with TestClient(create_app(database=database_at(url))) as c:
        response = c.get("/health")
    assert response.status_code == 200
    assert "s3cr3t" not in response.text and "nowhere" not in response.text
    assert response.json()["status"] == "degraded" and response.json()["db_ok"] is False


def test_health_is_degraded_for_a_missing_sqlite_file_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with TestClient(create_app(database=database_at(f"sqlite:///{missing}"))) as c:
        body = c.get("/health").json()
    assert (body["status"], body["db_ok"], body["db_id"]) == ("degraded", False, None)
    assert not missing.exists()


def test_settings_are_read_at_startup_not_import(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    app = create_app()  # built while DATABASE_URL names another database
    monkeypatch.setenv("DATABASE_URL", db_url)
    with TestClient(app) as c:
        assert c.get("/health").json()["db_id"] == read_identity(database_at(db_url)).db_id


def test_openapi_is_served(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/runs", "/drain/claim", "/runs/{run_id}/telemetry"} <= set(paths)


# --- runs and phases ---------------------------------------------------------------------------------


def test_create_and_read_a_run(client: TestClient) -> None:
    created = client.post("/runs", json=GOOD_SPEC)
    assert created.status_code == 201
    assert created.json()["phase_states"] == {"QUEUED": 2}
    listed = client.get("/runs").json()
    assert [r["run_id"] for r in listed] == ["api-run"]
    run = client.get("/runs/api-run").json()
    assert [p["phase_id"] for p in run["phases"]] == ["p1", "p2"]
    phases = client.get("/runs/api-run/phases").json()
    assert phases[1]["category"] == "tests" and phases[1]["deliverables"] == ["tests/test_util.py"]
    assert client.get("/runs/api-run/phases/p2").json()["state"] == "QUEUED"


def test_duplicate_run_is_a_conflict(client: TestClient) -> None:
    assert client.post("/runs", json=GOOD_SPEC).status_code == 201
    response = client.post("/runs", json=GOOD_SPEC)
    assert response.status_code == 409 and "already exists" in response.json()["detail"]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s["phases"][1].update(category="astrology"), "category"),
        (lambda s: s["phases"][0].pop("deliverables"), "deliverables"),
        (lambda s: s["phases"][0].update(deliverables=["../escape.py"]), "deliverables"),
        (lambda s: s.update(run_id="bad id with spaces"), "run_id"),
    ],
)
def test_bad_spec_is_422_naming_the_field_and_writes_nothing(client: TestClient, db_url: str, mutate: Any, field: str) -> None:
    import copy

    spec = copy.deepcopy(GOOD_SPEC)
    mutate(spec)
    response = client.post("/runs", json=spec)
    assert response.status_code == 422
    locations = [error["loc"] for error in response.json()["detail"]]
    assert any(field in loc for loc in locations), locations
    assert run_count(db_url) == 0


def test_duplicate_phase_ids_are_422(client: TestClient, db_url: str) -> None:
    spec = {**GOOD_SPEC, "phases": [GOOD_SPEC["phases"][0], GOOD_SPEC["phases"][0]]}
    response = client.post("/runs", json=spec)
    assert response.status_code == 422 and "duplicate phase_id" in response.text
    assert run_count(db_url) == 0


def test_unknown_run_and_phase_are_404(client: TestClient) -> None:
    assert client.get("/runs/nope").status_code == 404
    assert client.get("/runs/nope/phases").status_code == 404
    assert client.get("/runs/nope/phases/x").status_code == 404
    assert client.get("/runs/nope/telemetry").status_code == 404


def test_requeue_a_failed_phase(client: TestClient, db_url: str) -> None:
    client.post("/runs", json=GOOD_SPEC)
    set_phase(db_url, "api-run", "p1", state="FAILED", last_failure_reason="boom")
    response = client.post("/runs/api-run/phases/p1/state", json={"state": "QUEUED"})
    assert response.status_code == 200
    assert phase_rows(db_url)[("api-run", "p1")].state == "QUEUED"


def test_state_change_refused_under_a_live_lease(client: TestClient, db_url: str) -> None:
    client.post("/runs", json=GOOD_SPEC)
    claim = client.post("/drain/claim", json={"owner": "w1"}).json()
    response = client.post(f"/runs/api-run/phases/{claim['phase_id']}/state", json={"state": "SKIPPED"})
    assert response.status_code == 409


# --- drain endpoints -----------------------------------------------------------------------------------


def test_claim_heartbeat_result(client: TestClient, db_url: str) -> None:
    client.post("/runs", json=GOOD_SPEC)
    claim = client.post("/drain/claim", json={"owner": "w1", "lease_seconds": 60}).json()
    assert (claim["run_id"], claim["phase_id"], claim["attempt_index"]) == ("api-run", "p1", 0)
    base = f"/runs/api-run/phases/{claim['phase_id']}"
    assert client.post(f"{base}/heartbeat", json={"owner": "w1", "lease_seconds": 60}).status_code == 200
    done = client.post(f"{base}/result", json={"owner": "w1", "final_state": "COMPLETE"})
    assert done.status_code == 200 and done.json()["state"] == "COMPLETE"
    assert phase_rows(db_url)[("api-run", "p1")].state == "COMPLETE"
    # a second result for the same lease is rejected: the phase ends once
    again = client.post(f"{base}/result", json={"owner": "w1", "final_state": "FAILED"})
    assert again.status_code == 409


def test_claims_go_to_different_phases(client: TestClient) -> None:
    client.post("/runs", json=GOOD_SPEC)
    first = client.post("/drain/claim", json={"owner": "w1"}).json()
    second = client.post("/drain/claim", json={"owner": "w2"}).json()
    assert first["phase_id"] != second["phase_id"]
    assert client.post("/drain/claim", json={"owner": "w3"}).status_code == 204


def test_result_on_an_expired_lease_is_rejected(client: TestClient, db_url: str) -> None:
    client.post("/runs", json=GOOD_SPEC)
    claim = client.post("/drain/claim", json={"owner": "w1", "run_ids": ["api-run"]}).json()
    set_phase(db_url, "api-run", claim["phase_id"], lease_expires_at=utcnow() - timedelta(seconds=1))
    base = f"/runs/api-run/phases/{claim['phase_id']}"
    assert client.post(f"{base}/heartbeat", json={"owner": "w1"}).status_code == 409
    assert client.post(f"{base}/result", json={"owner": "w1", "final_state": "COMPLETE"}).status_code == 409
    # the expired phase is claimable again, as a new attempt
    reclaimed = client.post("/drain/claim", json={"owner": "w2", "run_ids": ["api-run"]}).json()
    assert (reclaimed["phase_id"], reclaimed["attempt_index"], reclaimed["initial_state"]) == (claim["phase_id"], 1, "EXECUTING")


def test_result_from_a_foreign_owner_is_rejected(client: TestClient) -> None:
    client.post("/runs", json=GOOD_SPEC)
    claim = client.post("/drain/claim", json={"owner": "w1"}).json()
    response = client.post(f"/runs/api-run/phases/{claim['phase_id']}/result", json={"owner": "intruder", "final_state": "COMPLETE"})
    assert response.status_code == 409


def test_release_gives_the_phase_back(client: TestClient, db_url: str) -> None:
    client.post("/runs", json=GOOD_SPEC)
    claim = client.post("/drain/claim", json={"owner": "w1"}).json()
    assert client.post(f"/runs/api-run/phases/{claim['phase_id']}/release", json={"owner": "w1"}).status_code == 200
    assert phase_rows(db_url)[("api-run", claim["phase_id"])].state == "QUEUED"


def test_claim_body_is_validated(client: TestClient) -> None:
    assert client.post("/drain/claim", json={"owner": ""}).status_code == 422
    assert client.post("/drain/claim", json={"owner": "w", "states": ["COMPLETE"]}).status_code == 422
    assert client.post("/drain/claim", json={"owner": "w", "lease_seconds": 0}).status_code == 422


# --- telemetry summary ----------------------------------------------------------------------------------


def test_telemetry_summary_by_category_and_complexity(client: TestClient, db_url: str) -> None:
    client.post("/runs", json=GOOD_SPEC)
    rows = [("IMPLEMENT_FEATURE", "MEDIUM", True, False), ("implementation", "medium", False, True), ("testing", "low", True, False)]
    with session_scope(db_url) as db:
        for i, (category, complexity, success, truncated) in enumerate(rows):
            db.add(
                TokenEstimationV2Event(
                    run_id="api-run", phase_id="p1", attempt_index=i, call_index=0, category=category,
                    complexity=complexity, predicted_output_tokens=1, actual_output_tokens=1, selected_budget=1,
                    success=success, truncated=truncated,
                )
            )
    body = client.get("/runs/api-run/telemetry").json()
    assert (body["events"], body["success"], body["truncated"]) == (3, 2, 1)
    assert body["by_category"] == {
        "implementation": {"events": 2, "success": 1, "truncated": 1},
        "tests": {"events": 1, "success": 1, "truncated": 0},
    }
    assert body["by_complexity"]["medium"] == {"events": 2, "success": 1, "truncated": 1}


# --- API key -----------------------------------------------------------------------------------------------


def test_mutations_need_the_api_key_when_one_is_set(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_API_KEY", "k-123456")
    with TestClient(create_app(database=database_at(db_url))) as c:
        assert c.post("/runs", json=GOOD_SPEC).status_code == 401
        assert c.post("/runs", json=GOOD_SPEC, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post("/drain/claim", json={"owner": "w"}).status_code == 401
        assert c.get("/runs").status_code == 200  # reads stay open
        assert c.get("/health").status_code == 200
        assert c.post("/runs", json=GOOD_SPEC, headers={"X-API-Key": "k-123456"}).status_code == 201
    assert run_count(db_url) == 1


def test_without_a_configured_key_the_app_generates_one_into_a_private_file(db_url: str) -> None:
    key_file = Path(os.environ["AUTOPACK_API_KEY_FILE"])
    with TestClient(create_app(database=database_at(db_url))) as c:
        assert c.post("/runs", json=GOOD_SPEC).status_code == 401
        key = key_file.read_text().strip()
        assert c.post("/runs", json=GOOD_SPEC, headers={"X-API-Key": key}).status_code == 201
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key) >= 32


# --- the server process --------------------------------------------------------------------------------


def test_real_http_server_answers_health(db_url: str) -> None:
    with serve(create_app(database=database_at(db_url))) as base:
        body = httpx.get(f"{base}/health", timeout=10).json()
    assert body["db_id"] == read_identity(database_at(db_url)).db_id


def test_db_mismatch_against_a_server_on_another_database(db_url: str, tmp_path: Path) -> None:
    """The drain refuses with DB_MISMATCH (exit 3) when the API server uses a different database."""
    from autopack.errors import DbIdentityMismatchError
    from autopack.execution.batch import check_api_identity

    other = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade_database(database_at(other))
    ours = read_identity(database_at(db_url)).db_id
    with serve(create_app(database=database_at(other))) as base:
        with pytest.raises(DbIdentityMismatchError, match="DB_MISMATCH") as info:
            check_api_identity(base, ours)
    assert info.value.exit_code == 3
    with serve(create_app(database=database_at(db_url))) as base:
        assert check_api_identity(base, ours)["db_id"] == ours


def test_drain_cli_exits_3_on_db_mismatch_and_drains_nothing(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autopack.cli.app import main

    make_run(db_url, "r", ['{"kind": "ok"}'])
    other = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade_database(database_at(other))
    with serve(create_app(database=database_at(other))) as base:
        with pytest.raises(SystemExit) as info:
            main(["drain", "batch", "--api-url", base])
    assert info.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert any("DB_MISMATCH" in line for line in err)
    assert phase_rows(db_url)[("r", "p000")].state == "QUEUED"


def test_drain_cli_unreachable_api_is_one_line_exit_2(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from autopack.cli.app import main

    make_run(db_url, "r", ['{"kind": "ok"}'])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(SystemExit) as info:
        main(["drain", "batch", "--api-url", f"http://127.0.0.1:{port}"])
    assert info.value.code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "cannot reach the API server" in err[0]


# --- the OpenAPI schema states what the server accepts -------------------------------------------------------


def phase_schema(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()["components"]["schemas"]["PhaseSpec"]["properties"]


def test_the_schema_lists_the_categories_and_complexities_the_server_accepts(client: TestClient) -> None:
    from autopack.taxonomy import CATEGORIES, COMPLEXITIES

    properties = phase_schema(client)
    categories, complexities = properties["category"]["enum"], properties["complexity"]["enum"]
    assert set(CATEGORIES) <= set(categories) and set(COMPLEXITIES) <= set(complexities)
    phases = [{**GOOD_SPEC["phases"][0], "phase_id": f"c{i}", "category": category,
               "complexity": complexities[i % len(complexities)]} for i, category in enumerate(categories)]
    assert client.post("/runs", json={"run_id": "every-category", "phases": phases}).status_code == 201
    unknown = {**GOOD_SPEC, "phases": [{**GOOD_SPEC["phases"][0], "category": "poetry"}]}
    assert "poetry" not in categories and client.post("/runs", json=unknown).status_code == 422


@pytest.mark.parametrize("field", ["deliverables", "read_only_context", "scope_paths"])
def test_the_schema_refuses_empty_paths_as_the_server_does(client: TestClient, field: str) -> None:
    items = phase_schema(client)[field]["items"]
    assert items["minLength"] == 1 and items["maxLength"] == 500
    assert not re.search(items["pattern"], "") and not re.search(items["pattern"], "  ")
    assert re.search(items["pattern"], "src/util.py")
    spec = {**GOOD_SPEC, "phases": [{**GOOD_SPEC["phases"][0], field: ["  "]}]}
    assert client.post("/runs", json=spec).status_code == 422
