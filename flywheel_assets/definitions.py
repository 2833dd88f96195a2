"""The flywheel's one code location: every asset, check, resource, sensor and job."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from flywheel_assets.curate import workload_dataset
from flywheel_assets.evaluate import base_eval, customized_eval, icl_eval
from flywheel_assets.ingest import raw_traces
from flywheel_assets.promote import promote_job, promoted_model, rollback_job
from flywheel_assets.settings import flywheel_home, traces_dir
from flywheel_assets.report import leaderboard
from flywheel_assets.split import eval_dataset, train_dataset
from flywheel_assets.train import lora_adapter
from resources.datasets import JsonIOManager, LocalDatasetStore, ParquetIOManager
from resources.inference import InferenceResource
from resources.traces import FileTraceSource
from resources.tracking import build_tracker, tracked
from sensors.drop_folder import drop_folder_sensor


def build_resources(home: Path | None = None, traces: Path | None = None) -> dict:
    """Every resource of the embedded default, rooted at `home` (default: FLYWHEEL_HOME)."""
    home = home or flywheel_home()
    traces = traces or traces_dir()
    tracker = build_tracker(home)  # W&B when configured, else a no-op (resources/tracking.py)
    return {
        "io_manager": tracked(ParquetIOManager(base_dir=str(home / "assets")), tracker),
        "json_io_manager": tracked(JsonIOManager(base_dir=str(home / "assets")), tracker),
        "tracker": tracker,
        "dataset_store": LocalDatasetStore(root=str(home / "datasets")),
        "trace_source": FileTraceSource(
            traces_dir=str(traces), landing_dir=str(home / "landing")
        ),
        "inference": InferenceResource(
            model_cache_dir=str(home / "models"),
            adapters_dir=str(home / "adapters"),
            judge_base_url=os.environ.get("FLYWHEEL_JUDGE_BASE_URL"),
            judge_model=os.environ.get("FLYWHEEL_JUDGE_MODEL"),
            judge_api_key=dg.EnvVar("FLYWHEEL_JUDGE_API_KEY") if os.environ.get("FLYWHEEL_JUDGE_API_KEY") else None,
        ),
    }


ASSETS = [
    raw_traces,
    workload_dataset,
    eval_dataset,
    train_dataset,
    lora_adapter,
    base_eval,
    icl_eval,
    customized_eval,
    leaderboard,
    promoted_model,
]

defs = dg.Definitions(
    assets=ASSETS,
    jobs=[promote_job, rollback_job],
    resources=build_resources(),
    sensors=[drop_folder_sensor],
)
