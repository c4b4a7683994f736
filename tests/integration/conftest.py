"""Three real Synapse homeservers for the whole session, and the daemon started as a user would.

The homeservers come from the same launcher `tribridge demo` uses (bridge/localnet). Each test
gets its own people, rooms, config and database; the daemon runs as `python -m bridge run -c`,
and its readiness is read from a fake $NOTIFY_SOCKET, the way systemd would.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bridge.localnet.cluster import LocalNet
from bridge.localnet.daemon import ROOT, Daemon

__all__ = ["ROOT", "Cast", "Daemon"]
from bridge.localnet.people import Person

# The daemon of each test, by test id, until the test's report is made (pytest-trio runs the
# fixtures' teardown within the call, and hands the hook its own fixture objects).
_DAEMONS: dict[str, Daemon] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test shows the end of its daemon's log: what the bridge was doing meanwhile is
    what explains a failure seen once under CI's load, where nothing else of it is kept."""
    outcome = yield
    report = outcome.get_result()
    daemon = _DAEMONS.pop(item.nodeid, None) if report.when == "call" else None
    if report.failed and daemon is not None:
        try:
            tail = daemon.log()[-8000:]
        except OSError as exc:
            tail = f"(no log: {exc})"
        report.sections.append(("the daemon's log, last lines", tail))


@pytest.fixture(scope="session")
def localnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNet]:
    net = LocalNet.create(tmp_path_factory.mktemp("localnet"))
    net.start()
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture
async def daemon(localnet: LocalNet, tmp_path: Path,
                 request: pytest.FixtureRequest) -> AsyncIterator[Daemon]:
    d = _DAEMONS[request.node.nodeid] = Daemon(localnet, tmp_path)
    try:
        yield d
    finally:
        code = await d.stop()
        assert code == 0, f"daemon exit status {code}:\n{d.log()}"


class Cast:
    """Real people registered on the three homeservers for one test."""

    def __init__(self, net: LocalNet) -> None:
        self.net = net
        self.people: list[Person] = []

    async def person(self, net_id: str, display_name: str | None = None, *,
                     localpart: str | None = None) -> Person:
        if localpart is None:
            tag = secrets.token_hex(4)
            localpart = {
                "wa": "+1555" + str(int(tag, 16) % 10_000_000).zfill(7),
                "ig": f"user.{tag}",
                "fbm": f"user{tag}=40example.com",
            }[net_id]
        p = await Person.register(self.net.url(net_id), localpart, display_name)
        self.people.append(p)
        return p

    async def room(self, net_id: str, owner: Person, name: str = "portal") -> str:
        return await owner.create_room(name, invite=[f"@tribridge:{self.net.server_name(net_id)}"])

    async def aclose(self) -> None:
        for p in self.people:
            await p.aclose()


@pytest.fixture
async def cast(localnet: LocalNet) -> AsyncIterator[Cast]:
    c = Cast(localnet)
    try:
        yield c
    finally:
        await c.aclose()
