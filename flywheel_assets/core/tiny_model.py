"""A tiny, randomly initialised Llama with a tokenizer trained on the workload's own text.

No weights can be downloaded in the demo and the tests, so the flywheel fine-tunes a model
built here: a byte-level BPE tokenizer trained on the given texts (with the chat template's
markers as single tokens) and a `LlamaForCausalLM` of a few hundred thousand parameters,
seeded. Saved with `save_pretrained`, it loads like any local Hugging Face model directory.

What it proves: the training, generation and evaluation code paths work end to end, and
LoRA on a frozen random network learns a narrow routing task. What it does not: anything
about the quality of a real candidate model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from flywheel_assets.core import torch_threads  # noqa: F401  (first: it sets OpenMP's environment for torch)

# isort: split
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from flywheel_assets.core.atomic import atomic_directory
from flywheel_assets.core.chat_template import (
    CHAT_TEMPLATE,
    CONTROL_TOKENS,
    END,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
)

PAD = "<pad>"
BUILD_INFO = "tiny_model_build.json"
# Bump when the way a model is built changes, so cached directories are rebuilt.
BUILDER_VERSION = 2


def _fingerprint(texts: Iterable[str], params: dict) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"builder": BUILDER_VERSION, **params}, sort_keys=True).encode())
    for text in texts:
        encoded = text.encode()
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def _cached_fingerprint(out_dir: Path) -> str | None:
    try:
        return json.loads((out_dir / BUILD_INFO).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None


def _train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    # Words are cut at whitespace only (not at punctuation, as GPT-2 does), so the compact
    # JSON of tool specs and calls compresses into few tokens: prompts stay short and a
    # tool call's name falls into one or two tokens, which a tiny model learns far faster.
    # Digits stand alone, so copying a number from the prompt is copying digit by digit.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\s+"), behavior="merged_with_next"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, *CONTROL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # The tool-call tags are single tokens too, but not special ones: decoding with
    # skip_special_tokens=True drops the role and end markers and keeps the tool calls.
    tokenizer.add_tokens(
        [AddedToken(tag, special=False, normalized=False) for tag in (TOOL_CALL_OPEN, TOOL_CALL_CLOSE)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        eos_token=END,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    out_dir: str | os.PathLike,
    texts: Iterable[str],
    *,
    seed: int = 0,
    vocab_size: int = 1024,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 8,
    intermediate_size: int = 256,
    max_position_embeddings: int = 2048,
    initializer_range: float = 0.1,
) -> Path:
    """Build (or find already built) a tiny chat model in `out_dir` and return its path.

    `texts` should be what the model will read and write (e.g. `chat_template.example_texts`
    of the training set); `vocab_size` is the BPE target before the two tool-call tags.
    The directory is reused when it holds a model built from the same texts and parameters
    (their hash is in `tiny_model_build.json`); otherwise the model is built in a temporary
    directory beside it and renamed into place, so a reader never sees half a model."""
    out_dir = Path(out_dir)
    texts = list(texts)
    if not texts:
        raise ValueError("build_tiny_model needs texts to train its tokenizer on")
    params = {
        "seed": seed,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "layers": layers,
        "heads": heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "initializer_range": initializer_range,
    }
    fingerprint = _fingerprint(texts, params)
    if _cached_fingerprint(out_dir) == fingerprint:
        return out_dir

    tokenizer = _train_tokenizer(texts, vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )

    try:
        with atomic_directory(out_dir) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / BUILD_INFO).write_text(json.dumps({"fingerprint": fingerprint, **params}, indent=2))
    except FileExistsError:
        # Another process built a model there at the same time; the same one is as good.
        if _cached_fingerprint(out_dir) != fingerprint:
            raise
    return out_dir
