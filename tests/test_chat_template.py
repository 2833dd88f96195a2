"""The tiny models' chat template and the parser of model output."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from flywheel_assets.core.chat import AssistantMessage, ChatExample, ChatPrompt, FunctionCall, ToolCall
from flywheel_assets.core.chat_template import (
    CHAT_TEMPLATE,
    parse_assistant_output,
    render_example,
    render_prompt,
    template_messages,
)
from flywheel_assets.core.metrics import RAW_ARGUMENTS_KEY, score_tool_calls

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Find an order",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
        },
    },
    {"type": "function", "function": {"name": "escalate", "parameters": {"type": "object", "properties": {}}}},
]


def _call(name: str, **arguments) -> ToolCall:
    return ToolCall(function=FunctionCall(name=name, arguments=arguments))


def _example(expected: AssistantMessage, messages: list[dict] | None = None) -> ChatExample:
    return ChatExample(
        record_id="r1",
        workload_id="w",
        workload_type="tool_calling",
        messages=messages or [{"role": "system", "content": "Route."}, {"role": "user", "content": "Where is 42?"}],
        tools=TOOLS,
        expected=expected,
    )


def _names_and_args(message: AssistantMessage) -> list[tuple[str, dict]]:
    return [(c.function.name, c.function.arguments) for c in message.tool_calls or []]


def test_prompt_renders_tools_as_compact_sorted_json_then_the_turns():
    text = render_prompt(None, _example(AssistantMessage(content="hi")))
    assert text == (
        "<|tools|>\n"
        '{"description":"Find an order","name":"lookup_order","parameters":{"properties":'
        '{"order_id":{"type":"string"}},"required":["order_id"],"type":"object"}}\n'
        '{"name":"escalate","parameters":{"properties":{},"type":"object"}}\n'
        "<|end|>\n"
        "<|system|>\nRoute.<|end|>\n"
        "<|user|>\nWhere is 42?<|end|>\n"
        "<|assistant|>\n"
    )


def test_rendering_does_not_depend_on_key_order():
    a = _example(AssistantMessage(tool_calls=[_call("lookup_order", order_id="42", verbose=True)]))
    reordered = [{"type": "function", "function": dict(reversed(list(t["function"].items())))} for t in TOOLS]
    b = a.model_copy(
        update={
            "tools": reordered,
            "expected": AssistantMessage(tool_calls=[_call("lookup_order", verbose=True, order_id="42")]),
        }
    )
    assert render_example(None, a) == render_example(None, b)


@pytest.mark.parametrize(
    "expected",
    [
        AssistantMessage(tool_calls=[_call("lookup_order", order_id="42")]),
        AssistantMessage(tool_calls=[_call("lookup_order", order_id="42"), _call("escalate")]),
        AssistantMessage(content="Let me check.", tool_calls=[_call("lookup_order", order_id='4"2', note="ünï")]),
        AssistantMessage(content="Your order ships today."),
    ],
)
def test_target_round_trips_through_the_parser(expected):
    _, target = render_example(None, _example(expected))
    assert target.endswith("<|end|>")
    parsed = parse_assistant_output(target.removesuffix("<|end|>"))
    assert parsed.content == expected.content
    assert _names_and_args(parsed) == _names_and_args(expected)


def test_tool_call_is_name_first_compact_json():
    _, target = render_example(None, _example(AssistantMessage(tool_calls=[_call("lookup_order", z=1, a="x")])))
    assert target == '<tool_call>{"name":"lookup_order","arguments":{"a":"x","z":1}}</tool_call><|end|>'


def test_history_with_openai_wire_tool_calls_and_tool_results_renders():
    messages = [
        {"role": "user", "content": "Where is 42?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup_order", "arguments": '{"order_id": "42"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "shipped"},
        {"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "text", "text": "now?"}]},
    ]
    text = render_prompt(None, ChatPrompt(messages=messages))
    assert '<|assistant|>\n<tool_call>{"name":"lookup_order","arguments":{"order_id":"42"}}</tool_call><|end|>' in text
    assert "<|tool|>\nshipped<|end|>" in text
    assert "<|user|>\nAnd now?<|end|>" in text


def test_template_messages_drop_none_and_parse_arguments():
    messages = [
        {"role": "assistant", "content": None, "tool_calls": None},
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}]},
    ]
    assert template_messages(messages) == [
        {"role": "assistant"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
    ]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'  # input untouched


def test_unknown_role_is_rejected():
    with pytest.raises(Exception, match="unsupported role"):
        render_prompt(None, ChatPrompt(messages=[{"role": "developer", "content": "x"}]))


def test_malformed_tool_call_keeps_raw_text_as_content():
    text = '<tool_call>{"arguments":{"order_id":"42"}, "name": lookup_order</tool_call>'
    parsed = parse_assistant_output(text)
    assert parsed.tool_calls is None
    assert parsed.content == text


def test_a_cleanly_named_call_with_broken_arguments_counts_for_the_name_only():
    # what the tiny demo model does when it cannot copy an argument: the function it chose is
    # plain, the arguments are not JSON
    text = '<tool_call>{"name":"issue_refund","arguments":{"amount":222,"order_id":"ORD-22,"order_id":"ORD-2"}}</tool_call>'
    parsed = parse_assistant_output(text)
    (call,) = parsed.tool_calls
    assert call.function.name == "issue_refund"
    assert call.function.arguments == {RAW_ARGUMENTS_KEY: '{"amount":222,"order_id":"ORD-22,"order_id":"ORD-2"}}'}
    expected = AssistantMessage(tool_calls=[{"function": {"name": "issue_refund", "arguments": {"amount": 222}}}])
    score = score_tool_calls(expected, parsed)
    assert score.function_name == 1.0 and score.function_name_and_args == 0.0


def test_valid_calls_survive_a_malformed_neighbour():
    bad = '<tool_call>{"arguments":{}}</tool_call>'  # no name
    text = f'<tool_call>{{"name":"a","arguments":{{"x":1}}}}</tool_call>{bad}<tool_call>{{"name":"b","arguments":"{{}}"}}</tool_call>'
    parsed = parse_assistant_output(text)
    assert _names_and_args(parsed) == [("a", {"x": 1}), ("b", {})]
    assert parsed.content == bad


def test_call_cut_off_by_the_token_limit_is_read_when_its_json_is_complete():
    parsed = parse_assistant_output('<tool_call>{"name":"a","arguments":{}}')
    assert _names_and_args(parsed) == [("a", {})]
    assert parse_assistant_output('<tool_call>{"name":"a","argu').tool_calls is None


@pytest.mark.parametrize(
    "text, calls",
    [
        ('{"name": "lookup_order", "parameters": {"order_id": "42"}}', [("lookup_order", {"order_id": "42"})]),
        (
            '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "arguments": {"y": 2}}',
            [("a", {}), ("b", {"y": 2})],
        ),
        ('[{"name": "a", "parameters": {"x": 1}}]', [("a", {"x": 1})]),
    ],
)
def test_llama_json_tool_calls(text, calls):
    parsed = parse_assistant_output(text)
    assert _names_and_args(parsed) == calls
    assert parsed.content is None


@pytest.mark.parametrize(
    "text",
    [
        "Your order ships today.",
        '{"status": "ok"}',  # JSON, but not a function call
        '{"name": "a", "parameters": {}} and more words',
        "",
    ],
)
def test_plain_text_is_content(text):
    parsed = parse_assistant_output(text)
    assert parsed.tool_calls is None
    assert parsed.content == (text.strip() or None)


def test_tokenizer_with_our_template_renders_like_the_template(tmp_path):
    from transformers import AutoTokenizer

    from flywheel_assets.core.tiny_model import build_tiny_model

    example = _example(AssistantMessage(tool_calls=[_call("lookup_order", order_id="42")]))
    model_dir = build_tiny_model(tmp_path / "m", ["".join(render_example(None, example))], vocab_size=300)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert render_example(tokenizer, example) == render_example(None, example)
    # Markers are single tokens; decoding without special tokens keeps the tool-call tags.
    prompt, target = render_example(tokenizer, example)
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<tool_call>") and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == target.removesuffix("<|end|>")
