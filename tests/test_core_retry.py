"""Which failed requests are retried, and how long to wait (bridge/core/retry.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.retry import BACKOFF_BASE, BACKOFF_CAP, Verdict, backoff, classify


@pytest.mark.parametrize("status", [None, 408, 429, 500, 502, 503, 504])
def test_transient_failures_are_retried(status: int | None) -> None:
    assert classify(status, None) is Verdict.RETRY


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
def test_refusals_are_permanent(status: int) -> None:
    assert classify(status, None) is Verdict.PERMANENT
    assert classify(status, "M_FORBIDDEN") is Verdict.PERMANENT


@pytest.mark.parametrize("status", [None, 400, 403, 429, 500])
def test_rate_limit_errcode_is_retried_whatever_the_status(status: int | None) -> None:
    assert classify(status, "M_LIMIT_EXCEEDED") is Verdict.RETRY


def test_a_homeserver_that_does_not_know_our_token_is_retried_not_refused() -> None:
    # The registration file and the config disagree: an admin's mistake, mended by them.
    assert classify(401, "M_UNKNOWN_TOKEN") is Verdict.RETRY
    assert classify(401, "M_MISSING_TOKEN") is Verdict.RETRY
    assert classify(403, "M_UNKNOWN_TOKEN") is Verdict.PERMANENT


def test_the_first_retry_waits_about_the_base() -> None:
    assert BACKOFF_BASE / 2 <= backoff(1, 0.0) <= BACKOFF_BASE
    assert BACKOFF_BASE / 2 <= backoff(1, 0.999) <= BACKOFF_BASE


def test_backoff_doubles_until_the_cap() -> None:
    waits = [backoff(attempt, 0.5) for attempt in range(1, 30)]
    assert waits[1] == pytest.approx(2 * waits[0])
    assert waits[4] == pytest.approx(16 * waits[0])
    assert waits == sorted(waits)
    assert waits[-1] == BACKOFF_CAP


jitters = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
attempts = st.integers(min_value=1, max_value=10**6)


@given(attempts, jitters)
def test_backoff_is_positive_and_capped(attempt: int, jitter: float) -> None:
    assert 0 < backoff(attempt, jitter) <= BACKOFF_CAP


@given(attempts, jitters, jitters)
def test_backoff_never_shrinks_from_one_attempt_to_the_next(
    attempt: int, jitter: float, next_jitter: float
) -> None:
    # Whatever the jitter, a later try never waits less than an earlier one.
    assert backoff(attempt, jitter) <= backoff(attempt + 1, next_jitter)


@given(attempts, jitters)
def test_backoff_grows_while_below_the_cap(attempt: int, jitter: float) -> None:
    now, later = backoff(attempt, jitter), backoff(attempt + 1, jitter)
    assert later == BACKOFF_CAP or later == pytest.approx(2 * now)


def test_retry_after_is_honoured() -> None:
    assert backoff(1, 0.0, retry_after_ms=1500) == 1.5
    assert backoff(7, 0.3, retry_after_ms=0) == 0.0
    assert backoff(1, 0.0, retry_after_ms=120_000) == 120.0


@given(attempts, jitters, st.integers(min_value=0, max_value=10**15))
def test_retry_after_is_capped(attempt: int, jitter: float, retry_after_ms: int) -> None:
    wait = backoff(attempt, jitter, retry_after_ms=retry_after_ms)
    assert wait == min(retry_after_ms / 1000, BACKOFF_CAP)


def test_a_retry_after_too_big_for_a_float_waits_the_cap() -> None:
    assert backoff(1, 0.0, retry_after_ms=10**400) == BACKOFF_CAP


def test_a_negative_retry_after_is_ignored() -> None:
    assert backoff(3, 0.5, retry_after_ms=-1) == backoff(3, 0.5)
