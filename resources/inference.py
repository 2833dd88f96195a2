"""Inference and model provisioning for candidates, behind one resource.

`InferenceResource.backend(...)` gives a `ChatBackend` for a candidate: local
`transformers` generation (optionally with a LoRA adapter) or an OpenAI-compatible
endpoint. `base_model_dir(...)` resolves a local candidate's weights, building the tiny
demo model (tokenizer trained on the workload's data, seeded, cached) for `demo:tiny`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
from pydantic import Field

from flywheel_assets.core.candidates import DEMO_BASE_MODEL, CandidateSpec
from flywheel_assets.core.chat import ChatBackend, ChatExample
from resources.openai_compatible import OpenAICompatibleBackend


class InferenceResource(dg.ConfigurableResource):
    model_cache_dir: str = Field(description="Where built demo models are cached.")
    adapters_dir: str = Field(description="Where trained LoRA adapters are stored.")
    judge_base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint of an LLM judge for chat workloads."
    )
    judge_model: str | None = None
    judge_api_key: str | None = Field(default=None, description="Set with EnvVar, never inline.")

    def base_model_dir(self, candidate: CandidateSpec, train: Sequence[ChatExample]) -> Path:
        if candidate.base_model != DEMO_BASE_MODEL:
            path = Path(candidate.base_model)
            if not (path / "config.json").exists():
                raise FileNotFoundError(
                    f"candidate {candidate.name}: base_model {path} is not a Hugging Face model "
                    "directory (no config.json); download the weights there or use demo:tiny"
                )
            return path
        from flywheel_assets.core.chat_template import example_texts
        from flywheel_assets.core.tiny_model import build_tiny_model

        # one demo model per training set: its tokenizer is trained on that data
        texts = list(example_texts(train))
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
        return build_tiny_model(Path(self.model_cache_dir) / f"demo-tiny-{digest}", texts, seed=0)

    def backend(
        self, candidate: CandidateSpec, model_dir: Path | None = None, adapter_dir: Path | None = None
    ) -> ChatBackend:
        if candidate.backend == "openai":
            if not candidate.base_url or not candidate.model_id:
                raise ValueError(f"candidate {candidate.name}: an openai backend needs base_url and model_id")
            return OpenAICompatibleBackend(
                candidate.base_url,
                candidate.model_id,
                api_key=os.environ.get(candidate.api_key_env) if candidate.api_key_env else None,
                max_concurrency=candidate.max_concurrency,
                max_tokens=candidate.max_new_tokens,
            )
        from flywheel_assets.core.local_generation import LocalChatModel

        return LocalChatModel(
            model_dir,
            adapter_dir,
            max_new_tokens=candidate.max_new_tokens,
            batch_size=candidate.batch_size,
        )

    def judge(self) -> ChatBackend | None:
        if not self.judge_base_url:
            return None
        return OpenAICompatibleBackend(
            self.judge_base_url, self.judge_model or "judge", api_key=self.judge_api_key
        )
