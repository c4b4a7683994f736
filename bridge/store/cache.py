"""A read-through memo for the store's small, hot, rarely written tables.

Every relayed message asks the same questions: which portal is this room in, is it a
management room, whom is this person linked to, is this ghost registered and in that room.
The answers change only when a command, a membership or a profile change writes them, so they
are kept in memory and the whole memo is dropped on any such write (and on a rollback, since a
read inside a rolled-back transaction may have seen what never was). Only this process writes
the database while it runs, so nothing else can make the memo stale.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])
# Then it starts over: memory stays bounded (a few MB) whatever the store's size. A sweep of
# every room may pass it; the answers the sends need come back after one read each.
MAX_ENTRIES = 20_000


class Memo(dict[tuple[Any, ...], Any]):
    """The memo, with a count of the times it was dropped: whoever derived something from
    memoised reads can tell, by the count, that nothing they read was written since."""

    epoch = 0

    def clear(self) -> None:
        self.epoch += 1
        super().clear()


def memoised(fn: F) -> F:
    """Cache a read by its positional arguments (keyword calls are not cached)."""
    name = fn.__name__

    @functools.wraps(fn)
    def read(self: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            return fn(self, *args, **kwargs)
        key = (name, *args)
        memo = self._memo
        if key in memo:
            return memo[key]
        value = fn(self, *args)
        if len(memo) >= MAX_ENTRIES:
            memo.clear()
        memo[key] = value
        return value

    return cast(F, read)


def invalidates(fn: F) -> F:
    """A write to a memoised table: the memo is dropped before and after it."""

    @functools.wraps(fn)
    def write(self: Any, *args: Any, **kwargs: Any) -> Any:
        self._memo.clear()
        try:
            return fn(self, *args, **kwargs)
        finally:
            self._memo.clear()

    return cast(F, write)
