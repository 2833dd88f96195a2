"""Stage `train`: a workload's train split -> a LoRA `lora_adapter` per candidate."""

import dagster as dg
import polars as pl
from pydantic import Field

from flywheel_assets.core.candidates import load_models
from flywheel_assets.core.hyperparameters import LoraHyperparameters
from flywheel_assets.core.splitting import to_examples
from flywheel_assets.gpu import GPU_OP_TAGS, GPU_POOL
from partitions.slices import BY_WORKLOAD, candidate_workload_partitions
from resources.platform import ModelPlatform, Trained
from sensors.automation import retrain_when_dataset_changed


class LoraConfig(dg.Config):
    """Overrides of the candidate's hyper-parameters (reference defaults underneath)."""

    epochs: int | None = Field(default=None, description="reference default 2")
    batch_size: int | None = Field(default=None, description="reference default 16")
    learning_rate: float | None = Field(default=None, description="reference default 1e-4")
    adapter_dim: int | None = Field(default=None, description="LoRA rank, reference default 32")
    adapter_dropout: float | None = Field(default=None, description="reference default 0.1")
    seed: int | None = None

    def overrides(self) -> dict:
        return {name: value for name, value in self.model_dump().items() if value is not None}


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
    platform: ModelPlatform,
) -> dg.Output[dict]:
    candidate = candidate_of(context)
    hp = LoraHyperparameters(**{**candidate.hyperparameters, **config.overrides()})
    train, validation = (split_examples(train_dataset, split) for split in ("train", "validation"))
    workload = context.partition_key.keys_by_dimension["workload"]
    trained = platform.train(candidate, train, validation, hp, workload_key=workload, log=context.log.info)
    if not trained.adapter.trained:
        context.log.info(f"{candidate.name}: not fine-tuned ({trained.adapter.reason})")
    return dg.Output(
        trained.adapter.model_dump(),
        data_version=dg.DataVersion(trained.adapter.fingerprint or "untrained"),
        metadata=_training_metadata(hp, trained),
    )


def _training_metadata(hp: LoraHyperparameters, trained: Trained) -> dict:
    details = dict(trained.metadata)
    curve = details.pop("loss_curve", [])
    return {
        "trained": trained.adapter.trained,
        "hyperparameters": dg.MetadataValue.json(hp.model_dump()),
        "loss_curve": dg.MetadataValue.md(_curve_md(curve)),
        "final_loss": curve[-1][2] if curve else None,
        **{k: _metadata_value(v) for k, v in details.items()},
    }


def _metadata_value(value):
    if isinstance(value, (list, dict)):
        return dg.MetadataValue.json(value)
    if isinstance(value, str) and value.startswith("/"):
        return dg.MetadataValue.path(value)
    return value


def _curve_md(curve) -> str:
    lines = ["| step | epoch | loss |", "|---|---|---|"]
    lines += [f"| {step} | {'' if epoch is None else f'{epoch:.2f}'} | {loss:.4f} |" for step, epoch, loss in curve]
    return "\n".join(lines)
