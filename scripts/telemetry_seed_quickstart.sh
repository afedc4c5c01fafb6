#!/usr/bin/env bash
# The seed's quickstart, on the embedded default: install, then run the whole telemetry pipeline
# (SQLite ./autopack.db, simulated LLM provider, local-git dry run of the calibration pull request).
# Extra arguments go to `autopack pipeline run` (e.g. --target-truncation 0.1).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
export PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .

export PREFECT_LOGGING_LEVEL=${PREFECT_LOGGING_LEVEL:-WARNING}
exec .venv/bin/autopack pipeline run --init --dry-run "$@"
