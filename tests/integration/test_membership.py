"""What people do to the room and to each other crosses too: joins, invites, kicks, bans and
their ghosts; name and avatar changes; the room's name, topic and avatar; mentions of ghosts;
typing and read receipts."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

import pytest

from bridge.localnet.people import Person, wait_until

from .conftest import Cast, Daemon
from .test_relations import WITHIN, copy_of, event_where
from .test_relay import three_way

pytestmark = pytest.mark.synapse

NETS = ("wa", "ig", "fbm")


def starts(prefix: str) -> Any:
    return lambda e: str(e.get("content", {}).get("body", "")).startswith(prefix)


async def moderated(people: dict[str, Person], rooms: dict[str, str]) -> None:
    """Each room's owner makes the bridge's bot a moderator, as mirroring kicks, bans and room
    settings needs (rooms made with `link` give it that themselves)."""
    for net, person in people.items():
        path = f"/rooms/{quote(rooms[net])}/state/m.room.power_levels/"
        levels = await person.call("GET", path)
        levels.setdefault("users", {})[f"@tribridge:{net}.localhost"] = 50
        await person.call("PUT", path, levels)


async def membership(person: Person, room: str, user: str) -> str | None:
    try:
        state = await person.call(
            "GET", f"/rooms/{quote(room)}/state/m.room.member/{quote(user)}")
    except RuntimeError:
        return None
    return str(state.get("membership"))


async def ghost_of(person: Person, room: str, name: str) -> str:
    """The user id of the member of `room` whose display name starts with `name`."""

    async def find() -> str | None:
        members = await person.members(room)
        return next((u for u, n in members.items() if n and n.startswith(name)), None)

    return await wait_until(find, WITHIN, f"{name}'s ghost in {person.user_id}'s room")


async def until_membership(person: Person, room: str, user: str, wanted: str) -> None:
    async def check() -> bool:
        return await membership(person, room, user) == wanted

    await wait_until(check, WITHIN, f"{user} to be {wanted} in {room}")


async def invited_ghost(person: Person, room: str, name: str) -> str:
    """The user id of the invited member of `room` whose display name starts with `name`."""

    async def find() -> str | None:
        state = await person.call("GET", f"/rooms/{quote(room)}/state")
        return next((e["state_key"] for e in state if e["type"] == "m.room.member"
                     and e["content"].get("membership") == "invite"
                     and str(e["content"].get("displayname", "")).startswith(name)), None)

    return await wait_until(find, WITHIN, f"{name}'s ghost invited in {person.user_id}'s room")


async def test_joins_invites_kicks_and_bans_are_mirrored_by_ghosts(
    cast: Cast, daemon: Daemon
) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    await moderated(people, rooms)
    for src in NETS:
        owner, room = people[src], rooms[src]
        others = [n for n in NETS if n != src]
        newcomer = await cast.person(src, f"New{src}")
        await owner.call("POST", f"/rooms/{quote(room)}/invite", {"user_id": newcomer.user_id})
        # Invited here: the newcomer's ghost is invited on the two others, then joins with them.
        ghosts = {n: await invited_ghost(people[n], rooms[n], f"New{src}") for n in others}
        await newcomer.join(room)
        for net in others:
            await until_membership(people[net], rooms[net], ghosts[net], "join")
        # The room's owner kicks them: their ghosts are kicked (by the bridge's bot, since the
        # owner's ghost has no power there), with the reason.
        await owner.call("POST", f"/rooms/{quote(room)}/kick",
                         {"user_id": newcomer.user_id, "reason": f"too loud on {src}"})
        for net in others:
            await until_membership(people[net], rooms[net], ghosts[net], "leave")
            state = await people[net].call(
                "GET", f"/rooms/{quote(rooms[net])}/state/m.room.member/{quote(ghosts[net])}")
            assert state.get("reason") == f"too loud on {src}"
        await owner.call("POST", f"/rooms/{quote(room)}/ban", {"user_id": newcomer.user_id})
        for net in others:
            await until_membership(people[net], rooms[net], ghosts[net], "ban")
        await owner.call("POST", f"/rooms/{quote(room)}/unban", {"user_id": newcomer.user_id})
        for net in others:
            await until_membership(people[net], rooms[net], ghosts[net], "leave")
    # Leaving by oneself makes the ghosts leave.
    alice = people["wa"]
    await people["fbm"].send_text(rooms["fbm"], "carol was here")
    carol_wa = await ghost_of(alice, rooms["wa"], "Carol")
    await people["fbm"].leave(rooms["fbm"])
    await until_membership(alice, rooms["wa"], carol_wa, "leave")


async def test_a_new_name_and_avatar_reach_the_ghosts(cast: Cast, daemon: Daemon) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    names = {"wa": "Alice", "ig": "Bob", "fbm": "Carol"}
    for src in NETS:
        person = people[src]
        await person.send_text(rooms[src], f"hello from {src}")
        ghosts = {n: await ghost_of(people[n], rooms[n], names[src]) for n in NETS if n != src}
        picture = secrets.token_bytes(4_000)
        avatar = await person.upload(picture, "image/png", "me.png")
        me = quote(person.user_id)
        await person.call("PUT", f"/profile/{me}/displayname", {"displayname": f"{src} renamed"})
        await person.call("PUT", f"/profile/{me}/avatar_url", {"avatar_url": avatar})
        for net, ghost in ghosts.items():
            reader = people[net]

            async def renamed(reader: Person = reader, ghost: str = ghost, src: str = src
                              ) -> bool:
                profile = await reader.call("GET", f"/profile/{quote(ghost)}")
                return bool(str(profile.get("displayname", "")).startswith(f"{src} renamed")
                            and profile.get("avatar_url"))

            await wait_until(renamed, WITHIN, f"{src}'s ghost renamed on {net}")
            profile = await reader.call("GET", f"/profile/{quote(ghost)}")
            assert profile["avatar_url"].startswith(f"mxc://{net}.localhost/")
            assert await reader.download(profile["avatar_url"]) == picture


async def test_a_room_nickname_names_the_ghost_in_that_portal_alone(
    cast: Cast, daemon: Daemon
) -> None:
    # Alice calls herself "Ali the host" in the book club (Element's /myroomnick): the other
    # networks' book club rooms show that, while her ghost's own name stays "Alice".
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    alice = people["wa"]
    await alice.send_text(rooms["wa"], "hello from alice")
    ghosts = {n: await ghost_of(people[n], rooms[n], "Alice") for n in ("ig", "fbm")}
    me = quote(alice.user_id)
    member = await alice.call("GET", f"/rooms/{quote(rooms['wa'])}/state/m.room.member/{me}")
    await alice.call("PUT", f"/rooms/{quote(rooms['wa'])}/state/m.room.member/{me}",
                     {**member, "displayname": "Ali the host"})
    async def named_in_rooms(shown: str) -> None:
        """Until Alice's ghost is called `shown` in the other networks' book club rooms."""
        for net, ghost in ghosts.items():
            reader, room = people[net], rooms[net]

            async def named(reader: Person = reader, room: str = room, ghost: str = ghost
                            ) -> bool:
                state = await reader.call(
                    "GET", f"/rooms/{quote(room)}/state/m.room.member/{quote(ghost)}")
                return bool(state.get("displayname") == shown)

            await wait_until(named, WITHIN, f"alice's ghost called {shown!r} in the {net} room")

    await named_in_rooms("Ali the host (WhatsApp)")
    for net, ghost in ghosts.items():
        profile = await people[net].call("GET", f"/profile/{quote(ghost)}")
        assert profile["displayname"] == "Alice (WhatsApp)", profile
    # The nickname dropped: her own name in the room again.
    await alice.call("PUT", f"/rooms/{quote(rooms['wa'])}/state/m.room.member/{me}",
                     {**member, "displayname": "Alice"})
    await named_in_rooms("Alice (WhatsApp)")
    # Her own new name is hers everywhere again (and replaces the nickname, as on her side).
    await alice.call("PUT", f"/profile/{me}/displayname", {"displayname": "Alicia"})
    for net, ghost in ghosts.items():
        reader = people[net]

        async def renamed(reader: Person = reader, ghost: str = ghost) -> bool:
            profile = await reader.call("GET", f"/profile/{quote(ghost)}")
            return bool(profile.get("displayname") == "Alicia (WhatsApp)")

        await wait_until(renamed, WITHIN, f"alice's ghost renamed on {net}")


async def test_room_name_topic_and_avatar_are_mirrored_unless_the_portal_says_no(
    cast: Cast, daemon: Daemon
) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    bob = people["ig"]
    # Without the power to change room settings on WhatsApp, the bot says so.
    await bob.call("PUT", f"/rooms/{quote(rooms['ig'])}/state/m.room.topic/", {"topic": "first"})
    refused = await event_where(bob, rooms["ig"], "the bot's notice", starts("The room's topic"))
    assert "was not copied to" in refused["content"]["body"]
    await moderated(people, rooms)
    for src in NETS:
        person, room = people[src], rooms[src]
        icon = secrets.token_bytes(3_000)
        icon_url = await person.upload(icon, "image/png", "icon.png")
        await person.call("PUT", f"/rooms/{quote(room)}/state/m.room.name/",
                          {"name": f"Plans of {src}"})
        await person.call("PUT", f"/rooms/{quote(room)}/state/m.room.topic/",
                          {"topic": f"trip of {src}"})
        await person.call("PUT", f"/rooms/{quote(room)}/state/m.room.avatar/", {"url": icon_url})
        for net in NETS:
            if net == src:
                continue
            reader, there = people[net], rooms[net]

            async def state(kind: str, reader: Person = reader, there: str = there
                            ) -> dict[str, Any]:
                try:
                    return dict(await reader.call(
                        "GET", f"/rooms/{quote(there)}/state/{kind}/"))
                except RuntimeError:  # not set (yet)
                    return {}

            async def mirrored(icon: bytes = icon, src: str = src,
                               state: Any = state, reader: Person = reader) -> bool:
                url = (await state("m.room.avatar")).get("url")
                return ((await state("m.room.name")).get("name") == f"Plans of {src}"
                        and (await state("m.room.topic")).get("topic") == f"trip of {src}"
                        and url is not None and await reader.download(url) == icon)

            await wait_until(mirrored, WITHIN, f"{src}'s name, topic and avatar on {net}")
            url = (await state("m.room.avatar"))["url"]
            assert url.startswith(f"mxc://{net}.localhost/")
    # The portal's users can turn it off.
    answer = await bob.command(rooms["ig"], "!tb mirror off")
    assert "no longer" in answer, answer
    await bob.call("PUT", f"/rooms/{quote(rooms['ig'])}/state/m.room.name/", {"name": "Secret"})
    await bob.send_text(rooms["ig"], "after the rename")
    await copy_of(people["wa"], rooms["wa"], "after the rename")
    name = await people["wa"].call("GET", f"/rooms/{quote(rooms['wa'])}/state/m.room.name/")
    assert name["name"] == "Plans of fbm"


async def test_a_mentioned_ghost_becomes_the_real_person_on_their_own_network(
    cast: Cast, daemon: Daemon
) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    alice, bob = people["wa"], people["ig"]
    await bob.send_text(rooms["ig"], "bob is here")
    bob_on_wa = await ghost_of(alice, rooms["wa"], "Bob")
    link = f"https://matrix.to/#/{quote(bob_on_wa)}"
    await alice.send_text(rooms["wa"], f"thanks {bob_on_wa}", **{
        "format": "org.matrix.custom.html",
        "formatted_body": f'thanks <a href="{link}">Bob</a>',
        "m.mentions": {"user_ids": [bob_on_wa]},
    })
    got = await event_where(bob, rooms["ig"], "the mention of Bob", starts("thanks"))
    # On Instagram the pill and the mention name Bob himself, so his client highlights it.
    assert got["content"]["m.mentions"] == {"user_ids": [bob.user_id]}
    assert got["content"]["body"] == f"thanks {bob.user_id}"
    assert quote(bob.user_id, safe="") in got["content"]["formatted_body"]
    # On Messenger they name Bob's ghost there.
    carol = people["fbm"]
    there = await event_where(carol, rooms["fbm"], "the mention of Bob", starts("thanks"))
    bob_on_fbm = await ghost_of(carol, rooms["fbm"], "Bob")
    assert there["content"]["m.mentions"] == {"user_ids": [bob_on_fbm]}


async def test_typing_and_read_receipts_are_shown_by_the_ghosts(
    cast: Cast, daemon: Daemon
) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    names = {"wa": "Alice", "ig": "Bob", "fbm": "Carol"}
    for src in NETS:
        await people[src].send_text(rooms[src], f"{src} here")
    for i, src in enumerate(NETS):
        typist, room = people[src], rooms[src]
        reader_net = NETS[(i + 1) % 3]
        reader, there = people[reader_net], rooms[reader_net]
        ghost = await ghost_of(reader, there, names[src])
        original = await reader.send_text(there, f"read this, {src}")
        copy = await copy_of(typist, room, f"read this, {src}")
        me = quote(typist.user_id)
        await typist.call("PUT", f"/rooms/{quote(room)}/typing/{me}",
                          {"typing": True, "timeout": 20000})

        async def typing(reader: Person = reader, there: str = there, ghost: str = ghost
                         ) -> bool:
            return any(e["type"] == "m.typing" and ghost in e["content"].get("user_ids", [])
                       for e in await reader.ephemeral(there))

        await wait_until(typing, WITHIN, f"{src}'s ghost typing on {reader_net}")
        await typist.call("PUT", f"/rooms/{quote(room)}/typing/{me}", {"typing": False})

        async def stopped(typing: Any = typing) -> bool:
            return not await typing()

        await wait_until(stopped, WITHIN, f"{src}'s ghost to stop typing")
        await typist.call("POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(copy)}", {})

        async def read(reader: Person = reader, there: str = there, ghost: str = ghost,
                       original: str = original) -> bool:
            for event in await reader.ephemeral(there):
                readers = event.get("content", {}).get(original, {}).get("m.read", {})
                if event["type"] == "m.receipt" and ghost in readers:
                    return True
            return False

        await wait_until(read, WITHIN, f"{src}'s ghost's read receipt on {reader_net}")


async def test_a_ghost_a_moderator_removed_is_not_brought_back(
    cast: Cast, daemon: Daemon
) -> None:
    from bridge.demo import has_body

    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    alice, bob, carol = people["wa"], people["ig"], people["fbm"]
    await alice.send_text(rooms["wa"], "hello all")
    events = await bob.wait_for(rooms["ig"], has_body("hello all"))
    (ghost,) = {e["sender"] for e in events if e.get("content", {}).get("body") == "hello all"}
    # Bob made the Instagram room: he moderates it, and removes Alice's ghost.
    await bob.call("POST", f"/rooms/{quote(rooms['ig'])}/kick",
                   {"user_id": ghost, "reason": "not here, please"})
    await alice.send_text(rooms["wa"], "after the kick")
    await carol.wait_for(rooms["fbm"], has_body("after the kick"))
    await alice.wait_for(rooms["wa"], has_body(
        "Not delivered to Instagram: the room's moderators there removed you from it."),
        what="the notice that Instagram's moderators removed her")
    assert ghost not in await bob.members(rooms["ig"])
    assert "after the kick" not in [b for _, b in await bob.texts(rooms["ig"])]
    # Invited back by Bob, the ghost comes back with the next message.
    await bob.call("POST", f"/rooms/{quote(rooms['ig'])}/invite", {"user_id": ghost})
    await alice.send_text(rooms["wa"], "back again")
    await bob.wait_for(rooms["ig"], has_body("back again"))
