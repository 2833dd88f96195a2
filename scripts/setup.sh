#!/usr/bin/env bash
# Create .venv and install the project with its test extras (pip + venv only).
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
# the CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build
.venv/bin/pip install --quiet "torch==2.13.0"
.venv/bin/pip install --quiet -e ".[test]"
