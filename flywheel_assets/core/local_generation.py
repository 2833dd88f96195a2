"""Local inference with `transformers`: a `ChatBackend` over a model directory, optionally
with a LoRA adapter on top.

Prompts are rendered with the model's chat template, generated in batches (left padding,
greedy unless a temperature is given), and the output is parsed into an assistant message
with `chat_template.parse_assistant_output`.

Latency: a batch is generated in one call, so the time of a single prompt is not
observable. Each prompt's `latency_s` is the batch's wall time shared among its prompts in
proportion to the tokens each generated (equal shares when none did); the latencies of a
batch add up to its wall time. Larger `batch_size` raises throughput and the per-prompt
figure falls accordingly, so compare latencies at equal batch sizes.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flywheel_assets.core import torch_threads  # noqa: F401  (first: it sets OpenMP's environment for torch)

# isort: split
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from flywheel_assets.core.chat import ChatPrompt, Completion
from flywheel_assets.core.chat_template import ensure_chat_template, parse_assistant_output, render_prompt


class LocalChatModel:
    """A local Hugging Face causal LM (plus an optional `peft` adapter) answering chat prompts."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        adapter_dir: str | os.PathLike | None = None,
        *,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int = 0,
        device: str | None = None,
    ) -> None:
        self.model_dir = str(model_dir)
        self.adapter_dir = str(adapter_dir) if adapter_dir is not None else None
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

        # The adapter directory carries the tokenizer it was trained with, when it has one.
        tokenizer_dir = self.adapter_dir if self.adapter_dir and _has_tokenizer(self.adapter_dir) else self.model_dir
        self.tokenizer = ensure_chat_template(AutoTokenizer.from_pretrained(tokenizer_dir))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

        dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype)
        if self.adapter_dir is not None:
            from peft import PeftModel

            with peft_deprecation_quieted():
                model = PeftModel.from_pretrained(model, self.adapter_dir)
        self.model = model.to(self.device).eval()

    def count_tokens(self, prompt: ChatPrompt) -> int:
        """Tokens of `prompt` as this model reads it (chat template and tools included)."""
        return len(self._encode(prompt))

    def _encode(self, prompt: ChatPrompt) -> list[int]:
        return self.tokenizer(render_prompt(self.tokenizer, prompt), add_special_tokens=False)["input_ids"]

    def complete(self, prompts: Sequence[ChatPrompt]) -> list[Completion]:
        """One completion per prompt, in order; a prompt that cannot be rendered or a batch
        whose generation fails gets a completion with `error` instead of raising."""
        results: list[Completion | None] = [None] * len(prompts)
        encoded: list[tuple[int, list[int]]] = []
        for index, prompt in enumerate(prompts):
            try:
                encoded.append((index, self._encode(prompt)))
            except Exception as exc:  # a template rejecting one record must not stop the others
                results[index] = Completion(error=f"cannot render prompt: {type(exc).__name__}: {exc}")
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            try:
                completions = self._generate([ids for _, ids in batch])
            except Exception as exc:
                completions = [Completion(error=f"generation failed: {type(exc).__name__}: {exc}")] * len(batch)
            for (index, _), completion in zip(batch, completions):
                results[index] = completion
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def _generate(self, batch: list[list[int]]) -> list[Completion]:
        inputs = self.tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt").to(self.device)
        sampling: dict[str, Any] = {"do_sample": False}
        if self.temperature:
            torch.manual_seed(self.seed)
            sampling = {"do_sample": True, "temperature": self.temperature}
            if self.top_p is not None:
                sampling["top_p"] = self.top_p
        started = time.perf_counter()
        output = self.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started

        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        stop_ids = set(_stop_token_ids(self.model, self.tokenizer))
        lengths = [_generated_length(row.tolist(), stop_ids, self.tokenizer.pad_token_id) for row in new_tokens]
        total = sum(lengths)
        completions = []
        for ids, row, length in zip(batch, new_tokens, lengths):
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            share = length / total if total else 1 / len(batch)
            completions.append(
                Completion(
                    message=parse_assistant_output(text),
                    latency_s=elapsed * share,
                    prompt_tokens=len(ids),
                    completion_tokens=length,
                )
            )
        return completions


def _has_tokenizer(directory: str) -> bool:
    return (Path(directory) / "tokenizer_config.json").exists()


def _stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


def _generated_length(row: list[int], stop_ids: set[int], pad_id: int | None) -> int:
    """Tokens generated up to and including the first stop token (padding after it excluded)."""
    for i, token in enumerate(row):
        if token in stop_ids:
            return i + 1
    while row and row[-1] == pad_id and pad_id not in stop_ids:
        row = row[:-1]
    return len(row)


@contextmanager
def peft_deprecation_quieted() -> Iterator[None]:
    """Wraps a peft adapter's creation or loading: peft 0.21 reads the model's
    `is_gradient_checkpointing`, which transformers 5 deprecated, and its FutureWarning (about
    peft's code, not ours) would be printed on every training and evaluation."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
