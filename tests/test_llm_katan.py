"""The OpenAI adapter against llm-katan (echo backend, no model) over real HTTP on 127.0.0.1.

llm-katan's Anthropic and Vertex routes expect other auth headers than the current official SDKs send
(``x-api-key``/``?key=``), so those SDKs are exercised against tests/llm_fake_server.py instead.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from autopack.db.engine import session_scope
from autopack.db.handle import database_at
from autopack.db.models import LlmUsageEvent, TokenEstimationV2Event
from autopack.execution import leases
from autopack.execution.phase_runner import execute_phase
from autopack.execution.runs import create_run
from autopack.execution.spec import PhaseSpec, RunSpec
from autopack.llm.base import LLMRequest
from autopack.llm.openai_provider import OpenAIProvider

KATAN = shutil.which("llm-katan") or str(Path(sys.executable).with_name("llm-katan"))
pytestmark = pytest.mark.skipif(not Path(KATAN).exists(), reason="llm-katan is not installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def katan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    stats = tmp_path_factory.mktemp("katan") / "stats.json"
    proc = subprocess.Popen(
        [KATAN, "--model", "echo", "--name", "katan-echo", "--backend", "echo", "--providers", "openai",
         "--host", "127.0.0.1", "--port", str(port), "--stats-file", str(stats), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:  # bounded wait until the port accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("llm-katan did not start")
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(timeout=10)


def test_openai_sdk_round_trip(katan: str) -> None:
    provider = OpenAIProvider(api_key="katan-key", base_url=katan, model="katan-echo", timeout=10)
    response = provider.complete(LLMRequest(system="s", prompt="write pkg/a.py", max_tokens=256))
    assert "[echo]" in response.text and "write pkg/a.py" in response.text
    assert response.provider == "openai" and response.model == "katan-echo"
    assert response.stop_reason == "stop" and response.input_tokens and response.output_tokens
    assert response.total_tokens == response.input_tokens + response.output_tokens


def test_phase_through_a_real_sdk_records_the_failed_sample(katan: str, db_url: str) -> None:
    spec = RunSpec(run_id="katan-run", phases=[PhaseSpec(phase_id="p1", description="Write pkg/a.py",
                                                         category="implementation", complexity="low",
                                                         deliverables=["pkg/a.py"])])
    with session_scope(db_url) as session:
        create_run(session, spec)
        claim = leases.claim_phase(session, "katan-run", "p1", "w")
    assert claim is not None
    provider = OpenAIProvider(api_key="katan-key", base_url=katan, model="katan-echo", timeout=10)
    result = execute_phase("katan-run", "p1", claim=claim, db=database_at(db_url), provider=provider)
    assert (result.final_state, result.failure_stage, result.telemetry_events) == ("FAILED", "validation", 1)
    with session_scope(db_url) as session:
        event = session.execute(sa.select(TokenEstimationV2Event)).scalar_one()
        usage = session.execute(sa.select(LlmUsageEvent)).scalar_one()
    assert event.provider == "openai" and not event.success and event.phase_outcome == "FAILED"
    assert usage.split_kind == "exact" and usage.model == "katan-echo"
