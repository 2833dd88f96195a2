"""`retry`: what is retried, and what a creating call that may have succeeded finds."""

import pytest

from resources.http import Retryable, RetryPolicy, retry

POLICY = RetryPolicy(max_retries=2, backoff_s=0.0)


class GaveUp(Exception):
    pass


def _give_up(failure, attempts):
    return GaveUp(f"{failure} after {attempts}")


def _failing(outcomes):
    calls = []

    def attempt():
        calls.append(1)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return attempt, calls


def test_a_create_that_took_effect_on_its_last_attempt_is_found_not_reported_failed():
    # the server created the job but the answer was lost, on every attempt including the last
    attempt, calls = _failing([Retryable("reset", ambiguous=True)] * 3)
    lookups = []

    def recover():
        lookups.append(1)
        return "job-1" if len(lookups) == 3 else None  # visible only after the last attempt

    assert retry(attempt, POLICY, give_up=_give_up, recover=recover, sleep=lambda s: None) == "job-1"
    assert len(calls) == 3 and len(lookups) == 3


def test_spent_retries_give_up_with_the_last_failure_and_the_attempt_count():
    attempt, calls = _failing([Retryable("503", ambiguous=False)] * 3)
    waits = []
    with pytest.raises(GaveUp, match="503 after 3 attempts"):
        retry(attempt, POLICY, give_up=_give_up, recover=lambda: "never asked", sleep=waits.append)
    assert len(calls) == 3 and len(waits) == 2  # no wait after the last attempt: nothing follows


def test_a_lookup_that_finds_nothing_after_the_last_attempt_gives_up():
    attempt, _ = _failing([Retryable("timeout", ambiguous=True)] * 3)
    with pytest.raises(GaveUp, match="timeout after 3 attempts"):
        retry(attempt, POLICY, give_up=_give_up, recover=lambda: None, sleep=lambda s: None)


def test_a_success_after_failures_is_returned():
    attempt, calls = _failing([Retryable("429", ambiguous=False), "ok"])
    assert retry(attempt, POLICY, give_up=_give_up, sleep=lambda s: None) == "ok" and len(calls) == 2
