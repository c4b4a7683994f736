"""The E2EE client's state file: a restart is the same device, with its ratchets where they were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.client.e2ee import E2EEClient, _Room
from bridge.core.e2ee import (
    DEVICE_EVENT,
    KEYSHARE_EVENT,
    Device,
    IdentityKey,
    OutboundSession,
    Rejected,
    make_keyshare,
    open_keyshare,
)
from bridge.core.e2ee.encoding import b64, canonical

PORTAL = "portal-1"
ROOM = "!room:wa.localhost"


async def test_keys_sessions_and_what_was_read_survive_a_restart(tmp_path: Path) -> None:
    async with httpx.AsyncClient() as http:  # never used: nothing here talks to a server
        alice = E2EEClient(http, "@alice:wa.localhost", "WhatsApp")
        bob = E2EEClient(http, "@bob:ig.localhost", "Instagram")
        alice.rooms[ROOM] = _Room(PORTAL)
        bob.rooms[ROOM] = _Room(PORTAL, seen={"$old"})
        session = OutboundSession.start(alice.device, PORTAL)
        alice.rooms[ROOM].outbound = session
        share = make_keyshare(session, [bob.device.cert])
        inbound = open_keyshare(share, bob.device, alice.device.cert, PORTAL)
        assert inbound is not None
        bob.rooms[ROOM].inbound[(inbound.device_id, inbound.session_id)] = inbound
        bob.pinned["@_tb_wa_x:ig.localhost"] = alice.identity.public
        first = session.encrypt({"type": "m.room.message", "content": {"body": "one"}})
        second = session.encrypt({"type": "m.room.message", "content": {"body": "two"}})
        assert inbound.decrypt(first)[0]["content"]["body"] == "one"

        alice.save_state(tmp_path / "alice.json")
        bob.save_state(tmp_path / "bob.json")
        assert (tmp_path / "alice.json").stat().st_mode & 0o777 == 0o600

        alice2 = E2EEClient(http, "@alice:wa.localhost", "WhatsApp")
        alice2.load_state(tmp_path / "alice.json")
        bob2 = E2EEClient(http, "@bob:ig.localhost", "Instagram")
        bob2.load_state(tmp_path / "bob.json")

    assert alice2.device.device_id == alice.device.device_id
    assert alice2.identity.public == alice.identity.public
    restored = alice2.rooms[ROOM].outbound
    assert restored is not None
    assert (restored.index, restored.chain_key) == (2, session.chain_key)
    # The restored sender goes on from where it was: the next message is index 2, readable.
    third = restored.encrypt({"type": "m.room.message", "content": {"body": "three"}})
    assert third["index"] == 2
    again = bob2.rooms[ROOM].inbound[(inbound.device_id, inbound.session_id)]
    assert again.decrypt(second)[0]["content"]["body"] == "two"
    assert again.decrypt(third)[0]["content"]["body"] == "three"
    with pytest.raises(Rejected) as replay:
        again.decrypt(first)  # read before the restart: its key is gone for good
    assert replay.value.reason == "replay"
    assert bob2.rooms[ROOM].seen == {"$old"}
    assert bob2.pinned == {"@_tb_wa_x:ig.localhost": alice.identity.public,
                           "@bob:ig.localhost": bob.identity.public}


async def test_a_device_withdrawn_by_its_owner_gets_no_more_keys_and_a_forgery_is_refused() -> None:
    async with httpx.AsyncClient() as http:
        alice = E2EEClient(http, "@alice:wa.localhost", "WhatsApp")
        bob = E2EEClient(http, "@bob:ig.localhost", "Instagram")
        mallory = E2EEClient(http, "@mallory:ig.localhost", "Instagram")
    room = _Room(PORTAL)
    alice.rooms[ROOM] = room
    ghost = "@_tb_ig_bob:wa.localhost"

    def event(content: dict[str, object]) -> dict[str, object]:
        return {"type": "org.tribridge.e2ee.device", "sender": ghost, "event_id": "$x",
                "content": content}

    alice._take(room, event(bob.device.announcement()))
    assert bob.device.device_id in room.devices
    # A revocation signed by another identity (say, the bridge's own) is refused.
    forged = bob.device.revocation()
    forged["sig"] = mallory.device.revocation()["sig"]
    alice._take(room, event(forged))
    assert bob.device.device_id in room.devices and not room.rotate
    assert any("revocation" in w for w in alice.warnings)
    # Bob's own identity key withdraws the device: no more shares, and the session rotates.
    alice._take(room, event(bob.device.revocation()))
    assert bob.device.device_id not in room.devices
    assert room.rotate



# -- a bridge that tries to read or forge (docs/e2ee.md's threat model) ------------------------

BOT = "@tribridge:ig.localhost"
ALICE_GHOST = "@_tb_wa_alice:ig.localhost"


class Timeline:
    """A room's timeline, as a homeserver would serve it to the client under test."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def add(self, sender: str, event_type: str, content: dict[str, Any]) -> str:
        event_id = f"$e{len(self.events)}"
        self.events.append({"event_id": event_id, "sender": sender, "type": event_type,
                            "content": content})
        return event_id


def on(timeline: Timeline, user: str, origin: str, http: httpx.AsyncClient,
       sender: str | None = None) -> E2EEClient:
    """A client of `user` in ROOM (whose portal id the bridge's bot published), reading and
    sending through `timeline` (its events sent as `sender`, a ghost, if given)."""
    client = E2EEClient(http, user, origin)
    client.rooms[ROOM] = _Room(PORTAL, bridge_bot=BOT)

    async def read(room_id: str) -> list[dict[str, Any]]:
        return list(timeline.events)

    async def send(room_id: str, event_type: str, content: dict[str, Any]) -> str:
        return timeline.add(sender or user, event_type, content)

    client._timeline = read  # type: ignore[method-assign]
    client._send = send  # type: ignore[method-assign]
    return client


async def test_the_bridges_bot_gets_no_key_and_says_so() -> None:
    timeline = Timeline()
    async with httpx.AsyncClient() as http:
        bob = on(timeline, "@bob:ig.localhost", "Instagram", http)
        spy = Device.generate(IdentityKey.generate(), "Instagram")
        timeline.add(BOT, DEVICE_EVENT, spy.announcement())
        await bob.send(ROOM, "not for the bridge")
    shares = [e["content"] for e in timeline.events if e["type"] == KEYSHARE_EVENT]
    assert all(open_keyshare(share, spy, bob.device.cert, PORTAL) is None for share in shares)
    assert any("the bridge's bot" in w for w in bob.warnings)


def bob_and_mallory(
    timeline: Timeline, http: httpx.AsyncClient, ghost: str
) -> tuple[E2EEClient, E2EEClient]:
    """Bob, and Mallory as the ghost `ghost` with her device announced under it."""
    bob = on(timeline, "@bob:ig.localhost", "Instagram", http)
    mallory = on(timeline, "@mallory:ig.localhost", "Instagram", http, sender=ghost)
    timeline.add(ghost, DEVICE_EVENT, mallory.device.announcement())
    return bob, mallory


async def test_a_message_sealed_with_someone_elses_device_is_not_shown_as_theirs() -> None:
    timeline = Timeline()
    async with httpx.AsyncClient() as http:
        bob, mallory = bob_and_mallory(timeline, http, "@_tb_wa_fresh:ig.localhost")
        await bob.read(ROOM)
        await mallory.read(ROOM)
        timeline.add("@bob:ig.localhost", DEVICE_EVENT, bob.device.announcement())
        await mallory.send(ROOM, "send the money to X")
        # The bridge puts Mallory's ciphertext under Alice's ghost's name.
        forged = dict(timeline.events[-1])
        timeline.events.append({**forged, "event_id": "$forged", "sender": ALICE_GHOST})
        got = {r.event_id: r for r in await bob.read(ROOM)}
    assert got["$forged"].body is None and got["$forged"].error == "wrong_sender"


async def test_a_device_id_is_its_owners_and_a_revoked_one_stays_revoked() -> None:
    timeline = Timeline()
    async with httpx.AsyncClient() as http:
        bob = on(timeline, "@bob:ig.localhost", "Instagram", http)
        alice = Device.generate(IdentityKey.generate(), "WhatsApp")
        timeline.add(ALICE_GHOST, DEVICE_EVENT, alice.announcement())
        # Someone else announcing a device under Alice's device id is refused.
        thief = IdentityKey.generate()
        taken = Device(thief, "WhatsApp", alice.device_id, alice.signing, alice.exchange)
        timeline.add("@_tb_wa_fresh:ig.localhost", DEVICE_EVENT, taken.announcement())
        await bob.read(ROOM)
        assert bob.rooms[ROOM].devices[alice.device_id][0] == ALICE_GHOST
        # Alice withdraws the device; the bridge replays its first announcement: refused.
        announced = timeline.events[0]["content"]
        timeline.add(ALICE_GHOST, DEVICE_EVENT, alice.revocation())
        timeline.add(ALICE_GHOST, DEVICE_EVENT, announced)
        await bob.read(ROOM)
    assert alice.device_id not in bob.rooms[ROOM].devices
    assert sum("revoked, or someone else's" in w for w in bob.warnings) == 2


async def test_devices_and_a_pending_rotation_survive_a_restart(tmp_path: Path) -> None:
    timeline = Timeline()
    async with httpx.AsyncClient() as http:
        bob = on(timeline, "@bob:ig.localhost", "Instagram", http)
        alice, eve = (Device.generate(IdentityKey.generate(), "WhatsApp") for _ in range(2))
        timeline.add(ALICE_GHOST, DEVICE_EVENT, alice.announcement())
        timeline.add("@_tb_wa_eve:ig.localhost", DEVICE_EVENT, eve.announcement())
        await bob.send(ROOM, "before")
        timeline.events.append({"event_id": "$left", "type": "m.room.member", "content": {
            "membership": "leave"}, "sender": "@_tb_wa_eve:ig.localhost",
            "state_key": "@_tb_wa_eve:ig.localhost"})
        await bob.read(ROOM)
        bob.save_state(tmp_path / "bob.json")
        again = on(timeline, "@bob:ig.localhost", "Instagram", http)
        again.load_state(tmp_path / "bob.json")
        assert set(again.rooms[ROOM].devices) == {alice.device_id} and again.rooms[ROOM].rotate
        await again.send(ROOM, "after eve left")
    last_share = [e["content"] for e in timeline.events if e["type"] == KEYSHARE_EVENT][-1]
    assert open_keyshare(last_share, eve, bob.device.cert, PORTAL) is None
    assert open_keyshare(last_share, alice, bob.device.cert, PORTAL) is not None


async def test_malformed_events_cost_themselves_not_the_reading() -> None:
    timeline = Timeline()
    async with httpx.AsyncClient() as http:
        bob, mallory = bob_and_mallory(timeline, http, "@_tb_wa_m:ig.localhost")
        timeline.add("@bob:ig.localhost", DEVICE_EVENT, bob.device.announcement())
        await mallory.read(ROOM)
        session = OutboundSession.start(mallory.device, PORTAL)
        share = make_keyshare(session, [bob.device.cert])
        unsigned = {k: v for k, v in share.items() if k != "sig"} | {"replaces": "!!"}
        unsigned["sig"] = b64(mallory.device.signing.sign(canonical(unsigned)).signature)
        timeline.add("@_tb_wa_m:ig.localhost", KEYSHARE_EVENT, unsigned)
        odd = session.encrypt({"type": "m.room.message", "content": "not an object"})
        timeline.add("@_tb_wa_m:ig.localhost", "m.room.encrypted", odd)
        read = await bob.read(ROOM)
    assert [(r.body, r.error) for r in read] == [(None, None)]  # read, with no text in it


async def test_a_portal_id_is_one_rooms_only() -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/state"):
            return httpx.Response(200, json=[{"type": "org.tribridge.portal", "state_key": "",
                                              "sender": BOT, "content": {"portal_id": PORTAL}}])
        return httpx.Response(200, json={"event_id": "$sent"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(serve),
                                 base_url="http://ig") as http:
        bob = E2EEClient(http, "@bob:ig.localhost", "Instagram")
        await bob.enter("!one:ig.localhost")
        assert bob.rooms["!one:ig.localhost"].bridge_bot == BOT
        with pytest.raises(RuntimeError, match=r"claims the portal id of !one:ig\.localhost"):
            await bob.enter("!two:ig.localhost")
