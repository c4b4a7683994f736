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

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bridge.store.store import Store

BATCH = 100  # rows per table per step: a few ms of deleting (bench/prune.py), then others run


@dataclass
class Pruned:
    actions: int = 0  # finished outbox rows deleted
    transactions: int = 0  # transaction records deleted

    @property
    def total(self) -> int:
        return self.actions + self.transactions


class _Walk:
    """One table read in rowid order from its oldest row, a batch at a time, up to the first
    row at or after the cut (rows are in the order they were written)."""

    def __init__(self, select: str, delete: str) -> None:
        # `select` answers (rowid, time written, ...) for rowids above ?, LIMIT ?
        self.select, self.delete = select, delete
        self.after = 0  # the rowid up to which this pass has looked
        self.done = True

    def restart(self) -> None:
        self.after, self.done = 0, False

    def step(self, store: Store, before: float, limit: int,
             doomed: Callable[[tuple[Any, ...]], bool]) -> int:
        """Delete the `doomed` rows of the next batch; how many."""
        rows = store.conn.execute(self.select, (self.after, limit)).fetchall()
        gone = []
        for row in rows:
            if row[1] is not None and row[1] >= before:
                self.done = True
                break
            self.after = row[0]
            if doomed(row):
                gone.append((row[0],))
        else:
            self.done = len(rows) < limit
        store.conn.executemany(self.delete, gone)
        return len(gone)


class Pruner:
    """One pass over the store: `start`, then `step` until it answers False."""

    def __init__(self, store: Store, networks: Iterable[str]) -> None:
        self.store = store
        self.networks = list(networks)
        self.pruned = Pruned()
        self._before = 0.0
        self._outbox = _Walk(
            "SELECT id, created_at, state, updated_at FROM outbox WHERE id > ? ORDER BY id "
            "LIMIT ?",
            "DELETE FROM outbox WHERE id = ?",
        )
        self._transactions = _Walk(
            "SELECT rowid, received_at FROM transactions WHERE rowid > ? ORDER BY rowid LIMIT ?",
            "DELETE FROM transactions WHERE rowid = ?",
        )
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
        self._outbox.restart()
        self._transactions.restart()
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
        if self._outbox.done and self._transactions.done:
            return False
        if self._stale:
            self._find_newest()
        before = self._before
        with self.store.transaction():
            if not self._outbox.done:
                # (id, created_at, state, updated_at): finished, and finished before the cut
                self.pruned.actions += self._outbox.step(
                    self.store, before, limit,
                    lambda row: row[2] != "pending" and row[3] is not None and row[3] < before)
            if not self._transactions.done:
                self.pruned.transactions += self._transactions.step(
                    self.store, before, limit, lambda row: row[0] not in self._newest)
        return not (self._outbox.done and self._transactions.done)
