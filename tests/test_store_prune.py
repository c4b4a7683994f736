"""Pruning: finished actions and transaction records past bridge.history_days are deleted, and
nothing else: pending actions, each network's newest transaction, seen events, the event map."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from bridge import housekeeping
from bridge.housekeeping import DAY, EVERY, FIRST_PASS, prune_forever, prune_pass
from bridge.metrics import Metrics
from bridge.store import Store
from bridge.store.prune import Pruned, Pruner

from .rigs import until
from .test_delivery import FailingCommit
from .test_store import message

NOW = time.time()
OLD = NOW - 10 * DAY  # past a week's history
CUT = NOW - 7 * DAY


def queue(store: Store, numbers: range, *, at: float, finish: str | None = "done") -> None:
    """Queue messages `numbers` as if at `at`, finished then too (or left pending)."""
    with store.transaction():
        written = store.enqueue([message(n) for n in numbers])
        assert written is not None
        for item in written:
            if finish is not None:
                store.finish(item, finish)
            store.conn.execute("UPDATE outbox SET created_at = ?, updated_at = ? WHERE id = ?",
                               (at, at, item.id))


def record(store: Store, network: str, txn: str, *, at: float) -> None:
    with store.transaction():
        store.record_transaction(network, txn, "digest")
        store.conn.execute("UPDATE transactions SET received_at = ? WHERE network = ? AND "
                           "txn_id = ?", (at, network, txn))


def bodies(store: Store) -> list[str]:
    rows = store.conn.execute("SELECT src_event FROM outbox ORDER BY id").fetchall()
    return [row[0] for row in rows]


def run_pass(store: Store, before: float = CUT, limit: int = 1000) -> tuple[Pruner, int]:
    pruner = Pruner(store, ["wa", "ig", "fbm"])
    pruner.start(before)
    steps = 1
    while pruner.step(limit):
        steps += 1
    return pruner, steps


def test_finished_actions_past_the_history_go_and_everything_else_stays(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    queue(store, range(0, 3), at=OLD)  # delivered 10 days ago
    queue(store, range(3, 4), at=OLD, finish="failed")
    queue(store, range(4, 6), at=OLD, finish=None)  # still pending after 10 days (an outage)
    queue(store, range(6, 8), at=NOW - DAY)  # delivered yesterday
    queue(store, range(8, 9), at=NOW, finish=None)
    with store.transaction():
        store.mark_event_seen("wa", "$e0", "!src")
        store.map_event("wa", "!src", "$e0", "ig", "!r:ig", "$copy0")
    pruner, _ = run_pass(store)
    assert pruner.pruned.actions == 4
    assert bodies(store) == ["$e4", "$e5", "$e6", "$e7", "$e8"]
    # Where did it get to: the old one is not known any more, yesterday's still is.
    assert store.delivery_status("wa", "$e0") == []
    assert [s.state for s in store.delivery_status("wa", "$e6")] == ["done"]
    # The old pending ones still go out, in order.
    assert [i.action for i in store.pending_actions("ig", "!r:ig")] == [
        message(4), message(5), message(8)]
    # Dedupe and the event map stay: the event is not taken in twice, a reply still maps.
    assert store.event_seen("wa", "$e0")
    assert store.mapped_event("wa", "$e0", "ig") == "$copy0"


def test_old_transaction_records_go_but_each_networks_newest_stays(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    for n in range(5):
        record(store, "wa", f"w{n}", at=OLD)
    record(store, "ig", "i0", at=OLD)  # ig has been silent for ten days
    record(store, "wa", "w5", at=NOW)
    pruner, _ = run_pass(store)
    assert pruner.pruned.transactions == 5
    rows = store.conn.execute("SELECT network, txn_id FROM transactions ORDER BY rowid")
    assert rows.fetchall() == [("ig", "i0"), ("wa", "w5")]
    # What the gap check reads at the next start is unchanged.
    assert (store.last_transaction("wa"), store.last_transaction("ig")) == ("w5", "i0")


def test_a_newest_record_lost_with_a_failed_commit_does_not_expose_the_one_before(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "t.db")
    for n in range(4):
        record(store, "wa", f"w{n}", at=OLD)
    with store.deferred():  # a push's record, waiting for its commit
        store.record_transaction("wa", "w4", "digest")
    pruner = Pruner(store, ["wa"])
    pruner.start(CUT)  # sees w4 as wa's newest
    real = store.conn
    store.conn = FailingCommit(real)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        store.commit_deferred()  # the disk fails: w4 is gone, w3 is the newest again
    store.conn = real
    while pruner.step():
        pass
    assert store.last_transaction("wa") == "w3"


def test_a_pass_goes_in_small_commits_and_stops_at_the_first_young_row(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    queue(store, range(0, 25), at=OLD)
    queue(store, range(25, 30), at=NOW)
    queue(store, range(30, 31), at=OLD)  # after a young one (the clock was set back): not read
    for n in range(25):
        record(store, "wa", f"w{n}", at=OLD)
    pruner, steps = run_pass(store, limit=10)
    assert (pruner.pruned.actions, pruner.pruned.transactions) == (25, 24)
    assert steps == 3  # 10 + 10 + 5 rows of each table, then the young row ends the walk
    assert bodies(store) == [f"$e{n}" for n in range(25, 31)]
    _, steps = run_pass(store, limit=10)
    assert steps == 1  # a second pass reads one batch and finds nothing


def test_a_failed_commit_deletes_nothing_and_the_next_pass_does_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    queue(store, range(0, 3), at=OLD)
    real = store.conn
    store.conn = FailingCommit(real)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        run_pass(store)
    store.conn = real
    assert len(bodies(store)) == 3
    pruner, _ = run_pass(store)
    assert pruner.pruned.actions == 3
    assert bodies(store) == []


async def test_pruning_starts_soon_after_the_start_then_hourly_with_the_history_of_the_moment(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = Store(tmp_path / "t.db")
    metrics = Metrics()
    days = [7]
    queue(store, range(0, 2), at=OLD)
    queue(store, range(2, 3), at=NOW - 3 * DAY)
    passes: list[float] = []  # when each pass began (virtual time)

    async def timed_pass(pruner: Pruner, before: float, metrics: Metrics) -> Pruned:
        passes.append(trio.current_time())
        return await prune_pass(pruner, before, metrics)

    monkeypatch.setattr(housekeeping, "prune_pass", timed_pass)
    caplog.set_level(logging.INFO, "bridge.housekeeping")
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        nursery.start_soon(prune_forever, store, ["wa", "ig"], lambda: days[0], metrics)
        await until(lambda: len(bodies(store)) == 1, within=FIRST_PASS + 5)
        assert passes and passes[0] - started >= FIRST_PASS  # the catch-up reads go first
        assert "pruned 2 finished actions and 0 transaction records" in caplog.text
        days[0] = 2  # a reload shortens the history: the next pass takes the 3-day-old one
        await until(lambda: not bodies(store), within=EVERY + 5)
        nursery.cancel_scope.cancel()
    assert len(passes) >= 2
    assert passes[1] - passes[0] >= EVERY, f"the second pass came {passes[1] - passes[0]:g} s on"
    rendered = metrics.render().decode()
    assert 'tribridge_pruned_rows_total{table="outbox"} 3.0' in rendered


async def test_a_pass_lets_others_run_between_its_commits(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    queue(store, range(0, 30), at=OLD)
    progress: list[int] = []

    async def watcher() -> None:
        while True:  # counts the rows left at every turn it gets
            progress.append(len(bodies(store)))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher)
        pruned = await prune_pass(Pruner(store, ["wa"]), CUT, Metrics(), limit=10)
        nursery.cancel_scope.cancel()
    assert pruned.actions == 30
    assert any(0 < left < 30 for left in progress)  # another task ran part way through
