"""Pacing (bridge/pacing.py): a push is answered once the sends it started have had their first
answer, so that the homeserver gathers what comes meanwhile into its next transaction; never
longer than MOST, and not at all for a homeserver known to be down.

The daemon's own pieces (store on disk, group commit, inbound, delivery workers, reconciler)
against tests/fakehs.py on trio's virtual clock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bridge.commits import GroupCommit
from bridge.core.actions import BotTask
from bridge.core.ghosts import derive_key
from bridge.delivery import PAGE, DeliveryWorker
from bridge.inbound import Inbound
from bridge.matrix.client import Homeserver
from bridge.metrics import Metrics
from bridge.pacing import ECHO_FRESH_MS, ECHO_MOST, MOST, Pacing
from bridge.reconcile import Reconciler
from bridge.store import Store, StoreError

from .fakehs import FakeHomeserver, error
from .rigs import until
from .test_commits import FailingCommits
from .test_delivery import message
from .test_reconcile import IG, ROOM, WA, text

NETWORKS = {"wa": WA, "ig": IG}
IG_ROOM = "!ig-room"
WA_TWO, IG_TWO = "!wa-two", "!ig-two"  # a second portal


@dataclass
class Rig:
    path: Path
    store: Store
    ig: FakeHomeserver
    reconciler: Reconciler
    workers: dict[str, DeliveryWorker]
    pacing: Pacing | None
    txn: int = 0  # wa's transaction ids
    ig_txn: int = 0  # ig's: each network numbers its own (a gap would make it suspect)

    async def push(self, *numbers: int, rooms: tuple[str, ...] = ()) -> float:
        """wa pushes messages `numbers` in one transaction (into `rooms`, one each, or all into
        the first portal's); the seconds until it is answered."""
        self.txn += 1
        events = [text(n) for n in numbers]
        for event, room in zip(events, rooms, strict=False):
            event["room_id"] = room
        started = trio.current_time()
        await self.reconciler.push("wa", str(self.txn), f"{self.txn}".encode(), events)
        return trio.current_time() - started

    def relayed(self) -> list[str]:
        """What ig has accepted (answered) so far."""
        return self.ig.texts(IG_ROOM)

    def on_disk(self) -> int:
        with closing(sqlite3.connect(str(self.path))) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


async def slow_bot(task: BotTask) -> None:
    """A command whose work takes a while (a `link` making rooms on a busy homeserver)."""
    await trio.sleep(5)


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    paced = getattr(request, "param", True)
    path = tmp_path / "t.db"
    store = Store(path)  # durability as the daemon's default: answered means on disk
    store.sync_config_portals([{"wa": ROOM, "ig": IG_ROOM}, {"wa": WA_TWO, "ig": IG_TWO}])
    fakes = {"wa": FakeHomeserver("wa.test"), "ig": FakeHomeserver("ig.test")}
    workers: dict[str, DeliveryWorker] = {}
    pacing = Pacing(ready=lambda n, room: workers[n].may_hold(room),
                    reachable=lambda n: workers[n].reachable) if paced else None
    async with (
        httpx.AsyncClient(transport=fakes["wa"], base_url="http://wa") as wa_http,
        httpx.AsyncClient(transport=fakes["ig"], base_url="http://ig") as ig_http,
        trio.open_nursery() as nursery,
    ):
        homeservers = {"wa": Homeserver(wa_http, "wa.test", deadline=30),
                       "ig": Homeserver(ig_http, "ig.test", deadline=30)}
        key = derive_key(b"k" * 32)
        inbound = Inbound(store, NETWORKS, key,
                          wake=lambda network, rooms: workers[network].wake(rooms))
        commits = GroupCommit(store)
        await nursery.start(commits.run)
        reconciler = Reconciler(store, homeservers, inbound, store.portals, Metrics(), commits,
                                pacing=pacing)
        await nursery.start(reconciler.run)
        for net_id, net in NETWORKS.items():
            workers[net_id] = DeliveryWorker(
                net, homeservers, NETWORKS, store, key,
                wake=lambda n: workers[n].wake(), jitter=lambda: 0.999, metrics=Metrics(),
                pacing=pacing, bot=slow_bot)
            await nursery.start(workers[net_id].run)
        yield Rig(path, store, fakes["ig"], reconciler, workers, pacing)
        nursery.cancel_scope.cancel()
    store.close()


async def test_a_push_is_answered_once_its_send_is_answered(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.ig.send_delay = 0.3  # ig takes its time, as a busy Synapse does
    took = await rig.push(1)
    assert rig.relayed() == ["m1"]  # ig had taken it when wa heard back
    assert 0.3 <= took < MOST
    assert rig.on_disk() == 1  # and, as ever, the push's writes were on disk by then
    assert rig.pacing is not None and not rig.pacing.waiting  # nothing left behind


@pytest.mark.parametrize("rig", [False], indirect=True)
async def test_without_pacing_the_answer_does_not_wait_for_the_send(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # What the pacing changes: otherwise wa hears back as soon as the push is on disk, and
    # pushes its next message alone while the first is still on its way.
    rig.ig.send_delay = 0.3
    took = await rig.push(1)
    assert took < 0.3 and rig.relayed() == []
    assert rig.on_disk() == 1
    await until(lambda: rig.relayed() == ["m1"], within=5)


async def test_a_push_of_many_waits_for_the_first_send_of_its_room_only(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # A room's sends go in order: the first one's answer means the room is moving, and the
    # rest follow without the homeserver's next transaction waiting for all of them.
    rig.ig.send_delay = 0.3
    took = await rig.push(1, 2, 3)
    assert 0.3 <= took < 0.6 and rig.relayed() == ["m1"]
    await until(lambda: rig.relayed() == ["m1", "m2", "m3"], within=5)


async def test_the_next_push_waits_for_what_was_queued_before_it(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # Under a flood the targets hold about one transaction's worth: a push whose room still
    # has earlier sends to make is answered when those are done and its own first is too.
    rig.ig.send_delay = 0.1
    await rig.push(1, 2, 3)  # answered after m1; m2 and m3 still to go
    took = await rig.push(4)
    assert rig.relayed() == ["m1", "m2", "m3", "m4"]
    assert 0.3 <= took < MOST


@pytest.mark.parametrize("seconds", [5.0, 1e9])
async def test_a_send_that_is_not_answered_holds_the_answer_no_longer_than_most(
    rig: Rig, autojump_clock: trio.testing.MockClock, seconds: float
) -> None:
    rig.ig.send_delay = seconds  # slow, or hung (the client's deadline ends it at 30 s)
    took = await rig.push(1)
    assert took == pytest.approx(MOST, abs=0.05)
    assert rig.relayed() == [] and rig.on_disk() == 1  # answered: on disk, sent later
    assert rig.pacing is not None and not rig.pacing.waiting


async def test_a_refused_send_frees_the_answer_at_once(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # The first try's answer is what counts, success or not: a retry with backoff (seconds,
    # minutes) must not hold wa's next messages.
    rig.ig.fault = lambda n: error(500, "M_UNKNOWN") if n == 1 else None
    took = await rig.push(1)
    assert took < 0.1 and rig.relayed() == []
    await until(lambda: rig.relayed() == ["m1"], within=120)  # retried, and through


async def test_a_homeserver_known_down_holds_no_answer(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.ig.down = True
    await rig.push(1)  # its send fails to connect: ig is probed from now on
    await until(lambda: not rig.workers["ig"].reachable, within=5)
    # m1 waits for ig's return with backoff, and m2 behind it: nothing will be tried soon,
    # so wa's pushes are answered as soon as they are on disk.
    took = await rig.push(2)
    assert took < 0.1
    assert rig.on_disk() == 2
    rig.ig.down = False
    await until(lambda: rig.relayed() == ["m1", "m2"], within=600)


def echo(n: int, age: int | None = 20) -> dict[str, Any]:
    """Message n as ig pushes it back once the bridge's ghost sent it there, `age` ms later."""
    event: dict[str, Any] = {
        "type": "m.room.message", "event_id": f"$echo{n}", "room_id": IG_ROOM,
        "sender": "@_tb_wa_aaaaaaaaaaaaaaaa:ig.test", "content": {"body": f"m{n}"}}
    if age is not None:
        event["unsigned"] = {"age": age}
    return event


async def push_echoes(rig: Rig, *events: dict[str, Any]) -> float:
    """ig pushes `events` in one transaction; the seconds until it is answered."""
    rig.ig_txn += 1
    started = trio.current_time()
    await rig.reconciler.push("ig", str(rig.ig_txn), f"echo {rig.ig_txn}".encode(), list(events))
    return trio.current_time() - started


async def test_echoes_wait_for_the_sends_under_way_into_their_homeserver(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # Answered at once, each echo would be a push of its own; waiting until the bridge's sends
    # into ig are answered lets ig gather the echoes of those sends into its next push.
    rig.ig.send_delay = 0.1
    await rig.push(1, 2, 3)  # answered after m1's send: m2, m3 still under way into ig
    took = await push_echoes(rig, echo(1))
    assert took == pytest.approx(0.2, abs=0.01)  # m2's and m3's answers, and no longer
    assert rig.relayed() == ["m1", "m2", "m3"]
    assert rig.on_disk() == 3  # nothing written for an echo
    assert await push_echoes(rig, echo(2), echo(3)) < 0.01  # ig quiet: at once


async def test_echoes_wait_no_longer_than_echo_most(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.ig.send_delay = 0.1
    sends = int(3 * ECHO_MOST / 0.1)
    await rig.push(*range(1, sends + 1))  # 3 * ECHO_MOST of sends into ig, one at a time
    took = await push_echoes(rig, echo(1))
    assert took == pytest.approx(ECHO_MOST, abs=0.01)
    # The flood goes on; the echo's answer did not wait for it (m1 went before the echo came).
    assert len(rig.relayed()) == pytest.approx(1 + ECHO_MOST / 0.1, abs=1)
    assert len(rig.relayed()) < sends


@pytest.mark.parametrize("ages", [(ECHO_FRESH_MS + 400, ECHO_FRESH_MS + 1), (20, None),
                                  (20, True)])
async def test_old_echoes_are_answered_at_once(
    rig: Rig, autojump_clock: trio.testing.MockClock, ages: tuple[int | None, ...]
) -> None:
    # Old echoes come from a homeserver behind with its pushes (Synapse's recoverer sending,
    # one stored transaction at a time, what it kept while the bridge was down): holding each
    # would leave it further behind with every answer. Echoes without an age say nothing.
    rig.ig.send_delay = 0.1
    await rig.push(1, 2, 3)
    assert await push_echoes(rig, *(echo(n, age) for n, age in enumerate(ages))) < 0.01


async def test_echoes_gathered_over_a_while_are_still_fresh(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # The oldest echo of a transaction gathered while the last answer waited is as old as
    # that wait; the newest shows whether the homeserver keeps up.
    rig.ig.send_delay = 0.1
    await rig.push(1, 2, 3)
    took = await push_echoes(rig, echo(1, ECHO_FRESH_MS + 400), echo(2, 20))
    assert took == pytest.approx(0.2, abs=0.01)


async def test_echoes_from_a_suspect_network_are_answered_at_once(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # After a start, an outage or a gap in transaction ids: pushes may be a recovery's.
    rig.ig.send_delay = 0.1
    await rig.push(1, 2, 3)
    rig.reconciler.suspect("ig")
    assert await push_echoes(rig, echo(1)) < 0.01


async def test_pushes_that_send_nothing_are_not_held(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.ig.send_delay = 0.3
    await rig.push(1, 2)  # the bridge is sending a burst into ig
    took = await rig.push(1)  # the same event again: taken in before, nothing to send
    assert took < 0.01
    # Nor are echoes from a homeserver the bridge is not sending into (wa, here).
    wa_echo = dict(echo(1), room_id=ROOM, sender="@_tb_ig_aaaaaaaaaaaaaaaa:wa.test")
    rig.txn += 1
    started = trio.current_time()
    await rig.reconciler.push("wa", str(rig.txn), b"wa echo", [wa_echo])
    assert trio.current_time() - started < 0.01


async def test_a_homeserver_falling_silent_lets_go_of_the_echoes_that_wait(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # m1's send hangs; m2's finds no homeserver behind ig's proxy: ig is probed, and its sends
    # under way may hang for a minute. The echo waits no more for them, nor does the next.
    rig.ig.fault = lambda n: "hang" if n == 1 else httpx.Response(502) if n == 2 else None
    took: list[float] = []

    async def echoes() -> None:
        took.append(await push_echoes(rig, echo(1)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.push, 1)  # m1's send into ig hangs
        await until(lambda: rig.pacing is not None and rig.pacing.waiting, within=1)
        nursery.start_soon(echoes)
        await trio.sleep(0.05)
        assert took == []  # waiting for the hung send
        await rig.push(2, rooms=(WA_TWO,))  # 502: ig is probed from now on
        await until(lambda: took != [], within=0.01)
    assert not rig.workers["ig"].reachable
    assert await push_echoes(rig, echo(3)) < 0.01


async def test_a_room_waiting_to_retry_holds_no_echoes(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # ig refused m1 with a 500: the room waits seconds to retry, and nothing goes into ig
    # meanwhile, so its echoes are answered at once.
    rig.ig.fault = lambda n: error(500, "M_UNKNOWN") if n == 1 else None
    await rig.push(1)
    await until(lambda: rig.ig.requests > 0, within=1)
    assert await push_echoes(rig, echo(1)) < 0.01
    await until(lambda: rig.relayed() == ["m1"], within=120)
    # Once through, the room holds echoes again, and once quiet nothing is counted as sending.
    rig.ig.send_delay = 0.1
    await rig.push(2, 3)
    assert await push_echoes(rig, echo(2)) == pytest.approx(0.1, abs=0.01)
    assert rig.pacing is not None and rig.pacing._sending["ig"] == 0


async def test_echoes_wait_out_a_flood_handed_to_its_drain_in_several_batches(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # m4-m6, pushed while m1-m3 go out, are handed to the same drain: a second batch, begun
    # as the first ends. The echo waiting meanwhile waits on through it, to its end.
    assert ECHO_MOST > 0.5
    rig.ig.send_delay = 0.1
    await rig.push(1, 2, 3)  # answered at 0.1; the batch goes on until 0.3
    took: list[float] = []

    async def echoes() -> None:
        took.append(await push_echoes(rig, echo(1)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echoes)
        nursery.start_soon(rig.push, 4, 5, 6)  # sent from 0.3 to 0.6
    assert took == [pytest.approx(0.5, abs=0.01)]  # from m1's answer to m6's
    await until(lambda: rig.relayed() == [f"m{n}" for n in range(1, 7)], within=1)


async def test_a_bot_command_holds_no_echoes(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # The bot's 5 s of work on wa is not a send that echoes wait for.
    rig.txn += 1
    command = text(1) | {"content": {"msgtype": "m.text", "body": "!tb ping"}}
    await rig.reconciler.push("wa", str(rig.txn), b"command", [command])
    await until(lambda: rig.pacing is not None and rig.pacing._sending.get("wa") == 0,
                within=1)
    bot_echo = dict(echo(9), room_id=ROOM, sender="@_tb_ig_aaaaaaaaaaaaaaaa:wa.test")
    rig.txn += 1
    started = trio.current_time()
    await rig.reconciler.push("wa", str(rig.txn), b"wa echo", [bot_echo])
    assert trio.current_time() - started < 0.01


async def test_a_room_waiting_to_retry_holds_no_answer(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # ig throttles the first send for a minute: a later push into the room is answered at once
    # (its send waits behind the retry), and so is one that was waiting when the refusal came.
    rig.ig.send_delay = 0.3
    throttled = error(429, "M_LIMIT_EXCEEDED", retry_after_ms=60_000)
    rig.ig.fault = lambda n: throttled if n == 1 else None
    took: dict[int, float] = {}

    async def push(n: int) -> None:
        took[n] = await rig.push(n)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(push, 1)
        await trio.sleep(0.1)  # m2 comes while m1's first try is on its way
        nursery.start_soon(push, 2)
    assert took[1] == pytest.approx(0.3, abs=0.05)  # the refusal is m1's answer
    assert took[2] == pytest.approx(0.2, abs=0.05)  # let go with it, not after MOST
    assert await rig.push(3) < 0.05  # pushed during the retry's wait: not held
    assert rig.relayed() == []
    await until(lambda: rig.relayed() == ["m1", "m2", "m3"], within=120)
    assert 0.29 < await rig.push(4) < MOST  # the room goes again: held again



async def test_a_room_working_through_a_backlog_holds_no_answer(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # After an outage, say: a new message waits its turn behind the backlog whatever wa does,
    # and holding wa's transaction for it would only slow the messages of other rooms.
    rig.ig.send_delay = 0.1
    with rig.store.transaction():
        rig.store.enqueue([message(f"old {n}") for n in range(PAGE + 10)])
    rig.workers["ig"].wake()  # its drain reads the room a page at a time
    await until(lambda: rig.relayed(), within=5)
    assert await rig.push(1) < 0.05
    await until(lambda: rig.relayed()[-1:] == ["m1"], within=60)
    assert 0.09 < await rig.push(2) < MOST  # the backlog done: held again


async def test_a_push_that_overflows_what_a_drain_holds_is_not_held_behind_it(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.ig.send_delay = 0.1
    await rig.push(1)  # the room's drain now knows its queue, and is handed what comes
    assert await rig.push(*range(2, PAGE + 3)) < 0.05  # more than a page: read as a backlog
    await until(lambda: len(rig.relayed()) == PAGE + 2, within=120)


async def test_a_homeserver_falling_silent_lets_go_of_the_pushes_that_wait_for_it(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # One room's send hangs, the other's finds no homeserver behind ig's proxy: ig is being
    # probed from then on, and the push waits no more for the hung one.
    rig.ig.fault = lambda n: "hang" if n == 1 else httpx.Response(502) if n == 2 else None
    took = await rig.push(1, 2, rooms=(ROOM, WA_TWO))
    assert took < 0.1
    assert not rig.workers["ig"].reachable


async def test_a_send_that_fails_unexpectedly_frees_the_answer(
    rig: Rig, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(item: Any) -> None:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(rig.workers["ig"], "_perform", broken)
    assert await rig.push(1) < 0.05  # the failure is its answer (its sender is told)


async def test_a_message_redacted_before_it_went_out_frees_the_push_that_waits_for_it(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.ig.send_delay = 0.3
    took: dict[int, float] = {}

    async def push(n: int) -> None:
        took[n] = await rig.push(n)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(push, 1)
        await trio.sleep(0.1)
        nursery.start_soon(push, 2)  # m2 waits behind m1
        await trio.sleep(0.05)
        rig.txn += 1
        redaction = {"type": "m.room.redaction", "event_id": "$r2", "room_id": ROOM,
                     "sender": "@+15551234567:wa.test", "redacts": "$e2", "content": {}}
        await rig.reconciler.push("wa", str(rig.txn), b"redaction", [redaction])
    assert took[2] == pytest.approx(0.2, abs=0.05)  # when the drain came to m2 and dropped it
    assert rig.relayed() == ["m1"]


async def test_a_push_whose_commit_fails_leaves_nothing_waiting(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.ig.fault = lambda n: "hang" if n == 1 else None  # its send is never answered
    real = rig.store.conn
    rig.store.conn = FailingCommits(real)  # type: ignore[assignment]
    with pytest.raises(StoreError):
        await rig.push(1)  # answered 500: the homeserver pushes it again
    rig.store.conn = real
    assert rig.pacing is not None and not rig.pacing.waiting


async def test_a_bot_command_does_not_hold_the_answer(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.txn += 1
    command = text(1) | {"content": {"msgtype": "m.text", "body": "!tb ping"}}
    started = trio.current_time()
    await rig.reconciler.push("wa", str(rig.txn), b"command", [command])
    assert trio.current_time() - started < 0.05  # the bot's 5 s of work not waited for


async def test_a_stop_answers_the_pushes_that_wait_and_holds_no_more(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # Left unanswered by a stop, a push is pushed again after the next start, and Synapse,
    # marking the bridge down meanwhile, may hold back what comes after it.
    rig.ig.send_delay = 5.0
    took: list[float] = []
    echoes_took: list[float] = []

    async def push() -> None:
        took.append(await rig.push(1))

    async def echoes() -> None:
        echoes_took.append(await push_echoes(rig, echo(1)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(push)
        await until(lambda: rig.pacing is not None and rig.pacing.waiting, within=1)
        nursery.start_soon(echoes)  # ig's echoes wait for the send under way too
        await trio.sleep(0.1)
        assert rig.pacing is not None
        rig.pacing.stop()
    assert took == [pytest.approx(0.1, abs=0.01)] and rig.on_disk() == 1
    assert echoes_took == [pytest.approx(0.1, abs=0.01)]
    assert await rig.push(2) < 0.05  # stopping: not held
    assert await push_echoes(rig, echo(2)) < 0.01


async def test_a_hold_answered_in_part_ends_at_most_and_forgets_the_rest(
    autojump_clock: trio.testing.MockClock
) -> None:
    pacing = Pacing()
    hold = pacing.hold([("ig", IG_ROOM, 1), ("ig", IG_ROOM, 2)])
    assert hold is not None and pacing.waiting
    pacing.tried(1)  # one of two answered
    started = trio.current_time()
    await pacing.wait(hold)
    assert trio.current_time() - started == pytest.approx(MOST)
    assert not pacing.waiting
    pacing.tried(2)  # answered late: nobody waits for it any more, and nothing breaks
