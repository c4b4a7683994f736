"""Edits, replies, reactions and redactions cross to every other network of a portal, with
their references mapped per network, and still find their targets after a restart."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

import pytest

from bridge.localnet.people import Person, wait_until

from .conftest import Cast, Daemon
from .test_relay import three_way

pytestmark = pytest.mark.synapse

NETS = ("wa", "ig", "fbm")
WITHIN = 40.0


async def send(person: Person, room: str, event_type: str, content: dict[str, Any]) -> str:
    path = f"/rooms/{quote(room)}/send/{quote(event_type)}/t{secrets.token_hex(6)}"
    return str((await person.call("PUT", path, content))["event_id"])


async def copy_of(person: Person, room: str, body: str) -> str:
    """The event id, in `person`'s room, of the message with this body (waits for it)."""

    async def find() -> str | None:
        for event in await person.messages(room):
            if event.get("content", {}).get("body") == body:
                return str(event["event_id"])
        return None

    return await wait_until(find, WITHIN, f"{body!r} reaching {person.user_id}")


async def event_where(person: Person, room: str, what: str, check: Any) -> dict[str, Any]:
    async def find() -> dict[str, Any] | None:
        return next((e for e in await person.messages(room) if check(e)), None)

    return await wait_until(find, WITHIN, f"{what} reaching {person.user_id}")


def is_edit(target: str, new_body: str | None = None) -> Any:
    def check(e: dict[str, Any]) -> bool:
        content = e.get("content", {})
        relates = content.get("m.relates_to", {})
        return (relates.get("rel_type") == "m.replace" and relates.get("event_id") == target
                and (new_body is None or content.get("m.new_content", {}).get("body") == new_body))

    return check


def is_reaction(target: str) -> Any:
    def check(e: dict[str, Any]) -> bool:
        return (e.get("type") == "m.reaction"
                and e.get("content", {}).get("m.relates_to", {}).get("event_id") == target)

    return check


def is_reply(target: str, body: str) -> Any:
    def check(e: dict[str, Any]) -> bool:
        content = e.get("content", {})
        reply = content.get("m.relates_to", {}).get("m.in_reply_to", {})
        return content.get("body") == body and reply.get("event_id") == target

    return check


async def redacted(person: Person, room: str, event_id: str) -> bool:
    event = await person.call("GET", f"/rooms/{quote(room)}/event/{quote(event_id)}")
    return "redacted_because" in event.get("unsigned", {}) and not event.get("content")


async def relate_all(people: dict[str, Person], rooms: dict[str, str], tag: str) -> None:
    """From each network: a message, then its edit, a reaction to it, a reply to it from the
    next network (a message from a third network for the last one), and its redaction."""
    for i, src in enumerate(NETS):
        sender, replier = people[src], people[NETS[(i + 1) % 3]]
        original = f"{tag} original from {src}"
        orig_id = await sender.send_text(rooms[src], original)
        copies = {n: await copy_of(people[n], rooms[n], original) for n in NETS if n != src}
        copies[src] = orig_id
        await send(sender, rooms[src], "m.room.message", {
            "msgtype": "m.text", "body": f"* {tag} edited from {src}",
            "m.new_content": {"msgtype": "m.text", "body": f"{tag} edited from {src}"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": orig_id},
        })
        await send(sender, rooms[src], "m.reaction", {
            "m.relates_to": {"rel_type": "m.annotation", "event_id": orig_id, "key": "ok"}
        })
        replier_net = NETS[(i + 1) % 3]
        reply = f"{tag} reply from {replier_net} to {src}"
        await replier.send_text(rooms[replier_net], reply, **{
            "m.relates_to": {"m.in_reply_to": {"event_id": copies[replier_net]}}
        })
        for reader in NETS:
            person, room = people[reader], rooms[reader]
            if reader != src:
                await event_where(person, room, f"the edit from {src}",
                                  is_edit(copies[reader], f"{tag} edited from {src}"))
                await event_where(person, room, f"the reaction from {src}",
                                  is_reaction(copies[reader]))
            if reader != replier_net:
                # Pointing at the reader's own copy of the original, whoever relayed what.
                await event_where(person, room, "the reply", is_reply(copies[reader], reply))
        await send(sender, rooms[src], "m.room.redaction", {"redacts": orig_id})
        # Room versions before 11 read `redacts` from the top level: the client API sends both.
        for reader in NETS:
            if reader != src:
                await wait_until(
                    lambda p=people[reader], r=rooms[reader], c=copies[reader]: redacted(p, r, c),
                    WITHIN, f"{src}'s original redacted on {reader}",
                )


async def test_edits_replies_reactions_and_redactions_cross_every_way(
    cast: Cast, daemon: Daemon
) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    await relate_all(people, rooms, "live")


async def test_references_to_messages_from_before_a_restart_find_their_targets(
    cast: Cast, daemon: Daemon
) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    alice = people["wa"]
    before = await alice.send_text(rooms["wa"], "said before the restart")
    copies = {n: await copy_of(people[n], rooms[n], "said before the restart")
              for n in ("ig", "fbm")}
    assert await daemon.stop() == 0
    await daemon.start()
    await send(alice, rooms["wa"], "m.room.message", {
        "msgtype": "m.text", "body": "* edited after the restart",
        "m.new_content": {"msgtype": "m.text", "body": "edited after the restart"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": before},
    })
    await send(alice, rooms["wa"], "m.reaction", {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": before, "key": "yes"}
    })
    await send(alice, rooms["wa"], "m.room.redaction", {"redacts": before})
    for net_id, copy in copies.items():
        person, room = people[net_id], rooms[net_id]
        await event_where(person, room, "the edit", is_edit(copy, "edited after the restart"))
        await event_where(person, room, "the reaction", is_reaction(copy))
        await wait_until(lambda p=person, r=room, c=copy: redacted(p, r, c), WITHIN,
                         f"the redaction on {net_id}")


async def test_mentions_cross_as_the_ghosts_of_the_people_named(cast: Cast, daemon: Daemon) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    alice = people["wa"]
    phone = alice.user_id[1:].split(":")[0]
    await alice.send_text(rooms["wa"], "note to self", **{
        "m.mentions": {"user_ids": [alice.user_id]}
    })
    for net_id in ("ig", "fbm"):
        event = await event_where(people[net_id], rooms[net_id], "the mention",
                                  lambda e: e.get("content", {}).get("body") == "note to self")
        # The person named is Alice: on this network, that is her ghost, the event's sender.
        assert event["content"]["m.mentions"] == {"user_ids": [event["sender"]]}
        assert phone not in str(event["content"])
    # A pill as Element writes it for someone who set no display name: Synapse's default name
    # is the localpart, here the phone number, in the link's text and in the body.
    await alice.send_text(rooms["wa"], f"{phone}: are you there?", **{
        "format": "org.matrix.custom.html",
        "formatted_body": f'<a href="https://matrix.to/#/{alice.user_id}">{phone}</a>: '
                          "are you there?",
        "m.mentions": {"user_ids": [alice.user_id]},
    })
    digits = phone.lstrip("+")
    for net_id in ("ig", "fbm"):
        event = await event_where(
            people[net_id], rooms[net_id], "the pill",
            lambda e: "are you there?" in e.get("content", {}).get("body", ""))
        assert digits not in str(event["content"]) and digits[-7:] not in str(event["content"])
        pseudo = event["sender"].split("_")[-1][:4]  # the ghost's neutral name stands in
        assert event["content"]["body"] == f"WhatsApp user {pseudo}: are you there?"


async def test_a_command_edited_into_plain_text_does_not_cross(cast: Cast, daemon: Daemon) -> None:
    # The command was never relayed, so its edit has no original elsewhere: sent as a message
    # of its own, it would carry whatever the correction says (here a number) to everyone.
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    alice = people["wa"]
    command = await alice.send_text(rooms["wa"], "!tb status")
    await send(alice, rooms["wa"], "m.room.message", {
        "msgtype": "m.text", "body": "* oops, call +1 555 123 4567",
        "m.new_content": {"msgtype": "m.text", "body": "oops, call +1 555 123 4567"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": command},
    })
    await alice.send_text(rooms["wa"], "after the edit")
    for net_id in ("ig", "fbm"):
        person, room = people[net_id], rooms[net_id]
        await copy_of(person, room, "after the edit")  # sent after the edit, in order
        bodies = [str(e.get("content", {}).get("body")) for e in await person.messages(room)]
        assert not [b for b in bodies if "oops" in b or "status" in b], bodies
