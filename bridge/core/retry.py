"""How a failed request to a homeserver is retried: one table, and a bounded backoff.

Everything that decides whether an error is worth another try lives here; the delivery worker
only asks.
"""

from __future__ import annotations

from enum import Enum


class Verdict(Enum):
    RETRY = "retry"  # try again after a backoff
    PERMANENT = "permanent"  # the homeserver refused it: trying again will not help


# Status codes that mean "not now" rather than "no". None stands for no answer at all
# (connection refused or reset, timeout).
_RETRY_STATUS = frozenset({None, 408, 425, 429, 500, 502, 503, 504})
_RETRY_ERRCODES = frozenset({"M_LIMIT_EXCEEDED"})
# The homeserver does not know the bridge's as_token: its registration file and the config
# disagree, which the admin fixes. What waits to be sent waits for that, rather than being
# dropped, every message with a notice, for a mistake in a file.
_MISCONFIGURED = frozenset({"M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"})

BACKOFF_BASE = 1.0  # seconds before the first retry
BACKOFF_CAP = 300.0  # never wait longer than five minutes between tries


def classify(status: int | None, errcode: str | None) -> Verdict:
    if status in _RETRY_STATUS or errcode in _RETRY_ERRCODES:
        return Verdict.RETRY
    if status == 401 and errcode in _MISCONFIGURED:
        return Verdict.RETRY
    if status is not None and status >= 500:
        return Verdict.RETRY
    return Verdict.PERMANENT


def misconfigured(status: int | None, errcode: str | None) -> bool:
    """The homeserver refuses the bridge's own token: a mistake in the config or the
    registration file, retried (see classify) until the admin mends it."""
    return status == 401 and errcode in _MISCONFIGURED


def backoff(attempt: int, jitter: float, retry_after_ms: int | None = None) -> float:
    """Seconds to wait before try number `attempt` + 1 (attempt counts from 1).

    `jitter` in [0, 1) spreads retries of many rooms apart; a server's retry_after_ms, when given,
    is honoured but still capped.
    """
    if retry_after_ms is not None and retry_after_ms >= 0:
        # Compared before dividing: a server may send any integer, and 10**400 / 1000.0 raises.
        if retry_after_ms >= BACKOFF_CAP * 1000:
            return BACKOFF_CAP
        return retry_after_ms / 1000.0
    exp = BACKOFF_BASE * float(2 ** min(max(attempt - 1, 0), 16))
    return min(exp * (0.5 + jitter / 2), BACKOFF_CAP)
