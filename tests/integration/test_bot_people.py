"""The bot's commands about people: cross-network DMs (accepted, declined, undiscoverable),
identity links and their codes, `forget me`, and `privacy show-identity`."""

from __future__ import annotations

import re
import secrets
import sqlite3
from collections.abc import Callable
from contextlib import closing
from typing import Any
from urllib.parse import quote

import pytest
import trio

from bridge.demo import has_body
from bridge.localnet.people import Person, wait_until
from bridge.store import Store

from .conftest import Cast, Daemon

pytestmark = pytest.mark.synapse

LABELS = {"wa": "WhatsApp", "ig": "Instagram", "fbm": "Messenger"}
Events = list[dict[str, Any]]


# -- who is who ----------------------------------------------------------------------------------

def network_of(person: Person) -> str:
    return person.user_id.split(":", 1)[1].split(".")[0]


def localpart(person: Person) -> str:
    return person.user_id[1:].split(":", 1)[0]


def identity(person: Person) -> str:
    """What others type to name the person: a phone number, a handle or an email."""
    return localpart(person).replace("=40", "@")


def target(person: Person) -> str:
    return f"{network_of(person)}:{identity(person)}"


def is_notice(event: dict[str, Any]) -> bool:
    return (
        event.get("type") == "m.room.message"
        and event.get("content", {}).get("msgtype") == "m.notice"
        and str(event.get("sender", "")).startswith("@tribridge:")
    )


def notices(events: Events) -> list[str]:
    return [str(e["content"]["body"]) for e in events if is_notice(e)]


def senders_of(events: Events, body: str) -> set[str]:
    return {
        e["sender"] for e in events
        if e.get("type") == "m.room.message" and e["content"].get("body") == body
    }


def ghost_invite(invitee: Person, ghost_source: str) -> Callable[[str, dict[str, Any]], bool]:
    """An invite of `invitee` sent by a ghost standing for someone of `ghost_source`."""
    prefix = f"@_tb_{ghost_source}_"

    def check(room_id: str, invite: dict[str, Any]) -> bool:
        return any(
            e.get("type") == "m.room.member" and e.get("state_key") == invitee.user_id
            and str(e.get("sender", "")).startswith(prefix)
            for e in invite.get("invite_state", {}).get("events", [])
        )

    return check


async def inviter_of(person: Person, room_id: str) -> tuple[str, str | None]:
    """(user id, display name) of whoever invited `person` into `room_id`, from the invite."""
    state = (await person.invites())[room_id]["invite_state"]["events"]
    (invite,) = [e for e in state if e["type"] == "m.room.member"
                 and e["state_key"] == person.user_id]
    sender = invite["sender"]
    names = [e["content"].get("displayname") for e in state
             if e["type"] == "m.room.member" and e["state_key"] == sender]
    return sender, (names[0] if names else None)


async def manage(person: Person) -> str:
    """The person's management room: a DM with the bot, once the bot has greeted them."""
    net = network_of(person)
    room = await person.create_room(None, invite=[f"@tribridge:{net}.localhost"], is_direct=True)
    await person.wait_for(room, lambda evs: any(is_notice(e) for e in evs),
                          what="the bot's greeting")
    return room


async def register(cast: Cast, *who: tuple[str, str]) -> list[Person]:
    """People registered at once, (network, display name) each: a registration takes Synapse
    about half a second of password hashing."""
    found: dict[int, Person] = {}

    async def one(index: int, net: str, name: str) -> None:
        found[index] = await cast.person(net, name)

    async with trio.open_nursery() as nursery:
        for index, (net, name) in enumerate(who):
            nursery.start_soon(one, index, net, name)
    return [found[i] for i in range(len(who))]


async def three_rooms(cast: Cast, owners: dict[str, Person]) -> dict[str, str]:
    return {net: await cast.room(net, person) for net, person in owners.items()}


def unknown_phone() -> str:
    return "+1555" + str(secrets.randbelow(10_000_000)).zfill(7)


def without(text: str, *identities: str) -> str:
    for value in identities:
        text = text.replace(value, "<identity>")
    return text


# -- the bridge's store, read (and once written) beside the running daemon ----------------------

def query(daemon: Daemon, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(daemon.database, isolation_level=None)) as conn:
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn.execute(sql, params).fetchall()


async def outbox_drained(daemon: Daemon) -> None:
    async def drained() -> bool:
        return int(query(daemon, "SELECT COUNT(*) FROM outbox WHERE state = 'pending'")[0][0]) == 0

    await wait_until(drained, what="an empty outbox")


async def member_name(person: Person, room_id: str, user_id: str, want: str) -> None:
    """Wait until `user_id` shows as `want` among the members of `room_id`."""
    async def shows() -> bool:
        return (await person.members(room_id)).get(user_id) == want

    try:
        await wait_until(shows, what=f"{user_id} named {want!r}")
    except TimeoutError:
        members = await person.members(room_id)
        raise AssertionError(f"{user_id} is named {members.get(user_id)!r}, not {want!r}") from None


# -- DMs -----------------------------------------------------------------------------------------

PAIRS = [("wa", "ig"), ("ig", "wa"), ("wa", "fbm"), ("fbm", "wa"), ("ig", "fbm"), ("fbm", "ig")]


async def dm_accepted(cast: Cast, src: str, dst: str) -> None:
    asker, answerer = await register(
        cast, (src, f"Asker {src} {dst}"), (dst, f"Answerer {dst} {src}")
    )
    asker_room = await manage(asker)
    if dst in ("wa", "fbm"):  # phone numbers and emails are not discoverable unless they say so
        answer = await answerer.command(await manage(answerer), "privacy discoverable on")
        assert answer == "You can now be reached with dm and invite.", answer
    answer = await asker.command(asker_room, f"dm {target(answerer)}")
    assert answer.startswith(f"Message request sent to {target(answerer)}."), answer

    # The request: an invite from the asker's ghost, named after them and their network only.
    request_room = await answerer.wait_for_invite(ghost_invite(answerer, src))
    ghost, name = await inviter_of(answerer, request_room)
    assert re.fullmatch(rf"@_tb_{src}_[a-z2-7]{{16}}:{dst}\.localhost", ghost), ghost
    assert name == f"Asker {src} {dst} ({LABELS[src]})", name
    for private in (identity(asker), localpart(asker), identity(asker).lstrip("+")):
        assert private not in name and private not in ghost

    await answerer.join(request_room)
    chat = await asker.wait_for_invite(ghost_invite(asker, dst))
    back_ghost, back_name = await inviter_of(asker, chat)
    assert re.fullmatch(rf"@_tb_{dst}_[a-z2-7]{{16}}:{src}\.localhost", back_ghost), back_ghost
    assert back_name == f"Answerer {dst} {src} ({LABELS[dst]})", back_name
    await asker.join(chat)

    await asker.send_text(chat, f"hello from {src}")
    events = await answerer.wait_for(request_room, has_body(f"hello from {src}"),
                                     what=f"the {src} asker's first message")
    assert senders_of(events, f"hello from {src}") == {ghost}
    await answerer.send_text(request_room, f"hello back from {dst}")
    events = await asker.wait_for(chat, has_body(f"hello back from {dst}"),
                                  what=f"the {dst} answer")
    assert senders_of(events, f"hello back from {dst}") == {back_ghost}
    # The chat shows as open to the asker.
    status = await asker.command(asker_room, "status")
    assert f"- with {target(answerer)}: open" in status, status


async def test_dm_accepted_between_every_pair_of_networks(cast: Cast, daemon: Daemon) -> None:
    await daemon.start([])
    async with trio.open_nursery() as nursery:
        for src, dst in PAIRS:
            nursery.start_soon(dm_accepted, cast, src, dst)


async def test_a_declined_dm_reads_as_no_answer_like_a_nobody(
    cast: Cast, daemon: Daemon
) -> None:
    await daemon.start([])
    rita, tom = await register(cast, ("wa", "Rita"), ("ig", "Tom"))
    room = await manage(rita)
    declined = await rita.command(room, f"dm {target(tom)}")
    request_room = await tom.wait_for_invite(ghost_invite(tom, "wa"))
    await tom.leave(request_room)  # declines the message request

    async def decline_taken() -> bool:
        states = query(daemon, "SELECT state FROM dm_requests WHERE room_id = ?", (request_room,))
        ghosts = query(daemon, "SELECT * FROM ghost_rooms WHERE room_id = ?", (request_room,))
        return states == [("declined",)] and not ghosts

    await wait_until(decline_taken, what="the decline handled")
    nobody = f"nobody.{secrets.token_hex(4)}"
    no_one = await rita.command(room, f"dm ig:{nobody}")
    assert without(declined, identity(tom)) == without(no_one, nobody), (declined, no_one)

    status = await rita.command(room, "status")
    assert status.splitlines() == [
        "Your chats across networks:",
        f"- with ig:{identity(tom)}: no answer",
        f"- with ig:{nobody}: no answer",
    ], status
    # Nothing else reached Rita: no notice about the decline, no invite.
    seen = notices(await rita.messages(room))
    assert seen[1:] == [declined, no_one, status], seen
    assert await rita.invites() == {}
    # Asking again gets the same words, and Tom no second request.
    assert await rita.command(room, f"dm {target(tom)}") == declined
    await outbox_drained(daemon)
    assert len(query(daemon, "SELECT 1 FROM dm_requests WHERE to_user = ?", (tom.user_id,))) == 1
    assert await tom.invites() == {}


async def test_an_undiscoverable_person_reads_as_nobody(cast: Cast, daemon: Daemon) -> None:
    await daemon.start([])
    # Hidden never says `privacy discoverable on`; Found does.
    rex, hidden, found = await register(cast, ("ig", "Rex"), ("wa", "Hidden"), ("wa", "Found"))
    room = await manage(rex)
    answer = await found.command(await manage(found), "privacy discoverable on")
    assert answer == "You can now be reached with dm and invite.", answer
    await manage(hidden)  # a management room, and still not discoverable

    nobody = unknown_phone()
    to_hidden = await rex.command(room, f"dm {target(hidden)}")
    to_nobody = await rex.command(room, f"dm wa:{nobody}")
    assert without(to_hidden, identity(hidden)) == without(to_nobody, nobody)
    await rex.command(room, f"dm {target(found)}")
    # Rex's commands run in order: once Found has the invite, the request to Hidden is done.
    request_room = await found.wait_for_invite(ghost_invite(found, "ig"))
    assert await hidden.invites() == {}
    status = await rex.command(room, "status")
    assert f"- with {target(hidden)}: no answer" in status.splitlines(), status
    assert f"- with wa:{nobody}: no answer" in status.splitlines(), status

    # Found accepts; once Rex's first message reaches Found, the chat is open.
    await found.join(request_room)
    chat = await rex.wait_for_invite(ghost_invite(rex, "wa"))
    await rex.join(chat)
    await rex.send_text(chat, "hi found")
    await found.wait_for(request_room, has_body("hi found"))
    status = await rex.command(room, "status")
    assert status.splitlines() == [
        "Your chats across networks:",
        f"- with {target(hidden)}: no answer",
        f"- with wa:{nobody}: no answer",
        f"- with {target(found)}: open",
    ], status
    assert await hidden.invites() == {}


# -- identity links ------------------------------------------------------------------------------

CODE = re.compile(r"identity confirm ([A-Z0-9]{8})")


async def link_code(person: Person, room: str, earlier: int = 0) -> str:
    """The newest link code sent into `room`, once more than `earlier` were sent there."""
    def codes(events: Events) -> list[str]:
        return [m.group(1) for body in notices(events) for m in CODE.finditer(body)]

    events = await person.wait_for(room, lambda evs: len(codes(evs)) > earlier,
                                   what="a link code")
    return codes(events)[-1]


def wrong(code: str) -> str:
    return "ABCDEFGH" if code != "ABCDEFGH" else "HGFEDCBA"


async def link(first: Person, first_room: str, second: Person, second_room: str) -> None:
    """`first` links `second` (their own account elsewhere) with the right code."""
    await first.command(first_room, f"identity link {target(second)}")
    code = await link_code(second, second_room)
    answer = await second.command(second_room, f"identity confirm {code}")
    assert answer.startswith(f"Linked with {target(first)} on {LABELS[network_of(first)]}."), answer


async def test_identity_link_makes_one_ghost_on_the_third_network(
    cast: Cast, daemon: Daemon
) -> None:
    # Ann has accounts on WhatsApp and Instagram.
    ann, ann_ig, fay = await register(cast, ("wa", "Ann"), ("ig", "Ann"), ("fbm", "Fay"))
    rooms = await three_rooms(cast, {"wa": ann, "ig": ann_ig, "fbm": fay})
    await daemon.start([rooms])
    ann_room, ann_ig_room = await manage(ann), await manage(ann_ig)

    answer = await ann.command(ann_room, f"identity link {target(ann_ig)}")
    assert "one-time code was sent there" in answer, answer
    code = await link_code(ann_ig, ann_ig_room)
    assert all(code not in body for body in notices(await ann.messages(ann_room)))
    answer = await ann_ig.command(ann_ig_room, f"identity confirm {wrong(code)}")
    assert answer == "Wrong code; 4 tries left.", answer
    answer = await ann_ig.command(ann_ig_room, f"identity confirm {code.lower()}")
    assert answer == (
        f"Linked with {target(ann)} on WhatsApp. Other networks now see your accounts as one "
        "person."
    ), answer
    await ann.wait_for(ann_room, lambda evs: f"Linked with {target(ann_ig)} on Instagram."
                       in notices(evs), what="the link confirmed on WhatsApp")
    whoami = await ann.command(ann_room, "whoami")
    assert f"Linked accounts: {target(ann_ig)}." in whoami.splitlines(), whoami
    whoami = await ann_ig.command(ann_ig_room, "whoami")
    assert f"Linked accounts: {target(ann)}." in whoami.splitlines(), whoami

    # Both of Ann's accounts speak; Messenger sees one ghost, and neither account sees the
    # other mirrored as a ghost.
    await ann.send_text(rooms["wa"], "ann on whatsapp")
    await fay.wait_for(rooms["fbm"], has_body("ann on whatsapp"))
    await ann_ig.send_text(rooms["ig"], "ann on instagram")
    events = await fay.wait_for(rooms["fbm"], has_body("ann on instagram"))
    (ghost,) = senders_of(events, "ann on whatsapp")
    assert senders_of(events, "ann on instagram") == {ghost}
    assert ghost.startswith("@_tb_wa_"), ghost
    # Both messages were taken in before this one: each room's queue is first in, first out.
    await fay.send_text(rooms["fbm"], "marker from fay")
    for net, person, other in (("wa", ann, "ann on instagram"), ("ig", ann_ig, "ann on whatsapp")):
        events = await person.wait_for(rooms[net], has_body("marker from fay"))
        assert senders_of(events, other) == set(), f"{other!r} mirrored into the {net} room"
        ghosts = {uid for uid in await person.members(rooms[net]) if uid.startswith("@_tb_")}
        assert ghosts == {senders_of(events, "marker from fay").pop()}, ghosts


async def test_identity_link_codes_run_out_and_expire(cast: Cast, daemon: Daemon) -> None:
    await daemon.start([])
    bea, bea_fbm = await register(cast, ("wa", "Bea"), ("fbm", "Bea"))
    bea_room, fbm_room = await manage(bea), await manage(bea_fbm)

    await bea.command(bea_room, f"identity link {target(bea_fbm)}")
    code = await link_code(bea_fbm, fbm_room)
    # The request names who asked, as Messenger shows them (never their number).
    (request,) = [b for b in notices(await bea_fbm.messages(fbm_room)) if code in b]
    assert request.startswith('"Bea (WhatsApp)" on WhatsApp asked to link'), request
    assert bea.user_id[1:].split(":")[0] not in request
    # Asked again while that code lives: no second code, no flood of the room.
    await bea.command(bea_room, f"identity link {target(bea_fbm)}")
    await outbox_drained(daemon)
    sent = [b for b in notices(await bea_fbm.messages(fbm_room)) if CODE.search(b)]
    assert len(sent) == 1, sent
    answers = [await bea_fbm.command(fbm_room, f"identity confirm {wrong(code)}")
               for _ in range(5)]
    assert answers[:4] == [
        "Wrong code; 4 tries left.", "Wrong code; 3 tries left.", "Wrong code; 2 tries left.",
        "Wrong code; 1 try left.",
    ], answers
    assert answers[4].startswith("Wrong code 5 times: the code is void."), answers
    answer = await bea_fbm.command(fbm_room, f"identity confirm {code}")  # too late now
    assert answer == "No identity link is waiting for this account.", answer

    await bea.command(bea_room, f"identity link {target(bea_fbm)}")
    code = await link_code(bea_fbm, fbm_room, earlier=1)
    query(daemon, "UPDATE link_codes SET expires_at = 1 WHERE to_user = ?", (bea_fbm.user_id,))
    answer = await bea_fbm.command(fbm_room, f"identity confirm {code}")
    assert answer.startswith("That code has expired."), answer
    answer = await bea_fbm.command(fbm_room, f"identity confirm {code}")
    assert answer == "No identity link is waiting for this account.", answer
    for person, room in ((bea, bea_room), (bea_fbm, fbm_room)):
        whoami = await person.command(room, "whoami")
        assert "Linked accounts: none." in whoami.splitlines(), whoami


# -- what people show of themselves, and forgetting them -----------------------------------------

async def test_show_identity_puts_the_number_beside_the_name(cast: Cast, daemon: Daemon) -> None:
    wendy, ian, erin = await register(cast, ("wa", "Wendy"), ("ig", "Ian"), ("fbm", "Erin"))
    rooms = await three_rooms(cast, {"wa": wendy, "ig": ian, "fbm": erin})
    await daemon.start([rooms])
    wendy_room, erin_room = await manage(wendy), await manage(erin)
    await wendy.send_text(rooms["wa"], "wendy speaks")
    await erin.send_text(rooms["fbm"], "erin speaks")
    ig_events = await ian.wait_for(rooms["ig"], lambda evs: has_body("wendy speaks")(evs)
                                   and has_body("erin speaks")(evs))
    (wendy_on_ig,) = senders_of(ig_events, "wendy speaks")
    (erin_on_ig,) = senders_of(ig_events, "erin speaks")
    (wendy_on_fbm,) = senders_of(await erin.wait_for(rooms["fbm"], has_body("wendy speaks")),
                                 "wendy speaks")
    phone, email = identity(wendy), identity(erin)

    answer = await wendy.command(wendy_room, "privacy show-identity on")
    assert answer == (
        "Your phone number or email now shows on other networks (2 name(s) updated)."
    ), answer
    await member_name(ian, rooms["ig"], wendy_on_ig, f"Wendy (WhatsApp, {phone})")
    await member_name(erin, rooms["fbm"], wendy_on_fbm, f"Wendy (WhatsApp, {phone})")
    whoami = await wendy.command(wendy_room, "whoami")
    assert f'On Instagram you appear as "Wendy (WhatsApp, {phone})".' in whoami, whoami
    answer = await erin.command(erin_room, "privacy show-identity on")
    assert "now shows" in answer, answer
    await member_name(ian, rooms["ig"], erin_on_ig, f"Erin (Messenger, {email})")

    # With Messenger's homeserver down, Instagram still follows, and she is told of the rest.
    fbm = daemon.net.servers["fbm"]
    fbm.stop()
    try:
        answer = await wendy.command(wendy_room, "privacy show-identity off")
    finally:
        fbm.start()
        fbm.wait_ready()
    assert answer == (
        "Your phone number or email no longer shows on other networks (1 name(s) updated). "
        "On Messenger it could not be changed now: your name there changes with the next "
        "message the bridge carries there for you, or say this again later."), answer
    await member_name(ian, rooms["ig"], wendy_on_ig, "Wendy (WhatsApp)")
    await wendy.send_text(rooms["wa"], "wendy again")
    await member_name(erin, rooms["fbm"], wendy_on_fbm, "Wendy (WhatsApp)")
    shown = " ".join(str(n) for n in (await ian.members(rooms["ig"])).values())
    assert phone.lstrip("+") not in shown and email in shown, shown
    assert "show-identity: off" in await wendy.command(wendy_room, "privacy")


async def test_forget_me_erases_the_person_and_neutralises_their_ghosts(
    cast: Cast, daemon: Daemon
) -> None:
    # Walter has accounts on WhatsApp and (as "W. Q.") on Instagram.
    walter, walter_ig, ivy, fred = await register(
        cast, ("wa", "Walter Quincey"), ("ig", "W. Q."), ("ig", "Ivy"), ("fbm", "Fred")
    )
    rooms = await three_rooms(cast, {"wa": walter, "ig": ivy, "fbm": fred})
    await daemon.start([rooms])
    room, ig_room = await manage(walter), await manage(walter_ig)
    phone = identity(walter)

    await walter.send_text(rooms["wa"], "walter before")
    (ghost_ig,) = senders_of(await ivy.wait_for(rooms["ig"], has_body("walter before")),
                             "walter before")
    (ghost_fbm,) = senders_of(await fred.wait_for(rooms["fbm"], has_body("walter before")),
                              "walter before")
    await member_name(ivy, rooms["ig"], ghost_ig, "Walter Quincey (WhatsApp)")
    # He uses what the bridge keeps about people: settings, a link, a DM request.
    assert "now shows" in await walter.command(room, "privacy show-identity on")
    assert "reached" in await walter.command(room, "privacy discoverable on")
    await member_name(ivy, rooms["ig"], ghost_ig, f"Walter Quincey (WhatsApp, {phone})")
    await link(walter, room, walter_ig, ig_room)
    await walter.command(room, f"dm fbm:nobody.{secrets.token_hex(4)}@example.com")
    await walter.send_text(rooms["wa"], "walter after")
    await ivy.wait_for(rooms["ig"], has_body("walter after"))
    await fred.wait_for(rooms["fbm"], has_body("walter after"))

    answer = await walter.command(room, "forget me confirm")  # not asked first: nothing happens
    assert answer.startswith("Say `forget me` first"), answer
    assert query(daemon, "SELECT * FROM person_settings WHERE user_id = ?", (walter.user_id,))
    answer = await walter.command(room, "forget me")
    assert "forget me confirm" in answer and "Messages already relayed stay" in answer, answer
    answer = await walter.command(room, "forget me confirm")
    assert answer.startswith("Done: the bridge has forgotten you. Messages already relayed stay "
                             "where they are."), answer
    await outbox_drained(daemon)

    ghost_localparts = [g[1:].split(":")[0] for g in (ghost_ig, ghost_fbm)]
    needles = [walter.user_id, phone, phone.lstrip("+"), "Walter Quincey", *ghost_localparts]
    store = Store(daemon.database)
    try:
        left = list(store.rows_mentioning(needles))
    finally:
        store.close()
    assert left == [], left
    for person, net, ghost in ((ivy, "ig", ghost_ig), (fred, "fbm", ghost_fbm)):
        pseudonym = ghost[1:].split(":")[0][-16:]
        # The ghost's own profile is back to the neutral name, and it left the rooms (the store
        # no longer knows them, so it could not leave later); its messages stay.
        profile = await person.call("GET", f"/profile/{quote(ghost)}/displayname")
        assert profile["displayname"] == f"WhatsApp user {pseudonym[:4]}"

        async def gone(person: Person = person, net: str = net, ghost: str = ghost) -> bool:
            return ghost not in await person.members(rooms[net])

        await wait_until(gone, what=f"{ghost} leaving {net}")
        texts = await person.texts(rooms[net])
        assert (ghost, "walter before") in texts and (ghost, "walter after") in texts


async def test_forget_me_with_a_homeserver_down_says_so_and_said_again_finishes(
    cast: Cast, daemon: Daemon
) -> None:
    walter, ivy, fred = await register(cast, ("wa", "Walter"), ("ig", "Ivy"), ("fbm", "Fred"))
    rooms = await three_rooms(cast, {"wa": walter, "ig": ivy, "fbm": fred})
    await daemon.start([rooms])
    room = await manage(walter)
    await walter.send_text(rooms["wa"], "before")
    (ghost_fbm,) = senders_of(await fred.wait_for(rooms["fbm"], has_body("before")), "before")
    await ivy.wait_for(rooms["ig"], has_body("before"))
    localpart = ghost_fbm[1:].split(":")[0]
    fbm = daemon.net.servers["fbm"]
    fbm.stop()
    try:
        await walter.command(room, "forget me")
        answer = await walter.command(room, "forget me confirm")
    finally:
        fbm.start()
        fbm.wait_ready()
    assert answer.startswith(
        "Done, except on Messenger: that homeserver did not answer, so your ghost there keeps "
        "its name, and the bridge still knows it. Say `forget me` again later to finish."
    ), answer
    # The ghost it could not reset is still on record: a `forget me` said again finds it.
    assert query(daemon, "SELECT 1 FROM ghosts WHERE network = 'fbm' AND localpart = ?",
                 (localpart,))
    again = await manage(walter)
    await walter.command(again, "forget me")
    answer = await walter.command(again, "forget me confirm")
    assert answer.startswith("Done: the bridge has forgotten you."), answer
    assert not query(daemon, "SELECT 1 FROM ghosts WHERE network = 'fbm' AND localpart = ?",
                     (localpart,))
    profile = await fred.call("GET", f"/profile/{quote(ghost_fbm)}/displayname")
    assert profile["displayname"] == f"WhatsApp user {localpart[-16:][:4]}"
