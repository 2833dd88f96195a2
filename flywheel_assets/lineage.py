"""Lineage read from the Dagster instance: the latest materialization of each stage of a
workload, and its promotion history. Used by the `promote` and `rollback` jobs (what a
promotion rests on), the monitoring assets (which promotion approved a served model) and
`flywheel-audit`."""

import dagster as dg

from flywheel_assets.core.audit import CHAIN, EVAL_ASSETS, AuditRecord, Materialization
from partitions.slices import candidate_workload_key, trace_partition_key
from resources.tracking import WANDB_METADATA_KEY

# where promoted_model's materializations keep their audit record
AUDIT_METADATA_KEY = "audit_record"


def _summary(metadata) -> dict:
    summary = {}
    for k, entry in metadata.items():
        value = entry.value if isinstance(entry, dg.MetadataValue) else entry
        if isinstance(entry, (dg.MarkdownMetadataValue, dg.TableMetadataValue, dg.JsonMetadataValue)):
            continue
        if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 300):
            summary[k] = value
    return summary


def latest_materialization(instance: dg.DagsterInstance, asset: str, partition: str | None) -> Materialization | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    if not records:
        return None
    record = records[0]
    materialization = record.asset_materialization
    wandb = materialization.metadata.get(WANDB_METADATA_KEY)
    return Materialization(
        asset=asset,
        partition=partition,
        run_id=record.run_id,
        storage_id=record.storage_id,
        timestamp=record.timestamp,
        data_version=(materialization.tags or {}).get("dagster/data_version"),
        summary=_summary(materialization.metadata),
        wandb_artifact=wandb.value if wandb else None,
    )


def latest_materializations(
    instance: dg.DagsterInstance, workload: str, candidates: list[str]
) -> list[Materialization]:
    """The latest materialization of every stage of `workload` (and of each of
    `candidates`), upstream first; raw traces for the days its dataset read."""
    found: list[Materialization] = []
    dataset = latest_materialization(instance, "workload_dataset", workload)
    days = _dataset_days(instance, workload) if dataset else []
    for day in days:
        found.append(latest_materialization(instance, "raw_traces", str(trace_partition_key(day, workload))))
    for asset in CHAIN[1:]:
        if asset in ("lora_adapter", *EVAL_ASSETS):
            for candidate in candidates:
                found.append(latest_materialization(instance, asset, str(candidate_workload_key(candidate, workload))))
        else:
            found.append(latest_materialization(instance, asset, workload))
    return [m for m in found if m is not None]


def _dataset_days(instance: dg.DagsterInstance, workload: str) -> list[str]:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("workload_dataset"), asset_partitions=[workload]), limit=1
    ).records
    days = records[0].asset_materialization.metadata.get("days") if records else None
    return list(days.value) if days is not None else []


def promotion_history(instance: dg.DagsterInstance, workload: str, limit: int = 100) -> list[AuditRecord]:
    """The audit records of `workload`'s promotions and rollbacks, newest first."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("promoted_model"), asset_partitions=[workload]),
        limit=limit,
        ascending=False,
    ).records
    history = []
    for record in records:
        entry = record.asset_materialization.metadata.get(AUDIT_METADATA_KEY)
        if entry is not None:
            history.append(AuditRecord.model_validate(entry.value))
    return history
