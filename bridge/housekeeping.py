"""The store's housekeeping while the daemon runs: finished actions and old transaction records
are deleted once past `bridge.history_days` (bridge/store/prune.py says what goes and what
stays), shortly after the start and then every hour."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import trio

from bridge.metrics import Metrics
from bridge.store.prune import BATCH, Pruned, Pruner
from bridge.store.store import Store

log = logging.getLogger(__name__)

FIRST_PASS = 10.0  # seconds after the start: the catch-up reads start first
EVERY = 3600.0  # seconds between passes
DAY = 86400.0


async def prune_forever(
    store: Store, networks: Iterable[str], history_days: Callable[[], int], metrics: Metrics,
    *, first: float = FIRST_PASS, every: float = EVERY,
) -> None:
    """Prune now and then, forever. `history_days` is read at each pass (a reload changes it)."""
    pruner = Pruner(store, networks)
    await trio.sleep(first)  # a timer, not a wait for an event
    while True:
        try:
            await prune_pass(pruner, time.time() - history_days() * DAY, metrics)
        except Exception:
            # A failing disk or a bug: the bridge works on without pruning; try again later.
            log.exception("could not prune the store; trying again in %.0f s", every)
        await trio.sleep(every)


async def prune_pass(pruner: Pruner, before: float, metrics: Metrics, limit: int = BATCH
                     ) -> Pruned:
    """Delete what finished before `before`, a batch (one short commit) at a time, letting
    pushes and sends in between."""
    pruner.start(before)
    while pruner.step(limit):
        await trio.lowlevel.checkpoint()
    pruned = pruner.pruned
    metrics.pruned.labels("outbox").inc(pruned.actions)
    metrics.pruned.labels("transactions").inc(pruned.transactions)
    if pruned.total:
        log.info("pruned %d finished actions and %d transaction records older than %s",
                 pruned.actions, pruned.transactions,
                 time.strftime("%Y-%m-%d %H:%M", time.localtime(before)))
    return pruned
