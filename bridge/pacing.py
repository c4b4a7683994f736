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
It is bounded (MOST), and not taken where the send will not be tried soon: a homeserver known
to be down, a room waiting to retry a send (429, a 5xx, a file whose source is busy) or with a
backlog read a page at a time; a hold waiting for a room that starts to wait for a retry, or
for a homeserver that falls silent, is let go at once. (At a backlog's last page, under PAGE
rows, a push may wait the whole MOST.) Nor is it taken for bot commands (a command's work may
take a while, and nothing in it gathers messages). An answer is the first try's, success or
failure. The whole transaction waits (the homeserver sends one at a time), other rooms'
messages in it too: so the wait is only for sends about to be answered. Durability is
untouched: the writes were on disk before the wait began.

Echoes: a homeserver pushes the bridge its own sends back (its ghosts are the appservice's
users), one transaction per send while the bridge answers at once: two of every three pushes
against Synapse, each a request for nothing. A push of echoes alone is therefore answered once
no send into its homeserver is under way (at most ECHO_MOST), so that the echoes of a burst's
sends come back together. Not while the network is suspect (its pushes then may be a
recovery's) or its homeserver is being probed (its sends may hang), nor when the newest echo
is older than ECHO_FRESH_MS as its homeserver counts (`unsigned.age`; an event without one
says nothing, and is not held): a homeserver behind with its pushes, such as Synapse's
recoverer sending what it kept while the bridge was down one stored transaction at a time,
is answered at once, or it would fall further behind with every held answer and never catch
up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import trio

# Seconds a push's answer waits at most for its sends' first answers. Synapse answers a send in
# 20-50 ms on these machines; this is for one that hangs (the client gives up after 60 s), or
# sits behind a slow one: long enough for a flood's transactions to grow to many events.
MOST = 1.0
# Seconds a push of echoes alone waits at most for the sends into its homeserver: as long as any
# push's answer waits, and no longer. Under a flood a second's echoes then come in one push
# (about 25 against Synapse, where a quarter of a second gathered 6-7: item 44); what shares
# their transaction (that homeserver's own users' messages, typing, receipts) waits that long
# at most.
ECHO_MOST = MOST
# A push whose newest event is older than this (milliseconds, `unsigned.age`) shows a
# homeserver behind with its pushes.
ECHO_FRESH_MS = 500


class Hold:
    """The sends one push waits for: outbox row id -> (network, room)."""

    __slots__ = ("event", "rows")

    def __init__(self, rows: dict[int, tuple[str, str]]) -> None:
        self.rows = rows
        self.event = trio.Event()


class Pacing:
    def __init__(
        self, ready: Callable[[str, str], bool] = lambda network, room: True, most: float = MOST,
        reachable: Callable[[str], bool] = lambda network: True,
    ) -> None:
        # Whether a new send into (network, room) will be tried soon (see above).
        self.ready = ready
        # Whether a network's homeserver answers (not being probed): its sends under way are
        # then not waited for by echoes, since they may hang.
        self.reachable = reachable
        self.most = most
        self._holds: dict[int, Hold] = {}  # row id -> the hold waiting for its first answer
        self._stopped = False
        # network -> drains' batches under way into it (their backoffs and bot tasks aside)
        self._sending: dict[str, int] = {}
        # network -> set when those are done, or by release(network) or stop() (made only
        # when an echo push waits)
        self._idle: dict[str, trio.Event] = {}
        self._released: dict[str, int] = {}  # network -> its release()s so far

    @property
    def waiting(self) -> bool:
        return bool(self._holds)

    def hold(self, sends: Iterable[tuple[str, str, int]]) -> Hold | None:
        """Note the sends, as (network, room, row id), a push just handed to the workers.
        Called before any await after the handing, so that no send can have been answered."""
        kept = {row: (network, room) for network, room, row in sends
                if self.ready(network, room)}
        if not kept or self._stopped:
            return None
        hold = Hold(kept)
        for row in kept:
            self._holds[row] = hold
        return hold

    def tried(self, row: int) -> None:
        """The first try of the send of outbox row `row` has its answer (or ended without one)."""
        hold = self._holds.pop(row, None)
        if hold is not None:
            del hold.rows[row]
            if not hold.rows:
                hold.event.set()

    def release(self, network: str, room: str | None = None) -> None:
        """Sends into `room` (or into any room of `network`) will not be tried soon after all
        (a retry's backoff, the homeserver silent): wait no more for them."""
        for row, hold in list(self._holds.items()):
            where = hold.rows.get(row)
            if where is not None and where[0] == network and room in (None, where[1]):
                self.tried(row)
        if room is None:
            # Its sends under way may hang: echoes wait no more for them.
            self._released[network] = self._released.get(network, 0) + 1
            self._wake_echoes(network)

    # -- echoes --------------------------------------------------------------------------------

    @contextmanager
    def batch(self, network: str) -> Iterator[None]:
        """While a drain sends a batch of its room's actions into `network`, one after another
        (DeliveryWorker._drain): echo pushes from that homeserver wait for its end."""
        self._sending[network] = self._sending.get(network, 0) + 1
        try:
            yield
        finally:
            self._less(network)

    @contextmanager
    def paused(self, network: str) -> Iterator[None]:
        """While a drain, within its batch, waits to retry or runs a bot task: not sending."""
        self._less(network)
        try:
            yield
        finally:
            self._sending[network] += 1

    def _less(self, network: str) -> None:
        left = self._sending[network] - 1
        self._sending[network] = left
        if not left:
            self._wake_echoes(network)

    def _wake_echoes(self, network: str) -> None:
        idle = self._idle.pop(network, None)
        if idle is not None:
            idle.set()

    async def echoes(self, network: str, events: Iterable[object]) -> None:
        """Return once no send into `network` is under way, or after ECHO_MOST: the answer to a
        push of `events`, echoes alone (see above), if fresh (see `fresh`)."""
        if (self._stopped or not self._sending.get(network) or not fresh(events)
                or not self.reachable(network)):
            return
        released = self._released.get(network, 0)
        with trio.move_on_after(ECHO_MOST):
            # A drain that goes on to its room's next batch ends one and begins the other
            # before a woken waiter runs: looked at again on waking, so that a flood is
            # waited out, not one batch.
            while (self._sending.get(network) and not self._stopped
                   and self._released.get(network, 0) == released):
                idle = self._idle.get(network)
                if idle is None:
                    idle = self._idle[network] = trio.Event()
                await idle.wait()

    def stop(self) -> None:
        """The daemon stops: answer every push now (each is on disk already), and hold no
        more. A push left unanswered by a stop is pushed again after the next start, and a
        homeserver that marks the bridge down meanwhile may hold back what comes after it
        (../shared/notes/synapse.md)."""
        self._stopped = True
        for hold in list(self._holds.values()):
            hold.event.set()
        for network in list(self._idle):
            self._wake_echoes(network)

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


def fresh(events: Iterable[object]) -> bool:
    """Whether the homeserver pushing `events` keeps up: the newest of them was sent at most
    ECHO_FRESH_MS before (`unsigned.age`, which the homeserver counts as it sends, so that a
    replay shows the time it was kept). The oldest may be older: a push held a while gathers
    what came meanwhile. An event without an age says nothing, and then neither does this."""
    newest: int | None = None
    for event in events:
        unsigned = event.get("unsigned") if isinstance(event, dict) else None
        age = unsigned.get("age") if isinstance(unsigned, dict) else None
        if type(age) is not int:
            return False
        newest = age if newest is None else min(newest, age)
    return newest is not None and newest <= ECHO_FRESH_MS
