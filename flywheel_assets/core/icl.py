"""In-context learning: pick a few solved examples and replay them before a prompt.

The ICL evaluation asks a candidate the same prompts as the base evaluation, but with
1-3 examples from the workload's ICL pool inserted as earlier conversation turns, all
within the model's context window (reference defaults: 32768 tokens, 4096 reserved for
the answer).

Which examples (`IclOptions.strategy`):

- ``uniform``: a seeded shuffle of the pool, per prompt.
- ``lexical`` (default): the pool examples whose prompts are most similar to the prompt,
  by TF-IDF cosine similarity (scikit-learn); no model weights, works offline.
- ``embedding``: the same by cosine similarity of embeddings from an OpenAI-compatible
  ``/v1/embeddings`` endpoint (the NVIDIA Data Flywheel Blueprint's "semantic similarity";
  `resources/embeddings.py` calls it and caches vectors by content hash).

Similarity compares the prompts' conversations (their non-system messages), never
answers: selection never looks at the prompt's expected answer, since preferring examples
that call the same function as the answer would leak the answer into the prompt. Ties in
similarity (a prompt sharing no word with the pool) fall back to the uniform order.

With ``cover_tools`` (the default), tool-calling prompts get examples of distinct
functions first: for `uniform` one example per function in turn (functions shuffled);
for the similarity strategies the most similar example of each function, functions in
order of their most similar example (as the Blueprint's relevance/coverage selection).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from flywheel_assets.core.chat import AssistantMessage, ChatExample, ChatPrompt

SelectionStrategy = Literal["uniform", "lexical", "embedding"]
TokenCounter = Callable[[ChatPrompt], int]
# texts -> one row per text (n x dimensions); `resources.embeddings.EmbeddingClient.embed`
Embed = Callable[[list[str]], np.ndarray]

# Content of the placeholder tool results that close an example's tool calls (see
# `example_turns`): strict OpenAI-compatible servers reject an assistant message with
# tool_calls that is not followed by one tool message per call id.
EXAMPLE_TOOL_RESULT = "(example: tool result omitted)"

_SYSTEM_ROLES = ("system", "developer")

# How many further pool candidates to try, beyond the first choice, when dropping
# examples left fewer than `min_examples`; bounds the count_tokens calls per prompt.
_TOP_UP_TRIES = 16


class IclOptions(BaseModel):
    """How ICL examples are chosen; defaults from the reference (and `lexical`)."""

    strategy: SelectionStrategy = "lexical"
    max_context_tokens: int = Field(default=32768, description="context of the candidate")
    reserved_tokens: int = Field(default=4096, description="kept free for the answer")
    min_examples: int = 1
    max_examples: int = 3
    seed: int = 0
    cover_tools: bool = Field(default=True, description="tool calling: examples of distinct functions first")


@dataclass(frozen=True)
class IclChoice:
    """The examples chosen for one prompt, with their similarity (None for `uniform`)."""

    record_id: str
    examples: list[ChatExample]
    scores: list[float | None]

    @property
    def example_ids(self) -> list[str]:
        return [example.record_id for example in self.examples]


@dataclass
class IclPlan:
    """The ICL prompts of an evaluation and how they were chosen."""

    options: IclOptions
    token_budget: int  # tokens the built prompt may take
    prompts: list[ChatPrompt] = field(default_factory=list)
    choices: list[IclChoice] = field(default_factory=list)

    def provenance(self) -> dict[str, Any]:
        """What decided the prompts (part of the evaluation's data version)."""
        return {
            "strategy": self.options.strategy,
            "cover_tools": self.options.cover_tools,
            "token_budget": self.token_budget,
            "examples": {choice.record_id: choice.example_ids for choice in self.choices},
        }

    def summary(self) -> dict[str, Any]:
        shots = [len(choice.examples) for choice in self.choices]
        top = [choice.scores[0] for choice in self.choices if choice.scores and choice.scores[0] is not None]
        return {
            "icl_strategy": self.options.strategy,
            "examples_per_prompt_mean": sum(shots) / max(len(shots), 1),
            "prompts_without_examples": shots.count(0),
            "token_budget": self.token_budget,
            "top_similarity_mean": float(np.mean(top)) if top else None,
        }


def context_budget(options: IclOptions, model_limit: int | None = None, max_new_tokens: int = 0) -> int:
    """Tokens an ICL prompt may take: the configured context less the reserve, and never
    beyond what the model can read (its own limit less the answer it may generate)."""
    context = options.max_context_tokens
    if model_limit is not None:
        context = min(context, model_limit + options.reserved_tokens - max_new_tokens)
    return context - options.reserved_tokens


def plan_icl_prompts(
    prompts: Sequence[ChatExample],
    pool: Sequence[ChatExample],
    options: IclOptions,
    *,
    count_tokens: TokenCounter,
    model_limit: int | None = None,
    max_new_tokens: int = 0,
    embed: Embed | None = None,
) -> IclPlan:
    """Choose each prompt's examples (`select_icl_examples`) and build its ICL prompt."""
    plan = IclPlan(options=options, token_budget=context_budget(options, model_limit, max_new_tokens))
    ranking = rank_pool(prompts, pool, options, embed=embed)
    for prompt in prompts:
        choice = select_icl_examples(
            prompt,
            ranking,
            count_tokens=count_tokens,
            budget=plan.token_budget,
            min_examples=options.min_examples,
            max_examples=options.max_examples,
        )
        plan.choices.append(choice)
        plan.prompts.append(build_icl_prompt(prompt, choice.examples))
    return plan


def select_icl_examples(
    prompt: ChatExample,
    ranking: PoolRanking,
    *,
    count_tokens: TokenCounter,
    budget: int,
    min_examples: int = 1,
    max_examples: int = 3,
) -> IclChoice:
    """Choose up to `max_examples` examples for `prompt`, in `ranking`'s order, within `budget`.

    Guarantee: ``count_tokens(build_icl_prompt(prompt, result)) <= budget`` whenever the
    result is non-empty; when the bare prompt alone does not fit, the result is empty (the
    caller records that). The prompt's own record is never chosen. Deterministic: the same
    prompt, pool (in any order) and options give the same examples.

    How the budget is met: take the first `max_examples` in ranking order; while the
    built prompt is over budget, drop the largest example (by its own token count, so as
    many examples as possible survive). If that leaves fewer than `min_examples`, try up
    to 16 further candidates in ranking order and keep each one that still fits.
    `min_examples` is a target, not a promise: fewer (even zero) come back when the
    budget cannot hold them.
    """
    if max_examples <= 0 or count_tokens(build_icl_prompt(prompt, [])) > budget:
        return IclChoice(prompt.record_id, [], [])
    ranked = ranking.ranked(prompt, max_examples + _TOP_UP_TRIES)
    ordered = [example for example, _ in ranked]
    chosen = _drop_largest_until_fits(prompt, ordered[:max_examples], count_tokens, budget)
    target = min(min_examples, max_examples)  # max_examples bounds the top-up too
    if len(chosen) < target:
        spare = ordered[max_examples : max_examples + _TOP_UP_TRIES]
        chosen = _top_up(prompt, chosen, spare, count_tokens, budget, target)
    score = {example.record_id: value for example, value in ranked}
    return IclChoice(prompt.record_id, chosen, [score[example.record_id] for example in chosen])


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


def prompt_text(example: ChatPrompt) -> str:
    """What similarity compares: the conversation without system messages (never the answer)."""
    return "\n".join(_text(m.get("content")) for m in example.messages if m.get("role") not in _SYSTEM_ROLES)


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


class PoolRanking:
    """The pool in a strategy's order for each prompt, with the similarity of each example.

    Built once per evaluation (the pool is vectorised once); `ranked` costs, per prompt, a
    seeded permutation of the pool and, for the similarity strategies, one product with the
    pool's vectors and one sort, all in numpy (see benchmarks/icl_selection.py).
    """

    def __init__(
        self,
        pool: Sequence[ChatExample],
        options: IclOptions,
        pool_vectors: Any = None,
        prompt_vectors: dict[str, Any] | None = None,
    ) -> None:
        self._pool = unique_by_record_id(pool)
        self._options = options
        self._pool_vectors = pool_vectors  # rows in self._pool's order, unit length
        self._prompt_vectors = prompt_vectors or {}
        self._position = {example.record_id: i for i, example in enumerate(self._pool)}
        # each example's function names as a small int, numbered in sorted order of the names
        keys = [_function_key(example) for example in self._pool]
        code = {key: i for i, key in enumerate(sorted(set(keys)))}
        self._function_codes = np.array([code[key] for key in keys], dtype=np.int64)

    def ranked(self, prompt: ChatExample, limit: int) -> list[tuple[ChatExample, float | None]]:
        """The first `limit` pool examples for `prompt`, never the prompt itself."""
        rng = np.random.default_rng(_prompt_seed(self._options.seed, prompt.record_id))
        # a uniform order: every pool member equally likely at every position
        order = rng.permutation(len(self._pool))
        order = order[order != self._position.get(prompt.record_id, -1)]
        scores = None
        if self._pool_vectors is not None:
            scores = _cosines(self._pool_vectors, self._prompt_vectors[prompt.record_id])
            # most similar first; equal scores keep the uniform order (a stable sort)
            order = order[np.argsort(-scores[order], kind="stable")]
        if self._options.cover_tools and prompt.workload_type == "tool_calling":
            order = self._round_robin_by_function(order, limit, rng if scores is None else None)
        return [(self._pool[i], None if scores is None else round(float(scores[i]), 4)) for i in order[:limit]]

    def _round_robin_by_function(self, order: np.ndarray, limit: int, rng: np.random.Generator | None) -> list[int]:
        """Distinct function names first: one example per function, then a second per
        function, and so on, each function's examples in `order`. Functions come in a
        shuffled order (`rng`), or, without one, in the order of their first example in
        `order` (each function's most similar first)."""
        codes = self._function_codes[order]
        functions, first = np.unique(codes, return_index=True)
        functions = rng.permutation(functions) if rng is not None else functions[np.argsort(first)]
        groups = [order[codes == function][:limit] for function in functions]
        return [int(group[depth]) for depth in range(limit) for group in groups if depth < len(group)]


def _prompt_seed(seed: int, record_id: str) -> int:
    """Seeded per prompt so different prompts see different examples, reproducibly
    (a SHA-256, independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{record_id}".encode()).digest()[:8], "little")


def rank_pool(
    prompts: Sequence[ChatExample], pool: Sequence[ChatExample], options: IclOptions, embed: Embed | None = None
) -> PoolRanking:
    """A `PoolRanking` for `options.strategy`: vectorises the pool and the prompts once."""
    pool = unique_by_record_id(pool)
    if options.strategy == "uniform" or not pool or not prompts:
        return PoolRanking(pool, options)
    pool_texts = [prompt_text(example) for example in pool]
    prompt_texts = [prompt_text(prompt) for prompt in prompts]
    if options.strategy == "lexical":
        pool_vectors, prompt_vectors = _tfidf(pool_texts, prompt_texts)
        if pool_vectors is None:  # no word anywhere in the pool: nothing to compare
            return PoolRanking(pool, options)
    else:
        if embed is None:
            raise ValueError(
                "ICL strategy 'embedding' needs an embeddings endpoint: set FLYWHEEL_EMBEDDINGS_BASE_URL "
                "and FLYWHEEL_EMBEDDINGS_MODEL, or choose FLYWHEEL_ICL_STRATEGY=lexical"
            )
        vectors = _unit_rows(np.asarray(embed(pool_texts + prompt_texts), dtype=np.float32))
        pool_vectors, prompt_vectors = vectors[: len(pool_texts)], vectors[len(pool_texts) :]
    return PoolRanking(
        pool, options, pool_vectors, {prompt.record_id: prompt_vectors[i] for i, prompt in enumerate(prompts)}
    )


def unique_by_record_id(pool: Sequence[ChatExample]) -> list[ChatExample]:
    """One example per record id, sorted by id, so the pool's order is irrelevant."""
    by_id: dict[str, ChatExample] = {}
    for example in pool:
        by_id.setdefault(example.record_id, example)
    return [by_id[record_id] for record_id in sorted(by_id)]


def _tfidf(pool_texts: list[str], prompt_texts: list[str]):
    """TF-IDF rows (unit length, so a dot product is the cosine) fitted on the pool."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # only this strategy needs it

    # sublinear tf: a word said twice is not twice as similar; the pattern keeps 1-letter words
    vectorizer = TfidfVectorizer(sublinear_tf=True, strip_accents="unicode", token_pattern=r"(?u)\b\w+\b")
    try:
        pool_vectors = vectorizer.fit_transform(pool_texts)
    except ValueError:  # empty vocabulary
        return None, None
    return pool_vectors, vectorizer.transform(prompt_texts)


def _cosines(pool_vectors: Any, prompt_vector: Any) -> np.ndarray:
    """Dot products of unit rows (sparse TF-IDF or dense embeddings) with one unit vector."""
    products = pool_vectors @ prompt_vector.T
    return np.asarray(products.toarray() if hasattr(products, "toarray") else products).ravel()


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def _function_key(example: ChatExample) -> tuple[str, ...]:
    return tuple(call.function.name for call in example.expected.tool_calls or [])


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
