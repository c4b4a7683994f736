"""Delivery records lost (a failed commit, a crash) must not lose what refers to them: a
redaction held behind its message, or pushed after a restart, still finds the copy."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import trio

from bridge.core.actions import Action, Redact, SendMessage, txn_id
from bridge.core.ghosts import derive_key
from bridge.core.model import EventRef, Network
from bridge.inbound import Inbound
from bridge.matrix.client import Homeserver
from bridge.metrics import Metrics
from bridge.store import Store
from bridge.store import store as store_module

from .fakehs import FakeHomeserver, _ok, error
from .rigs import start_workers, until

KEY = derive_key(b"s" * 32)
WA = Network("wa", "WhatsApp", "wa.test", "phone", "tribridge", "_tb_", False)
IG = Network("ig", "Instagram", "ig.test", "handle", "tribridge", "_tb_", True)
NETWORKS = {"wa": WA, "ig": IG}
SENDER = "@+15551234567:wa.test"
GHOST = "_tb_wa_aaaaaaaaaaaaaaaa"
PORTAL = {"wa": "!wa-room", "ig": "!ig-room"}


class Redacting(FakeHomeserver):
    """The fake, taking redactions too (and noting which events they were of)."""

    def __init__(self, server_name: str) -> None:
        super().__init__(server_name)
        self.redacted: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = unquote(request.url.path)
        if "/redact/" in path:
            self.redacted.append(path.split("/")[-2])
            return _ok({"event_id": f"$redaction{len(self.redacted)}"})
        return await super().handle_async_request(request)


class CommitFails:
    """A connection whose COMMIT fails, as on a full disk; everything else goes through."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def fail_a_commit(store: Store) -> None:
    """The deferred writes' commit fails, as on a full disk: they are rolled back."""
    real, store.conn = store.conn, CommitFails(store.conn)  # type: ignore[assignment]
    try:
        with pytest.raises(sqlite3.OperationalError):
            store.commit_deferred()
    finally:
        store.conn = real


def message(body: str) -> SendMessage:
    event = f"$src-{body}"
    return SendMessage("ig", "!ig-room", GHOST, EventRef("wa", "!wa-room", event, SENDER),
                       {"msgtype": "m.text", "body": body}, txn_id("wa", event, "ig", "message"))


async def bridged(store: Store, ig: Redacting,
                  script: Callable[[Inbound], Awaitable[None]]) -> None:
    """Run the delivery workers over `store` while `script` runs, then stop them."""
    async with (httpx.AsyncClient(transport=Redacting("wa.test"), base_url="http://wa") as wa_c,
                httpx.AsyncClient(transport=ig, base_url="http://ig") as ig_c,
                trio.open_nursery() as nursery):
        homeservers = {"wa": Homeserver(wa_c, "wa.test"), "ig": Homeserver(ig_c, "ig.test")}
        workers = await start_workers(nursery, homeservers, NETWORKS, store, KEY,
                                      metrics=Metrics())
        inbound = Inbound(store, NETWORKS, KEY, wake=lambda n, rooms: workers[n].wake(rooms))
        await script(inbound)
        nursery.cancel_scope.cancel()


def redaction_of_m() -> Redact:
    """The redaction of the message "M" (see `message`), bound for Instagram."""
    return Redact("ig", "!ig-room", GHOST, EventRef("wa", "!wa-room", "$red", SENDER),
                  "$src-M", None, txn_id("wa", "$red", "ig", "redact"))


def queued(tmp_path: Path, *actions: Action) -> Store:
    """A store with the portal and `actions` queued, committed."""
    store = Store(tmp_path / "t.db", durability="process")
    store.sync_config_portals([PORTAL])
    with store.transaction():
        store.enqueue(list(actions))
    return store


async def test_a_failed_commit_while_a_redaction_waits_behind_its_message(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # A backlog in one room: messages, M, and M's redaction, read by the drain in one page.
    store = queued(tmp_path, *(message(f"f{i}") for i in range(7)), message("M"), redaction_of_m())
    ig = Redacting("ig.test")

    async def script(inbound: Inbound) -> None:
        # Once M is delivered, another task's commit fails: M's record goes with it.
        await until(lambda: store.mapped_event("wa", "$src-M", "ig") is not None, 60)
        fail_a_commit(store)
        await until(lambda: store.outbox_depth().get("ig", 0) == 0, 60)

    await bridged(store, ig, script)
    copy = store.mapped_event("wa", "$src-M", "ig")
    # M went again (the same copy), and its redaction after it; a redaction that had gone
    # before the failure went again too, with its transaction id (Synapse sends it once).
    assert copy is not None and ig.redacted and set(ig.redacted) == {copy}
    assert [s.state for s in store.delivery_status("wa", "$red")] == ["done"]
    store.close()


async def test_a_failed_commit_while_a_redaction_waits_to_try_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Deterministic: the redaction's first try is refused with a 502, and the commit holding
    # M's record fails right then, while the redaction waits out its backoff.
    store = queued(tmp_path, message("M"), redaction_of_m())

    class FailsOnce(Redacting):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if "/redact/" in request.url.path and not self.redacted and not failed:
                failed.append(True)
                fail_a_commit(store)
                return httpx.Response(502, json={"errcode": "M_UNKNOWN", "error": "busy"})
            return await super().handle_async_request(request)

    failed: list[bool] = []
    ig = FailsOnce("ig.test")

    async def script(inbound: Inbound) -> None:
        await until(lambda: store.outbox_depth().get("ig", 0) == 0, 600)

    await bridged(store, ig, script)
    copy = store.mapped_event("wa", "$src-M", "ig")
    assert failed and copy is not None and ig.redacted == [copy]
    assert [s.last_error for s in store.delivery_status("wa", "$red")] == [None]
    store.close()


async def test_a_message_delivered_before_a_crash_is_redacted_after_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "t.db"
    ig = Redacting("ig.test")

    def event(body: str) -> dict[str, Any]:
        return {"type": "m.room.message", "event_id": f"$src-{body}", "room_id": "!wa-room",
                "sender": SENDER, "content": {"msgtype": "m.text", "body": body}}

    store = Store(path, durability="process")
    store.sync_config_portals([PORTAL])

    async def before(inbound: Inbound) -> None:
        inbound.take_transaction("wa", "1", b"1", [event("M0"), event("M")])
        await until(lambda: len(ig.sent) == 2, 60)

    await bridged(store, ig, before)
    store.conn.close()  # kill -9: the delivery records, still waiting for a commit, are lost
    # After the restart ig fails a while, so the drain holds M while the redaction comes.
    ig.fault = lambda n: error(502, "M_UNKNOWN") if n <= 4 else None
    store = Store(path, durability="process")

    async def after(inbound: Inbound) -> None:
        await until(lambda: len(ig.attempts) >= 3, 60)
        inbound.take_transaction("wa", "2", b"2", [
            {"type": "m.room.redaction", "event_id": "$red", "room_id": "!wa-room",
             "sender": SENDER, "redacts": "$src-M", "content": {}}])
        await until(lambda: store.outbox_depth().get("ig", 0) == 0, 600)

    await bridged(store, ig, after)
    copy = store.mapped_event("wa", "$src-M", "ig")
    assert ig.texts("!ig-room") == ["M0", "M"]  # the resend of M was the same copy
    assert copy is not None and ig.redacted == [copy]
    store.close()


def test_the_sends_begun_are_remembered_newest_first_within_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bound (SENDING_KEPT, far more than a lost commit can hold) drops the oldest.
    monkeypatch.setattr(store_module, "SENDING_KEPT", 2)
    store = Store(tmp_path / "t.db", durability="process")
    store.sync_config_portals([PORTAL])
    with store.transaction():
        items = store.enqueue([message("A"), message("B"), message("C")])
    assert items is not None
    for item in items:
        store.sending(item.action.txn_id)
    with store.transaction():
        assert store.cancel_pending("wa", "$src-C", "redacted before delivery") == []
        assert store.cancel_pending("wa", "$src-B", "redacted before delivery") == []
        assert store.cancel_pending("wa", "$src-A", "redacted before delivery") == [
            (items[0].id, "ig", "!ig-room")]
    store.close()


def test_a_redaction_cancels_only_what_provably_never_left(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db", durability="process")
    store.sync_config_portals([PORTAL])
    with store.deferred():  # a push, its commit deferred: its send leaves before the commit
        (item,) = store.enqueue([message("M")])
    store.sending(item.action.txn_id)
    with store.deferred():
        store.map_event("wa", "!wa-room", "$src-M", "ig", "!ig-room", "$copy")
        store.finish(item, "done")
    fail_a_commit(store)  # the commit fails: M's row, its map and its mark are gone
    with store.transaction():  # the homeserver pushes it again, then its redaction comes
        store.enqueue([message("M")])
        assert store.cancel_pending("wa", "$src-M", "redacted before delivery") == []
        # A message never sent, written since, is cancelled: it never leaves.
        (fresh,) = store.enqueue([message("N")])
        assert store.cancel_pending("wa", "$src-N", "redacted before delivery") == [
            (fresh.id, "ig", "!ig-room")]
    store.close()
