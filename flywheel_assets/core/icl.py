"""In-context learning: pick a few solved examples and replay them before a prompt.

The ICL evaluation asks a candidate the same prompts as the base evaluation, but with
1-3 examples from the workload's ICL pool inserted as earlier conversation turns, all
within the model's context window (reference defaults: 32768 tokens, 4096 reserved for
the answer).

Selection never looks at the prompt's expected answer: preferring examples that call the
same function as the answer would leak the answer into the prompt.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from typing import Any, Callable, Literal, Sequence

from flywheel_assets.core.chat import AssistantMessage, ChatExample, ChatPrompt

SelectionStrategy = Literal["uniform"]
TokenCounter = Callable[[ChatPrompt], int]

# Content of the placeholder tool results that close an example's tool calls (see
# `example_turns`): strict OpenAI-compatible servers reject an assistant message with
# tool_calls that is not followed by one tool message per call id.
EXAMPLE_TOOL_RESULT = "(example: tool result omitted)"

_SYSTEM_ROLES = ("system", "developer")

# How many further pool candidates to try, beyond the first choice, when dropping
# examples left fewer than `min_examples`; bounds the count_tokens calls per prompt.
_TOP_UP_TRIES = 16


def select_icl_examples(
    prompt: ChatExample,
    pool: Sequence[ChatExample],
    *,
    count_tokens: TokenCounter,
    max_context_tokens: int = 32768,
    reserved_tokens: int = 4096,
    min_examples: int = 1,
    max_examples: int = 3,
    seed: int = 0,
    strategy: SelectionStrategy = "uniform",
) -> list[ChatExample]:
    """Choose up to `max_examples` examples from `pool` for `prompt` within the budget.

    Guarantee: ``count_tokens(build_icl_prompt(prompt, result)) <= max_context_tokens -
    reserved_tokens`` whenever the result is non-empty; when the bare prompt alone does
    not fit, the result is empty (the caller records that). The prompt's own record is
    never chosen. Deterministic: the same prompt, pool (in any order) and seed give the
    same examples.

    How the budget is met: take the first `max_examples` in strategy order; while the
    built prompt is over budget, drop the largest example (by its own token count, so as
    many examples as possible survive). If that leaves fewer than `min_examples`, try up
    to 16 further candidates in strategy order and keep each one that still fits.
    `min_examples` is a target, not a promise: fewer (even zero) come back when the
    budget cannot hold them.
    """
    budget = max_context_tokens - reserved_tokens
    if max_examples <= 0 or count_tokens(build_icl_prompt(prompt, [])) > budget:
        return []
    ordered = _strategy_order(prompt, pool, seed, strategy)
    chosen = _drop_largest_until_fits(prompt, ordered[:max_examples], count_tokens, budget)
    target = min(min_examples, max_examples)  # max_examples bounds the top-up too
    if len(chosen) < target:
        spare = ordered[max_examples : max_examples + _TOP_UP_TRIES]
        chosen = _top_up(prompt, chosen, spare, count_tokens, budget, target)
    return chosen


def build_icl_prompt(prompt: ChatPrompt, examples: Sequence[ChatExample]) -> ChatPrompt:
    """The prompt with each example replayed as earlier turns, after the system message(s).

    Layout: the prompt's leading system messages, then for each example its non-system
    messages and its expected answer (tool calls in OpenAI wire form, arguments as a JSON
    string, each closed by a placeholder tool result), then the rest of the prompt. Tools
    are the prompt's own: examples come from the same workload, and adding tools would
    change what the candidate is allowed to do compared with production.
    """
    head, tail = _split_system(prompt.messages)
    turns = [message for index, example in enumerate(examples) for message in example_turns(example, index)]
    return ChatPrompt(messages=[*head, *turns, *tail], tools=prompt.tools)


def example_turns(example: ChatExample, index: int = 0) -> list[dict[str, Any]]:
    """One example as chat turns: its conversation without system messages, then its answer."""
    conversation = [m for m in example.messages if m.get("role") not in _SYSTEM_ROLES]
    answer = _assistant_wire_message(example.expected, index)
    return [*conversation, answer, *_placeholder_tool_results(answer)]


# ------------------------------------------------------------------------ building turns


def _split_system(messages: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Leading system (or developer) messages, and everything after them."""
    count = 0
    while count < len(messages) and messages[count].get("role") in _SYSTEM_ROLES:
        count += 1
    return list(messages[:count]), list(messages[count:])


def _assistant_wire_message(message: AssistantMessage, index: int) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": "assistant", "content": message.content}
    if message.tool_calls:
        wire["tool_calls"] = [
            {
                # ids must be unique within the conversation; examples lose theirs
                "id": f"icl_{index}_{call_index}",
                "type": "function",
                "function": {
                    "name": call.function.name,
                    "arguments": json.dumps(call.function.arguments, ensure_ascii=False),
                },
            }
            for call_index, call in enumerate(message.tool_calls)
        ]
    return wire


def _placeholder_tool_results(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"role": "tool", "tool_call_id": call["id"], "content": EXAMPLE_TOOL_RESULT}
        for call in answer.get("tool_calls", [])
    ]


# ------------------------------------------------------------------------------ strategy


def _strategy_order(
    prompt: ChatExample, pool: Sequence[ChatExample], seed: int, strategy: SelectionStrategy
) -> list[ChatExample]:
    if strategy != "uniform":
        raise ValueError(f"unknown ICL selection strategy {strategy!r}; known: 'uniform'")
    candidates = _unique_candidates(prompt, pool)
    # Seeded per prompt so different prompts see different examples, reproducibly
    # (random.Random hashes a str seed with SHA-512, independent of PYTHONHASHSEED).
    rng = random.Random(f"{seed}:{prompt.record_id}")
    if prompt.workload_type == "tool_calling":
        return _round_robin_by_function(candidates, rng)
    return _spread_over_pool(candidates, rng)


def _unique_candidates(prompt: ChatExample, pool: Sequence[ChatExample]) -> list[ChatExample]:
    """Pool minus the prompt itself, one per record id, sorted so pool order is irrelevant."""
    by_id: dict[str, ChatExample] = {}
    for example in pool:
        if example.record_id != prompt.record_id:
            by_id.setdefault(example.record_id, example)
    return [by_id[record_id] for record_id in sorted(by_id)]


def _function_key(example: ChatExample) -> tuple[str, ...]:
    return tuple(call.function.name for call in example.expected.tool_calls or [])


def _round_robin_by_function(candidates: list[ChatExample], rng: random.Random) -> list[ChatExample]:
    """Distinct function names first: one example per function (group order shuffled),
    then a second per function, and so on."""
    groups: dict[tuple[str, ...], list[ChatExample]] = defaultdict(list)
    for example in candidates:
        groups[_function_key(example)].append(example)
    keys = sorted(groups)
    rng.shuffle(keys)
    for key in keys:
        rng.shuffle(groups[key])
    order = []
    for depth in range(max((len(g) for g in groups.values()), default=0)):
        order.extend(groups[key][depth] for key in keys if depth < len(groups[key]))
    return order


def _spread_over_pool(candidates: list[ChatExample], rng: random.Random) -> list[ChatExample]:
    """A seeded shuffle: every pool member is equally likely at every position."""
    order = list(candidates)
    rng.shuffle(order)
    return order


# -------------------------------------------------------------------------------- budget


def _fits(prompt: ChatExample, examples: Sequence[ChatExample], count_tokens: TokenCounter, budget: int) -> bool:
    return count_tokens(build_icl_prompt(prompt, examples)) <= budget


def _drop_largest_until_fits(
    prompt: ChatExample, chosen: list[ChatExample], count_tokens: TokenCounter, budget: int
) -> list[ChatExample]:
    sizes = {e.record_id: count_tokens(ChatPrompt(messages=example_turns(e))) for e in chosen}
    chosen = list(chosen)
    while chosen and not _fits(prompt, chosen, count_tokens, budget):
        largest = max(chosen, key=lambda e: (sizes[e.record_id], e.record_id))
        chosen.remove(largest)
    return chosen


def _top_up(
    prompt: ChatExample,
    chosen: list[ChatExample],
    spare: Sequence[ChatExample],
    count_tokens: TokenCounter,
    budget: int,
    min_examples: int,
) -> list[ChatExample]:
    chosen = list(chosen)
    for example in spare:
        if len(chosen) >= min_examples:
            break
        if _fits(prompt, [*chosen, example], count_tokens, budget):
            chosen.append(example)
    return chosen
