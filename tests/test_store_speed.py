"""The store's shortcuts for speed keep its promises: deferred delivery records share a commit
without ever being half-written, and remembered answers never outlive a write (or a rollback)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bridge.store import OutboxItem, Store
from bridge.store.store import MAX_DEFERRED

from .test_store import message


def other_connection(path: Path) -> sqlite3.Connection:
    """What another process (or the store after a crash) would read: committed rows only."""
    return sqlite3.connect(str(path))


def one_queued(path: Path) -> tuple[Store, OutboxItem]:
    """A store on disk with one action queued and committed."""
    store = Store(path)
    with store.transaction():
        store.enqueue([message(1)])
    (item,) = store.pending_actions("ig", "!r:ig")
    return store, item


def watched(path: Path) -> tuple[Store, list[int]]:
    """A store, and the list its on_deferred listener appends to whenever writes begin to wait."""
    store = Store(path)
    waiting: list[int] = []
    store.on_deferred(lambda: waiting.append(1))
    return store, waiting


def done_ids(conn: sqlite3.Connection) -> set[int]:
    return {r[0] for r in conn.execute("SELECT id FROM outbox WHERE state = 'done'")}


def test_deferred_records_are_seen_at_once_here_and_on_disk_after_a_commit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    store, waiting = watched(path)
    with store.transaction():
        store.enqueue([message(1), message(2)])
    first, second = (item.id for item in store.pending_actions("ig", "!r:ig"))
    with store.deferred():
        store.map_event("wa", "!src", "$e1", "ig", "!r:ig", "$copy1")
        store.finish(first, "done")
    with store.deferred():
        store.finish(second, "done")
    assert waiting == [1]  # told once, when the first record began to wait
    assert store.mapped_event("wa", "$e1", "ig") == "$copy1"  # this connection sees them
    assert store.pending_actions("ig", "!r:ig") == []
    assert done_ids(other_connection(path)) == set()  # not yet on disk
    store.commit_deferred()
    assert done_ids(other_connection(path)) == {first, second}
    store.close()


def test_a_transaction_commits_the_waiting_records_with_its_own(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store, item = one_queued(path)
    with store.deferred():
        store.finish(item.id, "done")
    with store.transaction():
        store.enqueue([message(2)])
    seen = other_connection(path)
    assert done_ids(seen) == {item.id}
    assert seen.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 2


def test_a_failed_transaction_keeps_the_waiting_records_and_loses_only_its_own(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    store, item = one_queued(path)
    with store.deferred():
        store.finish(item.id, "done")
    with pytest.raises(RuntimeError), store.transaction():
        store.enqueue([message(2)])
        raise RuntimeError("half-way")
    store.commit_deferred()
    seen = other_connection(path)
    assert done_ids(seen) == {item.id}
    assert seen.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1


def test_a_failed_deferred_write_leaves_no_half_of_it(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store, item = one_queued(path)
    with pytest.raises(RuntimeError), store.deferred():
        store.map_event("wa", "!src", "$e1", "ig", "!r:ig", "$copy1")
        raise RuntimeError("the send's record failed half-way")
    assert store.mapped_event("wa", "$e1", "ig") is None
    store.close()  # commits what waits: nothing of the failed record
    again = Store(path)
    assert again.mapped_event("wa", "$e1", "ig") is None
    assert [i.id for i in again.pending_actions("ig", "!r:ig")] == [item.id]


def test_a_send_s_record_waits_like_a_deferred_block_and_counts_towards_the_bound(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    store, waiting = watched(path)
    with store.transaction():
        store.enqueue([message(n) for n in range(1, MAX_DEFERRED + 2)])
    items = store.pending_actions("ig", "!r:ig", MAX_DEFERRED + 1)
    first = items[0]
    store.delivered(first, "wa", "!src", "$e1", "$copy1")
    assert waiting == [1]
    assert store.mapped_event("wa", "$e1", "ig") == "$copy1"  # this connection sees it
    assert first.id not in {i.id for i in store.pending_actions("ig", "!r:ig", 500)}
    seen = other_connection(path)
    assert done_ids(seen) == set()  # not yet on disk
    for item in items[1:MAX_DEFERRED]:  # the bound's worth: committed without a timer
        store.delivered(item, "wa", "!src", f"$x{item.id}", f"$copy{item.id}")
    assert len(done_ids(seen)) == MAX_DEFERRED
    assert seen.execute("SELECT COUNT(*) FROM event_map").fetchone()[0] == MAX_DEFERRED
    store.close()


def test_a_send_s_record_failing_half_way_leaves_only_what_is_true(tmp_path: Path) -> None:
    # No savepoint of its own: the copy is mapped first, so a failure between the two leaves
    # a copy that exists mapped, and its action still to do (sent again with the same
    # transaction id, it gets the same event). Records waiting before it are not lost.
    path = tmp_path / "t.db"
    store = Store(path)
    with store.transaction():
        store.enqueue([message(1), message(2)])
    first, second = store.pending_actions("ig", "!r:ig")
    store.delivered(first, "wa", "!src", "$e1", "$copy1")

    def failing(*args: object, **kwargs: object) -> bool:
        raise sqlite3.OperationalError("disk I/O error")

    store.finish = failing  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        store.delivered(second, "wa", "!src", "$e2", "$copy2")
    del store.finish
    store.close()
    again = Store(path)
    assert again.mapped_event("wa", "$e1", "ig") == "$copy1"
    assert again.mapped_event("wa", "$e2", "ig") == "$copy2"
    assert [i.id for i in again.pending_actions("ig", "!r:ig")] == [second.id]


def test_closing_commits_what_waits(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store, item = one_queued(path)
    with store.deferred():
        store.finish(item.id, "done")
    store.close()
    assert done_ids(other_connection(path)) == {item.id}


def test_remembered_answers_follow_every_write(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    assert store.portal_for_room("wa", "!a") is None
    (portal,) = store.sync_config_portals([{"wa": "!a", "ig": "!b"}])
    assert store.portal_for_room("wa", "!a") == portal
    assert store.portal_id_of("ig", "!b") == portal.portal_id
    with store.transaction():
        store.remove_portal_room("ig", "!b")
    assert store.portal_id_of("ig", "!b") is None
    assert store.profile("wa", "@p:wa") == (False, None)
    with store.transaction():
        store.set_profile("wa", "@p:wa", "Pat")
    assert store.profile("wa", "@p:wa") == (True, "Pat")
    assert store.ghost_in_room("ig", "_tb_wa_x", "!b") is False
    store.set_ghost_in_room("ig", "_tb_wa_x", "!b", True)
    assert store.ghost_in_room("ig", "_tb_wa_x", "!b") is True
    assert store.linked_accounts("wa", "@p:wa") == []
    with store.transaction():
        store.link_accounts(("wa", "@p:wa"), ("ig", "@pat:ig"))
    assert ("ig", "@pat:ig") in store.linked_accounts("wa", "@p:wa")


def test_an_answer_read_inside_a_rolled_back_transaction_is_forgotten(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    with pytest.raises(RuntimeError), store.transaction():
        store.add_management_room("wa", "!dm", "@p:wa")
        assert store.management_owner("wa", "!dm") == "@p:wa"  # remembered inside
        raise RuntimeError("rolled back")
    assert store.management_owner("wa", "!dm") is None
