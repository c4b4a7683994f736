"""Group commit (bridge/commits.py): a push is answered only once its writes are on disk, its
sends may leave before that fsync, and nothing waits on a timer or starves."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bridge.commits import MAX_WAIT, RECORDS_WAIT, GroupCommit
from bridge.core.actions import BotTask
from bridge.core.ghosts import derive_key
from bridge.delivery import DeliveryWorker
from bridge.inbound import Inbound, Taken
from bridge.matrix.client import Homeserver
from bridge.reconcile import Reconciler
from bridge.store import Store, StoreError
from bridge.store.store import MAX_DEFERRED

from .rigs import until
from .test_reconcile import IG, ROOM, WA, text
from .test_store import message

Db = tuple[Path, Store, GroupCommit]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Db]:
    """A store on disk and its group commit."""
    path = tmp_path / "t.db"
    store = Store(path)
    yield path, store, GroupCommit(store)
    store.close()


def rows_on_disk(path: Path, state: str | None = None) -> int:
    """What another process (or the store after a crash) would read: committed rows only (in
    `state`, if given)."""
    sql = "SELECT COUNT(*) FROM outbox" + (" WHERE state = ?" if state else "")
    with closing(sqlite3.connect(str(path))) as conn:
        return int(conn.execute(sql, (state,) if state else ()).fetchone()[0])


async def test_the_sends_leave_before_the_fsync_and_the_answer_after_it(db: Db) -> None:
    path, store, commits = db
    woken = trio.Event()
    on_disk_when_sent: list[int] = []

    async def worker() -> None:
        await woken.wait()
        assert len(store.pending_actions("ig", "!r:ig")) == 1  # this connection sees the row
        on_disk_when_sent.append(rows_on_disk(path))  # the send goes out now
        await trio.sleep_forever()  # waiting for the homeserver's answer

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        with store.deferred():
            store.enqueue([message(1)])
        woken.set()
        await commits.durable()
        assert rows_on_disk(path) == 1  # answered only now, and it is on disk
        assert on_disk_when_sent == [0]  # the send did not wait for the fsync
        nursery.cancel_scope.cancel()


async def test_sends_that_queue_behind_others_do_not_hold_back_the_commit(db: Db) -> None:
    path, store, commits = db
    on_disk_when_run: list[int] = []

    async def worker() -> None:
        on_disk_when_run.append(rows_on_disk(path))

    async with trio.open_nursery() as nursery:
        with store.deferred():
            store.enqueue([message(1)])
        nursery.start_soon(worker)
        await commits.durable(after_sends=False)
        assert rows_on_disk(path) == 1
    assert on_disk_when_run == [1]  # committed before anything else ran


def test_a_push_says_whether_its_sends_leave_now_or_queue_behind_others(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "t.db")
    store.sync_config_portals([{"wa": ROOM, "ig": "!ig-room"}])
    busy = {"ig": False}
    inbound = Inbound(store, {"wa": WA, "ig": IG}, derive_key(b"k" * 32),
                      wake=lambda network, rooms: busy[network])
    body = b'{"events": []}'
    assert inbound.take_transaction("wa", "1", body, [text(1)], defer=True) is Taken.SENDING
    busy["ig"] = True  # the ig worker is still sending the first one
    assert inbound.take_transaction("wa", "2", body + b" ", [text(2)], defer=True) is Taken.QUEUED
    assert inbound.take_transaction("wa", "2", body + b" ", [text(2)], defer=True) is Taken.NOTHING
    echo = text(3) | {"sender": "@_tb_ig_aaaaaaaaaaaaaaaa:wa.test"}
    assert inbound.take_transaction("wa", "3", b"{}", [echo], defer=True) is Taken.ECHOES
    store.commit_deferred()
    assert [i.action.content["body"] for i in store.pending_actions("ig", "!ig-room")] == [
        "m1", "m2"]
    store.close()


async def test_nothing_waiting_returns_at_once(db: Db) -> None:
    _, _, commits = db
    with trio.fail_after(1):
        await commits.durable()


class FailingCommits:
    """A connection whose COMMIT fails, as on a full or failing disk."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_a_failed_commit_is_an_error_and_leaves_nothing_half_written(db: Db) -> None:
    path, store, commits = db
    real = store.conn
    store.conn = FailingCommits(real)  # type: ignore[assignment]
    with store.deferred():
        store.enqueue([message(1)])
    with pytest.raises(StoreError, match="could not commit a pushed transaction"):
        await commits.durable()
    store.conn = real
    assert rows_on_disk(path) == 0
    assert store.pending_actions("ig", "!r:ig") == []  # rolled back here too, not half-kept
    # The store goes on: the homeserver retries the push, and this time it lands.
    with store.deferred():
        store.enqueue([message(1)])
    await commits.durable()
    assert rows_on_disk(path) == 1


async def test_a_push_whose_writes_another_commit_lost_is_not_acknowledged(db: Db) -> None:
    path, store, commits = db
    real = store.conn
    failed: list[str] = []

    async def another_task_commits() -> None:
        # Runs while the push waits for its commit: its own commit fails, taking the push's
        # writes down with it (they were in the same SQLite transaction).
        store.conn = FailingCommits(real)  # type: ignore[assignment]
        try:
            store.commit_deferred()
        except sqlite3.OperationalError as exc:
            failed.append(str(exc))
        store.conn = real

    async with trio.open_nursery() as nursery:
        with store.deferred():
            store.enqueue([message(1)])  # a push's writes, waiting for their commit
        nursery.start_soon(another_task_commits)
        with pytest.raises(StoreError, match="rolled back"):
            await commits.durable()
    assert failed == ["database or disk is full"]
    assert rows_on_disk(path) == 0


async def test_delivery_records_alone_are_committed_a_moment_later(db: Db) -> None:
    path, store, commits = db
    async with trio.open_nursery() as nursery:
        await nursery.start(commits.run)
        with store.deferred():
            store.enqueue([message(1)])
        started = trio.current_time()
        await until(lambda: rows_on_disk(path) == 1, within=5)
        assert trio.current_time() - started < RECORDS_WAIT + 1  # the window a crash could undo
        nursery.cancel_scope.cancel()


class CountingCommits:
    """A connection that counts its commits (each is an fsync)."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real
        self.commits = 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self.commits += sql == "COMMIT"
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_records_made_between_paced_pushes_ride_on_the_next_push_commit(db: Db) -> None:
    # Messages one at a time, as Synapse pushes them: each push's sends are answered, their
    # delivery records wait, and the next push's commit takes them along: one fsync per push,
    # not one for the push and another for its records.
    path, store, commits = db
    counting = CountingCommits(store.conn)
    store.conn = counting  # type: ignore[assignment]
    pushes = 10
    async with trio.open_nursery() as nursery:
        await nursery.start(commits.run)
        started = trio.current_time()
        for n in range(pushes):
            with store.deferred():
                store.enqueue([message(n)])  # the push
            await commits.durable()  # answered: on disk
            (sent,) = store.pending_actions("ig", "!r:ig")
            with store.deferred():
                store.finish(sent, "done")  # its send was answered: the delivery record
            # The next push comes 5 ms later (200 messages/s). A timer as the input's pace, not
            # a wait for an event.
            await trio.sleep(0.005)
        # One commit per push, and one per RECORDS_WAIT for what no push took (on a slow
        # machine the loop outlasts a few of those). Before, it was one more per push.
        ticks = int((trio.current_time() - started) / RECORDS_WAIT) + 1
        assert counting.commits <= pushes + ticks
        # Then the bridge is idle: the last records are on disk a moment later.
        await until(lambda: rows_on_disk(path, "done") == pushes, within=5)
        nursery.cancel_scope.cancel()
    store.conn = counting.real


async def test_a_loop_that_is_never_idle_cannot_hold_back_an_answer(db: Db) -> None:
    path, store, commits = db

    async def busy() -> None:
        while True:
            await trio.lowlevel.checkpoint()  # always runnable: the loop is never idle

    async with trio.open_nursery() as nursery:
        nursery.start_soon(busy)
        with store.deferred():
            store.enqueue([message(1)])
        started = trio.current_time()
        with trio.fail_after(5):
            await commits.durable()
        assert trio.current_time() - started < MAX_WAIT + 0.5
        assert rows_on_disk(path) == 1
        nursery.cancel_scope.cancel()


def test_records_are_committed_after_a_bounded_number_even_without_a_committer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    store = Store(path)
    for n in range(MAX_DEFERRED - 1):
        with store.deferred():
            store.enqueue([message(n)])
    assert rows_on_disk(path) == 0
    with store.deferred():
        store.enqueue([message(MAX_DEFERRED)])
    assert rows_on_disk(path) == MAX_DEFERRED  # a crash now could take back none of them
    assert store.deferred_epoch is None
    store.close()


def test_the_bound_never_commits_inside_an_open_deferred_block(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = Store(path)
    with store.deferred():
        for n in range(MAX_DEFERRED + 1):
            with store.deferred():
                store.enqueue([message(n)])
        assert rows_on_disk(path) == 0  # the outer block is not done: nothing half-written
    assert rows_on_disk(path) == MAX_DEFERRED + 1  # done, and over the bound: committed
    store.close()


async def test_a_failed_commit_at_the_bound_loses_the_batch_but_raises_into_no_writer(
    db: Db,
) -> None:
    path, store, commits = db
    real = store.conn
    store.conn = FailingCommits(real)  # type: ignore[assignment]
    for n in range(MAX_DEFERRED):  # the last block's exit commits, and the commit fails
        with store.deferred():
            store.enqueue([message(n)])
    store.conn = real
    assert rows_on_disk(path) == 0
    assert store.pending_actions("ig", "!r:ig") == []  # rolled back here too
    with pytest.raises(StoreError, match="rolled back"):
        await commits.durable()  # a push whose writes were in that batch is refused


async def test_another_commit_that_carries_the_push_along_is_enough(db: Db) -> None:
    path, store, commits = db

    async def another_task_commits() -> None:
        with store.transaction():
            store.enqueue([message(2)])

    async with trio.open_nursery() as nursery:
        with store.deferred():
            store.enqueue([message(1)])
        nursery.start_soon(another_task_commits)
        await commits.durable()
    assert rows_on_disk(path) == 2


async def test_a_late_done_mark_after_a_failed_commit_leaves_the_next_action_alone(
    db: Db,
) -> None:
    _, store, commits = db
    with store.deferred():
        store.enqueue([message(1)])
    (sent,) = store.pending_actions("ig", "!r:ig")  # a worker takes it and sends it
    real = store.conn
    store.conn = FailingCommits(real)  # type: ignore[assignment]
    with pytest.raises(StoreError):
        await commits.durable()  # the push's commit fails: its row is gone
    store.conn = real
    with store.transaction():
        store.enqueue([message(2)])  # the next action may get the same row id
    (queued,) = store.pending_actions("ig", "!r:ig")
    assert queued.id == sent.id  # SQLite reuses it, which is the hazard
    with store.deferred():
        assert not store.finish(sent, "done")  # the worker's answer came back late
    assert [i.action.content["body"] for i in store.pending_actions("ig", "!r:ig")] == ["m2"]


async def test_a_push_through_the_reconciler_is_on_disk_when_it_is_answered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    store = Store(path)
    store.sync_config_portals([{"wa": ROOM, "ig": "!ig-room"}])
    inbound = Inbound(store, {"wa": WA, "ig": IG}, derive_key(b"k" * 32),
                      wake=lambda n, rooms: None)
    commits = GroupCommit(store)
    # Not suspect, so no timeline is read: no homeserver is needed.
    no_homeservers: Any = dict.fromkeys(("wa", "ig"))
    reconciler = Reconciler(store, no_homeservers, inbound, store.portals, commits=commits)
    await reconciler.push("wa", "1", b'{"events": [1]}', [text(1)])
    assert rows_on_disk(path) == 1  # answered now: on disk
    real = store.conn
    store.conn = FailingCommits(real)  # type: ignore[assignment]
    with pytest.raises(StoreError):  # the appservice answers 500, and Synapse retries
        await reconciler.push("wa", "2", b'{"events": [2]}', [text(2)])
    store.conn = real
    await reconciler.push("wa", "2", b'{"events": [2]}', [text(2)])  # the retry lands
    assert rows_on_disk(path) == 2
    store.close()


async def test_a_command_whose_push_was_lost_runs_once_when_pushed_again(db: Db) -> None:
    _, store, commits = db
    ran: list[str] = []

    async def bot(task: BotTask) -> None:
        ran.append(task.data["body"])

    # A homeserver never called: a command needs none, the bot answers it.
    unused = Homeserver(httpx.AsyncClient(base_url="http://ig.invalid"), "ig.test")
    worker = DeliveryWorker(IG, {"ig": unused}, {"ig": IG}, store, derive_key(b"k" * 32),
                            bot=bot)
    command = BotTask("ig", "!dm", "command", {"body": "!tb help"}, "tb1command", "$c")
    with store.deferred():
        store.enqueue([command])  # a pushed command, not committed yet
    (item,) = store.pending_actions("ig", "!dm")  # the worker reads it at once
    real = store.conn
    store.conn = FailingCommits(real)  # type: ignore[assignment]
    with pytest.raises(StoreError):
        await commits.durable()  # the push's commit fails: answered 500
    store.conn = real
    await worker._deliver(item, worker._losses)  # the worker gets to it after the failure
    assert ran == []  # not run: the homeserver will push it again
    with store.transaction():
        store.enqueue([command])  # the homeserver's retry
    (again,) = store.pending_actions("ig", "!dm")
    await worker._deliver(again, worker._losses)
    assert ran == ["!tb help"]  # once
    await unused.http.aclose()


def test_the_idle_wait_is_trios_own_not_a_lookalike() -> None:
    # Taken from trio's core, not trio.testing (which imports pytest): the same function.
    from bridge import commits

    assert commits.wait_all_tasks_blocked is trio.testing.wait_all_tasks_blocked
