"""Nothing lost when pushes are: reconciliation from the rooms' timelines.

Synapse strands and reorders pushes around recoveries (../shared/notes/synapse.md), which cannot
be produced on cue. Here the daemon is restarted with an hs_token for wa that Synapse does not
know: every push from wa is then refused, and only reading the timeline can bring wa's messages.
"""

from __future__ import annotations

import pytest

from bridge.demo import has_body

from .conftest import Cast, Daemon
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
