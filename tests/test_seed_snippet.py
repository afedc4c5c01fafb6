"""The seed's Python verification snippet runs as written (SessionLocal resolves the database when called)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from autopack.db.engine import session_scope
from autopack.db.handle import database_at
from autopack.db.identity import read_identity
from autopack.db.migrate import HEAD_REVISION
from autopack.execution.drain_one import drain_one
from autopack.execution.seed_runs import ensure_seed_runs

SEED_SNIPPET = '''
# Python verification
from autopack.database import SessionLocal
from autopack.models import TokenEstimationV2Event

session = SessionLocal()
docs_low_events = session.query(TokenEstimationV2Event).filter(
    TokenEstimationV2Event.category.in_(["docs", "documentation", "doc_synthesis", "doc_sot_update"]),
    TokenEstimationV2Event.complexity == "low"
).all()

for event in docs_low_events[:5]:  # Show first 5 samples
    print(f"{event.phase_id}: selected_budget={event.selected_budget}, actual_max_tokens={event.actual_max_tokens}")

session.close()
'''


def test_the_seed_verification_snippet_prints_docs_low_budgets(db_url: str, tmp_path: Path) -> None:
    with session_scope(db_url) as session:
        ensure_seed_runs(session, ["telemetry-collection-v4"])
    drain_one("telemetry-collection-v4", "telemetry-p9-readme", force=True, db=database_at(db_url))
    out = subprocess.run([sys.executable, "-c", SEED_SNIPPET], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "DATABASE_URL": db_url}, check=True)
    assert "telemetry-p9-readme: selected_budget=4096, actual_max_tokens=" in out.stdout


def test_the_originals_init_db_creates_the_database_the_seeding_guides_then_fill(tmp_path: Path) -> None:
    """The original's guides create a seed database with ``python -c "from autopack.database import init_db; init_db()"``."""
    url = f"sqlite:///{tmp_path / 'autopack_telemetry_seed.db'}"
    snippet = "from autopack.database import init_db; init_db(); print('[OK] Schema initialized')"
    env = {**os.environ, "DATABASE_URL": url}
    for _ in range(2):  # and again: nothing to do
        out = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, env=env)
        assert out.returncode == 0 and out.stdout == "[OK] Schema initialized\n", out.stderr
    assert read_identity(database_at(url)).schema_revision == HEAD_REVISION
    with session_scope(url) as session:
        assert ensure_seed_runs(session, ["telemetry-collection-v4"])
