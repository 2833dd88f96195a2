"""validate_trace: a good record becomes a TraceRecord, a bad one a Rejection with a reason."""

from __future__ import annotations

import copy
import json

import pytest

from flywheel_assets.core.schema import (
    QUARANTINE_REASONS,
    Rejection,
    TraceRecord,
    validate_trace,
)


def good_record(**overrides) -> dict:
    record = {
        "timestamp": 1_735_689_600,
        "workload_id": "tool_router",
        "client_id": "shop-web",
        "request": {
            "model": "meta/llama-3.1-70b-instruct",
            "messages": [
                {"role": "system", "content": "You route requests."},
                {"role": "user", "content": "Where is order ORD-123456?"},
            ],
            "tools": [{"type": "function", "function": {"name": "get_order_status"}}],
        },
        "response": {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {
                                    "name": "get_order_status",
                                    "arguments": '{"order_id": "ORD-123456"}',
                                },
                            }
                        ],
                    }
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7},
        },
        "feedback": {"thumbs": "up"},
        "latency_ms": 321.5,
    }
    record.update(overrides)
    return record


def rejected(raw, **kw) -> Rejection:
    result = validate_trace(raw, **kw)
    assert isinstance(result, Rejection), f"expected a rejection, got {result!r}"
    assert result.reason in QUARANTINE_REASONS
    return result


# --------------------------------------------------------------------------- accepted


def test_good_json_line_is_accepted_with_its_fields():
    result = validate_trace(json.dumps(good_record()))
    assert isinstance(result, TraceRecord)
    assert result.workload_id == "tool_router"
    assert result.timestamp == 1_735_689_600
    assert result.answer.tool_calls[0]["function"]["name"] == "get_order_status"
    assert result.user_contents() == ["Where is order ORD-123456?"]
    assert result.feedback.thumbs == "up"


def test_bytes_and_dict_inputs_are_accepted():
    line = json.dumps(good_record())
    assert isinstance(validate_trace(line.encode()), TraceRecord)
    assert isinstance(validate_trace(good_record()), TraceRecord)


def test_extra_fields_are_kept_not_rejected():
    result = validate_trace(good_record(trace_id="abc", region="eu"))
    assert isinstance(result, TraceRecord)


def test_multi_part_content_lists_are_accepted_and_their_text_is_the_dedup_key():
    record = good_record()
    record["request"]["messages"][1]["content"] = [
        {"type": "text", "text": "Where is "},
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
        {"type": "text", "text": "order ORD-1?"},
    ]
    result = validate_trace(record)
    assert isinstance(result, TraceRecord)
    assert result.user_contents() == ["Where is order ORD-1?"]


def test_plain_chat_answer_without_tools_is_accepted():
    record = good_record()
    del record["request"]["tools"]
    record["response"]["choices"][0]["message"] = {"role": "assistant", "content": "Hello!"}
    result = validate_trace(json.dumps(record))
    assert isinstance(result, TraceRecord)
    assert result.answer.content == "Hello!"


# --------------------------------------------------------------------------- rejected


def test_truncated_line_is_bad_json():
    line = json.dumps(good_record())
    assert rejected(line[: len(line) // 2]).reason == "bad_json"


def test_record_over_the_size_limit_is_oversized():
    line = json.dumps(good_record())
    result = rejected(line, max_record_bytes=len(line.encode()) - 1)
    assert result.reason == "oversized"
    assert str(len(line.encode())) in result.detail
    # at the limit exactly it is accepted
    assert isinstance(validate_trace(line, max_record_bytes=len(line.encode())), TraceRecord)


def test_size_limit_counts_bytes_not_characters():
    record = good_record()
    record["request"]["messages"][1]["content"] = "日本語" * 100  # 3 bytes per character
    line = json.dumps(record, ensure_ascii=False)
    assert len(line) < 1000 < len(line.encode())
    assert rejected(line, max_record_bytes=1000).reason == "oversized"


def test_missing_workload_id_is_missing_field_named_in_detail():
    record = good_record()
    del record["workload_id"]
    result = rejected(json.dumps(record))
    assert result.reason == "missing_field"
    assert "workload_id" in result.detail


@pytest.mark.parametrize("field", ["timestamp", "client_id", "request", "response"])
def test_every_required_field_missing_is_missing_field(field):
    record = good_record()
    del record[field]
    result = rejected(record)
    assert result.reason == "missing_field"
    assert field in result.detail


@pytest.mark.parametrize("timestamp", ["abc", "2026-11-14T10:22:01Z", 1.5, True, None])
def test_non_integer_timestamp_is_wrong_type(timestamp):
    result = rejected(json.dumps(good_record(timestamp=timestamp)))
    assert result.reason == "wrong_type"
    assert "timestamp" in result.detail


def test_numeric_string_timestamp_is_not_coerced():
    # strict: "1735689600" is not silently accepted as an int
    assert rejected(json.dumps(good_record(timestamp="1735689600"))).reason == "wrong_type"


def test_top_level_json_array_is_wrong_type():
    assert rejected(json.dumps([good_record()])).reason == "wrong_type"


def test_non_string_workload_id_is_wrong_type():
    result = rejected(good_record(workload_id=42))
    assert result.reason == "wrong_type"
    assert "workload_id" in result.detail


def test_legacy_completion_request_is_not_chat_request():
    record = good_record(
        request={"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"},
        response={"object": "text_completion", "choices": [{"text": "hi", "index": 0}]},
    )
    result = rejected(json.dumps(record))
    assert result.reason == "not_chat_request"
    assert "messages" in result.detail


def test_empty_messages_list_is_not_chat_request():
    record = good_record()
    record["request"]["messages"] = []
    result = rejected(json.dumps(record))
    assert result.reason == "not_chat_request"
    assert "messages" in result.detail


def test_unknown_message_role_is_not_chat_request():
    record = good_record()
    record["request"]["messages"][1]["role"] = "robot"
    assert rejected(record).reason == "not_chat_request"


def test_empty_choices_is_empty_response():
    record = good_record()
    record["response"]["choices"] = []
    result = rejected(json.dumps(record))
    assert result.reason == "empty_response"
    assert "choices" in result.detail


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": None},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "assistant", "content": "   \n"},
        {"role": "assistant"},
    ],
)
def test_message_without_content_or_tool_calls_is_empty_response(message):
    record = good_record()
    record["response"]["choices"][0]["message"] = message
    result = rejected(json.dumps(record))
    assert result.reason == "empty_response"
    assert "message" in result.detail


def test_a_rejection_never_raises_for_garbage():
    for raw in ["", "null", "42", '"text"', "{", "{}", b"\xff\xfe", "[]", '{"a": }']:
        result = validate_trace(raw)
        assert isinstance(result, Rejection)
        assert result.reason in {"bad_json", "wrong_type", "missing_field"}


def test_validation_does_not_mutate_a_dict_input():
    record = good_record()
    snapshot = copy.deepcopy(record)
    validate_trace(record)
    assert record == snapshot


def test_a_dict_record_over_the_size_limit_is_oversized():
    # Parquet rows arrive as dicts: the limit must hold for them as for JSON lines
    record = good_record()
    record["request"]["messages"][1]["content"] = "x" * 2000
    result = rejected(record, max_record_bytes=1000)
    assert result.reason == "oversized"
    assert isinstance(validate_trace(record, max_record_bytes=10_000), TraceRecord)
