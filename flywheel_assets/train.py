"""Stage `train`: a workload's train split -> a LoRA `lora_adapter` per candidate."""

import hashlib
import json
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from flywheel_assets.core.candidates import load_models
from flywheel_assets.core.splitting import to_examples
from flywheel_assets.gpu import GPU_OP_TAGS, GPU_POOL
from flywheel_assets.core.training import LoraHyperparameters, read_training_result, train_lora
from partitions.defs import BY_WORKLOAD, candidate_workload_partitions
from resources.inference import InferenceResource
from sensors.automation import retrain_when_dataset_changed

class LoraConfig(dg.Config):
    """Overrides of the candidate's hyper-parameters (reference defaults underneath)."""

    epochs: int | None = Field(default=None, description="reference default 2")
    batch_size: int | None = Field(default=None, description="reference default 16")
    learning_rate: float | None = Field(default=None, description="reference default 1e-4")
    adapter_dim: int | None = Field(default=None, description="LoRA rank, reference default 32")
    adapter_dropout: float | None = Field(default=None, description="reference default 0.1")
    seed: int | None = None


def candidate_of(context: dg.AssetExecutionContext):
    name = context.partition_key.keys_by_dimension["candidate"]
    return next(c for c in load_models().candidates if c.name == name)


def split_examples(train_dataset: pl.LazyFrame, split: str):
    return to_examples(train_dataset.filter(pl.col("split") == split).collect())


@dg.asset(
    partitions_def=candidate_workload_partitions,
    ins={"train_dataset": dg.AssetIn(partition_mapping=BY_WORKLOAD)},
    pool=GPU_POOL,
    op_tags=GPU_OP_TAGS,
    io_manager_key="json_io_manager",
    group_name="train",
    kinds={"pytorch"},
    code_version="1",
    automation_condition=retrain_when_dataset_changed,
    description="LoRA adapter fine-tuned on the workload's train split (loss on the assistant turn).",
)
def lora_adapter(
    context: dg.AssetExecutionContext,
    config: LoraConfig,
    train_dataset: pl.LazyFrame,
    inference: InferenceResource,
) -> dg.Output[dict]:
    candidate = candidate_of(context)
    if not candidate.trainable:
        context.log.info(f"{candidate.name} is served by an endpoint: no local fine-tuning")
        return dg.Output({"trained": False, "reason": "endpoint candidate"}, metadata={"trained": False})
    train, validation = split_examples(train_dataset, "train"), split_examples(train_dataset, "validation")
    overrides = {k: v for k, v in config.model_dump().items() if v is not None}
    hp = LoraHyperparameters(**{**candidate.hyperparameters, **overrides})
    base_dir = inference.base_model_dir(candidate, train)
    # content-addressed: a retried or re-executed step with the same inputs reuses the adapter
    fingerprint = hashlib.sha256(
        json.dumps([hp.model_dump(), str(base_dir), [e.record_id for e in train]]).encode()
    ).hexdigest()[:16]
    out_dir = Path(inference.adapters_dir) / context.partition_key.replace("|", "/") / fingerprint
    if (out_dir / "training_result.json").exists():
        context.log.info(f"adapter for these inputs already exists at {out_dir}; reusing it")
        result = read_training_result(out_dir)
    else:
        context.log.info(f"training {candidate.name} on {len(train)} examples ({len(validation)} validation), {hp}")
        result = train_lora(
            base_dir, train, validation, out_dir, hp,
            on_progress=lambda p: context.log.info(
                "step {step} epoch {epoch:.2f} loss {loss:.4f} {tokens_per_s:.0f} tokens/s".format(**p)
            ),
        )
    return dg.Output(
        {"trained": True, "adapter_dir": result.adapter_dir, "base_model_dir": result.base_model_dir},
        data_version=dg.DataVersion(fingerprint),
        metadata={
            "trained": True,
            "hyperparameters": dg.MetadataValue.json(result.hyperparameters.model_dump()),
            "loss_curve": dg.MetadataValue.md(_curve_md(result.loss_curve)),
            "final_loss": result.loss_curve[-1].loss if result.loss_curve else None,
            "eval_loss": dg.MetadataValue.json(result.eval_loss),
            "train_time_s": round(result.train_time_s, 2),
            "tokens_per_s": round(result.tokens_per_s, 1),
            "adapter_size_bytes": result.adapter_size_bytes,
            "adapter_dir": dg.MetadataValue.path(result.adapter_dir),
            "base_model_dir": dg.MetadataValue.path(result.base_model_dir),
            "device": result.device,
            "train_examples": result.train_examples,
        },
    )


def _curve_md(curve) -> str:
    lines = ["| step | epoch | loss |", "|---|---|---|"]
    lines += [f"| {p.step} | {p.epoch:.2f} | {p.loss:.4f} |" for p in curve]
    return "\n".join(lines)
