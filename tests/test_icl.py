"""ICL selection: the token budget is never exceeded, 1-3 examples, never the prompt itself,
deterministic, distinct functions first; and the layout of the built prompt."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel_assets.core.chat import AssistantMessage, ChatExample, ChatPrompt, FunctionCall, ToolCall
from flywheel_assets.core.icl import (
    EXAMPLE_TOOL_RESULT,
    IclOptions,
    build_icl_prompt,
    context_budget,
    plan_icl_prompts,
)

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


def select(prompt, pool, strategy="uniform", **options):
    """The examples chosen for one prompt (uniform unless asked: these tests are about the budget)."""
    plan = plan_icl_prompts([prompt], pool, IclOptions(strategy=strategy, **options), count_tokens=count_tokens)
    return plan.choices[0].examples


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
    with pytest.raises(ValueError, match="strategy"):
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
        messages=[{"role": "user", "content": "qp"}],
        record_id="p",
        workload_id="w",
        workload_type="chat",
        expected=AssistantMessage(content="answer p"),
    )
    contents = {"e0": "qe0", "e1": " ".join(["qe1"] * 11), "e2": "qe2", "e3": "qe3"}
    pool = [
        ChatExample(
            messages=[{"role": "user", "content": text}],
            record_id=rid,
            workload_id="w",
            workload_type="chat",
            expected=AssistantMessage(content=f"answer {rid}"),
        )
        for rid, text in contents.items()
    ]
    chosen = select(prompt, pool, max_context_tokens=31, reserved_tokens=0, min_examples=3, max_examples=2, seed=0)
    assert len(chosen) <= 2


# ------------------------------------------------------------------ similarity strategies

TOPICS = {
    "t_weather": "what is the weather forecast in Paris tomorrow",
    "t_flight": "book a flight from Berlin to Rome on Friday",
    "t_hotel": "find a cheap hotel near the station in Madrid",
    "t_time": "what time is it now in Tokyo",
    "t_train": "which train goes to Lyon this evening",
}


def topic_example(record_id: str, text: str, function: str = "lookup", answer: str = "") -> ChatExample:
    return ChatExample(
        record_id=record_id,
        workload_id="w",
        workload_type="tool_calling",
        messages=[{"role": "system", "content": "You are a travel agent."}, {"role": "user", "content": text}],
        tools=TOOLS,
        expected=AssistantMessage(tool_calls=[ToolCall(function=FunctionCall(name=function, arguments={"q": answer}))]),
    )


TOPIC_POOL = [topic_example(rid, text, function=rid.removeprefix("t_")) for rid, text in TOPICS.items()]


def test_lexical_picks_the_most_similar_prompt_first():
    prompt = topic_example("p", "will it rain in Paris tomorrow? weather please")
    plan = plan_icl_prompts(
        [prompt], TOPIC_POOL, IclOptions(strategy="lexical", max_examples=1), count_tokens=count_tokens
    )
    (choice,) = plan.choices
    assert choice.example_ids == ["t_weather"]
    assert choice.scores[0] > 0
    hotel = topic_example("q", "is there a hotel in Madrid near the station")
    assert select(hotel, TOPIC_POOL, strategy="lexical", max_examples=1)[0].record_id == "t_hotel"


def test_similarity_order_and_scores_recorded_in_the_plan():
    prompt = topic_example("p", "weather in Paris")
    plan = plan_icl_prompts(
        [prompt], TOPIC_POOL, IclOptions(strategy="lexical", max_examples=3), count_tokens=count_tokens
    )
    choice = plan.choices[0]
    assert choice.scores == sorted(choice.scores, reverse=True)
    assert plan.provenance() == {
        "strategy": "lexical",
        "cover_tools": True,
        "token_budget": 32768 - 4096,
        "examples": {"p": choice.example_ids},
    }
    summary = plan.summary()
    assert summary["icl_strategy"] == "lexical" and summary["top_similarity_mean"] == choice.scores[0]
    uniform = plan_icl_prompts([prompt], TOPIC_POOL, IclOptions(strategy="uniform"), count_tokens=count_tokens)
    assert uniform.choices[0].scores == [None] * 3 and uniform.summary()["top_similarity_mean"] is None


def test_the_choice_never_looks_at_the_expected_answer():
    for strategy in ("uniform", "lexical"):
        chosen = {
            tuple(
                e.record_id
                for e in select(
                    topic_example("p", "weather in Paris", function=f, answer=a),
                    TOPIC_POOL,
                    strategy=strategy,
                    max_examples=2,
                )
            )
            for f, a in (("weather", "Paris"), ("hotel", "Madrid station hotel"), ("flight", "Berlin Rome"))
        }
        assert len(chosen) == 1, strategy


def test_cover_tools_prefers_distinct_functions_among_similar_examples():
    pool = [
        topic_example("w1", "weather in Paris today", "weather"),
        topic_example("w2", "weather in Paris tomorrow", "weather"),
        topic_example("w3", "weather in Paris this week", "weather"),
        topic_example("h1", "hotel in Paris", "hotel"),
        topic_example("f1", "flight to Rome", "flight"),
    ]
    prompt = topic_example("p", "weather in Paris")
    similar = select(prompt, pool, strategy="lexical", cover_tools=False)
    assert {e.record_id for e in similar} == {"w1", "w2", "w3"}
    covering = select(prompt, pool, strategy="lexical", cover_tools=True)
    assert covering[0].record_id in {"w1", "w2", "w3"}
    assert [e.expected.tool_calls[0].function.name for e in covering] == ["weather", "hotel", "flight"]


def test_lexical_ties_fall_back_to_the_seeded_uniform_order():
    pool = [chat_example(f"c{i:02d}") for i in range(30)]  # no word shared with the prompt
    prompt = ChatExample(
        record_id="p",
        workload_id="w",
        workload_type="chat",
        messages=[{"role": "user", "content": "zzz"}],
        expected=AssistantMessage(content="a"),
    )
    for seed in range(3):
        lexical = [e.record_id for e in select(prompt, pool, strategy="lexical", seed=seed)]
        assert lexical == [e.record_id for e in select(prompt, pool, strategy="uniform", seed=seed)]


def test_lexical_is_deterministic_and_never_selects_the_prompt():
    prompts = [topic_example(f"p{i}", text) for i, text in enumerate(TOPICS.values())]
    pool = TOPIC_POOL + prompts
    shuffled = list(pool)
    random.Random(3).shuffle(shuffled)
    options = IclOptions(strategy="lexical")
    first = plan_icl_prompts(prompts, pool, options, count_tokens=count_tokens)
    again = plan_icl_prompts(prompts, shuffled, options, count_tokens=count_tokens)
    assert [c.example_ids for c in first.choices] == [c.example_ids for c in again.choices]
    assert all(c.record_id not in c.example_ids for c in first.choices)


def test_context_budget_never_exceeds_the_model_limit():
    options = IclOptions(max_context_tokens=32768, reserved_tokens=4096)
    assert context_budget(options) == 32768 - 4096
    # a 2,048-token model generating up to 128 new tokens: the prompt may take 1,920
    assert context_budget(options, model_limit=2048, max_new_tokens=128) == 2048 - 128
    assert context_budget(options, model_limit=10**9, max_new_tokens=128) == 32768 - 4096


def test_embedding_strategy_without_an_endpoint_is_refused_not_replaced():
    with pytest.raises(ValueError, match="FLYWHEEL_EMBEDDINGS_BASE_URL"):
        plan_icl_prompts([TOPIC_POOL[0]], TOPIC_POOL, IclOptions(strategy="embedding"), count_tokens=count_tokens)
