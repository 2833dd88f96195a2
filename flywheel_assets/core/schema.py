"""The production trace record and its validation.

One record per production LLM call (DESIGN.md, "Trace schema"). `validate_trace` turns a
raw JSON line (or a decoded dict, for Parquet sources) into either a `TraceRecord` or a
`Rejection` with one of `QUARANTINE_REASONS`, so a bad record is quarantined with a
reason instead of crashing the run or disappearing.

The models type only what the flywheel relies on and ignore other fields (`extra="ignore"`):
the record is kept verbatim as JSON next to the typed columns, and pydantic then never
builds Python objects for the parts nobody reads (a tool's JSON schema, extra fields),
which is most of the validation time per record. Fields read only for production
monitoring (the response's `model`, `finish_reason`, `refusal`) are `Any`: a value of an
unexpected type there is no reason to quarantine a trace.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

DEFAULT_MAX_RECORD_BYTES = 1 << 20

QUARANTINE_REASONS = (
    "bad_json",
    "oversized",
    "missing_field",
    "wrong_type",
    "not_chat_request",
    "empty_response",
    "before_start_date",
    "future_timestamp",
)


UNKNOWN_MODEL = "(unknown)"  # a trace that names no model at all

# an answer that opens like this declines the request (English; other refusals come through
# the `refusal` field or `finish_reason`)
_DECLINE = r"(?:can['’]?t|cannot|won['’]?t|will not|(?:am|['’]m) (?:not able|unable) to)"
REFUSAL_OPENING = re.compile(
    rf"(?i)^\s*(?:(?:(?:i['’]?m|i am) sorry|sorry|i apologi[sz]e)[,.!]?\s*(?:but,?\s*)?(?:i|we)\s*{_DECLINE}"
    rf"|(?:i|we)\s*{_DECLINE}\s+(?:help|assist|provide|comply|do that|answer)"
    r"|as an ai\b)"
)

_TYPED_ONLY = ConfigDict(extra="ignore")


class ChatMessage(BaseModel):
    model_config = _TYPED_ONLY

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Any = None


class ToolFunction(BaseModel):
    model_config = _TYPED_ONLY

    name: str = ""


class ToolSpec(BaseModel):
    """A tool offered to the model: `{"type": "function", "function": {"name": ...}}`, or
    the flat form with `name` at the top (OpenAI Responses API)."""

    model_config = _TYPED_ONLY

    function: ToolFunction | None = None
    name: str = ""

    @property
    def tool_name(self) -> str:
        return self.function.name if self.function else self.name


class ChatRequest(BaseModel):
    """An OpenAI chat-completions request; only what the flywheel relies on is typed."""

    model_config = _TYPED_ONLY

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolSpec] | None = None


class ResponseMessage(BaseModel):
    model_config = _TYPED_ONLY

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    refusal: Any = None

    @model_validator(mode="after")
    def _has_an_answer(self) -> ResponseMessage:
        if not (self.content and self.content.strip()) and not self.tool_calls:
            raise ValueError("the assistant message has neither content nor tool_calls")
        return self


class Choice(BaseModel):
    model_config = _TYPED_ONLY

    message: ResponseMessage
    finish_reason: Any = None


class ChatResponse(BaseModel):
    """An OpenAI chat-completions response; `choices[0].message` is the reference answer."""

    model_config = _TYPED_ONLY

    model: Any = None  # the model that answered, as the serving layer reports it
    choices: list[Choice] = Field(min_length=1)
    usage: dict[str, Any] | None = None


class Feedback(BaseModel):
    model_config = _TYPED_ONLY

    thumbs: Literal["up", "down"] | None = None
    rating: float | None = None


class TraceRecord(BaseModel):
    model_config = _TYPED_ONLY

    timestamp: StrictInt = Field(ge=0, description="epoch seconds when the request was issued")
    workload_id: StrictStr = Field(min_length=1)
    client_id: StrictStr
    request: ChatRequest
    response: ChatResponse
    feedback: Feedback | None = None
    latency_ms: float | None = None
    workload_description: str | None = None

    @property
    def answer(self) -> ResponseMessage:
        return self.response.choices[0].message

    @property
    def served_model(self) -> str:
        """The model that answered: `response.model`, else the request's `model`."""
        model = _as_text(self.response.model)
        model = self.request.model if model is None else model
        return UNKNOWN_MODEL if model is None else model

    @property
    def finish_reason(self) -> str | None:
        return _as_text(self.response.choices[0].finish_reason)

    @property
    def refused(self) -> bool:
        """The answer declines: a `refusal` in the message, `finish_reason` `content_filter`,
        or a text answer that opens with a refusal (`REFUSAL_OPENING`)."""
        answer = self.answer
        refusal = _as_text(answer.refusal)
        return bool(
            (refusal is not None and refusal.strip())
            or self.finish_reason == "content_filter"
            or (not answer.tool_calls and answer.content and REFUSAL_OPENING.match(answer.content))
        )

    def user_contents(self) -> list[str]:
        """The dedup key's parts: every user message's content, in order."""
        return [_content_text(m.content) for m in self.request.messages if m.role == "user"]


class Rejection(BaseModel):
    reason: Literal[QUARANTINE_REASONS]  # type: ignore[valid-type]
    detail: str


def _as_text(value: Any) -> str | None:
    """A string as it is, another JSON value as its JSON text (a number for `model`, an
    object for `refusal`), null as None."""
    if value is None or isinstance(value, str):
        return value
    return pydantic_core.to_json(value).decode()


def _content_text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a multi-part content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def validate_trace(
    raw: str | bytes | dict[str, Any], max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> TraceRecord | Rejection:
    if isinstance(raw, (str, bytes)):
        # a character is at most 4 UTF-8 bytes: a short line needs no encoding to be measured
        short = isinstance(raw, str) and 4 * len(raw) <= max_record_bytes
        size = len(raw) if isinstance(raw, bytes) or short else len(raw.encode())
        if size > max_record_bytes:
            return Rejection(reason="oversized", detail=f"{size} bytes > limit of {max_record_bytes}")
        try:
            return TraceRecord.model_validate_json(raw)
        except ValidationError as err:
            return _rejection_from(err)
    # a decoded record (Parquet row, Weave call) is held to the same limit as a line: its JSON size
    text = json.dumps(raw, ensure_ascii=False, separators=(",", ":"), default=str)
    try:
        size = len(text.encode())
    except UnicodeEncodeError as err:  # json.loads accepts "\ud800"; no text column can hold it
        return Rejection(reason="bad_json", detail=f"not valid Unicode text: {err.reason}")
    if size > max_record_bytes:
        return Rejection(reason="oversized", detail=f"{size} bytes > limit of {max_record_bytes}")
    try:
        return TraceRecord.model_validate(raw)
    except ValidationError as err:
        return _rejection_from(err)


def _rejection_from(err: ValidationError) -> Rejection:
    first = err.errors(include_url=False)[0]
    loc = tuple(first["loc"])
    where = ".".join(str(p) for p in loc) or "record"
    detail = f"{where}: {first['msg']}"
    kind = first["type"]
    if kind.startswith("json_"):
        return Rejection(reason="bad_json", detail=first["msg"])
    if kind == "missing" and len(loc) == 1:
        return Rejection(reason="missing_field", detail=detail)
    if loc[:1] == ("request",):
        return Rejection(reason="not_chat_request", detail=detail)
    if loc[:1] == ("response",):
        return Rejection(reason="empty_response", detail=detail)
    return Rejection(reason="wrong_type", detail=detail)
