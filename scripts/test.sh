#!/usr/bin/env bash
# Install everything the tests need (a fresh machine has nothing) and run the whole suite,
# on SQLite and on the PostgreSQL server at 127.0.0.1:5432 (trust auth, user postgres).
set -euo pipefail
cd "$(dirname "$0")/.."

export PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
bash scripts/install.sh test

# Debian packages the tests use: bubblewrap (the check-command sandbox) and Chromium (the Prefect UI browser test).
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
      >.venv/apt.log 2>&1 || { tail -n 20 .venv/apt.log >&2; echo "error: installing ${missing[*]} failed (log: .venv/apt.log)" >&2; exit 1; }
  else
    echo "warning: ${missing[*]} not installed (needs root and apt-get); the tests that use them will fail under CI=true" >&2
  fi
fi

# GitHub's official OpenAPI description, used to validate the fake GitHub server's responses.
if [ -f package-lock.json ] && command -v npm >/dev/null 2>&1; then
  npm ci --silent --no-audit --no-fund >/dev/null
else
  echo "warning: npm not found; GitHub OpenAPI validation tests will fail under CI=true" >&2
fi

# PostgreSQL: start the local cluster if it is down; CI must not silently skip it.
export AUTOPACK_TEST_POSTGRES_URL=${AUTOPACK_TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if ! .venv/bin/python -c "import os, psycopg; psycopg.connect(os.environ['AUTOPACK_TEST_POSTGRES_URL'], connect_timeout=5).close()"; then
  if [ "${CI:-}" = "true" ]; then
    echo "error: PostgreSQL is unreachable at $AUTOPACK_TEST_POSTGRES_URL (CI requires it)" >&2
    exit 1
  fi
  echo "warning: PostgreSQL unreachable; PostgreSQL tests will be skipped" >&2
  unset AUTOPACK_TEST_POSTGRES_URL
fi

# Lint (ruff + mypy, scripts/lint.sh) before the tests: findings are printed and fail the run.
# On by default (the tree is lint-clean); AUTOPACK_LINT=0 skips it.
if [ "${AUTOPACK_LINT:-1}" != "0" ]; then
  bash scripts/lint.sh || { echo "error: scripts/lint.sh failed; fix the findings above" >&2; exit 1; }
fi

# Two processes by default (each test has its own database, folder and ports); AUTOPACK_TEST_PROCESSES=0 runs serially.
exec .venv/bin/python -m pytest -q -n "${AUTOPACK_TEST_PROCESSES:-2}" "$@"
