"""The delivery worker of one target network: the outbox, carried out against its homeserver.

Per target room strictly first in first out; rooms proceed independently, at most `concurrency`
requests in flight per network. Every send uses the action's deterministic transaction id, so a
retry after a crash or a timeout cannot duplicate. Whether a failure is retried is the core's
call (bridge/core/retry.py); a permanent refusal marks the action failed and moves on.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping

import trio

from bridge.core.actions import Action, JoinRoom, SendMessage
from bridge.core.ghosts import pseudonym
from bridge.core.ids import native_identity
from bridge.core.model import Network
from bridge.core.privacy import ghost_display_name
from bridge.core.retry import Verdict, backoff, classify
from bridge.matrix.client import Homeserver, HomeserverError, MatrixError
from bridge.store import OutboxItem, Store

log = logging.getLogger(__name__)

PAGE = 50  # outbox rows read at once per room: memory stays flat whatever the backlog


class DeliveryWorker:
    def __init__(
        self,
        network: Network,
        homeservers: Mapping[str, Homeserver],
        networks: Mapping[str, Network],
        store: Store,
        key: bytes,
        *,
        concurrency: int = 8,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.network = network
        self.hs = homeservers[network.id]
        self.homeservers = homeservers
        self.networks = networks
        self.store = store
        self.key = key
        self.jitter = jitter
        self._slots = trio.CapacityLimiter(concurrency)
        self._wakeup = trio.Event()
        self._active: set[str] = set()

    def wake(self) -> None:
        """New actions were committed for this network: look for them."""
        self._wakeup.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                self._wakeup = trio.Event()
                for room_id in self.store.pending_rooms(self.network.id):
                    if room_id not in self._active:
                        self._active.add(room_id)
                        nursery.start_soon(self._drain, room_id)
                await self._wakeup.wait()

    async def _drain(self, room_id: str) -> None:
        try:
            while items := self.store.pending_actions(self.network.id, room_id, PAGE):
                for item in items:
                    await self._deliver(item)
        finally:
            self._active.discard(room_id)
            self.wake()  # actions may have arrived for this room while it was finishing

    async def _deliver(self, item: OutboxItem) -> None:
        attempt = item.attempts
        while True:
            try:
                async with self._slots:
                    await self._perform(item)
                return
            except HomeserverError as exc:
                attempt += 1
                self.store.note_attempt(item.id, str(exc))
                if classify(exc.status, exc.errcode) is Verdict.PERMANENT:
                    self.store.finish(item.id, "failed", str(exc))
                    log.warning(
                        "not delivered to %s: %s refused %s action %d: %s",
                        self.network.label, self.network.server_name, item.action.kind,
                        item.id, exc,
                    )
                    return
                delay = backoff(attempt, self.jitter(), exc.retry_after_ms)
                log.info(
                    "delivery to %s failed (%s); try %d in %.1f s",
                    self.network.server_name, exc, attempt + 1, delay,
                )
                await trio.sleep(delay)  # bounded backoff (core/retry.py), not a poll
            except Exception as exc:
                # A bug of ours must not wedge the room behind one poisoned action.
                log.exception("action %d for %s failed unexpectedly", item.id, self.network.id)
                self.store.finish(item.id, "failed", f"internal error: {type(exc).__name__}")
                return

    async def _perform(self, item: OutboxItem) -> None:
        action: Action = item.action
        if isinstance(action, JoinRoom):
            await self.hs.join(action.room_id)
            self.store.finish(item.id, "done")
            log.info("joined %s on %s", action.room_id, self.network.server_name)
            return
        for last_try in (False, True):
            await self._ensure_ghost(action)
            ghost = self.network.user_id(action.ghost)
            try:
                event_id = await self.hs.send_event(
                    action.room_id, "m.room.message", action.content, action.txn_id, ghost
                )
                break
            except MatrixError as exc:
                # The ghost was kicked or left since we last saw it join: join again, once.
                if exc.errcode != "M_FORBIDDEN" or last_try:
                    raise
                self.store.set_ghost_in_room(self.network.id, action.ghost, action.room_id, False)
        src = action.source
        with self.store.transaction():
            self.store.map_event(
                src.network, src.room_id, src.event_id, self.network.id, action.room_id, event_id
            )
            self.store.finish(item.id, "done")
        log.debug("relayed %s from %s as %s", src.event_id, src.network, event_id)

    async def _ensure_ghost(self, action: SendMessage) -> None:
        """Register, name and join the ghost, doing only what the store says is missing."""
        net_id, localpart, room_id = self.network.id, action.ghost, action.room_id
        ghost = self.network.user_id(localpart)
        registered, current_name = self.store.ghost(net_id, localpart)
        if not registered:
            await self.hs.register(localpart)
        name = await self._ghost_name(action)
        if not registered or current_name != name:
            await self.hs.set_display_name(ghost, name)
            self.store.save_ghost(net_id, localpart, action.source.network, name)
        if not self.store.ghost_in_room(net_id, localpart, room_id):
            try:
                await self.hs.invite(room_id, ghost)
            except MatrixError as exc:
                if exc.status != 403:  # already in the room, or the room is public: try joining
                    raise
            await self.hs.join(room_id, as_user=ghost)
            self.store.set_ghost_in_room(net_id, localpart, room_id, True)

    async def _ghost_name(self, action: SendMessage) -> str:
        src = action.source
        source = self.networks[src.network]
        known, name = self.store.profile(src.network, src.sender)
        if not known:
            try:
                name = await self.homeservers[src.network].display_name(src.room_id, src.sender)
            except HomeserverError as exc:
                log.info("could not read a display name on %s: %s", source.server_name, exc)
            else:
                self.store.set_profile(src.network, src.sender, name)
        identity = native_identity(src.sender, source.identity, source.server_name)
        pseudo = pseudonym(self.key, src.network, identity)
        return ghost_display_name(source, identity, name, pseudo, exposed=source.expose_identity)
