"""Dagster instance configurations, all derived from deploy/dagster.yaml.

    python deploy/instance.py production    # deploy/dagster.yaml as it is (Kubernetes)
    python deploy/instance.py single-host   # docker compose, tests: see single_host()

Deriving keeps one source of truth for storage, the run queue, pools and run monitoring;
only what a single host can't do is taken out. Needs PyYAML only (it comes with Dagster).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

PRODUCTION_YAML = Path(__file__).resolve().with_name("dagster.yaml")


def production() -> dict:
    return yaml.safe_load(PRODUCTION_YAML.read_text())


def single_host(config: dict | None = None) -> dict:
    """The production instance with Dagster's default run launcher instead of Kubernetes Jobs.

    Runs start as processes of the code server (in compose: the `code` container). A process
    can't be resumed on another worker, and Dagster refuses run monitoring with
    `max_resume_run_attempts` > 0 for such a launcher, so resumption is turned off; the start
    timeout and the maximum runtime still apply.
    """
    config = copy.deepcopy(production() if config is None else config)
    config.pop("run_launcher", None)
    if "run_monitoring" in config:
        config["run_monitoring"]["max_resume_run_attempts"] = 0
    return config


VARIANTS = {"production": production, "single-host": single_host}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in VARIANTS:
        print(f"usage: instance.py {{{'|'.join(VARIANTS)}}}", file=sys.stderr)
        return 2
    yaml.safe_dump(VARIANTS[argv[0]](), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
