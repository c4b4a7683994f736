"""make bench, part 2: tribridge with a big store, and draining a big backlog (issue 7).

1. The same pushes as bench/perf.py against an empty store and against a store generated with
   --portals portals (three rooms each), --ghosts ghosts and --events relayed events (event map,
   seen events and finished outbox rows alike): start-up to READY, RSS, the catch-up's reads
   after READY, CPU per send, and the ratio to the empty store. Both bridges stay up, each on a
   fake of its own, and their runs alternate (--rounds of each; medians).
   With --read-delay, each timeline read is answered that many ms late, as by a Synapse that
   spends them on it: the catch-up then outlasts the start's window of distrust, and the
   window's final sweep reads again only the rooms the catch-up read inside it.
2. Backlog: --backlog actions queued while the daemon was stopped (as after an outage), then the
   daemon started: how fast they drain, against the steady-state rate, and RSS along the way.

    .venv/bin/python bench/scale.py [--portals 10000 --ghosts 100000 --events 1000000]
                                    [--read-delay MS]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fakehs import NETWORKS, SENDER, Fake, cpu_seconds, rss_mb  # noqa: E402
from perf import WARM_UP, tribridge  # noqa: E402

from bridge.core.actions import SendMessage, txn_id  # noqa: E402
from bridge.core.model import EventRef  # noqa: E402
from bridge.reconcile import SUSPECT_SECONDS  # noqa: E402
from bridge.store import Store  # noqa: E402

CHUNK = 50_000
NETS = [n for n, *_ in NETWORKS]


def generate(path: Path, portals: int, ghosts: int, events: int) -> float:
    """Fill a store as a busy bridge would have it; returns seconds taken."""
    started = time.monotonic()
    Store(path).close()  # migrated schema
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    db.execute("BEGIN")
    now = time.time()
    db.executemany("INSERT INTO portals (portal_id, origin, created_at) VALUES (?, ?, ?)",
                   ((f"p{i}", "command", now) for i in range(portals)))
    db.executemany("INSERT INTO portal_rooms (network, room_id, portal_id) VALUES (?, ?, ?)",
                   ((n, f"!r{i}{n}:{n}.localhost", f"p{i}") for i in range(portals) for n in NETS))
    # Every room read before, as in a store that has run.
    db.executemany("INSERT INTO room_marks (network, room_id, event_id, updated_at) "
                   "VALUES (?, ?, ?, ?)",
                   ((n, f"!r{i}{n}:{n}.localhost", f"$mark{i}{n}", now)
                    for i in range(portals) for n in NETS))
    db.executemany(
        "INSERT INTO ghosts (network, localpart, source_network, display_name, source_user) "
        "VALUES (?, ?, ?, ?, ?)",
        ((NETS[i % 3], f"_tb_{NETS[(i + 1) % 3]}_{i:016d}", NETS[(i + 1) % 3], f"Person {i}",
          f"@u{i}:{NETS[(i + 1) % 3]}.localhost") for i in range(ghosts)))
    db.executemany(
        "INSERT INTO ghost_rooms (network, localpart, room_id) VALUES (?, ?, ?)",
        ((NETS[i % 3], f"_tb_{NETS[(i + 1) % 3]}_{i:016d}",
          f"!r{i % portals}{NETS[i % 3]}:{NETS[i % 3]}.localhost") for i in range(ghosts)))
    db.executemany(
        "INSERT INTO profiles (network, user_id, display_name) VALUES (?, ?, ?)",
        ((NETS[i % 3], f"@u{i}:{NETS[i % 3]}.localhost", f"Person {i}") for i in range(ghosts)))
    for first in range(0, events, CHUNK):
        rows = range(first, min(events, first + CHUNK))
        db.executemany(
            "INSERT INTO seen_events (network, event_id, room_id, seen_at) VALUES (?, ?, ?, ?)",
            (("wa", f"$old{i}", f"!r{i % portals}wa:wa.localhost", now) for i in rows))
        db.executemany(
            "INSERT INTO event_map (src_network, src_event, dst_network, src_room, dst_room, "
            "dst_event, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (("wa", f"$old{i}", "ig", f"!r{i % portals}wa:wa.localhost",
              f"!r{i % portals}ig:ig.localhost", f"$copy{i}", now) for i in rows))
        db.executemany(
            "INSERT INTO outbox (network, room_id, kind, src_network, src_event, txn_id, payload, "
            "state, attempts, created_at, updated_at) VALUES (?, ?, 'message', 'wa', ?, ?, ?, "
            "'done', 0, ?, ?)",
            (("ig", f"!r{i % portals}ig:ig.localhost", f"$old{i}", f"tbold{i}",
              '{"ghost":"_tb_wa_x","content":{}}', now, now) for i in rows))
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()
    # Written with synchronous=OFF, the store's hundreds of MB are still on their way to the
    # disk: flushed now, or the bridge's first fsyncs (ext4 orders them after that data) pay
    # for the generator's writes, which a real store written over months never has pending.
    os.sync()
    return time.monotonic() - started


def queue_backlog(path: Path, fake: Fake, count: int) -> None:
    """`count` sends waiting in the outbox: count / 2 messages from wa, each for ig and fbm."""
    store = Store(path)
    with store.transaction():
        for first in range(0, count // 2, 5000):
            actions = []
            for i in range(first, min(count // 2, first + 5000)):
                event = f"$backlog{i}"
                ref = EventRef("wa", fake.rooms["wa"], event, f"@{SENDER}:wa.localhost")
                for net in ("ig", "fbm"):
                    actions.append(SendMessage(
                        net, fake.rooms[net], "_tb_wa_aaaaaaaaaaaaaaaa", ref,
                        {"msgtype": "m.text", "body": f"backlog-{i}"},
                        txn_id("wa", event, net, "message")))
            store.enqueue(actions)
    store.close()
    os.sync()  # as generate() does


async def timeline_reads(fake: Fake) -> dict[str, int]:
    """The daemon's timeline reads so far by why (catch-up, sweep, push, minute), from /metrics."""
    async with httpx.AsyncClient(trust_env=False) as http:
        text = (await http.get(f"http://127.0.0.1:{fake.bridge_port}/metrics")).text
    reads: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("tribridge_timeline_reads_total{"):
            labels, value = line.rsplit(" ", 1)
            why = labels.split('why="', 1)[1].split('"', 1)[0]
            reads[why] = reads.get(why, 0) + int(float(value))
    return reads


async def prepare(fake: Fake, pid: int) -> dict[str, Any]:
    """From READY to steady state: the catch-up, the warm-up, the window's final sweep."""
    started, cpu = trio.current_time(), cpu_seconds(pid)
    # The catch-up after start reads every portal room once (bridge/daemon.py): alone first
    # (no pushes), until no timeline read came for a second, so that its CPU per read can be
    # read and it is not counted as the sends' cost.
    quiet_since, reads = trio.current_time(), fake.reads
    with trio.fail_after(1800):  # 30,000 rooms took about 90 s here through httpx
        while trio.current_time() - quiet_since < 1.0 or not reads:
            await trio.sleep(0.1)  # polling the fake's counter, under the deadline above
            if fake.reads != reads:
                quiet_since, reads = trio.current_time(), fake.reads
    caught_up, cpu = quiet_since - started, cpu_seconds(pid) - cpu
    rounds = 0
    while not rounds or trio.current_time() - started < SUSPECT_SECONDS + 1:  # perf.measure
        rounds += 1
        await fake.run(WARM_UP, 1, pid, rate=100.0, tag=f"warm{rounds}")
    # A catch-up done inside the start's window of distrust is followed by the window's final
    # sweep, which reads every room once more (bridge/reconcile.py): let it finish too, or its
    # reads are counted as the sends' cost.
    quiet_since, swept = trio.current_time(), fake.reads
    with trio.fail_after(1800):
        while trio.current_time() - quiet_since < 1.0:
            await trio.sleep(0.1)  # polling the fake's counter, under the deadline above
            if fake.reads != swept:
                quiet_since, swept = trio.current_time(), fake.reads
    by_why = await timeline_reads(fake)
    return {"caught_up_s": caught_up, "reads": reads, "ms_per_read": cpu * 1000 / reads,
            "catch_up": by_why.get("catch-up", 0), "swept": by_why.get("sweep", 0)}


async def main(args: Any) -> None:
    root = Path(tempfile.mkdtemp(prefix="tribridge-scale-"))
    out: list[str] = []
    try:
        async with trio.open_nursery() as nursery, AsyncExitStack() as daemons:
            figures: dict[str, dict[str, Any]] = {}
            alive: dict[str, tuple[Fake, int]] = {}
            # Both bridges stay up, each on a fake of its own, and their runs alternate: the
            # two stores are compared minutes apart on a machine whose load drifts by more
            # than the 10% the comparison is about.
            for name in ("empty", "big"):
                fake = Fake(read_delay=args.read_delay / 1000)
                await nursery.start(fake.serve)
                workdir = root / name
                await trio.Path(workdir).mkdir()
                made = 0.0
                if name == "big":
                    made = generate(workdir / "state.db", args.portals, args.ghosts, args.events)
                clock = time.monotonic()
                pid = await daemons.enter_async_context(tribridge(fake, workdir))  # at READY
                took, rss_ready = time.monotonic() - clock, rss_mb(pid)
                runs = await prepare(fake, pid)
                size = sum(f.stat().st_size for f in workdir.glob("state.db*")) / 2 ** 20
                figures[name] = {"ready_s": took, "rss_ready": rss_ready, "runs": runs,
                                 "made_s": made, "db_mb": size}
                alive[name] = (fake, pid)
            for batch in (1, 50):
                tries: dict[str, list[dict[str, float]]] = {name: [] for name in alive}
                for n in range(args.rounds):
                    for name in (("empty", "big") if n % 2 == 0 else ("big", "empty")):
                        fake, pid = alive[name]
                        tries[name].append(await fake.run(args.messages, batch, pid))
                for name, got in tries.items():
                    figures[name]["runs"][f"batch {batch}"] = {
                        key: statistics.median(r[key] for r in got) for key in got[0]}
            await daemons.aclose()
            out.append(scale_table(figures, args))
            out.append(await backlog(alive["empty"][0], root / "backlog", args.backlog,
                                     figures["empty"]["runs"]["batch 50"]["sends_per_s"]))
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n\n".join(out))


def scale_table(figures: dict[str, dict[str, Any]], args: Any) -> str:
    e, b = figures["empty"], figures["big"]
    rows = [
        f"Big store: {args.portals:,} portals ({args.portals * 3:,} rooms), {args.ghosts:,} "
        f"ghosts, {args.events:,} event-map, seen-event and finished outbox rows "
        f"({b['db_mb']:.0f} MB, generated in {b['made_s']:.0f} s).",
        "",
        "| store | start to READY s | RSS at READY MB | catch-up after READY s | "
        "its CPU ms/read | catch-up reads | final sweep reads | CPU ms/send batch 1 | batch 50 "
        "| RSS after MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in (("empty", e), ("big", b)):
        runs = f["runs"]
        rows.append(f"| {name} | {f['ready_s']:.2f} | {f['rss_ready']:.0f} | "
                    f"{runs['caught_up_s']:.1f} ({runs['reads']:,} reads) | "
                    # A handful of reads over a second of idling says nothing per read.
                    + (f"{runs['ms_per_read']:.3f}" if runs["reads"] >= 100 else "-")
                    + f" | {runs['catch_up']:,} | {runs['swept']:,} | "
                    f"{runs['batch 1']['cpu_ms_per_send']:.3f} | "
                    f"{runs['batch 50']['cpu_ms_per_send']:.3f} | "
                    f"{runs['batch 50']['rss_mb']:.0f} |")
    ratio = [b["runs"][r]["cpu_ms_per_send"] / e["runs"][r]["cpu_ms_per_send"]
             for r in ("batch 1", "batch 50")]
    rows.append(f"| big / empty | | | | | | | {ratio[0]:.2f}x | {ratio[1]:.2f}x | |")
    return "\n".join(rows)


async def backlog(fake: Fake, workdir: Path, count: int, steady_rate: float) -> str:
    await trio.Path(workdir).mkdir()
    queue_backlog(workdir / "state.db", fake, count)
    fake.arrivals.clear()
    fake.expected = count
    fake._all_in = trio.Event()
    clock = time.monotonic()
    samples: list[tuple[float, int, float]] = []
    async with tribridge(fake, workdir) as pid:
        with trio.fail_after(max(120.0, count / 100)):
            while not fake._all_in.is_set():
                samples.append((time.monotonic() - clock, len(fake.arrivals), rss_mb(pid)))
                with trio.move_on_after(1.0):
                    await fake._all_in.wait()  # a sample a second until all arrived
        took = time.monotonic() - clock
    rss = [r for _, _, r in samples]
    rate = count / took
    lines = [f"Backlog: {count:,} sends queued before start; all delivered {took:.1f} s after "
             f"start: {rate:,.0f} sends/s ({rate / steady_rate:.2f}x the steady batch-50 rate of "
             f"{steady_rate:,.0f}/s). RSS min/max while draining: {min(rss):.0f}/{max(rss):.0f} "
             "MB.", "", "| s | delivered | RSS MB |", "|---|---|---|"]
    step = max(1, len(samples) // 8)
    for t, n, r in samples[::step]:
        lines.append(f"| {t:.0f} | {n:,} | {r:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--portals", type=int, default=10_000)
    parser.add_argument("--ghosts", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--read-delay", type=float, default=0.0, metavar="MS",
                        help="answer each timeline read this many ms late, as Synapse does")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each batch size per store, alternating between the stores")
    trio.run(main, parser.parse_args())
