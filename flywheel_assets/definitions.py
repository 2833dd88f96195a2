"""The flywheel's one code location: every asset, check, resource, sensor and job."""

from __future__ import annotations

import dagster as dg

from flywheel_assets.curate import workload_dataset
from flywheel_assets.ingest import raw_traces
from flywheel_assets.settings import flywheel_home, traces_dir
from flywheel_assets.split import eval_dataset, train_dataset
from resources.datasets import LocalDatasetStore, ParquetIOManager
from resources.traces import FileTraceSource
from sensors.drop_folder import drop_folder_sensor


def build_resources() -> dict:
    home = flywheel_home()
    return {
        "io_manager": ParquetIOManager(base_dir=str(home / "assets")),
        "dataset_store": LocalDatasetStore(root=str(home / "datasets")),
        "trace_source": FileTraceSource(
            traces_dir=str(traces_dir()), landing_dir=str(home / "landing")
        ),
    }


ASSETS = [raw_traces, workload_dataset, eval_dataset, train_dataset]

defs = dg.Definitions(
    assets=ASSETS,
    resources=build_resources(),
    sensors=[drop_folder_sensor],
)
