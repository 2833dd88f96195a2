"""Chat types shared by curation, training, inference and evaluation.

A split record (one JSONL line of eval/train/validation/ICL files) is a `ChatExample`:
the prompt the production model saw (`messages` + `tools`) and the assistant message it
answered (`expected`), the reference every candidate is scored against. Tool-call
arguments are kept parsed (a JSON object), as the reference does with
`parse_function_arguments: true`, so comparisons never depend on key order or spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

WorkloadType = Literal["tool_calling", "chat"]


class FunctionCall(BaseModel):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatPrompt(BaseModel):
    """What is sent to a model: OpenAI chat messages and, for tool calling, the tools."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None


class ChatExample(ChatPrompt):
    """One curated record: a prompt and the production model's answer to it."""

    record_id: str
    workload_id: str
    workload_type: WorkloadType
    expected: AssistantMessage


class Completion(BaseModel):
    """A candidate's answer to one prompt, with what it cost."""

    message: AssistantMessage | None = None
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


class ChatBackend(Protocol):
    """Anything that answers chat prompts: local transformers, an OpenAI-compatible
    endpoint, a NIM. Answers come back in the order of the prompts; a failed prompt
    gets a `Completion` with `error` set instead of raising, so one bad record does
    not sink an evaluation."""

    def complete(self, prompts: Sequence[ChatPrompt]) -> list[Completion]: ...
