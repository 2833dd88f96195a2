"""Scoring candidate answers against the production model's answers.

Everything here is plain Python (no Dagster) and deterministic except the LLM judge,
which is only as deterministic as the judge model behind it.

Metric definitions (scores are in [0, 1]):

- ``function_name_accuracy`` (tool calling, per record): 1.0 when the candidate makes the
  same tool calls as the expected answer, compared as *ordered lists* by function name
  (same count, same name at each position); else 0.0. Ordered because the reference
  compares the ``tool_calls`` lists position by position and because call order can carry
  meaning (look up, then book).
- ``function_name_and_args_accuracy`` (tool calling, per record): 1.0 when, in addition,
  the arguments of each call equal the expected ones as parsed JSON: dict equality (key
  order and whitespace never matter), nested values compared recursively, numbers compared
  by value (``1 == 1.0``) but never equal to booleans (``True != 1``), and a string value
  that holds a JSON object or array compares equal to that object or array (models often
  double-encode nested arguments). A string holding a JSON scalar is *not* coerced
  (``"1" != 1``): the type of a scalar argument is part of a correct call.
- Aggregates are the mean over all records; a record whose candidate failed (error, no
  message) scores 0 (a failed call is a wrong call, as in the reference).
- ``token_f1_similarity`` (chat, deterministic): token-level F1 between the normalised
  candidate and expected texts. Normalisation: Unicode NFKC, lower case, every character
  that is not a letter, digit or underscore becomes a space, split on whitespace. With the
  multiset overlap ``c = |tokens(candidate) ∩ tokens(expected)|`` (a token counts
  ``min(count_in_candidate, count_in_expected)`` times),
  ``precision = c / |candidate|``, ``recall = c / |expected|`` and
  ``F1 = 2·precision·recall / (precision + recall)`` (0 when ``c == 0``). Two empty texts
  score 1.0; exactly one empty text scores 0.0. It is order-insensitive (a bag of words),
  linear-time, and the same measure SQuAD uses for free-text answers.
- ``judge similarity`` (chat, when a judge is configured): the judge model rates the
  candidate against the reference from 0 to 10 (``SIMILARITY: n``), scaled to [0, 1]. An
  unparseable reply scores ``None``: excluded from the mean, counted as
  ``judge_unparsed``.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from typing import Any, Literal, Sequence

from pydantic import BaseModel

from flywheel_assets.core.chat import (
    AssistantMessage,
    ChatBackend,
    ChatExample,
    ChatPrompt,
    Completion,
    ToolCall,
    WorkloadType,
)

SimilarityMethod = Literal["judge", "token_f1"]

# --------------------------------------------------------------------------- tool calls


class ToolCallScore(BaseModel):
    """One record's tool-calling scores; ``reason`` says why a score is below 1."""

    function_name: float
    function_name_and_args: float
    reason: str | None = None


def score_tool_calls(expected: AssistantMessage, candidate: AssistantMessage | None) -> ToolCallScore:
    """Score one candidate answer's tool calls against the expected ones (ordered lists)."""
    expected_calls = expected.tool_calls or []
    candidate_calls = (candidate.tool_calls if candidate is not None else None) or []
    if not expected_calls:
        # Curation keeps only records with tool calls, but a hand-made set may not:
        # then the right answer is to call nothing.
        if candidate_calls:
            return _wrong(f"unexpected tool call: got {_names(candidate_calls)} expected none")
        return ToolCallScore(function_name=1.0, function_name_and_args=1.0)
    if not candidate_calls:
        return _wrong("no tool call")
    if len(candidate_calls) != len(expected_calls):
        return _wrong(
            f"wrong number of tool calls: got {len(candidate_calls)} {_names(candidate_calls)} "
            f"expected {len(expected_calls)} {_names(expected_calls)}"
        )
    name_reason = _first_name_mismatch(expected_calls, candidate_calls)
    if name_reason is not None:
        return _wrong(name_reason)
    args_reason = _first_arguments_mismatch(expected_calls, candidate_calls)
    if args_reason is not None:
        return ToolCallScore(function_name=1.0, function_name_and_args=0.0, reason=args_reason)
    return ToolCallScore(function_name=1.0, function_name_and_args=1.0)


def function_name_accuracy(
    expected: Sequence[AssistantMessage], candidates: Sequence[AssistantMessage | None]
) -> float | None:
    """Mean per-record function-name score; None for an empty set."""
    return _mean([score_tool_calls(e, c).function_name for e, c in _pairs(expected, candidates)])


def function_name_and_args_accuracy(
    expected: Sequence[AssistantMessage], candidates: Sequence[AssistantMessage | None]
) -> float | None:
    """Mean per-record function-name-and-arguments score; None for an empty set."""
    return _mean([score_tool_calls(e, c).function_name_and_args for e, c in _pairs(expected, candidates)])


def arguments_difference(expected: Any, candidate: Any) -> str | None:
    """None when two argument values are equal as parsed JSON, else where they first differ."""
    return _difference(_normalise_json(expected), _normalise_json(candidate), "$")


def _wrong(reason: str) -> ToolCallScore:
    return ToolCallScore(function_name=0.0, function_name_and_args=0.0, reason=reason)


def _names(calls: Sequence[ToolCall]) -> list[str]:
    return [call.function.name for call in calls]


def _first_name_mismatch(expected: Sequence[ToolCall], candidate: Sequence[ToolCall]) -> str | None:
    for index, (want, got) in enumerate(zip(expected, candidate)):
        if want.function.name != got.function.name:
            where = f" (call {index})" if len(expected) > 1 else ""
            return f"wrong function{where}: got {got.function.name} expected {want.function.name}"
    return None


def _first_arguments_mismatch(expected: Sequence[ToolCall], candidate: Sequence[ToolCall]) -> str | None:
    for index, (want, got) in enumerate(zip(expected, candidate)):
        difference = arguments_difference(want.function.arguments, got.function.arguments)
        if difference is not None:
            where = f"call {index} " if len(expected) > 1 else ""
            return f"arguments differ: {where}{got.function.name}: {difference}"
    return None


# Key under which an inference client keeps argument text that was not valid JSON
# (see resources/openai_compatible.py); such a call is scored wrong, never crashes.
RAW_ARGUMENTS_KEY = "__raw__"


def _normalise_json(value: Any) -> Any:
    """Parse JSON-encoded containers inside strings, recursively."""
    if isinstance(value, str):
        parsed = _parse_json_container(value)
        return value if parsed is None else _normalise_json(parsed)
    if isinstance(value, dict):
        return {str(key): _normalise_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise_json(item) for item in value]
    return value


def _parse_json_container(text: str) -> dict | list | None:
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[":
        return None
    try:
        parsed = json.loads(stripped)
    except ValueError:
        return None
    return parsed if isinstance(parsed, (dict, list)) else None


def _difference(expected: Any, got: Any, path: str) -> str | None:
    if isinstance(expected, dict) and isinstance(got, dict):
        return _dict_difference(expected, got, path)
    if isinstance(expected, list) and isinstance(got, list):
        return _list_difference(expected, got, path)
    if _scalars_equal(expected, got):
        return None
    return f"at {path}: got {_short(got)} expected {_short(expected)}"


def _dict_difference(expected: dict, got: dict, path: str) -> str | None:
    if path == "$" and set(got) == {RAW_ARGUMENTS_KEY} and RAW_ARGUMENTS_KEY not in expected:
        return f"unparseable arguments {_short(got[RAW_ARGUMENTS_KEY])}"
    missing = sorted(set(expected) - set(got))
    if missing:
        return f"missing key {path}.{missing[0]}"
    unexpected = sorted(set(got) - set(expected))
    if unexpected:
        return f"unexpected key {path}.{unexpected[0]}"
    for key in sorted(expected):
        difference = _difference(expected[key], got[key], f"{path}.{key}")
        if difference is not None:
            return difference
    return None


def _list_difference(expected: list, got: list, path: str) -> str | None:
    if len(expected) != len(got):
        return f"at {path}: got {len(got)} items expected {len(expected)}"
    for index, (want, have) in enumerate(zip(expected, got)):
        difference = _difference(want, have, f"{path}[{index}]")
        if difference is not None:
            return difference
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalars_equal(expected: Any, got: Any) -> bool:
    if _is_number(expected) and _is_number(got):
        return expected == got  # Python compares int and float exactly: 1 == 1.0
    # type() check keeps True from equalling 1 and "1" from equalling 1
    return type(expected) is type(got) and expected == got


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------- chat similarity

_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalise_tokens(text: str) -> list[str]:
    """NFKC, lower case, punctuation to spaces, split on whitespace."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split()


def token_f1_similarity(expected: str, candidate: str) -> float:
    """Token-level F1 in [0, 1] (formula in the module docstring)."""
    expected_tokens = normalise_tokens(expected)
    candidate_tokens = normalise_tokens(candidate)
    if not expected_tokens and not candidate_tokens:
        return 1.0
    if not expected_tokens or not candidate_tokens:
        return 0.0
    overlap = sum((Counter(expected_tokens) & Counter(candidate_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(candidate_tokens)
    recall = overlap / len(expected_tokens)
    return 2 * precision * recall / (precision + recall)


def message_text(message: AssistantMessage | str | None) -> str:
    """What a chat answer says: its content, plus its tool calls as JSON when it has any."""
    if message is None:
        return ""
    if isinstance(message, str):
        return message
    parts = [message.content or ""]
    for call in message.tool_calls or []:
        parts.append(json.dumps({"name": call.function.name, "arguments": call.function.arguments}, sort_keys=True))
    return "\n".join(part for part in parts if part)


# ---------------------------------------------------------------------------- LLM judge

JUDGE_SYSTEM_PROMPT = (
    "You are an impartial judge. You compare a candidate answer with a reference answer "
    "to the same request and rate how similar they are in meaning and usefulness, from 0 "
    "(unrelated or contradictory) to 10 (equivalent). Wording differences alone do not "
    "lower the score."
)

JUDGE_USER_TEMPLATE = (
    "Reference answer:\n<reference>\n{expected}\n</reference>\n\n"
    "Candidate answer:\n<candidate>\n{candidate}\n</candidate>\n\n"
    "Give one short sentence of reasoning, then end with a line of the form "
    "'SIMILARITY: n' where n is an integer from 0 to 10."
)

# tolerates markdown emphasis around the label: "**SIMILARITY:** 7", "SIMILARITY = 7"
_SIMILARITY_LINE = re.compile(r"SIMILARITY[\s*:=]*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_OUT_OF_TEN = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out\s+of)\s*10\b", re.IGNORECASE)
_BARE_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*\.?\s*$")
JUDGE_MAX_SCORE = 10.0


def build_judge_prompt(expected: AssistantMessage | str, candidate: AssistantMessage | str) -> ChatPrompt:
    user = JUDGE_USER_TEMPLATE.format(expected=message_text(expected), candidate=message_text(candidate))
    return ChatPrompt(
        messages=[{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]
    )


def parse_judge_reply(text: str | None) -> tuple[float | None, str]:
    """Score in [0, 1] from a judge reply, or None with the reason it could not be read.

    Looks for ``SIMILARITY: n`` (the last one wins: judges sometimes restate the format
    first), then ``n/10`` or ``n out of 10``, then a reply that is a bare number. Any
    other number is ignored on purpose: "on a scale of 0-10" must not read as a 0.
    """
    if not text or not text.strip():
        return None, "judge reply unparseable: empty reply"
    raw = _find_judge_number(text)
    if raw is None:
        return None, f"judge reply unparseable: no SIMILARITY score in {_short(text.strip())}"
    if not 0.0 <= raw <= JUDGE_MAX_SCORE:
        return None, f"judge reply unparseable: score {raw:g} outside 0-10"
    return raw / JUDGE_MAX_SCORE, _short(text.strip(), limit=200)


def _find_judge_number(text: str) -> float | None:
    for pattern in (_SIMILARITY_LINE, _OUT_OF_TEN):
        matches = pattern.findall(text)
        if matches:
            return float(matches[-1])
    bare = _BARE_NUMBER.match(text)
    return float(bare.group(1)) if bare else None


def judge_similarity(
    judge: ChatBackend, expected: AssistantMessage | str, candidate: AssistantMessage | str
) -> tuple[float | None, str]:
    """Ask the judge for a 0-10 similarity; return (score in [0, 1] or None, reason)."""
    return judge_similarities(judge, [(expected, candidate)])[0]


def judge_similarities(
    judge: ChatBackend, pairs: Sequence[tuple[AssistantMessage | str, AssistantMessage | str]]
) -> list[tuple[float | None, str]]:
    """Batch form of `judge_similarity`: one `complete` call so the backend can run the
    judge prompts concurrently."""
    if not pairs:
        return []
    completions = judge.complete([build_judge_prompt(expected, candidate) for expected, candidate in pairs])
    return [_judge_outcome(completion) for completion in completions]


def _judge_outcome(completion: Completion) -> tuple[float | None, str]:
    if completion.error is not None:
        return None, f"judge error: {completion.error}"
    if completion.message is None:
        return None, "judge reply unparseable: no message"
    return parse_judge_reply(completion.message.content)


# ------------------------------------------------------------------ latency, throughput


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between closest ranks
    (numpy's default), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99 and mean of request latencies in seconds (None when empty)."""
    return {
        "p50": percentile(latencies_s, 50),
        "p95": percentile(latencies_s, 95),
        "p99": percentile(latencies_s, 99),
        "mean": _mean(list(latencies_s)),
    }


def tokens_per_second(completions: Sequence[Completion]) -> float | None:
    """Generation speed seen by one request: completion tokens of the successful requests
    divided by their summed latency. Independent of how many requests ran at once, so
    candidates measured at different concurrency stay comparable. None when nothing
    succeeded or no time was measured."""
    ok = [c for c in completions if c.error is None and c.message is not None]
    total_time = sum(c.latency_s for c in ok)
    if not ok or total_time <= 0:
        return None
    return sum(c.completion_tokens for c in ok) / total_time


# ----------------------------------------------------------------------- whole records


class EvalResult(BaseModel):
    """Scores of one candidate on one evaluation set.

    ``scores`` holds ``function_name_accuracy`` and ``function_name_and_args_accuracy``
    for tool calling, ``similarity`` for chat (method in ``similarity_method``).
    ``latency_s`` summarises the successful requests only; ``error_count`` counts failed
    candidate requests (each scored 0); ``judge_unparsed_count`` counts records the judge
    gave no score for (unreadable reply or judge error), left out of the similarity mean.
    ``rows`` has one dict per record with the same keys in every row (see `to_polars`).
    """

    workload_type: WorkloadType
    record_count: int
    scores: dict[str, float | None]
    similarity_method: SimilarityMethod | None = None
    latency_s: dict[str, float | None]
    tokens_per_second: float | None
    error_count: int
    judge_unparsed_count: int = 0
    rows: list[dict[str, Any]]

    def to_polars(self):
        """The rows as a polars DataFrame with a fixed schema (so a column that is empty
        in the first rows never trips type inference)."""
        import polars as pl  # imported here: only reporting needs it

        schema = {name: dtype for name, dtype in _ROW_SCHEMA.items() if name in _row_keys(self.workload_type)}
        return pl.DataFrame(self.rows, schema={k: getattr(pl, v) for k, v in schema.items()}, orient="row")


_ROW_SCHEMA = {
    "record_id": "Utf8",
    "function_name_accuracy": "Float64",
    "function_name_and_args_accuracy": "Float64",
    "similarity": "Float64",
    "reason": "Utf8",
    "latency_s": "Float64",
    "prompt_tokens": "Int64",
    "completion_tokens": "Int64",
    "error": "Utf8",
}


def _row_keys(workload_type: WorkloadType) -> list[str]:
    scores = (
        ["function_name_accuracy", "function_name_and_args_accuracy"]
        if workload_type == "tool_calling"
        else ["similarity"]
    )
    return ["record_id", *scores, "reason", "latency_s", "prompt_tokens", "completion_tokens", "error"]


def score_records(
    workload_type: WorkloadType,
    examples: Sequence[ChatExample],
    completions: Sequence[Completion],
    judge: ChatBackend | None = None,
) -> EvalResult:
    """Score a candidate's completions against the examples' expected answers."""
    if len(examples) != len(completions):
        raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
    if workload_type == "tool_calling":
        scores, rows = _score_tool_calling(examples, completions)
        unparsed, method = 0, None
    else:
        scores, rows, unparsed, method = _score_chat(examples, completions, judge)
    successful = [c.latency_s for c in completions if c.error is None]
    return EvalResult(
        workload_type=workload_type,
        record_count=len(examples),
        scores=scores,
        similarity_method=method,
        latency_s=latency_summary(successful),
        tokens_per_second=tokens_per_second(completions),
        error_count=sum(1 for c in completions if c.error is not None),
        judge_unparsed_count=unparsed,
        rows=rows,
    )


def _base_row(example: ChatExample, completion: Completion) -> dict[str, Any]:
    return {
        "record_id": example.record_id,
        "latency_s": completion.latency_s,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "error": completion.error,
    }


def _failure_reason(completion: Completion) -> str | None:
    if completion.error is not None:
        return f"error: {completion.error}"
    if completion.message is None:
        return "no answer"
    return None


def _score_tool_calling(
    examples: Sequence[ChatExample], completions: Sequence[Completion]
) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    rows = []
    for example, completion in zip(examples, completions):
        failure = _failure_reason(completion)
        score = _wrong(failure) if failure else score_tool_calls(example.expected, completion.message)
        rows.append(
            {
                **_base_row(example, completion),
                "function_name_accuracy": score.function_name,
                "function_name_and_args_accuracy": score.function_name_and_args,
                "reason": score.reason,
            }
        )
    scores = {
        "function_name_accuracy": _mean([r["function_name_accuracy"] for r in rows]),
        "function_name_and_args_accuracy": _mean([r["function_name_and_args_accuracy"] for r in rows]),
    }
    return scores, [_ordered(row, "tool_calling") for row in rows]


def _score_chat(
    examples: Sequence[ChatExample], completions: Sequence[Completion], judge: ChatBackend | None
) -> tuple[dict[str, float | None], list[dict[str, Any]], int, SimilarityMethod]:
    failures = [_failure_reason(c) for c in completions]
    # Failed candidates score 0 without asking the judge: nothing to compare.
    to_judge = [i for i, failure in enumerate(failures) if failure is None]
    outcomes: dict[int, tuple[float | None, str | None]] = {
        i: (0.0, failure) for i, failure in enumerate(failures) if failure is not None
    }
    pairs = [(examples[i].expected, completions[i].message) for i in to_judge]
    if judge is not None:
        method: SimilarityMethod = "judge"
        outcomes.update(zip(to_judge, judge_similarities(judge, pairs)))
    else:
        method = "token_f1"
        outcomes.update(zip(to_judge, (_token_f1_outcome(e, c) for e, c in pairs)))
    rows = [
        _ordered({**_base_row(example, completion), "similarity": outcomes[i][0], "reason": outcomes[i][1]}, "chat")
        for i, (example, completion) in enumerate(zip(examples, completions))
    ]
    unparsed = sum(1 for row in rows if row["similarity"] is None)
    scores = {"similarity": _mean([row["similarity"] for row in rows if row["similarity"] is not None])}
    return scores, rows, unparsed, method


def _token_f1_outcome(expected: AssistantMessage, candidate: AssistantMessage) -> tuple[float, str | None]:
    score = token_f1_similarity(message_text(expected), message_text(candidate))
    return score, (None if score == 1.0 else f"token F1 {score:.3f}")


def _ordered(row: dict[str, Any], workload_type: WorkloadType) -> dict[str, Any]:
    return {key: row.get(key) for key in _row_keys(workload_type)}


def _pairs(expected: Sequence[Any], candidates: Sequence[Any]) -> list[tuple[Any, Any]]:
    if len(expected) != len(candidates):
        raise ValueError(f"{len(expected)} expected answers but {len(candidates)} candidates")
    return list(zip(expected, candidates))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
