"""Metrics: hand-computed cases for tool calls, chat similarity, the judge and aggregates."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel_assets.core.chat import (
    AssistantMessage,
    ChatExample,
    ChatPrompt,
    Completion,
    FunctionCall,
    ToolCall,
)
from flywheel_assets.core.metrics import (
    JUDGE_PROMPT_SHA256,
    NO_CALL,
    RAW_ARGUMENTS_KEY,
    build_judge_prompt,
    function_name_accuracy,
    function_name_and_args_accuracy,
    judge_similarity,
    latency_summary,
    parse_judge_reply,
    score_records,
    score_tool_calls,
    standardise_string,
    token_f1_similarity,
    tokens_per_second,
)


def calls(*pairs: tuple[str, dict]) -> AssistantMessage:
    return AssistantMessage(
        tool_calls=[ToolCall(function=FunctionCall(name=name, arguments=args)) for name, args in pairs]
    )


def text(content: str | None) -> AssistantMessage:
    return AssistantMessage(content=content)


# ------------------------------------------------------------------ tool-call scoring


def test_identical_call_scores_one_without_reason():
    score = score_tool_calls(calls(("get_weather", {"city": "Paris"})), calls(("get_weather", {"city": "Paris"})))
    assert (score.function_name, score.function_name_and_args, score.reason) == (1.0, 1.0, None)


def test_argument_key_order_does_not_matter():
    expected = calls(("book", {"from": "A", "to": "B", "seats": 2}))
    candidate = calls(("book", {"seats": 2, "to": "B", "from": "A"}))
    assert score_tool_calls(expected, candidate).function_name_and_args == 1.0


def test_nested_json_compared_recursively():
    expected = calls(("search", {"filter": {"tags": ["a", {"b": 2, "c": [1, 2]}], "limit": 5}}))
    same = calls(("search", {"filter": {"limit": 5, "tags": ["a", {"c": [1, 2], "b": 2}]}}))
    different = calls(("search", {"filter": {"limit": 5, "tags": ["a", {"c": [1, 3], "b": 2}]}}))
    assert score_tool_calls(expected, same).function_name_and_args == 1.0
    score = score_tool_calls(expected, different)
    assert (score.function_name, score.function_name_and_args) == (1.0, 0.0)
    assert score.reason == "arguments differ: search: at $.filter.tags[1].c[1]: got 3 expected 2"


def test_list_order_inside_arguments_matters():
    score = score_tool_calls(calls(("f", {"ids": [1, 2]})), calls(("f", {"ids": [2, 1]})))
    assert score.function_name_and_args == 0.0


def test_int_and_float_equal_but_not_bool_or_string():
    expected = calls(("f", {"n": 1}))
    assert score_tool_calls(expected, calls(("f", {"n": 1.0}))).function_name_and_args == 1.0
    assert score_tool_calls(expected, calls(("f", {"n": True}))).function_name_and_args == 0.0
    assert score_tool_calls(expected, calls(("f", {"n": "1"}))).function_name_and_args == 0.0


def test_json_string_argument_equals_the_object_it_encodes():
    expected = calls(("f", {"payload": {"x": 1, "y": [1, 2]}}))
    candidate = calls(("f", {"payload": '{"y": [1, 2.0], "x": 1}'}))
    assert score_tool_calls(expected, candidate).function_name_and_args == 1.0
    # and the other way round: the reference double-encoded, the candidate did not
    assert score_tool_calls(candidate, expected).function_name_and_args == 1.0


def test_plain_string_that_is_not_json_is_compared_as_text():
    expected = calls(("f", {"q": "{not json"}))
    assert score_tool_calls(expected, calls(("f", {"q": "{not json"}))).function_name_and_args == 1.0


def test_wrong_function():
    score = score_tool_calls(calls(("get_weather", {})), calls(("get_time", {})))
    assert (score.function_name, score.function_name_and_args) == (0.0, 0.0)
    assert score.reason == "wrong function: got get_time expected get_weather"


@pytest.mark.parametrize("candidate", [None, text("It is sunny."), AssistantMessage(tool_calls=[])])
def test_no_tool_call(candidate):
    score = score_tool_calls(calls(("get_weather", {"city": "Paris"})), candidate)
    assert (score.function_name, score.function_name_and_args, score.reason) == (0.0, 0.0, "no tool call")


def test_unparseable_arguments_score_zero_on_arguments_only():
    candidate = calls(("get_weather", {RAW_ARGUMENTS_KEY: '{"city": Paris'}))
    score = score_tool_calls(calls(("get_weather", {"city": "Paris"})), candidate)
    assert (score.function_name, score.function_name_and_args) == (1.0, 0.0)
    assert score.reason.startswith("arguments differ: get_weather: unparseable arguments")


def test_missing_and_unexpected_keys_named():
    expected = calls(("f", {"a": 1, "b": 2}))
    assert score_tool_calls(expected, calls(("f", {"a": 1}))).reason == "arguments differ: f: missing key $.b"
    extra = calls(("f", {"a": 1, "b": 2, "c": 3}))
    assert score_tool_calls(expected, extra).reason == "arguments differ: f: unexpected key $.c"


def test_parallel_calls_match_in_any_order():
    expected = calls(("lookup", {"id": 1}), ("book", {"id": 1}))
    assert score_tool_calls(expected, calls(("lookup", {"id": 1}), ("book", {"id": 1}))).function_name_and_args == 1.0
    swapped = score_tool_calls(expected, calls(("book", {"id": 1}), ("lookup", {"id": 1})))
    assert (swapped.function_name, swapped.function_name_and_args, swapped.reason) == (1.0, 1.0, None)
    fewer = score_tool_calls(expected, calls(("lookup", {"id": 1})))
    assert fewer.function_name == 0.0
    assert fewer.reason == "wrong number of tool calls: got 1 ['lookup'] expected 2 ['lookup', 'book']"
    second_args = score_tool_calls(expected, calls(("book", {"id": 2}), ("lookup", {"id": 1})))
    assert (second_args.function_name, second_args.function_name_and_args) == (1.0, 0.0)
    assert second_args.reason == "arguments differ: call 0 book: at $.id: got 2 expected 1"
    other = score_tool_calls(expected, calls(("lookup", {"id": 1}), ("cancel", {"id": 1})))
    assert other.reason == "wrong functions: got ['cancel', 'lookup'] expected ['book', 'lookup']"


def test_parallel_calls_of_one_tool_pair_by_arguments():
    # the same tool twice: each candidate call finds the expected call with its arguments
    expected = calls(("weather", {"city": "Paris", "unit": "c"}), ("weather", {"city": "Rome", "unit": "c"}))
    candidate = calls(("weather", {"city": "Rome", "unit": "c"}), ("weather", {"city": "Paris", "unit": "f"}))
    score = score_tool_calls(expected, candidate)
    assert (score.function_name, score.function_name_and_args) == (1.0, 0.0)
    # Rome pairs with Rome (2 of 2), Paris with Paris (1 of 2): 3 of 4 arguments right
    assert score.argument_precision == score.argument_recall == 0.75
    assert score.reason == 'arguments differ: call 1 weather: at $.unit: got "f" expected "c"'
    assert sorted(score.confusion) == [("weather", "weather"), ("weather", "weather")]


def test_expected_no_call_rewards_no_call():
    assert score_tool_calls(text("hi"), text("hello")).function_name_and_args == 1.0
    assert score_tool_calls(text("hi"), calls(("f", {}))).function_name == 0.0


def test_aggregates_are_means_over_records():
    expected = [calls(("f", {"a": 1}))] * 4
    candidates = [calls(("f", {"a": 1})), calls(("f", {"a": 2})), calls(("g", {"a": 1})), None]
    assert function_name_accuracy(expected, candidates) == 0.5
    assert function_name_and_args_accuracy(expected, candidates) == 0.25
    assert function_name_accuracy([], []) is None
    with pytest.raises(ValueError):
        function_name_accuracy(expected, candidates[:2])


# ------------------------------------------------ BFCL-style arguments, schema, abstention


def tool(name: str, properties: dict | None = None, required: Sequence[str] = ()) -> dict:
    schema = {"type": "object", "properties": properties or {}, "required": list(required)}
    return {"type": "function", "function": {"name": name, "description": name, "parameters": schema}}


WEATHER = tool(
    "get_weather",
    {
        "city": {"type": "string"},
        "days": {"type": "integer", "default": 1},
        "unit": {"type": "string", "enum": ["Celsius", "Fahrenheit"], "default": "Celsius"},
        "detail": {"type": "boolean"},
    },
    required=["city"],
)
REFUND = tool("refund", {"order_id": {"type": "string"}, "amount": {"type": "number"}}, ["order_id", "amount"])
TOOLS = [WEATHER, REFUND]


@pytest.mark.parametrize(
    ("expected", "candidate", "match"),
    [
        ({"amount": 5}, {"amount": 5.0}, True),  # integer and float by value
        ({"amount": 12.5}, {"amount": 12.50}, True),
        ({"amount": 5}, {"amount": "5"}, False),  # a string never stands for a number
        ({"amount": 1}, {"amount": True}, False),  # nor a boolean
        ({"order_id": "ORD-1234"}, {"order_id": "ord 1234"}, True),  # BFCL's string standardisation
        ({"order_id": "April 1, 2024"}, {"order_id": "april 1 2024"}, True),
        ({"order_id": "ＯＲＤ１"}, {"order_id": "ord1"}, True),  # NFKC folds full width
        ({"order_id": "ORD-1234"}, {"order_id": "ORD-1235"}, False),
    ],
)
def test_type_aware_argument_comparison(expected, candidate, match):
    score = score_tool_calls(calls(("refund", expected)), calls(("refund", candidate)), TOOLS)
    assert score.function_name_and_args == float(match)
    assert score.argument_precision == score.argument_recall == float(match)


def test_standardise_string_is_bfcls():
    assert standardise_string("New York, NY") == standardise_string("new-york ny") == "newyorkny"
    assert standardise_string("it's") == 'it"s'


def test_missing_optional_argument_equals_its_default():
    expected = calls(("get_weather", {"city": "Paris", "days": 1, "unit": "Celsius"}))
    # left out: both optional arguments have defaults equal to the expected values
    omitted = score_tool_calls(expected, calls(("get_weather", {"city": "Paris"})), TOOLS)
    assert (omitted.function_name_and_args, omitted.argument_precision, omitted.argument_recall) == (1.0, 1.0, 1.0)
    # the other way round: production left them out, the candidate spelled out the defaults
    spelled = score_tool_calls(calls(("get_weather", {"city": "Paris"})), expected, TOOLS)
    assert spelled.function_name_and_args == 1.0 and spelled.argument_precision == 1.0
    # a default that is not the expected value is a wrong argument
    other = score_tool_calls(
        calls(("get_weather", {"city": "Paris", "days": 3})), calls(("get_weather", {"city": "Paris"})), TOOLS
    )
    assert other.reason == "arguments differ: get_weather: at $.days: got 1 expected 3"
    assert other.argument_recall == 0.5 and other.argument_precision == 0.5  # days=1 filled in on the candidate's side
    # an optional argument without a default is simply missing
    no_default = score_tool_calls(
        calls(("get_weather", {"city": "Paris", "detail": True})), calls(("get_weather", {"city": "Paris"})), TOOLS
    )
    assert no_default.reason == "arguments differ: get_weather: missing key $.detail"
    assert (no_default.argument_precision, no_default.argument_recall) == (1.0, 0.5)
    # without the tools, nothing is known about defaults
    assert score_tool_calls(expected, calls(("get_weather", {"city": "Paris"}))).function_name_and_args == 0.0


def test_enum_values_compare_literally():
    expected = calls(("get_weather", {"city": "Paris", "unit": "Fahrenheit"}))
    assert (
        score_tool_calls(
            expected, calls(("get_weather", {"city": "paris", "unit": "Fahrenheit"})), TOOLS
        ).function_name_and_args
        == 1.0
    )
    lowered = score_tool_calls(expected, calls(("get_weather", {"city": "Paris", "unit": "fahrenheit"})), TOOLS)
    assert lowered.function_name_and_args == 0.0 and lowered.schema_valid is False  # the tool would reject it too
    # without a schema it is free text, compared standardised
    assert (
        score_tool_calls(
            expected, calls(("get_weather", {"city": "Paris", "unit": "fahrenheit"}))
        ).function_name_and_args
        == 1.0
    )


def test_argument_precision_and_recall_hand_computed():
    expected = calls(("f", {"a": 1, "b": 2, "c": 3}))
    score = score_tool_calls(expected, calls(("f", {"a": 1, "b": 5, "d": 4})))
    assert score.argument_precision == pytest.approx(1 / 3)  # a right, b wrong, d extra
    assert score.argument_recall == pytest.approx(1 / 3)  # a right, b wrong, c missing
    # a call to the wrong function: its arguments are all wrong
    wrong = score_tool_calls(calls(("f", {"a": 1})), calls(("g", {"a": 1})))
    assert (wrong.argument_precision, wrong.argument_recall) == (0.0, 0.0)
    # no call: nothing to be precise about, everything expected is missed
    none = score_tool_calls(calls(("f", {"a": 1})), text("hi"))
    assert (none.argument_precision, none.argument_recall) == (None, 0.0)
    both_empty = score_tool_calls(calls(("f", {})), calls(("f", {})))
    assert (both_empty.argument_precision, both_empty.argument_recall, both_empty.function_name_and_args) == (
        None,
        None,
        1.0,
    )


def test_schema_validity_of_the_candidates_calls():
    assert (
        score_tool_calls(
            calls(("refund", {"order_id": "A", "amount": 5})), calls(("refund", {"order_id": "A", "amount": 5})), TOOLS
        ).schema_valid
        is True
    )
    wrong_type = score_tool_calls(
        calls(("refund", {"order_id": "A", "amount": 5})), calls(("refund", {"order_id": "A", "amount": "5"})), TOOLS
    )
    assert wrong_type.schema_valid is False
    missing = score_tool_calls(
        calls(("refund", {"order_id": "A", "amount": 5})), calls(("refund", {"order_id": "A"})), TOOLS
    )
    assert missing.schema_valid is False and (missing.calls_checked, missing.calls_schema_valid) == (1, 0)
    parallel = score_tool_calls(
        calls(("refund", {"order_id": "A", "amount": 5}), ("get_weather", {"city": "X"})),
        calls(("refund", {"order_id": "A", "amount": 5}), ("get_weather", {"city": 7})),
        TOOLS,
    )
    assert parallel.schema_valid is False and (parallel.calls_checked, parallel.calls_schema_valid) == (2, 1)
    unparseable = score_tool_calls(
        calls(("refund", {"order_id": "A", "amount": 5})),
        calls(("refund", {RAW_ARGUMENTS_KEY: '{"order_id": A'})),
        TOOLS,
    )
    assert unparseable.schema_valid is False
    assert (unparseable.argument_precision, unparseable.argument_recall) == (0.0, 0.0)
    assert score_tool_calls(calls(("refund", {})), text("no"), TOOLS).schema_valid is None  # no call
    bare = [{"type": "function", "function": {"name": "ping"}}]  # no parameters schema
    assert score_tool_calls(calls(("ping", {})), calls(("ping", {})), bare).schema_valid is None


def test_hallucinated_tool():
    score = score_tool_calls(
        calls(("refund", {"order_id": "A", "amount": 5})), calls(("issue_voucher", {"order_id": "A"})), TOOLS
    )
    assert score.hallucinated_tool is True and score.function_name == 0.0
    assert score.schema_valid is None  # nothing to validate against
    assert score.confusion == [("refund", "issue_voucher")]
    offered = score_tool_calls(
        calls(("refund", {"order_id": "A", "amount": 5})), calls(("get_weather", {"city": "A"})), TOOLS
    )
    assert offered.hallucinated_tool is False and offered.function_name == 0.0  # wrong, but offered
    assert score_tool_calls(calls(("refund", {})), calls(("refund", {}))).hallucinated_tool is False  # tools unknown


def test_abstention_errors_both_ways():
    called = score_tool_calls(
        text("Your refund is on its way."), calls(("refund", {"order_id": "A", "amount": 5})), TOOLS
    )
    assert called.abstention_error == "tool_call_instead_of_text"
    assert called.confusion == [(NO_CALL, "refund")]
    talked = score_tool_calls(calls(("refund", {"order_id": "A", "amount": 5})), text("I will refund you."), TOOLS)
    assert talked.abstention_error == "text_instead_of_tool_call"
    assert talked.confusion == [("refund", NO_CALL)]
    assert score_tool_calls(text("hi"), text("hello"), TOOLS).abstention_error is None
    assert score_tool_calls(calls(("refund", {})), calls(("get_weather", {})), TOOLS).abstention_error is None


def test_invalid_tool_schema_is_reported_and_the_call_still_scored():
    broken = [
        {
            "type": "function",
            "function": {
                "name": "refund",
                "parameters": {"type": "object", "properties": {"amount": {"type": "money"}}},
            },
        }
    ]
    score = score_tool_calls(calls(("refund", {"amount": 5})), calls(("refund", {"amount": 5.0})), broken)
    assert score.function_name == 1.0 and score.function_name_and_args == 1.0
    assert score.schema_valid is None
    assert "refund" in score.invalid_schemas
    assert score.reason.startswith("tool 'refund' has an invalid JSON Schema (scored without it)")
    result = score_records(
        "tool_calling",
        [example("a", calls(("refund", {"amount": 5})), tools=broken)],
        [Completion(message=calls(("refund", {"amount": 5})))],
    )
    assert result.scores["tools_with_invalid_schema"] == 1 and result.scores["function_name_accuracy"] == 1.0
    assert result.scores["schema_valid_rate"] is None


# ------------------------------------------------------------------- chat similarity


def test_token_f1_hand_computed():
    # overlap {the, cat} = 2; precision 2/4, recall 2/3; F1 = 2*(1/2)(2/3)/(1/2+2/3) = 4/7
    assert token_f1_similarity("The cat sat.", "the cat ran away") == pytest.approx(4 / 7)


def test_token_f1_normalises_case_punctuation_and_width():
    assert token_f1_similarity("Hello, World!", "hello   world") == 1.0
    assert token_f1_similarity("ＡＢＣ", "abc") == 1.0  # NFKC folds full-width letters


def test_token_f1_counts_repeated_tokens_once_per_occurrence():
    # candidate "a a a", expected "a b": overlap min(3,1)=1; P=1/3, R=1/2; F1 = 0.4
    assert token_f1_similarity("a b", "a a a") == pytest.approx(0.4)


def test_token_f1_empty_edge_cases():
    assert token_f1_similarity("", "") == 1.0
    assert token_f1_similarity("...", "") == 1.0  # punctuation only normalises to nothing
    assert token_f1_similarity("something", "") == 0.0
    assert token_f1_similarity("", "something") == 0.0
    assert token_f1_similarity("a", "b") == 0.0


@given(st.text(max_size=60), st.text(max_size=60))
def test_token_f1_bounded_symmetric_and_identity(a, b):
    score = token_f1_similarity(a, b)
    assert 0.0 <= score <= 1.0
    assert score == pytest.approx(token_f1_similarity(b, a))
    assert token_f1_similarity(a, a) == 1.0


# ----------------------------------------------------------------------------- judge


# Replies as judges give them (GPT-4-class, Llama 3 / Mixtral instruct, reasoning models,
# JSON mode); the score each one means, or why it is no score.
@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("Both say it rains.\nSIMILARITY: 7", 0.7),
        ("The candidate is equivalent.\nSIMILARITY: 10", 1.0),  # the reference's regex read "10" as 1
        ("SIMILARITY: 10/10", 1.0),
        ("similarity = 10", 1.0),
        ("**SIMILARITY:** 3", 0.3),
        ("**Similarity**: 4.5", 0.45),
        ("SIMILARITY: **8**", 0.8),
        ("Similarity score: 9", 0.9),
        ("SIMILARITY: [[6]]", 0.6),  # MT-Bench habit
        ('{"reasoning": "same facts", "similarity": 8}', 0.8),  # JSON mode
        ("SIMILARITY: 8.\n", 0.8),
        ("Format: SIMILARITY: n\nThey differ.\nSIMILARITY: 2", 0.2),  # format restated first
        ("SIMILARITY: 4\n\nBoth answers list 10 steps.", 0.4),  # other numbers ignored
        ("<think>Maybe SIMILARITY: 3? No, they agree.</think>\nSIMILARITY: 9", 0.9),  # reasoning dropped
        ("ＳＩＭＩＬＡＲＩＴＹ： ８", 0.8),  # full-width, NFKC
        ("I would give it 8/10.", 0.8),
        ("9 out of 10", 0.9),
        ("Score: 7/10. Overall 7/10.", 0.7),  # repeated, agreeing
        ("  6  ", 0.6),
        ("10", 1.0),
        ("0", 0.0),
        ("SIMILARITY: 0", 0.0),
    ],
)
def test_judge_reply_parsed(reply, score):
    parsed, reason = parse_judge_reply(reply)
    assert parsed == pytest.approx(score)
    assert reason


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("On a scale of 0-10 they are close.", "no SIMILARITY score"),
        ("The answers are similar.", "no SIMILARITY score"),
        ("SIMILARITY: n", "no SIMILARITY score"),
        ("SIMILARITY: ten", "no SIMILARITY score"),
        ("SIMILARITY: 1O", "no SIMILARITY score"),  # a typo is no 1
        ("", "empty reply"),
        ("   \n", "empty reply"),
        (None, "empty reply"),
        ("SIMILARITY: 11", "outside 0-10"),
        ("SIMILARITY: -1", "outside 0-10"),
        ("SIMILARITY: 85", "outside 0-10"),  # a percentage
        ("SIMILARITY: 0.8", "0-1 scale"),
        ("SIMILARITY: 7-8", "a range"),
        ("SIMILARITY: 7 to 8", "a range"),
        ("Style 3/10, content 9/10.", "conflicting scores"),
        ("<think>The reference says rain, the candidate", "reasoning never finished"),  # cut at max_tokens
    ],
)
def test_judge_reply_unparseable(reply, why):
    parsed, reason = parse_judge_reply(reply)
    assert parsed is None
    assert "unparseable" in reason and why in reason


class ScriptedJudge:
    """A ChatBackend that answers from a list and records the prompts it saw."""

    def __init__(self, replies: Sequence[str | Exception]) -> None:
        self.replies = list(replies)
        self.prompts: list[ChatPrompt] = []

    def complete(self, prompts: Sequence[ChatPrompt]) -> list[Completion]:
        self.prompts.extend(prompts)
        out = []
        for _ in prompts:
            reply = self.replies.pop(0)
            if isinstance(reply, Exception):
                out.append(Completion(error=str(reply)))
            else:
                out.append(Completion(message=AssistantMessage(content=reply), latency_s=0.1))
        return out


def test_judge_similarity_prompts_with_both_answers_and_scales():
    judge = ScriptedJudge(["Close enough.\nSIMILARITY: 8"])
    score, reason = judge_similarity(judge, text("It rains in Paris."), "Paris: rain today.")
    assert score == pytest.approx(0.8)
    assert "SIMILARITY: 8" in reason
    user = judge.prompts[0].messages[-1]["content"]
    assert "It rains in Paris." in user and "Paris: rain today." in user and "SIMILARITY" in user


def test_failed_judgements_are_counted_apart_and_never_scored():
    examples = [example(str(i), text(f"answer {i}"), "chat") for i in range(3)]
    judge = ScriptedJudge([RuntimeError("HTTP 503"), "SIMILARITY: 7-8", "SIMILARITY: 6"])
    judge.model, judge.temperature = "judge-70b", 0.0
    result = score_records("chat", examples, [Completion(message=text("x"))] * 3, judge=judge)
    assert result.scores == {"similarity": pytest.approx(0.6), "judge_errors": 1, "judge_unparsed": 1}
    assert [row["similarity"] for row in result.rows] == [None, None, pytest.approx(0.6)]
    assert result.judge["model"] == "judge-70b" and result.judge["temperature"] == 0.0


def test_judge_prompt_hash_pins_the_prompt():
    # a changed prompt is a new judge: its scores are not comparable with the old ones, and
    # the gold-set calibration (judge_calibration) must be redone; update this hash knowingly
    assert JUDGE_PROMPT_SHA256 == "549dfe9348f29b4a942269738849fd517d9e99731eea4e0bfb08932d88d6c536"


def test_judge_error_gives_none_with_reason():
    score, reason = judge_similarity(ScriptedJudge([RuntimeError("HTTP 500")]), "a", "b")
    assert score is None and reason == "judge error: HTTP 500"


def test_judge_prompt_shows_tool_calls_of_a_message():
    prompt = build_judge_prompt(calls(("f", {"a": 1})), text("x"))
    assert '"name": "f"' in prompt.messages[-1]["content"]


# ---------------------------------------------------------------- latency, tokens/s


def test_latency_summary_hand_computed():
    summary = latency_summary([4.0, 1.0, 3.0, 2.0])
    assert summary["p50"] == pytest.approx(2.5)
    assert summary["p95"] == pytest.approx(3.85)  # rank 0.95*3 = 2.85 -> 3 + 0.85*(4-3)
    assert summary["p99"] == pytest.approx(3.97)
    assert summary["mean"] == pytest.approx(2.5)
    assert latency_summary([]) == {"p50": None, "p95": None, "p99": None, "mean": None}
    assert latency_summary([0.2])["p99"] == pytest.approx(0.2)


def test_tokens_per_second_uses_successful_requests_only():
    completions = [
        Completion(message=text("a"), latency_s=1.0, completion_tokens=30),
        Completion(message=text("b"), latency_s=2.0, completion_tokens=60),
        Completion(error="boom", latency_s=5.0, completion_tokens=0),
    ]
    assert tokens_per_second(completions) == pytest.approx(30.0)
    assert tokens_per_second([Completion(error="x")]) is None


# ------------------------------------------------------------------------- records


def example(
    record_id: str, expected: AssistantMessage, workload_type: str = "tool_calling", tools: list | None = None
) -> ChatExample:
    return ChatExample(
        record_id=record_id,
        workload_id="w",
        workload_type=workload_type,
        messages=[{"role": "user", "content": f"question {record_id}"}],
        tools=tools,
        expected=expected,
    )


def test_score_records_tool_calling():
    expected = calls(("get_weather", {"city": "Paris"}))
    examples = [example(str(i), expected) for i in range(4)]
    completions = [
        Completion(message=calls(("get_weather", {"city": "Paris"})), latency_s=0.1, completion_tokens=10),
        Completion(message=calls(("get_weather", {"city": "Rome"})), latency_s=0.3, completion_tokens=10),
        Completion(message=text("sunny"), latency_s=0.2, completion_tokens=20),
        Completion(error="timed out after 5s calling http://x/v1/chat/completions (model m)", latency_s=5.0),
    ]
    result = score_records("tool_calling", examples, completions, judge=None)
    assert result.scores["function_name_accuracy"] == 0.5
    assert result.scores["function_name_and_args_accuracy"] == 0.25
    assert result.similarity_method is None
    assert result.error_count == 1 and result.record_count == 4
    assert result.latency_s["p50"] == pytest.approx(0.2)  # errors excluded from latency
    assert result.tokens_per_second == pytest.approx(40 / 0.6)
    reasons = [row["reason"] for row in result.rows]
    assert reasons[0] is None
    assert reasons[1] == 'arguments differ: get_weather: at $.city: got "Rome" expected "Paris"'
    assert reasons[2] == "no tool call"
    assert reasons[3].startswith("error: timed out")
    assert result.rows[3]["error"].startswith("timed out")
    frame = result.to_polars()
    assert frame.columns == [
        "record_id",
        "function_name_accuracy",
        "function_name_and_args_accuracy",
        "argument_precision",
        "argument_recall",
        "schema_valid",
        "hallucinated_tool",
        "abstention_error",
        "reason",
        "latency_s",
        "prompt_tokens",
        "completion_tokens",
        "error",
    ]
    assert frame["function_name_and_args_accuracy"].to_list() == [1.0, 0.0, 0.0, 0.0]
    assert frame["argument_recall"].to_list() == [1.0, 0.0, 0.0, 0.0]  # the failed request recalls nothing
    assert frame["argument_precision"].to_list() == [1.0, 0.0, None, None]
    assert frame["abstention_error"].to_list() == [None, None, "text_instead_of_tool_call", None]
    assert result.tool_confusion == {"get_weather": {"get_weather": 2, "(no call)": 1, "(error)": 1}}


def test_score_records_tool_calling_rates_and_confusion_table():
    refund = calls(("refund", {"order_id": "A", "amount": 5}))
    weather = calls(("get_weather", {"city": "Paris"}))
    cases = [
        (refund, calls(("refund", {"order_id": "a", "amount": 5.0}))),  # right, type-aware
        (refund, calls(("refund", {"order_id": "A", "amount": "5"}))),  # right name, invalid arguments
        (
            weather,
            calls(("get_weather", {"city": "Paris"}), ("refund", {"order_id": "A", "amount": 1})),
        ),  # one call too many
        (weather, calls(("teleport", {"to": "Paris"}))),  # hallucinated
        (weather, text("It is sunny in Paris.")),  # text instead of a call
        (text("Hello! How can I help?"), refund),  # a call instead of text
    ]
    examples = [example(str(i), want, tools=TOOLS) for i, (want, _) in enumerate(cases)]
    result = score_records("tool_calling", examples, [Completion(message=got) for _, got in cases])
    rows = result.to_polars()
    assert rows["function_name_accuracy"].to_list() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert rows["schema_valid"].to_list() == [True, False, True, None, None, True]
    assert rows["hallucinated_tool"].to_list() == [False, False, False, True, False, False]
    assert rows["abstention_error"].to_list() == [None] * 4 + ["text_instead_of_tool_call", "tool_call_instead_of_text"]
    assert result.scores["schema_valid_rate"] == pytest.approx(4 / 5)  # over the calls: 4 of 5 offered calls valid
    assert result.scores["hallucinated_tool_rate"] == pytest.approx(1 / 6)
    assert result.scores["text_instead_of_tool_call_rate"] == pytest.approx(1 / 5)  # of the 5 records expecting a call
    assert result.scores["tool_call_instead_of_text_rate"] == 1.0  # of the 1 record expecting text
    assert result.scores["tools_with_invalid_schema"] == 0
    assert result.scores["argument_precision"] == pytest.approx(rows["argument_precision"].mean())
    confusion = result.tool_confusion_frame()
    assert confusion.columns == ["expected", "(no call)", "get_weather", "refund", "teleport"]
    assert confusion.rows() == [
        ("(no call)", 0, 0, 2, 0),  # the extra refund and the refund instead of text
        ("get_weather", 1, 1, 0, 1),
        ("refund", 0, 0, 2, 0),
    ]


def test_score_records_chat_deterministic():
    examples = [example("a", text("The cat sat."), "chat"), example("b", text("yes"), "chat")]
    completions = [Completion(message=text("the cat ran away"), latency_s=0.1), Completion(message=text("Yes!"))]
    result = score_records("chat", examples, completions)
    assert result.similarity_method == "token_f1"
    assert result.judge is None and "judge_unparsed" not in result.scores
    assert result.scores["similarity"] == pytest.approx((4 / 7 + 1.0) / 2)
    assert result.rows[0]["reason"] == "token F1 0.571"
    assert list(result.rows[0]) == [
        "record_id",
        "similarity",
        "reason",
        "latency_s",
        "prompt_tokens",
        "completion_tokens",
        "error",
    ]


def test_score_records_chat_with_judge_excludes_unparseable_from_mean():
    examples = [example(str(i), text(f"answer {i}"), "chat") for i in range(4)]
    completions = [Completion(message=text("x"))] * 3 + [Completion(error="HTTP 500")]
    judge = ScriptedJudge(["SIMILARITY: 10", "I cannot rate this.", "SIMILARITY: 5"])
    result = score_records("chat", examples, completions, judge=judge)
    assert result.similarity_method == "judge"
    assert len(judge.prompts) == 3  # the failed candidate is not sent to the judge
    # mean of 1.0, 0.5 and the failed candidate's 0.0; the unparseable reply is excluded
    assert result.scores["similarity"] == pytest.approx(0.5)
    assert result.judge_unparsed_count == 1
    assert (result.scores["judge_unparsed"], result.scores["judge_errors"]) == (1, 0)
    assert result.judge == {"model": "ScriptedJudge", "prompt_sha256": JUDGE_PROMPT_SHA256, "temperature": None}
    assert result.rows[1]["similarity"] is None and "unparseable" in result.rows[1]["reason"]
    assert result.rows[3]["similarity"] == 0.0 and result.rows[3]["reason"] == "error: HTTP 500"
    assert result.to_polars()["similarity"].null_count() == 1


def test_score_records_empty_and_mismatched():
    result = score_records("tool_calling", [], [])
    assert result.scores["function_name_accuracy"] is None and result.rows == []
    assert math.isnan(result.to_polars()["latency_s"].mean() or math.nan)
    with pytest.raises(ValueError, match="2 examples but 1 completions"):
        score_records("chat", [example("a", text("x"), "chat")] * 2, [Completion()])
