#!/usr/bin/env bash
# Set up (idempotent) and run the whole flywheel on generated sample traces.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/flywheel demo "$@"
