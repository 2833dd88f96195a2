"""The flywheel's one code location: every asset, check, resource, sensor and job."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from flywheel_assets.curate import workload_dataset
from flywheel_assets.evaluate import base_eval, customized_eval, icl_eval
from flywheel_assets.ingest import raw_traces
from flywheel_assets.jobs import (
    GPU_ASSETS,
    GPU_RUN_TAGS,
    curate_and_split_job,
    ingest_job,
    promote_job,
    report_job,
    rollback_job,
    serving_telemetry_job,
    train_and_evaluate_job,
)
from flywheel_assets.judge import judge_calibration
from flywheel_assets.monitor import production_metrics, serving_telemetry
from flywheel_assets.production import MONITORING_ASSETS
from flywheel_assets.promote import promoted_model
from flywheel_assets.report import leaderboard
from flywheel_assets.settings import FlywheelSettings, load_settings
from flywheel_assets.split import eval_dataset, train_dataset
from flywheel_assets.train import lora_adapter
from resources.datasets import JsonIOManager, LocalDatasetStore, ParquetIOManager, StoredAssets
from resources.embeddings import EmbeddingsResource
from resources.nemo.backend import NemoBackend
from resources.platform import LocalPlatform, ModelPlatform, NemoPlatform
from resources.telemetry import TelemetrySource
from resources.traces import FileTraceSource
from resources.tracking import build_tracker, tracked
from resources.weave_source import WeaveTraceSource, trace_server_url
from sensors.automation import weekly_schedules
from sensors.drop_folder import drop_folder_sensor
from sensors.telemetry import serving_telemetry_sensor
from sensors.weave import weave_trace_sensor


def build_resources(home: Path | None = None, traces: Path | None = None) -> dict:
    """Every resource of the embedded default, rooted at `home` (default: FLYWHEEL_HOME)."""
    settings = load_settings()
    home = home or settings.home
    traces = traces or settings.traces
    # W&B when WANDB_MODE/WANDB_API_KEY configure it, else a no-op (resources/tracking.py)
    tracker = build_tracker(home, project=settings.wandb_project, registry=settings.wandb_registry)
    return {
        "io_manager": tracked(ParquetIOManager(base_dir=str(home / "assets")), tracker),
        "json_io_manager": tracked(JsonIOManager(base_dir=str(home / "assets")), tracker),
        "tracker": tracker,
        "stored_assets": StoredAssets(base_dir=str(home / "assets")),
        "dataset_store": LocalDatasetStore(root=str(home / "datasets")),
        "trace_source": FileTraceSource(
            traces_dir=str(traces),
            landing_dir=str(home / "landing"),
            start_date=settings.start_date.isoformat(),  # the first day partition
            validation_workers=settings.validation_workers,
        ),
        "platform": build_platform(settings, home),
        "telemetry": TelemetrySource(  # off unless FLYWHEEL_TELEMETRY_URL is set
            url=settings.telemetry_url or "",
            kind=settings.telemetry_kind,
            engines=list(settings.telemetry_engines),
            default_model=settings.telemetry_model,
            store_dir=str(home / "telemetry"),
        ),
        "embeddings": EmbeddingsResource(
            base_url=settings.embeddings_base_url,
            model=settings.embeddings_model,
            api_key=_secret("FLYWHEEL_EMBEDDINGS_API_KEY"),
            input_type=settings.embeddings_input_type,
            dimensions=settings.embeddings_dimensions,
            cache_path=str(home / "cache" / "embeddings.sqlite"),
        ),
    }


def _secret(name: str) -> dg.EnvVar | None:
    # an EnvVar of an unset variable fails when the resource starts: name only those set
    return dg.EnvVar(name) if os.environ.get(name) else None


def build_platform(settings: FlywheelSettings, home: Path) -> ModelPlatform:
    """Where candidates are trained and served: this machine, or NeMo microservices."""
    judge = {
        "judge_base_url": settings.judge_base_url,
        "judge_model": settings.judge_model,
        "judge_api_key": _secret("FLYWHEEL_JUDGE_API_KEY"),
    }
    if settings.backend == "nemo":
        nemo = NemoBackend(
            nemo_base_url=settings.nemo_base_url,
            datastore_base_url=settings.nemo_datastore_url,
            nim_base_url=settings.nim_base_url,
            evaluator_nim_url=settings.evaluator_nim_url,
            namespace=settings.nemo_namespace,
            api_key=_secret("NGC_API_KEY"),
        )
        return NemoPlatform(nemo=nemo, **judge)
    return LocalPlatform(model_cache_dir=str(home / "models"), adapters_dir=str(home / "adapters"), **judge)


def build_weave_source(settings: FlywheelSettings) -> WeaveTraceSource:
    """The Weave project that weave_trace_sensor reads: FLYWHEEL_WEAVE_ENTITY/PROJECT, else
    W&B's own WANDB_ENTITY/WANDB_PROJECT; the key WANDB_API_KEY (an EnvVar: never in config or
    logs); the trace server as weave finds it (`trace_server_url`)."""
    return WeaveTraceSource(
        entity=settings.weave_entity or dg.EnvVar("WANDB_ENTITY"),
        project=settings.weave_project or dg.EnvVar("WANDB_PROJECT"),
        api_key=dg.EnvVar("WANDB_API_KEY"),
        base_url=trace_server_url(),
        op_names=list(settings.weave_ops) if settings.weave_ops is not None else None,
        start_date=settings.start_date.isoformat(),
    )


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
    judge_calibration,
    promoted_model,
    production_metrics,
    serving_telemetry,
    *MONITORING_ASSETS,
]

# Each stage waits for an automation tick after its upstream ends; Dagster's default sensor
# ticks every 30 s, which made a new workload wait minutes for its leaderboard. A tick over
# this graph costs a tenth of a second, so one every 5 s is cheap.
AUTOMATION_INTERVAL_S = 5
# Both sensors launch runs, not backfills (emit_backfills=False): a tick that requests
# several partitions of an asset would otherwise submit an asset backfill, which waits for
# the backfill daemon's next pass (15 s and more) before its runs are even queued.

# every asset with an automation condition but the GPU ones (this replaces Dagster's
# default_automation_condition_sensor, so its interval is ours); promoted_model never
automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=dg.AssetSelection.assets(workload_dataset, eval_dataset, train_dataset, leaderboard, *MONITORING_ASSETS),
    minimum_interval_seconds=AUTOMATION_INTERVAL_S,
    emit_backfills=False,
)
# the GPU assets, so that their runs carry the GPU run tag
gpu_automation_sensor = dg.AutomationConditionSensorDefinition(
    "gpu_automation_sensor",
    target=GPU_ASSETS,
    run_tags=GPU_RUN_TAGS,
    minimum_interval_seconds=AUTOMATION_INTERVAL_S,
    emit_backfills=False,
)


def executor_for(settings: FlywheelSettings) -> dg.ExecutorDefinition | None:
    """FLYWHEEL_EXECUTOR: Dagster's default (multiprocess), in-process, or one Kubernetes pod per step."""
    if settings.executor == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return dg.in_process_executor if settings.executor == "in_process" else None


defs = dg.Definitions(
    assets=ASSETS,
    jobs=[
        ingest_job,
        curate_and_split_job,
        train_and_evaluate_job,
        report_job,
        promote_job,
        rollback_job,
        serving_telemetry_job,
    ],
    resources={**build_resources(), "weave_source": build_weave_source(load_settings())},
    sensors=[
        drop_folder_sensor,
        weave_trace_sensor,
        automation_sensor,
        gpu_automation_sensor,
        serving_telemetry_sensor,
    ],
    schedules=weekly_schedules(),
    executor=executor_for(load_settings()),
)
