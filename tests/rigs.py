"""Pieces the unit tests' rigs share: polling with a deadline, and delivery workers started."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import trio

from bridge.core.model import Network
from bridge.delivery import DeliveryWorker
from bridge.matrix.client import Homeserver
from bridge.store import Store


async def until(check: Callable[[], object], within: float = 3600) -> None:
    """Poll until check() is true; fail after `within` seconds (virtual ones under
    autojump_clock)."""
    with trio.fail_after(within):
        while not check():  # noqa: ASYNC110 (the state is in a store, a fake or on disk)
            await trio.sleep(min(1.0, within / 500))


async def start_workers(
    nursery: trio.Nursery,
    homeservers: Mapping[str, Homeserver],
    networks: Mapping[str, Network],
    store: Store,
    key: bytes,
    **options: Any,
) -> dict[str, DeliveryWorker]:
    """A delivery worker per network, started in `nursery`, waking each other as the daemon's
    do; jitter at its top so that backoff times are the largest the policy allows."""
    workers: dict[str, DeliveryWorker] = {}

    def wake(network_id: str) -> None:
        workers[network_id].wake()

    for net_id, net in networks.items():
        workers[net_id] = DeliveryWorker(net, homeservers, networks, store, key, wake=wake,
                                         jitter=lambda: 0.999, **options)
        await nursery.start(workers[net_id].run)
    return workers
