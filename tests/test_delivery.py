"""The delivery worker under faults: retries, backoff, order, exactly once, notices, stopping.

Runs the real worker, store and client against tests/fakehs.py under trio's virtual clock
(autojump_clock), so minutes of backoff take milliseconds.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bridge.core.actions import SendMessage, txn_id
from bridge.core.ghosts import derive_key
from bridge.core.model import EventRef, Network
from bridge.core.retry import BACKOFF_CAP
from bridge.delivery import LINGER, PAGE, PROBE_MAX, UNWAITED, DeliveryWorker
from bridge.inbound import Inbound
from bridge.matrix.client import Homeserver
from bridge.metrics import Metrics
from bridge.store import OutboxItem, Store

from .fakehs import FakeHomeserver, error
from .rigs import start_workers, until

KEY = derive_key(b"s" * 32)
WA = Network("wa", "WhatsApp", "wa.test", "phone", "tribridge", "_tb_", False)
IG = Network("ig", "Instagram", "ig.test", "handle", "tribridge", "_tb_", True)
NETWORKS = {"wa": WA, "ig": IG}


@dataclass
class Rig:
    store: Store
    fakes: dict[str, FakeHomeserver]
    workers: dict[str, DeliveryWorker]

    def queue(self, *bodies: str, room: str = "!ig-room", src_room: str = "!wa-room") -> None:
        """Queue messages the way a pushed transaction does: the worker is handed the rows
        written (and sends them without reading them back if nothing else is queued there)."""
        with self.store.transaction():
            written = self.store.enqueue([message(b, room, src_room) for b in bodies])
        rooms: dict[str, list[OutboxItem]] = {}
        for item in written:
            rooms.setdefault(item.action.room_id, []).append(item)
        self.workers["ig"].wake(rooms)

    def queue_unhanded(self, *bodies: str, room: str = "!ig-room") -> None:
        """Queue messages the way the bot does: the worker is only told to look."""
        with self.store.transaction():
            self.store.enqueue([message(b, room) for b in bodies])
        self.workers["ig"].wake()

    async def until(self, check: Callable[[], object], within: float = 3600) -> None:
        await until(check, within)

    async def drain_ended(self) -> None:
        """Send one message, and wait until the room's drain has lingered and ended: the next
        push starts a new one, handed the push's rows."""
        await self.sent_all("zero")
        await self.until(lambda: "!ig-room" not in self.workers["ig"]._active)

    async def sent_all(self, *bodies: str) -> None:
        """Queue `bodies` (handed) and wait until nothing is pending: the worker then knows
        that the room's queue holds nothing else, and is handed the next push's rows."""
        self.queue(*bodies)
        await self.until(lambda: self.store.outbox_depth().get("ig", 0) == 0)


def message(body: str, room: str = "!ig-room", src_room: str = "!wa-room") -> SendMessage:
    event = f"$src-{body}"
    return SendMessage(
        network="ig",
        room_id=room,
        ghost="_tb_wa_aaaaaaaaaaaaaaaa",
        source=EventRef("wa", src_room, event, "@+15551234567:wa.test"),
        content={"msgtype": "m.text", "body": body},
        txn_id=txn_id("wa", event, "ig", "message"),
    )


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    fault = getattr(request, "param", None) or (lambda n: None)
    fakes = {"wa": FakeHomeserver("wa.test"), "ig": FakeHomeserver("ig.test", fault=fault)}
    store = Store(tmp_path / "t.db", durability="process")
    store.sync_config_portals([
        {"wa": "!wa-room", "ig": "!ig-room"},
        {"wa": "!wa-slow", "ig": "!slow"},
        {"wa": "!wa-fast", "ig": "!fast"},
    ])
    async with (
        httpx.AsyncClient(transport=fakes["wa"], base_url="http://wa") as wa_http,
        httpx.AsyncClient(transport=fakes["ig"], base_url="http://ig") as ig_http,
        trio.open_nursery() as nursery,
    ):
        homeservers = {
            "wa": Homeserver(wa_http, "wa.test", deadline=30),
            "ig": Homeserver(ig_http, "ig.test", deadline=30),
        }
        workers = await start_workers(nursery, homeservers, NETWORKS, store, KEY,
                                      metrics=Metrics())
        yield Rig(store, fakes, workers)
        nursery.cancel_scope.cancel()
    store.close()


def nth(n: int, response: httpx.Response | str):  # type: ignore[no-untyped-def]
    return lambda k: response if k == n else None


@pytest.mark.parametrize("rig", [nth(2, error(500, "M_UNKNOWN"))], indirect=True)
async def test_a_500_is_retried_and_everything_arrives_once_in_order(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.queue("one", "two", "three", "four")
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 4)
    assert rig.fakes["ig"].texts("!ig-room") == ["one", "two", "three", "four"]
    attempts = rig.fakes["ig"].attempts
    assert len(attempts) == 5  # one retry, nothing more
    assert attempts[2] - attempts[1] >= 0.99  # the retry waited its first backoff (1 s)


# Run by the fake homeserver when the worker's first send arrives, which it then answers slowly:
# the worker looks at the outbox while that room's send is still under way.
WHILE_SENDING: list[Callable[[], None]] = []


def _queue_then_slow(n: int) -> str | None:
    if n == 1 and WHILE_SENDING:
        WHILE_SENDING.pop()()
        return "slow"
    return None


@pytest.mark.parametrize("rig", [_queue_then_slow], indirect=True)
async def test_messages_queued_while_their_room_sends_go_too_in_order(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    WHILE_SENDING.append(lambda: rig.queue("two", "three"))
    rig.queue("one")
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 3)
    assert rig.fakes["ig"].texts("!ig-room") == ["one", "two", "three"]
    assert not WHILE_SENDING


async def test_handed_rows_go_behind_rows_queued_before_them_without_handing(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.sent_all("one")
    # In one step, as a bot command and a push can follow each other: a row the worker is
    # only told about, then rows handed to it. The handed rows are not the room's whole queue.
    rig.queue_unhanded("two")
    rig.queue("three", "four")
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 4)
    assert rig.fakes["ig"].texts("!ig-room") == ["one", "two", "three", "four"]


def _second_slow(n: int) -> str | None:
    """As _queue_then_slow, at the second send: the first empties the room's queue, so the
    drain under way knows its room's whole queue (it was handed it)."""
    return _queue_then_slow(n - 1)


@pytest.mark.parametrize("rig", [_second_slow], indirect=True)
async def test_rows_pushed_while_a_room_sends_what_it_was_handed_go_too_in_order(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.sent_all("zero")
    WHILE_SENDING.append(lambda: (rig.queue("two", "three"), rig.queue("four")))
    rig.queue("one")  # handed: the drain knows the room's queue, and learns of two, three, four
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 5)
    assert rig.fakes["ig"].texts("!ig-room") == ["zero", "one", "two", "three", "four"]
    assert not WHILE_SENDING
    assert rig.store.outbox_depth().get("ig", 0) == 0


@pytest.mark.parametrize("rig", [_queue_then_slow], indirect=True)
async def test_a_row_queued_unhanded_while_a_room_sends_what_it_read_goes_too(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # The drain reads the room's whole queue ("zero"); then a bot row and a pushed one come
    # while "zero" is on the wire.
    WHILE_SENDING.append(lambda: (rig.queue_unhanded("one"), rig.queue("two")))
    rig.queue_unhanded("zero")
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 3)
    assert rig.fakes["ig"].texts("!ig-room") == ["zero", "one", "two"]
    assert not WHILE_SENDING


@pytest.mark.parametrize("rig", [_second_slow], indirect=True)
async def test_a_backlog_handed_while_a_room_sends_is_read_a_page_at_a_time(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.sent_all("zero")
    bodies = [f"m{i}" for i in range(PAGE * 3)]
    held: list[int] = []

    def push_backlog() -> None:  # pushes keep coming while the homeserver is slow
        for start in range(0, len(bodies), 10):
            rig.queue(*bodies[start:start + 10])
            held.append(len(rig.workers["ig"]._known.get("!ig-room", [])))

    WHILE_SENDING.append(push_backlog)
    rig.queue("one")
    await rig.until(lambda: len(rig.fakes["ig"].sent) == len(bodies) + 2)
    assert rig.fakes["ig"].texts("!ig-room") == ["zero", "one", *bodies]
    assert max(held) <= PAGE  # a backlog waits in the outbox, not in memory


@pytest.mark.parametrize("rig", [_second_slow], indirect=True)
async def test_a_row_queued_unhanded_while_a_room_sends_what_it_was_handed_goes_too(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.sent_all("zero")
    # The bot's row is not handed on: the drain no longer knows the room's whole queue, and
    # reads it (rows handed after that are in the read too, in order).
    WHILE_SENDING.append(lambda: (rig.queue_unhanded("two"), rig.queue("three")))
    rig.queue("one")
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 4)
    assert rig.fakes["ig"].texts("!ig-room") == ["zero", "one", "two", "three"]
    assert not WHILE_SENDING


@pytest.mark.parametrize("rig", [_queue_then_slow], indirect=True)
async def test_a_message_redacted_while_its_room_sends_is_not_sent(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # "one" is on the wire (slowly) and "two", handed with it, waits in the drain's memory
    # when its message is redacted.
    def redact_two() -> None:
        with rig.store.transaction():
            assert rig.store.cancel_pending("wa", "$src-two", "redacted before delivery")

    WHILE_SENDING.append(redact_two)
    rig.queue("one", "two", "three")
    await rig.until(lambda: rig.store.outbox_depth().get("ig", 0) == 0)
    assert rig.fakes["ig"].texts("!ig-room") == ["one", "three"]
    assert not WHILE_SENDING


async def test_a_message_and_its_redaction_in_one_push_send_nothing(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    inbound = Inbound(rig.store, NETWORKS, KEY, wake=lambda n, rooms: rig.workers[n].wake(rooms))
    sender = "@+15551234567:wa.test"
    await rig.sent_all("before")
    inbound.take_transaction("wa", "t1", b"{}", [
        {"type": "m.room.message", "event_id": "$oops", "room_id": "!wa-room", "sender": sender,
         "content": {"msgtype": "m.text", "body": "sent to the wrong room"}},
        {"type": "m.room.redaction", "event_id": "$undo", "room_id": "!wa-room",
         "sender": sender, "redacts": "$oops", "content": {}},
    ])
    await rig.until(lambda: rig.store.outbox_depth().get("ig", 0) == 0)
    assert rig.fakes["ig"].texts("!ig-room") == ["before"]
    assert [s.last_error for s in rig.store.delivery_status("wa", "$oops")] == [
        "redacted before delivery"]


async def test_a_message_the_bridge_fails_on_is_skipped_and_its_room_is_told(
    rig: Rig, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bridge.inbound

    real = bridge.inbound.translate

    def buggy(event: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if event.get("event_id") == "$bad":  # a bug of ours, met by this one event
            raise KeyError("something")
        return real(event, *args, **kwargs)

    monkeypatch.setattr(bridge.inbound, "translate", buggy)
    inbound = Inbound(rig.store, NETWORKS, KEY, wake=lambda n, rooms: rig.workers[n].wake(rooms))
    sender = "@+15551234567:wa.test"
    inbound.take_transaction("wa", "t1", b"{}", [
        {"type": "m.room.message", "event_id": f"${name}", "room_id": "!wa-room",
         "sender": sender, "content": {"msgtype": "m.text", "body": name}}
        for name in ("before", "bad", "after")
    ])
    await rig.until(lambda: rig.fakes["ig"].texts("!ig-room") == ["before", "after"]
                    and len(rig.fakes["wa"].sent) == 1)
    (notice,) = rig.fakes["wa"].sent
    assert notice.room_id == "!wa-room" and notice.sender == "@tribridge:wa.test"
    assert notice.content["body"].startswith("Not bridged to the other networks: the bridge failed")
    assert notice.content["m.relates_to"]["m.in_reply_to"]["event_id"] == "$bad"


async def test_a_drain_lingers_then_ends_and_the_room_is_served_after(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    worker = rig.workers["ig"]
    rig.queue("one")
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 1)
    assert "!ig-room" in worker._parked  # waits for the next push instead of ending at once
    rig.queue("two")  # handed to the lingering drain
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 2)
    began = trio.current_time()
    await rig.until(lambda: "!ig-room" not in worker._active)  # idle: it ends
    assert LINGER <= trio.current_time() - began <= 2 * LINGER + 1
    rig.queue("three")
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 3)
    assert rig.fakes["ig"].texts("!ig-room") == ["one", "two", "three"]


async def test_rows_handed_as_a_lingering_drain_is_told_to_end_still_go(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    worker = rig.workers["ig"]
    rig.queue("one")
    await rig.until(lambda: "!ig-room" in worker._parked)
    # In one step: the worker ends the idle drain, and a push hands it a row before it runs.
    worker._unpark(["!ig-room"], stay=False)
    rig.queue("two")
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 2)
    assert rig.fakes["ig"].texts("!ig-room") == ["one", "two"]


@pytest.mark.parametrize("second", ["a push", "the bot"])
async def test_a_second_writer_in_the_step_a_push_starts_a_drain_is_not_missed(
    rig: Rig, autojump_clock: trio.testing.MockClock, second: str
) -> None:
    # Found by review: the second writer came before the drain the first push started had run.
    await rig.drain_ended()
    rig.queue("one")
    (rig.queue if second == "a push" else rig.queue_unhanded)("two")
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 3)
    rig.queue("three")
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 4)
    assert rig.fakes["ig"].texts("!ig-room") == ["zero", "one", "two", "three"]


async def test_a_row_queued_unhanded_reaches_a_lingering_drain(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.queue("one")
    await rig.until(lambda: "!ig-room" in rig.workers["ig"]._parked)
    began = trio.current_time()
    rig.queue_unhanded("two")  # the bot's way: the worker is only told to look everywhere
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 2)
    assert rig.fakes["ig"].texts("!ig-room") == ["one", "two"]
    assert trio.current_time() - began < LINGER  # not when the drain would have ended


async def test_a_backlog_longer_than_a_page_goes_whole_in_order(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    bodies = [f"m{i}" for i in range(PAGE * 2 + 7)]
    rig.queue(*bodies)
    await rig.until(lambda: len(rig.fakes["ig"].sent) == len(bodies))
    assert rig.fakes["ig"].texts("!ig-room") == bodies


@pytest.mark.parametrize(
    "rig", [lambda n: error(429, "M_LIMIT_EXCEEDED", retry_after_ms=7000) if n <= 3 else None],
    indirect=True,
)
async def test_a_429_storm_honours_retry_after(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.queue("a", "b")
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 2)
    gaps = [b - a for a, b in itertools.pairwise(rig.fakes["ig"].attempts)]
    assert all(g >= 7 for g in gaps[:3]), gaps  # retry_after_ms, not our own shorter backoff
    assert rig.fakes["ig"].texts("!ig-room") == ["a", "b"]


def _absurd_retry(n: int) -> httpx.Response | None:
    """A 429 whose retry_after_ms no float can hold, then one with a Retry-After header of 400
    digits, then one of a digit that is not ASCII; then the send goes through."""
    if n == 1:
        return error(429, "M_LIMIT_EXCEEDED", retry_after_ms=10**400)
    if n in (2, 3):
        return httpx.Response(429, headers=[(b"Retry-After", b"9" * 400 if n == 2 else b"\xb2")],
                              json={"errcode": "M_LIMIT_EXCEEDED"})
    return None


@pytest.mark.parametrize("rig", [_absurd_retry], indirect=True)
async def test_an_absurd_retry_after_waits_the_cap_and_the_message_arrives(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.queue("patient")
    await rig.until(lambda: rig.fakes["ig"].texts("!ig-room") == ["patient"], within=10_000)
    gaps = [b - a for a, b in itertools.pairwise(rig.fakes["ig"].attempts)]
    # The huge waits are capped; the unreadable header is ignored for our own backoff (2 s).
    assert gaps == pytest.approx([BACKOFF_CAP, BACKOFF_CAP, 4 * 0.9995], abs=0.05)


@pytest.mark.parametrize(
    "rig", [lambda n: error(429, "M_LIMIT_EXCEEDED", retry_after_ms=-5000) if n <= 2 else None],
    indirect=True,
)
async def test_a_negative_retry_after_is_ignored_not_taken_for_now(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.queue("later")
    await rig.until(lambda: rig.fakes["ig"].texts("!ig-room") == ["later"])
    gaps = [b - a for a, b in itertools.pairwise(rig.fakes["ig"].attempts)]
    assert gaps == pytest.approx([0.9995, 2 * 0.9995], abs=0.05)  # our own backoff


@pytest.mark.parametrize("rig", [lambda n: error(503, "M_UNKNOWN")], indirect=True)
async def test_backoff_doubles_up_to_five_minutes(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.queue("never")
    await rig.until(lambda: len(rig.fakes["ig"].attempts) >= 14, within=10_000)
    times = rig.fakes["ig"].attempts
    gaps = [b - a for a, b in itertools.pairwise(times)]
    expected = [min(2**i * 0.9995, BACKOFF_CAP) for i in range(len(gaps))]
    assert gaps == pytest.approx(expected, abs=0.05)
    assert max(gaps) == pytest.approx(BACKOFF_CAP, abs=0.05)
    status = rig.store.delivery_status("wa", "$src-never")
    assert status[0].state == "pending" and status[0].attempts >= 13


@pytest.mark.parametrize("rig", [nth(1, "hang")], indirect=True)
async def test_a_hung_send_times_out_and_other_rooms_do_not_wait(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.queue("stuck-then-ok", room="!slow", src_room="!wa-slow")
    await rig.until(lambda: len(rig.fakes["ig"].attempts) == 1)
    rig.queue("meanwhile", room="!fast", src_room="!wa-fast")
    await rig.until(lambda: rig.fakes["ig"].texts("!fast") == ["meanwhile"], within=5)
    await rig.until(lambda: rig.fakes["ig"].texts("!slow") == ["stuck-then-ok"], within=60)
    (slow,) = [s for s in rig.fakes["ig"].sent if s.room_id == "!slow"]
    (fast,) = [s for s in rig.fakes["ig"].sent if s.room_id == "!fast"]
    assert slow.at >= 30 > fast.at  # the hung send waited out the 30 s deadline; !fast did not


@pytest.mark.parametrize(
    "rig", [lambda n: error(403, "M_FORBIDDEN") if n in (2, 3) else None], indirect=True
)
async def test_a_refusal_fails_that_message_and_tells_the_sender(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.queue("fine", "refused", "after")
    await rig.until(lambda: rig.fakes["ig"].texts("!ig-room") == ["fine", "after"])
    await rig.until(lambda: len(rig.fakes["wa"].sent) == 1)
    (notice,) = rig.fakes["wa"].sent
    assert notice.room_id == "!wa-room" and notice.sender == "@tribridge:wa.test"
    assert notice.content["body"] == "Not delivered to Instagram: the room refused it."
    assert notice.content["m.relates_to"]["m.in_reply_to"]["event_id"] == "$src-refused"
    relay, told = rig.store.delivery_status("wa", "$src-refused")
    assert (relay.network, relay.kind, relay.state) == ("ig", "message", "failed")
    assert "M_FORBIDDEN" in (relay.last_error or "")
    assert (told.network, told.kind, told.state) == ("wa", "notice", "done")
    # One re-join and retry (the ghost may have been kicked), then no more tries.
    assert len(rig.fakes["ig"].attempts) == 4


@pytest.mark.parametrize(
    "rig", [lambda n: error(401, "M_UNKNOWN_TOKEN") if n <= 4 else None], indirect=True
)
async def test_a_homeserver_that_refuses_our_token_holds_the_messages_until_mended(
    rig: Rig, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    rig.queue("held", "and this")
    await rig.until(lambda: rig.workers["ig"].token_refused)  # /health: unhealthy at once
    await rig.until(lambda: rig.fakes["ig"].texts("!ig-room") == ["held", "and this"])
    assert rig.fakes["wa"].sent == []  # nobody told "not delivered": it was delivered
    assert not rig.workers["ig"].token_refused  # a send got through: healthy again
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    # Four refusals within a minute: said once, not once a try.
    assert len(errors) == 1 and "refuses the bridge's as_token" in errors[0]
    assert "networks.ig's as_token" in errors[0]


async def test_a_homeserver_back_from_an_outage_is_served_within_seconds(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.fakes["ig"].down = True
    rig.queue("during", "outage")
    await trio.sleep(600)  # ten virtual minutes down: the backoff has grown to minutes
    assert rig.fakes["ig"].sent == []
    assert not rig.workers["ig"].reachable
    back = trio.current_time()
    rig.fakes["ig"].down = False
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 2)
    assert rig.fakes["ig"].sent[0].at - back <= PROBE_MAX + 1
    assert rig.fakes["ig"].texts("!ig-room") == ["during", "outage"]
    assert rig.workers["ig"].reachable


@pytest.mark.parametrize("rig", [lambda n: error(503, "M_UNKNOWN")], indirect=True)
async def test_stop_ends_a_worker_waiting_on_backoff(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.queue("x")
    await rig.until(lambda: len(rig.fakes["ig"].attempts) >= 5)
    start = trio.current_time()
    rig.workers["ig"].stop()
    await rig.until(lambda: "!ig-room" not in rig.workers["ig"]._active, within=1)
    assert trio.current_time() - start < 1
    assert rig.store.delivery_status("wa", "$src-x")[0].state == "pending"  # kept for next start


@pytest.mark.parametrize("rig", [nth(1, "slow")], indirect=True)
async def test_stop_lets_a_send_in_flight_finish_and_starts_nothing_new(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.queue("in flight", "not started")
    await rig.until(lambda: len(rig.fakes["ig"].attempts) == 1)  # the slow send has begun
    rig.workers["ig"].stop()
    await rig.until(lambda: "!ig-room" not in rig.workers["ig"]._active, within=10)
    assert rig.fakes["ig"].texts("!ig-room") == ["in flight"]
    assert rig.store.delivery_status("wa", "$src-in flight")[0].state == "done"
    assert rig.store.delivery_status("wa", "$src-not started")[0].state == "pending"


async def test_a_resend_after_a_crash_is_not_a_duplicate(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # A crash between the send and its commit: the action is still pending when the daemon comes
    # back, and goes again with the same transaction id.
    rig.queue("once")
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 1)
    rig.store.conn.execute("UPDATE outbox SET state = 'pending'")
    rig.workers["ig"].wake()
    await rig.until(lambda: len(rig.fakes["ig"].attempts) == 2)
    await rig.until(lambda: rig.store.delivery_status("wa", "$src-once")[0].state == "done")
    assert rig.fakes["ig"].texts("!ig-room") == ["once"]


async def test_a_message_queued_before_its_room_left_the_portal_is_not_sent(rig: Rig) -> None:
    with rig.store.transaction():
        rig.store.enqueue([message("late")])
        rig.store.remove_portal_room("ig", "!ig-room")  # an unlink committed after the queueing
    rig.workers["ig"].wake()
    await rig.until(lambda: rig.store.outbox_depth().get("ig", 0) == 0, within=10)
    assert rig.fakes["ig"].texts("!ig-room") == []
    (status,) = rig.store.delivery_status("wa", "$src-late")
    assert (status.state, status.last_error) == ("done", "not sent: the room left its portal")


async def test_a_backlog_that_needs_no_request_does_not_hold_the_rest_of_the_bridge(
    rig: Rig, nursery: trio.Nursery
) -> None:
    # Queued for a room that then left its portal (an unlink while its homeserver was down):
    # each is marked done without a request, so nothing in them ever waits.
    count = 300
    with rig.store.transaction():
        rig.store.enqueue([message(f"m{i}") for i in range(count)])
        rig.store.remove_portal_room("ig", "!ig-room")
    seen: list[int] = []  # how many were left each time another task got to run

    async def elsewhere() -> None:  # the HTTP server, the group commit, other rooms
        while True:
            seen.append(rig.store.outbox_depth().get("ig", 0))
            await trio.lowlevel.checkpoint()

    nursery.start_soon(elsewhere)
    rig.workers["ig"].wake()
    await rig.until(lambda: rig.store.outbox_depth().get("ig", 0) == 0, within=60)
    # The others ran between the actions, not only before the first and after the last: at
    # most UNWAITED actions between two of their turns (twice that when trio runs the drain
    # first in one batch of runnable tasks and last in the one before).
    gaps = [before - after for before, after in itertools.pairwise(seen)]
    assert max(gaps) <= 2 * UNWAITED, seen
    assert rig.fakes["ig"].texts("!ig-room") == []


class FailingCommit:
    """The store's connection, but its next COMMIT fails as on a full disk."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real, self.armed = real, True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.armed and sql == "COMMIT":
            self.armed = False
            raise sqlite3.OperationalError("database or disk is full")
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_sends_whose_done_marks_a_failed_commit_took_back_go_again_unasked(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.queue("delivered, then its record lost")
    await rig.until(lambda: rig.store.outbox_depth().get("ig", 0) == 0)
    assert rig.store.deferred_epoch is not None  # its "done" waits for a shared commit
    real = rig.store.conn
    rig.store.conn = FailingCommit(real)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        rig.store.commit_deferred()  # what the group commit does when idle (and logs)
    rig.store.conn = real
    assert rig.store.outbox_depth().get("ig", 0) == 1  # pending again
    # No other push comes: the worker looks again by itself, and the send goes once more with
    # its transaction id (the homeserver recognises it: still one message in the room).
    await rig.until(lambda: rig.store.outbox_depth().get("ig", 0) == 0, within=60)
    assert len(rig.fakes["ig"].attempts) == 2
    assert rig.fakes["ig"].texts("!ig-room") == ["delivered, then its record lost"]


async def test_health_and_metrics_follow_an_outage(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    from bridge.http.types import Request
    from bridge.observe import Observer

    observer = Observer(rig.store, rig.workers, rig.workers["ig"].metrics, unhealthy_after=300)
    get = Request("GET", "/health", {}, {}, b"")
    rig.fakes["ig"].down = True
    rig.queue("held")
    await trio.sleep(301)
    response = await observer.health(get)
    assert response.status == 503
    body = json.loads(response.body)
    assert body["networks"]["ig"]["reachable"] is False
    assert body["networks"]["ig"]["outbox"] == 1 and body["networks"]["wa"]["reachable"]
    rig.fakes["ig"].down = False
    await rig.until(lambda: rig.fakes["ig"].texts("!ig-room") == ["held"])
    assert (await observer.health(get)).status == 200
    text = (await observer.render_metrics(Request("GET", "/metrics", {}, {}, b""))).body.decode()
    assert 'tribridge_delivery_failures_total{class="retry",network="ig"}' in text
    assert 'tribridge_events_relayed_total{kind="message",network="ig"} 1.0' in text
    assert 'tribridge_outbox_pending{network="ig"} 0.0' in text


async def test_the_status_line_says_what_is_wrong_and_how_much_waits(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # What `systemctl status` shows (STATUS=), kept up to date by the daemon.
    from bridge.observe import Observer

    observer = Observer(rig.store, rig.workers, rig.workers["ig"].metrics, unhealthy_after=300)
    assert observer.status_line() == "bridging"
    rig.fakes["ig"].down = True
    rig.queue("held", "and this")
    await trio.sleep(12 * 60)
    assert observer.status_line() == "ig not answering for 12 min; 2 waiting"
    rig.fakes["ig"].down = False
    await rig.until(lambda: rig.fakes["ig"].texts("!ig-room") == ["held", "and this"])
    await rig.until(lambda: observer.status_line() == "bridging", within=60)


async def test_a_homeserver_found_silent_elsewhere_counts_for_health_until_it_answers(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # Found silent by a start-up call or a timeline read, with nothing queued to send to it:
    # /health must not say "ok" for as long as nothing is sent there.
    from bridge.http.types import Request
    from bridge.observe import Observer

    observer = Observer(rig.store, rig.workers, rig.workers["ig"].metrics, unhealthy_after=300)
    get = Request("GET", "/health", {}, {}, b"")
    rig.fakes["ig"].down = True
    rig.workers["ig"].noticed_unreachable()
    assert not rig.workers["ig"].reachable
    await trio.sleep(301)
    assert (await observer.health(get)).status == 503
    rig.fakes["ig"].down = False
    await rig.until(lambda: rig.workers["ig"].reachable, within=PROBE_MAX + 1)
    assert (await observer.health(get)).status == 200


async def test_a_store_that_cannot_write_shows_in_health_until_a_commit_gets_through(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # A full disk: every push is answered 500; /health must say why, not "ok".
    from bridge.http.types import Request
    from bridge.observe import Observer

    observer = Observer(rig.store, rig.workers, rig.workers["ig"].metrics, unhealthy_after=300)
    get = Request("GET", "/health", {}, {}, b"")
    real = rig.store.conn

    class FullDisk:
        def execute(self, sql: str, *args: object) -> object:
            if sql == "COMMIT":
                raise sqlite3.OperationalError("database or disk is full")
            return real.execute(sql, *args)

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    rig.store.conn = FullDisk()  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        rig.queue("not stored")
    answer = await observer.health(get)
    assert answer.status == 503
    assert json.loads(answer.body)["store"] == {
        "writing": False, "error": "database or disk is full"}
    rig.store.conn = real
    rig.queue("stored")
    await rig.until(lambda: rig.fakes["ig"].texts("!ig-room") == ["stored"])
    answer = await observer.health(get)
    assert answer.status == 200 and json.loads(answer.body)["store"] == {"writing": True}


def _proxy_bad_gateway_for(seconds: float) -> Callable[[int], httpx.Response | None]:
    """Sends answered by a proxy's HTML 502 for the first `seconds` (virtual), while the
    homeserver's /versions, which the probe asks, answers all along."""

    def fault(n: int) -> httpx.Response | None:
        if trio.current_time() < seconds:
            return httpx.Response(502, text="<html><h1>502 Bad Gateway</h1></html>",
                                  headers={"content-type": "text/html"})
        return None

    return fault


@pytest.mark.parametrize("rig", [_proxy_bad_gateway_for(400.0)], indirect=True)
async def test_a_proxy_answering_for_a_dead_homeserver_is_an_outage_told_once(
    rig: Rig, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    from bridge.http.types import Request
    from bridge.observe import Observer

    observer = Observer(rig.store, rig.workers, rig.workers["ig"].metrics, unhealthy_after=300)
    get = Request("GET", "/health", {}, {}, b"")
    rig.queue("held")
    await trio.sleep(350)
    # Silence, not a refusal: unhealthy past unhealthy_after, although /versions answers
    # (the probe hears it and the sends still fail: the same outage, not a new one each time).
    answer = await observer.health(get)
    assert answer.status == 503, answer.body
    assert json.loads(answer.body)["networks"]["ig"]["unreachable_seconds"] > 300
    await rig.until(lambda: rig.fakes["ig"].texts("!ig-room") == ["held"])
    assert rig.fakes["wa"].sent == []  # delivered, no "not delivered" notice
    warned = [r for r in caplog.records if "is not answering" in r.getMessage()]
    assert len(warned) == 1
    await rig.until(lambda: rig.workers["ig"].unreachable_since is None, within=120)
    assert (await observer.health(get)).status == 200
