"""Where the embedded default keeps its files, from environment variables.

FLYWHEEL_HOME          root for everything below (default ./.flywheel_data)
FLYWHEEL_TRACES_DIR    drop folder of trace files (default $FLYWHEEL_HOME/traces)
FLYWHEEL_START_DATE    first day partition (default 2025-01-01; read in partitions/defs.py)
"""

from __future__ import annotations

import os
from pathlib import Path


def flywheel_home() -> Path:
    return Path(os.environ.get("FLYWHEEL_HOME", ".flywheel_data")).resolve()


def traces_dir() -> Path:
    return Path(os.environ.get("FLYWHEEL_TRACES_DIR", flywheel_home() / "traces")).resolve()
