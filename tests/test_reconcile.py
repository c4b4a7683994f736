"""Reconciliation on trio's virtual clock, against tests/fakehs.py's timelines."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bridge.core.ghosts import derive_key
from bridge.core.model import Network
from bridge.inbound import Inbound
from bridge.matrix.client import Homeserver
from bridge.reconcile import (
    FINAL_SWEEP_INTERVAL,
    GAP_SUSPECT_SECONDS,
    SUSPECT_SECONDS,
    Reconciler,
)
from bridge.store import Store

from .fakehs import FakeHomeserver
from .rigs import until
from .test_metrics import samples

WA = Network("wa", "WhatsApp", "wa.test", "phone", "tribridge", "_tb_", False)
IG = Network("ig", "Instagram", "ig.test", "handle", "tribridge", "_tb_", True)
ROOM = "!wa-room"


def text(n: int) -> dict[str, Any]:
    return {"type": "m.room.message", "event_id": f"$e{n}", "room_id": ROOM,
            "sender": "@+15551234567:wa.test", "content": {"msgtype": "m.text", "body": f"m{n}"}}


class Rig:
    def __init__(self, store: Store, fake: FakeHomeserver, reconciler: Reconciler) -> None:
        self.store, self.fake, self.reconciler = store, fake, reconciler

    def say(self, n: int) -> dict[str, Any]:
        """Person on wa sends message n: it is in the room's timeline."""
        event = text(n)
        self.fake.timelines.setdefault(ROOM, []).append(event)
        return event

    def queued(self) -> list[str]:
        return [i.action.content["body"] for i in self.store.pending_actions("ig", "!ig-room")]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = Store(tmp_path / "t.db", durability="process")
    store.sync_config_portals([{"wa": ROOM, "ig": "!ig-room"}])
    fake = FakeHomeserver("wa.test")
    networks = {"wa": WA, "ig": IG}
    async with httpx.AsyncClient(transport=fake, base_url="http://wa") as http:
        hs = {"wa": Homeserver(http, "wa.test"), "ig": Homeserver(http, "ig.test")}
        inbound = Inbound(store, networks, derive_key(b"k" * 32), wake=lambda n, rooms: None)
        reconciler = Reconciler(store, hs, inbound, store.portals)
        async with trio.open_nursery() as nursery:
            await nursery.start(reconciler.run)
            yield Rig(store, fake, reconciler)
            nursery.cancel_scope.cancel()
    store.close()


async def test_a_room_seen_first_is_marked_without_replaying_history(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.say(1)
    rig.say(2)
    assert await rig.reconciler.reconcile_network("wa") == 0
    assert rig.store.room_position("wa", ROOM)[0] == "$e2" and rig.queued() == []


def at(event: dict[str, Any], seconds: float) -> dict[str, Any]:
    """`event`, sent at the wall-clock time `seconds` (its origin_server_ts)."""
    event["origin_server_ts"] = int(seconds * 1000)
    return event


def bot_joins(rig: Rig) -> float:
    """The bot is in the room now (at the start, or invited later): it is watched from now."""
    with rig.store.transaction():
        rig.store.rooms_joined("wa", [(ROOM, time.time())])
    entered = rig.store.room_position("wa", ROOM)[1]
    assert entered is not None and rig.store.room_position("wa", ROOM)[0] is None
    return entered


async def test_what_is_said_after_a_room_entered_its_portal_is_taken_at_its_first_read(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    at(rig.say(1), time.time() - 60)  # history: said before the bot was in the room
    entered = bot_joins(rig)
    at(rig.say(2), entered + 1)  # after, and never pushed (the bridge stopped, say)
    at(rig.say(3), entered + 2)
    assert await rig.reconciler.catch_up("wa") == 2
    assert rig.queued() == ["m2", "m3"] and rig.store.room_position("wa", ROOM)[0] == "$e3"
    assert rig.store.room_position("wa", ROOM)[1] is None  # marked now: read back to the mark
    with rig.store.transaction():
        rig.store.rooms_joined("wa", [(ROOM, time.time())])  # joined again at the next start
    assert rig.store.room_position("wa", ROOM)[0] == "$e3"


async def test_a_management_rooms_first_read_takes_what_was_said_since_the_invitation(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # A direct chat created with its first message: the room, the bot's invitation and the
    # command come at once, before the bot could join; Synapse never pushes the command.
    room, owner, invited = "!wa-dm", "@+15551234567:wa.test", time.time() - 2

    def event(n: int, stamped: float, **fields: Any) -> dict[str, Any]:
        return at({"type": "m.room.message", "event_id": f"$d{n}", "room_id": room,
                   "sender": owner, "content": {"msgtype": "m.text", "body": f"d{n}"}}
                  | fields, stamped)

    def member(n: int, stamped: float, sender: str, membership: str) -> dict[str, Any]:
        return event(n, stamped, type="m.room.member", sender=sender,
                     state_key=WA.bot_user_id, content={"membership": membership})

    rig.fake.timelines[room] = [
        *(event(n, invited - 600) for n in range(1, 150)),  # the room's history, long
        member(150, invited, owner, "invite"),
        event(151, invited + 0.01, content={"msgtype": "m.text", "body": "whoami"}),
        member(152, invited + 0.2, WA.bot_user_id, "join"),
    ]
    with rig.store.transaction():  # as the bot's answer to the invitation does
        rig.store.add_management_room("wa", room, owner, since=invited)
    before = rig.fake.reads
    await rig.reconciler.reconcile_rooms("wa", [room])
    tasks = [i.action for i in rig.store.pending_actions("wa", room)]
    assert [(t.task, t.data.get("text")) for t in tasks] == [("command", "whoami")]  # type: ignore[union-attr]
    assert rig.fake.reads == before + 1  # it stopped at the invitation, not in the history


async def test_a_command_pushed_before_a_new_management_rooms_read_comes_after_the_earlier(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    room, owner, invited = "!wa-dm", "@+15551234567:wa.test", time.time() - 2
    await trio.sleep(SUSPECT_SECONDS * 3)  # virtual time: pushes are trusted

    def said(n: int, body: str, stamped: float) -> dict[str, Any]:
        return at({"type": "m.room.message", "event_id": f"$d{n}", "room_id": room,
                   "sender": owner, "content": {"msgtype": "m.text", "body": body}}, stamped)

    invite = at({"type": "m.room.member", "event_id": "$d0", "room_id": room, "sender": owner,
                 "state_key": WA.bot_user_id, "content": {"membership": "invite"}}, invited)
    rig.fake.timelines[room] = [invite, said(1, "whoami", invited + 0.01)]  # never pushed
    with rig.store.transaction():
        rig.store.add_management_room("wa", room, owner, since=invited)
    # The bot joined and asked for the room to be read; before that read, the owner's next
    # command is pushed (in sequence: nothing makes the network suspect).
    rig.reconciler.read_soon("wa", room)
    second = said(2, "status", invited + 1)
    rig.fake.timelines[room].append(second)
    await rig.reconciler.push("wa", "7", b"x", [second])
    # The read asked for takes in the earlier command too.
    await until(lambda: len(rig.store.pending_actions("wa", room)) >= 2, within=5)
    tasks = [i.action for i in rig.store.pending_actions("wa", room)]
    assert [t.data.get("text") for t in tasks] == ["whoami", "status"]  # type: ignore[union-attr]


@pytest.mark.parametrize("sender, stamped", [
    ("@someone:lagging.test", -30),  # a server whose clock is half a minute behind
    ("@otherbridge_42:wa.test", -3600),  # a puppet of another bridge here, backfilling
])
async def test_an_event_stamped_in_the_past_does_not_end_the_first_read(
    rig: Rig, autojump_clock: trio.testing.MockClock, sender: str, stamped: float
) -> None:
    at(rig.say(1), time.time() - 60)
    entered = bot_joins(rig)
    at(rig.say(2), entered + 1)  # never pushed
    early = at(rig.say(3), entered + stamped)
    early["sender"] = sender
    at(rig.say(4), entered + 3)
    assert await rig.reconciler.catch_up("wa") == 2
    # m3 claims a time before the room entered: it cannot be told from history (and is not
    # taken), but it does not hide m2 behind it.
    assert rig.queued() == ["m2", "m4"]


async def test_the_first_read_ends_at_the_bots_own_join(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    for n in range(1, 200):  # a long history, from before the bot was in the room
        at(rig.say(n), time.time() - 600)
    entered = bot_joins(rig)  # taken just before it asked to join
    rig.fake.timelines[ROOM].append(at(
        {"type": "m.room.member", "event_id": "$join", "room_id": ROOM,
         "sender": WA.bot_user_id, "state_key": WA.bot_user_id,
         "content": {"membership": "join"}}, entered + 0.1))
    at(rig.say(200), entered + 1)  # never pushed
    before = rig.fake.reads
    assert await rig.reconciler.catch_up("wa") == 1
    assert rig.queued() == ["m200"] and rig.fake.reads == before + 1  # not the history's pages


async def test_a_pushed_event_stamped_before_the_time_of_entry_keeps_its_place(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    entered = bot_joins(rig)
    late = at(rig.say(1), entered - 30)  # from a server whose clock lags; pushed late
    late["sender"] = "@someone:lagging.test"
    at(rig.say(2), entered + 1)  # said after it, and stranded
    rig.reconciler.suspect("wa")
    await rig.reconciler.push("wa", "7", b"x", [late])
    assert rig.queued() == ["m1", "m2"]  # in timeline order, not the stranded one first


async def test_a_room_with_no_time_of_entry_starts_at_its_newest_event(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # A room the bot never joined, or bridged before times of entry were kept.
    assert rig.store.room_position("wa", ROOM)[1] is None
    for n in range(1, 30):
        at(rig.say(n), time.time())
    before = rig.fake.reads
    assert await rig.reconciler.reconcile_network("wa") == 0
    assert rig.queued() == [] and rig.store.room_position("wa", ROOM)[0] == "$e29"
    assert rig.fake.reads == before + 1  # one event read, not pages of history


async def test_a_room_bridged_again_does_not_replay_what_was_said_while_it_was_not(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    assert rig.store.room_position("wa", ROOM)[0] == "$e1"
    with rig.store.transaction():
        rig.store.remove_portal_room("wa", ROOM)  # unlinked; the bot left, nothing is pushed
    assert rig.store.room_position("wa", ROOM)[0] is None  # the mark went with the portal
    for n in range(2, 6):
        at(rig.say(n), time.time() - 1)
    rig.store.sync_config_portals([{"wa": ROOM, "ig": "!ig-room"}])  # and bridged again
    entered = bot_joins(rig)
    at(rig.say(6), entered + 1)
    assert await rig.reconciler.catch_up("wa") == 1
    assert rig.queued() == ["m6"]


async def test_a_read_that_misses_its_mark_says_so(
    rig: Rig, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    rig.fake.timelines[ROOM].clear()  # the mark's event is gone (a retention purge, say)
    rig.say(2)
    assert await rig.reconciler.reconcile_network("wa") == 1
    assert "since the last check; took in the newest only" in caplog.text


async def test_events_missed_by_pushes_are_taken_in_order(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    for n in range(2, 30):  # 28 messages never pushed: more than the 10-event first page
        rig.say(n)
    assert await rig.reconciler.reconcile_network("wa") == 28
    assert rig.queued()[:3] == ["m2", "m3", "m4"] and len(rig.queued()) == 28


async def test_a_gap_in_transaction_ids_brings_the_stranded_event_first(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    await trio.sleep(SUSPECT_SECONDS * 3)  # long after start: pushes are trusted again
    before = rig.fake.reads
    await rig.reconciler.push("wa", "41", b"a", [rig.say(2)])
    await rig.reconciler.push("wa", "42", b"b", [rig.say(3)])
    assert rig.fake.reads == before  # trusted pushes in sequence cost no read at all
    rig.say(4)  # transaction 43 is stranded: Synapse never pushes it
    await rig.reconciler.push("wa", "44", b"d", [rig.say(5)])
    assert rig.queued() == ["m2", "m3", "m4", "m5"]  # in order: the gap triggered a read
    assert rig.fake.reads > before


async def test_a_late_transaction_after_others_is_taken_once(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    await trio.sleep(SUSPECT_SECONDS * 3)
    await rig.reconciler.push("wa", "7", b"a", [rig.say(2)])
    late = rig.say(3)
    await rig.reconciler.push("wa", "9", b"c", [rig.say(4)])  # gap: 8 is late
    await rig.reconciler.push("wa", "8", b"b", [late])  # arrives after 9: already taken in
    assert rig.queued() == ["m2", "m3", "m4"]


async def test_the_last_transaction_id_survives_a_restart(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    with rig.store.transaction():
        rig.store.record_transaction("wa", "41", "digest")
    # A new daemon (a new Reconciler on the same store), long after its start.
    restarted = Reconciler(rig.store, rig.reconciler.homeservers, rig.reconciler.inbound,
                           rig.store.portals)
    await trio.sleep(SUSPECT_SECONDS * 3)
    rig.say(2)  # transaction 42, stranded while the daemon was away
    await restarted.push("wa", "43", b"c", [rig.say(3)])
    assert rig.queued() == ["m2", "m3"]


async def test_pushes_read_their_room_first_until_the_start_up_catch_up_is_done(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    slow = "!wa-a-slow"  # caught up before ROOM (rooms are read in order), and slowly
    rig.store.sync_config_portals([{"wa": ROOM, "ig": "!ig-room"}, {"wa": slow, "ig": "!ig-2"}])
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    assert not rig.reconciler.is_suspect("wa")  # no window is open: only the catch-up distrusts
    rig.say(2)  # sent while the bridge was down, never pushed
    rig.fake.read_delay[slow] = SUSPECT_SECONDS * 2
    requests = rig.fake.requests
    caught_up: list[int] = []

    async def catch_up() -> None:
        caught_up.append(await rig.reconciler.catch_up("wa"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(catch_up)
        await until(lambda: rig.fake.requests > requests)  # it is reading the slow room
        reads = rig.fake.room_reads[ROOM]
        # A new message is pushed before the catch-up reached its room: the push reads the
        # room itself, and the missed message comes first.
        await rig.reconciler.push("wa", "77", b"x", [rig.say(3)])
        assert rig.queued() == ["m2", "m3"]
        assert rig.fake.room_reads[ROOM] == reads + 1 and caught_up == []  # still catching up
    assert caught_up == [0]  # the catch-up found nothing left: every event taken once
    assert rig.queued() == ["m2", "m3"]
    assert not rig.reconciler.is_suspect("wa")


async def test_the_bridges_own_events_in_a_timeline_are_not_counted_as_missed(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    for n in range(2, 6):  # what ghosts sent here: pushed back as echoes, never recorded
        echo = text(n) | {"sender": "@_tb_ig_aaaaaaaaaaaaaaaa:wa.test"}
        rig.fake.timelines[ROOM].append(echo)
    rig.say(6)  # and one message a person sent that no push brought
    assert await rig.reconciler.reconcile_network("wa") == 1
    assert rig.queued() == ["m6"]
    assert rig.store.room_position("wa", ROOM)[0] == "$e6"
    assert not rig.store.event_seen("wa", "$e2")  # echoes still cost no write


async def test_a_suspect_networks_pushes_in_sequence_read_their_room_once(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    await trio.sleep(SUSPECT_SECONDS * 3)
    await rig.reconciler.push("wa", "41", b"a", [rig.say(2)])
    rig.say(3)  # transaction 42 is stranded
    before = rig.fake.reads
    await rig.reconciler.push("wa", "43", b"c", [rig.say(4)])
    assert rig.reconciler.is_suspect("wa") and rig.fake.reads == before + 1
    for n, txn in ((5, "44"), (6, "45"), (7, "46")):  # in sequence: nothing can hide behind them
        await rig.reconciler.push("wa", txn, b"x" + txn.encode(), [rig.say(n)])
    assert rig.reconciler.is_suspect("wa") and rig.fake.reads == before + 1
    rig.say(8)  # transaction 47 is stranded too, still inside the window
    await rig.reconciler.push("wa", "48", b"i", [rig.say(9)])
    assert rig.fake.reads == before + 2  # the new gap has the room read again
    assert rig.queued() == [f"m{n}" for n in range(2, 10)]


async def test_a_homeservers_return_has_every_room_read_again(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    rig.reconciler.suspect("wa")
    await rig.reconciler.push("wa", "41", b"a", [rig.say(2)])
    await rig.reconciler.push("wa", "42", b"b", [rig.say(3)])
    before = rig.fake.reads
    rig.reconciler.suspect("wa")  # as the delivery worker does when the homeserver is back
    rig.say(4)  # sent while it was away, and never pushed
    await rig.reconciler.push("wa", "43", b"c", [rig.say(5)])
    assert rig.fake.reads == before + 1
    assert rig.queued() == ["m2", "m3", "m4", "m5"]


async def test_a_read_that_failed_does_not_vouch_for_the_next_push(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    rig.reconciler.suspect("wa")
    rig.say(2)  # never pushed
    rig.fake.down = True  # the read fails: the push is taken in anyway, and answered
    await rig.reconciler.push("wa", "41", b"a", [rig.say(3)])
    rig.fake.down = False
    before = rig.fake.reads
    await rig.reconciler.push("wa", "42", b"b", [rig.say(4)])
    assert rig.fake.reads == before + 1  # read again, and the missed message comes in
    assert rig.queued() == ["m3", "m2", "m4"]


async def test_pushes_without_synapses_numbering_read_their_room_each_time(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    rig.reconciler.suspect("wa")
    before = rig.fake.reads
    for n in range(2, 5):  # no number to show a gap: no push vouches for the next
        await rig.reconciler.push("wa", f"txn-{n}", b"t%d" % n, [rig.say(n)])
    assert rig.fake.reads == before + 3
    assert rig.queued() == ["m2", "m3", "m4"]


async def test_a_read_that_finds_the_homeserver_silent_says_so(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    silent: list[str] = []
    rig.reconciler.unreachable = silent.append
    rig.say(1)
    rig.fake.down = True
    await rig.reconciler.reconcile_network("wa")
    assert silent == ["wa"]  # the delivery worker's probe takes it from there
    rig.fake.down = False
    await rig.reconciler.reconcile_network("wa")
    assert silent == ["wa"]


async def test_a_read_that_fails_is_owed_and_the_next_push_reads_first(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    await trio.sleep(SUSPECT_SECONDS + 1)  # past every window: pushes are trusted again
    for n in (2, 3, 4):
        rig.say(n)  # missed by pushes

    def failing(room_id: str, params: httpx.QueryParams) -> httpx.Response:
        return httpx.Response(502, json={"errcode": "M_UNKNOWN", "error": "proxy"})

    rig.fake._messages = failing  # type: ignore[method-assign]
    await rig.reconciler.reconcile_network("wa", why="sweep")  # a proxy's 502: nothing taken
    del rig.fake._messages
    assert rig.queued() == []
    # The next push into the room reads it first: m2-m4 keep their place before m5.
    await rig.reconciler.push("wa", "t5", b"t5", [rig.say(5)])
    assert rig.queued() == ["m2", "m3", "m4", "m5"]


async def test_malformed_pushes_while_suspect_take_the_good_events(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    rig.reconciler.suspect("wa")
    odd: list[Any] = [{**text(90), "event_id": ["$list"]}, {**text(91), "event_id": {"a": 1}}]
    # Not Synapse's numbering, though str.isdigit says so; and too long for int().
    for n, txn in ((2, "\u00b2"), (3, "9" * 5000)):
        await rig.reconciler.push("wa", txn, txn.encode(), [*odd, rig.say(n)])
    assert rig.queued() == ["m2", "m3"]


async def test_half_a_surrogate_pair_in_a_timeline_is_read_as_a_replacement_character(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    event = rig.say(2)
    event["content"]["body"] = "m\ud800"  # the fake serves it escaped, as JSON allows
    await rig.reconciler.reconcile_network("wa")
    [body] = rig.queued()
    assert body.startswith("m\ufffd") and set(body[1:]) == {"\ufffd"}


async def test_a_catch_up_that_outlasts_the_start_window_is_followed_by_the_final_sweep(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    slow = "!wa-slow"  # read after ROOM (rooms are read in order), and slowly
    late = "!wa-t-late"  # read after the slow room, once the window is over, and slowly
    rig.store.sync_config_portals([{"wa": ROOM, "ig": "!ig-room"}, {"wa": slow, "ig": "!ig-2"},
                                   {"wa": late, "ig": "!ig-3"}])
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    reads = {room: rig.fake.room_reads[room] for room in (ROOM, slow, late)}
    await trio.sleep(SUSPECT_SECONDS * 3)
    rig.fake.read_delay[slow] = SUSPECT_SECONDS * 2
    rig.fake.read_delay[late] = 5.0  # begun after the window's end, done after it too
    # A start: the window of distrust, and the catch-up, which reads ROOM at once and then
    # spends twice the window on the slow room.
    rig.reconciler.suspect("wa")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.reconciler.catch_up, "wa")
        # Virtual time, not a wait for an event: a second in, the catch-up has read ROOM and
        # sits on the slow room.
        await trio.sleep(1)
        rig.say(2)  # pushed in a transaction Synapse strands, and nothing is pushed after it
        await trio.sleep(SUSPECT_SECONDS * 5)  # past the window and the slow read, virtually
    # ROOM was read before the stranding; the window ended while the catch-up went on: the
    # final sweep came after the catch-up and found the message.
    assert rig.queued() == ["m2"]
    # It read again the rooms whose catch-up read began inside the window, and only those:
    # the late room was read after the window, and anything stranded in it was read then.
    assert {room: rig.fake.room_reads[room] - n for room, n in reads.items()} == {
        ROOM: 2, slow: 2, late: 1}


async def after_a_gap(rig: Rig) -> int:
    """Message 1 marked, pushes trusted, then transaction 42 stranded with message 2 and 43
    pushed with message 3: the room was read once. Returns the reads so far."""
    rig.say(1)
    await rig.reconciler.reconcile_network("wa")
    await trio.sleep(SUSPECT_SECONDS * 3)  # virtual time: the start's window is long over
    await rig.reconciler.push("wa", "41", b"a", [rig.say(100)])
    rig.say(2)
    await rig.reconciler.push("wa", "43", b"c", [rig.say(3)])
    assert rig.queued() == ["m100", "m2", "m3"]
    return rig.fake.reads


async def test_a_transaction_id_going_back_has_the_room_read_again(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    reads = await after_a_gap(rig)
    rig.say(4)  # never pushed: Synapse restarted, and numbers from 1 again
    await rig.reconciler.push("wa", "1", b"r", [rig.say(5)])
    assert rig.fake.reads == reads + 1
    assert rig.queued()[3:] == ["m4", "m5"]


async def test_a_transaction_pushed_again_is_no_gap(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    reads = await after_a_gap(rig)
    event = rig.say(4)
    await rig.reconciler.push("wa", "44", b"d", [event])
    await rig.reconciler.push("wa", "44", b"d", [event])  # the same, again (a lost answer)
    assert rig.fake.reads == reads
    assert rig.queued()[3:] == ["m4"]


async def test_a_read_whose_take_failed_does_not_vouch_for_the_retry(
    rig: Rig, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = await after_a_gap(rig)
    rig.say(4)  # transaction 44 stranded
    pushed = rig.say(5)
    take = rig.reconciler.inbound.take_events

    def failing(*args: Any, **kwargs: Any) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(rig.reconciler.inbound, "take_events", failing)
    with pytest.raises(sqlite3.OperationalError):
        await rig.reconciler.push("wa", "45", b"e", [pushed])  # answered 500: pushed again
    monkeypatch.setattr(rig.reconciler.inbound, "take_events", take)
    await rig.reconciler.push("wa", "45", b"e", [pushed])
    assert rig.fake.reads == reads + 2  # read again, so the stranded message comes first
    assert rig.queued()[3:] == ["m4", "m5"]


async def test_a_homeservers_return_during_a_read_leaves_the_room_untrusted(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    reads = await after_a_gap(rig)
    rig.fake.read_delay[ROOM] = 5.0
    rig.say(4)  # transaction 44 stranded
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.reconciler.push, "wa", "45", b"e", [rig.say(5)])
        await trio.sleep(1)  # virtual time: the push's 5-s read is under way
        rig.reconciler.suspect("wa")  # the homeserver came back meanwhile (a worker says so)
    rig.fake.read_delay.clear()
    rig.say(6)  # sent while it was away, never pushed
    await rig.reconciler.push("wa", "46", b"f", [rig.say(7)])
    assert rig.fake.reads == reads + 2
    assert rig.queued()[3:] == ["m4", "m5", "m6", "m7"]


async def test_pushes_during_the_final_sweep_read_rooms_it_has_not_reached(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    slow = "!wa-a-slow"  # swept before ROOM (rooms are swept in order), and slowly
    rig.store.sync_config_portals([{"wa": ROOM, "ig": "!ig-room"}, {"wa": slow, "ig": "!ig-2"}])
    await after_a_gap(rig)
    rig.fake.read_delay[slow] = SUSPECT_SECONDS
    rig.say(4)  # transaction 44 stranded
    # 45, into a room the bridge does not watch, shows the gap inside the window: ROOM read
    # earlier in it vouches for nothing now.
    elsewhere = text(99) | {"room_id": "!elsewhere"}
    await rig.reconciler.push("wa", "45", b"e", [elsewhere])
    await trio.sleep(GAP_SUSPECT_SECONDS + 1)  # virtual time: the sweep reads the slow room
    assert rig.reconciler.is_suspect("wa")
    await rig.reconciler.push("wa", "46", b"f", [rig.say(6)])  # in sequence
    assert rig.queued()[3:] == ["m4", "m6"]  # in order, before the sweep got there


async def test_a_homeservers_return_during_a_sweep_has_the_rooms_it_passed_swept_again(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    slow = "!wa-slow"  # swept after ROOM, and slowly
    rig.store.sync_config_portals([{"wa": ROOM, "ig": "!ig-room"}, {"wa": slow, "ig": "!ig-2"}])
    await after_a_gap(rig)
    rig.fake.read_delay[slow] = 40.0
    await trio.sleep(GAP_SUSPECT_SECONDS + 1)  # virtual time: the sweep is past ROOM
    rig.reconciler.suspect("wa")  # the homeserver is back: Synapse strands pushes now
    rig.say(4)  # stranded, in ROOM, which then goes quiet
    await trio.sleep(200)  # virtual time: the sweep, the return's window, and after
    assert rig.queued()[3:] == ["m4"]


async def swept_after_a_gap(rig: Rig, other: str, other_ig: str) -> None:
    """A second portal, `other` (marked at message 40) with `other_ig`; then a gap's window
    (after_a_gap) and its final sweep are over."""
    rig.store.sync_config_portals([{"wa": ROOM, "ig": "!ig-room"}, {"wa": other, "ig": other_ig}])
    rig.fake.timelines[other] = [text(40) | {"room_id": other}]
    await after_a_gap(rig)
    await trio.sleep(GAP_SUSPECT_SECONDS + 1)  # virtual time: that window and its sweep


async def test_final_sweeps_of_a_network_begin_at_most_once_an_interval(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    quiet = "!wa-quiet"  # a room nobody pushes to
    rig.store.sync_config_portals([{"wa": ROOM, "ig": "!ig-room"}, {"wa": quiet, "ig": "!ig-2"}])
    rig.fake.timelines[quiet] = [text(40) | {"room_id": quiet}]  # its mark, at the first read
    await after_a_gap(rig)  # a window opens
    await trio.sleep(GAP_SUSPECT_SECONDS + 1)  # virtual time: it ended with a final sweep
    swept, quiet_reads = rig.fake.reads, rig.fake.room_reads[quiet]
    # Another gap (as another appservice's transaction on a shared Synapse shows), and with
    # it a message in the quiet room that no push brings.
    rig.fake.timelines[quiet].append(text(50) | {"room_id": quiet})
    await rig.reconciler.push("wa", "45", b"e", [rig.say(4)])
    assert rig.fake.reads == swept + 1  # the pushed room, read first
    await trio.sleep(GAP_SUSPECT_SECONDS + 1)  # the second window is over: no sweep yet
    await rig.reconciler.push("wa", "47", b"g", [rig.say(5)])  # a third window, later still
    await trio.sleep(GAP_SUSPECT_SECONDS + 1)
    assert rig.fake.room_reads[quiet] == quiet_reads
    assert rig.store.pending_actions("ig", "!ig-2") == []
    await trio.sleep(FINAL_SWEEP_INTERVAL)  # the interval since the first sweep has passed
    assert [i.action.content["body"] for i in rig.store.pending_actions("ig", "!ig-2")] == [
        "m50"]
    assert rig.fake.room_reads[quiet] == quiet_reads + 1  # one sweep, not one per window
    await trio.sleep(FINAL_SWEEP_INTERVAL * 2)
    assert rig.fake.room_reads[quiet] == quiet_reads + 1  # and none owed afterwards


async def test_a_homeservers_return_sweeps_at_its_windows_end_whatever_the_interval(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await after_a_gap(rig)
    await trio.sleep(GAP_SUSPECT_SECONDS + 1)  # virtual time: the gap's window and its sweep
    reads = rig.fake.room_reads[ROOM]
    rig.reconciler.suspect("wa")  # the homeserver is back: Synapse strands pushes now
    rig.say(4)  # and this one was, in a room that then goes quiet
    await trio.sleep(SUSPECT_SECONDS + 1)
    assert rig.fake.room_reads[ROOM] == reads + 1  # swept at the window's end
    assert rig.queued()[3:] == ["m4"]


async def test_a_push_while_a_sweep_waits_reads_its_room_first(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    quiet = "!wa-quiet"
    await swept_after_a_gap(rig, quiet, "!ig-2")
    rig.fake.timelines[quiet].append(text(50) | {"room_id": quiet})  # in 44, stranded
    await rig.reconciler.push("wa", "45", b"e", [rig.say(4)])  # the gap: ROOM is read
    await trio.sleep(GAP_SUSPECT_SECONDS + 1)  # that window is over, its sweep not begun
    later = text(51) | {"room_id": quiet}
    rig.fake.timelines[quiet].append(later)
    await rig.reconciler.push("wa", "46", b"f", [later])  # in sequence, into the quiet room
    queued = [i.action.content["body"] for i in rig.store.pending_actions("ig", "!ig-2")]
    assert queued == ["m50", "m51"]


async def test_a_gap_during_a_sweep_has_the_rooms_it_passed_swept_again(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # Two rooms swept after ROOM, slowly: the push below gets the network's lock between
    # them, while the sweep is still under way.
    slow, slower = "!wa-slow", "!wa-t-slow"
    rig.store.sync_config_portals([{"wa": ROOM, "ig": "!ig-room"}, {"wa": slow, "ig": "!ig-2"},
                                   {"wa": slower, "ig": "!ig-3"}])
    await after_a_gap(rig)
    rig.fake.read_delay.update({slow: 40.0, slower: 40.0})
    await trio.sleep(GAP_SUSPECT_SECONDS + 1)  # virtual time: the sweep is past ROOM
    rig.say(4)  # in transaction 44, stranded; ROOM then goes quiet
    elsewhere = text(99) | {"room_id": "!elsewhere"}  # a room the bridge does not watch
    await rig.reconciler.push("wa", "45", b"e", [elsewhere])  # the gap shows during the sweep
    await trio.sleep(FINAL_SWEEP_INTERVAL + GAP_SUSPECT_SECONDS)  # its window's sweep, budgeted
    assert rig.queued()[3:] == ["m4"]


async def test_a_sweep_begun_as_a_window_ends_covers_that_window(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # A gap's window whose sweep waits for the sweeps' budget, and a second gap whose window
    # ends when the budget runs out: the waiting request and the second window's end wake in
    # the same moment, in either order (trio's choice). The sweep must cover the second window
    # whichever begins it; when it covered only the first, this failed in about half the runs.
    x = "!wa-x"
    await swept_after_a_gap(rig, x, "!ig-x")
    budget_ends = rig.reconciler._last_final["wa"] + FINAL_SWEEP_INTERVAL
    await rig.reconciler.push("wa", "50", b"x", [rig.say(50)])  # a gap: its sweep must wait
    # Virtual time: the moment at which the next window would end exactly with the budget.
    opens = budget_ends - GAP_SUSPECT_SECONDS
    while opens + GAP_SUSPECT_SECONDS != budget_ends:  # floating point's rounding
        opens = math.nextafter(opens, budget_ends if opens + GAP_SUSPECT_SECONDS < budget_ends
                               else 0)
    await trio.sleep_until(opens)  # virtual time
    await rig.reconciler.push("wa", "60", b"y", [rig.say(60)])  # a gap ending with the budget
    pushed = text(61) | {"room_id": x}
    rig.fake.timelines[x].append(pushed)
    await rig.reconciler.push("wa", "61", b"z", [pushed])  # in sequence: x is read now
    await trio.sleep_until(budget_ends - 5)  # virtual time (x read by the minute's sweep too)
    rig.fake.timelines[x].append(text(62) | {"room_id": x})  # in 62, stranded, in the window
    await trio.sleep_until(budget_ends + 1)  # virtual time: the window is over
    # x was read inside the second window: the sweep that began as it ended read it again.
    assert [i.action.content["body"] for i in rig.store.pending_actions("ig", "!ig-x")] == [
        "m61", "m62"]


async def test_a_sweep_after_another_skips_the_rooms_it_read_after_the_later_window(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # Three slow rooms after ROOM. A gap shows while the first sweep reads the first of them
    # (the push waits for the network's lock until that read is done); its window ends while
    # the sweep reads the second, before it begins the third.
    slow = ["!wa-s1", "!wa-s2", "!wa-s3"]
    rig.store.sync_config_portals([{"wa": ROOM, "ig": "!ig-room"}] + [
        {"wa": room, "ig": f"!ig-{n}"} for n, room in enumerate(slow)])
    await after_a_gap(rig)
    rig.fake.read_delay.update({room: 40.0 for room in slow})
    await trio.sleep(GAP_SUSPECT_SECONDS + 1)  # virtual time: the sweep is past ROOM
    rig.say(4)  # in transaction 44, stranded; ROOM then goes quiet
    elsewhere = text(99) | {"room_id": "!elsewhere"}  # a room the bridge does not watch
    await rig.reconciler.push("wa", "45", b"e", [elsewhere])  # after s1's read, before s2's
    reads = {room: rig.fake.room_reads.get(room, 0) for room in [ROOM, *slow]}
    await trio.sleep(FINAL_SWEEP_INTERVAL + GAP_SUSPECT_SECONDS * 3)  # virtual: 2nd sweep done
    assert rig.queued()[3:] == ["m4"]
    # The first sweep read s2 inside the gap's window, s3 after it: the second sweep read
    # again ROOM and s2, not s3. (s1's first read was counted before the gap.)
    assert {room: rig.fake.room_reads[room] - n for room, n in reads.items()} == {
        ROOM: 1, "!wa-s1": 1, "!wa-s2": 2, "!wa-s3": 1}


async def test_metrics_count_timeline_reads_by_why(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.say(1)
    await rig.reconciler.catch_up("wa")  # as after a start
    await trio.sleep(SUSPECT_SECONDS * 3)  # virtual time: long after the start
    await after_a_gap_only(rig)  # a push reads its room
    await trio.sleep(GAP_SUSPECT_SECONDS + 1)  # and the window ends with a sweep

    def reads(why: str) -> float:
        name = ("tribridge_timeline_reads_total", (("network", "wa"), ("why", why)))
        return samples(rig.reconciler.metrics).get(name, 0.0)

    assert (reads("catch-up"), reads("push"), reads("sweep")) == (1, 1, 1)


async def after_a_gap_only(rig: Rig) -> None:
    """Transaction 42 stranded: 41 then 43 pushed, the second after a gap."""
    await rig.reconciler.push("wa", "41", b"a", [rig.say(100)])
    rig.say(2)
    await rig.reconciler.push("wa", "43", b"c", [rig.say(3)])
