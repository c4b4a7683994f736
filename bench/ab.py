"""Two trees of tribridge side by side, measured at the same moments (issue 7's A/B).

`bench/perf.py --baseline` runs the two trees in turn; a shared 2-core machine drifts by 10-25%
between runs seconds apart, more than a change worth a few per cent. Here both daemons run at
once, each against a fake homeserver of its own (bench/fakehs.py), and every run pushes to both
together, with the same pushes: whatever the machine does meanwhile, it does to both. Per run
and relay, CPU per relayed send from /proc; the ratio B / A of each run; the median ratio over
the rounds (the trees swap fakes each round).

- batch 1: N messages back to back, one transaction in flight per relay;
- paced 200/s and paced 40/s (Synapse's pace): one message per transaction, the two relays'
  pushes half a period apart.

    .venv/bin/python bench/ab.py --a TREE --b TREE [--messages 2000] [--paced 600] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakehs import Fake
from perf import tribridge

from bridge.reconcile import SUSPECT_SECONDS

RUNS = ("batch 1", "paced 200/s", "paced 40/s")


async def together(fakes: list[Fake], pids: list[int], count: int, rate: float,
                   tag: str) -> list[float]:
    """CPU ms per relayed send of each relay, both pushed to at once."""
    out = [0.0, 0.0]

    async def one(i: int) -> None:
        if rate:
            # Half a period behind the other: their pushes alternate.
            await trio.sleep(i / rate / 2)  # an offset, not a wait for an event
        figures = await fakes[i].run(count, 1, pids[i], rate=rate, tag=f"{tag}-{i}")
        out[i] = figures["cpu_ms_per_send"]

    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(one, i)
    return out


async def warm(fakes: list[Fake], pids: list[int], tag: str) -> None:
    # Past the window after a start in which every push reads timelines (bridge/reconcile.py).
    started, n = trio.current_time(), 0
    while trio.current_time() - started < SUSPECT_SECONDS + 1:
        n += 1
        await together(fakes, pids, 100, 100.0, f"{tag}-warm{n}")


async def main(args: Any) -> None:
    trees = args.trees
    ratios: dict[str, list[float]] = {run: [] for run in RUNS}
    cpu: dict[str, list[list[float]]] = {run: [[], []] for run in RUNS}
    root = Path(tempfile.mkdtemp(prefix="tribridge-ab-"))
    async with trio.open_nursery() as nursery:
        fakes = [Fake(), Fake()]
        for fake in fakes:
            await nursery.start(fake.serve)
        for n in range(args.rounds):
            # Each round the trees swap fakes (ports, and who is pushed to a moment first).
            order = [0, 1] if n % 2 == 0 else [1, 0]
            for i in range(2):
                await trio.Path(root / f"r{n}-{i}").mkdir()
            async with tribridge(fakes[order[0]], root / f"r{n}-0", tree=trees[0]) as pid_a, \
                    tribridge(fakes[order[1]], root / f"r{n}-1", tree=trees[1]) as pid_b:
                by_fake = [fakes[order[0]], fakes[order[1]]]
                pids = [pid_a, pid_b]
                await warm(by_fake, pids, f"r{n}")
                for run, count, rate in (("batch 1", args.messages, 0.0),
                                         ("paced 200/s", args.paced, 200.0),
                                         ("paced 40/s", args.paced, 40.0)):
                    a, b = await together(by_fake, pids, count, rate, f"r{n}-{run}")
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
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    arguments.trees = [Path(arguments.a).resolve(), Path(arguments.b).resolve()]
    trio.run(main, arguments)
