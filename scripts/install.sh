#!/usr/bin/env bash
# Create ./.venv if needed and install this checkout into it (editable), with the extras given as $1
# (e.g. "test"). pip's and the build backend's chatter goes to .venv/install.log, shown only on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
target=.${1:+[$1]}
log=.venv/install.log
if ! { .venv/bin/python -m pip install --quiet --upgrade pip \
       && .venv/bin/python -m pip install --quiet -e "$target"; } >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  echo "error: installing $target into .venv failed (whole log: $log); check the network and Python >= 3.11" >&2
  exit 1
fi
