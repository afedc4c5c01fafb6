"""``flows/`` only wires library functions into Prefect: no SQL, no markdown, no settings, no arithmetic on counts.

Each of those in a flow is logic the command line cannot share and the library's tests do not see; this reads
the flows' source for the spellings that give them away.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOWS = sorted((ROOT / "flows").glob("*.py"))
#: What belongs in the library, and the spelling that gives it away.
FORBIDDEN = {
    "SQL": re.compile(r"\b(select|text|execute)\("),
    "a markdown table": re.compile(r"\|\s*-{3,}|[\"']\|\s"),
    "a settings lookup": re.compile(r"\bget_settings\(|\bos\.environ\b|\bos\.getenv\("),
}


def offences(source: str) -> list[str]:
    return [f"{line_number}: {what}: {line.strip()}"
            for line_number, line in enumerate(source.splitlines(), 1)
            for what, pattern in FORBIDDEN.items() if pattern.search(line)]


def test_the_scan_recognises_each_kind() -> None:
    source = ('rows = session.execute(sa.select(Phase.run_id))\nq = sa.text("SELECT 1")\n'
              'md = "| a | b |\\n|---|---|"\nurl = get_settings().database_url\ntoken = os.environ["X"]\n'
              'body = path.read_text()\n')
    assert [o.split(": ")[1] for o in offences(source)] == [
        "SQL", "SQL", "a markdown table", "a settings lookup", "a settings lookup"]


@pytest.mark.parametrize("path", FLOWS, ids=lambda p: p.name)
def test_a_flow_module_holds_no_library_logic(path: Path) -> None:
    assert offences(path.read_text(encoding="utf-8")) == [], f"flows/{path.name}: move it into autopack/"
