"""make bench, part 1: tribridge's own cost beside the no-logic floor, on the fake homeserver.

Both relays run in turn against bench/fakehs.py in the same call, with the same pushes:

- batch 1 and batch 50: N messages pushed from wa, one transaction in flight, each relayed to ig
  and fbm. CPU per relayed send (from /proc), sends/s, RSS.
- paced: messages pushed one per transaction at 200/s, no backlog: latency from push to the
  relayed send's arrival, p50 and p99.
- batch 1 after a gap: batch 1 again, right after a skipped transaction id, which has tribridge
  distrust the pushes for a while and read timelines (bridge/reconcile.py); the relays without
  a store pay nothing for it.

tribridge runs with its default settings (durability full: a transaction is answered only after
its commit is on disk). The ratio rows are tribridge / floor and, with --calibrate, tribridge /
mautrix.

--calibrate also runs issue 7's two calibration relays (bench/httpx_relay.py: the floor with
httpx as its client; bench/mautrix_relay.py: a minimal mautrix-python relay) in the same call,
prints the issue's calibration table beside the figures measured here, and carries the issue's
CPU targets to this machine by each relay's factor.

    .venv/bin/python bench/perf.py [--messages 10000] [--paced 2000] [--rounds 3] [--calibrate]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fakehs import NETWORKS, Fake  # noqa: E402

from bridge.localnet.daemon import Daemon  # noqa: E402
from bridge.reconcile import SUSPECT_SECONDS  # noqa: E402

WARM_UP = 50  # messages before measuring: ghosts registered and joined, caches warm


async def wait_for_port(port: int, within: float = 10.0) -> None:
    """Until something listens on 127.0.0.1:`port` (a relay just started)."""
    with trio.fail_after(within):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)  # polling for the port under a deadline
                continue
            await stream.aclose()
            return


# The relays without logic, run as they are (bench/floor.py and the two calibration relays of
# issue 7's table, re-measured here: the table's absolute figures come from another machine).
# "+db": the same, with each transaction's events committed to SQLite (synchronous=FULL) before
# its sends (floor.py --db): the cost of durability alone, without tribridge's logic.
PLAIN = {"floor": "floor.py", "floor+db": "floor.py", "httpx": "httpx_relay.py",
         "httpx+db": "httpx_relay.py", "mautrix": "mautrix_relay.py"}
# Issue 7's calibration, CPU ms per relayed send at batch 1 and batch 50, and its targets.
CALIBRATION = {"mautrix": (0.59, 0.42), "httpx": (1.01, 1.04), "httpx+db": (1.26, 0.82),
               "floor": (0.17, 0.06)}
TARGETS = (0.45, 0.20)


@asynccontextmanager
async def plain(fake: Fake, relay: str, workdir: Path,
                extra: Sequence[str] = ()) -> AsyncIterator[int]:
    args = [sys.executable, str(ROOT / "bench" / PLAIN[relay]), "--listen", str(fake.bridge_port),
            *extra]
    if relay.endswith("+db"):
        await trio.Path(workdir).mkdir()
        args += ["--db", str(workdir / "floor.db")]
    for net_id, *_ in NETWORKS:
        args += ["--hs", f"{net_id}={fake.hs_tokens[net_id]}={fake.url(net_id)}="
                         f"{fake.rooms[net_id]}"]
    process = await trio.lowlevel.open_process(args)
    try:
        await wait_for_port(fake.bridge_port)
        yield process.pid
    finally:
        process.kill()
        await process.wait()


@asynccontextmanager
async def tribridge(fake: Fake, workdir: Path, bridge_extra: str = "",
                    tree: Path = ROOT) -> AsyncIterator[int]:
    daemon = Daemon(fake, workdir, tree)  # type: ignore[arg-type]  # the fake is a `net`
    daemon.bridge_extra = bridge_extra
    await daemon.start([fake.rooms])
    try:
        assert daemon.process is not None
        yield daemon.process.pid
    finally:
        code = await daemon.stop()
        if code != 0:
            print(daemon.log()[-3000:], file=sys.stderr)


async def measure(fake: Fake, pid: int, messages: int, paced: int,
                  profile: Path | None = None) -> dict[str, dict[str, float]]:
    # Warm up (ghosts registered and joined, caches filled), and outlast the window after a
    # start in which tribridge reads timelines before each push (bridge/reconcile.py).
    started, rounds = trio.current_time(), 0
    while trio.current_time() - started < SUSPECT_SECONDS + 1:
        rounds += 1
        await fake.run(WARM_UP, 1, pid, rate=100.0, tag=f"warm{rounds}")
    spy = None
    if profile is not None:
        # py-spy samples the relay while it works batch 1; its CPU is not the relay's.
        # Not waited for: it attaches in milliseconds, and the hot spots are shares of a run
        # that lasts seconds.
        spy = await trio.lowlevel.open_process(
            [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-f", "raw",
             "-r", "250", "--gil", "-o", str(profile)], stdout=subprocess.DEVNULL)
    one = await fake.run(messages, 1, pid)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        await spy.wait()
    return {
        "batch 1": one,
        "batch 50": await fake.run(messages, 50, pid),
        "paced 200/s": await fake.run(paced, 1, pid, rate=200.0),
        # Last, since the gap leaves pushes distrusted for GAP_SUSPECT_SECONDS: batch 1 right
        # after a skipped transaction id, the price of reading timelines in that window.
        "batch 1 after a gap": await fake.run(messages, 1, pid, gap=True),
    }


def hot_spots(profile: Path, top: int = 25) -> str:
    """The functions py-spy saw most, by own time and by time including callees."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1]
                  + ")" if " (" in f else f for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + n
    lines = [f"{samples} samples. Own time:"]
    for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / samples:5.1f}%  {name}")
    lines.append("Including callees:")
    for name, n in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / samples:5.1f}%  {name}")
    return "\n".join(lines)


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    rows = ["| run | relay | CPU ms/send | of it kernel | sends/s | p50 ms | p99 ms "
            "| push answered p50 ms | RSS MB |",
            "|---|---|---|---|---|---|---|---|---|"]
    order = ("floor", "floor+db", "httpx", "httpx+db", "mautrix", "baseline", "tribridge")
    for run in results["floor"]:
        for relay in [r for r in order if r in results]:
            r = results[relay][run]
            rows.append(f"| {run} | {relay} | {r['cpu_ms_per_send']:.3f} | "
                        f"{r['sys_ms_per_send']:.3f} | {r['sends_per_s']:,.0f} | "
                        f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                        f"{r['ack_p50_ms']:.2f} | {r['rss_mb']:.0f} |")
        t = results["tribridge"][run]
        for base in [b for b in ("floor", "floor+db", "mautrix") if b in results]:
            f = results[base][run]
            rows.append(f"| {run} | tribridge / {base} | "
                        f"{t['cpu_ms_per_send'] / f['cpu_ms_per_send']:.2f}x | | "
                        f"{t['sends_per_s'] / f['sends_per_s']:.2f}x | "
                        f"{t['p50_ms'] / f['p50_ms']:.1f}x | {t['p99_ms'] / f['p99_ms']:.1f}x "
                        "| | |")
    return "\n".join(rows)


def calibration(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Issue 7's calibration table beside the same relays measured here, and its CPU targets
    carried over by each relay's factor (here / there)."""
    runs = ("batch 1", "batch 50")
    rows = ["| relay | issue's ms/send (1 / 50) | here (1 / 50) | factor (1 / 50) |",
            "|---|---|---|---|"]
    factors: dict[str, list[float]] = {}
    for relay, there in CALIBRATION.items():
        if relay not in results:
            continue
        here = [results[relay][run]["cpu_ms_per_send"] for run in runs]
        factors[relay] = [h / t for h, t in zip(here, there, strict=True)]
        rows.append(f"| {relay} | {there[0]:.2f} / {there[1]:.2f} | {here[0]:.3f} / "
                    f"{here[1]:.3f} | {factors[relay][0]:.2f}x / {factors[relay][1]:.2f}x |")
    # Only the mautrix relay owes nothing to this project's code: floor.py and httpx_relay.py
    # run on our HTTP server (and floor.py on our client), so their factors mix the machine with
    # what this project changed since the issue was written.
    targets = [t * f for t, f in zip(TARGETS, factors["mautrix"], strict=True)]
    mine = [results["tribridge"][run]["cpu_ms_per_send"] for run in runs]
    return ("\n".join(rows) + "\n\nfloor and httpx run on this project's HTTP code, so only the "
            "mautrix factor is the machine's alone.\n"
            f"The targets ({TARGETS[0]} / {TARGETS[1]} ms per send), carried to this machine by "
            f"it: {targets[0]:.3f} / {targets[1]:.3f}; tribridge here: {mine[0]:.3f} / "
            f"{mine[1]:.3f} ms per send ({mine[0] / targets[0]:.2f}x / "
            f"{mine[1] / targets[1]:.2f}x the carried targets)")


async def one_round(fake: Fake, relay: str, workdir: Path, args: Any,
                    profile: Path | None) -> dict[str, dict[str, float]]:
    if relay in PLAIN:
        async with plain(fake, relay, workdir) as pid:
            return await measure(fake, pid, args.messages, args.paced)
    tree = Path(args.baseline) if relay == "baseline" else ROOT
    await trio.Path(workdir).mkdir()
    async with tribridge(fake, workdir, args.bridge_extra, tree) as pid:
        return await measure(fake, pid, args.messages, args.paced, profile)


def medians(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {run: {key: statistics.median(r[run][key] for r in rounds) for key in rounds[0][run]}
            for run in rounds[0]}


async def main(args: Any) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="tribridge-perf-"))
    relays = (["floor", "floor+db"] + (["httpx", "httpx+db", "mautrix"] if args.calibrate else [])
              + ["tribridge"]
              + (["baseline"] if args.baseline else []))
    rounds: dict[str, list[dict[str, dict[str, float]]]] = {relay: [] for relay in relays}
    report = ""
    try:
        fake = Fake()
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            for n in range(args.rounds):
                # The order turns each round, so that no relay always runs first or last on a
                # machine whose load drifts.
                for relay in relays[n % len(relays):] + relays[:n % len(relays)]:
                    profile = None
                    if args.profile and n == 0 and relay not in PLAIN:
                        profile = Path(args.profile + (".baseline" if relay == "baseline" else ""))
                    rounds[relay].append(await one_round(
                        fake, relay, workdir / f"{relay}{n}", args, profile))
                    if profile is not None and profile.exists():
                        title = "tribridge" if relay == "tribridge" else "the baseline tree"
                        report += f"\n\npy-spy, {title} during batch 1:\n" + hot_spots(profile)
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = {relay: medians(rounds[relay]) for relay in relays}
    print(f"\n{args.messages:,} messages per batch run from wa, each relayed to ig and fbm "
          f"(two sends); {args.paced:,} paced at 200/s. Medians of {args.rounds} round(s), "
          f"the relays' order turning each round.\n")
    print(table(results))
    if args.calibrate:
        print("\nIssue 7's calibration relays, measured in this call:\n")
        print(calibration(results))
    if report:
        print(report)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--paced", type=int, default=1000)
    parser.add_argument("--profile", metavar="FILE", default="",
                        help="py-spy tribridge's batch 1 into FILE (raw stacks) and summarise")
    parser.add_argument("--baseline", metavar="TREE", default="",
                        help="also run the tribridge of another checkout (e.g. a git worktree "
                             "of an older commit), for a before/after in the same call")
    parser.add_argument("--bridge-extra", default="", help="lines for tribridge's [bridge]")
    parser.add_argument("--calibrate", action="store_true",
                        help="also run issue 7's calibration relays (httpx, mautrix-python: "
                             "pip install -e '.[bench]') and carry its targets to this machine")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every relay this many times, interleaved; print medians")
    trio.run(main, parser.parse_args())
