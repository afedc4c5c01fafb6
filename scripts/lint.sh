#!/usr/bin/env bash
# Lint the checkout with the tools of ./.venv (install them with `bash scripts/install.sh test`):
# ruff check (rules in pyproject.toml) and mypy (files and strictness in pyproject.toml).
# Prints every finding and exits non-zero if either tool found something.
set -uo pipefail
cd "$(dirname "$0")/.."

for tool in ruff mypy; do
  if [ ! -x ".venv/bin/$tool" ]; then
    echo "error: .venv/bin/$tool not found; run: bash scripts/install.sh test" >&2
    exit 1
  fi
done

status=0
.venv/bin/ruff check --quiet --output-format concise . || status=1
.venv/bin/mypy --no-error-summary || status=1
if [ "$status" -ne 0 ]; then
  echo "error: lint failed (ruff check / mypy findings above)" >&2
fi
exit "$status"
