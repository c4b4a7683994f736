"""`tribridge demo`: three real homeservers, three people, one conversation across them.

Starts three local Synapse homeservers (wa.localhost, ig.localhost, fbm.localhost), starts the
bridge on them, registers a phone user on wa, a handle user on ig and an email user on fbm, links
their rooms into one portal, plays a short conversation, prints what each person sees on their own
network, and stops everything it started.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bridge.config import load_config
from bridge.daemon import run as run_bridge
from bridge.localnet.cluster import LocalNet
from bridge.localnet.people import Person
from bridge.logs import setup_logging

CAST = (  # network, localpart, display name (None: never set one)
    ("wa", "+15551234567", "Alice"),
    ("ig", "bob.reads", "Bob"),
    ("fbm", "carol=40example.com", None),  # carol@example.com, who set no display name
)
SCRIPT = (
    ("wa", "Hi both! Alice here, on WhatsApp."),
    ("ig", "Hey Alice, Bob on Instagram. Did you finish the book?"),
    ("fbm", "Carol from Messenger: I did, the ending surprised me."),
    ("wa", "Same here. Same time next week?"),
)


def run_demo(keep: bool = False) -> int:
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="tribridge-demo-"))
    net = LocalNet.create(root)
    print(f"Starting three Synapse homeservers in {root} ...", flush=True)
    try:
        net.start()
        print(f"  homeservers up in {time.monotonic() - started:.1f} s", flush=True)
        trio.run(_scenario, net)
    finally:
        net.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"Demo finished in {time.monotonic() - started:.1f} s; everything it started is stopped.")
    return 0


async def _scenario(net: LocalNet) -> None:
    people: dict[str, Person] = {}
    rooms: dict[str, str] = {}
    for net_id, localpart, name in CAST:
        person = await Person.register(net.url(net_id), localpart, name)
        people[net_id] = person
        bot = f"@tribridge:{net.server_name(net_id)}"
        rooms[net_id] = await person.create_room("Book club", invite=[bot])
        print(f"  {person.user_id} made a room on {net.server_name(net_id)}")
    config = load_config(net.write_config(net.root / "tribridge.toml", portals=[rooms]))
    setup_logging("warning", config.secrets())
    async with trio.open_nursery() as nursery:
        await nursery.start(run_bridge, config)
        print("  bridge running; portal linked: " + ", ".join(f"{n}:{r}" for n, r in rooms.items()))
        for net_id, text in SCRIPT:
            await people[net_id].send_text(rooms[net_id], text)
            for other, person in people.items():
                if other != net_id:
                    await person.wait_for(rooms[other], has_body(text), what=repr(text))
        print()
        for net_id, person in people.items():
            await _show(net.server_name(net_id), person, rooms[net_id])
        nursery.cancel_scope.cancel()
    for person in people.values():
        await person.aclose()


def has_body(text: str) -> Callable[[list[dict[str, Any]]], bool]:
    """A timeline predicate: some m.room.message has exactly this body."""

    def check(events: list[dict[str, Any]]) -> bool:
        return any(
            e.get("type") == "m.room.message" and (e.get("content") or {}).get("body") == text
            for e in events
        )

    return check


async def _show(server_name: str, person: Person, room_id: str) -> None:
    names = await person.members(room_id)
    print(f"What {person.user_id} sees on {server_name}:")
    for sender, body in await person.texts(room_id):
        shown = names.get(sender) or sender
        print(f"  [{server_name}] {shown}: {body}")
    sys.stdout.flush()
