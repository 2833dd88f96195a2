"""Stage `promote`: a person puts a leaderboard candidate in production, or rolls back.

`promoted_model` [workload] is materialized only by two jobs (`jobs.py`) a person launches
from the Launchpad: `promote` (config: workload, candidate, experiment, approver, reason, and
`force` to override a refusal) and `rollback` (config: workload, approver, reason). It has
no automation condition, no sensor or schedule selects it, and the asset itself refuses
any other job and any run started by a sensor, schedule, backfill or automation.

Each materialization is an audit record (`core/audit.py`): who, when, why, the candidate's
leaderboard row, and the run id and data version of every upstream materialization it
rests on (read from the instance), with W&B artifact versions when tracking is on. It is
the asset's value, its metadata (with links to the upstream runs), and a JSON file in the
dataset store (`audits/<workload>/<record>.json` and `audits/<workload>/production.json`
for deployers); with W&B on, a `promoted_model.<workload>` model artifact gets the
`production` alias.
"""

import datetime as dt
import json
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from flywheel_assets.core.audit import (
    EVAL_ASSETS,
    AuditRecord,
    Materialization,
    Refused,
    Target,
    board_row,
    promotion_refusals,
    record_id,
    rollback_target,
)
from flywheel_assets.core.candidates import load_models
from flywheel_assets.core.leaderboard import ThresholdRule
from flywheel_assets.jobs import PROMOTE_JOB, ROLLBACK_JOB
from flywheel_assets.lineage import AUDIT_METADATA_KEY, latest_materializations, promotion_history
from partitions.keys import workload_key
from partitions.slices import workload_partitions
from resources.datasets import DatasetStore
from resources.tracking import ArtifactRequest, Tracker, artifact_name, wandb_metadata

# run tags of runs no person launched by hand
AUTOMATION_TAGS = (
    "dagster/sensor_name",
    "dagster/schedule_name",
    "dagster/backfill",
    "dagster/auto_materialize",
    "dagster/from_automation_condition",
    "dagster/asset_evaluation_id",
)


class PromotionConfig(dg.Config):
    """The `promote` job uses every field; `rollback` only workload, approver and reason."""

    workload: str = Field(description="Workload id (or its partition key): must be the partition you launch.")
    approver: str = Field(description="Who approves this change (name or e-mail).")
    reason: str = Field(description="Why: recorded in the audit trail.")
    candidate: str | None = Field(default=None, description="promote: a candidate on the leaderboard.")
    experiment: Literal["base", "icl", "customized"] = Field(
        default="customized", description="promote: as evaluated: base, icl (in-context examples), customized (LoRA)."
    )
    min_score: float = Field(default=0.9, ge=0, le=1, description="promote: refuse below this score.")
    threshold_rule: ThresholdRule = Field(
        default="lower_bound",
        description="promote: lower_bound: the whole 95% interval of the score must reach min_score; point: the score",
    )
    force: bool = Field(default=False, description="promote: override refusals (recorded with the reason).")


@dg.asset(
    partitions_def=workload_partitions,
    ins={"leaderboard": dg.AssetIn()},
    io_manager_key="json_io_manager",
    group_name="promote",
    kinds={"json"},
    code_version="1",
    automation_condition=None,
    description=(
        "The model in production for the workload, with its audit record. Only the `promote` "
        "and `rollback` jobs, launched by a person, materialize it."
    ),
)
def promoted_model(
    context: dg.AssetExecutionContext,
    config: PromotionConfig,
    leaderboard: pl.LazyFrame,
    dataset_store: DatasetStore,
    tracker: Tracker,
) -> dg.Output[dict]:
    try:
        return change_production(context, config, leaderboard.collect(), dataset_store, tracker)
    except Refused as refused:
        raise dg.Failure(description=str(refused), allow_retries=False) from None


def change_production(
    context: dg.AssetExecutionContext,
    config: PromotionConfig,
    board: pl.DataFrame,
    dataset_store: DatasetStore,
    tracker: Tracker,
) -> dg.Output[dict]:
    key = context.partition_key
    _check_launched_by_a_person(context, config, key)
    now = dt.datetime.now(dt.UTC)
    history = promotion_history(context.instance, key)
    current = history[0] if history else None
    if context.job_name == ROLLBACK_JOB:
        record = _rollback(context, config, key, now, current, history)
    else:
        record = _promote(context, config, key, now, current, board)
    context.log.info(
        f"{record.action} {key}: {record.target.candidate} ({record.target.experiment}), record {record.id}"
    )
    ref = tracker.log(_wandb_request(context, record))
    record.wandb_artifact = ref
    payload = json.dumps(record.model_dump(mode="json"), indent=2).encode()
    audit_file = dataset_store.write_file(f"audits/{key}/{record.id}.json", payload)
    dataset_store.write_file(f"audits/{key}/production.json", payload)
    return dg.Output(
        record.model_dump(mode="json"),
        data_version=dg.DataVersion(record.id),
        metadata=_metadata(record, audit_file) | (wandb_metadata(ref) if ref else {}),
    )


def _check_launched_by_a_person(context: dg.AssetExecutionContext, config: PromotionConfig, key: str) -> None:
    if context.job_name not in (PROMOTE_JOB, ROLLBACK_JOB):
        raise Refused(
            f"promoted_model is materialized only by the `{PROMOTE_JOB}` and `{ROLLBACK_JOB}` jobs "
            f"(this run: {context.job_name}): launch one of them from the Launchpad"
        )
    automated = sorted(set(AUTOMATION_TAGS) & set(context.run.tags))
    if automated:
        raise Refused(f"promotions are never automated; this run was started by {automated}")
    if config.workload != key and workload_key(config.workload) != key:
        raise Refused(
            f"config workload {config.workload!r} is partition {workload_key(config.workload)!r}, "
            f"but this run is for partition {key!r}: launch the job for the workload's partition"
        )
    if not config.approver.strip() or not config.reason.strip():
        raise Refused("approver and reason are required: they are the audit trail")


def _promote(
    context, config: PromotionConfig, key: str, now: dt.datetime, current: AuditRecord | None, board: pl.DataFrame
) -> AuditRecord:
    if not config.candidate:
        raise Refused("promote needs a candidate: one of the leaderboard's `candidate` values")
    upstream = latest_materializations(context.instance, key, [config.candidate])
    leaderboard = next((m for m in upstream if m.asset == "leaderboard"), None)
    evaluations = [m for m in upstream if m.asset in EVAL_ASSETS]
    rows = board.to_dicts()
    refusals = promotion_refusals(
        rows,
        config.candidate,
        config.experiment,
        config.min_score,
        leaderboard=leaderboard,
        evaluations=evaluations,
        workload_key=key,
        rule=config.threshold_rule,
    )
    if refusals and not config.force:
        raise Refused("promotion refused: " + "; ".join(refusals))
    if refusals:
        context.log.warning(f"forced over refusals ({config.reason!r}): {refusals}")
    row = board_row(rows, config.candidate, config.experiment) or {}
    return AuditRecord(
        id=record_id(now, context.run_id),
        action="promote",
        workload_key=key,
        workload_id=_workload_id(upstream),
        target=Target(
            candidate=config.candidate,
            experiment=config.experiment,
            score=row.get("score"),
            leaderboard_row=row,
            spec=_candidate_spec(config.candidate),
            adapter_dir=_adapter_dir(upstream) if config.experiment == "customized" else None,
        ),
        approver=config.approver,
        reason=config.reason,
        at=now.isoformat(),
        dagster_run_id=context.run_id,
        min_score=config.min_score,
        threshold_rule=config.threshold_rule,
        forced=bool(refusals),
        overridden_refusals=refusals,
        replaces_id=current.id if current else None,
        previous_id=current.id if current else None,
        upstream=upstream,
    )


def _rollback(
    context,
    config: PromotionConfig,
    key: str,
    now: dt.datetime,
    current: AuditRecord | None,
    history: list[AuditRecord],
) -> AuditRecord:
    if config.candidate:
        raise Refused("rollback restores the promotion before the current one: leave `candidate` empty")
    restored = rollback_target(current, history)
    return AuditRecord(
        id=record_id(now, context.run_id),
        action="rollback",
        workload_key=key,
        workload_id=restored.workload_id,
        target=restored.target,
        approver=config.approver,
        reason=config.reason,
        at=now.isoformat(),
        dagster_run_id=context.run_id,
        replaces_id=current.id,
        restores_id=restored.id,
        previous_id=restored.previous_id,
        upstream=restored.upstream,
    )


def _candidate_spec(candidate: str) -> dict:
    spec = next((c for c in load_models().candidates if c.name == candidate), None)
    return spec.model_dump(mode="json") if spec else {}


def _adapter_dir(upstream: list[Materialization]) -> str | None:
    adapter = next((m for m in upstream if m.asset == "lora_adapter"), None)
    return adapter.summary.get("adapter_dir") if adapter else None


def _workload_id(upstream: list[Materialization]) -> str | None:
    return next((m.summary.get("workload_id") for m in upstream if m.asset == "raw_traces"), None)


def _wandb_request(context: dg.AssetExecutionContext, record: AuditRecord) -> ArtifactRequest:
    """A `model` artifact per workload whose `production` alias follows the promotions; it
    holds the audit record and, for a LoRA candidate, the adapter files."""
    target = record.target
    used = {"leaderboard", "lora_adapter", f"{target.experiment}_eval"}
    return ArtifactRequest(
        name=artifact_name("promoted_model", record.workload_key),
        type="model",
        asset="promoted_model",
        partition=record.workload_key,
        dagster_run_id=context.run_id,
        dagster_job=context.job_name,
        files={"audit_record.json": json.dumps(record.model_dump(mode="json"), indent=2).encode()},
        dirs={"adapter": target.adapter_dir} if target.adapter_dir else {},
        metrics={"score": target.score} if target.score is not None else {},
        config={
            "action": record.action,
            "candidate": target.candidate,
            "experiment": target.experiment,
            "approver": record.approver,
            "record_id": record.id,
            "forced": record.forced,
        },
        inputs=[m.wandb_artifact for m in record.upstream if m.wandb_artifact and m.asset in used],
        aliases=["production"],
        link_to_registry=True,
    )


def _metadata(record: AuditRecord, audit_file: str) -> dict:
    target = record.target
    metadata = {
        "action": record.action,
        "candidate": target.candidate,
        "experiment": target.experiment,
        "score": target.score,
        "approver": record.approver,
        "reason": record.reason,
        "forced": record.forced,
        "record_id": record.id,
        "replaces": record.replaces_id or "(nothing in production)",
        "audit_file": dg.MetadataValue.url(audit_file) if "://" in audit_file else audit_file,
        AUDIT_METADATA_KEY: dg.MetadataValue.json(record.model_dump(mode="json")),
        "lineage": dg.MetadataValue.md(_lineage_md(record.upstream)),
    }
    if record.restores_id:
        metadata["restores"] = record.restores_id
    if record.overridden_refusals:
        metadata["overridden_refusals"] = dg.MetadataValue.json(record.overridden_refusals)
    for m in record.upstream:
        if m.asset != "raw_traces":
            metadata[f"upstream/{m.label}"] = dg.MetadataValue.dagster_run(m.run_id)
    return {k: v for k, v in metadata.items() if v is not None}


def _lineage_md(upstream: list[Materialization]) -> str:
    lines = ["| asset | partition | run | data version | W&B |", "|---|---|---|---|---|"]
    for m in upstream:
        wandb = m.wandb_artifact or {}
        version = wandb.get("qualified_name") or (f"{wandb['name']}@{wandb['digest'][:12]}" if wandb else "")
        lines.append(
            f"| {m.asset} | {(m.partition or '').replace('|', chr(92) + '|')} | [{m.run_id[:8]}](/runs/{m.run_id}) "
            f"| {(m.data_version or '')[:16]} | {version} |"
        )
    return "\n".join(lines)
