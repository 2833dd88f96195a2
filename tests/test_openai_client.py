"""OpenAICompatibleBackend against the fake server on loopback: concurrency bound, retries,
timeouts, error messages without secrets, tool-call conversion."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from fake_openai_server import HOLD_TIMEOUT_S, Fault, fake_openai_server

from flywheel_assets.core.chat import ChatPrompt
from flywheel_assets.core.metrics import score_tool_calls
from resources.openai_compatible import RAW_ARGUMENTS_KEY, EndpointError, OpenAICompatibleBackend

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
SECRET = "sk-test-0123456789abcdef"
# a hung request outlasts any client timeout here; stopping the server ends it
HANG_S = 60.0


@pytest.fixture
def server():
    with fake_openai_server() as running:
        yield running


@pytest.fixture
def slow_server():
    with fake_openai_server(latency_s=0.05) as running:
        yield running


def backend(server, **kwargs) -> OpenAICompatibleBackend:
    options = {"max_retries": 3, "backoff_s": 0.001, "timeout_s": 5.0, **kwargs}
    return OpenAICompatibleBackend(server.base_url, "m", **options)


def user(text: str, tools: list | None = None) -> ChatPrompt:
    return ChatPrompt(messages=[{"role": "user", "content": text}], tools=tools)


# ----------------------------------------------------------------------------- answers


def test_chat_answer_usage_and_latency(server):
    [completion] = backend(server).complete([user("hello there")])
    assert completion.error is None
    assert completion.message.content == "echo: hello there"
    assert completion.message.tool_calls is None
    assert completion.prompt_tokens == 2 and completion.completion_tokens > 0
    assert completion.latency_s > 0
    sent = server.requests[0].body
    assert sent["model"] == "m" and sent["temperature"] == 0.0 and sent["max_tokens"] == 512
    assert "tools" not in sent


def test_tool_calls_converted_with_parsed_arguments(server):
    [completion] = backend(server).complete([user("get_weather in Paris", tools=[WEATHER_TOOL])])
    [call] = completion.message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"text": "get_weather in Paris"}
    assert call.id == "call_0"


def test_answers_come_back_in_prompt_order(slow_server):
    prompts = [user(f"question {i}") for i in range(40)]
    completions = backend(slow_server, max_concurrency=8).complete(prompts)
    assert [c.message.content for c in completions] == [f"echo: question {i}" for i in range(40)]
    assert backend(slow_server).complete([]) == []


@pytest.mark.parametrize(
    ("arguments", "parsed"),
    [
        ('{"city": Paris', {RAW_ARGUMENTS_KEY: '{"city": Paris'}),
        ("[1, 2]", {RAW_ARGUMENTS_KEY: "[1, 2]"}),
        ("", {}),
        ('{"city": "Paris"}', {"city": "Paris"}),
    ],
)
def test_unparseable_arguments_kept_raw_and_scored_wrong(arguments, parsed):
    def responder(request):
        call = {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}

    with fake_openai_server(responder=responder) as running:
        [completion] = backend(running).complete([user("x", tools=[WEATHER_TOOL])])
    assert completion.error is None
    assert completion.message.tool_calls[0].function.arguments == parsed
    if RAW_ARGUMENTS_KEY in parsed:
        expected = completion.message.model_copy(deep=True)
        expected.tool_calls[0].function.arguments = {"city": "Paris"}
        score = score_tool_calls(expected, completion.message)
        assert (score.function_name, score.function_name_and_args) == (1.0, 0.0)
        assert "unparseable arguments" in score.reason


def test_parsed_arguments_in_prompt_are_sent_as_json_strings(server):
    history = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": {"c": 1}}}],
    }
    prompt = ChatPrompt(messages=[{"role": "user", "content": "q"}, history, {"role": "user", "content": "again"}])
    backend(server).complete([prompt])
    sent = server.requests[0].body["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(sent, str) and json.loads(sent) == {"c": 1}


def test_list_models(server):
    assert backend(server).list_models() == ["fake-model"]


# -------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("limit", [1, 4, 32])
def test_concurrency_bound_observed_by_server(limit):
    # the server holds each request until `limit` are in flight: the bound is reached on a
    # machine of any speed (a client below it would time out), and never exceeded. The
    # client outwaits the hold: a request it gave up on would stay in flight beside its retry.
    with fake_openai_server(hold_until_in_flight=limit) as running:
        client = backend(running, max_concurrency=limit, timeout_s=2 * HOLD_TIMEOUT_S)
        completions = client.complete([user(f"q{i}") for i in range(2 * limit + 3)])
    assert all(c.error is None for c in completions)
    assert running.max_in_flight == limit


def test_calling_from_inside_an_event_loop(server):
    async def inside_loop():
        return backend(server).complete([user("from a loop")])

    [completion] = asyncio.run(inside_loop())
    assert completion.message.content == "echo: from a loop"


# ------------------------------------------------------------------------------ retries


def test_retries_429_then_succeeds(server):
    server.add_faults(Fault.status(429), Fault.status(429))
    [completion] = backend(server).complete([user("hi")])
    assert completion.error is None and completion.message.content == "echo: hi"
    assert len(server.requests) == 3


def test_retry_after_is_honoured(server):
    server.add_faults(Fault.status(429, retry_after=0.4))
    started = time.perf_counter()
    [completion] = backend(server, backoff_s=0.001).complete([user("hi")])
    elapsed = time.perf_counter() - started
    assert completion.error is None and len(server.requests) == 2
    assert elapsed >= 0.4
    # latency is the successful attempt's, not the wait: it fits in what the wait left over
    assert completion.latency_s <= elapsed - 0.4


@pytest.mark.parametrize("status", [500, 502, 503])
def test_retries_5xx_then_succeeds(server, status):
    server.add_faults(Fault.status(status), Fault.status(status))
    [completion] = backend(server).complete([user("hi")])
    assert completion.error is None
    assert len(server.requests) == 3


def test_gives_up_after_max_retries_naming_endpoint_and_model(server):
    server.add_faults(*[Fault.status(503)] * 10)
    [completion] = backend(server, max_retries=2).complete([user("hi")])
    assert completion.message is None
    assert completion.error.startswith(f"HTTP 503 from {server.base_url}/chat/completions (model m)")
    assert completion.error.endswith("(3 attempts)")
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(server):
    server.add_faults(Fault.status(400, message="bad tools"))
    [completion] = backend(server).complete([user("hi")])
    assert "HTTP 400" in completion.error and "bad tools" in completion.error
    assert len(server.requests) == 1


def test_timeout_error_names_endpoint_model_and_timeout(server):
    server.add_faults(Fault.hang(HANG_S), Fault.hang(HANG_S))
    started = time.perf_counter()
    [completion] = backend(server, timeout_s=0.2, max_retries=1).complete([user("hi")])
    assert time.perf_counter() - started < HANG_S  # gave up on both, without waiting for an answer
    assert completion.error == (
        f"timed out after 0.2s calling {server.base_url}/chat/completions (model m) (2 attempts)"
    )
    assert len(server.requests) == 2


def test_timeout_then_success(server):
    server.add_faults(Fault.hang(HANG_S))
    # the retry is answered at once: 1 s is ample for that on a busy machine
    [completion] = backend(server, timeout_s=1.0).complete([user("hi")])
    assert completion.error is None
    assert len(server.requests) == 2  # the hung attempt, then the retry


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = OpenAICompatibleBackend(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff_s=0.001)
    [completion] = dead.complete([user("hi")])
    # never reached the server: safe to send again, and said so
    assert completion.error.startswith(f"cannot connect to http://127.0.0.1:{port}/v1/chat/completions (model m)")
    assert completion.error.endswith("(2 attempts)")


# ------------------------------------------------------------------ malformed responses


def test_missing_required_field_gives_clear_error_without_retry(server):
    server.add_faults(Fault.body({"id": "x", "object": "chat.completion"}))
    [completion] = backend(server).complete([user("hi")])
    assert (
        completion.error
        == f"invalid response from {server.base_url}/chat/completions (model m): choices: Field required"
    )
    assert len(server.requests) == 1


def test_empty_choices_and_bad_message_rejected(server):
    server.add_faults(Fault.body({"choices": []}), Fault.body({"choices": [{"message": {"tool_calls": [{}]}}]}))
    first, second = backend(server, max_concurrency=1).complete([user("a"), user("b")])
    assert "choices: List should have at least 1 item" in first.error
    assert "choices.0.message.tool_calls.0.function: Field required" in second.error


def test_unknown_fields_tolerated(server):
    server.add_faults(
        Fault.body({"choices": [{"message": {"role": "assistant", "content": "ok", "refusal": None}, "extra": 1}]})
    )
    [completion] = backend(server).complete([user("hi")])
    assert completion.message.content == "ok" and completion.prompt_tokens == 0


# ------------------------------------------------------------------------------ secrets


def test_api_key_sent_as_bearer():
    with fake_openai_server(api_key=SECRET) as running:
        [completion] = backend(running, api_key=SECRET).complete([user("hi")])
        assert running.requests[0].authorization == f"Bearer {SECRET}"
    assert completion.error is None


def test_api_key_never_in_errors_or_repr():
    with fake_openai_server(api_key="another-key") as running:
        client = backend(running, api_key=SECRET)
        [rejected] = client.complete([user("hi")])
        running.add_faults(*[Fault.status(500, message=f"upstream saw key {SECRET}")] * 4)
        [echoed] = client.complete([user("hi")])
        running.add_faults(Fault.status(401, message=f"bad key {SECRET}"))
        with pytest.raises(EndpointError) as raised:
            client.list_models()
    assert "HTTP 401" in rejected.error
    assert "HTTP 500" in echoed.error and "***" in echoed.error
    for text in (rejected.error, echoed.error, str(raised.value), repr(client)):
        assert SECRET not in text


def test_one_ssl_context_shared_by_all_workers(server, monkeypatch):
    """Regression: 32 workers each building a CA bundle context cost ~0.5 s per cold call."""
    import httpx

    from resources import http

    built = []
    real = httpx.create_ssl_context
    monkeypatch.setattr(http, "_ssl_context", None)
    monkeypatch.setattr(httpx, "create_ssl_context", lambda *a, **k: built.append(1) or real(*a, **k))
    backend(server, max_concurrency=32).complete([user(f"q{i}") for i in range(64)])
    assert len(built) == 1
