"""What a reload (SIGHUP or the bot's `admin reload`) applies, and what it says needs a restart."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
import trio

from bridge.config import BridgeSettings, Config, load_config
from bridge.core.ghosts import derive_key
from bridge.daemon import Bridge, _needs_restart, _with_reloadable
from bridge.inbound import Inbound
from bridge.matrix.client import Homeserver
from bridge.notify import Notifier
from bridge.reconcile import Reconciler
from bridge.store import Store

from .fakehs import FakeHomeserver
from .rigs import until
from .test_config import good_doc, write

RELOADABLE = {"log_level", "command_prefix", "default_country_code", "mirror_room_state",
              "history_days"}


def changed(settings: BridgeSettings, key: str) -> BridgeSettings:
    """`settings` with `key` set to some other valid value."""
    other = {
        "listen_host": "127.0.0.2", "listen_port": settings.listen_port + 1,
        "url": "http://127.0.0.1:1", "database": Path("/elsewhere.db"),
        "secret": b"another secret of at least 32 bytes, surely",
        "log_level": "debug", "durability": "process", "log_format": "json",
        "metrics_listen": ("127.0.0.1", 9), "unhealthy_after": 12.5, "command_prefix": "!x",
        "default_country_code": "44", "max_media_bytes": 1024, "mirror_room_state": False,
        "history_days": 30,
    }[key]
    assert getattr(settings, key) != other
    return dataclasses.replace(settings, **{key: other})


def test_every_bridge_key_is_applied_by_a_reload_or_named_as_needing_a_restart(
    tmp_path: Path
) -> None:
    # A key added later must land on one side: a reload never ignores a change silently.
    old = load_config(write(tmp_path, good_doc()))
    for field in dataclasses.fields(BridgeSettings):
        new = dataclasses.replace(old, bridge=changed(old.bridge, field.name))
        restart = _needs_restart(old, new)
        applied = _with_reloadable(old, new).bridge == new.bridge
        if field.name in RELOADABLE:
            assert applied and restart == [], field.name
        else:
            assert not applied and len(restart) == 1, field.name
            assert restart[0].startswith("bridge."), restart


def test_admin_reload_names_the_keys_that_need_a_restart(tmp_path: Path) -> None:
    doc = good_doc()
    path = write(tmp_path, doc)
    bridge = Bridge(load_config(path), Notifier(""))
    doc["bridge"]["durability"] = "process"
    doc["bridge"]["log_format"] = "json"
    doc["bridge"]["log_level"] = "debug"
    write(tmp_path, doc)
    assert bridge.reload_from_bot() == (
        "Reloading the config: portals, permissions, the log level, the command prefix, the "
        "default country code, room state mirroring and history_days apply now.\n"
        "Changed, and applied only by a restart: bridge.durability, bridge.log_format.")
    assert bridge.reloads.receive_nowait().bridge.log_level == "debug"


def test_a_reload_asked_while_another_waits_applies_the_newest_file(tmp_path: Path) -> None:
    doc = good_doc()
    path = write(tmp_path, doc)
    bridge = Bridge(load_config(path), Notifier(""))
    for level in ("debug", "warning", "error"):  # three SIGHUPs while the first waits
        doc["bridge"]["log_level"] = level
        bridge.request_reload(load_config(write(tmp_path, doc)))
    assert bridge.reloads.receive_nowait().bridge.log_level == "error"
    with pytest.raises(trio.WouldBlock):
        bridge.reloads.receive_nowait()  # one reload, of the newest


@dataclasses.dataclass
class RecordingHomeserver(FakeHomeserver):
    """The fake homeserver, keeping each call it was asked ("POST /path") and answering the
    appservice ping as Synapse does."""

    calls: list[str] = dataclasses.field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(f"{request.method} {unquote(request.url.path)}")
        if request.url.path.endswith("/ping"):
            return httpx.Response(200, json={"duration_ms": 1})
        return await super().handle_async_request(request)

    def asked(self, suffix: str) -> list[str]:
        return [call for call in self.calls if call.endswith(suffix)]


async def over_fakes(
    stack: AsyncExitStack, config: Config, fakes: Mapping[str, FakeHomeserver], store: Store
) -> tuple[dict[str, Homeserver], Reconciler]:
    """Clients over `fakes` (closed with `stack`) and a reconciler on them, as Bridge.run makes
    them (no delivery workers: what is queued stays queued)."""
    homeservers = {
        n: Homeserver(await stack.enter_async_context(
            httpx.AsyncClient(transport=fake, base_url=f"http://{n}")
        ), fake.server_name)
        for n, fake in fakes.items()
    }
    networks = {n: net.network for n, net in config.networks.items()}
    inbound = Inbound(store, networks, derive_key(config.bridge.secret),
                      wake=lambda n, rooms: None)
    return homeservers, Reconciler(store, homeservers, inbound, store.portals)


class Systemd(Notifier):
    """What the bridge tells systemd, kept."""

    def __init__(self) -> None:
        super().__init__("")
        self.sent: list[tuple[str, ...]] = []

    def send(self, *states: str) -> bool:
        self.sent.append(states)
        return True


async def test_a_reload_joins_new_rooms_and_neither_pings_nor_distrusts(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # A reload is no restart: nothing was missed, so no window of distrust (and so no sweep of
    # every room) opens, no ping asks the homeservers for a backlog, and the bot joins only the
    # rooms of the portal the file added. Driven through request_reload, as SIGHUP does.
    doc = good_doc()  # one portal, on wa and ig
    config = load_config(write(tmp_path, doc))
    fakes = {n: RecordingHomeserver(net.network.server_name) for n, net in config.networks.items()}
    store = Store(tmp_path / "t.db", durability="process")
    systemd = Systemd()
    bridge = Bridge(config, systemd)
    root_level = logging.getLogger().level  # a reload sets the log level: restored after
    try:
        async with AsyncExitStack() as stack:
            homeservers, reconciler = await over_fakes(stack, config, fakes, store)
            async with trio.open_nursery() as nursery:
                await nursery.start(reconciler.run)
                # The start, as Bridge.run does it: every homeserver pinged, a window opened.
                await bridge._setup(homeservers, store.sync_config_portals(config.portals),
                                    reconciler)
                assert all(len(fake.asked("/ping")) == 1 for fake in fakes.values())
                assert all(reconciler.is_suspect(n) for n in fakes)
                await until(lambda: not any(reconciler.is_suspect(n) for n in fakes))
                joined_at_start = {n: set(fake.joined) for n, fake in fakes.items()}
                for fake in fakes.values():
                    fake.calls.clear()
                nursery.start_soon(bridge._reloader, store, homeservers, reconciler)

                doc["portals"].append({"wa": "!new:wa.localhost", "fbm": "!new:fbm.localhost"})
                bridge.request_reload(load_config(write(tmp_path, doc)))
                await until(lambda: ("READY=1", "STATUS=bridging") in systemd.sent)

                assert [fake.asked("/ping") for fake in fakes.values()] == [[], [], []]
                assert [fake.asked("/register") for fake in fakes.values()] == [[], [], []]
                assert not any(reconciler.is_suspect(n) for n in fakes)
                assert {n: fake.joined - joined_at_start[n] for n, fake in fakes.items()} == {
                    "wa": {("!new:wa.localhost", "@tribridge:wa.localhost")},
                    "ig": set(),
                    "fbm": {("!new:fbm.localhost", "@tribridge:fbm.localhost")},
                }
                nursery.cancel_scope.cancel()
    finally:
        logging.getLogger().setLevel(root_level)
        store.close()
