"""Portals whose encryption check the start's time limit cut off are told once."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from bridge.encryption import RECHECK_SECONDS, check_until_done, refuse_mixed_portals

from .test_encryption_check import rig

__all__ = ["rig"]  # the fixture, used by name


async def test_portals_cut_off_by_the_start_timeout_are_told_once(
    rig: Any, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    store, fakes, homeservers = rig
    store.sync_config_portals([{"wa": f"!wa-{i}", "ig": f"!ig-{i}"} for i in range(5)])
    fakes["ig"].down = False
    fakes["ig"].read_delay = {}

    async def hang(request):  # type: ignore[no-untyped-def]
        await trio.sleep_forever()

    fakes["ig"].handle_async_request = hang  # type: ignore[method-assign]  # ig hangs
    caplog.set_level(logging.DEBUG)
    _, unchecked = await refuse_mixed_portals(homeservers, store, store.portals(), within=20.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(check_until_done, homeservers, store, unchecked, set())
        await trio.sleep(RECHECK_SECONDS * 10)
        nursery.cancel_scope.cancel()
    warned = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.WARNING and "encryption" in r.getMessage()]
    assert len(unchecked) == 5
    (told,) = warned  # once, not every RECHECK_SECONDS
    assert "the encryption of 5 portal(s) was not read within 20 s" in told
