"""What a pruning pass costs (bridge/store/prune.py): a store with N finished actions and N/2
transaction records past the history, and as many young ones, pruned the way the daemon does it
(batches of 100 rows per table, one commit each, durability full). Prints the pass's CPU and
wall time, how long the longest batch held the loop (the daemon relays between batches, not
during one), and what a second pass (nothing left to delete) costs.

    .venv/bin/python bench/prune.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.store import Store
from bridge.store.prune import BATCH, Pruner

DAY = 86400.0
CHUNK = 50_000


def fill(store: Store, rows: int) -> None:
    """`rows` finished actions ten days old and `rows` from today; half as many transactions."""
    now = time.time()
    conn = store.conn
    with store.transaction():
        for age, tag in ((10 * DAY, "old"), (0.0, "new")):
            for first in range(0, rows, CHUNK):
                span = range(first, min(rows, first + CHUNK))
                conn.executemany(
                    "INSERT INTO outbox (network, room_id, kind, src_network, src_event, txn_id, "
                    "payload, state, attempts, created_at, updated_at) VALUES (?, ?, 'message', "
                    "'wa', ?, ?, ?, 'done', 0, ?, ?)",
                    (("ig", f"!r{i % 10_000}:ig", f"${tag}{i}", f"tb{tag}{i}",
                      '{"ghost":"_tb_wa_x","content":{"msgtype":"m.text","body":"hello"}}',
                      now - age, now - age) for i in span))
                conn.executemany(
                    "INSERT INTO transactions (network, txn_id, digest, received_at) "
                    "VALUES (?, ?, 'd', ?)",
                    ((("wa", "ig", "fbm")[i % 3], f"{tag}{i}", now - age) for i in span[::2]))


def run_pass(store: Store, batch: int) -> tuple[float, float, list[float], int]:
    """CPU s, wall s, each batch's wall ms, rows deleted."""
    pruner = Pruner(store, ["wa", "ig", "fbm"])
    cpu, wall = time.process_time(), time.perf_counter()
    pruner.start(time.time() - 7 * DAY)
    steps = []
    going = True
    while going:
        began = time.perf_counter()
        going = pruner.step(batch)
        steps.append((time.perf_counter() - began) * 1000)
    return (time.process_time() - cpu, time.perf_counter() - wall, steps,
            pruner.pruned.total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=BATCH, help="rows per table per commit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prune.db"
        store = Store(path)
        fill(store, args.rows)
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = path.stat().st_size
        cpu, wall, steps, deleted = run_pass(store, args.batch)
        again_cpu, again_wall, again_steps, _ = run_pass(store, args.batch)
        left = store.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        store.close()
    print(f"store: {args.rows:,} finished actions and {args.rows // 2:,} transaction records "
          f"past the history, as many young ones; {size / 2**20:.0f} MB")
    print("| pass | rows deleted | CPU s | wall s | batches | batch p50 ms | batch max ms |")
    print("|---|---|---|---|---|---|---|")
    print(f"| first | {deleted:,} | {cpu:.2f} | {wall:.2f} | {len(steps)} | "
          f"{statistics.median(steps):.1f} | {max(steps):.1f} |")
    print(f"| second | 0 | {again_cpu:.4f} | {again_wall:.4f} | {len(again_steps)} | "
          f"{statistics.median(again_steps):.1f} | {max(again_steps):.1f} |")
    print(f"left in the outbox: {left:,} (the young ones)")


if __name__ == "__main__":
    main()
