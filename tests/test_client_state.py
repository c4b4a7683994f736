"""The E2EE client's state file: a restart is the same device, with its ratchets where they were."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bridge.client.e2ee import E2EEClient, _Room
from bridge.core.e2ee import OutboundSession, Rejected, make_keyshare, open_keyshare

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
    assert bob2.pinned == {"@_tb_wa_x:ig.localhost": alice.identity.public}


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
