"""`tribridge demo`: three real homeservers, three people, one conversation across them.

Starts three local Synapse homeservers (wa.localhost, ig.localhost, fbm.localhost), starts the
bridge on them, registers a phone user on wa, a handle user on ig and an email user on fbm, links
their rooms into one portal, plays a short conversation, prints what each person sees on their own
network, then does the same in an end-to-end encrypted portal made with the bot's commands, and
shows that the bridge's database and log hold none of that conversation's plaintext. It stops
everything it started.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import shutil
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from bridge.client.e2ee import E2EEClient
from bridge.config import load_config
from bridge.core.e2ee import ALGORITHM
from bridge.daemon import run as run_bridge
from bridge.localnet.cluster import LocalNet
from bridge.localnet.people import Person, wait_until
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
    redact = setup_logging("warning", config.secrets())
    # Everything the bridge logs, down to debug, also goes to a file: the encrypted part checks
    # that none of its plaintext is there.
    log_file = net.root / "tribridge-debug.log"
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    file_handler = logging.FileHandler(log_file)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # The stderr handler's filter sees only what passes its level: this file needs its own,
    # or its debug and info lines would keep tokens (and numbers at info).
    file_handler.addFilter(redact)
    logging.getLogger().addHandler(file_handler)
    logging.getLogger().setLevel(logging.DEBUG)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_bridge, config)
        print("  bridge running; portal linked: " + ", ".join(f"{n}:{r}" for n, r in rooms.items()))
        for net_id, text in SCRIPT:
            await people[net_id].send_text(rooms[net_id], text)
            for other, person in people.items():
                if other != net_id:
                    await person.wait_for(rooms[other], has_body(text), what=repr(text))
        await _actions(people, rooms)
        print()
        for net_id, person in people.items():
            await _show(net.server_name(net_id), person, rooms[net_id])
        await _encrypted(net, people, config.bridge.database, log_file)
        nursery.cancel_scope.cancel()
    logged = await trio.Path(log_file).read_text(errors="replace")
    secrets = [s for s in config.secrets() if s]
    kept = sum(secret in logged for secret in secrets)
    # Numbers and emails may show at debug (an admin tracing a delivery), never above it.
    above = [line for line in logged.splitlines()
             if line.split(" ", 3)[2:3] in (["INFO"], ["WARNING"], ["ERROR"], ["CRITICAL"])]
    # Looked for as they are, not by the filter's own patterns (which would find only what
    # the filter already masks): Alice's number and Carol's address, in every form they take.
    private = ("5551234567", "carol@example.com", "carol=40example.com", "carol%40example.com")
    exposed = sum(any(p in line.lower() for p in private) for line in above)
    print(f"Its debug log {'holds none' if not kept else f'HOLDS {kept}'} of the bridge's "
          f"{len(secrets)} tokens and secrets, and {exposed or 'none'} of its {len(above)} "
          "lines at info or above shows a phone number or email.")
    if kept or exposed:
        raise RuntimeError("a token, phone number or email reached the bridge's log")
    for person in people.values():
        await person.aclose()


ENCRYPTED_SCRIPT = (
    ("wa", "This one is end-to-end encrypted. The bridge only sees ciphertext."),
    ("ig", "So the bridge could not read this even if it wanted to?"),
    ("fbm", "Right: only our three devices hold the keys."),
)
LABELS = {"wa": "WhatsApp", "ig": "Instagram", "fbm": "Messenger"}


async def _encrypted(
    net: LocalNet, people: dict[str, Person], database: Path, log_file: Path
) -> None:
    """The same three people in an end-to-end encrypted portal (docs/e2ee.md)."""
    print("\nNow an end-to-end encrypted conversation (org.tribridge.e2ee.v1):", flush=True)
    alice, bob, carol = people["wa"], people["ig"], people["fbm"]
    bots = {n: f"@tribridge:{net.server_name(n)}" for n in people}
    room = str((await alice.call("POST", "/createRoom", {
        "preset": "private_chat", "name": "Secret book club", "invite": [bots["wa"]],
        "initial_state": [{"type": "m.room.encryption", "state_key": "",
                           "content": {"algorithm": ALGORITHM}}],
        # The bot publishes the portal id, which every ciphertext is bound to.
        # (Room version 12 gives the creator unlimited power and refuses to list them.)
        "power_level_content_override": {"users": {bots["wa"]: 50}},
    }))["room_id"])
    await alice.wait_for(room, _notice("to bridge this room"), what="the bot's hello")
    carol_admin = await carol.create_room(None, invite=[bots["fbm"]], is_direct=True)
    await carol.wait_for(carol_admin, _notice("management room"), what="the bot's greeting")
    print(f"  Carol: privacy discoverable on\n  bot: "
          f"{await carol.command(carol_admin, 'privacy discoverable on')}")
    answer = await alice.command(room, "!tb link")
    print(f"  Alice: !tb link\n  bot: {answer}")
    found = re.search(r"Instagram (!\S+), Messenger (!\S+)\.", answer)
    if found is None:
        raise RuntimeError(f"unexpected answer to !tb link: {answer}")
    rooms = {"wa": room, "ig": found[1], "fbm": found[2]}
    for net_id, who in (("ig", "bob.reads"), ("fbm", "carol@example.com")):
        await alice.command(room, f"!tb invite {net_id}:{who}")
    for person, net_id in ((bob, "ig"), (carol, "fbm")):
        wanted = rooms[net_id]

        def to_the_portal(room_id: str, invite: dict[str, Any], wanted: str = wanted) -> bool:
            return room_id == wanted

        await person.join(await person.wait_for_invite(to_the_portal))
    clients = {n: E2EEClient(p.http, p.user_id, LABELS[n]) for n, p in people.items()}
    for net_id, client in clients.items():
        await client.enter(rooms[net_id])
    for net_id, client in clients.items():
        async def both_devices(c: E2EEClient = client, r: str = rooms[net_id]) -> bool:
            await c.read(r)
            return len(c.rooms[r].devices) == 2

        await wait_until(both_devices, 60, f"{net_id} seeing the others' devices")
    for net_id, text in ENCRYPTED_SCRIPT:
        await clients[net_id].send(rooms[net_id], text)
    texts = {t for _, t in ENCRYPTED_SCRIPT}
    for net_id, client in clients.items():
        async def all_read(c: E2EEClient = client, r: str = rooms[net_id]) -> bool:
            return texts <= {m.body for m in await c.read(r)}

        await wait_until(all_read, 60, f"{net_id} decrypting everything")
    for net_id, client in clients.items():
        print(f"What {people[net_id].user_id} decrypts on {net.server_name(net_id)}:")
        names = await people[net_id].members(rooms[net_id])
        for item in await client.read(rooms[net_id]):
            shown = names.get(item.sender) or item.sender
            print(f"  [{net.server_name(net_id)}] {shown}: {item.body}")
    stored = b"".join([
        await trio.Path(p).read_bytes() for p in database.parent.glob(database.name + "*")
    ])
    logged = await trio.Path(log_file).read_bytes()
    leaked = [t for t in texts if t.encode() in stored or t.encode() in logged]
    verdict = "hold none" if not leaked else f"HOLD {len(leaked)}"
    print(f"The bridge's database ({len(stored):,} bytes, WAL included) and its debug log "
          f"({len(logged.splitlines()):,} lines) {verdict} of the {len(texts)} encrypted "
          "messages' plaintext.")
    if leaked:
        raise RuntimeError("plaintext reached the bridge")
    sys.stdout.flush()


def _notice(fragment: str) -> Callable[[list[dict[str, Any]]], bool]:
    def check(events: list[dict[str, Any]]) -> bool:
        return any(
            e.get("type") == "m.room.message" and e.get("content", {}).get("msgtype") == "m.notice"
            and fragment in str(e.get("content", {}).get("body", ""))
            for e in events
        )

    return check


def has_body(text: str) -> Callable[[list[dict[str, Any]]], bool]:
    """A timeline predicate: some m.room.message has exactly this body."""

    def check(events: list[dict[str, Any]]) -> bool:
        return any(
            e.get("type") == "m.room.message" and (e.get("content") or {}).get("body") == text
            for e in events
        )

    return check


async def _send(person: Person, room_id: str, event_type: str, content: dict[str, Any]) -> str:
    path = f"/rooms/{quote(room_id)}/send/{quote(event_type)}/demo{secrets.token_hex(6)}"
    return str((await person.call("PUT", path, content))["event_id"])


async def _actions(people: dict[str, Person], rooms: dict[str, str]) -> None:
    """A reply, an edit, a reaction and a picture, each from one network to the two others."""
    alice, bob, carol = people["wa"], people["ig"], people["fbm"]
    first = next(e["event_id"] for e in await alice.messages(rooms["wa"])
                 if e.get("content", {}).get("body") == SCRIPT[0][1])
    await _send(alice, rooms["wa"], "m.room.message", {
        "msgtype": "m.text", "body": "* Hi both! Alice here, on WhatsApp, with the snacks.",
        "m.new_content": {"msgtype": "m.text",
                          "body": "Hi both! Alice here, on WhatsApp, with the snacks."},
        "m.relates_to": {"rel_type": "m.replace", "event_id": first},
    })
    asked = next(e["event_id"] for e in await carol.messages(rooms["fbm"])
                 if e.get("content", {}).get("body") == SCRIPT[1][1])
    await _send(carol, rooms["fbm"], "m.reaction", {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": asked, "key": "👍"}})
    said = next(e["event_id"] for e in await bob.messages(rooms["ig"])
                if e.get("content", {}).get("body") == SCRIPT[3][1])
    await _send(bob, rooms["ig"], "m.room.message", {
        "msgtype": "m.text", "body": "Works for me.",
        "m.relates_to": {"m.in_reply_to": {"event_id": said}}})
    picture = _png(48, 32)
    url = await carol.upload(picture, "image/png", "cover.png")
    await _send(carol, rooms["fbm"], "m.room.message", {
        "msgtype": "m.image", "body": "cover.png", "url": url,
        "info": {"mimetype": "image/png", "size": len(picture), "w": 48, "h": 32},
    })
    for net_id, person in people.items():
        room = rooms[net_id]

        async def arrived(person: Person = person, room: str = room) -> bool:
            # Each one was sent on one network and relayed to the two others: every timeline
            # ends up with all four.
            kinds = {_kind(e) for e in await person.messages(room)}
            return {"edit", "reaction", "reply", "image"} <= kinds

        await wait_until(arrived, 30, f"the edit, reaction, reply and image on {net_id}")
        for event in await person.messages(room):
            if _kind(event) == "image" and person is not carol:
                copy = await person.download(event["content"]["url"])
                same = hashlib.sha256(copy).digest() == hashlib.sha256(picture).digest()
                print(f"  {person.user_id} got cover.png as {event['content']['url']}: "
                      f"{len(copy)} bytes, {'identical' if same else 'DIFFERENT'}")
                if not same:
                    raise RuntimeError("the picture changed on its way")


def _kind(event: dict[str, Any]) -> str:
    content = event.get("content") or {}
    if event.get("type") == "m.reaction":
        return "reaction"
    relates = content.get("m.relates_to") or {}
    if relates.get("rel_type") == "m.replace":
        return "edit"
    if "m.in_reply_to" in relates:
        return "reply"
    return "image" if content.get("msgtype") == "m.image" else "text"


def _png(width: int, height: int) -> bytes:
    """A small real PNG (a gradient), so any client can show it."""
    rows = b"".join(b"\x00" + b"".join(bytes((x * 5 % 256, y * 8 % 256, 160))
                                       for x in range(width)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


async def _show(server_name: str, person: Person, room_id: str) -> None:
    names = await person.members(room_id)
    events = await person.messages(room_id)
    bodies = {e["event_id"]: (e.get("content") or {}).get("body", "") for e in events}
    print(f"What {person.user_id} sees on {server_name}:")
    for event in events:
        kind, content = _kind(event), event.get("content") or {}
        if event.get("type") not in ("m.room.message", "m.reaction"):
            continue
        shown = names.get(event["sender"]) or event["sender"]
        relates = content.get("m.relates_to") or {}
        if kind == "edit":
            text = f"(edited) {content.get('m.new_content', {}).get('body')}"
        elif kind == "reaction":
            text = f"reacted {relates.get('key')} to {bodies.get(relates.get('event_id'))!r}"
        elif kind == "reply":
            target = bodies.get(relates["m.in_reply_to"].get("event_id"))
            text = f"{content.get('body')} (a reply to {target!r})"
        elif kind == "image":
            text = f"[image {content.get('body')}, {content.get('info', {}).get('size')} bytes]"
        else:
            text = str(content.get("body"))
        print(f"  [{server_name}] {shown}: {text}")
    sys.stdout.flush()
