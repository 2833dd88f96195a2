#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# tests/test_postgres.py starts a throwaway PostgreSQL server: install one from Debian packages
# when there is none and we may (root, apt-get: CI); otherwise that test is skipped with the reason
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing PostgreSQL from Debian packages (for tests/test_postgres.py)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } \
      || echo "WARNING: could not install PostgreSQL; tests/test_postgres.py will be skipped"
  fi
fi
# lint, import order and formatting first: seconds, and the same rules for everyone
.venv/bin/ruff check .
.venv/bin/ruff format --check .
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled
.venv/bin/python -m pytest -q "$@"
