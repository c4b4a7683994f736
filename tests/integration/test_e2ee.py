"""End-to-end encryption across three real homeservers through the real daemon (docs/e2ee.md).

People on wa, ig and fbm speak `org.tribridge.e2ee.v1` with bridge/client's E2EEClient in a
portal made by `!tb link` from an encrypted room. The bridge relays ciphertexts, device
announcements and key shares unchanged; no plaintext reaches it, its store, its log or any
homeserver's database. A member who left gets no key for what follows, an encrypted room is
never linked with an unencrypted one, and a device announcement the bridge swaps in is noticed.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

from bridge.client.e2ee import E2EEClient, Received
from bridge.core.e2ee import (
    ALGORITHM,
    KEYSHARE_EVENT,
    Device,
    IdentityKey,
    open_keyshare,
    safety_number,
)
from bridge.core.e2ee.safety import grouped
from bridge.localnet.daemon import ROOT
from bridge.localnet.people import Person, wait_until

from .conftest import Cast, Daemon
from .test_bot_portals import (
    LABELS,
    bot_of,
    has_notice,
    identity_of,
    net_of,
    no_ghosts_left,
    register,
    state,
    together,
)

pytestmark = pytest.mark.synapse

NETS = ("wa", "ig", "fbm")
WITHIN = 60.0  # the machine is shared and slow
ENCRYPTED_TOO = " The new rooms are end-to-end encrypted too; the bridge cannot read them."
NEVER_MIXED = (
    "link: one of the two rooms is end-to-end encrypted and the other is not; an encrypted "
    "room and an unencrypted one are never linked."
)


def ghost_pattern(src: str, net_id: str) -> str:
    """The user id of a ghost of a `src` person on network `net_id`."""
    return rf"@_tb_{src}_[a-z2-7]{{16}}:{net_id}\.localhost"


# -- rooms and portals --------------------------------------------------------------------------


async def room_version_default(person: Person) -> str:
    caps = await person.call("GET", "/capabilities")
    return str(caps["capabilities"]["m.room_versions"]["default"])


async def encrypted_room(person: Person, name: str, bot_power: bool = True) -> str:
    """A room encrypted with tribridge's scheme, the bot invited with the power to change its
    settings (it publishes the portal id there) unless not `bot_power`; returned once the bot
    has said hello."""
    bot = bot_of(net_of(person))
    users = {bot: 100} if bot_power else {}
    version = await room_version_default(person)
    if not (version.isdigit() and int(version) >= 12):
        users[person.user_id] = 100  # before room version 12, creators are listed too
    body = {
        "preset": "private_chat",
        "name": name,
        "invite": [bot],
        "initial_state": [
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": ALGORITHM}}
        ],
        "power_level_content_override": {"users": users},
    }
    room = str((await person.call("POST", "/createRoom", body))["room_id"])
    # The hello says the bot cannot read the room, and where commands go instead.
    await person.wait_for(room, has_notice("the bot cannot read it"), WITHIN, "the bot's hello")
    return room


async def plain_room(person: Person, name: str) -> str:
    """An unencrypted room with the bot in it, once the bot has said hello."""
    room = await person.create_room(name, invite=[bot_of(net_of(person))])
    await person.wait_for(room, has_notice("to bridge this room"), WITHIN, "the bot's hello")
    return room


async def management_room(person: Person) -> str:
    room = await person.create_room(None, invite=[bot_of(net_of(person))], is_direct=True)
    await person.wait_for(room, has_notice("This is your management room"), WITHIN,
                          "the greeting")
    return room


async def encrypted_portal(cast: Cast) -> tuple[dict[str, Person], dict[str, str], str]:
    """Alice (wa) makes an encrypted room, links it with `!tb link` and invites Bob (ig) and
    Carol (fbm), who join. Returns the people, the rooms and the portal id, having checked that
    every room is encrypted with the scheme and carries the one portal id."""
    alice, bob, carol = await register(cast, ("wa", "Alice"), ("ig", "Bob"), ("fbm", "Carol"))
    people = {"wa": alice, "ig": bob, "fbm": carol}
    carol_admin, wa_room = await together(management_room(carol),
                                          encrypted_room(alice, "Secret club"))
    answer = await carol.command(carol_admin, "privacy discoverable on", WITHIN)
    assert answer == "You can now be reached with dm and invite.", answer

    answer = await alice.command(wa_room, "!tb link", WITHIN)
    found = re.fullmatch(
        r"This room is now bridged to Instagram (!\S+), Messenger (!\S+)\. Bring people in with "
        r"`!tb invite <network>:<identity>`\." + re.escape(ENCRYPTED_TOO),
        answer,
    )
    assert found, answer
    rooms = {"wa": wa_room, "ig": found[1], "fbm": found[2]}
    for net_id in ("ig", "fbm"):
        who = identity_of(people[net_id])
        answer = await alice.command(wa_room, f"!tb invite {net_id}:{who}", WITHIN)
        assert answer == (
            f"Invited {net_id}:{who} to this conversation on {LABELS[net_id]}, if they can be "
            "reached. They decide whether to join."
        ), answer

    async def accept(person: Person, room_id: str) -> None:
        await person.join(await person.wait_for_invite(lambda r, _: r == room_id, WITHIN))

    await together(accept(bob, rooms["ig"]), accept(carol, rooms["fbm"]))

    # Every room of the portal is encrypted with the scheme and names the same portal.
    portal_ids = set()
    for net_id, person in people.items():
        encryption = await state(person, rooms[net_id], "m.room.encryption")
        assert encryption["algorithm"] == ALGORITHM, (net_id, encryption)
        portal_ids.add((await state(person, rooms[net_id], "org.tribridge.portal"))["portal_id"])
    (portal_id,) = portal_ids
    return people, rooms, portal_id


# -- talking ------------------------------------------------------------------------------------


@dataclass
class Talk:
    """An encrypted portal where everyone has spoken and read everyone else."""

    people: dict[str, Person]
    rooms: dict[str, str]
    portal_id: str
    clients: dict[str, E2EEClient]
    canaries: dict[str, list[str]]  # network -> what its person said
    ghosts: dict[tuple[str, str], str]  # (person's network, room's network) -> sender seen


async def devices_seen(client: E2EEClient, room_id: str, origins: set[str]) -> bool:
    await client.read(room_id)
    seen = {cert.origin for _, cert in client.rooms[room_id].devices.values()}
    return seen == origins


def from_others(received: list[Received], me: str) -> list[Received]:
    return [r for r in received if r.sender != me]


async def wait_read(
    client: E2EEClient, room_id: str, done: Callable[[list[Received]], bool], what: str
) -> list[Received]:
    """Poll the client's read() until `done` holds for what it decrypted (or failed to)."""

    async def check() -> list[Received] | None:
        received = await client.read(room_id)
        return received if done(received) else None

    return await wait_until(check, WITHIN, what)


async def talk(cast: Cast) -> Talk:
    people, rooms, portal_id = await encrypted_portal(cast)
    clients = {
        n: E2EEClient(p.http, p.user_id, n) for n, p in people.items()
    }
    await together(*(clients[n].enter(rooms[n]) for n in NETS))
    for net_id, client in clients.items():
        others = set(NETS) - {net_id}
        assert client.rooms[rooms[net_id]].portal_id == portal_id

        async def seen(client: E2EEClient = client, room: str = rooms[net_id],
                       others: set[str] = others) -> bool:
            return await devices_seen(client, room, others)

        await wait_until(seen, WITHIN, f"the {net_id} client seeing the other two devices")

    canaries = {n: [secrets.token_hex(16) for _ in range(3)] for n in NETS}

    async def say(net_id: str) -> None:
        for canary in canaries[net_id]:
            await clients[net_id].send(rooms[net_id], canary)

    await together(*(say(n) for n in NETS))

    ghosts: dict[tuple[str, str], str] = {}
    for net_id, client in clients.items():
        me = people[net_id].user_id
        wanted = {c for src in NETS if src != net_id for c in canaries[src]}

        def everything(received: list[Received], wanted: set[str] = wanted,
                       me: str = me) -> bool:
            return wanted <= {r.body for r in from_others(received, me)}

        received = from_others(
            await wait_read(client, rooms[net_id], everything,
                            f"the {net_id} person decrypting everyone else's canaries"),
            me,
        )
        errors = [r for r in received if r.error is not None]
        assert not errors, errors
        for src in NETS:
            if src == net_id:
                continue
            senders = {r.sender for r in received if r.body in canaries[src]}
            (sender,) = senders  # one ghost per person and room
            assert re.fullmatch(ghost_pattern(src, net_id), sender), sender
            ghosts[(src, net_id)] = sender
            bodies = [r.body for r in received if r.sender == sender]
            assert bodies == canaries[src], (net_id, src, bodies)  # in order, once each
            assert all(r.message_id for r in received if r.sender == sender)
    return Talk(people, rooms, portal_id, clients, canaries, ghosts)


def files_holding(paths: list[Path], secrets_: list[str]) -> dict[str, list[str]]:
    """{path: the secrets found in its bytes}, for the files that hold any."""
    found: dict[str, list[str]] = {}
    for path in paths:
        data = path.read_bytes()
        hits = [s for s in secrets_ if s.encode() in data]
        if hits:
            found[str(path)] = hits
    return found


def keyshares_by(events: list[dict[str, Any]], sender: str) -> list[dict[str, Any]]:
    return [
        e["content"] for e in events
        if e.get("type") == KEYSHARE_EVENT and e.get("sender") == sender
    ]


# -- the tests ----------------------------------------------------------------------------------


async def test_an_encrypted_portal_across_three_networks_hides_everything_from_the_bridge(
    cast: Cast, daemon: Daemon
) -> None:
    daemon.write_config([], "debug")  # even its most talkative log must hold no plaintext
    await daemon.start()
    t = await talk(cast)

    # The message ids are content hashes: the same message has the same id on every network.
    ids: dict[str, set[str | None]] = {}
    for net_id, client in t.clients.items():
        for r in client.rooms[t.rooms[net_id]].received:
            if r.body is not None:
                ids.setdefault(r.body, set()).add(r.message_id)
    for canary in (c for cs in t.canaries.values() for c in cs):
        assert len(ids[canary]) == 1, (canary, ids[canary])

    # Nothing anyone said is anywhere the bridge or a homeserver keeps things.
    said = [c for cs in t.canaries.values() for c in cs]
    bridge_files = sorted(daemon.database.parent.glob(daemon.database.name + "*"))
    assert daemon.database in bridge_files
    assert files_holding(bridge_files, said) == {}
    log = daemon.log()
    assert log, "the daemon logged nothing"
    assert [c for c in said if c in log] == []
    for net_id, server in daemon.net.servers.items():
        databases = sorted(server.directory.glob("*.db*"))
        assert databases, f"no database files for {net_id} in {server.directory}"
        assert files_holding(databases, said) == {}, net_id
    # ...though the ciphertexts did cross: every homeserver stored some of ours.
    wa_events = await t.people["wa"].timeline(t.rooms["wa"])
    assert sum(e.get("type") == "m.room.encrypted" for e in wa_events) >= 9

    # Safety numbers: the same digits on both sides, though each side sees a ghost.
    wa_says = t.clients["wa"].safety_number(t.ghosts[("ig", "wa")])
    ig_says = t.clients["ig"].safety_number(t.ghosts[("wa", "ig")])
    assert wa_says is not None and re.fullmatch(r"\d{60}", wa_says), wa_says
    assert wa_says == ig_says
    assert wa_says == safety_number(t.clients["wa"].identity.public,
                                    t.clients["ig"].identity.public)
    for client in t.clients.values():
        assert client.warnings == []

    # A reply names its target twice: outside by event id (which the bridge maps per network)
    # and inside by message id; every reader finds the two agree.
    first = t.canaries["wa"][0]
    target = next(r for r in await t.clients["ig"].read(t.rooms["ig"]) if r.body == first)
    await t.clients["ig"].send(t.rooms["ig"], "a reply", reply_to=target)
    for net_id in ("wa", "fbm"):
        client, room = t.clients[net_id], t.rooms[net_id]

        async def replied(client: E2EEClient = client, room: str = room) -> Received | None:
            return next((r for r in await client.read(room) if r.body == "a reply"), None)

        reply = await wait_until(replied, WITHIN, f"{net_id} reading the reply")
        assert reply.relates_to == ("m.in_reply_to", target.message_id), reply
        assert reply.relation_checked, (net_id, reply)


async def test_a_leaver_cannot_read_what_follows(cast: Cast, daemon: Daemon) -> None:
    await daemon.start([])
    t = await talk(cast)
    alice, carol = t.people["wa"], t.people["fbm"]
    wa_room, ig_room = t.rooms["wa"], t.rooms["ig"]
    wa, ig, fbm = t.clients["wa"], t.clients["ig"], t.clients["fbm"]

    await carol.leave(t.rooms["fbm"])
    await no_ghosts_left(alice, wa_room, {t.ghosts[("fbm", "wa")]})

    after = secrets.token_hex(16)
    await wa.send(wa_room, after)  # a member left: the client starts a new session
    assert fbm.device.device_id not in wa.rooms[wa_room].devices

    def got_it(received: list[Received]) -> bool:
        return any(r.body == after for r in received)

    received = await wait_read(ig, ig_room, got_it, "Bob decrypting what Alice said after")
    (mine,) = [r for r in received if r.body == after]
    assert mine.error is None and mine.sender == t.ghosts[("wa", "ig")]
    assert not [r for r in from_others(received, t.people["ig"].user_id) if r.error is not None]

    # Carol's device got no key for it: the newest key share Alice sent leaves her out.
    shares = keyshares_by(await alice.timeline(wa_room), alice.user_id)
    assert len(shares) == 2, shares  # the first session, then the one after Carol left
    first, newest = shares
    assert newest["session"] != first["session"]
    assert newest["replaces"] == first["session"]
    assert newest["replaced_after"] == len(t.canaries["wa"])
    recipients = [s["to"] for s in newest["shares"]]
    assert fbm.device.device_id not in recipients, recipients
    assert ig.device.device_id in recipients, recipients
    assert open_keyshare(newest, fbm.device, wa.device.cert, t.portal_id) is None
    assert open_keyshare(newest, ig.device, wa.device.cert, t.portal_id) is not None


async def test_link_said_again_publishes_the_portal_id_it_could_not_publish_before(
    cast: Cast, daemon: Daemon
) -> None:
    (ada,) = await register(cast, ("wa", "Ada"))
    await daemon.start([])
    room = await encrypted_room(ada, "Secret", bot_power=False)
    answer = await ada.command(room, "!tb link", WITHIN)
    assert answer.endswith("The bot could not publish the portal id in this room, and encrypted "
                           "messages are bound to it: give the bot the power to change room "
                           "settings, then say `!tb link` again."), answer
    levels = await ada.call("GET", f"/rooms/{quote(room)}/state/m.room.power_levels/")
    answer = await ada.command(room, "!tb link", WITHIN)
    assert answer == (
        "This room is already bridged to every network, but the bot still may not publish the "
        "portal id in its WhatsApp room: give it the power to change room settings there, then "
        "say `!tb link` again."), answer
    levels["users"][bot_of("wa")] = 100
    await ada.call("PUT", f"/rooms/{quote(room)}/state/m.room.power_levels/", levels)
    answer = await ada.command(room, "!tb link", WITHIN)
    assert answer == "This room is already bridged to every network.", answer
    pinned = await ada.call("GET", f"/rooms/{quote(room)}/state/org.tribridge.portal/")
    assert pinned.get("portal_id"), pinned


async def test_linking_an_encrypted_room_with_an_unencrypted_one_is_refused(
    cast: Cast, daemon: Daemon
) -> None:
    ada, bob = await register(cast, ("wa", "Ada"), ("ig", "Bob"))
    daemon.extra_config = (
        f'[permissions]\n"{ada.user_id}" = "admin"\n"{bob.user_id}" = "admin"\n'
    )
    daemon.write_config([], "debug")  # it logs why it relays nothing
    await daemon.start()
    wa_room, ig_room = await together(encrypted_room(ada, "Secret"), plain_room(bob, "Open"))

    answer = await ada.command(wa_room, f"!tb link ig {ig_room}", WITHIN)
    assert answer == NEVER_MIXED, answer
    answer = await bob.command(ig_room, f"!tb link wa {wa_room}", WITHIN)
    assert answer == NEVER_MIXED, answer

    for person, room in ((ada, wa_room), (bob, ig_room)):
        answer = await person.command(room, "!tb status", WITHIN)
        assert answer.startswith("This room is not bridged"), answer
    marker = await ada.send_text(wa_room, "not for the open room")
    await daemon.wait_log(f"{marker} from wa: room is not part of a portal", WITHIN)
    assert "not for the open room" not in [b for _, b in await bob.texts(ig_room)]


async def test_a_config_portal_mixing_encrypted_and_unencrypted_rooms_is_not_bridged(
    cast: Cast, daemon: Daemon
) -> None:
    people = {net: await cast.person(net, name)
              for net, name in (("wa", "Alice"), ("ig", "Bob"), ("fbm", "Carol"))}
    rooms = {net: await cast.room(net, person) for net, person in people.items()}
    await people["wa"].call("PUT", f"/rooms/{quote(rooms['wa'])}/state/m.room.encryption/",
                            {"algorithm": ALGORITHM})
    daemon.write_config([rooms], "debug")  # it logs why it relays nothing
    await daemon.start()
    await daemon.wait_log("mixes encrypted and unencrypted rooms (fbm: not encrypted, "
                          "ig: not encrypted, wa: encrypted): not bridged", WITHIN)
    marker = await people["ig"].send_text(rooms["ig"], "not for the encrypted room")
    await daemon.wait_log(f"{marker} from ig: room is not part of a portal", WITHIN)
    # Taken in and dropped (the log line comes after): nothing was queued for the others.
    await outbox_empty(daemon)
    for net in ("wa", "fbm"):
        assert "not for the encrypted room" not in [
            b for _, b in await people[net].texts(rooms[net])]


async def test_turning_on_encryption_in_one_room_of_a_portal_takes_that_room_out(
    cast: Cast, daemon: Daemon
) -> None:
    from bridge.demo import has_body

    from .test_relay import three_way

    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    alice, bob, carol = people["wa"], people["ig"], people["fbm"]
    await alice.call("PUT", f"/rooms/{quote(rooms['wa'])}/state/m.room.encryption/",
                     {"algorithm": ALGORITHM})
    left = ("The WhatsApp room left this portal when its end-to-end encryption changed: "
            "encrypted and unencrypted rooms are never linked.")
    await bob.wait_for(rooms["ig"], has_notice(left), WITHIN, "the notice that wa left")
    await carol.wait_for(rooms["fbm"], has_notice(left), WITHIN, "the notice that wa left")
    await alice.wait_for(rooms["wa"], has_notice(
        "This WhatsApp room is no longer bridged: its end-to-end encryption no longer matches"),
        WITHIN, "the notice in the room that turned encryption on")
    # The other two still talk; nothing of theirs reaches the encrypted room any more.
    await bob.send_text(rooms["ig"], "only for carol")
    await carol.wait_for(rooms["fbm"], has_body("only for carol"), WITHIN, "bob's message")
    assert "only for carol" not in [b for _, b in await alice.texts(rooms["wa"])]


async def test_encryption_turned_on_while_another_homeserver_is_down_is_checked_when_it_is_back(
    cast: Cast, daemon: Daemon
) -> None:
    from .test_relay import three_way

    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    alice, bob = people["wa"], people["ig"]
    fbm = daemon.net.servers["fbm"]
    fbm.stop()
    try:
        await alice.call("PUT", f"/rooms/{quote(rooms['wa'])}/state/m.room.encryption/",
                         {"algorithm": ALGORITHM})
        # The check waits for fbm; wa, whose worker runs it, is not taken for down meanwhile.
        await daemon.wait_log("delivery to wa.localhost failed", WITHIN)
        async with httpx.AsyncClient(trust_env=False) as http:
            health = (await http.get(f"http://127.0.0.1:{daemon.net.bridge_port}/health")).json()
        assert health["networks"]["wa"]["reachable"] is True, health
    finally:
        fbm.start()
        fbm.wait_ready()
    await bob.wait_for(rooms["ig"], has_notice("The WhatsApp room left this portal"), WITHIN,
                       "the notice that wa left, once fbm answers")


async def test_a_bridge_swapping_a_device_announcement_is_noticed(
    cast: Cast, daemon: Daemon
) -> None:
    await daemon.start([])
    t = await talk(cast)
    bob = t.people["ig"]
    ig_room = t.rooms["ig"]
    ig = t.clients["ig"]
    alice_on_ig = t.ghosts[("wa", "ig")]
    before = ig.safety_number(alice_on_ig)
    assert before is not None

    # The bridge, a machine in the middle, announces a device of its own for Alice on ig.
    fake_identity = IdentityKey.generate()
    fake = Device.generate(fake_identity, "wa")
    url = (f"{daemon.net.url('ig')}/_matrix/client/v3/rooms/{quote(ig_room)}/send/"
           f"org.tribridge.e2ee.device/mitm{secrets.token_hex(8)}")
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        response = await http.put(
            url, json=fake.announcement(), params={"user_id": alice_on_ig},
            headers={"Authorization": f"Bearer {daemon.net.as_tokens['ig']}"},
        )
    assert response.status_code == 200, response.text

    async def warned() -> list[str] | None:
        await ig.read(ig_room)
        found = [w for w in ig.warnings if w.startswith(
            f"WARNING: the identity key of {alice_on_ig} changed.")]
        return found or None

    await wait_until(warned, WITHIN, "Bob's client warning about Alice's identity key")

    # Bob keeps the key he pinned first: his safety number with Alice is the same, and the one
    # with the swapped key would differ, so comparing numbers exposes the swap.
    assert ig.safety_number(alice_on_ig) == before
    assert safety_number(ig.identity.public, fake_identity.public) != before
    assert before == t.clients["wa"].safety_number(t.ghosts[("ig", "wa")])
    assert fake.device_id not in ig.rooms[ig_room].devices

    # And the swapped-in device gets no key: Bob goes on talking without sharing with it.
    again = secrets.token_hex(16)
    await ig.send(ig_room, again)
    for share in keyshares_by(await bob.timeline(ig_room), bob.user_id):
        assert fake.device_id not in {s["to"] for s in share["shares"]}, share
        assert open_keyshare(share, fake, ig.device.cert, t.portal_id) is None

    def got_it(received: list[Received]) -> bool:
        return any(r.body == again for r in received)

    received = await wait_read(t.clients["wa"], t.rooms["wa"], got_it,
                               "Alice decrypting what Bob said after the swap")
    (mine,) = [r for r in received if r.body == again]
    assert mine.error is None


async def test_tribridge_chat_talks_in_an_encrypted_portal(
    cast: Cast, daemon: Daemon, tmp_path: Path
) -> None:
    await daemon.start([])
    people, rooms, _ = await encrypted_portal(cast)
    alice = E2EEClient(people["wa"].http, people["wa"].user_id, "WhatsApp")
    await alice.enter(rooms["wa"])
    keys = tmp_path / "bob-keys.json"
    command = [
        sys.executable, "-m", "bridge", "chat", "--homeserver", daemon.net.url("ig"),
        "--user", people["ig"].user_id, "--room", rooms["ig"], "--origin", "Instagram",
        "--keys", str(keys),
    ]
    env = {**os.environ, "TRIBRIDGE_PASSWORD": "tribridge-pass-1"}
    shown = bytearray()
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        cwd=ROOT, env=env,
    )
    assert process.stdin is not None and process.stdout is not None
    stdout = process.stdout

    async def collect() -> None:
        async for chunk in stdout:
            shown.extend(chunk)

    async def printed(text: str) -> bool:
        return text.encode() in shown

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            try:
                await wait_until(lambda: printed("/quit to leave"), WITHIN, "chat starting")
            except TimeoutError:
                raise AssertionError(f"tribridge chat did not start:\n{shown.decode()}") from None
            await wait_until(lambda: devices_seen(alice, rooms["wa"], {"Instagram"}), WITHIN,
                             "alice seeing the terminal's device")
            await alice.send(rooms["wa"], "hello, terminal")
            await wait_until(lambda: printed("hello, terminal"), WITHIN,
                             "the terminal decrypting alice")
            await process.stdin.send_all(b"hello from the terminal\n")

            async def alice_read() -> bool:
                return any(r.body == "hello from the terminal"
                           for r in await alice.read(rooms["wa"]))

            await wait_until(alice_read, WITHIN, "alice decrypting the terminal")
            ghost = next(r.sender for r in await alice.read(rooms["wa"])
                         if r.body == "hello from the terminal")
            assert ghost.startswith("@_tb_ig_")
            # The terminal's view of alice is her ghost on ig: ask for that safety number.
            alice_on_ig = re.search(rb"<(@_tb_wa_[a-z2-7]{16}:ig\.localhost)> hello, terminal",
                                    bytes(shown))
            assert alice_on_ig, bytes(shown)
            await process.stdin.send_all(b"/safety " + alice_on_ig[1] + b"\n")
            # The very number Alice's own client shows for the terminal's person: compared
            # aloud, the two must agree, or the check would catch nothing.
            expected = alice.safety_number(ghost)
            assert expected is not None
            await wait_until(lambda: printed(grouped(expected)), WITHIN,
                             "the safety number alice sees")
            await process.stdin.send_all(b"/quit\n")
            with trio.fail_after(WITHIN):
                assert await process.wait() == 0, bytes(shown)
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
    assert keys.stat().st_mode & 0o777 == 0o600


async def outbox_empty(daemon: Daemon) -> None:
    """Nothing waits to be sent (read from the daemon's store)."""
    import sqlite3
    from contextlib import closing

    def pending() -> int:
        with closing(sqlite3.connect(daemon.database)) as conn:
            conn.execute("PRAGMA busy_timeout = 5000")
            return int(conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()[0])

    async def empty() -> bool:
        return pending() == 0

    await wait_until(empty, WITHIN, "an empty outbox")
