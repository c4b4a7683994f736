"""Typing notifications and read receipts mirrored by the ghosts (bridge/ephemeral.py).

Runs the real Ephemeral, store and client against in-process homeservers that record every
request. The calls it spawns touch no socket, so once every task is blocked
(trio.testing.wait_all_tasks_blocked) each call it was going to make has reached its homeserver:
a test can then say that nothing was sent, and mean it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import trio
import trio.testing

from bridge.core.ghosts import derive_key
from bridge.core.model import Network
from bridge.core.translate import ghost_for
from bridge.ephemeral import CALL_SECONDS, MAX_IN_FLIGHT, TYPING_MS, Ephemeral
from bridge.matrix.client import Homeserver
from bridge.store import Store

from .rigs import until

KEY = derive_key(b"e" * 32)
WA = Network("wa", "WhatsApp", "wa.test", "phone", "tribridge", "_tb_", False)
IG = Network("ig", "Instagram", "ig.test", "handle", "tribridge", "_tb_", True)
SG = Network("sg", "Signal", "sg.test", "phone", "tribridge", "_tb_", False)
NETWORKS = {"wa": WA, "ig": IG, "sg": SG}

ALICE = "@+15551234567:wa.test"
BOB = "@+15557654321:wa.test"
CLIENT = "/_matrix/client/v3"


@dataclass
class Call:
    method: str
    path: str  # percent-decoded
    user: str | None  # the user_id the appservice acted as
    body: dict[str, Any]


@dataclass
class Recorder(httpx.AsyncBaseTransport):
    """A homeserver that answers every request with 200 {} and remembers it. While `gate` is
    set and not yet set off, requests wait for it; `abandoned` counts those given up on."""

    calls: list[Call] = field(default_factory=list)
    gate: trio.Event | None = None
    abandoned: int = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.calls.append(Call(request.method, unquote(request.url.path),
                               request.url.params.get("user_id"), body))
        if self.gate is not None:
            try:
                await self.gate.wait()
            except trio.Cancelled:
                self.abandoned += 1
                raise
        return httpx.Response(200, json={})

    def typing(self) -> list[tuple[str, str, bool]]:
        """(room, ghost, typing) of each typing request, in order."""
        out = []
        for call in self.calls:
            _, _, _, _, _, room, what, user = call.path.split("/")
            assert what == "typing" and call.method == "PUT" and call.user == user
            out.append((room, user, call.body["typing"]))
        return out

    def receipts(self) -> list[tuple[str, str, str]]:
        """(room, event id, as whom) of each read receipt, in order."""
        out = []
        for call in self.calls:
            _, _, _, _, _, room, what, kind, event_id = call.path.split("/")
            assert (call.method, what, kind, call.body) == ("POST", "receipt", "m.read", {})
            assert call.user is not None
            out.append((room, event_id, call.user))
        return out


@dataclass
class Rig:
    store: Store
    fakes: dict[str, Recorder]
    ephemeral: Ephemeral

    def place(self, user: str, target: str, room: str) -> str:
        """Mark the ghost of `user` (of wa) on `target` as in `room`; its user id."""
        localpart = ghost_of(user, target)
        self.store.set_ghost_in_room(target, localpart, room, True)
        return NETWORKS[target].user_id(localpart)

    def take(self, *events: Any, network: str = "wa") -> None:
        self.ephemeral.take(network, list(events))


def ghost_of(user: str, target: str, source: str = "wa") -> str:
    localpart = ghost_for(user, NETWORKS[source], NETWORKS[target], NETWORKS, KEY)
    assert localpart is not None
    return localpart


def typing(*users: Any, room: str = "!wa-room") -> dict[str, Any]:
    return {"type": "m.typing", "room_id": room, "content": {"user_ids": list(users)}}


def receipt(content: dict[str, Any], room: str = "!wa-room") -> dict[str, Any]:
    return {"type": "m.receipt", "room_id": room, "content": content}


def read(event_id: str, *users: str, kind: str = "m.read") -> dict[str, Any]:
    return {event_id: {kind: {u: {"ts": 1_700_000_000_000} for u in users}}}


async def settle() -> None:
    """Until every call the Ephemeral spawned has been answered (none of them touch a socket)."""
    await trio.testing.wait_all_tasks_blocked()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = Store(tmp_path / "e.db", durability="process")
    store.sync_config_portals([{"wa": "!wa-room", "ig": "!ig-room", "sg": "!sg-room"}])
    fakes = {net: Recorder() for net in NETWORKS}
    async with trio.open_nursery() as nursery:
        homeservers = {
            net: Homeserver(httpx.AsyncClient(transport=fakes[net], base_url=f"http://{net}"),
                            NETWORKS[net].server_name)
            for net in NETWORKS
        }
        ephemeral = Ephemeral(NETWORKS, homeservers, store, KEY)
        await nursery.start(ephemeral.run)
        yield Rig(store, fakes, ephemeral)
        nursery.cancel_scope.cancel()
        for hs in homeservers.values():
            await hs.http.aclose()
    store.close()


# -- typing ------------------------------------------------------------------------------------


async def test_typing_shows_on_the_ghost_only_where_it_is_already_in_the_room(rig: Rig) -> None:
    ghost = rig.place(ALICE, "ig", "!ig-room")  # on Signal, Alice's ghost never joined
    rig.take(typing(ALICE))
    await settle()
    (call,) = rig.fakes["ig"].calls
    assert (call.method, call.path, call.user) == (
        "PUT", f"{CLIENT}/rooms/!ig-room/typing/{ghost}", ghost)
    assert call.body == {"typing": True, "timeout": TYPING_MS}
    assert rig.fakes["sg"].calls == []  # a ghost never joins a room just to type
    assert rig.fakes["wa"].calls == []  # nothing back into the source room


async def test_stopping_typing_sends_typing_false_for_just_those_who_stopped(rig: Rig) -> None:
    alice_ig, alice_sg = rig.place(ALICE, "ig", "!ig-room"), rig.place(ALICE, "sg", "!sg-room")
    bob_ig = rig.place(BOB, "ig", "!ig-room")
    ig, sg = rig.fakes["ig"], rig.fakes["sg"]

    rig.take(typing(ALICE, BOB))
    await settle()
    assert sorted(ig.typing()) == sorted([("!ig-room", alice_ig, True), ("!ig-room", bob_ig, True)])
    assert sg.typing() == [("!sg-room", alice_sg, True)]

    ig.calls.clear()
    sg.calls.clear()
    rig.take(typing(BOB))  # Alice stopped; Bob types on, and is not told to type again
    await settle()
    assert ig.typing() == [("!ig-room", alice_ig, False)]
    assert sg.typing() == [("!sg-room", alice_sg, False)]
    assert ig.calls[0].body == {"typing": False}

    ig.calls.clear()
    sg.calls.clear()
    rig.take(typing())  # nobody types any more
    await settle()
    assert ig.typing() == [("!ig-room", bob_ig, False)]
    assert sg.calls == []  # Bob's ghost is not in the Signal room


async def test_typing_state_is_kept_per_room(rig: Rig) -> None:
    rig.store.sync_config_portals([
        {"wa": "!wa-room", "ig": "!ig-room", "sg": "!sg-room"},
        {"wa": "!wa-other", "ig": "!ig-other"},
    ])
    ghost = rig.place(ALICE, "ig", "!ig-room")
    rig.place(ALICE, "ig", "!ig-other")
    rig.take(typing(ALICE))
    rig.take(typing(room="!wa-other"))  # no one types in the other room: says nothing of this one
    await settle()
    assert rig.fakes["ig"].typing() == [("!ig-room", ghost, True)]


async def test_the_bridges_own_ghosts_and_bot_typing_are_not_echoed(rig: Rig) -> None:
    # An Instagram person's ghost on WhatsApp, and the WhatsApp bot: were they mirrored, their
    # own "ghosts" on the other networks (placed in the rooms here) would type.
    wa_ghost = WA.user_id(f"_tb_ig_{'a' * 16}")
    for bridge_user in (wa_ghost, WA.bot_user_id):
        for target, room in (("ig", "!ig-room"), ("sg", "!sg-room")):
            rig.place(bridge_user, target, room)
    alice = rig.place(ALICE, "ig", "!ig-room")
    rig.take(typing(wa_ghost, WA.bot_user_id, ALICE))
    await settle()
    assert rig.fakes["ig"].typing() == [("!ig-room", alice, True)]
    assert rig.fakes["sg"].calls == []
    rig.fakes["ig"].calls.clear()
    with rig.store.transaction():
        for event in ("$a", "$b"):
            rig.store.map_event("wa", "!wa-room", event, "ig", "!ig-room", f"{event}-ig")
    rig.take(receipt({**read("$a", wa_ghost), **read("$b", WA.bot_user_id)}))
    await settle()
    assert rig.fakes["ig"].calls == []
    assert rig.fakes["sg"].calls == []


# -- read receipts -----------------------------------------------------------------------------


async def test_a_read_receipt_becomes_the_ghosts_receipt_of_the_mapped_event(rig: Rig) -> None:
    ig_ghost = rig.place(ALICE, "ig", "!ig-room")
    rig.place(ALICE, "sg", "!sg-room")  # in the Signal room too: there, the mapping is missing
    with rig.store.transaction():  # Alice's message went to Instagram only (so far)
        rig.store.map_event("wa", "!wa-room", "$wa-msg", "ig", "!ig-room", "$ig-copy")
    rig.take(receipt(read("$wa-msg", ALICE)))
    await settle()
    assert rig.fakes["ig"].receipts() == [("!ig-room", "$ig-copy", ig_ghost)]
    assert rig.fakes["sg"].calls == []  # nothing there to mark read


async def test_a_receipt_of_a_relayed_copy_marks_the_original_and_the_other_copies(
    rig: Rig,
) -> None:
    ig_ghost, sg_ghost = rig.place(ALICE, "ig", "!ig-room"), rig.place(ALICE, "sg", "!sg-room")
    with rig.store.transaction():  # an Instagram message, relayed to WhatsApp and Signal
        rig.store.map_event("ig", "!ig-room", "$ig-orig", "wa", "!wa-room", "$wa-copy")
        rig.store.map_event("ig", "!ig-room", "$ig-orig", "sg", "!sg-room", "$sg-copy")
    rig.take(receipt(read("$wa-copy", ALICE)))
    await settle()
    assert rig.fakes["ig"].receipts() == [("!ig-room", "$ig-orig", ig_ghost)]
    assert rig.fakes["sg"].receipts() == [("!sg-room", "$sg-copy", sg_ghost)]


async def test_a_private_read_receipt_never_crosses(rig: Rig) -> None:
    rig.place(ALICE, "ig", "!ig-room")
    bob = rig.place(BOB, "ig", "!ig-room")
    with rig.store.transaction():
        rig.store.map_event("wa", "!wa-room", "$wa-msg", "ig", "!ig-room", "$ig-copy")
    content = read("$wa-msg", ALICE, kind="m.read.private")
    content["$wa-msg"]["m.read"] = {BOB: {"ts": 1}}
    rig.take(receipt(content), receipt(read("$wa-msg", ALICE, kind="m.read.private")))
    await settle()
    assert rig.fakes["ig"].receipts() == [("!ig-room", "$ig-copy", bob)]  # Bob's public one only


async def test_a_receipt_of_an_event_never_relayed_sends_nothing(rig: Rig) -> None:
    rig.place(ALICE, "ig", "!ig-room")
    rig.place(ALICE, "sg", "!sg-room")
    rig.take(receipt(read("$never-relayed", ALICE)))
    await settle()
    assert all(fake.calls == [] for fake in rig.fakes.values())


async def test_a_receipt_by_someone_whose_ghost_is_not_in_the_room_sends_nothing(
    rig: Rig,
) -> None:
    with rig.store.transaction():
        rig.store.map_event("wa", "!wa-room", "$wa-msg", "ig", "!ig-room", "$ig-copy")
    rig.take(receipt(read("$wa-msg", ALICE)))
    await settle()
    assert rig.fakes["ig"].calls == []


# -- what is not mirrored, and what must not break -----------------------------------------------


async def test_a_room_that_is_not_a_portal_sends_nothing(rig: Rig) -> None:
    rig.place(ALICE, "ig", "!ig-room")
    rig.place(ALICE, "sg", "!sg-room")
    with rig.store.transaction():
        rig.store.map_event("wa", "!elsewhere", "$wa-msg", "ig", "!ig-room", "$ig-copy")
    rig.take(typing(ALICE, room="!elsewhere"), receipt(read("$wa-msg", ALICE), room="!elsewhere"))
    await settle()
    assert all(fake.calls == [] for fake in rig.fakes.values())


async def test_malformed_events_are_skipped_and_the_rest_still_cross(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    ghost = rig.place(ALICE, "ig", "!ig-room")
    with rig.store.transaction():
        rig.store.map_event("wa", "!wa-room", "$wa-msg", "ig", "!ig-room", "$ig-copy")
    malformed: list[Any] = [
        "not an event",
        None,
        {"type": "m.typing", "content": {"user_ids": [ALICE]}},  # no room_id
        {"type": "m.typing", "room_id": 42, "content": {"user_ids": [ALICE]}},
        {"type": "m.typing", "room_id": "!wa-room", "content": [ALICE]},
        {"type": "m.typing", "room_id": "!wa-room", "content": "typing"},
        {"type": "m.typing", "room_id": "!wa-room"},
        {"type": "m.typing", "room_id": "!wa-room", "content": {"user_ids": ALICE}},
        {"type": "m.typing", "room_id": "!wa-room", "content": {"user_ids": None}},
        {"type": "m.typing", "room_id": "!wa-room", "content": {"user_ids": [42, None, "@x"]}},
        receipt({"$wa-msg": "read"}),
        receipt({"$wa-msg": {"m.read": [ALICE]}}),
        receipt({"$wa-msg": {"m.read": {42: {}, "not a user id": {}}}}),
        receipt({"$wa-msg": None}),
        {"type": "m.presence", "room_id": "!wa-room", "content": {"presence": "online"}},
    ]
    with caplog.at_level(logging.DEBUG, logger="bridge.ephemeral"):
        rig.take(*malformed, typing(ALICE), receipt(read("$wa-msg", ALICE)))
        await settle()
    ig = rig.fakes["ig"]
    assert sorted((c.method, c.path) for c in ig.calls) == [  # (the calls run concurrently)
        ("POST", f"{CLIENT}/rooms/!ig-room/receipt/m.read/$ig-copy"),
        ("PUT", f"{CLIENT}/rooms/!ig-room/typing/{ghost}"),
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_take_never_raises_when_the_store_fails(
    rig: Rig, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ghost = rig.place(ALICE, "ig", "!ig-room")

    def locked(network: str, room_id: str) -> None:
        raise sqlite3.OperationalError("database is locked")

    with monkeypatch.context() as patch:
        patch.setattr(rig.store, "portal_for_room", locked)
        with caplog.at_level(logging.ERROR, logger="bridge.ephemeral"):
            rig.take(typing(ALICE))  # must not raise
            rig.take(typing(ALICE), network="xx")  # a network it does not know: nor this
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "typing or receipts from wa not mirrored", "typing or receipts from xx not mirrored"]
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], sqlite3.OperationalError)
    await settle()
    assert rig.fakes["ig"].calls == []
    rig.take(typing(ALICE))  # and it works again once the store does
    await settle()
    assert rig.fakes["ig"].typing() == [("!ig-room", ghost, True)]


async def test_calls_beyond_max_in_flight_are_dropped_not_queued(rig: Rig) -> None:
    people = [f"@+1555{n:07d}:wa.test" for n in range(MAX_IN_FLIGHT + 5)]
    for person in people:
        rig.place(person, "ig", "!ig-room")
    ig = rig.fakes["ig"]
    ig.gate = trio.Event()  # Instagram's homeserver holds every call
    rig.take(typing(*people))
    await settle()
    assert len(ig.calls) == MAX_IN_FLIGHT
    ig.gate.set()
    await settle()
    assert len(ig.calls) == MAX_IN_FLIGHT  # the five beyond the cap were dropped, not queued
    late = rig.place(ALICE, "ig", "!ig-room")
    rig.take(typing(*people, ALICE))  # the cap is free again
    await settle()
    assert ig.typing()[MAX_IN_FLIGHT:] == [("!ig-room", late, True)]


async def test_a_call_the_homeserver_sits_on_is_given_up_and_frees_its_place(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    people = [f"@+1555{n:07d}:wa.test" for n in range(MAX_IN_FLIGHT)]
    for person in people:
        rig.place(person, "ig", "!ig-room")
    ig = rig.fakes["ig"]
    ig.gate = trio.Event()  # never set: the homeserver answers none of them
    start = trio.current_time()
    rig.take(typing(*people))
    await until(lambda: ig.abandoned == MAX_IN_FLIGHT, within=CALL_SECONDS + 1)
    assert trio.current_time() - start >= CALL_SECONDS
    ig.gate = None
    late = rig.place(ALICE, "ig", "!ig-room")
    rig.take(typing(*people, ALICE))
    await until(lambda: len(ig.calls) == MAX_IN_FLIGHT + 1, within=1)
    assert ig.typing()[-1] == ("!ig-room", late, True)
