"""The bridge's cost at Synapse's pace, against the fake homeserver (issue 7).

`bench/perf.py` pushes as fast as the relay answers, or 200 events/s, and its fake answers every
send at once. Against three real Synapses (`bench/relay.py`) a message comes every 25 ms or so,
each send is answered after 15-60 ms, and every relayed send comes back as a push of its own (an
appservice is pushed its own users' events): three pushes and two sends per message. This runs
the floor relay and tribridge, interleaved, at that pace on the fake:

- "paced 40/s": pushes of one event, 40 a second, sends answered at once;
- "as Synapse": the same, sends answered after 20 ms, and every relayed send pushed back;
- "flood as Synapse": messages come at 50/s, as many as the targets take, each push taking
  every message come since the last (one in flight), sends answered after 20 ms, echoes pushed
  back and gathered the same way: bench/relay.py's flood, where a backlog builds and the
  pushes gather (with "pushes per message", echoes included);
- "echo push": pushes of one event by the relay's own ghost, back to back (nothing to relay),
  CPU per push (warm: at Synapse's pace each costs more, for both relays).

CPU per relayed send (per push for echoes) from /proc; medians of --rounds rounds.

    .venv/bin/python bench/pace.py [--messages 600] [--rounds 3] [--profile FILE]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakehs import Fake, cpu_seconds
from perf import hot_spots, plain, tribridge

from bridge.http.client import LeanClient
from bridge.reconcile import SUSPECT_SECONDS

RATE = 40.0
# Messages/s of the flood: as many as the targets take (a send answered after 20 ms, one at a
# time per room), so that, as in bench/relay.py's flood through three Synapses, a backlog
# builds and the pushes gather.
FLOOD = 50.0
ANSWER_DELAY = 0.02
GHOST = "@_tb_ig_aaaaaaaaaaaaaaaa:wa.localhost"  # an echo: a send of tribridge's, pushed back


async def echo_pushes(fake: Fake, pid: int, count: int, tag: str) -> float:
    """CPU µs per push of one event the relay itself sent (nothing to do but answer)."""
    url = f"http://127.0.0.1:{fake.bridge_port}"
    async with LeanClient(url, {"Authorization": f"Bearer {fake.hs_tokens['wa']}"}) as client:
        cpu = cpu_seconds(pid)
        for i in range(count):
            event = {"type": "m.room.message", "room_id": fake.rooms["wa"], "sender": GHOST,
                     "event_id": f"$echo-{tag}-{i}", "origin_server_ts": int(time.time() * 1000),
                     "unsigned": {"age": 1}, "content": {"msgtype": "m.text", "body": str(i)}}
            fake._txn["wa"] = fake._txn.get("wa", 0) + 1
            status, *_ = await client.request(
                "PUT", f"/_matrix/app/v1/transactions/{fake._txn['wa']}",
                json.dumps({"events": [event]}).encode())
            if status != 200:
                raise RuntimeError(f"the relay answered an echo with {status}")
        return (cpu_seconds(pid) - cpu) * 1e6 / count


async def echoes_answered(fake: Fake) -> None:
    """Until the echoes the fake still holds or is pushing have been answered."""
    with trio.fail_after(10):
        while fake._echo_queue["ig"] or fake._echo_queue["fbm"] or fake.echoing:  # noqa: ASYNC110
            await trio.sleep(0.05)  # polling the fake's queues, under the deadline above


async def measure(fake: Fake, pid: int, messages: int, tag: str,
                  profile: Path | None = None) -> dict[str, float]:
    # Past tribridge's window after a start, in which pushes read timelines first.
    started, n = trio.current_time(), 0
    while trio.current_time() - started < SUSPECT_SECONDS + 1:
        n += 1
        await fake.run(100, 1, pid, rate=100.0, tag=f"{tag}-warm{n}")
    out = {"paced 40/s": (await fake.run(messages, 1, pid, rate=RATE,
                                         tag=f"{tag}-paced"))["cpu_ms_per_send"]}
    fake.answer_delay, fake.echo, echoes = ANSWER_DELAY, True, fake.echoes
    spy = None
    try:
        synapse = await fake.run(messages, 1, pid, rate=RATE, tag=f"{tag}-synapse")
        # The run's CPU was read when the last send arrived: the echoes of the last few sends
        # (a few of 2 per message) are not in it. They are waited for, so that the next run
        # does not pay for them.
        await echoes_answered(fake)
        # A flood as Synapse pushes it: messages come at FLOOD/s, each push takes all come
        # since the last, sends answered after 20 ms, echoes gathered (bench/relay.py's flood).
        pushed = fake.echoes
        if profile is not None:
            # py-spy samples the relay during the flood (its own CPU is not the relay's).
            spy = await trio.lowlevel.open_process(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-f",
                 "raw", "-r", "250", "--gil", "-o", str(profile)], stdout=subprocess.DEVNULL)
        flood = await fake.run(messages, 1, pid, rate=FLOOD, gather=True, tag=f"{tag}-flood")
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            await spy.wait()
        await echoes_answered(fake)
    finally:
        fake.answer_delay, fake.echo = 0.0, False
    out["as Synapse"] = synapse["cpu_ms_per_send"]
    # The floor answers a push once its sends are answered (20 ms later, one after the
    # other), so it falls behind the pace; tribridge once its rooms' first sends are answered
    # (bridge/pacing.py: the two at once, 20 ms), which keeps the pace.
    out["as Synapse: messages/s"] = synapse["sends_per_s"] / 2
    out["echo pushes per message"] = (pushed - echoes) / messages
    out["flood as Synapse"] = flood["cpu_ms_per_send"]
    out["flood: pushes per message"] = (flood["pushes"] + fake.echoes - pushed) / messages
    out["echo push, back to back (µs)"] = await echo_pushes(fake, pid, messages * 4, tag)
    return out


async def main(args: Any) -> None:
    root = Path(tempfile.mkdtemp(prefix="tribridge-pace-"))
    rounds: dict[str, list[dict[str, float]]] = {"floor": [], "tribridge": []}
    async with trio.open_nursery() as nursery:
        fake = Fake()
        await nursery.start(fake.serve)
        for n in range(args.rounds):
            for relay in (["floor", "tribridge"] if n % 2 == 0 else ["tribridge", "floor"]):
                if relay == "floor":
                    # Told which senders are its own (it sends as @floor:<server>): the echoes.
                    context = plain(fake, "floor", root / f"f{n}",
                                    ["--own", "@floor:", "--own", "@_tb_"])
                else:
                    await trio.Path(root / f"t{n}").mkdir()
                    context = tribridge(fake, root / f"t{n}")
                profile = None
                if args.profile and relay == "tribridge" and n == 0:
                    profile = Path(args.profile)
                async with context as pid:
                    rounds[relay].append(await measure(fake, pid, args.messages, f"{relay}{n}",
                                                       profile))
        nursery.cancel_scope.cancel()
    keys = list(rounds["floor"][0])
    med = {r: {k: statistics.median(x[k] for x in v) for k in keys} for r, v in rounds.items()}
    print(f"\n{args.messages} messages from wa per run, each relayed to ig and fbm; medians of "
          f"{args.rounds} interleaved rounds.\n")
    print("| run | floor | tribridge | tribridge / floor |\n|---|---|---|---|")
    for k in keys:
        f, t = med["floor"][k], med["tribridge"][k]
        unit = " ms/send" if k in ("paced 40/s", "as Synapse", "flood as Synapse") else ""
        print(f"| {k}{unit} | {f:.3f} | {t:.3f} | {t / f if f else 0:.2f}x |")
    if args.profile and await trio.Path(args.profile).exists():
        print("\npy-spy, tribridge during the flood as Synapse:\n" + hot_spots(Path(args.profile)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", metavar="FILE", default="",
                        help="py-spy tribridge during the first flood as Synapse into FILE")
    trio.run(main, parser.parse_args())
