"""Stage `split`: a workload dataset -> `eval_dataset` and `train_dataset` (train + validation).

Both assets run the same seeded split (cheap and deterministic) and keep their part, so
each is its own asset in the UI with its own data version: retraining follows the train
split's content, evaluation follows the eval split's. Both carry the blocking `no_leakage`
check over the whole split, so neither training nor evaluation runs on a leaking split.
"""

import dagster as dg
import polars as pl
from pydantic import Field, ValidationError

from flywheel_assets.core.near_duplicates import DEFAULT_THRESHOLD
from flywheel_assets.core.splitting import (
    CLUSTER_COLUMN,
    SplitConfig,
    content_hash,
    leaks,
    split_dataset,
    to_examples,
    to_jsonl,
    tool_counts,
)
from flywheel_assets.metadata import table
from partitions.slices import workload_partitions
from resources.datasets import DatasetStore
from sensors.automation import split_with_dataset


class SplitAssetConfig(dg.Config):
    eval_size: int = Field(default=20, ge=1, description="Records held out for evaluation.")
    validation_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    max_records: int | None = Field(default=1000, description="Sample at most this many records.")
    seed: int = Field(default=42, description="Same dataset + same seed = identical splits.")
    leakage_threshold: float = Field(
        default=DEFAULT_THRESHOLD,
        gt=0.0,
        le=1.0,
        description="The no_leakage check fails when an eval prompt and a train prompt overlap "
        "at least this much (Jaccard of word bigrams).",
    )


def _split_part(
    context: dg.AssetExecutionContext,
    config: SplitAssetConfig,
    workload_dataset: pl.LazyFrame,
    dataset_store: DatasetStore,
    parts: tuple[str, ...],
):
    columns = ["record_id", "workload_id", "workload_type", "raw"]
    if CLUSTER_COLUMN in workload_dataset.collect_schema():  # datasets curated before clusters
        columns.append(CLUSTER_COLUMN)
    records = workload_dataset.select(columns).collect()
    rows = split_dataset(records, SplitConfig(**config.model_dump(exclude={"leakage_threshold"})))
    files = {}
    for part in parts:
        part_rows = rows.filter(pl.col("split") == part)
        files[part] = dataset_store.write_file(f"splits/{context.partition_key}/{part}.jsonl", to_jsonl(part_rows))
    mine = rows.filter(pl.col("split").is_in(parts))
    sizes = {part: mine.filter(pl.col("split") == part).height for part in parts}
    context.log.info(f"{context.partition_key}: {sizes} (seed {config.seed})")
    yield dg.Output(
        mine,
        data_version=dg.DataVersion(content_hash(mine)),
        metadata={
            "dagster/row_count": mine.height,
            **{f"{part}_records": n for part, n in sizes.items()},
            "seed": config.seed,
            "content_hash": content_hash(mine),
            "files": dg.MetadataValue.json(files),
            **(
                {"records_per_tool": table(tool_counts(rows), max_rows=50)}
                if records.get_column("workload_type").first() == "tool_calling"
                else {}
            ),
            "preview": table(mine.select("record_id", "split", "messages", "expected")),
        },
    )
    yield _chat_format_check(context.assets_def.key, mine)
    yield _no_leakage_check(context.assets_def.key, rows, config.leakage_threshold)


def _no_leakage_check(asset_key: dg.AssetKey, rows: pl.DataFrame, threshold: float) -> dg.AssetCheckResult:
    found = leaks(rows, threshold)
    pairs = pl.DataFrame(
        [(p.eval_id, p.other_id, p.kind, p.similarity) for p in found],
        schema={"eval_record": pl.String, "train_record": pl.String, "kind": pl.String, "similarity": pl.Float64},
        orient="row",
    )
    eval_ids = sorted({p.eval_id for p in found})
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name="no_leakage",
        passed=not found,
        description=(
            f"no eval prompt has an exact or near duplicate (Jaccard >= {threshold}) in the train "
            "split, which is also the ICL pool"
            if not found
            else f"{len(eval_ids)} eval records have {len(found)} exact or near duplicates in the "
            "train split (the ICL pool): re-materialize workload_dataset with a "
            f"near_duplicate_threshold at or below {threshold} so the split keeps each cluster on "
            "one side, or raise leakage_threshold"
        ),
        metadata={
            "threshold": threshold,
            "leaking_eval_records": dg.MetadataValue.json(eval_ids),
            "pairs": table(pairs, max_rows=50),
        },
    )


def _chat_format_check(asset_key: dg.AssetKey, rows: pl.DataFrame) -> dg.AssetCheckResult:
    problem = "no records"
    try:
        examples = to_examples(rows)
    except (ValidationError, ValueError) as err:
        examples, problem = [], str(err)[:500]
    passed = len(examples) > 0
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name="valid_chat_examples",
        passed=passed,
        description=(
            f"{len(examples)} records parse as chat examples"
            if passed
            else f"split is empty or malformed ({problem}): check the upstream workload_dataset"
        ),
    )


def _split_checks(asset: str) -> list[dg.AssetCheckSpec]:
    """The blocking checks both splits carry (each over the whole split)."""
    return [
        dg.AssetCheckSpec("valid_chat_examples", asset=asset, blocking=True),
        dg.AssetCheckSpec(
            "no_leakage",
            asset=asset,
            blocking=True,
            description="No eval prompt has an exact or near duplicate in the train split (the ICL pool).",
        ),
    ]


# both splits come from one split: stratified by first tool, near-duplicate clusters kept on one side
SPLIT_CODE_VERSION = "3"


@dg.asset(
    partitions_def=workload_partitions,
    check_specs=_split_checks("eval_dataset"),
    group_name="split",
    kinds={"polars", "parquet"},
    code_version=SPLIT_CODE_VERSION,
    automation_condition=split_with_dataset,
    description="Held-out eval split in chat format (prompt + expected answer).",
)
def eval_dataset(context, config: SplitAssetConfig, workload_dataset: pl.LazyFrame, dataset_store: DatasetStore):
    yield from _split_part(context, config, workload_dataset, dataset_store, ("eval",))


@dg.asset(
    partitions_def=workload_partitions,
    check_specs=_split_checks("train_dataset"),
    group_name="split",
    kinds={"polars", "parquet"},
    code_version=SPLIT_CODE_VERSION,
    automation_condition=split_with_dataset,
    description="Train and validation splits; the train split is also the ICL example pool.",
)
def train_dataset(context, config: SplitAssetConfig, workload_dataset: pl.LazyFrame, dataset_store: DatasetStore):
    yield from _split_part(context, config, workload_dataset, dataset_store, ("train", "validation"))
