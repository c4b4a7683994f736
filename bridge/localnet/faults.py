"""Talk while the daemon is killed: the fault scenario shared by the tests and bench/faults.py.

Each person sends `per_sender` messages into their portal room, all at once; when the total
sent reaches each of `kills` random points, the daemon is killed with SIGKILL, and started again
once `down_for` more messages were sent meanwhile.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import trio

from bridge.localnet.daemon import Daemon
from bridge.localnet.people import Person


async def talk_through_kills(
    daemon: Daemon,
    people: Mapping[str, Person],
    rooms: Mapping[str, str],
    per_sender: int,
    kills: int,
    down_for: int = 40,
    on_kill: Callable[[int], None] = lambda count: None,
) -> dict[str, list[str]]:
    """Run the scenario; return what each network sent, in send order."""
    total = per_sender * len(people)
    kill_at = sorted(random.sample(range(min(100, total // 10), total - 2 * down_for), kills))
    reached = {k: trio.Event() for k in kill_at}
    back = {k: trio.Event() for k in kill_at}
    sent: dict[str, list[str]] = {n: [] for n in people}
    count = 0

    async def talk(net: str) -> None:
        nonlocal count
        for i in range(per_sender):
            body = f"{net} {i:06d}"
            await people[net].send_text(rooms[net], body)
            sent[net].append(body)
            count += 1
            for k in kill_at:
                if count == k:
                    reached[k].set()
                if count == k + down_for:
                    back[k].set()

    async def killer() -> None:
        for k in kill_at:
            await reached[k].wait()
            await daemon.kill()
            on_kill(count)
            await back[k].wait()
            await daemon.start()

    async with trio.open_nursery() as nursery:
        for net in people:
            nursery.start_soon(talk, net)
        nursery.start_soon(killer)
    return sent
