"""Taking in events: dedupe, translate, queue, commit, in one SQLite transaction.

This is invariant 1 of ../shared/design.md in code: the caller answers the homeserver only after
what ``take_transaction`` wrote is committed: at once, or (``defer=True``, the daemon's way) a
moment later through bridge/commits.py, after the sends it asks for went out. Dedupe is by
event id, since Synapse reuses transaction ids after it restarts; the transaction id is only a
quick hint.
Reconciliation (bridge/reconcile.py) feeds events read from a room's timeline through the same
``take_events``, so a pushed event and a reconciled one are one and the same to the bridge.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from bridge.core.actions import BotTask, SendNotice
from bridge.core.digest import blake2b_hex
from bridge.core.ghosts import is_bridge_user, is_our_user
from bridge.core.model import EventRef, Network
from bridge.core.notices import untranslated_notice
from bridge.core.translate import DEFAULT_RULES, RoomInfo, Rules, translate
from bridge.store import OutboxItem, Store

log = logging.getLogger(__name__)


class Taken(enum.Enum):
    """What taking in a pushed transaction did."""

    NOTHING = "nothing written"  # a transaction taken in before
    ECHOES = "nothing written: echoes alone"  # the bridge's own sends, pushed back
    SENDING = "written; sends leave now"  # a woken worker was idle: its sends start at once
    QUEUED = "written; sends queue"  # every worker woken was busy (or none was woken)


class Inbound:
    def __init__(
        self,
        store: Store,
        networks: Mapping[str, Network],
        key: bytes,
        wake: Callable[[str, Mapping[str, Sequence[OutboxItem] | None]], bool | None],
        rules: Rules = DEFAULT_RULES,
    ) -> None:
        self.store = store
        self.networks = networks
        self.key = key
        # Wakes a network's worker for the rooms given, each with the rows just written there
        # (None: not known) which a worker with nothing else queued for the room sends without
        # reading them back; True if it was sending already.
        self.wake = wake
        self.rules = rules  # replaced on reload

    def take_transaction(
        self, network_id: str, txn_id: str, body: bytes, events: list[Any], *,
        defer: bool = False, started: list[tuple[str, str, int]] | None = None,
    ) -> Taken:
        """Queue what a pushed transaction asks for and wake the workers. Committed before this
        returns, or with `defer` left to the caller (GroupCommit.durable), so that the sends
        need not wait for the fsync. Into `started`, if given: (network, room, row id) of each
        room's first new send, bot commands aside (bridge/pacing.py waits for their answers)."""
        if events and all(self.is_echo(event, network_id) for event in events):
            # Only what the bridge itself just sent (its ghosts' messages, their joins): the
            # homeserver pushes those back, one transaction each. Nothing is to be done about
            # them, so nothing is written and no fsync is spent (two pushes in three against
            # Synapse, whose answers bridge/pacing.py may hold so that they come together).
            return Taken.ECHOES
        digest = blake2b_hex(body, 16)
        if self.store.transaction_seen(network_id, txn_id, digest):
            log.debug("transaction %s from %s already taken in", txn_id, network_id)
            return Taken.NOTHING
        with self.store.deferred() if defer else self.store.transaction():
            _, targets = self._take(network_id, events, f"transaction {txn_id}")
            self.store.record_transaction(network_id, txn_id, digest)
        return Taken.QUEUED if self._wake(targets, started) else Taken.SENDING

    def is_echo(self, event: Any, network_id: str) -> bool:
        """An event by the bridge's own bot or ghosts that asks nothing of the bridge."""
        return _echo(event, self.networks[network_id], self.networks.values())

    async def push(self, network_id: str, txn_id: str, body: bytes, events: list[Any]) -> None:
        """The `Intake` interface (bridge/matrix/appservice.py) without reconciliation."""
        self.take_transaction(network_id, txn_id, body, events)

    def take_events(
        self, network_id: str, events: Iterable[Any], mark: tuple[str, str] | None = None
    ) -> int:
        """Queue what `events` (read from a timeline, oldest first) ask for, in one commit;
        with `mark` = (room, event id), move that room's mark in the same commit."""
        with self.store.transaction():
            queued, targets = self._take(network_id, events, "timeline")
            if mark is not None:
                self.store.set_room_mark(network_id, *mark)
        self._wake(targets)
        return queued

    def _wake(self, targets: Mapping[str, Mapping[str, Sequence[OutboxItem] | None]],
              started: list[tuple[str, str, int]] | None = None) -> bool:
        """Wake the targets' workers; whether every one of them was busy already."""
        busy = True
        for target, rooms in targets.items():
            busy = bool(self.wake(target, rooms)) and busy
            if started is not None:
                # A room's rows go in order: its first one's answer means that what was queued
                # there before is done too, and the rest follow without a push to wait for.
                started.extend((target, room_id, items[0].id)
                               for room_id, items in rooms.items()
                               if items and items[0].action.kind != BotTask.kind)
        return busy

    def _take(
        self, network_id: str, events: Iterable[Any], where: str
    ) -> tuple[int, dict[str, dict[str, list[OutboxItem] | None]]]:
        """Queue what `events` ask for; the count, and by network the rooms written to, each
        with the rows written there in order (None: not known)."""
        source = self.networks[network_id]
        targets: dict[str, dict[str, list[OutboxItem] | None]] = {}
        queued = 0
        for event in events:
            if not isinstance(event, dict):
                log.warning("skipped a non-object event in %s from %s", where, network_id)
                continue
            event_id, room_id = event.get("event_id"), event.get("room_id")
            if not isinstance(event_id, str) or not isinstance(room_id, str):
                log.warning("skipped an event without event_id or room_id from %s", network_id)
                continue
            if not self.store.mark_event_seen(network_id, event_id, room_id):
                continue  # taken in before (the mark is undone with the rest if this fails)
            portal = self.store.portal_for_room(network_id, room_id)
            room = self._room_info(network_id, room_id)
            person = event.get("state_key") if event.get("type") == "m.room.member" else None
            person = person if isinstance(person, str) else event.get("sender")
            linked = (
                self.store.linked_accounts(network_id, person) if isinstance(person, str) else []
            )
            try:
                result = translate(event, source, self.networks, portal, self.key, room=room,
                                   rules=self.rules, linked=linked,
                                   owner=self._owner(network_id, room_id))
            except Exception:
                # A bug of ours: failing the whole transaction would make the homeserver retry
                # it forever and stall this network. Skip the one event, loudly, and tell the
                # room, so that nobody believes a message reached the others that did not.
                log.exception("could not translate %s from %s; skipped it", event_id, network_id)
                notice = _untranslated_notice(event, network_id, portal is not None, source)
                if notice is not None:
                    written = self.store.enqueue([notice])
                    rooms = targets.setdefault(network_id, {})
                    queue = rooms.setdefault(room_id, [])
                    if written is None:
                        rooms[room_id] = None  # which rows: not known, so the worker reads
                    elif queue is not None:
                        queue.extend(written)
                    queued += 1
                continue
            if result.skipped:
                log.debug("%s from %s: %s", event_id, network_id, result.skipped)
            for profile in result.profiles:
                self.store.set_profile(profile.network, profile.user_id, profile.display_name,
                                       profile.avatar_url)
            for network, redacted in result.cancel:
                cancelled = self.store.cancel_pending(network, redacted, "redacted before delivery")
                if cancelled:
                    log.debug("%s from %s was redacted before it went out", redacted, network)
                for row_id, target, room_id in cancelled:
                    # Written by this same take (an event and its redaction in one push): not to
                    # be handed to the room's drain either.
                    queue = targets.get(target, {}).get(room_id)
                    if queue:
                        queue[:] = [item for item in queue if item.id != row_id]
            written = self.store.enqueue(result.actions)
            for action in result.actions:
                rooms = targets.setdefault(action.network, {})
                if written is None:
                    rooms[action.room_id] = None  # which rows: not known, so the worker reads
                else:
                    rooms.setdefault(action.room_id, [])
            for item in written or ():
                queue = targets[item.action.network][item.action.room_id]
                if queue is not None:
                    queue.append(item)
            queued += len(result.actions)
        if queued:
            log.debug("%s from %s: %d actions queued", where, network_id, queued)
        return queued, targets

    def _owner(self, network_id: str, room_id: str) -> Callable[[str], tuple[str, str] | None]:
        """Whom a ghost named in this room stands for, if the ghost takes part in the room: a
        ghost id pasted from elsewhere must not tell this room whose number it hides."""

        def owner(localpart: str) -> tuple[str, str] | None:
            if not self.store.ghost_in_room(network_id, localpart, room_id):
                return None
            return self.store.ghost_owner(network_id, localpart)

        return owner

    def _room_info(self, network_id: str, room_id: str) -> RoomInfo:
        manager = self.store.management_owner(network_id, room_id)
        request = self.store.dm_request_in_room(network_id, room_id)
        if request is not None and request.state == "pending":
            return RoomInfo(manager, request.id, request.to_user)
        return RoomInfo(manager)


# Events a person sees in the room as something said: if one cannot be relayed, they are told.
_SAID = frozenset({"m.room.message", "m.room.encrypted", "m.sticker", "m.reaction"})


def _untranslated_notice(
    event: Mapping[str, Any], network_id: str, in_portal: bool, source: Network
) -> SendNotice | None:
    """The notice for an event of a person's, in a portal room, that the bridge failed on."""
    sender = event.get("sender")
    if not in_portal or event.get("type") not in _SAID or not isinstance(sender, str):
        return None
    if is_bridge_user(sender, source):
        return None
    return untranslated_notice(
        EventRef(network_id, str(event["room_id"]), str(event["event_id"]), sender))


def _echo(event: Any, source: Network, networks: Iterable[Network]) -> bool:
    """An event by the bridge's own bot or ghosts (of any network: see is_our_user) that asks
    nothing of the bridge (translate skips these too); a membership counts only when it is the
    bridge's own as well."""
    if not isinstance(event, dict):
        return False
    sender = event.get("sender")
    if not isinstance(sender, str) or not is_our_user(sender, source, networks):
        return False
    if event.get("type") == "m.room.member":
        user = event.get("state_key")
        return isinstance(user, str) and is_bridge_user(user, source)
    return True
