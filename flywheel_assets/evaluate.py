"""Stage `evaluate`: replay the eval split's prompts against each candidate, three ways.

`base_eval` asks the candidate as it is, `icl_eval` with 1-3 examples from the train split
in the prompt (within the token budget), `customized_eval` with its LoRA adapter. Each
returns one row per eval record (scores, reason when it failed, latency, tokens), so a
person can see which records failed and why.
"""

from collections.abc import Sequence

import dagster as dg
import polars as pl
from pydantic import Field

from flywheel_assets.core.chat import ChatBackend, ChatExample, ChatPrompt
from flywheel_assets.core.icl import build_icl_prompt, select_icl_examples
from flywheel_assets.core.metrics import score_records
from flywheel_assets.metadata import table
from flywheel_assets.gpu import GPU_OP_TAGS, GPU_POOL
from flywheel_assets.train import candidate_of, split_examples
from partitions.defs import BY_WORKLOAD, candidate_workload_partitions
from resources.platform import Adapter, ModelPlatform
from sensors.automation import retrain_when_dataset_changed

EVAL_ASSET = dict(
    partitions_def=candidate_workload_partitions,
    pool=GPU_POOL,
    op_tags=GPU_OP_TAGS,
    group_name="evaluate",
    kinds={"pytorch", "polars"},
    code_version="1",
    automation_condition=retrain_when_dataset_changed,
)
BY_WORKLOAD_IN = dg.AssetIn(partition_mapping=BY_WORKLOAD)


class IclConfig(dg.Config):
    max_context_tokens: int = Field(default=32768, description="context of the candidate")
    reserved_tokens: int = Field(default=4096, description="kept free for the answer")
    min_examples: int = 1
    max_examples: int = 3
    seed: int = 0


def _score(
    context: dg.AssetExecutionContext,
    experiment: str,
    backend: ChatBackend,
    examples: Sequence[ChatExample],
    prompts: Sequence[ChatPrompt],
    platform: ModelPlatform,
    extra_metadata: dict | None = None,
) -> dg.Output[pl.DataFrame]:
    context.log.info(f"{experiment}: replaying {len(prompts)} eval prompts")
    completions = backend.complete(list(prompts))
    workload_type = examples[0].workload_type if examples else "chat"
    result = score_records(workload_type, examples, completions, judge=platform.judge())
    rows = result.to_polars()
    failing = rows.filter(pl.col("reason").is_not_null() | pl.col("error").is_not_null())
    return dg.Output(
        rows,
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
            **(extra_metadata or {}),
        },
    )


@dg.asset(ins={"eval_dataset": BY_WORKLOAD_IN, "train_dataset": BY_WORKLOAD_IN}, **EVAL_ASSET,
          description="The candidate as it is, on the eval prompts.")
def base_eval(context, eval_dataset: pl.LazyFrame, train_dataset: pl.LazyFrame, platform: ModelPlatform):
    candidate = candidate_of(context)
    examples = to_eval_examples(eval_dataset)
    with platform.serving(candidate, split_examples(train_dataset, "train")) as backend:
        return _score(context, "base", backend, examples, examples, platform)


@dg.asset(ins={"eval_dataset": BY_WORKLOAD_IN, "train_dataset": BY_WORKLOAD_IN}, **EVAL_ASSET,
          description="The candidate with 1-3 train examples in its prompt (in-context learning).")
def icl_eval(context, config: IclConfig, eval_dataset: pl.LazyFrame, train_dataset: pl.LazyFrame, platform: ModelPlatform):
    candidate = candidate_of(context)
    examples = to_eval_examples(eval_dataset)
    pool = split_examples(train_dataset, "train")
    with platform.serving(candidate, pool) as backend:
        count_tokens, model_limit = token_counter(backend)
        # never beyond what the model can read: its own context limit, less room for the answer
        budget_context = min(config.max_context_tokens, model_limit + config.reserved_tokens - candidate.max_new_tokens)
        prompts, shots = [], []
        for example in examples:
            chosen = select_icl_examples(
                example, pool, count_tokens=count_tokens, max_context_tokens=budget_context,
                reserved_tokens=config.reserved_tokens, min_examples=config.min_examples,
                max_examples=config.max_examples, seed=config.seed,
            )
            shots.append(len(chosen))
            prompts.append(build_icl_prompt(example, chosen))
        return _score(context, "icl", backend, examples, prompts, platform, {
            "examples_per_prompt_mean": sum(shots) / max(len(shots), 1),
            "prompts_without_examples": shots.count(0),
            "token_budget": budget_context - config.reserved_tokens,
        })


@dg.asset(ins={"eval_dataset": BY_WORKLOAD_IN}, **EVAL_ASSET,
          description="The candidate with its LoRA adapter, on the eval prompts.")
def customized_eval(context, eval_dataset: pl.LazyFrame, lora_adapter: dict, platform: ModelPlatform):
    candidate = candidate_of(context)
    adapter = Adapter.model_validate(lora_adapter)
    if not adapter.trained:
        context.log.info(f"{candidate.name}: no adapter ({adapter.reason}); nothing to evaluate")
        return dg.Output(pl.DataFrame(), metadata={"experiment": "customized", "skipped": adapter.reason or ""})
    examples = to_eval_examples(eval_dataset)
    with platform.serving(candidate, [], adapter) as backend:
        return _score(context, "customized", backend, examples, examples, platform,
                      {"adapter": adapter.adapter_dir or adapter.output_model or ""})


def to_eval_examples(eval_dataset: pl.LazyFrame) -> list[ChatExample]:
    return split_examples(eval_dataset, "eval")


def token_counter(backend: ChatBackend):
    """The backend's own token counter and context limit; endpoints get a chars/4 estimate."""
    if hasattr(backend, "count_tokens"):
        limit = getattr(backend.model.config, "max_position_embeddings", None) or 32768
        return backend.count_tokens, limit
    return (lambda prompt: len(prompt.model_dump_json()) // 4), 10**9
