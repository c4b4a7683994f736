"""Taking a trio lock or capacity limiter without a pass through the scheduler when it is free.

`async with lock:` always passes through the scheduler on the way in (trio's rule that every
async call is a checkpoint). On the hot path that pass is a whole turn of trio's loop per push
and per send, and the lock is nearly always free: the work that follows (a send, an fsync'ed
answer) waits for I/O a moment later anyway. Fairness is kept: a free lock with waiters queued
is not free (trio's `acquire_nowait` refuses it), so nobody is overtaken.
"""

from __future__ import annotations

from types import TracebackType

import trio


class promptly:
    __slots__ = ("lock",)

    def __init__(self, lock: trio.Lock | trio.CapacityLimiter) -> None:
        self.lock = lock

    async def __aenter__(self) -> None:
        try:
            self.lock.acquire_nowait()
        except trio.WouldBlock:
            await self.lock.acquire()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.lock.release()
