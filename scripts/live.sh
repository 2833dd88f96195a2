#!/usr/bin/env bash
# Set up (idempotent), then run the flywheel as it runs in production: `dagster dev` with its
# sensors on, the demo traces dropped into the folder, progress until every leaderboard
# exists; the UI (http://127.0.0.1:3000) stays open until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/flywheel live "$@"
