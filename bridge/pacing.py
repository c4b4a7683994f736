"""Pacing: a push is answered once the sends it started have had their first answer.

A homeserver pushes one transaction at a time to an appservice, and puts what happens meanwhile
into its next one. Answered as soon as its writes are on disk (invariant 1), a push of one
message is followed by a push of the next one message: against Synapse every message was a
transaction of its own, and the bridge paid a whole push (a request, its routing, a commit)
for each. Waiting, before the answer, until the target homeservers have answered the sends the
push started lets the homeserver gather the messages that come meanwhile into one transaction:
one push and one commit for many, and a bridge that takes in no faster than its targets take
out. Nothing is sent later for it (the sends leave before the wait); what waits is the next
transaction, for about one send's round trip, and only while the bridge is relaying from it.

The wait is for the first new send of each room the push wrote to: a room's sends go in
order, so its answer means that what was queued there before is done too. Under a flood the
targets thus hold about one transaction's worth of sends, and the homeserver's transactions
grow to match what the targets take; at a conversation's pace a push waits one round trip.
The wait is bounded (MOST); it is not taken for a homeserver known to be down, nor for bot
commands (a command's work may take a while, and nothing in it gathers messages). An answer is
the first try's, success or failure: a send retried with backoff does not hold the push.
Durability is untouched: the writes were on disk before the wait began.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import trio

# Seconds a push's answer waits at most for its sends' first answers. Synapse answers a send in
# 10-50 ms on these machines. It is what a message may wait while a room it goes to has a
# backlog (after an outage): short beside that backlog's own delay, long enough for a flood's
# transactions to grow to hundreds of events.
MOST = 1.0


class Hold:
    """The sends (outbox row ids) one push waits for."""

    __slots__ = ("event", "rows")

    def __init__(self, rows: set[int]) -> None:
        self.rows = rows
        self.event = trio.Event()


class Pacing:
    def __init__(
        self, reachable: Callable[[str], bool] = lambda network: True, most: float = MOST
    ) -> None:
        self.reachable = reachable  # a network whose homeserver is known down holds nothing
        self.most = most
        self._holds: dict[int, Hold] = {}  # row id -> the hold waiting for its first answer

    @property
    def waiting(self) -> bool:
        return bool(self._holds)

    def hold(self, rows: Iterable[tuple[str, int]]) -> Hold | None:
        """Note the sends, as (network, row id), a push just handed to idle workers. Called
        before any await after the handing, so that no send can have been answered yet."""
        kept = {row for network, row in rows if self.reachable(network)}
        if not kept:
            return None
        hold = Hold(kept)
        for row in kept:
            self._holds[row] = hold
        return hold

    def tried(self, row: int) -> None:
        """The first try of the send of outbox row `row` has its answer (or ended without one)."""
        hold = self._holds.pop(row, None)
        if hold is not None:
            hold.rows.discard(row)
            if not hold.rows:
                hold.event.set()

    async def wait(self, hold: Hold) -> None:
        """Return once every send of `hold` has had its first answer, or after `most` s."""
        try:
            with trio.move_on_after(self.most):
                await hold.event.wait()
        finally:
            self.forget(hold)

    def forget(self, hold: Hold) -> None:
        """Wait no more for the sends of `hold` still unanswered."""
        for row in hold.rows:
            if self._holds.get(row) is hold:
                del self._holds[row]
        hold.rows.clear()
