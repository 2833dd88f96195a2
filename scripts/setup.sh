#!/usr/bin/env bash
# Create .venv and install the project with its test extras (pip + venv only). pip's own
# output goes to .venv/setup.log (printed only when it fails): a machine's pip configuration
# can add hundreds of lines a newcomer does not need.
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
log=.venv/setup.log
echo "setting up .venv (pip's output: $log)"
# the CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build
if ! { .venv/bin/pip install --quiet --upgrade pip &&
  .venv/bin/pip install --quiet "torch==2.13.0" &&
  .venv/bin/pip install --quiet -e ".[test]"; } >"$log" 2>&1; then
  tail -n 40 "$log"
  echo "setup failed; pip's whole output is in $log" >&2
  exit 1
fi
