"""Model platforms: where candidates are fine-tuned and served.

The assets call one interface, `ModelPlatform`, so switching the flywheel from the
embedded default to NVIDIA NeMo microservices is configuration (FLYWHEEL_BACKEND), not code:

- `LocalPlatform`: LoRA with `transformers` + `peft` on local weights (the tiny demo model
  is built here for `demo:tiny`), served with `transformers`; `openai` candidates are
  served by their OpenAI-compatible endpoint and not fine-tuned.
- `NemoPlatform`: datasets to the NeMo Data Store, LoRA as NeMo Customizer jobs, candidates
  served as NIMs deployed for the duration of a step and torn down however it ends.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import BaseModel, Field

from flywheel_assets.core.candidates import DEMO_BASE_MODEL, CandidateSpec
from flywheel_assets.core.chat import ChatBackend, ChatExample
from flywheel_assets.core.hyperparameters import LoraHyperparameters
from flywheel_assets.core.local_files import check_model_directory
from resources.nemo.backend import NemoBackend, split_files
from resources.openai_compatible import OpenAICompatibleBackend

Log = Callable[[str], None]


class Adapter(BaseModel):
    """What `lora_adapter` stores: enough to serve the adapter again."""

    trained: bool
    reason: str | None = None
    fingerprint: str | None = Field(default=None, description="hash of all training inputs")
    base_model_dir: str | None = None  # local
    adapter_dir: str | None = None  # local
    output_model: str | None = None  # nemo: the adapter's model id on the NIM proxy
    job_id: str | None = None  # nemo: the Customizer job


class Trained(BaseModel):
    adapter: Adapter
    metadata: dict[str, Any]


def training_fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ModelPlatform(dg.ConfigurableResource):
    judge_base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint of an LLM judge for chat workloads."
    )
    judge_model: str | None = None
    judge_api_key: str | None = Field(default=None, description="Set with EnvVar, never inline.")

    @abstractmethod
    def train(
        self,
        candidate: CandidateSpec,
        train: Sequence[ChatExample],
        validation: Sequence[ChatExample],
        hp: LoraHyperparameters,
        *,
        workload_key: str,
        log: Log,
    ) -> Trained: ...

    @abstractmethod
    def serving(
        self, candidate: CandidateSpec, train: Sequence[ChatExample], adapter: Adapter | None = None
    ) -> Iterator[ChatBackend]:
        """A context manager giving a backend that answers as the candidate (with `adapter`)."""

    def judge(self) -> ChatBackend | None:
        if not self.judge_base_url:
            return None
        return OpenAICompatibleBackend(self.judge_base_url, self.judge_model or "judge", api_key=self.judge_api_key)


def endpoint_backend(candidate: CandidateSpec) -> OpenAICompatibleBackend:
    if not candidate.base_url or not candidate.model_id:
        raise ValueError(f"candidate {candidate.name}: an openai backend needs base_url and model_id")
    return OpenAICompatibleBackend(
        candidate.base_url,
        candidate.model_id,
        api_key=os.environ.get(candidate.api_key_env) if candidate.api_key_env else None,
        max_concurrency=candidate.max_concurrency,
        max_tokens=candidate.max_new_tokens,
    )


def require_backend(candidate: CandidateSpec, backend: str) -> None:
    if candidate.backend != backend:
        raise ValueError(
            f"candidate {candidate.name} is a '{candidate.backend}' candidate but FLYWHEEL_BACKEND "
            f"is '{backend}': set FLYWHEEL_BACKEND={candidate.backend} or change the candidate's backend"
        )


class LocalPlatform(ModelPlatform):
    """The embedded default: everything on this machine (CPU, or a GPU when there is one)."""

    model_cache_dir: str = Field(description="Where built demo models are cached.")
    adapters_dir: str = Field(description="Where trained LoRA adapters are stored.")

    def base_model_dir(self, candidate: CandidateSpec, train: Sequence[ChatExample]) -> Path:
        if candidate.base_model != DEMO_BASE_MODEL:
            try:
                return check_model_directory(candidate.base_model)
            except OSError as error:
                raise FileNotFoundError(
                    f"candidate {candidate.name}: base_model is not a usable Hugging Face model "
                    f"directory: {error}; download the weights there or use demo:tiny"
                ) from error
        from flywheel_assets.core.chat_template import example_texts
        from flywheel_assets.core.tiny_model import build_tiny_model

        # one demo model per training set: its tokenizer is trained on that data
        texts = list(example_texts(train))
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
        return build_tiny_model(Path(self.model_cache_dir) / f"demo-tiny-{digest}", texts, seed=0)

    def train(self, candidate, train, validation, hp, *, workload_key, log) -> Trained:
        from flywheel_assets.core.training import read_training_result, train_lora

        if candidate.backend == "openai":
            return Trained(adapter=Adapter(trained=False, reason="endpoint candidate: no local weights"), metadata={})
        require_backend(candidate, "local")
        base_dir = self.base_model_dir(candidate, train)
        fingerprint = training_fingerprint(hp.model_dump(), str(base_dir), [e.record_id for e in train])
        # content-addressed: a retried or re-executed step with the same inputs reuses the adapter
        out_dir = Path(self.adapters_dir) / workload_key / candidate.name / fingerprint
        if (out_dir / "training_result.json").exists():
            log(f"adapter for these inputs already exists at {out_dir}; reusing it")
            result = read_training_result(out_dir)
        else:
            log(f"training {candidate.name} on {len(train)} examples ({len(validation)} validation), {hp}")
            result = train_lora(
                base_dir,
                train,
                validation,
                out_dir,
                hp,
                on_progress=lambda p: log(
                    "step {step} epoch {epoch:.2f} loss {loss:.4f} {tokens_per_s:.0f} tokens/s".format(**p)
                ),
            )
        adapter = Adapter(
            trained=True,
            fingerprint=fingerprint,
            base_model_dir=result.base_model_dir,
            adapter_dir=result.adapter_dir,
        )
        return Trained(
            adapter=adapter,
            metadata={
                "loss_curve": [(p.step, p.epoch, p.loss) for p in result.loss_curve],
                "eval_loss": result.eval_loss,
                "train_time_s": round(result.train_time_s, 2),
                "tokens_per_s": round(result.tokens_per_s, 1),
                "adapter_size_bytes": result.adapter_size_bytes,
                "adapter_dir": result.adapter_dir,
                "base_model_dir": result.base_model_dir,
                "device": result.device,
                "cpu_threads": result.cpu_threads,
                "train_examples": result.train_examples,
            },
        )

    @contextmanager
    def serving(self, candidate, train, adapter=None) -> Iterator[ChatBackend]:
        if candidate.backend == "openai":
            yield endpoint_backend(candidate)
            return
        from flywheel_assets.core.local_generation import LocalChatModel

        require_backend(candidate, "local")
        if adapter is not None:
            model_dir = check_model_directory(adapter.base_model_dir)
            adapter_dir = check_model_directory(adapter.adapter_dir, required_file="adapter_config.json")
        else:
            model_dir, adapter_dir = self.base_model_dir(candidate, train), None
        yield LocalChatModel(
            model_dir, adapter_dir, max_new_tokens=candidate.max_new_tokens, batch_size=candidate.batch_size
        )


class NemoPlatform(ModelPlatform):
    """NVIDIA NeMo microservices: Data Store, Customizer, Deployment Management, NIM proxy."""

    nemo: NemoBackend

    def train(self, candidate, train, validation, hp, *, workload_key, log) -> Trained:
        from flywheel_assets.core.splitting import examples_to_jsonl

        if candidate.backend == "openai":
            return Trained(adapter=Adapter(trained=False, reason="endpoint candidate: no NeMo model"), metadata={})
        require_backend(candidate, "nemo")
        files = split_files(examples_to_jsonl(train), examples_to_jsonl(validation))
        dataset = self.nemo.upload_splits(workload_key, files, description=f"flywheel {workload_key}")
        log(f"uploaded splits as dataset {dataset}")
        result = self.nemo.customize(
            candidate.base_model,
            dataset,
            hp,
            target=candidate.customizer_target,
            on_job_id=lambda job_id: log(f"customization job {job_id}"),
            on_progress=lambda progress: log(str(progress)),
        )
        adapter = Adapter(
            trained=True, fingerprint=result.job_name, output_model=result.output_model, job_id=result.job_id
        )
        return Trained(
            adapter=adapter,
            metadata={
                "job_id": result.job_id,
                "output_model": result.output_model,
                "dataset": dataset,
                "resumed_existing_job": result.resumed,
                "loss_curve": [(step, None, loss) for step, loss in result.train_loss],
                "eval_loss": [loss for _, loss in result.val_loss],
                "ignored_hyperparameters": result.ignored_hyperparameters,
            },
        )

    def serving(self, candidate, train, adapter=None):
        if candidate.backend == "openai":
            return nullcontext(endpoint_backend(candidate))
        require_backend(candidate, "nemo")
        served = adapter.output_model if adapter is not None else None
        return self.nemo.deployment(candidate.base_model, served_model=served)
