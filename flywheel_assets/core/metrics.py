"""Scoring candidate answers against the production model's answers.

Everything here is plain Python (no Dagster) and deterministic except the LLM judge,
which is only as deterministic as the judge model behind it.

Metric definitions (scores are in [0, 1]):

Tool calling, per record (the BFCL AST checker's rules, with the production answer as
the only possible answer):

- Calls are paired in any order (BFCL's parallel checker, `scipy`'s assignment): most
  same-name pairs first, then most pairs with matching arguments.
- ``function_name_accuracy`` (the primary score): 1.0 when the candidate calls the same
  functions as the expected answer, as a multiset of names (same count of each); else 0.0.
- ``function_name_and_args_accuracy``: 1.0 when, in addition, every pair's arguments match.
  Arguments match type-aware: parsed JSON (key order and spacing never matter, a string
  holding a JSON object or array equals that object or array: models double-encode);
  numbers by value (``5 == 5.0``) but never booleans (``True != 1``); a string holding a
  scalar is not coerced (``"1" != 1``); free-text strings after `standardise_string`
  (case, spacing and ``, . / - _ * ^`` never matter, as BFCL); a parameter with an
  ``enum`` in the tool's schema literally (a closed vocabulary); a parameter one side left
  out equals its schema ``default`` on the other; list order matters (as BFCL).
- ``argument_precision`` / ``argument_recall``: matching top-level arguments (defaults
  filled in) over the candidate's / the expected arguments, over all calls (an unpaired
  call's arguments count as wrong; unparseable arguments as one wrong argument). Null when
  the candidate passed no argument / nothing was expected.
- ``schema_valid``: every candidate call's arguments validate against its tool's JSON
  Schema (`flywheel_assets.core.tool_schema`); null when the record has no call or no tool
  with a usable schema. The aggregate ``schema_valid_rate`` is over calls.
- ``hallucinated_tool``: a candidate call names a tool the prompt did not offer.
- ``abstention_error``: ``tool_call_instead_of_text`` (production answered in text),
  ``text_instead_of_tool_call`` (production called a tool); the aggregates are rates over
  the records where that error was possible.
- A tool whose schema is not valid JSON Schema is named in ``reason`` and counted
  (``tools_with_invalid_schema``); its calls are still scored on name and arguments,
  without schema hints.
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
  candidate against the reference from 0 to 10 (``SIMILARITY: n``), scaled to [0, 1]; the
  model, temperature and the SHA-256 of the prompt are recorded with the scores
  (`judge_record`). A failed judge call or a reply `parse_judge_reply` cannot read for sure
  scores ``None``: excluded from the mean, counted as ``judge_errors`` / ``judge_unparsed``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

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
from flywheel_assets.core.tool_schema import ToolCallCheck, check_tool_call, tool_schemas

SimilarityMethod = Literal["judge", "token_f1"]

# --------------------------------------------------------------------------- tool calls

AbstentionError = Literal["tool_call_instead_of_text", "text_instead_of_tool_call"]
# Confusion-table labels of an answer that has no call / a candidate request that failed.
NO_CALL = "(no call)"
FAILED = "(error)"


class ToolCallScore(BaseModel):
    """One record's tool-calling scores (definitions in the module docstring); ``reason``
    says why a score is below 1, or notes a tool whose schema could not be used."""

    function_name: float
    function_name_and_args: float
    argument_precision: float | None = None
    argument_recall: float | None = None
    schema_valid: bool | None = None
    hallucinated_tool: bool = False
    abstention_error: AbstentionError | None = None
    # (expected tool, candidate tool) of every paired or unpaired call, for the confusion table
    confusion: list[tuple[str, str]] = []
    calls_checked: int = 0  # candidate calls whose arguments could be checked against a schema
    calls_schema_valid: int = 0
    invalid_schemas: dict[str, str] = {}  # offered tool -> why its schema is not JSON Schema
    reason: str | None = None


def score_tool_calls(
    expected: AssistantMessage,
    candidate: AssistantMessage | None,
    tools: Sequence[dict[str, Any]] | None = None,
) -> ToolCallScore:
    """Score one answer's tool calls against the expected ones, calls matched in any order.

    ``tools`` are the tools the prompt offered; without them (None) nothing is known about
    schemas, so hallucination and schema validity are not judged and arguments are compared
    without defaults or enums."""
    expected_calls = expected.tool_calls or []
    candidate_calls = (candidate.tool_calls if candidate is not None else None) or []
    checks = [_check(tools, call) for call in candidate_calls] if tools is not None else []
    hints = _schema_hints(tools, expected_calls + candidate_calls)
    comparisons = {
        (i, j): _compare_call(want, got, hints.get(want.function.name))
        for i, want in enumerate(expected_calls)
        for j, got in enumerate(candidate_calls)
        if want.function.name == got.function.name
    }
    pairs = _match_calls(len(expected_calls), len(candidate_calls), comparisons)
    paired_expected = {i for i, _ in pairs}
    paired_candidate = {j for _, j in pairs}
    same_name = [comparisons[pair] for pair in pairs if pair in comparisons]
    compared_expected = {i for i, j in pairs if (i, j) in comparisons}
    compared_candidate = {j for i, j in pairs if (i, j) in comparisons}
    correct = sum(c.correct for c in same_name)
    expected_args = sum(c.expected_args for c in same_name) + sum(
        _argument_count(call) for i, call in enumerate(expected_calls) if i not in compared_expected
    )
    candidate_args = sum(c.candidate_args for c in same_name) + sum(
        _argument_count(call) for j, call in enumerate(candidate_calls) if j not in compared_candidate
    )
    verdicts = [v for v in (_schema_verdict(check) for check in checks) if v is not None]
    confusion = [(expected_calls[i].function.name, candidate_calls[j].function.name) for i, j in pairs]
    confusion += [(call.function.name, NO_CALL) for i, call in enumerate(expected_calls) if i not in paired_expected]
    confusion += [(NO_CALL, call.function.name) for j, call in enumerate(candidate_calls) if j not in paired_candidate]
    names_right = Counter(_names(expected_calls)) == Counter(_names(candidate_calls))
    reason = _tool_call_reason(expected_calls, candidate_calls, pairs, comparisons, names_right)
    invalid = dict(_invalid_schemas(tools, expected_calls + candidate_calls))
    notes = [f"tool {name!r} has an invalid JSON Schema (scored without it): {why}" for name, why in invalid.items()]
    return ToolCallScore(
        function_name=float(names_right),
        function_name_and_args=float(names_right and reason is None),
        argument_precision=correct / candidate_args if candidate_args else None,
        argument_recall=correct / expected_args if expected_args else None,
        schema_valid=all(verdicts) if verdicts else None,
        hallucinated_tool=any(not check.name_offered for check in checks),
        abstention_error=_abstention(expected_calls, candidate_calls),
        confusion=confusion or [(NO_CALL, NO_CALL)],
        calls_checked=len(verdicts),
        calls_schema_valid=sum(verdicts),
        invalid_schemas=invalid,
        reason="; ".join([*([reason] if reason else []), *notes]) or None,
    )


def failed_tool_call_score(expected: AssistantMessage, reason: str) -> ToolCallScore:
    """A candidate request that failed: every score 0 (a failed call is a wrong call, as in
    the reference), no call to judge for precision, schema or abstention."""
    expected_calls = expected.tool_calls or []
    return ToolCallScore(
        function_name=0.0,
        function_name_and_args=0.0,
        argument_recall=0.0 if any(_argument_count(call) for call in expected_calls) else None,
        confusion=[(call.function.name, FAILED) for call in expected_calls] or [(NO_CALL, FAILED)],
        reason=reason,
    )


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


class _CallComparison(NamedTuple):
    """Two same-name calls; argument counts are top-level, defaults filled in."""

    correct: int
    expected_args: int
    candidate_args: int
    difference: str | None  # None: the whole call matches


def _compare_call(want: ToolCall, got: ToolCall, schema: dict[str, Any] | None) -> _CallComparison:
    expected = _normalise_json(want.function.arguments)
    candidate = _normalise_json(got.function.arguments)
    if _unparseable(got):
        return _CallComparison(0, len(expected), 1, f"unparseable arguments {_short(candidate[RAW_ARGUMENTS_KEY])}")
    properties = _properties(schema)
    expected, candidate = _with_defaults(expected, candidate, properties)
    correct = sum(
        1
        for key in expected
        if key in candidate and _difference(expected[key], candidate[key], f"$.{key}", properties.get(key)) is None
    )
    return _CallComparison(
        correct, len(expected), len(candidate), _dict_difference(expected, candidate, "$", properties)
    )


def _match_calls(
    expected_count: int, candidate_count: int, comparisons: dict[tuple[int, int], _CallComparison]
) -> list[tuple[int, int]]:
    """Pair expected and candidate calls in any order (BFCL's parallel checker): most
    same-name pairs first, then most exact pairs, then most matching arguments."""
    if not expected_count or not candidate_count:
        return []
    if expected_count == candidate_count == 1:
        return [(0, 0)]
    from scipy.optimize import linear_sum_assignment  # only parallel calls need an assignment

    big = expected_count + candidate_count + 1
    weights = [[0.0] * candidate_count for _ in range(expected_count)]
    for (i, j), comparison in comparisons.items():
        # lexicographic through scale: a name match outweighs every exact pair, which
        # outweighs every fraction of matching arguments (each below 1)
        weights[i][j] = (
            big * big + big * (comparison.difference is None) + comparison.correct / (comparison.correct + 1)
        )
    rows, columns = linear_sum_assignment(weights, maximize=True)
    return sorted(zip(rows.tolist(), columns.tolist()))


def _tool_call_reason(
    expected: Sequence[ToolCall],
    candidate: Sequence[ToolCall],
    pairs: list[tuple[int, int]],
    comparisons: dict[tuple[int, int], _CallComparison],
    names_right: bool,
) -> str | None:
    if not expected:
        # Curation keeps only records with tool calls, but a hand-made set may not:
        # then the right answer is to call nothing.
        return f"unexpected tool call: got {_names(candidate)} expected none" if candidate else None
    if not candidate:
        return "no tool call"
    if len(candidate) != len(expected):
        return (
            f"wrong number of tool calls: got {len(candidate)} {_names(candidate)} "
            f"expected {len(expected)} {_names(expected)}"
        )
    if not names_right:
        if len(expected) == 1:
            return f"wrong function: got {candidate[0].function.name} expected {expected[0].function.name}"
        return f"wrong functions: got {sorted(_names(candidate))} expected {sorted(_names(expected))}"
    for i, j in pairs:
        difference = comparisons[(i, j)].difference
        if difference is not None:
            where = f"call {j} " if len(expected) > 1 else ""
            return f"arguments differ: {where}{candidate[j].function.name}: {difference}"
    return None


def _abstention(expected: Sequence[ToolCall], candidate: Sequence[ToolCall]) -> AbstentionError | None:
    if candidate and not expected:
        return "tool_call_instead_of_text"
    if expected and not candidate:
        return "text_instead_of_tool_call"
    return None


def _check(tools: Sequence[dict[str, Any]] | None, call: ToolCall) -> ToolCallCheck:
    # unparseable arguments go to the checker as the text the model emitted
    arguments = call.function.arguments[RAW_ARGUMENTS_KEY] if _unparseable(call) else call.function.arguments
    return check_tool_call(tools, call.function.name, arguments)


def _schema_verdict(check: ToolCallCheck) -> bool | None:
    """Did the call's arguments validate? Arguments that are not a JSON object validate
    against no tool; None when there is nothing to validate against."""
    if check.name_offered and not check.arguments_parse:
        return False
    return check.schema_valid


def _usable_schema(check: ToolCallCheck) -> bool:
    return check.schema_valid is not None  # offered, parsed, and a valid JSON Schema


def _schema_hints(tools: Sequence[dict[str, Any]] | None, calls: Sequence[ToolCall]) -> dict[str, dict[str, Any]]:
    """Tool name -> its parameters schema, for the tools whose schema is valid JSON Schema."""
    if tools is None:
        return {}
    schemas = tool_schemas(tools)
    return {
        name: schemas[name]
        for name in {call.function.name for call in calls}
        if schemas.get(name) is not None and _usable_schema(check_tool_call(tools, name, {}))
    }


def _invalid_schemas(tools: Sequence[dict[str, Any]] | None, calls: Sequence[ToolCall]) -> list[tuple[str, str]]:
    if tools is None:
        return []
    found = []
    for name in sorted({call.function.name for call in calls}):
        check = check_tool_call(tools, name, {})
        # offered, arguments fine, no verdict and a problem: the schema itself is broken
        if check.name_offered and check.schema_valid is None and check.problem is not None:
            found.append((name, check.problem))
    return found


def _names(calls: Sequence[ToolCall]) -> list[str]:
    return [call.function.name for call in calls]


def _unparseable(call: ToolCall) -> bool:
    return set(call.function.arguments) == {RAW_ARGUMENTS_KEY}


def _argument_count(call: ToolCall) -> int:
    # unparseable arguments count as one (wrong) argument: the model did say something
    return 1 if _unparseable(call) else len(call.function.arguments)


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


def _properties(schema: Any) -> dict[str, Any]:
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return properties if isinstance(properties, dict) else {}


def _with_defaults(expected: dict, got: dict, properties: dict[str, Any]) -> tuple[dict, dict]:
    """Fill an optional argument one side left out with its schema default, so leaving out
    an argument equals passing its default."""

    def filled(side: dict, other: dict) -> dict:
        defaults = {
            key: _normalise_json(properties[key]["default"])
            for key in other.keys() - side.keys()
            if isinstance(properties.get(key), dict) and "default" in properties[key]
        }
        return {**side, **defaults}

    return filled(expected, got), filled(got, expected)


def _difference(expected: Any, got: Any, path: str, schema: Any = None) -> str | None:
    schema = schema if isinstance(schema, dict) else {}
    if "enum" in schema:
        # a closed vocabulary the tool matches literally: no string normalisation
        matches = _scalars_equal(expected, got)
    elif isinstance(expected, dict) and isinstance(got, dict):
        return _dict_difference(expected, got, path, _properties(schema))
    elif isinstance(expected, list) and isinstance(got, list):
        return _list_difference(expected, got, path, schema.get("items"))
    elif isinstance(expected, str) and isinstance(got, str):
        matches = standardise_string(expected) == standardise_string(got)
    else:
        matches = _scalars_equal(expected, got)
    return None if matches else f"at {path}: got {_short(got)} expected {_short(expected)}"


def _dict_difference(expected: dict, got: dict, path: str, properties: dict[str, Any]) -> str | None:
    expected, got = _with_defaults(expected, got, properties)
    missing = sorted(set(expected) - set(got))
    if missing:
        return f"missing key {path}.{missing[0]}"
    unexpected = sorted(set(got) - set(expected))
    if unexpected:
        return f"unexpected key {path}.{unexpected[0]}"
    for key in sorted(expected):
        difference = _difference(expected[key], got[key], f"{path}.{key}", properties.get(key))
        if difference is not None:
            return difference
    return None


def _list_difference(expected: list, got: list, path: str, items: Any) -> str | None:
    if len(expected) != len(got):
        return f"at {path}: got {len(got)} items expected {len(expected)}"
    for index, (want, have) in enumerate(zip(expected, got)):
        difference = _difference(want, have, f"{path}[{index}]", items)
        if difference is not None:
            return difference
    return None


# BFCL's standardize_string: spacing, case and these separators never make a string argument wrong
_STRING_NOISE = re.compile(r"[\s,./\-_*^]+")


def standardise_string(text: str) -> str:
    """A free-text argument as compared: NFKC, case-folded, without whitespace and the
    separators ``, . / - _ * ^``, single quotes as double ("April 1, 2024" == "april 1 2024")."""
    return _STRING_NOISE.sub("", unicodedata.normalize("NFKC", text).casefold()).replace("'", '"')


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

# Recorded with every judge score: a changed prompt is a different judge.
JUDGE_PROMPT_SHA256 = hashlib.sha256(
    json.dumps({"system": JUDGE_SYSTEM_PROMPT, "user": JUDGE_USER_TEMPLATE}, sort_keys=True).encode()
).hexdigest()
JUDGE_MAX_SCORE = 10.0
JUDGE_ERROR = "judge error"
JUDGE_UNPARSEABLE = "judge reply unparseable"

_NUMBER = r"(-?\d+(?:\.\d+)?)(?!\w)"  # a whole number: "10" never reads as "1", "1O" not at all
# "SIMILARITY: 7", "**Similarity score:** 7", "SIMILARITY = [[7]]", '{"similarity": 7}';
# a trailing "-8" / "to 8" marks a range, which is no score
_LABELLED = re.compile(rf"SIMILARITY(?:\s+SCORE)?[\s*_\"'#:=\[(]*{_NUMBER}(\s*(?:-|–|to)\s*\d)?", re.IGNORECASE)
_OUT_OF_TEN = re.compile(rf"(?<![\w.]){_NUMBER}\s*(?:/|out\s+of)\s*10(?!\w)", re.IGNORECASE)
_BARE_NUMBER = re.compile(rf"^\s*\**\s*{_NUMBER}\s*\**\s*\.?\s*$")
# reasoning models think aloud first (and may try several scores there)
_THINKING = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.IGNORECASE | re.DOTALL)


def build_judge_prompt(expected: AssistantMessage | str, candidate: AssistantMessage | str) -> ChatPrompt:
    user = JUDGE_USER_TEMPLATE.format(expected=message_text(expected), candidate=message_text(candidate))
    return ChatPrompt(messages=[{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}])


def judge_record(judge: ChatBackend | None) -> dict[str, Any] | None:
    """What produced judge scores (model, prompt hash, temperature); None without a judge."""
    if judge is None:
        return None
    return {
        "model": getattr(judge, "model", None) or type(judge).__name__,
        "prompt_sha256": JUDGE_PROMPT_SHA256,
        "temperature": getattr(judge, "temperature", None),
    }


def parse_judge_reply(text: str | None) -> tuple[float | None, str]:
    """Score in [0, 1] from a judge reply, or None with the reason it could not be read.

    Strict on purpose: a reply it cannot read for sure is no score, never a 0.
    Reasoning (``<think>...</think>``) is dropped and the text NFKC-normalised; then the
    last ``SIMILARITY: n`` wins (judges sometimes restate the format first); failing that,
    ``n/10`` or ``n out of 10`` when every such mention agrees; failing that, a reply that
    is a bare number. Any other number is ignored ("on a scale of 0-10" is no 0). No
    score: a range ("7-8"), a value outside 0-10, a fraction below 1 ("0.8": a 0-1 scale?),
    conflicting ``n/10`` mentions, an unfinished ``<think>``.
    """
    if not text or not text.strip():
        return None, f"{JUDGE_UNPARSEABLE}: empty reply"
    answer = unicodedata.normalize("NFKC", _THINKING.sub(" ", text)).strip()
    if re.search(r"<(think|thinking|reasoning)>", answer, re.IGNORECASE):
        return None, f"{JUDGE_UNPARSEABLE}: reasoning never finished"
    raw, problem = _find_judge_number(answer)
    if problem is None and raw is None:
        problem = f"no SIMILARITY score in {_short(answer)}"
    elif problem is None and not 0.0 <= raw <= JUDGE_MAX_SCORE:
        problem = f"score {raw:g} outside 0-10"
    elif problem is None and 0.0 < raw < 1.0:
        problem = f"score {raw:g} looks like a 0-1 scale, asked for 0-10"
    if problem is not None:
        return None, f"{JUDGE_UNPARSEABLE}: {problem}"
    return raw / JUDGE_MAX_SCORE, _short(answer, limit=200)


def _find_judge_number(text: str) -> tuple[float | None, str | None]:
    labelled = list(_LABELLED.finditer(text))
    if labelled:
        last = labelled[-1]
        if last.group(2):
            return None, f"a range, not a score: {_short(last.group(0))}"
        return float(last.group(1)), None
    out_of_ten = {float(value) for value in _OUT_OF_TEN.findall(text)}
    if len(out_of_ten) > 1:
        return None, f"conflicting scores {sorted(out_of_ten)} out of 10"
    if out_of_ten:
        return out_of_ten.pop(), None
    bare = _BARE_NUMBER.match(text)
    return (float(bare.group(1)) if bare else None), None


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


def similarities(
    pairs: Sequence[tuple[AssistantMessage | str, AssistantMessage | str]], judge: ChatBackend | None
) -> tuple[list[tuple[float | None, str | None]], SimilarityMethod]:
    """(expected, candidate) pairs scored by the judge when there is one, else by token F1;
    with the method used. Scores None are judgements that failed (reason says why)."""
    if judge is not None:
        return list(judge_similarities(judge, pairs)), "judge"
    return [_token_f1_outcome(expected, candidate) for expected, candidate in pairs], "token_f1"


def _judge_outcome(completion: Completion) -> tuple[float | None, str]:
    if completion.error is not None:
        return None, f"{JUDGE_ERROR}: {completion.error}"
    if completion.message is None:
        return None, f"{JUDGE_UNPARSEABLE}: no message"
    return parse_judge_reply(completion.message.content)


def _token_f1_outcome(expected: AssistantMessage | str, candidate: AssistantMessage | str) -> tuple[float, str | None]:
    score = token_f1_similarity(message_text(expected), message_text(candidate))
    return score, (None if score == 1.0 else f"token F1 {score:.3f}")


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

    ``scores`` holds, for tool calling, ``function_name_accuracy`` (the primary score),
    ``function_name_and_args_accuracy``, ``argument_precision``, ``argument_recall``,
    ``schema_valid_rate``, ``hallucinated_tool_rate``, ``tool_call_instead_of_text_rate``,
    ``text_instead_of_tool_call_rate`` and ``tools_with_invalid_schema`` (a count); for
    chat ``similarity`` (method in ``similarity_method``), plus the counts ``judge_errors``
    and ``judge_unparsed`` when a judge scored it. ``latency_s`` summarises the successful
    requests only; ``error_count`` counts failed candidate requests (each scored 0);
    ``judge_unparsed_count`` counts records the judge gave no score for (unreadable reply
    or judge error), left out of the similarity mean. ``judge`` records what produced judge
    scores (`judge_record`). ``tool_confusion`` counts expected tool -> candidate tool over
    the paired calls (`NO_CALL`, `FAILED` for the rest). ``rows`` has one dict per record
    with the same keys in every row (see `to_polars`).
    """

    workload_type: WorkloadType
    record_count: int
    scores: dict[str, float | int | None]
    similarity_method: SimilarityMethod | None = None
    judge: dict[str, Any] | None = None
    latency_s: dict[str, float | None]
    tokens_per_second: float | None
    error_count: int
    judge_unparsed_count: int = 0
    tool_confusion: dict[str, dict[str, int]] = {}
    rows: list[dict[str, Any]]

    def to_polars(self):
        """The rows as a polars DataFrame with a fixed schema (so a column that is empty
        in the first rows never trips type inference)."""
        import polars as pl  # imported here: only reporting needs it

        schema = {name: dtype for name, dtype in _ROW_SCHEMA.items() if name in _row_keys(self.workload_type)}
        return pl.DataFrame(self.rows, schema={k: getattr(pl, v) for k, v in schema.items()}, orient="row")

    def tool_confusion_frame(self):
        """The confusion table: one row per expected tool, one column per candidate tool."""
        import polars as pl

        predicted = sorted({name for row in self.tool_confusion.values() for name in row})
        return pl.DataFrame(
            [
                {"expected": tool, **{name: row.get(name, 0) for name in predicted}}
                for tool, row in sorted(self.tool_confusion.items())
            ],
            schema={"expected": pl.String, **{name: pl.Int64 for name in predicted}},
            orient="row",
        )


_ROW_SCHEMA = {
    "record_id": "Utf8",
    "function_name_accuracy": "Float64",
    "function_name_and_args_accuracy": "Float64",
    "argument_precision": "Float64",
    "argument_recall": "Float64",
    "schema_valid": "Boolean",
    "hallucinated_tool": "Boolean",
    "abstention_error": "Utf8",
    "similarity": "Float64",
    "reason": "Utf8",
    "latency_s": "Float64",
    "prompt_tokens": "Int64",
    "completion_tokens": "Int64",
    "error": "Utf8",
}

_TOOL_CALLING_COLUMNS = [
    "function_name_accuracy",
    "function_name_and_args_accuracy",
    "argument_precision",
    "argument_recall",
    "schema_valid",
    "hallucinated_tool",
    "abstention_error",
]


def _row_keys(workload_type: WorkloadType) -> list[str]:
    scores = _TOOL_CALLING_COLUMNS if workload_type == "tool_calling" else ["similarity"]
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
        scored = _score_tool_calling(examples, completions)
    else:
        scored = _score_chat(examples, completions, judge)
    successful = [c.latency_s for c in completions if c.error is None]
    return EvalResult(
        workload_type=workload_type,
        record_count=len(examples),
        latency_s=latency_summary(successful),
        tokens_per_second=tokens_per_second(completions),
        error_count=sum(1 for c in completions if c.error is not None),
        **scored,
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


def _score_tool_calling(examples: Sequence[ChatExample], completions: Sequence[Completion]) -> dict[str, Any]:
    scored = []
    for example, completion in zip(examples, completions):
        failure = _failure_reason(completion)
        scored.append(
            failed_tool_call_score(example.expected, failure)
            if failure
            else score_tool_calls(example.expected, completion.message, example.tools)
        )
    rows = [
        _ordered(
            {
                **_base_row(example, completion),
                "function_name_accuracy": score.function_name,
                "function_name_and_args_accuracy": score.function_name_and_args,
                "argument_precision": score.argument_precision,
                "argument_recall": score.argument_recall,
                "schema_valid": score.schema_valid,
                "hallucinated_tool": score.hallucinated_tool,
                "abstention_error": score.abstention_error,
                "reason": score.reason,
            },
            "tool_calling",
        )
        for example, completion, score in zip(examples, completions, scored)
    ]
    expects_text = [not e.expected.tool_calls for e in examples]
    confusion: dict[str, Counter] = {}
    for score in scored:
        for expected_tool, candidate_tool in score.confusion:
            confusion.setdefault(expected_tool, Counter())[candidate_tool] += 1
    scores = {
        "function_name_accuracy": _mean([s.function_name for s in scored]),
        "function_name_and_args_accuracy": _mean([s.function_name_and_args for s in scored]),
        "argument_precision": _mean([s.argument_precision for s in scored if s.argument_precision is not None]),
        "argument_recall": _mean([s.argument_recall for s in scored if s.argument_recall is not None]),
        "schema_valid_rate": _ratio(sum(s.calls_schema_valid for s in scored), sum(s.calls_checked for s in scored)),
        "hallucinated_tool_rate": _mean([float(s.hallucinated_tool) for s in scored]),
        "tool_call_instead_of_text_rate": _mean(
            [float(s.abstention_error == "tool_call_instead_of_text") for s, text in zip(scored, expects_text) if text]
        ),
        "text_instead_of_tool_call_rate": _mean(
            [
                float(s.abstention_error == "text_instead_of_tool_call")
                for s, text in zip(scored, expects_text)
                if not text
            ]
        ),
        "tools_with_invalid_schema": len({name for s in scored for name in s.invalid_schemas}),
    }
    return {"scores": scores, "rows": rows, "tool_confusion": {k: dict(v) for k, v in confusion.items()}}


def _score_chat(
    examples: Sequence[ChatExample], completions: Sequence[Completion], judge: ChatBackend | None
) -> dict[str, Any]:
    failures = [_failure_reason(c) for c in completions]
    # Failed candidates score 0 without asking the judge: nothing to compare.
    to_judge = [i for i, failure in enumerate(failures) if failure is None]
    outcomes: dict[int, tuple[float | None, str | None]] = {
        i: (0.0, failure) for i, failure in enumerate(failures) if failure is not None
    }
    judged, method = similarities([(examples[i].expected, completions[i].message) for i in to_judge], judge)
    outcomes.update(zip(to_judge, judged))
    rows = [
        _ordered({**_base_row(example, completion), "similarity": outcomes[i][0], "reason": outcomes[i][1]}, "chat")
        for i, (example, completion) in enumerate(zip(examples, completions))
    ]
    unscored = [row["reason"] or "" for row in rows if row["similarity"] is None]
    scores: dict[str, float | int | None] = {
        "similarity": _mean([row["similarity"] for row in rows if row["similarity"] is not None])
    }
    if method == "judge":
        # judgements that gave no score are left out of the mean, never scored 0: counted here
        scores["judge_errors"] = sum(1 for reason in unscored if reason.startswith(JUDGE_ERROR))
        scores["judge_unparsed"] = sum(1 for reason in unscored if reason.startswith(JUDGE_UNPARSEABLE))
    return {
        "scores": scores,
        "rows": rows,
        "similarity_method": method,
        "judge": judge_record(judge),
        "judge_unparsed_count": len(unscored),
    }


def _ordered(row: dict[str, Any], workload_type: WorkloadType) -> dict[str, Any]:
    return {key: row.get(key) for key in _row_keys(workload_type)}


def _pairs(expected: Sequence[Any], candidates: Sequence[Any]) -> list[tuple[Any, Any]]:
    if len(expected) != len(candidates):
        raise ValueError(f"{len(expected)} expected answers but {len(candidates)} candidates")
    return list(zip(expected, candidates))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None
