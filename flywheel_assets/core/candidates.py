"""Candidate models (the `candidate` partitions) and the production model's cost profile.

Candidates come from a JSON file named by `FLYWHEEL_CANDIDATES`; without one, the embedded
default has a single candidate, `tiny-demo`, a tiny model the project builds itself (no
weights can be downloaded here). A candidate is one of:
  - `local`:  a Hugging Face model directory fine-tuned with LoRA and served with
              `transformers` (`base_model`: a path, or `demo:tiny`)
  - `openai`: an OpenAI-compatible endpoint (vLLM, NIM, Ollama...) for base/ICL evaluation;
              it has no local weights, so it is not fine-tuned here
  - `nemo`:   a NIM on NeMo microservices (`base_model`: the NIM's model name), fine-tuned
              by NeMo Customizer (`customizer_target`); needs FLYWHEEL_BACKEND=nemo
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from flywheel_assets.core.hyperparameters import DEMO_HYPERPARAMETERS
from flywheel_assets.core.local_files import read_config_file
from flywheel_assets.settings import load_settings
from partitions.keys import SAFE_KEY

DEMO_BASE_MODEL = "demo:tiny"


class CostProfile(BaseModel):
    """Price in USD per million tokens; used for cost estimates relative to production."""

    usd_per_million_prompt_tokens: float = Field(default=0.0, ge=0)
    usd_per_million_completion_tokens: float = Field(default=0.0, ge=0)

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (
            prompt_tokens * self.usd_per_million_prompt_tokens
            + completion_tokens * self.usd_per_million_completion_tokens
        ) / 1e6


class CandidateSpec(BaseModel):
    name: str = Field(description="Partition key: lowercase letters, digits, '-' and '_'.")
    backend: Literal["local", "openai", "nemo"] = "local"
    base_model: str = Field(default=DEMO_BASE_MODEL, description="Local model directory, or demo:tiny (built here).")
    customizer_target: str | None = Field(
        default=None, description="NeMo Customizer target, e.g. meta/llama-3.2-1b-instruct@2.0."
    )
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL (…/v1).")
    model_id: str | None = Field(default=None, description="Model name sent to the endpoint.")
    served_as: list[str] = Field(
        default_factory=list,
        description="Other model names production traffic names it by once promoted (the NIM model "
        "name, the LoRA adapter's name): how production monitoring ties a served model to it.",
    )
    api_key_env: str | None = Field(default=None, description="Environment variable holding the endpoint's API key.")
    max_new_tokens: int = 128
    batch_size: int = 8
    max_concurrency: int = 8
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="LoRA hyper-parameter overrides for this candidate."
    )
    cost: CostProfile = CostProfile()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not SAFE_KEY.match(name):
            raise ValueError(f"candidate name {name!r} must match {SAFE_KEY.pattern}")
        return name

    @property
    def served_names(self) -> list[str]:
        """The model names a trace's `response.model` / `request.model` may carry for it."""
        return list(dict.fromkeys(n for n in (self.name, self.model_id, *self.served_as) if n))


class FlywheelModels(BaseModel):
    production: CostProfile = CostProfile(usd_per_million_prompt_tokens=0.88, usd_per_million_completion_tokens=0.88)
    candidates: list[CandidateSpec]

    @model_validator(mode="after")
    def _one_candidate_per_served_name(self) -> FlywheelModels:
        claimed: dict[str, str] = {}
        for candidate in self.candidates:
            for name in candidate.served_names:
                other = claimed.setdefault(name, candidate.name)
                if other != candidate.name:
                    raise ValueError(
                        f"served model name {name!r} belongs to candidates {other!r} and {candidate.name!r}: "
                        "give each candidate its own model_id / served_as names"
                    )
        return self


# hyperparameters.DEMO_HYPERPARAMETERS says why the demo model needs other hyper-parameters
DEMO_CANDIDATE = CandidateSpec(
    name="tiny-demo",
    hyperparameters=DEMO_HYPERPARAMETERS.model_dump(exclude_unset=True),
    cost=CostProfile(usd_per_million_prompt_tokens=0.02, usd_per_million_completion_tokens=0.02),
)


def load_models(path: str | os.PathLike | None = None) -> FlywheelModels:
    """Candidates and production profile from `path` (or FLYWHEEL_CANDIDATES), else the demo."""
    path = path or load_settings().candidates_file
    if not path:
        return FlywheelModels(candidates=[DEMO_CANDIDATE])
    try:
        return FlywheelModels.model_validate(json.loads(read_config_file(path, what="a candidates file")))
    except (OSError, ValueError) as err:
        raise ValueError(f"FLYWHEEL_CANDIDATES={path}: {err}") from err
