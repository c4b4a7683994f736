"""Forgetting what the bridge no longer needs: finished actions and old transaction records.

Every relayed message leaves an outbox row per target network, with the message's content, and
every push a transaction row. Once an action is delivered (or failed) its row only answers
"where did my message get to?" (`!tb status`, `tribridge db status`); a transaction row is
only a hint against retries, except each network's newest, which the gap check at start reads.
Kept forever, they would grow the store by gigabytes a year on a busy bridge, and keep a copy
of every message's content. `Pruner` deletes them once older than `bridge.history_days`.

What stays: pending actions (whatever their age), each network's newest transaction, the seen
events (a room's timeline is read back to its mark at every start, and those reads are
deduplicated by them) and the event map (edits, replies and redactions of old messages need it).

The work is done in batches of bounded size, each its own short commit, so that pushes and sends
go on between them. Rows are walked in insertion order from the oldest, and a walk stops at the
first row younger than the cut: no batch reads more than its size, however big the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bridge.store.store import Store

BATCH = 100  # rows per table per step: a few ms of deleting (bench/prune.py), then others run


@dataclass
class Pruned:
    actions: int = 0  # finished outbox rows deleted
    transactions: int = 0  # transaction records deleted

    @property
    def total(self) -> int:
        return self.actions + self.transactions


class Pruner:
    """One pass over the store: `start`, then `step` until it answers False."""

    def __init__(self, store: Store, networks: Iterable[str]) -> None:
        self.store = store
        self.networks = list(networks)
        self.pruned = Pruned()
        self._before = 0.0
        self._outbox_after = 0  # the outbox id up to which this pass has looked
        self._txn_after = 0  # the same for the transactions' rowids
        self._outbox_done = self._txn_done = True
        self._newest: set[int] = set()
        # A commit lost to a failing disk may take a network's newest record with it, and make
        # an older one the newest: look again before the next batch.
        self._stale = False
        store.on_lost(self._lost)

    def _lost(self) -> None:
        self._stale = True

    def start(self, before: float) -> None:
        """Begin a pass that deletes what finished (or arrived) before `before` (Unix time)."""
        self.pruned = Pruned()
        self._before = before
        self._outbox_after = self._txn_after = 0
        self._outbox_done = self._txn_done = False
        self._find_newest()

    def _find_newest(self) -> None:
        # Read at every start (the gap check): each network's newest record stays, however old.
        self._stale = False
        self._newest = set()
        for network in self.networks:
            newest = self.store.newest_transaction(network)
            if newest is not None:
                self._newest.add(newest[0])

    def step(self, limit: int = BATCH) -> bool:
        """Delete one batch (one commit); False once the pass has nothing left to look at."""
        if self._outbox_done and self._txn_done:
            return False
        if self._stale:
            self._find_newest()
        with self.store.transaction():
            if not self._outbox_done:
                self.pruned.actions += self._outbox_step(limit)
            if not self._txn_done:
                self.pruned.transactions += self._txn_step(limit)
        return not (self._outbox_done and self._txn_done)

    def _outbox_step(self, limit: int) -> int:
        rows = self.store.conn.execute(
            "SELECT id, state, created_at, updated_at FROM outbox WHERE id > ? ORDER BY id "
            "LIMIT ?",
            (self._outbox_after, limit),
        ).fetchall()
        doomed = []
        for row_id, state, created_at, updated_at in rows:
            if created_at is not None and created_at >= self._before:
                self._outbox_done = True  # rows are in the order they were queued
                break
            self._outbox_after = row_id
            if state != "pending" and updated_at is not None and updated_at < self._before:
                doomed.append((row_id,))
        else:
            self._outbox_done = len(rows) < limit
        self.store.conn.executemany("DELETE FROM outbox WHERE id = ?", doomed)
        return len(doomed)

    def _txn_step(self, limit: int) -> int:
        rows = self.store.conn.execute(
            "SELECT rowid, received_at FROM transactions WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (self._txn_after, limit),
        ).fetchall()
        doomed = []
        for rowid, received_at in rows:
            if received_at is not None and received_at >= self._before:
                self._txn_done = True
                break
            self._txn_after = rowid
            if rowid not in self._newest:
                doomed.append((rowid,))
        else:
            self._txn_done = len(rows) < limit
        self.store.conn.executemany("DELETE FROM transactions WHERE rowid = ?", doomed)
        return len(doomed)
