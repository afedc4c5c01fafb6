#!/usr/bin/env python
"""The calibration result's JSON Schema (docs/calibration-result.schema.json), generated from the model
(``autopack.calibration.result.CalibrationResult``) so it is regenerated rather than hand-edited.

    .venv/bin/python scripts/result_schema.py            # print the schema
    .venv/bin/python scripts/result_schema.py --write    # rewrite docs/calibration-result.schema.json
    .venv/bin/python scripts/result_schema.py --check    # exit 1 if the file is out of date (tests/test_result_schema.py)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autopack.calibration.result import CalibrationResult  # noqa: E402

SCHEMA_FILE = ROOT / "docs" / "calibration-result.schema.json"


def schema_text() -> str:
    """The schema as the file holds it: indented, keys in the model's order, one trailing newline."""
    return json.dumps(CalibrationResult.model_json_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"rewrite {SCHEMA_FILE.relative_to(ROOT)}")
    mode.add_argument("--check", action="store_true", help="exit 1 if the committed schema is out of date")
    args = parser.parse_args(argv)
    text = schema_text()
    if args.write:
        SCHEMA_FILE.write_text(text, encoding="utf-8")
    elif args.check:
        current = SCHEMA_FILE.read_text(encoding="utf-8") if SCHEMA_FILE.exists() else ""
        if current != text:
            print(f"{SCHEMA_FILE.relative_to(ROOT)} is out of date (run: .venv/bin/python scripts/result_schema.py "
                  "--write)", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
