"""One chat template for the models this project builds, and the parser of what they answer.

Rendering goes through the tokenizer's own `apply_chat_template`, so a real model (for
example a local Llama-3.2-1B-Instruct directory) keeps its own template; `CHAT_TEMPLATE`
below is the template of the tiny demo models (`tiny_model.build_tiny_model`) and the
fallback for a tokenizer without one. It renders:

    <|tools|>
    {"description":"...","name":"lookup_order","parameters":{...}}
    <|end|>
    <|system|>
    You route customer-support requests.<|end|>
    <|user|>
    Where is order 123?<|end|>
    <|assistant|>
    <tool_call>{"name":"lookup_order","arguments":{"order_id":"123"}}</tool_call><|end|>

Tool specs and arguments are compact JSON with sorted keys, so one prompt renders to one
string whatever the key order of its source. The name comes before the arguments in a
tool call (the model decides the function first, then fills its arguments).

`parse_assistant_output` reads that format back, and also the JSON tool calls Llama 3.x
models write (`{"name": ..., "parameters": {...}}`, optionally after `<|python_tag|>`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from flywheel_assets.core.chat import AssistantMessage, ChatExample, ChatPrompt, FunctionCall, ToolCall
from flywheel_assets.core.metrics import RAW_ARGUMENTS_KEY

END = "<|end|>"
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
ROLES = ("system", "user", "assistant", "tool")
# Markers the template writes; the tiny tokenizer makes each one a single token.
ROLE_MARKERS = tuple(f"<|{role}|>" for role in ROLES)
CONTROL_TOKENS = ("<|tools|>", *ROLE_MARKERS, END)

_JSON = "tojson(separators=(',', ':'), sort_keys=true)"

# Every character of output is written by a {{ }} expression, so the whitespace control of
# the block tags (and the trim_blocks/lstrip_blocks transformers uses) cannot eat any.
CHAT_TEMPLATE = (
    "{%- if tools -%}"
    "{{ '<|tools|>\\n' }}"
    "{%- for tool in tools -%}"
    "{{ (tool.function if tool.function is defined else tool) | " + _JSON + " }}{{ '\\n' }}"
    "{%- endfor -%}"
    "{{ '<|end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{ raise_exception('unsupported role: ' ~ message.role) }}"
    "{%- endif -%}"
    "{%- if not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "{{ '<|' ~ message.role ~ '|>\\n' }}"
    "{%- if message.content -%}{{ message.content }}{%- endif -%}"
    "{%- if message.role == 'assistant' and message.tool_calls -%}"
    "{%- for call in message.tool_calls -%}"
    "{%- set fn = call.function if call.function is defined else call -%}"
    "{{ '<tool_call>{\"name\":' }}{{ fn.name | tojson }}{{ ',\"arguments\":' }}"
    "{%- if fn.arguments is string -%}{{ fn.arguments }}"
    "{%- else -%}{{ (fn.arguments or {}) | " + _JSON + " }}{%- endif -%}"
    "{{ '}</tool_call>' }}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|end|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{%- if messages -%}{{ '\\n' }}{%- endif -%}"
    "{{ '<|assistant|>\\n' }}"
    "{%- endif -%}"
)


def _text_content(content: Any) -> str | None:
    """OpenAI content is a string, None, or a list of parts; keep the text parts."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def _parsed_arguments(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return arguments
    return {} if arguments is None else arguments


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: text content, tool-call arguments parsed
    into objects (OpenAI sends them as JSON strings), and no keys whose value is None
    (templates such as Llama's test `'tool_calls' in message`)."""
    out = []
    for message in messages:
        msg = {k: v for k, v in message.items() if v is not None}
        if "content" in msg:
            msg["content"] = _text_content(msg["content"])
        if msg.get("tool_calls"):
            calls = []
            for call in msg["tool_calls"]:
                fn = dict(call.get("function", call))
                fn["arguments"] = _parsed_arguments(fn.get("arguments"))
                calls.append({**{k: v for k, v in call.items() if v is not None}, "function": fn})
            msg["tool_calls"] = calls
        elif "tool_calls" in msg:
            del msg["tool_calls"]
        out.append(msg)
    return out


def ensure_chat_template(tokenizer: Any) -> Any:
    """Give a tokenizer without a chat template ours; leave a model's own template alone."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def render_prompt(tokenizer: Any | None, prompt: ChatPrompt, *, add_generation_prompt: bool = True) -> str:
    """The text a model sees for `prompt`, ending where the assistant starts to answer.

    `tokenizer` renders with its own chat template (ours where it has none); None renders
    with `CHAT_TEMPLATE` (for texts needed before a tokenizer exists, e.g. to train one)."""
    messages = template_messages(prompt.messages)
    tools = prompt.tools or None
    if tokenizer is None:
        # imported here: transformers pulls in torch, which the code location must not load
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[messages],
            tools=tools,
            chat_template=CHAT_TEMPLATE,
            add_generation_prompt=add_generation_prompt,
        )
        return rendered[0]
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    if tools:
        kwargs["tools"] = tools
    return ensure_chat_template(tokenizer).apply_chat_template(messages, **kwargs)


def render_example(tokenizer: Any | None, example: ChatExample) -> tuple[str, str]:
    """(prompt text, target text) of a training example: the target is the expected
    assistant turn as the same template renders it, up to and including its end marker.

    Rendering the conversation with and without the answer and taking the difference keeps
    the target exactly what the template would put there (for any template)."""
    prompt_text = render_prompt(tokenizer, example)
    answer = example.expected.model_dump(exclude_none=True)
    full = render_prompt(
        tokenizer,
        ChatPrompt(messages=[*example.messages, answer], tools=example.tools),
        add_generation_prompt=False,
    )
    if not full.startswith(prompt_text):
        raise ValueError(
            f"chat template of record {example.record_id!r} does not render the answer after "
            "the generation prompt; cannot tell prompt from target"
        )
    return prompt_text, full[len(prompt_text) :]


def example_texts(examples: Iterable[ChatExample]) -> Iterator[str]:
    """Each example's whole conversation (prompt and answer) in `CHAT_TEMPLATE`: the text
    a tokenizer for the tiny models is trained on."""
    for example in examples:
        yield "".join(render_example(None, example))


_TOOL_CALL_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|\Z)", re.S)
_LLAMA_PREFIX = "<|python_tag|>"


def _function_call(obj: Any) -> FunctionCall | None:
    """A function call from `{"name", "arguments"}` (ours, OpenAI) or `{"name",
    "parameters"}` (Llama 3.x); None when obj is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    arguments = _parsed_arguments(arguments)
    if not isinstance(arguments, dict):
        return None
    return FunctionCall(name=obj["name"], arguments=arguments)


def _json_objects(text: str) -> list[Any] | None:
    """All of `text` as JSON values separated by whitespace, ';' or ','; None otherwise."""
    decoder = json.JSONDecoder()
    values, pos = [], 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n;,":
            pos += 1
        if pos == len(text):
            return values
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        values.append(value)


_LEADING_NAME = re.compile(r'^\s*\{\s*"name"\s*:\s*"([^"\\]+)"\s*,\s*"(?:arguments|parameters)"\s*:')


def _named_call_with_broken_arguments(block: str) -> FunctionCall | None:
    """A call whose name was written cleanly but whose arguments are not valid JSON: the
    function chosen is known, the arguments are kept raw under RAW_ARGUMENTS_KEY (as the
    OpenAI-compatible client does with unparseable arguments), so name accuracy counts it
    and name-and-arguments accuracy does not."""
    named = _LEADING_NAME.match(block)
    if not named:
        return None
    return FunctionCall(name=named.group(1), arguments={RAW_ARGUMENTS_KEY: block[named.end() :].strip()})


def _message(content: str, calls: list[FunctionCall]) -> AssistantMessage:
    content = content.strip()
    return AssistantMessage(
        content=content or None,
        tool_calls=[ToolCall(function=call) for call in calls] or None,
    )


def parse_assistant_output(text: str) -> AssistantMessage:
    """The assistant message in a model's raw output.

    `<tool_call>...</tool_call>` blocks become tool calls, in order; a block that begins
    with a clean `{"name": ..., "arguments":` but whose arguments are malformed becomes a call
    with raw arguments; any other malformed block (or one that names no function) yields no
    call and stays in the content as it was written, so an evaluation sees what the model
    really said. A block cut off by the
    token limit is read up to the end of the text. Without any block, a text that is
    nothing but JSON function calls (Llama 3.x style, `;`-separated when several) is read
    as tool calls. Everything else is content."""
    if TOOL_CALL_OPEN in text:
        calls: list[FunctionCall] = []
        kept: list[str] = []
        last = 0
        for match in _TOOL_CALL_BLOCK.finditer(text):
            try:
                call = _function_call(json.loads(match.group(1)))
            except json.JSONDecodeError:
                call = _named_call_with_broken_arguments(match.group(1))
            kept.append(text[last : match.start()])
            if call is None:
                kept.append(match.group(0))
            else:
                calls.append(call)
            last = match.end()
        kept.append(text[last:])
        return _message("".join(kept), calls)

    stripped = text.strip()
    if stripped.startswith(_LLAMA_PREFIX):
        stripped = stripped[len(_LLAMA_PREFIX) :].strip()
    if stripped.startswith(("{", "[")):
        values = _json_objects(stripped)
        if values and len(values) == 1 and isinstance(values[0], list):
            values = values[0]
        if values:
            calls = [_function_call(value) for value in values]
            if all(call is not None for call in calls):
                return _message("", calls)  # type: ignore[arg-type]
    return _message(text, [])
