"""The start-up ping (bridge/daemon.py): Synapse pushes its backlog only once a ping of ours gets
through, so a ping that Synapse fails to deliver right after a restart is asked again; a
homeserver that really cannot reach the bridge is still told once, with its advice."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import trio

from bridge.config import load_config
from bridge.daemon import PING_PAUSE, PING_TRIES, Bridge
from bridge.store import Store

from .test_config import good_doc, write
from .test_reload import RecordingHomeserver, Systemd, over_fakes

# What Synapse answered after a kill -9 of the bridge, its own connection to the dead process
# failing (seen in tests/integration/test_faults.py's logs).
STALE = {"errcode": "M_CONNECTION_FAILED",
         "error": "AlreadyCalled: Tried to cancel an already-called event."}


@dataclasses.dataclass
class PingFailing(RecordingHomeserver):
    """Answers the nth ping with ping(n) if that is a response, else as Synapse does."""

    ping: Callable[[int], httpx.Response | None] = lambda n: None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/ping"):
            answer = self.ping(len(self.asked("/ping")) + 1)
            if answer is not None:
                self.calls.append(f"{request.method} {request.url.path}")
                return answer
        return await super().handle_async_request(request)


async def start(tmp_path: Path, ping: Callable[[int], httpx.Response | None],
                ) -> tuple[float, int]:
    """Bridge._setup, as a start runs it, with wa's pings answered by `ping`: the seconds it
    took, and how many pings wa was asked."""
    config = load_config(write(tmp_path, good_doc()))
    fakes = {n: PingFailing(net.network.server_name, ping=ping if n == "wa" else lambda n: None)
             for n, net in config.networks.items()}
    store = Store(tmp_path / "t.db", durability="process")
    try:
        async with AsyncExitStack() as stack:
            homeservers, reconciler = await over_fakes(stack, config, fakes, store)
            async with trio.open_nursery() as nursery:
                await nursery.start(reconciler.run)
                started = trio.current_time()
                await Bridge(config, Systemd())._setup(
                    homeservers, store.sync_config_portals(config.portals), reconciler)
                took = trio.current_time() - started
                nursery.cancel_scope.cancel()
        return took, len(fakes["wa"].asked("/ping"))
    finally:
        store.close()


async def test_a_ping_synapse_failed_to_deliver_is_asked_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    took, pings = await start(tmp_path,
                              lambda n: httpx.Response(502, json=STALE) if n == 1 else None)
    assert pings == 2
    assert took == pytest.approx(PING_PAUSE, abs=0.1)
    assert "WhatsApp (wa.localhost) answered the start-up ping" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "ping" in r.message]


async def test_a_homeserver_that_cannot_reach_the_bridge_is_told_after_a_few_tries(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    took, pings = await start(tmp_path, lambda n: httpx.Response(502, json=STALE))
    assert pings == PING_TRIES
    assert took == pytest.approx(PING_PAUSE * (1 + 2), abs=0.1)
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "start-up ping of WhatsApp" in warned[0]
    assert "bridge.url" in warned[0]  # the advice: check the URL it pushes to


async def test_a_refused_ping_is_not_asked_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # A wrong token or id will not mend itself in a second.
    refused = {"errcode": "M_FORBIDDEN", "error": "Mismatching application service ID"}
    _, pings = await start(tmp_path, lambda n: httpx.Response(403, json=refused))
    assert pings == 1
    assert "start-up ping of WhatsApp" in caplog.text


async def test_a_ping_that_reached_the_bridge_and_was_refused_is_not_asked_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Synapse reached the bridge, which answered with an error (its hs_token differs from the
    # registration's): only the admin mends that.
    bad = {"errcode": "M_BAD_STATUS", "error": "HTTP 403 Forbidden", "status": 403}
    _, pings = await start(tmp_path, lambda n: httpx.Response(502, json=bad))
    assert pings == 1
    assert "start-up ping of WhatsApp" in caplog.text
