"""The plumbing every NeMo client shares: backoff with jitter, Retry-After, recovery of
creating calls, typed parsing with clear errors, poll deadlines and progress, secrets."""

from __future__ import annotations

import httpx
import pytest

from resources.nemo.transport import (
    NemoHTTPError,
    NemoSchemaError,
    NemoTimeoutError,
    Recovered,
    Retryable,
    RetryPolicy,
    ServiceClient,
    Wire,
    parse,
    poll,
    retry_call,
)

SECRET = "nvapi-secret-0123456789"


class Status(Wire):
    status: str
    percentage_done: float | None = None


def test_backoff_doubles_with_jitter_and_is_capped():
    policy = RetryPolicy(backoff_s=0.5, max_backoff_s=3.0)
    for number in range(6):
        ceiling = min(3.0, 0.5 * 2**number)
        delays = [policy.delay_s(number) for _ in range(200)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_retry_after_is_honoured_and_capped():
    policy = RetryPolicy(max_retry_after_s=10)
    assert policy.delay_s(3, retry_after_s=2.5) == 2.5
    assert policy.delay_s(0, retry_after_s=1000) == 10
    assert policy.delay_s(0, retry_after_s=-4) == 0


def test_retries_are_bounded_and_the_error_names_service_and_attempts():
    calls, waits = [], []

    def attempt():
        calls.append(1)
        raise Retryable("HTTP 503: busy", status_code=503, detail="busy")

    with pytest.raises(NemoHTTPError) as caught:
        retry_call(
            attempt,
            RetryPolicy(max_retries=3, backoff_s=0.01),
            service="Customizer",
            what="POST /v1/customization/jobs",
            sleep=waits.append,
        )
    assert len(calls) == 4 and len(waits) == 3
    assert "Customizer: POST /v1/customization/jobs failed after 4 attempts: HTTP 503: busy" in str(caught.value)
    assert caught.value.status_code == 503


def test_recover_is_asked_only_after_an_ambiguous_failure():
    outcomes = [Retryable("refused", ambiguous=False), Retryable("dropped after sending")]
    recovered = []

    def attempt():
        raise outcomes.pop(0)

    def recover():
        recovered.append(1)
        return "job-1"

    result = retry_call(
        attempt, RetryPolicy(max_retries=5, backoff_s=0), service="S", what="w", recover=recover, sleep=lambda s: None
    )
    assert result == "job-1" and len(recovered) == 1


def test_recover_finding_nothing_lets_the_call_be_repeated():
    outcomes = [Retryable("dropped"), "created"]

    def attempt():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert (
        retry_call(attempt, RetryPolicy(backoff_s=0), service="S", what="w", recover=lambda: None, sleep=lambda s: None)
        == "created"
    )


def test_parse_tolerates_unknown_fields_and_names_missing_ones():
    parsed = parse(Status, {"status": "running", "new_field": {"x": 1}}, service="Customizer", what="GET /s")
    assert parsed.status == "running" and parsed.model_extra == {"new_field": {"x": 1}}
    with pytest.raises(NemoSchemaError) as caught:
        parse(Status, {"percentage_done": 5}, service="Customizer", what="GET /v1/customization/jobs/j/status")
    assert str(caught.value) == (
        "Customizer: unexpected response to GET /v1/customization/jobs/j/status: required field 'status' is missing"
    )
    with pytest.raises(NemoSchemaError, match=r"field 'percentage_done': "):
        parse(Status, {"status": "running", "percentage_done": "lots"}, service="Customizer", what="GET /s")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_poll_reports_changes_only_and_stops_at_the_deadline():
    clock, events = FakeClock(), []
    states = iter(["pending", "pending", "running", "running"] + ["running"] * 100)
    with pytest.raises(NemoTimeoutError) as caught:
        poll(
            lambda: next(states),
            service="Customizer",
            subject="job j",
            observe=lambda s: (s, None, None),
            done=lambda s: s == "completed",
            timeout_s=30,
            interval_s=5,
            on_progress=events.append,
            timeout_hint="resume it",
            sleep=clock.sleep,
            clock=clock,
        )
    assert [e.status for e in events] == ["pending", "running"]
    assert clock.now == 30
    assert "Customizer: job j not done after 30s (last status 'running'); resume it" == str(caught.value)


def test_poll_returns_the_done_state():
    states = iter(["created", "completed"])
    assert (
        poll(
            lambda: next(states),
            service="S",
            subject="x",
            observe=lambda s: (s, None, None),
            done=lambda s: s == "completed",
            timeout_s=1,
            interval_s=0,
        )
        == "completed"
    )


def mock_client(handler, **kwargs) -> ServiceClient:
    client = ServiceClient(
        "http://svc",
        api_key=SECRET,
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_retries=3, backoff_s=0.001),
        **kwargs,
    )
    client.service = "Evaluator"
    return client


def test_client_retries_429_and_5xx_then_succeeds():
    answers = [
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(502),
        httpx.Response(200, json={"ok": 1}),
    ]
    seen = []

    def handler(request):
        seen.append(request)
        return answers.pop(0)

    assert mock_client(handler).request_json("GET", "/v1/evaluation/jobs") == {"ok": 1}
    assert len(seen) == 3
    assert all(r.headers["Authorization"] == f"Bearer {SECRET}" for r in seen)


def test_client_does_not_retry_4xx_and_quotes_the_server():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(422, json={"detail": [{"loc": ["body", "config"], "msg": "field required"}]})

    with pytest.raises(NemoHTTPError) as caught:
        mock_client(handler).request("POST", "/v1/evaluation/jobs", json={})
    assert len(seen) == 1
    assert (
        str(caught.value)
        == "Evaluator: POST http://svc/v1/evaluation/jobs answered HTTP 422: body.config: field required"
    )


def test_client_accept_turns_an_error_status_into_an_answer():
    client = mock_client(lambda r: httpx.Response(500, json={"detail": "model deployment already exists"}))
    from resources.nemo.transport import says_exists

    assert client.request("POST", "/x", accept=says_exists).status_code == 500


def test_client_recovery_result_is_wrapped():
    calls = []

    def handler(request):
        calls.append(request)
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    result = mock_client(handler).request("POST", "/jobs", json={}, recover=lambda: {"id": "found"})
    assert result == Recovered({"id": "found"}) and len(calls) == 1


def test_the_api_key_never_appears_in_errors_and_is_not_sent_to_foreign_urls():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(403, text=f"token {SECRET} is not allowed")

    client = mock_client(handler)
    with pytest.raises(NemoHTTPError) as caught:
        client.request("GET", "/v1/x")
    assert SECRET not in str(caught.value) and "***" in str(caught.value)
    assert SECRET not in repr(client)
    with pytest.raises(NemoHTTPError):
        client.request("PUT", "https://bucket.example/upload?sig=1", content=b"x")
    assert "Authorization" not in seen[-1].headers


def test_connection_errors_are_retried_then_reported():
    def handler(request):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(NemoHTTPError, match=r"Evaluator: GET http://svc/v1/x failed after 4 attempts: cannot connect"):
        mock_client(handler).request("GET", "/v1/x")


def test_poll_rides_out_a_transient_outage_but_not_a_4xx():
    clock, events = FakeClock(), []
    answers = iter(
        [NemoHTTPError("S: down", service="S", status_code=503), NemoHTTPError("S: no route", service="S"), "completed"]
    )

    def fetch():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert (
        poll(
            fetch,
            service="S",
            subject="job j",
            observe=lambda s: (s, None, None),
            done=lambda s: s == "completed",
            timeout_s=60,
            interval_s=5,
            on_progress=events.append,
            sleep=clock.sleep,
            clock=clock,
        )
        == "completed"
    )
    assert [e.status for e in events] == ["unreachable", "unreachable", "completed"]

    def forbidden():
        raise NemoHTTPError("S: 403", service="S", status_code=403)

    with pytest.raises(NemoHTTPError, match="403"):
        poll(
            forbidden,
            service="S",
            subject="x",
            observe=lambda s: (s, None, None),
            done=lambda s: True,
            timeout_s=60,
            interval_s=5,
            sleep=clock.sleep,
            clock=clock,
        )
