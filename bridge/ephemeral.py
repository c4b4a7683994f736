"""Typing notifications and read receipts, mirrored by the ghosts: best effort, right away.

Right away means once their transaction's messages are taken in and (bridge/pacing.py) their
first sends answered: a receipt for a message of the same transaction then finds it relayed.

They are not worth a durable queue: a "typing..." that arrives a minute late is wrong, and a lost
read receipt is replaced by the next. So they skip the outbox, each call gets a few seconds, and a
failure is dropped. Private read receipts (``m.read.private``) are private: they never cross.
Only ghosts already in the target room show them (a ghost never joins a room just to type).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import trio

from bridge.core.ghosts import is_bridge_user
from bridge.core.model import Network
from bridge.core.translate import ghost_for
from bridge.matrix.client import Homeserver, HomeserverError
from bridge.store import Store

log = logging.getLogger(__name__)

CALL_SECONDS = 5.0  # a typing notice or receipt later than this is not worth sending
# How long a ghost shows as typing unless told to stop: homeservers push typing only when the
# set of typists changes, so this outlasts a long message; a stop is pushed when they finish.
TYPING_MS = 60_000
MAX_IN_FLIGHT = 64  # beyond this, new ephemeral calls are dropped, not queued


class Ephemeral:
    def __init__(
        self,
        networks: Mapping[str, Network],
        homeservers: Mapping[str, Homeserver],
        store: Store,
        key: bytes,
    ) -> None:
        self.networks = networks
        self.homeservers = homeservers
        self.store = store
        self.key = key
        self.nursery: trio.Nursery | None = None
        self._typing: dict[tuple[str, str], set[str]] = {}  # who types, per (network, room)
        self._in_flight = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def take(self, network_id: str, events: list[Any]) -> None:
        """Mirror the typing and receipt events of one pushed transaction (never blocks, never
        raises: the transaction's events are committed already, and a fault here must not
        make the homeserver push the transaction again and again)."""
        try:
            self._take(network_id, events)
        except Exception:
            log.exception("typing or receipts from %s not mirrored", network_id)

    def _take(self, network_id: str, events: list[Any]) -> None:
        source = self.networks[network_id]
        for event in events:
            if not isinstance(event, dict) or not isinstance(event.get("room_id"), str):
                continue
            content = event.get("content")
            if not isinstance(content, dict):
                continue
            portal = self.store.portal_for_room(network_id, event["room_id"])
            if portal is None:
                continue
            others = portal.others(network_id)
            if event.get("type") == "m.typing":
                self._typing_changed(source, event["room_id"], content, others)
            elif event.get("type") == "m.receipt":
                self._receipts(source, content, others)

    def _typing_changed(
        self, source: Network, room_id: str, content: dict[str, Any], others: list[tuple[str, str]]
    ) -> None:
        users = content.get("user_ids")
        now = {u for u in users if isinstance(u, str) and not is_bridge_user(u, source)} if (
            isinstance(users, list)) else set()
        before = self._typing.get((source.id, room_id), set())
        if now:
            self._typing[(source.id, room_id)] = now
        else:
            self._typing.pop((source.id, room_id), None)
        for user, typing in [(u, True) for u in now - before] + [(u, False) for u in before - now]:
            for target_id, target_room in others:
                ghost = self._ghost_in(user, source, target_id, target_room)
                if ghost is not None:
                    hs = self.homeservers[target_id]
                    self._spawn(partial(hs.typing, target_room, ghost, typing, TYPING_MS))

    def _receipts(
        self, source: Network, content: dict[str, Any], others: list[tuple[str, str]]
    ) -> None:
        for event_id, kinds in content.items():
            readers = kinds.get("m.read") if isinstance(kinds, dict) else None
            if not isinstance(readers, dict):
                continue
            for user in readers:
                if not isinstance(user, str) or is_bridge_user(user, source):
                    continue
                for target_id, target_room in others:
                    ghost = self._ghost_in(user, source, target_id, target_room)
                    there = self.store.counterpart(source.id, event_id, target_id)
                    if ghost is not None and there is not None:
                        hs = self.homeservers[target_id]
                        self._spawn(partial(hs.read_receipt, target_room, there, ghost))

    def _ghost_in(self, user: str, source: Network, target_id: str, room_id: str) -> str | None:
        target = self.networks.get(target_id)
        if target is None:
            return None
        linked = self.store.linked_accounts(source.id, user)
        localpart = ghost_for(user, source, target, self.networks, self.key, linked)
        if localpart is None or not self.store.ghost_in_room(target_id, localpart, room_id):
            return None
        return target.user_id(localpart)

    def _spawn(self, call: Callable[[], Awaitable[None]]) -> None:
        if self.nursery is None or self._in_flight >= MAX_IN_FLIGHT:
            return
        self.nursery.start_soon(self._call, call)
        self._in_flight += 1

    async def _call(self, call: Callable[[], Awaitable[None]]) -> None:
        try:
            with trio.move_on_after(CALL_SECONDS):
                await call()
        except HomeserverError as exc:
            log.debug("a typing notice or receipt was dropped: %s", exc)
        except Exception:
            log.exception("a typing notice or receipt failed")
        finally:
            self._in_flight -= 1
