"""Smoke: a management room, and a DM from WhatsApp to Instagram, accepted."""

from __future__ import annotations

import pytest

from bridge.demo import has_body

from .conftest import Cast, Daemon

pytestmark = pytest.mark.synapse


async def test_management_room_and_dm(cast: Cast, daemon: Daemon) -> None:
    await daemon.start([])
    alice = await cast.person("wa", "Alice")
    bob = await cast.person("ig", "Bob")
    room = await alice.create_room(None, invite=["@tribridge:wa.localhost"], is_direct=True)
    await alice.wait_for(room, lambda evs: any(
        e.get("content", {}).get("msgtype") == "m.notice" for e in evs), what="greeting")
    answer = await alice.command(room, "whoami")
    assert "WhatsApp" in answer, answer
    handle = bob.user_id[1:].split(":")[0]
    answer = await alice.command(room, f"dm ig:{handle}")
    assert "Message request sent" in answer
    invite_room = await bob.wait_for_invite()
    await bob.join(invite_room)
    alice_room = await alice.wait_for_invite(lambda r, i: r != room)
    await alice.join(alice_room)
    await alice.send_text(alice_room, "hi bob")
    await bob.wait_for(invite_room, has_body("hi bob"))
    await bob.send_text(invite_room, "hi alice")
    await alice.wait_for(alice_room, has_body("hi alice"))
