"""Group commit: many writes share one fsync, taken when the bridge has nothing else to run.

A pushed transaction is answered only once what it queued is on disk (invariant 1). Committing
as soon as it is written would put an fsync between the push and the sends it asks for. So the
push's writes are deferred (`Store.deferred`), the delivery workers are woken and put their
sends on the wire, and the commit is taken at the first moment at which no task can run: the
sends are out, waiting for answers, while the disk syncs. Whatever else was written by then
(other networks' pushes, delivery records) shares that fsync. Only then is the push answered.
When every worker the push woke was busy already, its sends cannot leave sooner, and the commit
is taken at once: answered sooner, the homeserver pushes its next transaction sooner.

Why not wait a fixed few milliseconds for company, as group commit often does: a trio timer that
fires costs about 0.1 ms of CPU on these machines, as much as the fsync it would save, and it
delays every answer by its length. Waiting for the loop to be idle
(trio's `wait_all_tasks_blocked`, public as `trio.testing.wait_all_tasks_blocked`) costs a tenth
of that.

Delivery records alone need no haste (lost to a crash, their actions go again with the same
transaction ids, which the homeserver recognises): they are committed by the next push's commit,
RECORDS_WAIT after they began to wait, or after `store.MAX_DEFERRED` of them. While messages come
one at a time (Synapse's way, or 200 a second) they ride on the next push's commit instead of
taking an fsync of their own. That costs one timer per RECORDS_WAIT while writes wait, whatever
their number, and none while the bridge is idle.
"""

from __future__ import annotations

import logging
import sqlite3

import trio

try:
    # The function trio.testing re-exports, taken from where it lives: importing trio.testing
    # imports pytest too wherever pytest is installed (7 MB of RSS and 80 ms at every start).
    from trio._core import wait_all_tasks_blocked  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - a trio that moved it
    from trio.testing import wait_all_tasks_blocked

from bridge.store import Store, StoreError

__all__ = ["MAX_WAIT", "RECORDS_WAIT", "GroupCommit", "wait_all_tasks_blocked"]

log = logging.getLogger(__name__)

# Seconds that delivery records may wait for a push's commit before they are committed alone.
# They used to be committed at the first millisecond of idleness, which at 200 pushes/s meant an
# fsync of their own after every push: twice the flushes (docs/performance.md, item 31). (Not an
# idle cushion this long: trio finds the loop idle only while no deadline falls within the
# cushion, and any tick that frequent would then hold them back for good.) A second, not less:
# under a flood against Synapse a push's commit comes every second or so (bridge/pacing.py), and
# records committed alone each quarter second cost a wake-up and an fsync of their own (item 44).
# What a crash takes back is a second of records at most: those actions go again, with the same
# transaction ids.
RECORDS_WAIT = 1.0
# A push's answer waits at most this long for an idle moment; under a load that never leaves
# the loop idle it commits anyway, so an answer cannot starve.
MAX_WAIT = 0.01


class GroupCommit:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._due = trio.Event()
        store.on_deferred(self._waiting)

    def _waiting(self) -> None:
        self._due.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit deferred writes that nobody waits for, RECORDS_WAIT after they began to wait
        (unless a push's commit took them first)."""
        task_status.started()
        while True:
            await self._due.wait()
            # A timer, not a wait for an event: the writes' time to find company. Writes that
            # begin meanwhile set the event already set, and go with this commit.
            await trio.sleep(RECORDS_WAIT)
            self._due = trio.Event()
            try:
                self.store.commit_deferred()
            except sqlite3.Error as exc:
                # The daemon keeps running: the actions whose records were lost go again.
                log.error("could not commit delivery records (%s); their actions will be sent "
                          "again, with the same transaction ids", exc)

    async def durable(self, *, after_sends: bool = True) -> None:
        """Return once the caller's deferred writes, made just before, are on disk; raise
        StoreError if they were rolled back instead (a failing disk), so that the push is not
        acknowledged. With `after_sends`, the commit waits for the moment no task can run (the
        sends are out); without (they queue behind others anyway), it is taken at once."""
        # Called with no await since the caller's writes: the latest deferred transaction is
        # theirs, whether it is still open, committed already, or lost.
        epoch = self.store.latest_deferred
        if self.store.deferred_epoch == epoch:
            if after_sends:
                with trio.move_on_after(MAX_WAIT):
                    await wait_all_tasks_blocked()
            if self.store.deferred_epoch == epoch:
                try:
                    self.store.commit_deferred()
                except sqlite3.Error as exc:
                    raise StoreError(f"could not commit a pushed transaction: {exc}") from exc
        if self.store.deferred_lost(epoch):
            raise StoreError("a pushed transaction was rolled back with a failed commit")
