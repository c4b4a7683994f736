"""systemd's watchdog (bridge/daemon.py, `_watchdog`): petted at half of $WATCHDOG_USEC while the
store answers, and left alone while it does not, so that systemd restarts a bridge whose store
went bad. Virtual time: the pets come every second here, the test takes none."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from bridge.daemon import _watchdog
from bridge.notify import Notifier
from bridge.store import Store

from .rigs import until

WATCHDOG_USEC = 2_000_000  # systemd's WatchdogSec=2: a pet every second
PERIOD = WATCHDOG_USEC / 2_000_000


class Recording(Notifier):
    """A notifier that keeps what it is sent, and when (instead of a datagram to systemd)."""

    def __init__(self) -> None:
        super().__init__("")
        self.sent: list[tuple[float, tuple[str, ...]]] = []

    def send(self, *states: str) -> bool:
        self.sent.append((trio.current_time(), states))
        return True

    def pets(self) -> list[float]:
        return [at for at, states in self.sent if "WATCHDOG=1" in states]


class Unhealthy:
    """A connection whose every query fails, as on a corrupt or vanished database file."""

    def __init__(self) -> None:
        self.asked = 0

    def execute(self, sql: str, *args: Any) -> Any:
        self.asked += 1
        raise sqlite3.DatabaseError("database disk image is malformed")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """A store, with systemd's watchdog variables set as for this process."""
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    store = Store(tmp_path / "t.db", durability="process")
    yield store
    store.close()


async def test_the_watchdog_is_petted_at_half_its_period_while_the_store_answers(
    store: Store, autojump_clock: trio.testing.MockClock
) -> None:
    notifier = Recording()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watchdog, notifier, store)
        await until(lambda: len(notifier.pets()) >= 4, within=10 * PERIOD)
        nursery.cancel_scope.cancel()
    assert all(states == ("WATCHDOG=1",) for _, states in notifier.sent)
    pets = notifier.pets()
    gaps = [later - earlier for earlier, later in pairwise(pets)]
    assert gaps == [pytest.approx(PERIOD)] * len(gaps)


async def test_the_watchdog_is_not_petted_while_the_store_fails(
    store: Store, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Recording()
    real, unhealthy = store.conn, Unhealthy()
    store.conn = unhealthy  # type: ignore[assignment]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watchdog, notifier, store)
            # Several periods' checks, each failing: systemd hears nothing all that time.
            await until(lambda: unhealthy.asked >= 5, within=10 * PERIOD)
            assert notifier.sent == []
            assert "store check failed, not petting the watchdog" in caplog.text
            # The store answers again (a transient error): the pets resume.
            store.conn = real
            await until(notifier.pets, within=2 * PERIOD)
            nursery.cancel_scope.cancel()
    finally:
        store.conn = real


async def test_status_follows_what_is_wrong_and_comes_back_to_bridging(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # `systemctl status` shows STATUS=: it must not say "bridging" through an outage.
    from bridge.daemon import STATUS_EVERY, _status_updates

    class Lines:
        line = "bridging"

        def status_line(self) -> str:
            return self.line

    notifier, lines = Recording(), Lines()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_status_updates, notifier, lines)
        await trio.sleep(STATUS_EVERY * 2.5)
        assert notifier.sent == []  # nothing new to say
        lines.line = "ig not answering for 1 min; 3 waiting"
        await until(lambda: ("STATUS=ig not answering for 1 min; 3 waiting",)
                    in [s for _, s in notifier.sent], STATUS_EVERY * 2)
        lines.line = "bridging"
        await until(lambda: notifier.sent[-1][1] == ("STATUS=bridging",), STATUS_EVERY * 2)
        nursery.cancel_scope.cancel()
