"""Two trees of tribridge side by side, measured at the same moments (issue 7's A/B).

`bench/perf.py --baseline` runs the two trees in turn; a shared 2-core machine drifts by 10-25%
between runs seconds apart, more than a change worth a few per cent. Here both daemons run at
once, each against a fake homeserver of its own (bench/fakehs.py), and every run pushes to both
together, with the same pushes: whatever the machine does meanwhile, it does to both. Per run
and relay, CPU per relayed send from /proc; the ratio B / A of each run; the median ratio over
the rounds (the trees swap fakes each round).

- batch 1: N messages back to back, one transaction in flight per relay, both measured over
  the same window: until the faster is done (the other's tail, run alone, is not counted);
- paced 200/s and paced 40/s (Synapse's pace): one message per transaction, the two relays'
  pushes half a period apart.

Each round the trees swap fakes, which of them is started first, and which is pushed to half
a period ahead; an even number of rounds balances them.

    .venv/bin/python bench/ab.py --a TREE --b TREE [--messages 2000] [--paced 600] [--rounds 6]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakehs import Fake, cpu_seconds
from perf import tribridge

from bridge.reconcile import SUSPECT_SECONDS

RUNS = ("batch 1", "paced 200/s", "paced 40/s")


async def together(fakes: list[Fake], pids: list[int], count: int, rate: float,
                   tag: str, lead: int) -> list[float]:
    """CPU ms per relayed send of each relay, both pushed to at once (`lead` a moment first).

    Back to back (no rate) the faster relay finishes first, and the other's tail would run on
    a machine left to it: both are measured over the same window instead, from the start to
    the moment the first is done, the other by the sends that had arrived by then."""
    out = [0.0, 0.0]
    cpu0 = [cpu_seconds(pid) for pid in pids]
    first_done = trio.Event()

    async def one(i: int) -> None:
        if rate and i != lead:
            # Half a period behind the other: their pushes alternate.
            await trio.sleep(1 / rate / 2)  # an offset, not a wait for an event
        figures = await fakes[i].run(count, 1, pids[i], rate=rate, tag=f"{tag}-{i}")
        if rate:
            out[i] = figures["cpu_ms_per_send"]
        elif not first_done.is_set():
            first_done.set()
            out[i] = (cpu_seconds(pids[i]) - cpu0[i]) * 1000 / fakes[i].expected
            other = 1 - i
            sends = len(fakes[other].arrivals)  # this run's arrivals so far (run clears them)
            out[other] = (cpu_seconds(pids[other]) - cpu0[other]) * 1000 / max(1, sends)

    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(one, i)
    return out


async def warm(fakes: list[Fake], pids: list[int], tag: str) -> None:
    """Outlast the window after a start in which every push reads timelines
    (bridge/reconcile.py), with caches filled and ghosts registered on the way."""
    started, n = trio.current_time(), 0
    while trio.current_time() - started < SUSPECT_SECONDS + 1:
        n += 1
        await together(fakes, pids, 100, 100.0, f"{tag}-warm{n}", lead=n % 2)


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="tribridge-ab-"))
    try:
        await rounds(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def rounds(args: argparse.Namespace, root: Path) -> None:
    trees = args.trees
    ratios: dict[str, list[float]] = {run: [] for run in RUNS}
    cpu: dict[str, list[list[float]]] = {run: [[], []] for run in RUNS}
    async with trio.open_nursery() as nursery:
        fakes = [Fake(), Fake()]
        for fake in fakes:
            await nursery.start(fake.serve)
        for n in range(args.rounds):
            # Each round the trees swap fakes (their ports), which starts first, and which is
            # pushed to half a period ahead of the other.
            flip = n % 2
            by_fake = [fakes[flip], fakes[1 - flip]]  # tree A's fake, tree B's
            for i in range(2):
                await trio.Path(root / f"r{n}-{i}").mkdir()
            first, second = (0, 1) if not flip else (1, 0)
            pids = [0, 0]
            async with tribridge(by_fake[first], root / f"r{n}-{first}",
                                 tree=trees[first]) as pid_first, \
                    tribridge(by_fake[second], root / f"r{n}-{second}",
                              tree=trees[second]) as pid_second:
                pids[first], pids[second] = pid_first, pid_second
                await warm(by_fake, pids, f"r{n}")
                for run, count, rate in (("batch 1", args.messages, 0.0),
                                         ("paced 200/s", args.paced, 200.0),
                                         ("paced 40/s", args.paced, 40.0)):
                    a, b = await together(by_fake, pids, count, rate, f"r{n}-{run}", lead=flip)
                    cpu[run][0].append(a)
                    cpu[run][1].append(b)
                    ratios[run].append(b / a)
            print(f"round {n + 1}: " + ", ".join(
                f"{run} {cpu[run][0][-1]:.3f} / {cpu[run][1][-1]:.3f}" for run in RUNS),
                file=sys.stderr, flush=True)
        nursery.cancel_scope.cancel()
    print(f"A = {trees[0]}\nB = {trees[1]}\n{args.rounds} rounds, both relays at once; CPU ms "
          "per relayed send (medians) and B / A (median of the rounds' ratios, and their range)")
    print("| run | A | B | B / A | range |")
    print("|---|---|---|---|---|")
    for run in RUNS:
        print(f"| {run} | {statistics.median(cpu[run][0]):.3f} | "
              f"{statistics.median(cpu[run][1]):.3f} | {statistics.median(ratios[run]):.3f}x | "
              f"{min(ratios[run]):.2f}-{max(ratios[run]):.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, metavar="TREE", help="a checkout (the baseline)")
    parser.add_argument("--b", required=True, metavar="TREE", help="another (the change)")
    parser.add_argument("--messages", type=int, default=2000, help="messages per batch-1 run")
    parser.add_argument("--paced", type=int, default=600, help="messages per paced run")
    parser.add_argument("--rounds", type=int, default=6, help="an even number")
    arguments = parser.parse_args()
    if arguments.rounds < 2 or arguments.rounds % 2:
        parser.error("--rounds: give an even number, so that each tree leads as often")
    arguments.trees = [Path(arguments.a).resolve(), Path(arguments.b).resolve()]
    trio.run(main, arguments)
