"""Nothing lost when pushes are: reconciliation from the rooms' timelines.

Synapse strands and reorders pushes around recoveries (../shared/notes/synapse.md), which cannot
be produced on cue. Here the daemon is restarted with an hs_token for wa that Synapse does not
know: every push from wa is then refused, and only reading the timeline can bring wa's messages.
"""

from __future__ import annotations

import httpx
import pytest

from bridge.demo import has_body
from bridge.localnet.people import Person, wait_until

from .conftest import Cast, Daemon
from .test_bot_portals import linked_portal
from .test_relay import bodies_from, three_way

pytestmark = pytest.mark.synapse

DECOY = "hs_decoy_token_synapse_does_not_know"


def refuse_wa_pushes(daemon: Daemon) -> None:
    text = daemon.config_path.read_text()
    daemon.config_path.write_text(text.replace(daemon.net.hs_tokens["wa"], DECOY))


async def test_messages_never_pushed_are_taken_from_the_timeline_at_start(
    cast: Cast, daemon: Daemon
) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    await people["wa"].send_text(rooms["wa"], "pushed")
    await people["ig"].wait_for(rooms["ig"], has_body("pushed"))
    assert await daemon.stop() == 0
    for text in ("missed one", "missed two", "missed three"):
        await people["wa"].send_text(rooms["wa"], text)
    refuse_wa_pushes(daemon)
    await daemon.start()
    for net_id in ("ig", "fbm"):
        events = await people[net_id].wait_for(rooms[net_id], has_body("missed three"))
        assert bodies_from(events, "@_tb_wa_") == ["pushed", "missed one", "missed two",
                                                   "missed three"]
    assert "3 event(s) taken in from the timeline" in daemon.log()


async def test_a_push_that_overtook_an_earlier_event_brings_it_first(
    cast: Cast, daemon: Daemon
) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    await people["wa"].send_text(rooms["wa"], "before")
    await people["ig"].wait_for(rooms["ig"], has_body("before"))
    assert await daemon.stop() == 0
    refuse_wa_pushes(daemon)
    await daemon.start()  # the start-up reconcile runs now, before the next two messages exist
    await people["wa"].send_text(rooms["wa"], "stranded")
    late_id = await people["wa"].send_text(rooms["wa"], "overtaking")
    (late,) = [e for e in await people["wa"].messages(rooms["wa"]) if e["event_id"] == late_id]
    # Only the later event is pushed, as when Synapse strands the earlier transaction.
    response = await daemon.push("wa", "only-the-late-one", {"events": [late]}, token=DECOY)
    assert response.status_code == 200
    for net_id in ("ig", "fbm"):
        events = await people[net_id].wait_for(rooms[net_id], has_body("overtaking"))
        assert bodies_from(events, "@_tb_wa_") == ["before", "stranded", "overtaking"]


async def test_linking_a_room_does_not_replay_its_history(cast: Cast, daemon: Daemon) -> None:
    alice, bob = await cast.person("wa", "Alice"), await cast.person("ig", "Bob")
    rooms = {"wa": await cast.room("wa", alice), "ig": await cast.room("ig", bob)}
    await alice.send_text(rooms["wa"], "old talk, before the portal")
    await daemon.start([rooms])
    await alice.send_text(rooms["wa"], "first bridged")
    events = await bob.wait_for(rooms["ig"], has_body("first bridged"))
    assert bodies_from(events, "@_tb_wa_") == ["first bridged"]


async def said_while_down_arrives(people: dict[str, Person], rooms: dict[str, str],
                                  daemon: Daemon) -> None:
    """The bridge stops; two messages are said on wa; it starts with wa's pushes refused, so
    only reading wa's room from its mark brings them: both arrive, and nothing older."""
    assert await daemon.stop() == 0
    for text in ("said while down", "said while down, again"):
        await people["wa"].send_text(rooms["wa"], text)
    refuse_wa_pushes(daemon)
    await daemon.start()
    for net_id in ("ig", "fbm"):
        events = await people[net_id].wait_for(rooms[net_id], has_body("said while down, again"))
        assert bodies_from(events, "@_tb_wa_") == ["said while down", "said while down, again"]


async def test_a_config_portal_just_started_keeps_what_is_said_while_the_bridge_is_down(
    cast: Cast, daemon: Daemon
) -> None:
    # Stopped as soon as it is READY: the catch-up may not have read the rooms yet. They are
    # watched from when the bot joined them, before READY, so what follows is no history.
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    await said_while_down_arrives(people, rooms, daemon)


async def start_window_swept(daemon: Daemon) -> None:
    """Until the start's window of distrust is over and its final sweep has read the rooms:
    from then on, pushes in sequence are taken without reading their rooms."""
    base = f"http://127.0.0.1:{daemon.net.bridge_port}"
    swept = 'tribridge_timeline_reads_total{network="wa",why="sweep"}'
    async with httpx.AsyncClient(trust_env=False) as http:

        async def done() -> bool:
            return swept in (await http.get(base + "/metrics")).text

        await wait_until(done, within=60, what="the start window's final sweep")


async def test_a_room_linked_by_command_keeps_what_is_said_while_the_bridge_is_down(
    cast: Cast, daemon: Daemon
) -> None:
    # Another portal, so that the start window's final sweep has a room to read and shows.
    dave, erin = await cast.person("wa", "Dave"), await cast.person("ig", "Erin")
    await daemon.start([{"wa": await cast.room("wa", dave), "ig": await cast.room("ig", erin)}])
    await start_window_swept(daemon)
    # Linked after the window: its pushes are trusted, and the next sweep of active rooms is a
    # minute after the start; the rooms are read by nothing but the link before the stop.
    people, rooms = await linked_portal(cast)
    await said_while_down_arrives(people, rooms, daemon)


async def test_a_config_room_the_bot_joins_late_keeps_what_is_said_while_the_bridge_is_down(
    cast: Cast, daemon: Daemon
) -> None:
    people = {n: await cast.person(n, name) for n, name in
              (("wa", "Alice"), ("ig", "Bob"), ("fbm", "Carol"))}
    rooms = {n: await cast.room(n, people[n]) for n in ("ig", "fbm")}
    rooms["wa"] = await people["wa"].create_room("portal")  # the bot is not invited yet
    await daemon.start([rooms])  # it cannot join the wa room, and says so
    await start_window_swept(daemon)
    # Invited after the start's window: the bot joins, and nothing reads the room before the
    # stop (no window, no sweep of active rooms for a minute after the start).
    bot = "@tribridge:wa.localhost"
    await people["wa"].call("POST", f"/rooms/{rooms['wa']}/invite", {"user_id": bot})

    async def joined() -> bool:
        return bot in await people["wa"].members(rooms["wa"])

    await wait_until(joined, what="the bot joining the wa room")
    await said_while_down_arrives(people, rooms, daemon)
