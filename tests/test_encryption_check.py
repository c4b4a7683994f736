"""Invariant 6 for config portals whose rooms could not all be read at start (a homeserver
down): bridged meanwhile, checked again until they are, and refused if they mix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from bridge.core.translate import E2EE_ALGORITHM
from bridge.encryption import RECHECK_SECONDS, check_until_done, refuse_mixed_portals
from bridge.matrix.client import Homeserver
from bridge.store import Store

from .fakehs import FakeHomeserver
from .rigs import until

ROOMS = {"wa": "!wa-room", "ig": "!ig-room"}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Store, dict[str, FakeHomeserver],
                                                    dict[str, Homeserver]]]:
    fakes = {"wa": FakeHomeserver("wa.test"), "ig": FakeHomeserver("ig.test", down=True)}
    fakes["wa"].state[(ROOMS["wa"], "m.room.encryption")] = {"algorithm": E2EE_ALGORITHM}
    store = Store(tmp_path / "t.db", durability="process")
    store.sync_config_portals([ROOMS])
    async with (httpx.AsyncClient(transport=fakes["wa"], base_url="http://wa") as wa,
                httpx.AsyncClient(transport=fakes["ig"], base_url="http://ig") as ig):
        yield store, fakes, {"wa": Homeserver(wa, "wa.test"), "ig": Homeserver(ig, "ig.test")}
    store.close()


async def test_a_mixed_portal_unread_at_start_is_refused_once_its_homeserver_answers(
    rig: tuple[Store, dict[str, FakeHomeserver], dict[str, Homeserver]],
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, fakes, homeservers = rig
    refused, unchecked = await refuse_mixed_portals(homeservers, store, store.portals())
    assert refused == [] and len(unchecked) == 1
    assert len(store.portals()) == 1  # bridged meanwhile: its pushes are not lost
    assert fakes["ig"].requests == 1  # the read at start
    async with trio.open_nursery() as nursery:
        nursery.start_soon(check_until_done, homeservers, store, unchecked, set())
        # Virtual time: three checks (half a period clear of the fourth), ig still down.
        await trio.sleep(RECHECK_SECONDS * 3.5)
        assert fakes["ig"].requests == 1 + 3  # asked again at each check, and only then
        assert len(store.portals()) == 1
        fakes["ig"].down = False  # ig's room is not encrypted, wa's is: they must not be linked
        await until(lambda: store.portals() == [], within=RECHECK_SECONDS + 1)
        await until(lambda: not nursery.child_tasks, within=1)  # and the checks end


async def test_a_portal_that_agrees_once_read_stays_and_the_checks_end(
    rig: tuple[Store, dict[str, FakeHomeserver], dict[str, Homeserver]],
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, fakes, homeservers = rig
    fakes["ig"].state[(ROOMS["ig"], "m.room.encryption")] = {"algorithm": E2EE_ALGORITHM}
    _, unchecked = await refuse_mixed_portals(homeservers, store, store.portals())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(check_until_done, homeservers, store, unchecked, set())
        fakes["ig"].down = False
        await until(lambda: not nursery.child_tasks, within=RECHECK_SECONDS + 1)
    assert len(store.portals()) == 1


async def test_a_second_check_of_a_portal_already_waiting_starts_nothing(
    rig: tuple[Store, dict[str, FakeHomeserver], dict[str, Homeserver]],
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Reloads during an outage each find the portal unchecked: one check waits, not many.
    store, fakes, homeservers = rig
    _, unchecked = await refuse_mixed_portals(homeservers, store, store.portals())
    checking: set[str] = set()
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(check_until_done, homeservers, store, unchecked, checking)
        await until(lambda: len(nursery.child_tasks) == 1, within=1)
        assert checking == {unchecked[0].portal_id}
        fakes["ig"].down = False
        await until(lambda: not nursery.child_tasks, within=RECHECK_SECONDS + 1)
    assert checking == set() and store.portals() == []


async def test_a_room_the_bot_cannot_read_is_not_asked_about_again(
    rig: tuple[Store, dict[str, FakeHomeserver], dict[str, Homeserver]],
) -> None:
    # A refusal (401: a wrong as_token in the config) is not an outage: no check waits for it,
    # forever, with a warning every 30 s.
    store, _, homeservers = rig
    async with httpx.AsyncClient(transport=_Refusing(), base_url="http://ig") as ig:
        refusing = {"wa": homeservers["wa"], "ig": Homeserver(ig, "ig.test")}
        refused, unchecked = await refuse_mixed_portals(refusing, store, store.portals())
    assert refused == [] and unchecked == [] and len(store.portals()) == 1


class _Refusing(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"errcode": "M_UNKNOWN_TOKEN", "error": "who are you"})


class _Hanging(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_a_homeserver_that_never_answers_holds_the_check_no_longer_than_its_bound(
    rig: tuple[Store, dict[str, FakeHomeserver], dict[str, Homeserver]],
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The start waits for this check: one silent homeserver must not hold READY for ever.
    store, _, homeservers = rig
    async with httpx.AsyncClient(transport=_Hanging(), base_url="http://ig") as ig:
        silent = {"wa": homeservers["wa"], "ig": Homeserver(ig, "ig.test", deadline=3600)}
        began = trio.current_time()
        refused, unchecked = await refuse_mixed_portals(silent, store, store.portals(),
                                                        within=20)
    assert trio.current_time() - began == pytest.approx(20)
    assert refused == [] and [p.portal_id for p in unchecked] == [
        p.portal_id for p in store.portals()]
