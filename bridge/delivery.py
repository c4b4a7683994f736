"""The delivery worker of one target network: the outbox, carried out against its homeserver.

Per target room strictly first in first out; rooms proceed independently, at most `concurrency`
requests in flight per network. Every send uses the action's deterministic transaction id, so a
retry after a crash or a timeout cannot duplicate. Whether a failure is retried is the core's
call (bridge/core/retry.py). A permanent refusal marks the action failed and, for a relayed
message, queues one notice to the sender's room in the same commit.

When the homeserver stops answering, one probe task asks it every few seconds whether it is back;
the moment it is, every retry waiting on a backoff goes at once, so a homeserver's return is not
followed by minutes of idle backoff.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import trio

from bridge.core.actions import (
    BotTask,
    GhostSync,
    JoinRoom,
    LeaveRoom,
    Member,
    Redact,
    RoomState,
    SendMessage,
    SendNotice,
    txn_id,
)
from bridge.core.media import DEFAULT_MAX_BYTES, STICKER, media_uris, with_uris, without_file
from bridge.core.model import Network
from bridge.core.notices import failure_notice, file_not_carried_notice
from bridge.core.retry import Verdict, backoff, classify, misconfigured
from bridge.ghostkeeper import GhostKeeper
from bridge.locks import promptly
from bridge.matrix.client import Homeserver, HomeserverError, MatrixError, Unreachable
from bridge.media import THUMBNAIL_DEADLINE, MediaCarrier, MediaGone, MediaTooLarge, SourceBusy
from bridge.metrics import Metrics
from bridge.pacing import Pacing
from bridge.store import OutboxItem, Store

log = logging.getLogger(__name__)

MEDIA_EVENT_TYPES = frozenset({"m.room.message", STICKER})
TOKEN_ERROR_EVERY = 300.0  # seconds between two ERRORs about a refused as_token
# Tries of a file that cannot be carried for a passing reason (its server busy or stalled, an
# upload that broke off) before the message goes without it: about 20 minutes of backoff. A
# file must not hold its room's queue for ever.
MEDIA_TRIES = 10


class FileNotCarried(MatrixError):
    """A message's file could not be carried here (`cause` says why); the message itself
    may go without it."""

    def __init__(self, cause: MatrixError | HomeserverError) -> None:
        status = cause.status if cause.status is not None else 503
        super().__init__(status, cause.errcode or "M_UNKNOWN",
                         cause.message if isinstance(cause, MatrixError) else str(cause),
                         cause.retry_after_ms, cause.server_name)
        self.cause = cause
PAGE = 50  # outbox rows read at once per room: memory stays flat whatever the backlog
UNWAITED = 8  # a room's drain passes through the scheduler at least once per this many actions
PROBE_MIN, PROBE_MAX = 0.5, 5.0  # seconds between "are you back?" probes of a silent homeserver
# Seconds an emptied room's drain waits for more before it ends (between LINGER and twice it):
# the next push's rows are handed to it, instead of a task started for them.
LINGER = 5.0


class _Parked:
    """A drain waiting for more actions in its room (see DeliveryWorker._linger)."""

    __slots__ = ("event", "since", "stay")

    def __init__(self, since: float) -> None:
        self.event = trio.Event()
        self.since = since
        self.stay = True  # False: idle too long, end (unless given something meanwhile)


class DeliveryWorker:
    def __init__(
        self,
        network: Network,
        homeservers: Mapping[str, Homeserver],
        networks: Mapping[str, Network],
        store: Store,
        key: bytes,
        *,
        wake: Callable[[str], object] = lambda network: None,  # its answer is not used
        on_recovered: Callable[[str], None] = lambda network: None,
        concurrency: int = 8,
        jitter: Callable[[], float] = random.random,
        metrics: Metrics | None = None,
        bot: Callable[[BotTask], Awaitable[None]] | None = None,
        max_media_bytes: int = DEFAULT_MAX_BYTES,
        pacing: Pacing | None = None,
    ) -> None:
        self.network = network
        self.pacing = pacing  # told when a send's first try is answered (bridge/pacing.py)
        self.bot = bot
        self.hs = homeservers[network.id]
        self.homeservers = homeservers
        self.networks = networks
        self.store = store
        self.key = key
        self.ghosts = GhostKeeper(homeservers, networks, store, key)
        self.media = MediaCarrier(homeservers, store, max_media_bytes)
        self.ghosts.media = self.media
        self.wake_network = wake
        self.on_recovered = on_recovered
        self.jitter = jitter
        self._slots = trio.CapacityLimiter(concurrency)
        self._wakeup = trio.Event()
        self._back = trio.Event()  # set when the homeserver answers again after silence
        self._stop = trio.Event()
        self._probing = False
        self._active: set[str] = set()  # rooms being drained (or whose drain lingers)
        self._parked: dict[str, _Parked] = {}  # rooms whose drain lingers, waiting for more
        self._ready: set[str] = set()  # rooms named by wake() since the last look
        self._rescan = True  # look for every room with pending actions (not only _ready)
        # Rooms whose last drain ended on an empty read, and written to since only by writers
        # that handed the rows they wrote to wake(): for these, those rows are the whole queue.
        self._emptied: set[str] = set()
        # Drains that know their room's whole queue (they were handed it, or read it whole):
        # the rows written since, handed on by their writers. Such a drain sends them, and ends
        # without reading the outbox; a writer that hands nothing takes its room out.
        self._known: dict[str, list[OutboxItem]] = {}
        self._retrying: set[str] = set()  # rooms whose drain waits to retry a send
        self._paging: set[str] = set()  # rooms whose drain's last read found a full page
        # Rows a drain holds in memory (a page read, or handed) cancelled since: not to be sent.
        self._cancelled: dict[str, set[int]] = {}
        self._nursery: trio.Nursery | None = None
        self.metrics = metrics or Metrics()
        self.unreachable_since: float | None = None  # trio time of the first silent answer
        # Whether this network's homeserver refuses the bridge's as_token (since the last send
        # that got through): /health says so at once, an admin's to mend.
        self.token_refused = False
        self._token_error_at = -math.inf  # when that was last logged at ERROR
        self._proving = False  # its probe answered; a send is still to show it is back
        self.metrics.reachable.labels(network.id).set(1)
        self._send_seconds = self.metrics.send_seconds.labels(network.id)
        self._relayed: dict[str, Any] = {}
        # A failed commit takes back delivery records ("done" marks) of any room: look at
        # every room with pending actions again, or those would wait for their room's next push.
        store.on_lost(self._lost)
        store.on_cancel(self._cancel)
        self._losses = 0  # failed commits so far (see _lost)

    # -- control -------------------------------------------------------------------------------

    def wake(
        self, rooms: Iterable[str] | Mapping[str, Sequence[OutboxItem] | None] | None = None
    ) -> bool:
        """New actions were written for this network, into `rooms` if the writer knows (a
        pushed transaction does): look there, or else in every room with pending actions.
        `rooms` may map each room to the rows just written there, in order (Store.enqueue's
        answer; None if not known), all of them, in the same step as the writing (no await
        between).
        Return whether sends were under way already (the new ones may queue behind them)."""
        busy = len(self._active) > len(self._parked)
        nursery = self._nursery
        if rooms is not None and nursery is not None and not self._stop.is_set():
            handed = rooms if isinstance(rooms, Mapping) else None
            for room_id in rooms:
                if room_id in self._active:
                    # Its drain reads again before it ends, unless it knows the whole queue
                    # and is handed these rows too.
                    known = self._known.get(room_id)
                    if known is not None:
                        written = handed[room_id] if handed is not None else None
                        if written and len(known) + len(written) <= PAGE:
                            known.extend(written)
                        else:  # not handed, or a backlog: read a page at a time, memory flat
                            del self._known[room_id]
                            self._paging.add(room_id)  # a push does not wait behind it
                    parked = self._parked.pop(room_id, None)
                    if parked is not None:
                        parked.event.set()  # its drain takes the rows handed, or reads
                    continue
                items = None
                if handed is not None and room_id in self._emptied:
                    # Nothing else is pending there: the rows written are the room's queue, and
                    # reading them back would only turn them into the same actions again.
                    written = handed[room_id]
                    items = list(written) if written else None
                self._emptied.discard(room_id)
                self._active.add(room_id)
                if items:
                    # Known from now, not from when the drain first runs: writers in between
                    # (another push, the bot) must find it so, or their rows would be missed.
                    self._known[room_id] = []
                # Straight to the room's drain: through the run loop, every push cost a pass
                # of the scheduler (and its wake-up) before its sends could start.
                try:
                    nursery.start_soon(self._drain, room_id, items)
                except RuntimeError:  # the worker's nursery closed (it crashed, or is ending)
                    self._active.discard(room_id)
                    break
            else:
                return busy
            rooms = None  # what is left is for the run loop, if it ever runs again
        if rooms is None:
            self._rescan = True
            self._emptied.clear()
            self._known.clear()
            self._unpark(list(self._parked))  # in _active, so the rescan passes them by: read
        else:
            self._ready.update(rooms)
            self._emptied.difference_update(rooms)
            for room_id in rooms:
                self._known.pop(room_id, None)
            self._unpark([room_id for room_id in rooms if room_id in self._parked])
        self._wakeup.set()
        return busy

    def _unpark(self, rooms: Iterable[str], *, stay: bool = True) -> None:
        for room_id in rooms:
            parked = self._parked.pop(room_id)
            parked.stay = stay
            parked.event.set()

    def _lost(self) -> None:
        """A failed commit took back delivery records (event map rows, "done" marks) of any
        room. Their actions are pending again, and must go before whatever refers to them:
        every drain drops the rest of the rows it holds and reads its room again (a redaction
        held in memory would otherwise find no copy to redact, and be done with nothing)."""
        self._losses += 1
        self.wake()

    def _cancel(self, network: str, room_id: str, row_id: int) -> None:
        """A pending action was cancelled (its message redacted before it went out). A room
        without a drain holds nothing in memory: its next read will not see the row."""
        if network == self.network.id and room_id in self._active:
            self._cancelled.setdefault(room_id, set()).add(row_id)

    def stop(self) -> None:
        """Finish the actions in flight, start no new one; `run` then returns."""
        self._stop.set()
        self._unpark(list(self._parked))
        self._wakeup.set()

    @property
    def reachable(self) -> bool:
        return not (self._probing or self._proving)

    def unreachable_for(self) -> float:
        """Seconds the homeserver has not answered (0 while it does)."""
        if self.unreachable_since is None:
            return 0.0
        return trio.current_time() - self.unreachable_since

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._run(task_status)
        self.store.commit_deferred()

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while not self._stop.is_set():
                    self._wakeup = trio.Event()
                    if self._rescan:
                        # The outbox's index answers this, but it is a query per wake-up: a
                        # push names its rooms instead, and only the rare others ask for this.
                        self._rescan = False
                        self._ready.clear()
                        rooms: Iterable[str] = self.store.pending_rooms(self.network.id)
                    else:
                        rooms, self._ready = self._ready, set()
                    for room_id in rooms:
                        if room_id not in self._active:
                            self._active.add(room_id)
                            nursery.start_soon(self._drain, room_id)
                    with trio.move_on_after(LINGER):
                        await self._wakeup.wait()
                    # Drains that lingered a whole LINGER for nothing end.
                    idle = trio.current_time() - LINGER
                    self._unpark([room_id for room_id, parked in self._parked.items()
                                  if parked.since <= idle], stay=False)
        finally:
            self._nursery = None  # closed: wake() must not start drains in it any more

    # -- the work ------------------------------------------------------------------------------

    async def _drain(self, room_id: str, handed: list[OutboxItem] | None = None) -> None:
        """Carry out the room's pending actions in order, `handed` (the whole queue, see
        wake()) first, until none is left."""
        emptied = False
        done = 0
        try:
            while not self._stop.is_set():
                if handed:
                    items, handed = handed, None
                elif (known := self._known.get(room_id)) is not None:
                    # Every row written here since this drain started was handed on: those
                    # are what is left, and none left means the room is done, no read needed.
                    items, self._known[room_id] = known, []
                else:
                    items = self.store.pending_actions(self.network.id, room_id, PAGE)
                    if len(items) == PAGE:
                        self._paging.add(room_id)  # a backlog
                    else:
                        self._paging.discard(room_id)
                        # The read found the room's whole queue: from here, the rows pushed
                        # are handed on (under load, a push's rows then need no read back).
                        self._known[room_id] = []
                if not items:
                    # Nothing can have been queued here since this read (no await between),
                    # and what was queued before it was read: the room is done, for now.
                    if not await self._linger(room_id):
                        emptied = True
                        break
                    continue
                losses = self._losses
                # Sending, from this batch's first row to its last (its backoffs aside): echo
                # pushes from this homeserver wait for that (bridge/pacing.py). Not counted
                # per send: between two of a room's sends it is not quiet.
                with self._counted(True):
                    for item in items:
                        if self._losses != losses:
                            break  # records lost (see _lost): read the room again, in order
                        cancelled = self._cancelled.get(room_id) if self._cancelled else None
                        if cancelled and item.id in cancelled:
                            # Done already, unsent. (Should the cancelling commit be lost, the
                            # row is pending again, or its id taken by a new row: the next read
                            # brings it back, and a read there must be.)
                            cancelled.discard(item.id)
                            self._tried(item.id)
                            self._known.pop(room_id, None)
                            continue
                        if self._stop.is_set():
                            return
                        delivered = await self._deliver(item, losses)
                        if delivered is None:
                            break  # records lost meanwhile: read the room again, in order
                        if not delivered:
                            return
                        done += 1
                        if done % UNWAITED == 0:
                            # Some actions need no request (the room left its portal, nothing
                            # to redact) and so never wait: a backlog of them must not hold the
                            # whole loop. Not after every action: a pass between a send's answer
                            # and the next send lets pushes in first, and at full load they then
                            # outrun the sends (30 ms of queueing at p50 when it was every one).
                            await trio.lowlevel.checkpoint()
        finally:
            self._active.discard(room_id)
            self._paging.discard(room_id)
            self._known.pop(room_id, None)
            self._cancelled.pop(room_id, None)
            if emptied:
                self._emptied.add(room_id)
            else:
                self.wake()  # left with actions pending (stopping, or a bug): look again

    async def _linger(self, room_id: str) -> bool:
        """Wait for more actions in the room whose queue was just found empty (in known mode:
        wake() hands this drain the rows pushed, or asks it to read). False once it should end:
        it was idle for LINGER and nothing came meanwhile."""
        # Holding no rows, the drain has no use for the ids of rows cancelled so far.
        self._cancelled.pop(room_id, None)
        parked = self._parked[room_id] = _Parked(trio.current_time())
        try:
            await parked.event.wait()
        finally:
            if self._parked.get(room_id) is parked:  # cancelled while parked
                del self._parked[room_id]
        # Told to end, rows may still have come between that and now: then it goes on.
        return parked.stay or self._stop.is_set() or self._known.get(room_id) != []

    async def _deliver(self, item: OutboxItem, losses: int) -> bool | None:
        """Carry out one action until done or failed; False if stopped before either, None if
        a commit was lost since the drain read it (`losses` then): what it refers to may be
        pending again, and must go first, so the drain reads its room again."""
        attempt = item.attempts
        while True:
            try:
                async with promptly(self._slots):
                    if self._losses != losses:  # checked after every wait: a slot, a backoff
                        return None
                    self.store.sending(item.action.txn_id)
                    accepted = self.hs.accepted
                    started = trio.current_time()
                    await self._perform(item)
                    self._send_seconds.observe(trio.current_time() - started)
                relayed = self._relayed.get(item.action.kind)
                if relayed is None:  # looked up once per kind
                    relayed = self.metrics.relayed.labels(self.network.id, item.action.kind)
                    self._relayed[item.action.kind] = relayed
                relayed.inc()
                if self.hs.accepted != accepted:
                    # A request of ours was taken (not an action that needed none, after
                    # which its token may still be refused).
                    self.token_refused = False
                self._heard()
                self._tried(item.id)
                return True
            except HomeserverError as exc:
                self._tried(item.id)
                attempt += 1
                verdict = classify(exc.status, exc.errcode)
                self.metrics.failures.labels(self.network.id, verdict.value).inc()
                if isinstance(exc, FileNotCarried) and isinstance(item.action, SendMessage) and (
                        verdict is Verdict.PERMANENT
                        or (isinstance(exc.cause, SourceBusy) and attempt >= MEDIA_TRIES)):
                    # The words, the caption, the reply still go; the sender hears why the
                    # file does not. Tried again at once, as a text message. (Only the source's
                    # failures count towards MEDIA_TRIES: a target that fails for a while
                    # delays the message as it would a text, and drops nothing.)
                    replaced = self._go_without_file(item, item.action, exc)
                    if replaced is None:
                        return True  # its row is gone (redacted, its room unlinked)
                    item = replaced
                    continue
                ours = exc.server_name in (None, self.network.server_name)
                if ours and exc.status is not None and not isinstance(
                        exc, Unreachable | FileNotCarried):  # a file's trouble may be its source's
                    # A refusal, a 401, a 429, a 500 with a Matrix errcode: the homeserver
                    # answered, whatever it said (a proxy's page for a dead one is Unreachable).
                    self._heard()
                if verdict is Verdict.PERMANENT:
                    self._fail(item, exc)
                    return True
                self.store.note_attempt(item, str(exc))
                if ours and (isinstance(exc, Unreachable) or (
                        isinstance(exc, FileNotCarried) and isinstance(exc.cause, Unreachable))):
                    self._start_probe()
                delay = backoff(attempt, self.jitter(), exc.retry_after_ms)
                if misconfigured(exc.status, exc.errcode):
                    # Named by the homeserver that refused: a bot task here may have called
                    # another network's. At ERROR once in TOKEN_ERROR_EVERY, not once per
                    # room and try.
                    net = next((n for n in self.networks.values()
                                if n.server_name == exc.server_name), self.network)
                    self.token_refused = self.token_refused or net is self.network
                    now = trio.current_time()
                    if now - self._token_error_at >= TOKEN_ERROR_EVERY:
                        self._token_error_at = now
                        log.error("%s refuses the bridge's as_token (%s): check networks.%s's "
                                  "as_token against the registration file it reads; what is "
                                  "queued for it waits, retried with backoff", net.server_name,
                                  exc.errcode, net.id)
                log.info(
                    "delivery to %s failed (%s); try %d in %.1f s",
                    self.network.server_name, exc, attempt + 1, delay,
                )
                room_id = item.action.room_id
                self._retrying.add(room_id)
                if self.pacing is not None:
                    self.pacing.release(self.network.id, room_id)  # nothing goes there soon
                try:
                    with self._counted(False):  # nor, meanwhile, from this drain
                        if not await self._backoff(delay):
                            return False
                finally:
                    self._retrying.discard(room_id)
            except Exception as exc:
                # A bug of ours must not wedge the room behind one poisoned action; and its
                # sender is told, as after a refusal.
                self._tried(item.id)
                log.exception("action %d for %s failed unexpectedly", item.id, self.network.id)
                with self.store.transaction():
                    if self.store.finish(item, "failed", f"internal error: {type(exc).__name__}",
                                         scrub=isinstance(item.action, BotTask)) and isinstance(
                            item.action, SendMessage):
                        self.store.enqueue([failure_notice(
                            item.action.source, self.network.id, self.network.label,
                            "TB_INTERNAL")])
                if isinstance(item.action, SendMessage):
                    self.wake_network(item.action.source.network)
                return True

    def _counted(self, sending: bool) -> AbstractContextManager[None]:
        """A drain's batch, counted as sending into this network (or, within it, a pause)."""
        if self.pacing is None:
            return nullcontext()
        counted = self.pacing.batch if sending else self.pacing.paused
        return counted(self.network.id)

    def may_hold(self, room_id: str) -> bool:
        """Whether a new send into `room_id` will be tried soon, so that a push may wait for
        its answer (bridge/pacing.py): the homeserver not known to be silent, the room not
        waiting to retry, nor working through a backlog read a page at a time."""
        return self.reachable and room_id not in self._retrying and room_id not in self._paging

    def _tried(self, row: int) -> None:
        """A push may wait for this first answer (bridge/pacing.py)."""
        pacing = self.pacing
        if pacing is not None and pacing.waiting:
            pacing.tried(row)

    async def _backoff(self, delay: float) -> bool:
        """Wait `delay` s, or less if the homeserver comes back; False if told to stop."""
        back, stop = self._back, self._stop
        with trio.move_on_after(delay):
            async with trio.open_nursery() as nursery:
                for event in (back, stop):
                    nursery.start_soon(_wait_then_cancel, event, nursery.cancel_scope)
        return not stop.is_set()

    def _go_without_file(self, item: OutboxItem, action: SendMessage,
                         exc: FileNotCarried) -> OutboxItem | None:
        """`item` goes as text from now on: its row says so (a retry after a crash sends the
        very same request, which the homeserver knows by its transaction id), and its sender
        is told why, in the same commit. The item as it now is; None if its row is gone."""
        cause = exc.cause
        log.info("a file for %s was not carried (%s): the message goes without it",
                 self.network.id, cause)
        too_large = isinstance(cause, MediaTooLarge)
        if isinstance(cause, MediaTooLarge | MediaGone):
            why = cause.message  # the bridge's words, or the sender's own homeserver's
        elif isinstance(cause, SourceBusy):
            why = "your homeserver kept failing to give it"
        else:  # the target's doing: its words stay there
            why = f"{self.network.label}'s homeserver did not take it"
        text = dataclasses.replace(action, content=without_file(action.content, too_large),
                                   event_type="m.room.message")
        with self.store.transaction():
            if not self.store.replace_action(item, text):
                return None
            self.store.enqueue([file_not_carried_notice(
                action.source, self.network.id, self.network.label, why[:300])])
        self.wake_network(action.source.network)
        return OutboxItem(item.id, item.attempts, text)

    def _fail(self, item: OutboxItem, exc: HomeserverError) -> None:
        action = item.action
        log.warning(
            "not delivered to %s (%s): %s action %d (%s from %s, to %s) refused: %s",
            self.network.label, self.network.server_name, action.kind, item.id,
            action.origin[1], action.origin[0], action.room_id, exc,
        )
        with self.store.transaction():
            if not self.store.finish(item, "failed", str(exc), scrub=isinstance(action, BotTask)):
                return  # its push's commit failed: it comes again, and so may this refusal
            if isinstance(action, SendMessage):
                notice = failure_notice(
                    action.source, self.network.id, self.network.label, exc.errcode
                )
                self.store.enqueue([notice])
        if isinstance(action, SendMessage):
            self.wake_network(action.source.network)

    async def _perform(self, item: OutboxItem) -> None:
        action = item.action
        if isinstance(action, JoinRoom):
            asked = time.time()
            await self.hs.join(action.room_id)
            with self.store.transaction():
                self.store.finish(item, "done")
                # A portal room the bot could not join at the start is watched from now.
                self.store.rooms_joined(self.network.id, [(action.room_id, asked)],
                                        invited=True)
            log.info("joined %s on %s", action.room_id, self.network.server_name)
            return
        if isinstance(action, SendNotice):
            await self.hs.send_event(
                action.room_id, "m.room.message", action.content, action.txn_id,
                self.network.bot_user_id,
            )
            self.store.finish(item, "done")
            return
        if isinstance(action, LeaveRoom):
            await self._leave(action)
            self.store.finish(item, "done")
            return
        if isinstance(action, BotTask):
            # A command may take seconds (rooms to make on busy homeservers): echo pushes do
            # not wait for it, as no push waits for a bot task (bridge/pacing.py).
            with self._counted(False):
                await self._bot_task(item, action)
            return
        src = action.source
        if isinstance(action, Redact):
            await self._redact(item, action)
            return
        if isinstance(action, GhostSync):
            await self._ghost_sync(action)
            self.store.finish(item, "done")
            return
        portal_id = self.store.portal_id_of(self.network.id, action.room_id)
        if portal_id is None or portal_id != self.store.portal_id_of(src.network, src.room_id):
            # Queued before one of the rooms left the portal (unlink, the bot kicked): the
            # ghost must not come back into a room that is no longer bridged.
            self.store.finish(item, "done", "not sent: the room left its portal")
            return
        if isinstance(action, Member):
            self.store.finish(item, "done", await self._member(action))
            return
        if isinstance(action, RoomState):
            self.store.finish(item, "done", await self._room_state(action))
            return
        if action.unless_member and (
            await self.hs.membership(action.room_id, action.unless_member) == "join"
        ):
            # The sender's own linked account is in this room: no mirror of them as a ghost.
            self.store.finish(item, "done", "not mirrored: the sender's own account is here")
            return
        content = self._map_relation(action)
        relates = content.get("m.relates_to")
        if action.event_type == "m.reaction" and not (
            isinstance(relates, Mapping) and "event_id" in relates
        ):
            self.store.finish(item, "done", "a reaction to an event never relayed here")
            return
        if _is_replacement(action.content) and not (
            isinstance(relates, Mapping) and "event_id" in relates
        ):
            # Its original never came here: a command (whose edit would carry the arguments
            # to everyone), a message refused here (its sender was told), or one from before
            # the portal. Not sent as a message of its own, as a client would not show it.
            self.store.finish(item, "done", "an edit of an event never relayed here")
            return
        event_id = await self._send_as_ghost(action, content)
        # Committed with the next ones: see Store.deferred.
        self.store.delivered(item, src.network, src.room_id, src.event_id, event_id)
        log.debug("relayed %s from %s as %s", src.event_id, src.network, event_id)

    def _map_relation(self, action: SendMessage) -> Mapping[str, Any]:
        """The content with `m.relates_to`'s event ids (a relation's, a reply's) mapped to this
        network's copies of those events: they stand outside any ciphertext. A relation to an
        event that never came here is dropped."""
        relates = action.content.get("m.relates_to")
        if not isinstance(relates, Mapping):
            return action.content
        mapped: dict[str, Any] = dict(relates)
        src = action.source.network
        before = set(mapped)
        if isinstance(relates.get("event_id"), str):
            target = self.store.counterpart(src, relates["event_id"], self.network.id)
            if target is None:
                mapped = {k: v for k, v in mapped.items() if k not in ("event_id", "rel_type")}
            else:
                mapped["event_id"] = target
        reply = relates.get("m.in_reply_to")
        if isinstance(reply, Mapping) and isinstance(reply.get("event_id"), str):
            target = self.store.counterpart(src, reply["event_id"], self.network.id)
            if target is None:
                del mapped["m.in_reply_to"]
            else:
                mapped["m.in_reply_to"] = {**reply, "event_id": target}
        if set(mapped) != before:
            # Sent without the relation rather than not at all.
            log.debug("%s refers to an event never relayed to %s: sent without the relation",
                     action.source.event_id, self.network.id)
        content = dict(action.content)
        if mapped:
            content["m.relates_to"] = mapped
        else:
            del content["m.relates_to"]
        return content

    async def _redact(self, item: OutboxItem, action: Redact) -> None:
        src = action.source
        target = self.store.counterpart(src.network, action.redacts, self.network.id)
        if target is None:
            # Never sent here (redacted while still queued, or from before the portal).
            self.store.finish(item, "done", "nothing to redact on this network")
            return
        ghost = await self.ghosts.ensure(
            self.network.id, action.ghost, src.network, src.sender, action.room_id,
            room_hint=src.room_id,
        )
        try:
            await self.hs.redact(action.room_id, target, action.txn_id, ghost, action.reason)
        except MatrixError as exc:
            if exc.errcode != "M_FORBIDDEN":
                raise
            # A moderator redacted someone else's message: their ghost has no power here;
            # the bot may (a portal made by link gives it all).
            await self.hs.redact(action.room_id, target, action.txn_id,
                                 self.network.bot_user_id, action.reason)
        self.store.finish(item, "done")

    async def _member(self, action: Member) -> str | None:
        """Do to the person's ghost what was done to them; a note if it could not be done (no
        power to kick there, say): membership is mirrored as far as the room allows."""
        src, net, hs = action.source, self.network.id, self.hs
        if action.op in ("kick", "unban") and not self.store.ghost(net, action.ghost)[0]:
            return "not mirrored: the person has no ghost here"  # nobody to kick or unban
        ghost = await self.ghosts.ensure(
            net, action.ghost, src.network, action.person,
            action.room_id if action.op == "join" else None, room_hint=src.room_id,
        )
        if action.op == "join":
            return None
        actors = [self.network.bot_user_id]
        if action.actor is not None:
            try:
                actors.insert(0, await self.ghosts.ensure(
                    net, action.actor, src.network, src.sender, action.room_id,
                    room_hint=src.room_id))
            except MatrixError as exc:
                if exc.status != 403:
                    raise
                # The actor's ghost may not come in (invite-only, banned): the bot acts.
        last = "no one may"
        for actor in actors:
            try:
                if action.op == "invite":
                    await hs.invite(action.room_id, ghost, as_user=actor)
                else:
                    await hs.kick(action.room_id, ghost, actor, action.reason, action.op)
            except MatrixError as exc:
                if exc.status != 403:
                    raise
                last = str(exc)
                continue
            if action.op in ("kick", "ban"):
                self.store.set_ghost_in_room(net, action.ghost, action.room_id, False)
            return None
        log.info("%s of a ghost on %s not mirrored: %s", action.op, net, last)
        return f"not mirrored: {last}"

    async def _ghost_sync(self, action: GhostSync) -> None:
        registered, _ = self.store.ghost(self.network.id, action.ghost)
        if not registered:  # a ghost made later gets the new name and avatar then
            return
        src = action.source
        await self.ghosts.profile_changed(self.network.id, action.ghost, src.network,
                                          src.sender, action.room_id, action.name)

    async def _room_state(self, action: RoomState) -> str | None:
        """Set the name, topic or avatar here; a note if the room does not let the bot."""
        content = dict(action.content)
        if "url" in content:
            content["url"] = await self.media.carry(
                action.source.network, content["url"], self.network.id, self.network.bot_user_id)
        try:
            await self.hs.put_state(action.room_id, action.event_type, "", content)
        except MatrixError as exc:
            if exc.errcode != "M_FORBIDDEN":
                raise
            # The room's admins did not give the bot the power to change it: theirs to decide,
            # but the person who changed it is told why the other rooms did not follow.
            log.info("%s not mirrored to %s: %s", action.event_type, self.network.id, exc)
            src = action.source
            what = action.event_type.removeprefix("m.room.")
            body = (f"The room's {what} was not copied to {self.network.label}: the bridge's "
                    "bot there may not change it (give it the moderator level there, or say "
                    "mirror off).")
            notice = SendNotice(src.network, src.room_id, src.event_id,
                                {"msgtype": "m.notice", "body": body},
                                txn_id(src.network, src.event_id, self.network.id, "state-refused"))
            with self.store.transaction():
                self.store.enqueue([notice])
            self.wake_network(src.network)
            return f"not mirrored: {exc}"
        return None

    async def _leave(self, action: LeaveRoom) -> None:
        if not self.store.ghost_in_room(self.network.id, action.ghost, action.room_id):
            return
        try:
            await self.hs.leave(action.room_id, as_user=self.network.user_id(action.ghost))
        except MatrixError as exc:
            if exc.status not in (403, 404):  # already out, or the room is gone
                raise
        self.store.set_ghost_in_room(self.network.id, action.ghost, action.room_id, False)

    async def _bot_task(self, item: OutboxItem, action: BotTask) -> None:
        """A typed command runs at most once: it is marked done before it starts, since
        running it again after a crash could repeat what it half did (rooms made, requests
        sent); the bot replies with what went wrong instead of retrying. The bot's other tasks
        (answering an invite, a DM request and its answer) are safe to repeat, and retry with
        backoff like any action."""
        if self.bot is None:
            self.store.finish(item, "failed", "no bot in this process", scrub=True)
            return
        if action.task != "command":
            await self.bot(action)
            self.store.finish(item, "done", scrub=True)
            return
        with self.store.transaction():  # on disk before it runs (with any records waiting)
            marked = self.store.finish(item, "done", scrub=True)
        if not marked:
            # Read before its push was committed, and that commit failed: the homeserver pushes
            # the command again, and it runs then, once.
            log.info("a command on %s not run: its transaction was not stored", self.network.id)
            return
        try:
            await self.bot(action)
        except HomeserverError as exc:
            log.warning("command on %s failed: %s", self.network.id, exc)

    async def _send_as_ghost(self, action: SendMessage, content: Mapping[str, Any]) -> str:
        src = action.source
        event_type = action.event_type
        carried = False
        for last_try in (False, True):
            ghost = await self.ghosts.ensure(
                self.network.id, action.ghost, src.network, src.sender, action.room_id,
                room_hint=src.room_id,
            )
            if not carried and event_type in MEDIA_EVENT_TYPES and media_uris(content):
                # Once: after a re-join the content already holds this network's copies.
                try:
                    content = await self._carry_files(src.network, content, ghost)
                except HomeserverError as exc:
                    raise FileNotCarried(exc) from exc
                carried = True
            try:
                return await self.hs.send_event(
                    action.room_id, event_type, content, action.txn_id, ghost
                )
            except MatrixError as exc:
                # The ghost was kicked or left since we last saw it join: join again, once.
                if exc.errcode != "M_FORBIDDEN" or last_try:
                    raise
                self.store.set_ghost_in_room(self.network.id, action.ghost, action.room_id, False)
        raise AssertionError("unreachable")

    async def _carry_files(
        self, src_network: str, content: Mapping[str, Any], ghost: str
    ) -> Mapping[str, Any]:
        """The content with its file (and thumbnail) carried here; a thumbnail that cannot be
        carried is left out rather than holding the message back."""
        uris = media_uris(content)
        copies = {uris[0]: await self.media.carry(src_network, uris[0], self.network.id, ghost)}
        for thumb in uris[1:]:
            try:
                copies[thumb] = await self.media.carry(src_network, thumb, self.network.id, ghost,
                                                       deadline=THUMBNAIL_DEADLINE)
            except HomeserverError as exc:  # refused, or no answer: the message goes without
                log.info("a thumbnail was not carried to %s: %s", self.network.id, exc)
        return with_uris(content, copies)

    # -- reachability --------------------------------------------------------------------------

    def noticed_unreachable(self) -> None:
        """Another part found the homeserver not answering (a start-up call, a timeline read):
        it counts as down, for /health and the metrics, until the probe hears it again, as
        after a failed send."""
        self._start_probe()

    def _start_probe(self) -> None:
        if self._probing or self._nursery is None:
            return
        self._probing = True
        if self.pacing is not None:
            self.pacing.release(self.network.id)  # nothing goes there until it answers
        proving = self._proving
        if not proving:  # a new outage; while proving, the same one goes on (told once)
            self.unreachable_since = trio.current_time()
            self.metrics.reachable.labels(self.network.id).set(0)
        self._nursery.start_soon(self._probe, proving)

    async def _probe(self, proving: bool = False) -> None:
        if not proving:
            log.warning("%s is not answering; retrying as soon as it is back",
                        self.network.server_name)
        pause = PROBE_MIN
        silent = False  # whether /versions itself went unanswered
        try:
            while not self._stop.is_set():
                with trio.move_on_after(pause):
                    await self._stop.wait()
                try:
                    await self.hs.versions()
                except HomeserverError:
                    silent = True
                    pause = min(pause * 2, PROBE_MAX)
                    continue
                if proving and not silent:
                    # It answers, as it did: its sends fail for a reason of their own (an
                    # overloaded homeserver, a proxy that drops sends): they back off.
                    return
                if self.unreachable_since is None:
                    pass  # a send got an answer meanwhile: over already
                elif self.store.outbox_depth().get(self.network.id, 0):
                    log.info("%s answers its probe; what waits for it goes now",
                             self.network.server_name)
                    self._proving = True
                else:
                    self._probing = False
                    self._heard()  # nothing to prove it with: its answer will do
                back, self._back = self._back, trio.Event()
                back.set()
                if silent:  # a return, not a slow call: its pushes are distrusted a while
                    self.on_recovered(self.network.id)
                return
        finally:
            self._probing = False

    def _heard(self) -> None:
        """The homeserver answered a request (a send, a refusal, or the probe with nothing
        waiting): an outage, if one was on, is over."""
        if self.unreachable_since is None:
            return
        if self._probing and not self._proving:
            return  # silent when last asked: its probe says when it is back
        self._proving = False
        self.unreachable_since = None
        self.metrics.reachable.labels(self.network.id).set(1)
        log.warning("%s answers again", self.network.server_name)


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _is_replacement(content: Mapping[str, Any]) -> bool:
    """An edit (`m.replace`): readable in the clear even on an encrypted event."""
    relates = content.get("m.relates_to")
    return isinstance(relates, Mapping) and relates.get("rel_type") == "m.replace"
