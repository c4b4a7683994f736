"""The SQLite store: migrations, durability settings, atomic transactions, the outbox."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlite_utils

from bridge.core.actions import BotTask, JoinRoom, Redact, SendMessage, txn_id
from bridge.core.model import EventRef
from bridge.store import Store, StoreError
from bridge.store.migrations import LATEST, MIGRATIONS


def message(n: int, room: str = "!r:ig", network: str = "ig") -> SendMessage:
    return SendMessage(
        network=network,
        room_id=room,
        ghost="_tb_wa_aaaaaaaaaaaaaaaa",
        source=EventRef("wa", "!src", f"$e{n}", "@+15551234567:wa"),
        content={"msgtype": "m.text", "body": f"m{n}"},
        txn_id=txn_id("wa", f"$e{n}", network, "message"),
    )


def test_a_new_database_is_migrated_to_the_latest_schema_in_wal_with_full_sync(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "t.db")
    assert store.schema_before == 0
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()
    again = Store(tmp_path / "t.db")
    assert again.schema_before == LATEST
    again.close()


def test_a_database_in_a_directory_that_does_not_exist_is_refused_not_made(
    tmp_path: Path,
) -> None:
    # A typo in bridge.database must not start the bridge on an empty store somewhere new.
    with pytest.raises(StoreError, match=r"no directory .*/nope \(check bridge.database\)"):
        Store(tmp_path / "nope" / "t.db")
    assert not (tmp_path / "nope").exists()


def test_the_database_and_its_wal_are_private(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    store.enqueue([message(1)])
    for name in ("t.db", "t.db-wal", "t.db-shm"):
        assert (tmp_path / name).stat().st_mode & 0o077 == 0, name
    store.close()


def test_process_durability_is_normal_sync(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db", durability="process")
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    store.close()


def test_a_database_from_a_newer_tribridge_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this tribridge"):
        Store(path)


def test_an_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot open the database"):
        Store(tmp_path / "file" / "t.db")


def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    with pytest.raises(ZeroDivisionError), store.transaction():
        store.enqueue([message(1)])
        store.mark_event_seen("wa", "$e1", "!src")
        _ = 1 / 0
    assert store.pending_rooms("ig") == []
    assert not store.event_seen("wa", "$e1")


def test_outbox_is_first_in_first_out_per_room_and_deduplicated(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    with store.transaction():
        store.enqueue([message(n) for n in range(5)])
        store.enqueue([message(2)])  # the same action again: ignored
        store.enqueue([message(9, room="!other:ig")])
    assert sorted(store.pending_rooms("ig")) == ["!other:ig", "!r:ig"]
    items = store.pending_actions("ig", "!r:ig", limit=3)
    assert [i.action for i in items] == [message(0), message(1), message(2)]
    store.finish(items[0].id, "done")
    store.note_attempt(items[1].id, "503 M_UNKNOWN: busy")
    store.finish(items[1].id, "failed", "403 M_FORBIDDEN: no")
    rest = store.pending_actions("ig", "!r:ig")
    assert [i.action.content["body"] for i in rest] == ["m2", "m3", "m4"]
    (status,) = store.delivery_status("wa", "$e1")
    assert (status.state, status.attempts) == ("failed", 1)
    assert status.last_error == "403 M_FORBIDDEN: no"


def test_the_rows_enqueue_hands_back_are_what_a_worker_would_read(tmp_path: Path) -> None:
    # A worker may be handed these instead of reading the room's queue (bridge/delivery.py):
    # they must be the same rows, in the same order, as the same actions.
    store = Store(tmp_path / "t.db")
    source = EventRef("wa", "!src", "$e1", "@+15551234567:wa")
    actions = [
        message(1),
        SendMessage("ig", "!r:ig", "_tb_wa_aaaaaaaaaaaaaaaa", source,
                    {"msgtype": "m.text", "body": "re", "m.relates_to": {"rel_type": "m.replace",
                                                                           "event_id": "$e0"}},
                    txn_id("wa", "$e1", "ig", "edit"), unless_member="@alice:ig",
                    event_type="m.room.encrypted"),
        Redact("ig", "!r:ig", "_tb_wa_aaaaaaaaaaaaaaaa", source, "$e0", "oops",
               txn_id("wa", "$e1", "ig", "redact")),
        BotTask("ig", "!r:ig", "invite_person", {"room": "!r:ig", "user": "@bob:ig"},
                txn_id("wa", "$e1", "ig", "invite"), "$e1"),
        JoinRoom("ig", "!r:ig", txn_id("ig", "$inv", "ig", "join"), "$inv"),
    ]
    with store.transaction():
        store.enqueue([message(0)])
        written = store.enqueue(actions)
        # Some queued before: which rows were written is not known.
        assert store.enqueue([message(7), message(0)]) is None
        assert store.enqueue([]) == []
    read = store.pending_actions("ig", "!r:ig")
    assert read[0].action == message(0)
    assert written == read[1:-1]
    assert read[-1].action == message(7)
    assert [i.action for i in written] == actions


def test_config_portals_keep_their_ids_across_restarts(tmp_path: Path) -> None:
    declared = [{"wa": "!a", "ig": "!b"}, {"wa": "!c", "fbm": "!d"}]
    store = Store(tmp_path / "t.db")
    first = store.sync_config_portals(declared)
    store.close()
    store = Store(tmp_path / "t.db")
    # Adding a room to a portal keeps the portal's id.
    second = store.sync_config_portals([{"wa": "!a", "ig": "!b", "fbm": "!e"}, declared[1]])
    assert [p.portal_id for p in second] == [p.portal_id for p in first]
    assert len({p.portal_id for p in first}) == 2
    portal = store.portal_for_room("fbm", "!e")
    assert portal is not None and dict(portal.rooms) == {"wa": "!a", "ig": "!b", "fbm": "!e"}
    assert store.portal_for_room("wa", "!nowhere") is None


def test_portals_and_rooms_dropped_from_the_config_stop_being_bridged(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    first = store.sync_config_portals(
        [{"wa": "!a", "ig": "!b", "fbm": "!c"}, {"wa": "!x", "ig": "!y"}]
    )
    (kept,) = store.sync_config_portals([{"wa": "!a", "ig": "!b"}])
    assert kept.portal_id == first[0].portal_id
    assert store.portal_for_room("fbm", "!c") is None
    assert store.portal_for_room("wa", "!x") is None and store.portal_for_room("ig", "!y") is None
    assert [p.portal_id for p in store.portals()] == [kept.portal_id]


def test_a_room_is_watched_from_when_the_bot_is_in_it_and_forgets_old_marks(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "t.db")
    store.sync_config_portals([{"wa": "!a", "ig": "!b"}])
    assert store.room_position("wa", "!a")[1] is None  # the bot is not in it yet
    with store.transaction():
        store.rooms_joined("wa", [("!a", time.time()), ("!not-a-portal-room", time.time())])
    assert store.room_position("wa", "!a")[1] is not None
    assert store.room_position("wa", "!not-a-portal-room")[1] is None
    with store.transaction():
        store.set_room_mark("wa", "!a", "$old-a")
        store.set_room_mark("ig", "!b", "$old-b")
        store.rooms_joined("wa", [("!a", time.time())])  # joined again at a start: mark stays
    assert store.room_position("wa", "!a") == ("$old-a", None)
    # Rooms that stay bridged keep their marks, also when they move to another portal (the bot
    # was there all along); a room new to the portals has neither mark nor time yet.
    store.sync_config_portals([{"wa": "!a", "fbm": "!c"}, {"ig": "!b", "fbm": "!d"}])
    assert store.room_position("wa", "!a")[0] == "$old-a"
    assert store.room_position("ig", "!b")[0] == "$old-b"
    # Out of the portals and back: the mark from before is gone, as after unlink and link.
    store.sync_config_portals([{"ig": "!b", "fbm": "!d"}])
    assert store.room_position("wa", "!a")[0] is None
    with store.transaction():
        store.set_room_mark("wa", "!a", "$stale")  # as if a read had come in between
    store.sync_config_portals([{"wa": "!a", "fbm": "!c"}, {"ig": "!b", "fbm": "!d"}])
    assert store.room_position("wa", "!a")[0] is None
    with store.transaction():
        store.remove_portal_room("ig", "!b")  # a portal left with one room is dissolved
        assert store.portal_for_room("fbm", "!d") is None
        (kept,) = store.portals()
        store.add_portal_room(kept.portal_id, "ig", "!b")  # linked by a command: bot is in it
    mark, entered = store.room_position("ig", "!b")
    assert mark is None and entered is not None
    # The bot joined at an invitation: it was not in the room, whatever a read of a
    # world-readable room marked before is no mark of what it saw.
    with store.transaction():
        store.set_room_mark("ig", "!b", "$read-from-outside")
        store.rooms_joined("ig", [("!b", time.time())], invited=True)
    mark, entered = store.room_position("ig", "!b")
    assert mark is None and entered is not None
    # A management room is watched from its invitation; the same invitation taken again (its
    # task run again after a crash) does not start it afresh.
    with store.transaction():
        store.add_management_room("wa", "!dm", "@alice:wa")
        store.set_room_mark("wa", "!dm", "$cmd")
        store.add_management_room("wa", "!dm", "@alice:wa")
    assert store.room_position("wa", "!dm")[0] == "$cmd"
    with store.transaction():
        store.drop_management_room("wa", "!dm")
    assert store.room_position("wa", "!dm") == (None, None)


def test_event_map_and_ghosts_persist(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    store.map_event("wa", "!a", "$src", "ig", "!b", "$dst")
    store.save_ghost("ig", "_tb_wa_aaaaaaaaaaaaaaaa", "wa", "Alice (WhatsApp)")
    store.set_ghost_in_room("ig", "_tb_wa_aaaaaaaaaaaaaaaa", "!b", True)
    store.close()
    store = Store(tmp_path / "t.db")
    assert store.mapped_event("wa", "$src", "ig") == "$dst"
    assert store.mapped_event("wa", "$src", "fbm") is None
    assert store.ghost("ig", "_tb_wa_aaaaaaaaaaaaaaaa") == (True, "Alice (WhatsApp)")
    assert store.ghost_in_room("ig", "_tb_wa_aaaaaaaaaaaaaaaa", "!b")
    store.set_ghost_in_room("ig", "_tb_wa_aaaaaaaaaaaaaaaa", "!b", False)
    assert not store.ghost_in_room("ig", "_tb_wa_aaaaaaaaaaaaaaaa", "!b")


def test_the_last_transaction_is_the_last_taken_in_even_when_an_id_comes_again(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "t.db")
    assert store.last_transaction("wa") is None
    with store.transaction():
        store.record_transaction("wa", "41", "d1")
        store.record_transaction("ig", "7", "d2")
        store.record_transaction("wa", "42", "d3")
        store.record_transaction("ig", "8", "d4")
    assert (store.last_transaction("wa"), store.last_transaction("ig")) == ("42", "8")
    # Synapse, restarted, numbers from 1 again: its reused id is the latest taken in.
    with store.transaction():
        store.record_transaction("wa", "41", "d5")
    assert store.last_transaction("wa") == "41"
    store.close()
    reopened = Store(tmp_path / "t.db")
    assert reopened.last_transaction("wa") == "41"
    reopened.close()


def _plans(store: Store, read: Callable[[], object]) -> list[str]:
    """SQLite's query plan of every statement `read` runs."""
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    try:
        read()
    finally:
        store.conn.set_trace_callback(None)
    plans = []
    for sql in statements:
        # The trace shows the statement with its values bound, as SQL literals.
        rows = store.conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
        plans.append(" / ".join(row[-1] for row in rows))
    return plans


def test_reading_the_queue_never_walks_finished_rows(tmp_path: Path) -> None:
    # The outbox keeps a day of finished rows (a million at scale): every read of what is
    # still to send (a worker's, /health's, /metrics') goes through the index of pending rows,
    # never over the table; the counts (every pending row during a backlog) read it alone.
    store = Store(tmp_path / "t.db")
    with store.transaction():
        store.enqueue([message(n) for n in range(20)])
    for item in store.pending_actions("ig", "!r:ig", limit=15):
        store.finish(item, "done")
    reads: list[tuple[Callable[[], object], str]] = [
        (lambda: store.pending_rooms("ig"), "COVERING INDEX outbox_pending"),
        (lambda: store.pending_actions("ig", "!r:ig"), "INDEX outbox_pending"),
        (store.outbox_depth, "COVERING INDEX outbox_pending"),
        (lambda: store.pending_count("ig", "!r:ig"), "COVERING INDEX outbox_pending"),
    ]
    for read, want in reads:
        plans = _plans(store, read)
        assert plans, "the read ran no statement"
        for plan in plans:
            assert want in plan, plan
    assert [i.action.content["body"] for i in store.pending_actions("ig", "!r:ig")] == [
        f"m{n}" for n in range(15, 20)]
    assert store.outbox_depth() == {"ig": 5}
    store.close()


def test_a_v3_store_gets_the_index_of_pending_rows_and_keeps_its_queue(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    db = sqlite_utils.Database(path)
    for step in MIGRATIONS[:3]:
        step(db)
    db.execute("PRAGMA user_version = 3")
    rows = [(n, message(n)) for n in range(3)]
    db["outbox"].insert_all(
        {"id": n, "network": "ig", "room_id": "!r:ig", "kind": "message", "src_network": "wa",
         "src_event": f"$e{n}", "txn_id": a.txn_id, "payload": json.dumps(a.to_payload()),
         "state": "done" if n == 0 else "pending", "attempts": 0, "created_at": 1.0,
         "updated_at": 1.0}
        for n, a in rows
    )
    db.conn.commit()
    db.conn.close()
    store = Store(path)
    assert store.schema_before == 3
    indexes = "SELECT name FROM sqlite_master WHERE type = 'index'"
    names = {r[0] for r in store.conn.execute(indexes)}
    assert "outbox_pending" in names
    assert "idx_outbox_network_state_room_id_id" not in names
    assert [i.action for i in store.pending_actions("ig", "!r:ig")] == [message(1), message(2)]
    assert store.outbox_depth() == {"ig": 2}
    store.close()
