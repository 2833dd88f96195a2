"""LoRA supervised fine-tuning on curated chat examples, in a plain PyTorch loop.

Each example is rendered with the model's chat template: the prompt (messages + tools) is
context, the expected assistant turn is the target, and the loss covers the target tokens
only (labels are -100 on the prompt and on padding). The loop is a bare AdamW loop over
`peft` LoRA weights, not the Hugging Face `Trainer`, so its overhead over the minimal loop
stays small (`benchmarks/training_overhead.py` measures it).

Determinism: under one seed, on one device with one thread count, two runs on the same
inputs give the same loss curve and the same adapter tensors: the LoRA weights are
initialised after `torch.manual_seed(seed)`, batches are drawn by a generator seeded with
`seed + epoch`, dropout draws from the seeded global generator, and deterministic kernels
are asked for (`torch.use_deterministic_algorithms`, warn-only, restored afterwards).
The thread count is recorded in the result (`cpu_threads`); see `torch_threads` for how it
is chosen (the CPUs this process may use) and why OpenMP threads wait passively.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flywheel_assets.core import torch_threads  # noqa: F401  (first: it sets OpenMP's environment for torch)

# isort: split
import torch
from peft import LoraConfig, get_peft_model
from pydantic import BaseModel, Field
from transformers import AutoModelForCausalLM, AutoTokenizer

from flywheel_assets.core.atomic import atomic_directory
from flywheel_assets.core.chat import ChatExample
from flywheel_assets.core.chat_template import ensure_chat_template, render_example
from flywheel_assets.core.hyperparameters import LoraHyperparameters
from flywheel_assets.core.local_generation import peft_deprecation_quieted

IGNORE_INDEX = -100
RESULT_FILE = "training_result.json"


class LossPoint(BaseModel):
    step: int
    epoch: float
    loss: float


class TrainingResult(BaseModel):
    adapter_dir: str
    base_model_dir: str
    hyperparameters: LoraHyperparameters
    device: str
    cpu_threads: int | None = Field(
        None,
        description="torch's CPU threads in the run (with the seed, what makes it "
        "reproducible); None in results written before it was recorded",
    )
    loss_curve: list[LossPoint]
    eval_loss: list[float] = Field(
        description="mean validation loss per token after each epoch; empty without validation"
    )
    steps: int
    train_examples: int
    truncated_examples: int
    train_tokens: int = Field(description="non-padding tokens the optimisation loop processed")
    train_time_s: float = Field(description="time in the optimisation loop (no loading, evaluation or saving)")
    wall_time_s: float
    tokens_per_s: float
    trainable_params: int
    total_params: int
    adapter_size_bytes: int


class TrainingStopped(RuntimeError):
    """`should_stop` asked the run to stop; nothing was written."""


def encode_example(tokenizer: Any, example: ChatExample, max_seq_length: int) -> tuple[list[int], list[int], bool]:
    """(input ids, labels, truncated): labels are the input ids on the assistant target and
    -100 on the prompt. Too long an example loses the start of its prompt (the target and
    the latest turns stay); a target longer than the limit keeps its beginning."""
    prompt_text, target_text = render_example(tokenizer, example)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target_text, add_special_tokens=False)["input_ids"]
    truncated = len(prompt_ids) + len(target_ids) > max_seq_length
    if truncated:
        target_ids = target_ids[: max_seq_length - 1]
        prompt_ids = prompt_ids[len(prompt_ids) - (max_seq_length - len(target_ids)) :]
    return prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids, truncated


def encode_examples(
    tokenizer: Any, examples: Sequence[ChatExample], max_seq_length: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Encoded (input ids, labels) of every example, and how many were truncated."""
    encoded, truncated = [], 0
    for example in examples:
        input_ids, labels, cut = encode_example(tokenizer, example, max_seq_length)
        encoded.append((input_ids, labels))
        truncated += cut
    return encoded, truncated


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; padding has attention 0 and label -100."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(labs)] = torch.tensor(labs)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def epoch_batches(
    encoded: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int, seed: int, epoch: int
) -> list[dict[str, torch.Tensor]]:
    """The batches of one epoch, in an order fixed by (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(encoded), generator=generator).tolist()
    return [
        collate([encoded[i] for i in order[start : start + batch_size]], pad_id)
        for start in range(0, len(order), batch_size)
    ]


def pad_token_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def training_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_base_model(base_model_dir: str | os.PathLike, device: torch.device) -> torch.nn.Module:
    """The base model on `device`: bfloat16 on a GPU that supports it, float32 elsewhere."""
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=dtype)
    model.config.use_cache = False
    return model.to(device)


def lora_model(base: torch.nn.Module, hp: LoraHyperparameters) -> torch.nn.Module:
    """`base` with fresh LoRA adapters, initialised from `hp.seed`."""
    torch.manual_seed(hp.seed)
    config = LoraConfig(
        r=hp.adapter_dim,
        lora_alpha=hp.alpha,
        lora_dropout=hp.adapter_dropout,
        target_modules=hp.target_modules,
        task_type="CAUSAL_LM",
    )
    with peft_deprecation_quieted():
        return get_peft_model(base, config)


def learning_rate_schedule(
    optimizer: torch.optim.Optimizer, hp: LoraHyperparameters, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(hp.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if hp.lr_schedule == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@contextmanager
def _deterministic() -> Iterator[None]:
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluation_loss(
    model: torch.nn.Module,
    encoded: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    pad_id: int,
    device: torch.device,
) -> float:
    """Mean loss per target token over `encoded`."""
    model.eval()
    total, tokens = torch.zeros((), device=device), 0
    for start in range(0, len(encoded), batch_size):
        batch = _to(collate(encoded[start : start + batch_size], pad_id), device)
        # Each row's count of predicted tokens: labels shift by one inside the model.
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        if n:
            total += model(**batch).loss.float() * n
            tokens += n
    model.train()
    return float(total) / max(tokens, 1)


def train_lora(
    base_model_dir: str | os.PathLike,
    train: Sequence[ChatExample],
    validation: Sequence[ChatExample],
    out_dir: str | os.PathLike,
    hp: LoraHyperparameters | None = None,
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress_every: int = 10,
) -> TrainingResult:
    """Fine-tune a LoRA adapter on `train` and save it (with the tokenizer and
    `training_result.json`) to `out_dir`, atomically.

    `on_progress` gets {step, epoch, loss, tokens_per_s, elapsed_s} every `progress_every`
    optimiser steps and after the last one (loss: mean of the steps since the last call).
    `should_stop` is polled before every step; when it answers True the run raises
    `TrainingStopped` and leaves `out_dir` as it was. Uses the GPU when there is one."""
    hp = hp or LoraHyperparameters()
    if not train:
        raise ValueError("train_lora needs at least one training example")
    wall_start = time.perf_counter()
    device = training_device()
    tokenizer = ensure_chat_template(AutoTokenizer.from_pretrained(base_model_dir))
    pad_id = pad_token_id(tokenizer)
    encoded, truncated = encode_examples(tokenizer, train, hp.max_seq_length)
    encoded_validation, _ = encode_examples(tokenizer, validation, hp.max_seq_length)

    with _deterministic():
        model = lora_model(load_base_model(base_model_dir, device), hp)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        batches_per_epoch = -(-len(encoded) // hp.batch_size)
        scheduler = learning_rate_schedule(
            optimizer, hp, hp.epochs * -(-batches_per_epoch // hp.gradient_accumulation_steps)
        )
        model.train()

        accumulation = hp.gradient_accumulation_steps
        loss_curve: list[LossPoint] = []
        eval_losses: list[float] = []
        step, train_tokens, train_time = 0, 0, 0.0
        pending: list[tuple[int, float, torch.Tensor]] = []  # losses not yet read off the device
        reported = 0

        def flush() -> None:
            if pending:
                values = torch.stack([loss for _, _, loss in pending]).tolist()
                loss_curve.extend(LossPoint(step=s, epoch=round(e, 4), loss=v) for (s, e, _), v in zip(pending, values))
                pending.clear()

        def report() -> None:
            nonlocal reported
            flush()
            if on_progress is not None and step > reported:
                recent = loss_curve[reported:]
                on_progress(
                    {
                        "step": step,
                        "epoch": recent[-1].epoch,
                        "loss": sum(p.loss for p in recent) / len(recent),
                        "tokens_per_s": train_tokens / train_time if train_time else 0.0,
                        "elapsed_s": time.perf_counter() - wall_start,
                    }
                )
            reported = step

        for epoch in range(hp.epochs):
            batches = epoch_batches(encoded, hp.batch_size, pad_id, hp.seed, epoch)
            started = time.perf_counter()
            step_loss = torch.zeros((), device=device)
            for index, batch in enumerate(batches):
                if should_stop is not None and should_stop():
                    raise TrainingStopped(f"stopped at step {step} of epoch {epoch + 1}")
                train_tokens += int(batch["attention_mask"].sum())  # counted on the host: no device sync
                loss = model(**_to(batch, device)).loss
                (loss / accumulation).backward()
                step_loss += loss.detach().float() / accumulation
                last = index == len(batches) - 1
                if (index + 1) % accumulation == 0 or last:
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    pending.append((step, epoch + (index + 1) / len(batches), step_loss))
                    step_loss = torch.zeros((), device=device)
                    if step % progress_every == 0:
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        train_time += time.perf_counter() - started
                        report()
                        started = time.perf_counter()
            if device.type == "cuda":
                torch.cuda.synchronize()
            train_time += time.perf_counter() - started
            if encoded_validation:
                eval_losses.append(evaluation_loss(model, encoded_validation, hp.batch_size, pad_id, device))
        report()

        with atomic_directory(out_dir) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            adapter_size = sum(f.stat().st_size for f in tmp.glob("adapter_model.*"))
            result = TrainingResult(
                adapter_dir=str(Path(out_dir)),
                base_model_dir=str(base_model_dir),
                hyperparameters=hp,
                device=str(device),
                cpu_threads=torch.get_num_threads(),
                loss_curve=loss_curve,
                eval_loss=eval_losses,
                steps=step,
                train_examples=len(train),
                truncated_examples=truncated,
                train_tokens=train_tokens,
                train_time_s=train_time,
                wall_time_s=time.perf_counter() - wall_start,
                tokens_per_s=train_tokens / train_time if train_time else 0.0,
                trainable_params=sum(p.numel() for p in trainable),
                total_params=sum(p.numel() for p in model.parameters()),
                adapter_size_bytes=adapter_size,
            )
            (tmp / RESULT_FILE).write_text(result.model_dump_json(indent=2))
    return result


def read_training_result(adapter_dir: str | os.PathLike) -> TrainingResult:
    return TrainingResult.model_validate_json((Path(adapter_dir) / RESULT_FILE).read_text())
