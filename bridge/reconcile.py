"""Reconciliation: read portal rooms' timelines and take in what pushes missed.

Synapse can lose a push outright (a transaction stranded while its recoverer finishes) and can
deliver one late, after newer ones (../shared/notes/synapse.md). Pushes alone therefore cannot
promise "nothing lost, in order". The bot sits in every portal room, so it can read each room's
timeline and compare it with what was taken in.

Management rooms are read the same way, so that a command whose push was lost still runs.

Each portal room has a *mark*: the newest event up to which every event was taken in. A
reconcile reads the room backwards from its newest event to the mark, takes in the events not
seen yet in timeline order (through the same path as pushes, so dedupe is by event id), and moves
the mark, all in one commit. A room that has no mark yet is read back to the moment it began
to be watched (Store.room_enters, Store.rooms_joined: when a command linked it or the bot first
joined it; for a management room, the bot's invitation; the store keeps that time in the mark's
place): linking a room does not replay its history, and what is said there afterwards is taken
in even if the bridge stopped before the room was ever read. That first read takes in only the
events stamped (origin_server_ts) after that time, and ends at the bot's own join (in a
management room, its invitation: a client that creates a direct chat with its first message
sends it before the bot could join, and Synapse does not push it) or at an event of the
bridge's own bot or ghosts stamped before it: their homeserver stamps them as they are sent,
while a remote server's clock or another appservice's chosen timestamps need not grow along a
timeline, and must not end it early. A room with neither a mark nor such a time gets its mark at
its newest event, and nothing is taken in.

When it runs:
- at start, for every portal room, after READY and the start-up ping (a network is suspect
  then, so the pushes that come meanwhile read their own rooms first);
- while a network is *suspect* (for a while after start, after its homeserver came back from an
  outage, and after a gap in its transaction ids), before taking in a pushed transaction, for
  the rooms it touches that were not read since the network's last irregularity: a push that
  overtook an earlier event thus brings the earlier one in first, and order holds. Synapse
  numbers transactions upwards while it runs, so a skipped number (a stranded transaction,
  which Synapse may send only minutes later) or a number going back (a late one, or a restart)
  is the cheap signal that pushes can no longer be trusted for a while. Once a room was read
  back after the last such signal, the pushes that follow in sequence hide nothing older in it
  (anything held back would have left a gap), so they are taken as they come, as outside a
  window; the next gap, a start or a homeserver's return has every room read again;
- at the end of a suspect window, for every room of that network (a stranded event in a room
  that went quiet is found here); when the window ends during the start's catch-up, once the
  catch-up is done (the rooms it read first were read before a stranding could show); and
  after a gap's window, no sooner than FINAL_SWEEP_INTERVAL after the network's last such
  sweep began (on a homeserver shared with other appservices gaps are routine);
- every minute, for the rooms that had pushes since the last sweep;
- a new management room, as soon as the bot joined it (read_soon); until that read is done, a
  push into it reads it first, so that the command said before the join is taken first.
A per-network lock keeps a reconcile and a pushed transaction from interleaving.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import trio

from bridge.commits import GroupCommit
from bridge.core.ghosts import is_bridge_user
from bridge.core.model import Network, Portal
from bridge.inbound import Inbound, Taken
from bridge.locks import promptly
from bridge.matrix.client import Homeserver, HomeserverError, Unreachable
from bridge.metrics import Metrics
from bridge.pacing import Pacing
from bridge.store import Store, StoreError

log = logging.getLogger(__name__)

FIRST_PAGE = 10  # the mark is usually a few events back: a small first read is cheap for Synapse
PAGE = 100  # events per /messages page after the first
MAX_PAGES = 20  # read at most this far back in one reconcile (about 2,000 events)
# After start or a homeserver's return: short, since a gap in transaction ids re-arms it.
SUSPECT_SECONDS = 15.0
GAP_SUSPECT_SECONDS = 30.0
SWEEP_SECONDS = 60.0
# A window's final sweep reads every room of the network; on a homeserver shared with other
# appservices, gaps in transaction ids (which all its appservices share) open a window every
# half minute, and 10,000 portals would then mean 10,000 reads every 30 s. The final sweeps of
# gaps' windows therefore begin at most this often per network; a window that ends sooner has
# its sweep wait. (A start's or a homeserver's return, when Synapse strands pushes, do not.)
FINAL_SWEEP_INTERVAL = 300.0
_WRITTEN = (Taken.SENDING, Taken.QUEUED)  # what a push's take-in wrote, to be committed


class Reconciler:
    def __init__(
        self,
        store: Store,
        homeservers: Mapping[str, Homeserver],
        inbound: Inbound,
        portals: Callable[[], Iterable[Portal]],
        metrics: Metrics | None = None,
        commits: GroupCommit | None = None,
        unreachable: Callable[[str], None] = lambda network: None,
        pacing: Pacing | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        # With pacing, a push is answered once its sends have their first answers, so that the
        # homeserver gathers what comes meanwhile into its next transaction (bridge/pacing.py).
        self.pacing = pacing
        # Told when a read finds a network's homeserver not answering (the delivery worker's
        # probe then watches for its return, and /health counts the silence).
        self.unreachable = unreachable
        # With a group commit, a push's writes reach the disk after its sends went out (see
        # bridge/commits.py); without one, before (tests that drive a Reconciler alone).
        self.commits = commits
        self.store = store
        self.homeservers = homeservers
        self.inbound = inbound
        self.portals = portals
        self._locks = {net: trio.Lock() for net in homeservers}
        # Looked up once: labels() costs as much as the rest of the bookkeeping of a push.
        self._received = {net: self.metrics.received.labels(net) for net in homeservers}
        self._took = {net: self.metrics.transaction_seconds.labels(net) for net in homeservers}
        self._suspect_until = {net: 0.0 for net in homeservers}
        self._catching_up: set[str] = set()  # networks whose rooms are being read after a start
        # Networks whose window of distrust ended during their catch-up: the final sweep is
        # taken when the catch-up is done.
        self._sweep_owed: set[str] = set()
        self._active: dict[str, set[str]] = {net: set() for net in homeservers}
        # Rooms read back to their mark since the network's last irregularity (a gap or a step
        # back in transaction ids, a start, a homeserver's return): a suspect network's pushes
        # in sequence into these need no read of their own. Each irregularity starts a new set,
        # so a read under way across one (a homeserver's return comes from a delivery worker,
        # not under the lock) adds its room to the old set, and vouches for nothing.
        self._read: dict[str, set[str]] = {net: set() for net in homeservers}
        self._sweeping: dict[str, trio.Event] = {}  # network -> set when its final sweep ends
        self._last_final: dict[str, float] = {}  # network -> when its last final sweep began
        self._due = {net: 0 for net in homeservers}  # windows over whose final sweep is to come
        # A final sweep must see every room read since the end of the windows it covers. Each
        # network's latest window end so far, and the latest a final sweep began by covering:
        self._ended: dict[str, float] = {}
        self._covered: dict[str, float] = {}
        # While a final sweep is owed, when each room's last full read began: a room read since
        # the windows' end has nothing stranded in it for the sweep to find (a start's catch-up
        # of thousands of rooms outlasts its window, and would otherwise be read twice over).
        self._read_at: dict[str, dict[str, float]] = {net: {} for net in homeservers}
        # Rooms whose first read is asked for (read_soon) and not done yet: a push into one
        # reads it first, suspect or not.
        self._first: dict[str, set[str]] = {net: set() for net in homeservers}
        # Rooms whose last read failed, told once at INFO (then at DEBUG until a read gets
        # through): an unreadable room is read again every minute, for as long as it lasts.
        self._unreadable: set[tuple[str, str]] = set()
        # The last transaction id per network, remembered across restarts, so that even the first
        # push after a start can show a gap.
        self._last_txn: dict[str, int] = {}
        for net in homeservers:
            last = _txn_number(store.last_transaction(net))
            if last is not None:
                self._last_txn[net] = last
        self._nursery: trio.Nursery | None = None

    # -- pushes --------------------------------------------------------------------------------

    async def push(self, network: str, txn_id: str, body: bytes, events: list[Any]) -> None:
        """Take in a pushed transaction, reconciling its rooms first while `network` is suspect."""
        started = trio.current_time()
        sends: list[tuple[str, str, int]] | None = [] if self.pacing is not None else None
        async with promptly(self._locks[network]):  # free but for sweeps: one push in flight
            self._check_sequence(network, txn_id)
            rooms = _rooms_of(events)
            self._active[network].update(rooms)
            first, suspect = self._first[network], self.is_suspect(network)
            if first or suspect:
                pushed = {e["event_id"] for e in events
                          if isinstance(e, dict) and isinstance(e.get("event_id"), str)}
                for room_id in rooms:
                    unread = room_id in first or (suspect and room_id not in self._read[network])
                    if unread and self._watched(network, room_id):
                        await self._reconcile_room(network, room_id, pushed, why="push")
            taken = self.inbound.take_transaction(network, txn_id, body, events,
                                                  defer=self.commits is not None, started=sends)
            # Noted before any await: none of these sends can have its answer yet.
            hold = self.pacing.hold(sends) if sends and self.pacing is not None else None
            if self.commits is not None and taken in _WRITTEN:
                # Answered only once on disk. If sends are leaving now, the commit waits for
                # them to be on the wire; if they queue behind others, it has nothing to wait
                # for (and without pacing, an early answer lets the homeserver push the next
                # transaction sooner). The lock is held until then, so that a retry of this
                # transaction cannot be taken for one already seen on the strength of writes
                # not yet on disk.
                try:
                    await self.commits.durable(after_sends=taken is Taken.SENDING)
                except BaseException:
                    if hold is not None and self.pacing is not None:
                        self.pacing.forget(hold)  # not answered: nobody waits for its sends
                    raise
        if hold is not None and self.pacing is not None:
            # On disk already; the answer waits for the targets (outside the lock, which a
            # sweep may want meanwhile).
            await self.pacing.wait(hold)
        elif taken is Taken.ECHOES and self.pacing is not None and not self.is_suspect(network):
            # Nothing written: the answer waits for the sends under way into this homeserver,
            # whose echoes then come in one push (bridge/pacing.py). Not while suspect: a
            # recovery's pushes are not to be slowed.
            await self.pacing.echoes(network, events)
        self._received[network].inc(len(events))
        self._took[network].observe(trio.current_time() - started)

    def _check_sequence(self, network: str, txn_id: str) -> None:
        """A skipped or backward transaction id makes `network` suspect for a while."""
        number = _txn_number(txn_id)
        if number is None:
            # Not Synapse's numbering: no hint to read, so no push is known to follow the one
            # before, and while suspect every push reads its rooms.
            self._distrust(network)
            return
        last = self._last_txn.get(network)
        self._last_txn[network] = number
        if last is not None and number != last + 1 and number != last:
            self._distrust(network)
            if trio.current_time() < self._suspect_until[network]:
                # Inside a window, whose end sweeps after this. (Not merely during a sweep or
                # the start's catch-up: rooms they read already may hold what this gap hides.)
                log.debug("transaction %d from %s after %d", number, network, last)
                return
            log.info("transaction %d from %s after %d: reading timelines for a while", number,
                     network, last)
            self.suspect(network, GAP_SUSPECT_SECONDS, budgeted=True)

    def is_suspect(self, network: str) -> bool:
        # While a final sweep is due or runs, rooms it has not read yet may hold a stranded
        # event: a push into one reads it first, as inside the window.
        return (network in self._catching_up or self._due[network] > 0
                or trio.current_time() < self._suspect_until[network])

    def _distrust(self, network: str) -> None:
        """No room read so far vouches for `network`'s next pushes."""
        self._read[network] = set()

    async def catch_up(self, network: str) -> int:
        """Read every room of `network` back to its mark (after a start). The network stays
        suspect until the last room is done: a push into a room not yet read back must read
        it first, however long the whole takes with thousands of rooms."""
        self._catching_up.add(network)
        self._distrust(network)  # a start: no room's read before it vouches for pushes
        try:
            taken = await self.reconcile_network(network, why="catch-up")
        finally:
            self._catching_up.discard(network)
            owed = network in self._sweep_owed
            self._sweep_owed.discard(network)
        if owed:
            # It covers the latest window's end (every window had ended by then): the rooms
            # the catch-up read after it need no second read.
            taken += await self._sweep_covering(network, self._ended[network], budgeted=False)
        return taken

    def suspect(self, network: str, seconds: float = SUSPECT_SECONDS, *,
                budgeted: bool = False) -> None:
        """Distrust `network`'s pushes for a while; then sweep all its rooms once (with
        `budgeted`, as for a gap in transaction ids, no sooner than FINAL_SWEEP_INTERVAL after
        the last final sweep began; a start or a homeserver's return sweeps when it ends)."""
        self._suspect_until[network] = max(self._suspect_until[network],
                                           trio.current_time() + seconds)
        self._distrust(network)
        if self._nursery is not None:
            self._nursery.start_soon(self._sweep_after, network, seconds, budgeted)

    # -- sweeps --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Periodic sweeps of recently active rooms; owns the end-of-suspicion sweeps."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await trio.sleep(SWEEP_SECONDS)  # the sweep period itself, not a wait for events
                # Networks side by side: one homeserver that hangs must not hold the others'.
                async with trio.open_nursery() as sweeps:
                    for network in self.homeservers:
                        rooms, self._active[network] = self._active[network], set()
                        sweeps.start_soon(self.reconcile_rooms, network, rooms, "minute")

    def read_soon(self, network: str, room_id: str) -> None:
        """Read `room_id` back to its mark (or time of entry) soon, in the background: a new
        management room, in which a command may have come before the bot could see it."""
        self._first[network].add(room_id)
        if self._nursery is not None:
            self._nursery.start_soon(self.reconcile_rooms, network, [room_id], "joined")

    async def reconcile_network(self, network: str, why: str = "sweep") -> int:
        """Reconcile every portal room of `network`; return how many events were taken in."""
        return await self.reconcile_rooms(network, self._rooms(network), why)

    def _rooms(self, network: str) -> set[str]:
        """The rooms of `network` the bridge watches: portal rooms and management rooms."""
        rooms = {p.rooms[network] for p in self.portals() if network in p.rooms}
        rooms.update(self.store.management_rooms(network))
        return rooms

    async def reconcile_rooms(self, network: str, rooms: Iterable[str], why: str = "sweep") -> int:
        taken = 0
        for room_id in sorted(rooms):
            async with self._locks[network]:
                if self._watched(network, room_id):
                    taken += await self._reconcile_room(network, room_id, why=why)
        return taken

    def _watched(self, network: str, room_id: str) -> bool:
        """Portal rooms and management rooms: a command is no more to be lost than a message."""
        return (
            self.store.portal_for_room(network, room_id) is not None
            or self.store.management_owner(network, room_id) is not None
        )

    async def _sweep_after(self, network: str, seconds: float, budgeted: bool) -> None:
        await trio.sleep(seconds)  # the end of the suspect window
        await self._sweep_covering(network, trio.current_time(), budgeted)

    async def _sweep_covering(self, network: str, ended: float, budgeted: bool) -> int:
        """See that a final sweep of `network` covers a window that ended at `ended` (every
        room read since) and return what it found; the network stays suspect until then. With
        `budgeted`, no sooner than FINAL_SWEEP_INTERVAL after the last one began."""
        self._due[network] += 1
        self._ended[network] = max(self._ended.get(network, ended), ended)
        try:
            while True:
                now, last = trio.current_time(), self._last_final.get(network)
                if self._covered.get(network, -1.0) >= ended:
                    return 0  # one began since: it sees every room read after the window
                if now < self._suspect_until[network]:
                    return 0  # a later window's end sweeps, later still
                if network in self._catching_up:
                    # The rooms the catch-up read early were read before a push stranded
                    # meanwhile could show: it takes the final sweep when it is done.
                    self._sweep_owed.add(network)
                    return 0
                running = self._sweeping.get(network)
                if running is not None:
                    await running.wait()  # it began before `ended`: it may have passed a room
                    continue
                if budgeted and last is not None and now < last + FINAL_SWEEP_INTERVAL:
                    # A timer, not a wait for an event: the sweeps' budget.
                    await trio.sleep_until(last + FINAL_SWEEP_INTERVAL)
                    continue
                return await self._final_sweep(network)
        finally:
            self._due[network] -= 1
            if not self._due[network] and network not in self._sweep_owed:
                # Nothing owed: every later window ends after these reads.
                self._read_at[network].clear()

    async def _final_sweep(self, network: str) -> int:
        """Every room of `network` not read since the windows it covers ended, after them: a
        stranded event in a room that had no push since is found here."""
        self._last_final[network] = trio.current_time()
        # Every window has ended by now (no sweep begins inside one), some perhaps in this very
        # tick with its own request yet to run: the sweep covers the latest end known either way.
        covers = max(self._ended[network], self._suspect_until[network])
        self._covered[network] = covers
        done = self._sweeping[network] = trio.Event()
        read_at = self._read_at[network]
        try:
            rooms = {r for r in self._rooms(network) if read_at.get(r, -1.0) < covers}
            taken = await self.reconcile_rooms(network, rooms)
        finally:
            del self._sweeping[network]
            done.set()
        if taken:
            log.warning("reconciliation found %d event(s) %s never pushed", taken, network)
        return taken

    # -- one room ------------------------------------------------------------------------------

    async def _reconcile_room(
        self, network: str, room_id: str, pushed: set[Any] | None = None, why: str = "sweep"
    ) -> int:
        """Read `room_id` back to its mark and take in what was missed (events not in `pushed`,
        the transaction being taken in); return how many. Call under the lock."""
        self.metrics.timeline_reads.labels(network, why).inc()
        # Where the read stops: at the mark. With none yet, at the time the room began to be
        # watched (Store.room_enters): what was said there since is no history, even if the
        # bridge stopped before this first read. With neither, at once: its newest event
        # becomes the mark, and nothing is taken in.
        mark, since = self.store.room_position(network, room_id)
        # A management room is the bot's from its invitation: what its owner said before the
        # bot joined is for the bot too (a direct chat created with its first message).
        invited = since is not None and self.store.management_owner(network, room_id) is not None
        hs = self.homeservers[network]
        ours = self.inbound.networks[network]
        read = self._read[network]  # the rooms this read may vouch for (see __init__)
        began = trio.current_time()
        newest_first: list[dict[str, Any]] = []
        newest: str | None = None
        token: str | None = None
        found = False
        first = FIRST_PAGE if mark is not None or since is not None else 1  # else: the newest
        try:
            for n in range(MAX_PAGES):
                page, token = await hs.messages(room_id, first if n == 0 else PAGE, token)
                if n == 0 and page:
                    newest = str(page[0].get("event_id"))
                for event in page:
                    if mark is not None:
                        found = event.get("event_id") == mark
                    elif since is None:
                        found = True
                    else:
                        found = _ends_first_read(event, since, ours, invited)
                    if found:
                        break
                    newest_first.append(event)
                if found or token is None:
                    break
        except HomeserverError as exc:
            level = logging.DEBUG if (network, room_id) in self._unreadable else logging.INFO
            self._unreadable.add((network, room_id))
            advice = ("; invite the bot to it" if exc.status in (403, 404) else "")
            log.log(level, "cannot read %s on %s to reconcile it: %s%s (tried again every "
                    "minute; said once)", room_id, network, exc, advice)
            # A proxy's 504 on one room's read is that read's slowness (a huge room), not the
            # homeserver's silence: its sweep would read that room again, and so on.
            if isinstance(exc, Unreachable) and exc.proxy_status != 504:
                self.unreachable(network)
            self._owe_read(network, room_id)
            return 0
        if newest is None or (mark is not None and not newest_first):
            self._was_read(network, room_id, began, read)  # nothing new (or, oddly, an empty room)
            return 0
        if not found and (token is not None or mark is not None):
            log.warning(
                "%s on %s: more than %d events since the last check; took in the newest only",
                room_id, network, PAGE * MAX_PAGES,
            )
        # The bridge's own events (its ghosts' sends, pushed back as echoes) are never recorded
        # as seen, and there is nothing to take in from them.
        unseen = [
            e for e in reversed(newest_first)
            if isinstance(e.get("event_id"), str) and not self.inbound.is_echo(e, network)
            and (since is None or not _sent_before(e, since) or e["event_id"] in (pushed or ()))
            and not self.store.event_seen(network, e["event_id"])
        ]
        missed = [e for e in unseen if e["event_id"] not in (pushed or ())]
        if missed:
            log.info("%s on %s: %d event(s) taken in from the timeline", room_id, network,
                     len(missed))
            self.metrics.reconciled.labels(network).inc(len(missed))
        try:
            self.inbound.take_events(network, unseen, mark=(room_id, newest))
        except (sqlite3.Error, StoreError) as exc:
            if why == "push":
                raise  # the push fails with it (answered 500), and comes again
            # A sweep's failing disk: the room stays owed a read; the daemon goes on.
            log.error("could not take in what %s on %s missed: %s", room_id, network, exc)
            self._owe_read(network, room_id)
            return 0
        # Read back to its mark and what was missed taken in (only now: a failed take vouches
        # for nothing): pushes in sequence into it can be trusted again.
        self._was_read(network, room_id, began, read)
        return len(missed)

    def _owe_read(self, network: str, room_id: str) -> None:
        """A read of `room_id` failed (an error answer, a page that broke off, a failing
        disk): the next push into it reads it first, and the minute's sweep tries it again,
        until a read gets through. Otherwise what it missed would come only after what is
        pushed next (or, in a quiet room, at the next start)."""
        self._first[network].add(room_id)
        self._active[network].add(room_id)

    def _was_read(self, network: str, room_id: str, began: float, read: set[str]) -> None:
        """`room_id` was read back to its mark by a read that began at `began`; `read` is the
        set of rooms it vouches for, taken when it began (see __init__)."""
        read.add(room_id)
        self._first[network].discard(room_id)
        self._unreadable.discard((network, room_id))
        # Only a read since the latest window's end can spare a room the sweep owed for it.
        if ((self._due[network] or network in self._sweep_owed)
                and began >= self._ended.get(network, began + 1)):
            self._read_at[network][room_id] = began


def _ends_first_read(event: Any, since: float, network: Network, invited: bool = False) -> bool:
    """Whether a room's first read, back to the time `since` it began to be watched, ends at
    `event`: one of the bridge's own (bot or ghost) stamped before that time, or the bot's own
    join (before it, the bot was not in the room); with `invited` (a management room), the
    bot's invitation instead of its join. Timestamps need not grow along a timeline (a remote
    server's clock, an appservice that sets them for its users): only the bridge's own events,
    stamped by its homeserver as they were sent, and the bot's own membership, can end it."""
    sender = event.get("sender") if isinstance(event, dict) else None
    if not isinstance(sender, str):
        return False
    content = event.get("content")
    if (invited and event.get("type") == "m.room.member"
            and event.get("state_key") == network.bot_user_id
            and isinstance(content, dict) and content.get("membership") == "invite"):
        return True
    if not is_bridge_user(sender, network):
        return False
    ts = event.get("origin_server_ts")
    if isinstance(ts, int) and ts < since * 1000:
        return True
    return (not invited and event.get("type") == "m.room.member"
            and event.get("state_key") == sender and sender == network.bot_user_id
            and isinstance(content, dict) and content.get("membership") == "join")


def _sent_before(event: Any, since: float) -> bool:
    """Whether `event` was sent before the wall-clock time `since`, by its origin_server_ts (the
    clock of the server it comes from). An event without one (malformed) counts as sent before."""
    ts = event.get("origin_server_ts") if isinstance(event, dict) else None
    return not isinstance(ts, int) or ts < since * 1000


def _rooms_of(events: list[Any]) -> list[str]:
    """The rooms of a transaction's events, in order of first appearance."""
    rooms: dict[str, None] = {}
    for event in events:
        if isinstance(event, dict) and isinstance(event.get("room_id"), str):
            rooms[event["room_id"]] = None
    return list(rooms)


def _txn_number(txn_id: str | None) -> int | None:
    """Synapse's transaction number, None for any other id ("²" is a digit to str.isdigit, and
    int() refuses it; int() also refuses over 4,300 digits)."""
    if txn_id is None or not (txn_id.isascii() and txn_id.isdigit()) or len(txn_id) > 30:
        return None
    return int(txn_id)
