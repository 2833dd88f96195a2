"""Metrics: hand-computed cases for tool calls, chat similarity, the judge and aggregates."""

from __future__ import annotations

import math
from typing import Sequence

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
    RAW_ARGUMENTS_KEY,
    build_judge_prompt,
    function_name_accuracy,
    function_name_and_args_accuracy,
    judge_similarity,
    latency_summary,
    parse_judge_reply,
    score_records,
    score_tool_calls,
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


def test_multiple_calls_compared_as_ordered_lists():
    expected = calls(("lookup", {"id": 1}), ("book", {"id": 1}))
    assert score_tool_calls(expected, calls(("lookup", {"id": 1}), ("book", {"id": 1}))).function_name_and_args == 1.0
    swapped = score_tool_calls(expected, calls(("book", {"id": 1}), ("lookup", {"id": 1})))
    assert (swapped.function_name, swapped.reason) == (0.0, "wrong function (call 0): got book expected lookup")
    fewer = score_tool_calls(expected, calls(("lookup", {"id": 1})))
    assert fewer.function_name == 0.0
    assert fewer.reason == "wrong number of tool calls: got 1 ['lookup'] expected 2 ['lookup', 'book']"
    second_args = score_tool_calls(expected, calls(("lookup", {"id": 1}), ("book", {"id": 2})))
    assert (second_args.function_name, second_args.function_name_and_args) == (1.0, 0.0)
    assert second_args.reason == "arguments differ: call 1 book: at $.id: got 2 expected 1"


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


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("Both say it rains.\nSIMILARITY: 7", 0.7),
        ("similarity = 10", 1.0),
        ("**SIMILARITY:** 3", 0.3),
        ("**Similarity**: 4.5", 0.45),
        ("Format: SIMILARITY: n\nThey differ.\nSIMILARITY: 2", 0.2),
        ("I would give it 8/10.", 0.8),
        ("9 out of 10", 0.9),
        ("  6  ", 0.6),
        ("0", 0.0),
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
        ("", "empty reply"),
        (None, "empty reply"),
        ("SIMILARITY: 11", "outside 0-10"),
        ("SIMILARITY: -1", "outside 0-10"),
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


def example(record_id: str, expected: AssistantMessage, workload_type: str = "tool_calling") -> ChatExample:
    return ChatExample(
        record_id=record_id,
        workload_id="w",
        workload_type=workload_type,
        messages=[{"role": "user", "content": f"question {record_id}"}],
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
    assert result.scores == {"function_name_accuracy": 0.5, "function_name_and_args_accuracy": 0.25}
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
    assert frame.shape == (4, 8)
    assert frame["function_name_and_args_accuracy"].to_list() == [1.0, 0.0, 0.0, 0.0]


def test_score_records_chat_deterministic():
    examples = [example("a", text("The cat sat."), "chat"), example("b", text("yes"), "chat")]
    completions = [Completion(message=text("the cat ran away"), latency_s=0.1), Completion(message=text("Yes!"))]
    result = score_records("chat", examples, completions)
    assert result.similarity_method == "token_f1"
    assert result.scores["similarity"] == pytest.approx((4 / 7 + 1.0) / 2)
    assert result.rows[0]["reason"] == "token F1 0.571"
    assert list(result.rows[0]) == [
        "record_id", "similarity", "reason", "latency_s", "prompt_tokens", "completion_tokens", "error"
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
    assert result.rows[1]["similarity"] is None and "unparseable" in result.rows[1]["reason"]
    assert result.rows[3]["similarity"] == 0.0 and result.rows[3]["reason"] == "error: HTTP 500"
    assert result.to_polars()["similarity"].null_count() == 1


def test_score_records_empty_and_mismatched():
    result = score_records("tool_calling", [], [])
    assert result.scores["function_name_accuracy"] is None and result.rows == []
    assert math.isnan(result.to_polars()["latency_s"].mean() or math.nan)
    with pytest.raises(ValueError, match="2 examples but 1 completions"):
        score_records("chat", [example("a", text("x"), "chat")] * 2, [Completion()])
