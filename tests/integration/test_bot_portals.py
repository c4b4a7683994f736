"""The bot against the real daemon and Synapse: management-room commands, permission levels,
portals made and changed by commands (link, invite, unlink, status), and what happens when a
person leaves a portal room or the bot is kicked from one."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest
import trio

from bridge import __version__
from bridge.demo import has_body
from bridge.localnet.people import Person, wait_until

from .conftest import Cast, Daemon

pytestmark = pytest.mark.synapse

LABELS = {"wa": "WhatsApp", "ig": "Instagram", "fbm": "Messenger"}
Events = list[dict[str, Any]]
T = TypeVar("T")


async def together(*calls: Awaitable[T]) -> list[T]:
    """Await the calls concurrently (people registering on three homeservers, say); their results
    in order."""
    results: dict[int, T] = {}

    async def one(index: int, call: Awaitable[T]) -> None:
        results[index] = await call

    async with trio.open_nursery() as nursery:
        for index, call in enumerate(calls):
            nursery.start_soon(one, index, call)
    return [results[i] for i in range(len(calls))]


async def register(cast: Cast, *who: tuple[str, str]) -> list[Person]:
    """(network, display name) people, registered at once."""
    return await together(*(cast.person(net_id, name) for net_id, name in who))


def net_of(person: Person) -> str:
    return person.user_id.rsplit(":", 1)[1].split(".")[0]


def bot_of(net_id: str) -> str:
    return f"@tribridge:{net_id}.localhost"


def identity_of(person: Person) -> str:
    """How people type this person after `<network>:` (phone, handle, email)."""
    return person.user_id[1:].split(":")[0].replace("=40", "@")


def has_notice(fragment: str) -> Callable[[Events], bool]:
    """A timeline predicate: the bot sent a notice containing `fragment`."""

    def check(events: Events) -> bool:
        return any(
            e.get("type") == "m.room.message"
            and e.get("sender", "").startswith("@tribridge:")
            and e.get("content", {}).get("msgtype") == "m.notice"
            and fragment in str(e.get("content", {}).get("body", ""))
            for e in events
        )

    return check


async def management_room(person: Person) -> str:
    """A DM with the bot on the person's own network, once the bot has greeted it."""
    room = await person.create_room(None, invite=[bot_of(net_of(person))], is_direct=True)
    await person.wait_for(room, has_notice("This is your management room"), what="the greeting")
    return room


async def group_room(person: Person, name: str, topic: str | None = None) -> str:
    """A room with the bot in it (not a portal yet), once the bot has said hello."""
    room = await person.create_room(name, invite=[bot_of(net_of(person))], topic=topic)
    await person.wait_for(room, has_notice("to bridge this room"), what="the bot's hello")
    return room


async def ghosts_in(person: Person, room_id: str) -> set[str]:
    return {u for u in await person.members(room_id) if u.startswith("@_tb_")}


async def no_ghosts_left(person: Person, room_id: str, ghosts: set[str] | None = None) -> None:
    """Wait until none of `ghosts` (default: no ghost at all) is a member of the room."""

    async def gone() -> bool:
        left = await ghosts_in(person, room_id)
        return not (left & ghosts if ghosts is not None else left)

    await wait_until(gone, what=f"the ghosts leaving {room_id}")


def sender_of(events: Events, body: str) -> str:
    (sender,) = {e["sender"] for e in events if e.get("content", {}).get("body") == body}
    return str(sender)


async def state(person: Person, room_id: str, event_type: str) -> dict[str, Any]:
    return dict(await person.call("GET", f"/rooms/{quote(room_id)}/state/{event_type}/"))


async def linked_portal(
    cast: Cast, name: str = "Book club", topic: str = "Tuesdays at eight"
) -> tuple[dict[str, Person], dict[str, str]]:
    """Alice (wa) makes a portal with `!tb link` and invites Bob (ig) and Carol (fbm), who join.
    Returns the people and the rooms."""
    alice, bob, carol = await register(cast, ("wa", "Alice"), ("ig", "Bob"), ("fbm", "Carol"))
    people = {"wa": alice, "ig": bob, "fbm": carol}
    # An email is not discoverable by default: Carol opts in, in her management room.
    carol_admin, wa_room = await together(management_room(carol),
                                          group_room(alice, name, topic))
    answer = await carol.command(carol_admin, "privacy discoverable on")
    assert answer == "You can now be reached with dm and invite.", answer
    answer = await alice.command(wa_room, "!tb link")
    found = re.fullmatch(
        r"This room is now bridged to Instagram (!\S+), Messenger (!\S+)\. Bring people in with "
        r"`!tb invite <network>:<identity>`\.",
        answer,
    )
    assert found, answer
    rooms = {"wa": wa_room, "ig": found[1], "fbm": found[2]}
    for net_id in ("ig", "fbm"):
        who = identity_of(people[net_id])
        answer = await alice.command(wa_room, f"!tb invite {net_id}:{who}")
        assert answer == (
            f"Invited {net_id}:{who} to this conversation on {LABELS[net_id]}, if they can be "
            "reached. They decide whether to join."
        ), answer

    async def accept(person: Person, room_id: str) -> None:
        await person.join(await person.wait_for_invite(lambda r, _: r == room_id))

    await together(accept(bob, rooms["ig"]), accept(carol, rooms["fbm"]))
    return people, rooms


async def test_management_room_commands_and_nothing_of_it_is_relayed(
    cast: Cast, daemon: Daemon
) -> None:
    alice, bob, carol = await register(cast, ("wa", "Alice"), ("ig", "Bob"), ("fbm", "Carol"))
    people = {"wa": alice, "ig": bob, "fbm": carol}
    portal = dict(zip(people, await together(*(cast.room(n, p) for n, p in people.items())),
                      strict=True))
    daemon.write_config([portal], "debug")
    await daemon.start()
    room = await management_room(alice)

    answer = await alice.command(room, "help")
    lines = answer.splitlines()
    assert lines[0] == "tribridge commands. In this management room, type commands as they are."
    assert "- `help [<command>]`: list the commands, or explain one" in lines
    assert "- `dm <network>:<identity>`: start a one-to-one chat with a person of another " \
           "network" in lines
    # Named with where they work, not offered here.
    assert "Only in a bridged room: unlink, mirror, invite." in lines
    assert "Only in the room to bridge: link." in lines
    assert not any("admin" in line for line in lines), answer  # alice has the user level
    assert lines[-1] == "Say `help <command>` for more about one."
    # Formatted for clients that show it: code as code, the list as a list.
    (shown,) = [e["content"] for e in await alice.messages(room)
                if e.get("content", {}).get("body") == answer]
    assert shown.get("format") == "org.matrix.custom.html"
    assert "<li><code>help [&lt;command&gt;]</code>: list the commands" in shown["formatted_body"]

    # Fixing a typo by editing: not run (it could run twice), and she is told so.
    typo = await alice.send_text(room, "whoamii")
    await alice.wait_for(room, has_notice("Unknown command 'whoamii'"), what="the refusal")
    await alice.call("PUT", f"/rooms/{quote(room)}/send/m.room.message/edit-{typo[1:9]}", {
        "msgtype": "m.text", "body": "* whoami",
        "m.new_content": {"msgtype": "m.text", "body": "whoami"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": typo}})
    await alice.wait_for(room, has_notice("An edit of a command is not run"), what="the answer")

    answer = await alice.command(room, "help dm")
    assert answer.startswith(
        "`dm <network>:<identity>`: start a one-to-one chat with a person of another network.\n"
        "They get a message request on their own network."
    ), answer

    assert await alice.command(room, "version") == f"tribridge {__version__}"

    answer = await alice.command(room, "ping")
    assert answer.splitlines()[0] == "Round trips from the bridge:"
    for net_id, label in LABELS.items():
        assert re.search(rf"^- {label} \({net_id}\.localhost\): \d+ ms$", answer, re.M), answer

    answer = await alice.command(room, "whoami")
    phone = identity_of(alice)
    assert answer.startswith(f"You are {phone} (phone) on WhatsApp, level user."), answer

    answer = await alice.command(room, "hlep")
    assert answer == "Unknown command 'hlep'. Did you mean `help`? Say `help` for the list."

    answer = await alice.command(room, "dm")
    assert answer == "dm: <network>:<identity> is missing\nUsage: `dm <network>:<identity>`"

    # Whatever is said in a management room stays there: a text is taken for a command, and
    # anything else is not relayed, though alice is in a portal whose rooms reach both networks.
    answer = await alice.command(room, "meet me at the station")
    assert answer.startswith("Unknown command 'meet'."), answer
    emote = await alice.send_text(room, "waves from the management room", msgtype="m.emote")
    await daemon.wait_log(f"{emote} from wa: room is not part of a portal")
    await alice.send_text(portal["wa"], "marker after the management room")
    for net_id in ("ig", "fbm"):
        person = people[net_id]
        await person.wait_for(portal[net_id], has_body("marker after the management room"))
        bodies = [body for _, body in await person.texts(portal[net_id])]
        assert "meet me at the station" not in bodies and "!tb meet me at the station" \
            not in bodies
        assert "waves from the management room" not in bodies
        assert not any("Unknown command" in body for body in bodies), bodies
        assert set(await person.invites()) == set(), "nobody was invited anywhere"


async def test_permission_levels_and_an_admin_links_an_existing_room(
    cast: Cast, daemon: Daemon
) -> None:
    relay_person, admin, user, bob = await register(
        cast, ("wa", "Rita"), ("wa", "Ada"), ("wa", "Ulrich"), ("ig", "Bob"))
    daemon.extra_config = (
        f'[permissions]\n"{relay_person.user_id}" = "relay"\n"{admin.user_id}" = "admin"\n'
    )
    await daemon.start([])

    rita_room, user_room, ada_room, ada_admin, ig_room, closed, bobs_own = await together(
        group_room(relay_person, "Rita's room"), management_room(user),
        group_room(admin, "Ada's room"), management_room(admin), group_room(bob, "Bob's room"),
        bob.create_room("no bot here"),  # the bot is never invited there
        management_room(bob),
    )

    # relay: what they say crosses, but they may not make portals.
    answer = await relay_person.command(rita_room, "!tb link")
    assert answer == "link: you need the user level for this (you have relay); ask the " \
                     "bridge's admin.", answer

    # user: no admin commands.
    for command in ("admin portals", "admin stats", "admin reload"):
        answer = await user.command(user_room, command)
        assert answer == f"{command}: you need the admin level for this (you have user); " \
                         "ask the bridge's admin.", answer

    # admin: links an existing Instagram room to a WhatsApp room.
    answer = await admin.command(ada_room, f"!tb link ig {closed}")
    assert answer == f"link: the bot is not in {closed}. Invite @tribridge:ig.localhost there " \
                     "first.", answer
    # Someone's management room: all its owner writes there is a command, so never a portal.
    answer = await admin.command(ada_room, f"!tb link ig {bobs_own}")
    assert answer == f"link: {bobs_own} is a management room (a direct chat with the bot); " \
                     "link a group room.", answer
    answer = await admin.command(ada_room, f"!tb link ig {ig_room}")
    assert answer == f"This room is now bridged with the Instagram room {ig_room}.", answer
    await bob.wait_for(ig_room, has_notice("This room is now bridged with WhatsApp."))
    await admin.send_text(ada_room, "hello instagram")
    await bob.wait_for(ig_room, has_body("hello instagram"))
    await bob.send_text(ig_room, "hello whatsapp")
    await admin.wait_for(ada_room, has_body("hello whatsapp"))

    # Not in a group room: the list names every portal's rooms, DM portals among them.
    answer = await admin.command(ada_room, "!tb admin portals")
    assert answer.startswith("admin portals works only in your management room"), answer
    answer = await admin.command(ada_admin, "admin portals")
    assert answer.splitlines()[0] == "1 portal(s):", answer
    assert re.search(rf"^- \S+ \(command\): ig {re.escape(ig_room)}, wa {re.escape(ada_room)}$",
                     answer, re.M), answer
    answer = await admin.command(ada_admin, "admin stats")
    assert answer.startswith("Store:\n"), answer
    assert answer.splitlines()[-1].startswith("Outbox waiting: fbm "), answer
    answer = await admin.command(ada_admin, "admin reload")
    assert answer == (
        "Reloading the config: portals, permissions, the log level, the command prefix, the "
        "default country code, room state mirroring and history_days apply now.")
    await daemon.wait_log("reloaded: ")
    answer = await admin.command(ada_admin, "whoami")
    assert ", level admin." in answer.splitlines()[0], answer


async def test_link_makes_the_rooms_and_invite_brings_people_in(
    cast: Cast, daemon: Daemon
) -> None:
    await daemon.start([])
    # A topic that names someone by user id, which on a phone network is their number.
    host = "@+15550001111:wa.localhost"
    people, rooms = await linked_portal(cast, "Book club", f"Tuesdays at eight; host {host}")
    alice, bob = people["wa"], people["ig"]

    # The rooms the bot made carry the name, the topic and one portal id; the person the
    # topic names is their ghost there, not their number.
    portal_ids = set()
    for net_id in ("ig", "fbm"):
        person, room = people[net_id], rooms[net_id]
        assert (await state(person, room, "m.room.name"))["name"] == "Book club"
        topic = (await state(person, room, "m.room.topic"))["topic"]
        assert re.fullmatch(rf"Tuesdays at eight; host @_tb_wa_[a-z2-7]{{16}}:{net_id}\.localhost",
                            topic), topic
        portal_ids.add((await state(person, room, "org.tribridge.portal"))["portal_id"])
    (portal_id,) = portal_ids

    answer = await alice.command(rooms["wa"], "!tb status")
    assert answer.splitlines()[0] == f"This room is bridged (portal {portal_id}):", answer
    for net_id, label in LABELS.items():
        here = " (this room)" if net_id == "wa" else ""
        assert f"- {label}: {rooms[net_id]}{here}: reachable, " in answer, answer

    for src, person in people.items():
        await person.send_text(rooms[src], f"hello from {src}")
    for net_id, person in people.items():
        for src in people:
            if src != net_id:
                await person.wait_for(rooms[net_id], has_body(f"hello from {src}"),
                                      what=f"{src}'s message")

    # Someone not discoverable (a phone number, by default) gets the very reply someone who
    # does not exist gets, and no invite; Erin, who opted in, does get hers.
    dave, erin = await register(cast, ("wa", "Dave"), ("wa", "Erin"))
    answer = await erin.command(await management_room(erin), "privacy discoverable on")
    assert answer == "You can now be reached with dm and invite.", answer
    replies = {}
    for who in (identity_of(dave), "+15550000001", identity_of(erin)):
        answer = await bob.command(rooms["ig"], f"!tb invite wa:{who}")
        replies[who] = answer.replace(who, "<someone>")
    assert len(set(replies.values())) == 1, replies
    assert replies[identity_of(dave)] == (
        "Invited wa:<someone> to this conversation on WhatsApp, if they can be reached. "
        "They decide whether to join."
    )
    await erin.wait_for_invite(lambda r, _: r == rooms["wa"])
    # Commands of one room run one after the other: Dave's was done before Erin's began.
    assert set(await dave.invites()) == set()


async def test_a_link_that_fails_half_way_leaves_no_room_behind(
    cast: Cast, daemon: Daemon
) -> None:
    await daemon.start([])
    (alice,) = await register(cast, ("wa", "Alice"))
    room = await group_room(alice, "Half made")

    async def bot_rooms() -> set[str]:
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.get(
                f"{daemon.net.url('ig')}/_matrix/client/v3/joined_rooms",
                headers={"Authorization": f"Bearer {daemon.net.as_tokens['ig']}"})
        return set(answer.json()["joined_rooms"])

    before = await bot_rooms()
    fbm = daemon.net.servers["fbm"]
    fbm.stop()  # the Messenger room cannot be made: the Instagram one was made first
    try:
        answer = await alice.command(room, "!tb link")
    finally:
        fbm.start()
        fbm.wait_ready()
    assert answer == "link failed: Messenger did not answer. Try again in a moment.", answer
    assert await bot_rooms() == before  # the bot left the Instagram room it made for it
    answer = await alice.command(room, "!tb link")
    assert answer.startswith("This room is now bridged to Instagram "), answer
    assert len(await bot_rooms() - before) == 1


async def test_an_encrypted_direct_chat_is_told_it_cannot_be_a_management_room(
    cast: Cast, daemon: Daemon
) -> None:
    # A client may encrypt a direct chat (Element does when the invitee has device keys):
    # the bot could read no command there, and must say so rather than greet and go silent.
    await daemon.start([])
    (ana,) = await register(cast, ("wa", "Ana"))
    megolm = {"type": "m.room.encryption", "state_key": "",
              "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
    created = await ana.call("POST", "/createRoom", {
        "preset": "trusted_private_chat", "is_direct": True, "invite": [bot_of("wa")],
        "initial_state": [megolm]})
    room = str(created["room_id"])
    await ana.wait_for(room, has_notice("This chat is end-to-end encrypted, so the bot cannot "
                                        "read what you write here"), what="the bot's warning")

    async def bot_gone(r: str = room) -> bool:
        return bot_of("wa") not in await ana.members(r)

    await wait_until(bot_gone, what="the bot leaving the encrypted chat")

    # And one that turns encryption on later.
    later = await management_room(ana)
    assert "whoami" in await ana.command(later, "help")
    await ana.call("PUT", f"/rooms/{quote(later)}/state/m.room.encryption/", megolm["content"])
    await ana.wait_for(later, has_notice("This chat is end-to-end encrypted"),
                       what="the bot's warning")
    await wait_until(lambda: bot_gone(later), what="the bot leaving")


async def test_a_direct_chat_with_others_in_it_is_no_management_room(
    cast: Cast, daemon: Daemon
) -> None:
    # The answers of a management room (whoami, status) are about its owner alone.
    await daemon.start([])
    ana, ben = await register(cast, ("wa", "Ana"), ("wa", "Ben"))
    group_dm = await ana.create_room(None, invite=[bot_of("wa"), ben.user_id], is_direct=True)
    await ana.wait_for(group_dm, has_notice("Other people are in this chat, so it is not a "
                                            "management room"), what="the bot's hello")
    answer = await ana.command(group_dm, "!tb whoami")
    assert answer.startswith("whoami works only in your management room"), answer

    own = await management_room(ana)
    await ana.call("POST", f"/rooms/{quote(own)}/invite", {"user_id": ben.user_id})
    await ana.wait_for(own, has_notice("Someone else is in this chat now, so it is no longer "
                                       "your management room"), what="the bot's warning")

    async def bot_gone() -> bool:
        return bot_of("wa") not in await ana.members(own)

    await wait_until(bot_gone, what="the bot leaving the shared chat")


async def test_unlink_takes_one_room_out_of_a_linked_portal(cast: Cast, daemon: Daemon) -> None:
    daemon.write_config([], "debug")
    await daemon.start()
    people, rooms = await linked_portal(cast)
    alice, bob, carol = people["wa"], people["ig"], people["fbm"]
    for src, person in people.items():  # everyone speaks once: ghosts in every room
        await person.send_text(rooms[src], f"before unlink from {src}")
    await alice.wait_for(rooms["wa"], lambda evs: has_body("before unlink from ig")(evs)
                         and has_body("before unlink from fbm")(evs))
    assert len(await ghosts_in(alice, rooms["wa"])) == 2

    # Bob was invited: he may not change the room's settings, so he may not unlink it.
    answer = await bob.command(rooms["ig"], "!tb unlink")
    assert answer == "unlink: you need the power to change this room's settings (moderator or " \
                     "above) to do this.", answer

    answer = await alice.command(rooms["wa"], "!tb unlink")
    assert answer == "This room is no longer bridged; the ghosts have left.", answer
    for net_id in ("ig", "fbm"):
        await people[net_id].wait_for(rooms[net_id],
                                      has_notice("The WhatsApp room left this portal."))
    await no_ghosts_left(alice, rooms["wa"])

    after = await alice.send_text(rooms["wa"], "after unlink from wa")
    await daemon.wait_log(f"{after} from wa: room is not part of a portal")
    await bob.send_text(rooms["ig"], "after unlink from ig")
    await carol.wait_for(rooms["fbm"], has_body("after unlink from ig"))  # ig-fbm still bridged
    for net_id in ("ig", "fbm"):
        assert "after unlink from wa" not in [b for _, b in await people[net_id].texts(
            rooms[net_id])]
    assert "after unlink from ig" not in [b for _, b in await alice.texts(rooms["wa"])]
    answer = await alice.command(rooms["wa"], "!tb status")
    assert answer.startswith("This room is not bridged"), answer


async def test_leaving_kicking_the_bot_and_a_config_portal(cast: Cast, daemon: Daemon) -> None:
    alice, bob, carol, dan = await register(
        cast, ("wa", "Alice"), ("ig", "Bob"), ("fbm", "Carol"), ("ig", "Dan"))
    people = {"wa": alice, "ig": bob, "fbm": carol}
    rooms = dict(zip(people, await together(*(cast.room(n, p) for n, p in people.items())),
                     strict=True))
    await daemon.start([rooms])

    # A portal of the config file is not unlinked by a command.
    answer = await alice.command(rooms["wa"], "!tb unlink")
    assert answer == "unlink: this portal is declared in the config file ([[portals]]); the " \
                     "bridge's admin removes it there.", answer

    # Dan, a guest in Bob's room, speaks once (so that he has ghosts), then leaves.
    await bob.call("POST", f"/rooms/{quote(rooms['ig'])}/invite", {"user_id": dan.user_id})
    await dan.join(rooms["ig"])
    talk = {**people, "dan": dan}
    for who, person in talk.items():
        await person.send_text(rooms[net_of(person)], f"hi from {who}")

    def all_but_own(net_id: str) -> Callable[[Events], bool]:
        wanted = [has_body(f"hi from {w}") for w, p in talk.items() if net_of(p) != net_id]
        return lambda events: all(check(events) for check in wanted)

    seen = {n: await p.wait_for(rooms[n], all_but_own(n)) for n, p in people.items()}
    dan_ghosts = {n: sender_of(seen[n], "hi from dan") for n in ("wa", "fbm")}
    bob_ghosts = {n: sender_of(seen[n], "hi from ig") for n in ("wa", "fbm")}

    # Dan leaves: his ghosts leave the other rooms; Bob's stay.
    await dan.leave(rooms["ig"])
    for net_id in ("wa", "fbm"):
        await no_ghosts_left(people[net_id], rooms[net_id], {dan_ghosts[net_id]})
        assert bob_ghosts[net_id] in await ghosts_in(people[net_id], rooms[net_id])

    # Carol kicks the bot out of the Messenger room: it leaves the portal.
    await carol.call("POST", f"/rooms/{quote(rooms['fbm'])}/kick",
                     {"user_id": bot_of("fbm"), "reason": "no bots"})
    for net_id in ("wa", "ig"):
        await people[net_id].wait_for(
            rooms[net_id],
            has_notice("The Messenger room left this portal: the bot was removed from it."),
            what="the notice about the Messenger room",
        )
    await no_ghosts_left(carol, rooms["fbm"])
    await carol.send_text(rooms["fbm"], "after the kick from fbm")
    await alice.send_text(rooms["wa"], "after the kick from wa")
    await bob.wait_for(rooms["ig"], has_body("after the kick from wa"))  # wa-ig still bridged
    assert "after the kick from fbm" not in [b for _, b in await alice.texts(rooms["wa"])]
    assert "after the kick from fbm" not in [b for _, b in await bob.texts(rooms["ig"])]
    assert "after the kick from wa" not in [b for _, b in await carol.texts(rooms["fbm"])]


async def test_invite_asks_for_the_power_to_invite(cast: Cast, daemon: Daemon) -> None:
    # Bob joined the Instagram room the bot made. Once that room lets only moderators invite,
    # he may not invite through the bot either.
    import httpx

    await daemon.start([])
    people, rooms = await linked_portal(cast)
    bob = people["ig"]
    levels = await state(bob, rooms["ig"], "m.room.power_levels")
    levels["invite"] = 50
    url = (f"{daemon.net.url('ig')}/_matrix/client/v3/rooms/{quote(rooms['ig'])}/state/"
           "m.room.power_levels/")
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        response = await http.put(url, json=levels, headers={  # as the bot, the room's admin
            "Authorization": f"Bearer {daemon.net.as_tokens['ig']}"})
    assert response.status_code == 200, response.text
    answer = await bob.command(rooms["ig"], "!tb invite fbm:someone@example.com")
    assert answer == "invite: you need the power to invite people to this room to do this.", answer
