"""A proxy's 504 on one slow room's /messages: that read's slowness, not the homeserver's
silence (which would have every room swept again and again)."""
from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import trio

from bridge.core.ghosts import derive_key
from bridge.inbound import Inbound
from bridge.matrix.client import Homeserver
from bridge.metrics import Metrics
from bridge.reconcile import Reconciler
from bridge.store import Store

from .fakehs import FakeHomeserver
from .rigs import start_workers
from .test_delivery import NETWORKS

SLOW = "!wa-huge"


async def test_a_gateway_timeout_on_one_rooms_read_is_no_outage(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    store = Store(tmp_path / "t.db", durability="process")
    store.sync_config_portals([{"wa": f"!wa-{i}", "ig": f"!ig-{i}"} for i in range(20)]
                              + [{"wa": SLOW, "ig": "!ig-huge"}])
    fakes = {"wa": FakeHomeserver("wa.test"), "ig": FakeHomeserver("ig.test")}
    real = fakes["wa"]._messages

    def messages(room_id, params):  # type: ignore[no-untyped-def]
        if room_id == SLOW:  # nginx's proxy_read_timeout ran out on a slow /messages
            fakes["wa"].reads += 1
            return httpx.Response(504, text="<html>504 Gateway Time-out</html>",
                                  headers={"content-type": "text/html"})
        return real(room_id, params)

    fakes["wa"]._messages = messages  # type: ignore[method-assign]
    workers: dict = {}
    async with (
        httpx.AsyncClient(transport=fakes["wa"], base_url="http://wa") as wa_http,
        httpx.AsyncClient(transport=fakes["ig"], base_url="http://ig") as ig_http,
        trio.open_nursery() as nursery,
    ):
        hs = {"wa": Homeserver(wa_http, "wa.test"), "ig": Homeserver(ig_http, "ig.test")}
        metrics = Metrics()
        inbound = Inbound(store, NETWORKS, derive_key(b"k" * 32), wake=lambda n, rooms: None)
        reconciler = Reconciler(store, hs, inbound, store.portals, metrics,
                                unreachable=lambda n: workers[n].noticed_unreachable())
        await nursery.start(reconciler.run)
        workers.update(await start_workers(nursery, hs, NETWORKS, store, derive_key(b"k" * 32),
                                           metrics=metrics, on_recovered=reconciler.suspect))
        for i in range(20):  # read once: marked
            await reconciler.reconcile_rooms("wa", [f"!wa-{i}"])
        before = fakes["wa"].reads
        await reconciler.reconcile_rooms("wa", [SLOW])  # a push into it, say
        await trio.sleep(600)
        outages = [r for r in caplog.records if "is not answering" in r.getMessage()]
        reads = fakes["wa"].reads - before
        nursery.cancel_scope.cancel()
    assert outages == []
    assert reads <= 12  # the slow room, once a minute: not every room every 15 s
    store.close()
