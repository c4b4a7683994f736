"""Never lose, never duplicate: the daemon and the homeservers fail; every message arrives once.

Against three real Synapse homeservers. These are the slow tests of the suite (a few minutes).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from bridge.demo import has_body
from bridge.localnet.faults import talk_through_kills
from bridge.localnet.people import Person

from .conftest import Cast, Daemon
from .test_relay import bodies_from, three_way

# The kill -9 test (minutes of traffic) runs as one group on one xdist worker while the others
# take everything else. The two 30-second catch-up promises are timings: they run `alone`, after
# the parallel part (see the Makefile), so no other test competes with them for the CPU.
pytestmark = [pytest.mark.synapse, pytest.mark.xdist_group("faults")]

NETS = ("wa", "ig", "fbm")


async def check_everything_arrived_once_in_order(
    people: dict[str, Person], rooms: dict[str, str], sent: dict[str, list[str]],
    within: float = 180, daemon: Daemon | None = None,
) -> None:
    """Each network's room holds every other network's messages, once each, in send order.
    With `daemon`, a failure shows the end of its log (what it was doing meanwhile)."""
    try:
        with trio.fail_after(within):
            # Cheap waits first (a recent page), so the check does not load the homeservers
            # while they catch up; then one full read of each timeline.
            for reader in NETS:
                for src in NETS:
                    if src != reader and sent[src]:
                        await people[reader].wait_for(rooms[reader], has_body(sent[src][-1]),
                                                      within=within)
    except trio.TooSlowError:
        # Lost, or only late? Say which messages are missing where.
        report = []
        for reader in NETS:
            view = await people[reader].timeline(rooms[reader])
            for src in NETS:
                if src != reader:
                    got = bodies_from(view, f"@_tb_{src}_")
                    missing = [b for b in sent[src] if b not in got]
                    report.append(f"{src} -> {reader}: {len(got)} of {len(sent[src])} arrived;"
                                  f" missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if daemon is not None:
            report.append("the daemon's log, last lines:\n" + daemon.log()[-6000:])
        raise AssertionError(f"not everything arrived within {within:g} s:\n"
                             + "\n".join(report)) from None
    for reader in NETS:
        view = await people[reader].timeline(rooms[reader])
        for src in NETS:
            if src != reader:
                assert bodies_from(view, f"@_tb_{src}_") == sent[src], (reader, src)


async def test_kill_9_five_times_during_2000_messages(cast: Cast, daemon: Daemon) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    # 2,001 messages from the three networks together; five kills -9 at random points.
    sent = await talk_through_kills(daemon, people, rooms, per_sender=667, kills=5)
    # This test promises no loss, not speed: a room's sends go one at a time (its order), and
    # with the rest of the suite beside it a Synapse took them at 3 a second, so the backlog
    # left by the last kill (once 180 still queued after 180 s, all moving) may take minutes.
    await check_everything_arrived_once_in_order(people, rooms, sent, within=480, daemon=daemon)


@pytest.mark.alone
async def test_daemon_down_for_60_s_gets_the_backlog_within_30_s(
    cast: Cast, daemon: Daemon
) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    assert await daemon.stop() == 0
    sent: dict[str, list[str]] = {n: [] for n in NETS}
    started = trio.current_time()
    i = 0
    while trio.current_time() - started < 60:
        for net in NETS:
            body = f"{net} {i:04d}"
            await people[net].send_text(rooms[net], body)
            sent[net].append(body)
        i += 1
        await trio.sleep(2)  # people talking while the bridge is down, not a wait for events
    await daemon.start()
    await check_everything_arrived_once_in_order(people, rooms, sent, within=30, daemon=daemon)


@pytest.mark.alone
async def test_a_homeserver_down_for_60_s_gets_everything_after_and_others_never_stall(
    cast: Cast, daemon: Daemon
) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    fbm = daemon.net.servers["fbm"]
    sent: dict[str, list[str]] = {n: [] for n in NETS}
    fbm.stop()
    try:
        started = trio.current_time()
        i = 0
        while trio.current_time() - started < 60:
            for net in ("wa", "ig"):
                body = f"{net} {i:04d}"
                await people[net].send_text(rooms[net], body)
                sent[net].append(body)
                # The networks that are up keep talking to each other without delay.
                other = "ig" if net == "wa" else "wa"
                await people[other].wait_for(rooms[other], has_body(body), within=10,
                                             limit=10)
            i += 1
    finally:
        fbm.start()
        fbm.wait_ready()
    returned = trio.current_time()
    with trio.fail_after(30):
        for src in ("wa", "ig"):
            last = sent[src][-1]
            # A small page: the two streams arrive interleaved, so both last messages are among
            # the newest, and the watcher costs the homeserver little while it catches up.
            await people["fbm"].wait_for(rooms["fbm"], has_body(last), within=30, limit=10)
    assert trio.current_time() - returned < 30
    view = await people["fbm"].timeline(rooms["fbm"])
    for src in ("wa", "ig"):
        assert bodies_from(view, f"@_tb_{src}_") == sent[src]



async def test_a_homeserver_down_at_start_shows_in_health_until_it_answers(
    daemon: Daemon
) -> None:
    # Nothing is sent to it: only the start-up calls find it silent, and /health must say so.
    import httpx

    fbm = daemon.net.servers["fbm"]
    daemon.bridge_extra = "unhealthy_after = 1"
    base = f"http://127.0.0.1:{daemon.net.bridge_port}"

    async def health_until(status: int, within: float) -> dict[str, Any]:
        async with httpx.AsyncClient(trust_env=False) as http:
            with trio.fail_after(within):
                while (answer := await http.get(base + "/health")).status_code != status:  # noqa: ASYNC110
                    await trio.sleep(0.2)  # polling /health, under the deadline above
        return dict(answer.json())

    fbm.stop()
    try:
        await daemon.start([])
        down = await health_until(503, within=15)
        assert down["networks"]["fbm"]["reachable"] is False
        assert down["networks"]["wa"]["reachable"] and down["networks"]["ig"]["reachable"]
    finally:
        fbm.start()
        fbm.wait_ready()
    up = await health_until(200, within=30)
    assert up["networks"]["fbm"]["reachable"] is True


async def test_the_same_transaction_pushed_100_times_sends_nothing_extra(
    cast: Cast, daemon: Daemon
) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    event_id = await people["wa"].send_text(rooms["wa"], "pushed a hundred times")
    (event,) = [e for e in await people["wa"].messages(rooms["wa"]) if e["event_id"] == event_id]
    for _ in range(100):
        assert (await daemon.push("wa", "same-txn", {"events": [event]})).status_code == 200
    await people["wa"].send_text(rooms["wa"], "marker")
    for net in ("ig", "fbm"):
        view: list[dict[str, Any]] = await people[net].wait_for(rooms[net], has_body("marker"))
        assert bodies_from(view, "@_tb_wa_") == ["pushed a hundred times", "marker"]


