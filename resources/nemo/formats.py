"""The flywheel's chat-format split files (`flywheel_assets.core.splitting.examples_to_jsonl`:
``record_id``, ``messages`` ending with the expected assistant turn, ``tools``) in the
shapes the NeMo services read.

- `customizer_jsonl`: the Customizer's chat format: only ``messages`` and ``tools`` per
  line, only the OpenAI message fields per message (``role``, ``content``, ``tool_calls``,
  ``tool_call_id``, ``name``; no ``refusal`` or other response extras), and every
  ``content`` a string: an assistant turn that only calls tools has ``content: ""`` (the
  blueprint's note: the Customizer rejects a null or missing content).
- `evaluator_jsonl`: the Evaluator replays ``messages[:-1]`` to an OpenAI-compatible
  NIM, where a tool call's ``arguments`` is a JSON string; earlier tool calls in the
  prompt are serialised so (as the blueprint's ``format_evaluator``). The expected last
  turn keeps parsed arguments: it is the ``tool-calling`` metric's ground truth.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

MESSAGE_FIELDS = ("role", "content", "tool_calls", "tool_call_id", "name")


def _map_lines(data: bytes, convert: Callable[[dict[str, Any]], dict[str, Any]]) -> bytes:
    lines = [
        json.dumps(convert(json.loads(line)), ensure_ascii=False) for line in data.decode().splitlines() if line.strip()
    ]
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _customizer_line(record: dict[str, Any]) -> dict[str, Any]:
    messages = [
        {**{key: message[key] for key in MESSAGE_FIELDS if key in message}, "content": message.get("content") or ""}
        for message in record["messages"]
    ]
    return {"messages": messages, **({"tools": record["tools"]} if record.get("tools") else {})}


def _evaluator_line(record: dict[str, Any]) -> dict[str, Any]:
    *prompt, expected = record["messages"]
    return {**record, "messages": [_wire_tool_calls(message) for message in prompt] + [expected]}


def _wire_tool_calls(message: dict[str, Any]) -> dict[str, Any]:
    if not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            function = {
                **function,
                "arguments": json.dumps(arguments if arguments is not None else {}, ensure_ascii=False),
            }
        calls.append({**call, "function": function})
    return {**message, "tool_calls": calls}


def customizer_jsonl(data: bytes) -> bytes:
    """Chat-format JSONL -> the Customizer's training format (see the module docstring)."""
    return _map_lines(data, _customizer_line)


def evaluator_jsonl(data: bytes) -> bytes:
    """Chat-format JSONL -> the file an Evaluator job replays (see the module docstring)."""
    return _map_lines(data, _evaluator_line)
