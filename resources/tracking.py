"""Experiment tracking: versioned W&B artifacts with lineage, through `dagster-wandb`.

Off unless W&B is configured (`build_tracker`): with neither `WANDB_API_KEY` nor
`WANDB_MODE` set, or with `WANDB_MODE=disabled`, the tracker is a no-op and the IO managers
are left as they are, so the embedded default needs no W&B at all. W&B's own variables
(`WANDB_*`) are read here; the flywheel's (`FLYWHEEL_WANDB_PROJECT`, `FLYWHEEL_WANDB_REGISTRY`)
in `flywheel_assets/settings.py`, and `definitions.py` passes them to `build_tracker`.

How it hooks in: `tracked(storage, tracker)` wraps an asset IO manager. After the wrapped
manager has stored a value, the wrapper logs it as a W&B artifact (one W&B run per Dagster
step, grouped by Dagster run id, `job_type` = the asset) and adds the artifact's name and
version to the materialization's metadata, the way dagster-wandb's own IO manager does.
Lineage comes from the inputs the step loaded through a wrapped manager: each upstream
partition's artifact (read from its latest materialization's metadata) is declared with
`run.use_artifact`, so W&B shows `train split -> adapter -> evaluation`. The values stay
in our Parquet/JSON stores: dagster-wandb's `wandb_artifacts_io_manager` would make W&B the
storage (pickled values, downloaded again by every downstream step, which needs a W&B
server even in tests), so we use its `wandb_resource` for authentication and host, and its
metadata conventions, but not its storage.

Offline mode (`WANDB_MODE=offline`): W&B refuses `use_artifact` offline ("Cannot use
artifact when in offline mode", wandb/wandb#2530), so lineage edges are also written into
each artifact's metadata (`inputs`: upstream name + digest) and the run's config; both are
in the offline run files (`read_offline_runs`) and survive `wandb sync`. Sync needs the
run folder *and* the staging folder (`WANDB_DATA_DIR`), which `build_tracker` keeps
together under `$FLYWHEEL_HOME/wandb`.
"""

import hashlib
import io
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import polars as pl
from pydantic import Field, field_validator

from flywheel_assets.settings import DEFAULT_WANDB_PROJECT, check_wandb_registry

# asset -> W&B artifact type; other assets (raw traces, promotions) are not logged here
TRACKED_ASSETS = {
    "workload_dataset": "dataset",
    "eval_dataset": "dataset",
    "train_dataset": "dataset",
    "lora_adapter": "model",
    "base_eval": "evaluation",
    "icl_eval": "evaluation",
    "customized_eval": "evaluation",
    "leaderboard": "leaderboard",
}
# these types also get their rows as a wandb.Table (in the artifact and the run)
TABLE_NAMES = {"evaluation": "results", "leaderboard": "leaderboard"}
MAX_TABLE_ROWS = 10_000

WANDB_METADATA_KEY = "wandb_artifact"
# W&B refuses longer artifact (and registry collection) names
ARTIFACT_NAME_MAX = 128


def artifact_name(asset: str, partition: str | None) -> str:
    """`lora_adapter.tiny-demo.tool_router`: partition keys hold [a-z0-9_-] only, so `.`
    separates the parts without collisions (W&B names allow letters, digits, `-_.`).
    A name over W&B's 128 characters (two 64-character keys) keeps its first 115 and ends
    with `-` and 12 hex of the full name's SHA-256: the same every time, distinct."""
    name = asset if not partition else f"{asset}.{partition.replace('|', '.')}"
    if len(name) <= ARTIFACT_NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name[: ARTIFACT_NAME_MAX - len(digest) - 1]}-{digest}"


@dataclass
class ArtifactRequest:
    """One artifact to log, with what it was built from."""

    name: str
    type: str
    asset: str
    partition: str | None
    dagster_run_id: str
    dagster_job: str
    files: dict[str, bytes] = field(default_factory=dict)
    dirs: dict[str, str] = field(default_factory=dict)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    link_to_registry: bool = False


class Tracker(dg.ConfigurableResource):
    """Where artifacts and metrics go. The default is `NoOpTracker`."""

    @property
    def enabled(self) -> bool:
        return False

    def log(self, request: ArtifactRequest) -> dict | None:
        """Log `request`; return its reference (name, version or digest, run), None when off."""
        return None


class NoOpTracker(Tracker):
    """No W&B configured: nothing is logged, nothing is imported."""


class WandbTracker(Tracker):
    project: str = Field(default=DEFAULT_WANDB_PROJECT, description="W&B project (FLYWHEEL_WANDB_PROJECT).")
    entity: str | None = Field(default=None, description="W&B entity (WANDB_ENTITY); default: the key's user.")
    mode: Literal["online", "offline"] = "online"
    run_dir: str = Field(description="Where W&B keeps run files (offline runs stay there until `wandb sync`).")
    registry: str | None = Field(
        default=None,
        description="Promotions are also linked here when online, e.g. `wandb-registry-model`.",
    )

    @field_validator("registry")
    @classmethod
    def _a_wandb_registry(cls, registry: str | None) -> str | None:
        # also checked here: run config may set it at launch, past the settings
        if registry is None:
            return None
        try:
            return check_wandb_registry(registry)
        except ValueError as err:
            raise ValueError(f"registry={registry!r} {err}") from None

    wandb: dg.ResourceDependency[dict] = Field(
        description="dagster-wandb's `wandb_resource` (or the same handle for keyless offline mode)."
    )

    @property
    def enabled(self) -> bool:
        return True

    def log(self, request: ArtifactRequest) -> dict:
        sdk = self.wandb["sdk"]
        Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        if self.mode == "offline":
            # offline artifact files are staged in WANDB_DATA_DIR until `wandb sync`, which
            # needs both: keep them beside the runs unless the operator chose a place
            os.environ.setdefault("WANDB_DATA_DIR", str(Path(self.run_dir) / "data"))
        settings = sdk.Settings(
            silent=True,
            console="off",
            x_disable_stats=True,
            x_disable_meta=True,
            disable_git=True,
            save_code=False,
        )
        inputs = [_compact(ref) for ref in request.inputs]
        config = {
            "dagster_run_id": request.dagster_run_id,
            "dagster_job": request.dagster_job,
            "asset": request.asset,
            "partition": request.partition,
            "inputs": inputs,
            **request.config,
        }
        with sdk.init(
            project=self.project,
            entity=self.entity,
            dir=self.run_dir,
            mode=self.mode,
            job_type=request.asset,
            group=request.dagster_run_id,
            name=f"{request.asset}[{request.partition}]" if request.partition else request.asset,
            tags=["dagster", request.asset],
            config=config,
            settings=settings,
            reinit="create_new",
        ) as run:
            if not run.offline:
                for ref in request.inputs:
                    if ref.get("qualified_name"):
                        run.use_artifact(ref["qualified_name"])
            artifact = sdk.Artifact(
                request.name,
                type=request.type,
                metadata={"source_integration": "dagster_flywheel", **config, **request.metrics},
            )
            for path, data in request.files.items():
                with artifact.new_file(path, mode="wb") as out:
                    out.write(data)
            for path, folder in request.dirs.items():
                artifact.add_dir(folder, name=path)
            for key, frame in request.tables.items():
                table = sdk.Table(columns=frame.columns, data=_table_rows(frame))
                artifact.add(table, key)
                run.log({key: table})
            if request.metrics:
                run.summary.update(request.metrics)
            run.log_artifact(artifact, aliases=["latest", *request.aliases])
            ref = {
                "name": request.name,
                "type": request.type,
                "digest": artifact.digest,
                "mode": run.settings.mode,
                "run_id": run.id,
                "inputs": inputs,
                "aliases": request.aliases,
            }
            if run.offline:
                ref["run_dir"] = run.settings.sync_dir
            else:
                artifact.wait()
                ref |= {
                    "version": artifact.version,
                    "qualified_name": artifact.qualified_name,
                    "url": artifact.url,
                    "run_url": run.url,
                }
                if request.link_to_registry and self.registry:
                    run.link_artifact(artifact, f"{self.registry}/{request.name}", aliases=request.aliases)
                    ref["registry"] = f"{self.registry}/{request.name}"
        return ref


def _compact(ref: dict) -> dict:
    """What a downstream artifact records of an upstream one."""
    return {k: ref[k] for k in ("name", "type", "digest", "version", "qualified_name") if ref.get(k)}


def _table_rows(frame: pl.DataFrame) -> list[list]:
    def cell(value):
        return value if value is None or isinstance(value, (str, int, float, bool)) else json.dumps(value, default=str)

    return [[cell(v) for v in row] for row in frame.head(MAX_TABLE_ROWS).iter_rows()]


def wandb_metadata(ref: dict) -> dict[str, dg.MetadataValue]:
    """Materialization metadata for a logged artifact (keys follow dagster-wandb's)."""
    metadata = {
        WANDB_METADATA_KEY: dg.MetadataValue.json(ref),
        "wandb_artifact_version": dg.MetadataValue.text(ref.get("version") or f"offline, digest {ref['digest'][:12]}"),
    }
    if ref.get("url"):
        metadata["wandb_artifact_url"] = dg.MetadataValue.url(ref["url"])
    if ref.get("run_url"):
        metadata["wandb_run_url"] = dg.MetadataValue.url(ref["run_url"])
    if ref.get("run_dir"):
        metadata["wandb_run_dir"] = dg.MetadataValue.path(ref["run_dir"])
    return metadata


# --- lineage between steps ------------------------------------------------------------

# (dagster run id, step key) -> upstream artifact refs loaded by that step so far. A step's
# inputs are loaded in the process that then handles its outputs (in-process and
# multiprocess executors alike), so a process-local map is enough.
_LOADED: dict[tuple[str, str], list[dict]] = {}
_LOADED_LOCK = threading.Lock()


def latest_wandb_ref(instance: dg.DagsterInstance, asset: str, partition: str | None) -> dict | None:
    """The W&B artifact recorded on the latest materialization of `asset` [`partition`]."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    if not records:
        return None
    entry = records[0].asset_materialization.metadata.get(WANDB_METADATA_KEY)
    return entry.value if entry is not None else None


def record_use(run_id: str, step_key: str, refs: list[dict]) -> None:
    with _LOADED_LOCK:
        _LOADED.setdefault((run_id, step_key), []).extend(refs)


def _take_uses(run_id: str, step_key: str) -> list[dict]:
    with _LOADED_LOCK:
        refs = _LOADED.pop((run_id, step_key), [])
    unique = {(r["name"], r.get("digest")): r for r in refs}
    return list(unique.values())


def _loaded_partitions(context: dg.InputContext, value) -> list[str | None]:
    if not context.has_asset_partitions:
        return [None]
    keys = [str(k) for k in context.asset_partition_keys]
    # a dict keyed by partition: missing partitions were left out (allow_missing_partitions)
    if isinstance(value, dict) and {str(k) for k in value} <= set(keys):
        return [str(k) for k in value]
    return keys


def _plain_metadata(metadata) -> tuple[dict[str, float], dict[str, Any]]:
    """Numbers (-> W&B summary) and JSON / short texts (-> W&B config) of Dagster metadata."""
    metrics, config = {}, {}
    for key, entry in (metadata or {}).items():
        if isinstance(entry, (dg.MarkdownMetadataValue, dg.TableMetadataValue, dg.PathMetadataValue)):
            continue
        value = entry.value if isinstance(entry, dg.MetadataValue) else entry
        if isinstance(value, bool):
            config[key] = value
        elif isinstance(value, (int, float)):
            metrics[key] = value
        elif isinstance(value, (dict, list)) or (isinstance(value, str) and len(value) <= 200):
            config[key] = value
    return metrics, config


class _TrackedIOManager(dg.IOManager):
    def __init__(self, storage: dg.IOManager, tracker: Tracker):
        self.storage = storage
        self.tracker = tracker

    def load_input(self, context: dg.InputContext):
        value = self.storage.load_input(context)
        if context.has_asset_key and context.asset_key.to_user_string() in TRACKED_ASSETS:
            asset = context.asset_key.to_user_string()
            refs = [latest_wandb_ref(context.instance, asset, key) for key in _loaded_partitions(context, value)]
            step = context.step_context
            record_use(step.run_id, step.step.key, [r for r in refs if r])
        return value

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        self.storage.handle_output(context, obj)
        inputs = _take_uses(context.run_id, context.step_key)
        asset = context.asset_key.to_user_string() if context.has_asset_key else None
        if asset not in TRACKED_ASSETS or obj is None:
            return
        request = _request_for(context, asset, obj, inputs)
        context.log.info(f"logging {request.name} to W&B ({request.type}, {len(inputs)} upstream artifacts)")
        context.add_output_metadata(wandb_metadata(self.tracker.log(request)))


def _request_for(context: dg.OutputContext, asset: str, obj, inputs: list[dict]) -> ArtifactRequest:
    partition = context.asset_partition_key if context.has_asset_partitions else None
    kind = TRACKED_ASSETS[asset]
    metrics, config = _plain_metadata(context.output_metadata)
    request = ArtifactRequest(
        name=artifact_name(asset, partition),
        type=kind,
        asset=asset,
        partition=partition,
        dagster_run_id=context.run_id,
        dagster_job=context.job_name,
        metrics=metrics,
        config=config,
        inputs=inputs,
    )
    if isinstance(obj, (pl.DataFrame, pl.LazyFrame)):
        buffer = io.BytesIO()
        if isinstance(obj, pl.LazyFrame):
            obj.sink_parquet(buffer)  # streamed: a large curated dataset is never held whole
        else:
            obj.write_parquet(buffer)
        request.files[f"{asset}.parquet"] = buffer.getvalue()
        if kind in TABLE_NAMES:
            request.tables[TABLE_NAMES[kind]] = obj.lazy().collect()
    elif isinstance(obj, dict):
        request.files[f"{asset}.json"] = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
        if obj.get("adapter_dir") and Path(obj["adapter_dir"]).is_dir():
            request.dirs["adapter"] = str(obj["adapter_dir"])
    return request


class TrackedIOManager(dg.ConfigurableIOManagerFactory):
    """Stores values with `storage`, then logs tracked assets to W&B (see module doc)."""

    storage: dg.ResourceDependency[dg.IOManager]
    tracker: dg.ResourceDependency[Tracker]

    def create_io_manager(self, context) -> dg.IOManager:
        return _TrackedIOManager(self.storage, self.tracker)


def tracked(storage, tracker: Tracker):
    """`storage` as it is when tracking is off; wrapped to log to W&B when it is on."""
    return TrackedIOManager(storage=storage, tracker=tracker) if tracker.enabled else storage


# --- configuration --------------------------------------------------------------------


def _keyless_offline_handle() -> dict:
    """Offline runs need no key and must not log in: dagster-wandb's `wandb_resource` calls
    `wandb.login`, which (unless W&B's process-wide settings are offline already) checks the
    key with the server and saves it to ~/.netrc, or prompts for one when it is empty. The
    tracker gets the same shape of handle, unauthenticated."""
    import wandb
    from dagster_wandb.resources import WANDB_CLOUD_HOST

    return {"sdk": wandb, "api": None, "host": os.environ.get("WANDB_BASE_URL", WANDB_CLOUD_HOST)}


def _online_handle(host: str | None) -> dict:
    """dagster-wandb's `wandb_resource`, logged in with WANDB_API_KEY as the run's process
    has it (secrets reach run workers, not necessarily the code server). Without a key,
    `wandb.login` would prompt for one, so this fails first, naming the variable."""
    from dagster_wandb import wandb_resource
    from dagster_wandb.resources import WANDB_CLOUD_HOST

    key = os.environ.get("WANDB_API_KEY")
    if not key:
        raise RuntimeError(
            "W&B tracking is online but WANDB_API_KEY is not set: set it, or set WANDB_MODE=offline "
            "to keep runs on disk for `wandb sync`, or WANDB_MODE=disabled to turn tracking off"
        )
    config = {"api_key": key, "host": host or WANDB_CLOUD_HOST}
    return wandb_resource.resource_fn(dg.build_init_resource_context(config=config))


def build_tracker(
    home: Path, env: Mapping[str, str] | None = None, *, project: str | None = None, registry: str | None = None
) -> Tracker:
    """The tracker W&B's variables in `env` (default: os.environ) ask for.

    WANDB_MODE=disabled, or neither WANDB_MODE nor WANDB_API_KEY: off (`NoOpTracker`).
    WANDB_MODE=offline (or dryrun): offline runs under `$FLYWHEEL_HOME/wandb`, never logged
    in, whatever key is set.
    WANDB_API_KEY or WANDB_MODE=online: online, logged in by dagster-wandb's `wandb_resource`
    with the key in the run's environment (never in config or metadata); a run without one
    fails naming WANDB_API_KEY instead of W&B prompting for a key.
    Also read: WANDB_ENTITY; WANDB_BASE_URL (W&B Server); WANDB_PROJECT, the project unless
    `project` (FLYWHEEL_WANDB_PROJECT) names one (the Weave trace source may use WANDB_PROJECT
    too), else `flywheel`. `registry` (FLYWHEEL_WANDB_REGISTRY, e.g. wandb-registry-model):
    promotions are also linked there, online.
    """
    env = os.environ if env is None else env
    mode = env.get("WANDB_MODE", "").strip().lower()
    has_key = bool(env.get("WANDB_API_KEY"))
    if mode == "disabled" or (not mode and not has_key):
        return NoOpTracker()
    offline = mode in ("offline", "dryrun")
    wandb_dir = Path(home) / "wandb"
    if offline:
        handle = dg.ResourceDefinition(lambda _: _keyless_offline_handle(), description="W&B, offline")
    else:
        host = env.get("WANDB_BASE_URL")
        handle = dg.ResourceDefinition(lambda _: _online_handle(host), description="W&B, logged in")
    return WandbTracker(
        project=project or env.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT,
        entity=env.get("WANDB_ENTITY") or None,
        mode="offline" if offline else "online",
        run_dir=str(wandb_dir),
        registry=registry,
        wandb=handle,
    )


# --- reading offline runs back ---------------------------------------------------------


def read_offline_runs(run_dir: str | Path) -> list[dict]:
    """Every offline run under `run_dir` as {id, job_type, name, group, config, artifacts,
    summary}, read from its transaction log (`run-<id>.wandb`, what `wandb sync` uploads)."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    runs = []
    for path in sorted(Path(run_dir).glob("**/offline-run-*/run-*.wandb")):
        store = datastore.DataStore()
        store.open_for_scan(str(path))
        run: dict[str, Any] = {"artifacts": [], "summary": {}, "path": str(path.parent)}
        while (data := store.scan_data()) is not None:
            record = pb.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                r = record.run
                run |= {
                    "id": r.run_id,
                    "job_type": r.job_type,
                    "name": r.display_name,
                    "group": r.run_group,
                    "config": {u.key: json.loads(u.value_json) for u in r.config.update if u.key != "_wandb"},
                }
            elif kind == "artifact":
                a = record.artifact
                run["artifacts"].append(
                    {
                        "name": a.name,
                        "type": a.type,
                        "digest": a.digest,
                        "aliases": list(a.aliases),
                        "metadata": json.loads(a.metadata) if a.metadata else {},
                        "files": [c.path for c in a.manifest.contents],
                    }
                )
            elif kind == "summary":
                for u in record.summary.update:
                    *parents, leaf = list(u.nested_key) or [u.key]
                    target = run["summary"]
                    for parent in parents:
                        target = target.setdefault(parent, {})
                    target[leaf] = json.loads(u.value_json)
        runs.append(run)
    return runs
