"""ICL selection: the token budget is never exceeded, 1-3 examples, never the prompt itself,
deterministic, distinct functions first; and the layout of the built prompt."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel_assets.core.chat import AssistantMessage, ChatExample, ChatPrompt, FunctionCall, ToolCall
from flywheel_assets.core.icl import EXAMPLE_TOOL_RESULT, build_icl_prompt, select_icl_examples

TOOLS = [{"type": "function", "function": {"name": name}} for name in ("get_weather", "get_time", "book")]


def count_tokens(prompt: ChatPrompt) -> int:
    """Whitespace tokens of every message as JSON: cheap, and grows with everything."""
    return sum(len(json.dumps(message).split()) for message in prompt.messages)


def tool_example(record_id: str, function: str, words: int = 3) -> ChatExample:
    return ChatExample(
        record_id=record_id,
        workload_id="w",
        workload_type="tool_calling",
        messages=[
            {"role": "system", "content": "You are a travel agent."},
            {"role": "user", "content": " ".join([f"q{record_id}"] * words)},
        ],
        tools=TOOLS,
        expected=AssistantMessage(tool_calls=[ToolCall(function=FunctionCall(name=function, arguments={"x": 1}))]),
    )


def chat_example(record_id: str, words: int = 3) -> ChatExample:
    return ChatExample(
        record_id=record_id,
        workload_id="w",
        workload_type="chat",
        messages=[{"role": "user", "content": " ".join([f"q{record_id}"] * words)}],
        expected=AssistantMessage(content=f"answer {record_id}"),
    )


FUNCTIONS = ["get_weather", "get_time", "book"]
POOL = [tool_example(f"r{i:02d}", FUNCTIONS[i % 3] if i < 3 else "get_weather") for i in range(20)]


def select(prompt, pool, **kwargs):
    return select_icl_examples(prompt, pool, count_tokens=count_tokens, **kwargs)


def test_three_examples_by_default_covering_distinct_functions():
    chosen = select(POOL[5], POOL)
    assert len(chosen) == 3
    assert {e.expected.tool_calls[0].function.name for e in chosen} == set(FUNCTIONS)


def test_never_selects_the_prompt_itself():
    for prompt in POOL:
        assert prompt.record_id not in {e.record_id for e in select(prompt, POOL, max_examples=3)}
    only_self = select(POOL[0], [POOL[0]])
    assert only_self == []


def test_deterministic_and_independent_of_pool_order():
    first = [e.record_id for e in select(POOL[5], POOL, seed=7)]
    shuffled = list(POOL)
    random.Random(1).shuffle(shuffled)
    assert [e.record_id for e in select(POOL[5], shuffled, seed=7)] == first
    assert [e.record_id for e in select(POOL[5], POOL, seed=7)] == first


def test_seed_and_prompt_vary_the_choice():
    pool = [chat_example(f"c{i:02d}") for i in range(40)]
    choices = {tuple(e.record_id for e in select(pool[0], pool, seed=seed)) for seed in range(5)}
    assert len(choices) > 1


def test_respects_max_examples():
    assert len(select(POOL[0], POOL, max_examples=1)) == 1
    assert select(POOL[0], POOL, max_examples=0) == []


def test_bare_prompt_over_budget_gives_no_examples():
    prompt = tool_example("big", "book", words=200)
    assert count_tokens(build_icl_prompt(prompt, [])) > 100
    assert select(prompt, POOL, max_context_tokens=100, reserved_tokens=0) == []


def test_drops_the_largest_example_first():
    pool = [chat_example("small1"), chat_example("huge", words=300), chat_example("small2")]
    prompt = chat_example("p")
    everything = count_tokens(build_icl_prompt(prompt, pool))
    chosen = select(prompt, pool, max_context_tokens=everything - 1, reserved_tokens=0)
    assert sorted(e.record_id for e in chosen) == ["small1", "small2"]


def test_tops_up_from_later_candidates_to_reach_min_examples():
    # every candidate but one is too big; the strategy order decides which come first,
    # but whichever it is, a fitting example further down the order must be found
    pool = [chat_example(f"huge{i}", words=400) for i in range(5)] + [chat_example("small")]
    prompt = chat_example("p")
    budget = count_tokens(build_icl_prompt(prompt, [pool[-1]]))
    chosen = select(prompt, pool, max_context_tokens=budget, reserved_tokens=0, min_examples=1)
    assert [e.record_id for e in chosen] == ["small"]


def test_reserved_tokens_reduce_the_budget():
    prompt = chat_example("p")
    pool = [chat_example(f"c{i}") for i in range(5)]
    one = count_tokens(build_icl_prompt(prompt, pool[:1]))
    assert select(prompt, pool, max_context_tokens=one + 1000, reserved_tokens=1000, max_examples=3) != []
    assert select(prompt, pool, max_context_tokens=one + 1000, reserved_tokens=1001 + one) == []


def test_unknown_strategy_rejected():
    with pytest.raises(ValueError, match="unknown ICL selection strategy"):
        select(POOL[0], POOL, strategy="semantic")


# ---------------------------------------------------------------------- prompt layout


def test_build_icl_prompt_layout_for_tool_calling():
    prompt = tool_example("p", "book")
    built = build_icl_prompt(prompt, [POOL[0], POOL[1]])
    roles = [m["role"] for m in built.messages]
    assert roles == ["system", "user", "assistant", "tool", "user", "assistant", "tool", "user"]
    assert built.messages[0] == prompt.messages[0]
    assert built.messages[-1] == prompt.messages[-1]
    assert built.tools == prompt.tools
    answer = built.messages[2]
    call = answer["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"x": 1}'}  # OpenAI wire form
    assert built.messages[3] == {"role": "tool", "tool_call_id": call["id"], "content": EXAMPLE_TOOL_RESULT}
    ids = [c["id"] for m in built.messages if m.get("tool_calls") for c in m["tool_calls"]]
    assert len(ids) == len(set(ids))


def test_build_icl_prompt_for_chat_and_without_system_message():
    prompt = chat_example("p")
    built = build_icl_prompt(prompt, [chat_example("a")])
    assert built.messages == [
        {"role": "user", "content": "qa qa qa"},
        {"role": "assistant", "content": "answer a"},
        {"role": "user", "content": "qp qp qp"},
    ]
    assert build_icl_prompt(prompt, []).messages == prompt.messages


# ------------------------------------------------------------------ property: budget


@st.composite
def scenarios(draw):
    workload = draw(st.sampled_from(["tool_calling", "chat"]))
    sizes = draw(st.lists(st.integers(min_value=1, max_value=120), min_size=0, max_size=12))
    pool = [
        tool_example(f"e{i}", draw(st.sampled_from(FUNCTIONS)), words=n)
        if workload == "tool_calling"
        else chat_example(f"e{i}", words=n)
        for i, n in enumerate(sizes)
    ]
    prompt_words = draw(st.integers(min_value=1, max_value=150))
    prompt = tool_example("p", "book", prompt_words) if workload == "tool_calling" else chat_example("p", prompt_words)
    if pool and draw(st.booleans()):
        pool.append(prompt)  # the prompt's own record may sit in the pool
    return prompt, pool


@settings(max_examples=200, deadline=None)
@given(
    scenarios(),
    st.integers(min_value=0, max_value=600),
    st.integers(min_value=0, max_value=300),
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=0, max_value=3),
)
def test_budget_never_exceeded(scenario, max_context, reserved, min_examples, max_examples, seed):
    prompt, pool = scenario
    chosen = select(
        prompt,
        pool,
        max_context_tokens=max_context,
        reserved_tokens=reserved,
        min_examples=min_examples,
        max_examples=max_examples,
        seed=seed,
    )
    budget = max_context - reserved
    bare_fits = count_tokens(build_icl_prompt(prompt, [])) <= budget
    if bare_fits:
        assert count_tokens(build_icl_prompt(prompt, chosen)) <= budget
    else:
        assert chosen == []
    ids = [e.record_id for e in chosen]
    assert len(ids) <= max_examples and len(ids) == len(set(ids)) and prompt.record_id not in ids


def test_a_min_above_the_max_never_tops_up_past_the_max():
    # found by test_budget_never_exceeded in CI: min_examples=3, max_examples=2, and one of
    # the first two examples too large for the budget, so the top-up ran to min_examples
    prompt = ChatExample(
        messages=[{"role": "user", "content": "qp"}], record_id="p", workload_id="w",
        workload_type="chat", expected=AssistantMessage(content="answer p"),
    )
    contents = {"e0": "qe0", "e1": " ".join(["qe1"] * 11), "e2": "qe2", "e3": "qe3"}
    pool = [
        ChatExample(
            messages=[{"role": "user", "content": text}], record_id=rid, workload_id="w",
            workload_type="chat", expected=AssistantMessage(content=f"answer {rid}"),
        )
        for rid, text in contents.items()
    ]
    chosen = select(prompt, pool, max_context_tokens=31, reserved_tokens=0, min_examples=3, max_examples=2, seed=0)
    assert len(chosen) <= 2
