#!/usr/bin/env bash
# The seed's quickstart, on the embedded default: install, then run the whole telemetry pipeline
# (SQLite ./autopack.db, simulated LLM provider, local-git dry run of the calibration pull request).
# Extra arguments go to `autopack pipeline run` (e.g. --target-truncation 0.1). It ends with a line
# "time: ..." giving each stage's seconds; the install's are printed first.
set -euo pipefail
cd "$(dirname "$0")/.."

export PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
started=$(date +%s.%N)
bash scripts/install.sh
echo "install: $(.venv/bin/python -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$started") s"

export PREFECT_LOGGING_LEVEL=${PREFECT_LOGGING_LEVEL:-WARNING}
# Four weeks of seed runs (244 simulated phases): one week leaves every group below the ~22 calls a
# distribution-free budget factor needs, so the gate would (rightly) ship nothing.
exec .venv/bin/autopack pipeline run --init --weeks 4 --dry-run "$@"
