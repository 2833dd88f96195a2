"""Stage `evaluate`: replay the eval split's prompts against each candidate, three ways.

`base_eval` asks the candidate as it is, `icl_eval` with 1-3 examples from the train split
in the prompt (within the token budget; chosen by `core/icl.py`), `customized_eval` with
its LoRA adapter. Each returns one row per eval record (scores, reason when it failed,
latency, tokens), so a person can see which records failed and why.

An evaluation's data version is its result (`core/versions.py`): a hash of its rows and of
what produced them (experiment, ICL strategy and examples, judge, adapter), so base and
ICL results never share a version and a re-evaluation that changed a score refreshes the
leaderboard, while one that did not triggers nothing.
"""

from collections.abc import Sequence

import dagster as dg
import polars as pl
from pydantic import Field

from flywheel_assets.core.chat import ChatBackend, ChatExample, ChatPrompt
from flywheel_assets.core.icl import IclOptions, IclPlan, SelectionStrategy, plan_icl_prompts
from flywheel_assets.core.metrics import score_records
from flywheel_assets.core.versions import evaluation_version
from flywheel_assets.gpu import GPU_OP_TAGS, GPU_POOL
from flywheel_assets.metadata import table
from flywheel_assets.settings import load_settings
from flywheel_assets.train import candidate_of, split_examples
from partitions.slices import BY_WORKLOAD, candidate_workload_partitions
from resources.embeddings import EmbeddingsResource
from resources.platform import Adapter, ModelPlatform
from sensors.automation import retrain_when_dataset_changed

BY_WORKLOAD_IN = dg.AssetIn(partition_mapping=BY_WORKLOAD)


class IclConfig(dg.Config, IclOptions):
    strategy: SelectionStrategy = Field(
        default=load_settings().icl_strategy, description="uniform, lexical or embedding (FLYWHEEL_ICL_STRATEGY)"
    )


def _score(
    context: dg.AssetExecutionContext,
    experiment: str,
    backend: ChatBackend,
    examples: Sequence[ChatExample],
    prompts: Sequence[ChatPrompt],
    platform: ModelPlatform,
    extra_metadata: dict | None = None,
    produced_by: dict | None = None,
) -> dg.Output[pl.DataFrame]:
    context.log.info(f"{experiment}: replaying {len(prompts)} eval prompts")
    completions = backend.complete(list(prompts))
    workload_type = examples[0].workload_type if examples else "chat"
    result = score_records(workload_type, examples, completions, judge=platform.judge())
    rows = result.to_polars()
    failing = rows.filter(pl.col("reason").is_not_null() | pl.col("error").is_not_null())
    version = evaluation_version(rows, {"experiment": experiment, "judge": result.judge, **(produced_by or {})})
    return dg.Output(
        rows,
        data_version=dg.DataVersion(version),
        metadata={
            "experiment": experiment,
            **result.scores,
            "similarity_method": result.similarity_method or "",
            "latency_p50_s": result.latency_s.get("p50"),
            "latency_p95_s": result.latency_s.get("p95"),
            "latency_p99_s": result.latency_s.get("p99"),
            "tokens_per_s": result.tokens_per_second,
            "errors": result.error_count,
            "dagster/row_count": rows.height,
            "failing_records": table(failing.select("record_id", "reason", "error")),
            **({"tool_confusion": table(result.tool_confusion_frame(), max_rows=50)} if result.tool_confusion else {}),
            **(extra_metadata or {}),
        },
    )


@dg.asset(
    partitions_def=candidate_workload_partitions,
    ins={"eval_dataset": BY_WORKLOAD_IN, "train_dataset": BY_WORKLOAD_IN},
    pool=GPU_POOL,
    op_tags=GPU_OP_TAGS,
    group_name="evaluate",
    kinds={"pytorch", "polars"},
    code_version="1",
    automation_condition=retrain_when_dataset_changed,
    description="The candidate as it is, on the eval prompts.",
)
def base_eval(context, eval_dataset: pl.LazyFrame, train_dataset: pl.LazyFrame, platform: ModelPlatform):
    candidate = candidate_of(context)
    examples = to_eval_examples(eval_dataset)
    with platform.serving(candidate, split_examples(train_dataset, "train")) as backend:
        return _score(context, "base", backend, examples, examples, platform)


@dg.asset(
    partitions_def=candidate_workload_partitions,
    ins={"eval_dataset": BY_WORKLOAD_IN, "train_dataset": BY_WORKLOAD_IN},
    pool=GPU_POOL,
    op_tags=GPU_OP_TAGS,
    group_name="evaluate",
    kinds={"pytorch", "polars"},
    code_version="1",
    automation_condition=retrain_when_dataset_changed,
    description="The candidate with 1-3 train examples in its prompt (in-context learning).",
)
def icl_eval(
    context,
    config: IclConfig,
    eval_dataset: pl.LazyFrame,
    train_dataset: pl.LazyFrame,
    platform: ModelPlatform,
    embeddings: EmbeddingsResource,
):
    candidate = candidate_of(context)
    examples = to_eval_examples(eval_dataset)
    pool = split_examples(train_dataset, "train")
    with platform.serving(candidate, pool) as backend:
        plan = _plan_icl(context, config, examples, pool, backend, candidate.max_new_tokens, embeddings)
        metadata = {**plan.summary(), "icl_choices": icl_choices_table(plan)}
        return _score(context, "icl", backend, examples, plan.prompts, platform, metadata, {"icl": plan.provenance()})


def _plan_icl(context, config: IclConfig, examples, pool, backend: ChatBackend, max_new_tokens: int, embeddings):
    """Each eval prompt with its in-context examples, within the candidate's token budget."""
    count_tokens, model_limit = token_counter(backend)
    embedder = embeddings.client() if config.strategy == "embedding" else None
    plan = plan_icl_prompts(
        examples,
        pool,
        config,
        count_tokens=count_tokens,
        model_limit=model_limit,
        max_new_tokens=max_new_tokens,
        embed=embedder.embed if embedder else None,
    )
    if embedder:
        context.log.info(
            f"embeddings: {embedder.requests_made} requests to {embedder.embeddings_url} (the rest cached)"
        )
    return plan


@dg.asset(
    partitions_def=candidate_workload_partitions,
    ins={"eval_dataset": BY_WORKLOAD_IN},
    pool=GPU_POOL,
    op_tags=GPU_OP_TAGS,
    group_name="evaluate",
    kinds={"pytorch", "polars"},
    code_version="1",
    automation_condition=retrain_when_dataset_changed,
    description="The candidate with its LoRA adapter, on the eval prompts.",
)
def customized_eval(context, eval_dataset: pl.LazyFrame, lora_adapter: dict, platform: ModelPlatform):
    candidate = candidate_of(context)
    adapter = Adapter.model_validate(lora_adapter)
    if not adapter.trained:
        context.log.info(f"{candidate.name}: no adapter ({adapter.reason}); nothing to evaluate")
        skipped = {"experiment": "customized", "skipped": adapter.reason or ""}
        return dg.Output(
            pl.DataFrame(), metadata=skipped, data_version=dg.DataVersion(evaluation_version(pl.DataFrame(), skipped))
        )
    examples = to_eval_examples(eval_dataset)
    trained = adapter.adapter_dir or adapter.output_model or ""
    with platform.serving(candidate, [], adapter) as backend:
        return _score(
            context, "customized", backend, examples, examples, platform, {"adapter": trained}, {"adapter": trained}
        )


def to_eval_examples(eval_dataset: pl.LazyFrame) -> list[ChatExample]:
    return split_examples(eval_dataset, "eval")


def icl_choices_table(plan: IclPlan) -> dg.MetadataValue:
    """Per eval record: the chosen example ids and their similarity to the prompt."""
    return table(
        pl.DataFrame(
            {
                "record_id": [c.record_id for c in plan.choices],
                "examples": [", ".join(c.example_ids) for c in plan.choices],
                "similarity": [", ".join("" if v is None else f"{v:.3f}" for v in c.scores) for c in plan.choices],
            },
            schema={"record_id": pl.String, "examples": pl.String, "similarity": pl.String},
        ),
        max_rows=50,
    )


def token_counter(backend: ChatBackend):
    """The backend's own token counter and context limit; endpoints get a chars/4 estimate."""
    if hasattr(backend, "count_tokens"):
        limit = getattr(backend.model.config, "max_position_embeddings", None) or 32768
        return backend.count_tokens, limit
    return (lambda prompt: len(prompt.model_dump_json()) // 4), 10**9
