"""What a reload (SIGHUP or the bot's `admin reload`) applies, and what it says needs a restart."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trio

from bridge.config import BridgeSettings, load_config
from bridge.daemon import Bridge, _needs_restart, _with_reloadable
from bridge.notify import Notifier

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


async def test_a_reload_joins_new_rooms_and_neither_pings_nor_distrusts(tmp_path: Path) -> None:
    # A reload is no restart: nothing was missed, so no window of distrust (and so no sweep of
    # every room) opens, and no ping asks the homeserver for a backlog.
    import httpx

    from bridge.core.model import Portal
    from bridge.daemon import _setup_network
    from bridge.matrix.client import Homeserver
    from bridge.store import Store

    from .fakehs import FakeHomeserver

    config = load_config(write(tmp_path, good_doc()))
    net = config.networks["wa"]
    fake = FakeHomeserver(net.network.server_name)
    store = Store(tmp_path / "t.db", durability="process")
    suspected: list[str] = []

    class Reconciler:
        def __init__(self) -> None:
            self.store = store

        def suspect(self, network: str, *args: object, **kwargs: object) -> None:
            suspected.append(network)

        def unreachable(self, network: str) -> None:
            raise AssertionError("nothing was silent")

    portal = Portal("p1", {"wa": "!new:wa.localhost", "ig": "!b:ig.localhost"})
    async with httpx.AsyncClient(transport=fake, base_url="http://wa") as http:
        hs = Homeserver(http, net.network.server_name)
        await _setup_network(net, hs, [portal], Reconciler(), starting=False)  # type: ignore[arg-type]
    assert ("!new:wa.localhost", f"@tribridge:{net.network.server_name}") in fake.joined
    assert suspected == [] and fake.registered == set()
    assert fake.requests == 2  # the join and the portal id: no register, no ping
    store.close()
