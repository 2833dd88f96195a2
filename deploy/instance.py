"""Dagster instance configurations, all derived from deploy/dagster.yaml, and a check of the
instance the Helm chart renders against it.

    python deploy/instance.py production    # deploy/dagster.yaml as it is (Kubernetes)
    python deploy/instance.py single-host   # docker compose, tests: see single_host()
    python deploy/instance.py check FILE    # FILE (- for stdin): a rendered dagster.yaml, or the
                                            # instance ConfigMap `helm template` prints; see check()

Deriving keeps one source of truth for storage, the run queue, pools and run monitoring;
only what a single host can't do is taken out. Needs PyYAML only (it comes with Dagster).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

PRODUCTION_YAML = Path(__file__).resolve().with_name("dagster.yaml")
# What the chart must render as deploy/dagster.yaml says it; storage is the chart's own.
CHART_SECTIONS = ("run_coordinator", "concurrency", "run_monitoring", "telemetry")
_MISSING = object()


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


def rendered_instance(text: str) -> dict:
    """A dagster.yaml, or the instance ConfigMap as `helm template --show-only` prints it."""
    (document,) = [d for d in yaml.safe_load_all(text) if d]
    if document.get("kind") == "ConfigMap":
        return yaml.safe_load(document["data"]["dagster.yaml"])
    return document


def check(rendered: dict, config: dict | None = None) -> list[str]:
    """Where `rendered` (the chart's dagster.yaml) differs from the production instance.

    A chart version that lacks a values block renders nothing for it, silently: the `gpu` pool
    limit or the pods' security context would be gone. Compared: CHART_SECTIONS as a whole,
    and every run launcher setting deploy/dagster.yaml gives a value; the ones it reads from
    the environment ({env: ...}: namespace, service account, ConfigMap, Secret) are the chart's.
    """
    config = production() if config is None else config
    problems = [p for key in CHART_SECTIONS for p in _differences(key, config[key], rendered.get(key, _MISSING))]
    ours, theirs = config["run_launcher"], rendered.get("run_launcher") or {}
    for key in ("module", "class"):
        problems += _differences(f"run_launcher.{key}", ours[key], theirs.get(key, _MISSING))
    for key, value in ours["config"].items():
        if not (isinstance(value, dict) and set(value) == {"env"}):
            rendered_value = (theirs.get("config") or {}).get(key, _MISSING)
            problems += _differences(f"run_launcher.config.{key}", value, rendered_value)
    return problems


def _differences(path: str, ours, theirs) -> list[str]:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [
            p
            for key in sorted(ours.keys() | theirs.keys(), key=str)
            for p in _differences(f"{path}.{key}", ours.get(key, _MISSING), theirs.get(key, _MISSING))
        ]
    if ours == theirs:
        return []
    if theirs is _MISSING:
        return [f"{path}: missing (deploy/dagster.yaml: {ours!r})"]
    if ours is _MISSING:
        return [f"{path}: {theirs!r} is not in deploy/dagster.yaml"]
    return [f"{path}: {theirs!r} (deploy/dagster.yaml: {ours!r})"]


def check_file(path: str) -> int:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    problems = check(rendered_instance(text))
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print("the rendered instance says what deploy/dagster.yaml says")
    return 1 if problems else 0


VARIANTS = {"production": production, "single-host": single_host}


def main(argv: list[str]) -> int:
    if len(argv) == 1 and argv[0] in VARIANTS:
        yaml.safe_dump(VARIANTS[argv[0]](), sys.stdout, sort_keys=False)
        return 0
    if len(argv) == 2 and argv[0] == "check":
        return check_file(argv[1])
    print(f"usage: instance.py {{{'|'.join(VARIANTS)}}} | instance.py check FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
