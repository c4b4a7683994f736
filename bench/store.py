"""The store's share of a relayed message, without HTTP or trio: a text message pushed from wa
into a three-network portal, taken in (`Inbound.take_transaction`, deferred), its two sends'
delivery records written (event map, outbox row done), then the commit (durability full), as
the daemon does it for a batch-1 push. CPU per push of each step (process time), medians of
interleaved rounds, and the WAL frames (pages: 2 KiB, or a variant's size) and KiB each push's
commits write.

Variants change the schema or the store after it is opened, to weigh a change before making it:
  current   the store as it is
  v3index   the outbox's index before schema v4: (network, state, room, id) over every row
  notxn     without the outbox's unique transaction-id index
  norec     without the per-push transaction record
  rowidless the seen events, transaction records and event map as WITHOUT ROWID tables
  pageNk    pages of N KiB instead of the store's 2 (page4k: SQLite's default, a store made
            before item 40 of docs/performance.md), set by a VACUUM after the store opens
Joined with "+" (e.g. notxn+norec).

    .venv/bin/python bench/store.py [--pushes 3000] [--before 10000] [--rounds 5]
                                    [--variants current,v3index]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.core.ghosts import derive_key
from bridge.core.model import Network
from bridge.inbound import Inbound
from bridge.store import OutboxItem, Store

NETWORKS = {
    "wa": Network("wa", "WhatsApp", "wa.test", "phone", "tribridge", "_tb_", False),
    "ig": Network("ig", "Instagram", "ig.test", "handle", "tribridge", "_tb_", True),
    "fbm": Network("fbm", "Messenger", "fbm.test", "email", "tribridge", "_tb_", True),
}
ROOMS = {"wa": "!wa:wa.test", "ig": "!ig:ig.test", "fbm": "!fbm:fbm.test"}
CHECKPOINT = 50  # pushes between two counts of the WAL's frames (about 800 of them)


def wal_frames(wal: Path, page: int = 4096) -> float:
    """Frames in a WAL file: a 32-byte header, then per frame a 24-byte header and a page."""
    size = wal.stat().st_size
    return (size - 32) / (page + 24) if size else 0.0


def apply(store: Store, variant: str) -> None:
    conn = store.conn
    for part in variant.split("+"):
        if part == "current":
            continue
        if part == "v3index":
            conn.execute("DROP INDEX outbox_pending")
            conn.execute("CREATE INDEX idx_outbox_network_state_room_id_id "
                         "ON outbox (network, state, room_id, id)")
        elif part == "notxn":
            conn.execute("DROP INDEX idx_outbox_txn_id_network")
        elif part == "norec":
            store.record_transaction = lambda *args: None  # type: ignore[method-assign]
        elif part == "rowidless":
            for table in ("seen_events", "transactions", "event_map"):
                sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?",
                                   (table,)).fetchone()[0]
                conn.execute(f"DROP TABLE {table}")  # empty yet: nothing is lost
                conn.execute(sql.rstrip() + " WITHOUT ROWID")
            conn.execute("CREATE INDEX idx_event_map_dst_network_dst_event "
                         "ON event_map (dst_network, dst_event)")
        elif part.startswith("page") and part.endswith("k") and part[4:-1].isdigit():
            # A smaller page: an index insertion dirties less, a big table's tree is deeper.
            conn.execute("PRAGMA journal_mode = DELETE")  # VACUUM resizes pages only so
            conn.execute(f"PRAGMA page_size = {int(part[4:-1]) * 1024}")
            conn.execute("VACUUM")
            conn.execute("PRAGMA journal_mode = WAL")
        else:
            raise SystemExit(f"bench/store.py: no variant {part!r} (see --help)")


def run(variant: str, pushes: int, before: int) -> tuple[float, float, float, float, float]:
    """(take, records, commit) µs of CPU per push, WAL frames and KiB per push."""
    with tempfile.TemporaryDirectory() as workdir:
        store = Store(Path(workdir) / "t.db")
        store.sync_config_portals([ROOMS])
        apply(store, variant)
        handed: list[OutboxItem] = []

        def wake(network: str, rooms: Mapping[str, Sequence[OutboxItem] | None]) -> None:
            for items in rooms.values():
                handed.extend(items or ())

        inbound = Inbound(store, NETWORKS, derive_key(b"k" * 32), wake=wake)
        take = records = commit = 0.0
        frames = 0.0
        wal = Path(workdir) / "t.db-wal"
        page = store.conn.execute("PRAGMA page_size").fetchone()[0]
        for n in range(before + pushes):
            if n >= before and (n - before) % CHECKPOINT == 0:
                # The frames written since the last look, counted; then the WAL starts over, as
                # SQLite's own checkpoint (every 1,000 pages) keeps it small in the daemon.
                # Outside the timed steps.
                if n == before:
                    store.conn.execute("PRAGMA wal_autocheckpoint = 0")
                else:
                    frames += wal_frames(wal, page)
                store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            event: dict[str, Any] = {
                "type": "m.room.message", "event_id": f"${n:08d}AbCdEfGhIjKlMnOpQrStUvWxYz",
                "room_id": ROOMS["wa"], "sender": "@+15551234567:wa.test",
                "content": {"msgtype": "m.text", "body": f"message number {n}"},
            }
            body = json.dumps({"events": [event]}).encode()
            handed.clear()
            t0 = time.process_time()
            inbound.take_transaction("wa", str(n), body, [event], defer=True)
            t1 = time.process_time()
            if len(handed) != 2:
                raise SystemExit(f"bench/store.py: push {n} queued {len(handed)} sends, not 2")
            for item in handed:  # the sends were answered: their records
                with store.deferred():
                    store.map_event("wa", ROOMS["wa"], event["event_id"], item.action.network,
                                    item.action.room_id, f"$copy{n}{item.action.network}")
                    store.finish(item, "done")
            t2 = time.process_time()
            store.commit_deferred()
            t3 = time.process_time()
            if n >= before:
                take, records, commit = take + t1 - t0, records + t2 - t1, commit + t3 - t2
        frames += wal_frames(wal, page)
        store.close()
    return (take / pushes * 1e6, records / pushes * 1e6, commit / pushes * 1e6, frames / pushes,
            frames * page / 1024 / pushes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pushes", type=int, default=3000, help="pushes measured")
    parser.add_argument("--before", type=int, default=10_000,
                        help="pushes taken first, so that the tables are not empty")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default="current,v3index")
    args = parser.parse_args()
    variants = args.variants.split(",")
    results: dict[str, list[tuple[float, float, float, float, float]]] = {v: [] for v in variants}
    for round_ in range(args.rounds):
        order = variants[round_ % len(variants):] + variants[:round_ % len(variants)]
        for variant in order:
            results[variant].append(run(variant, args.pushes, args.before))
    print(f"{args.pushes:,} pushes after {args.before:,}, medians of {args.rounds} rounds "
          "(µs of CPU per push; WAL frames and KiB per push)")
    print("| variant | take | delivery records | commit | total | vs first | frames | KiB |")
    print("|---|---|---|---|---|---|---|---|")
    first = None
    for variant in variants:
        take, recs, comm, frames, kib = (statistics.median(r[i] for r in results[variant])
                                         for i in range(5))
        total = take + recs + comm
        first = first or total
        print(f"| {variant} | {take:.0f} | {recs:.0f} | {comm:.0f} | {total:.0f} | "
              f"{total / first:.2f}x | {frames:.1f} | {kib:.0f} |")


if __name__ == "__main__":
    main()
