"""bench/faults.py: kill -9 the daemon at random points while three networks talk; count the damage.

People on wa, ig and fbm send N messages in total (three senders at once) into one portal over
three real Synapse homeservers. At K random points of the stream the daemon is killed with
SIGKILL and started again once 40 more messages were sent while it was down. When the senders are
done, the bench waits for the relays to catch up, then reads every room's whole timeline and
prints, per (reader, source) pair and in total: lost, duplicated and out-of-order messages, and
the catch-up time (last send -> last relayed message visible).

Run it: `.venv/bin/python bench/faults.py --messages 10000 --kills 5` (about 20 minutes here,
bounded by Synapse's CPU: each message costs three Synapses about 50 ms of CPU together).
"""

from __future__ import annotations

import argparse
import itertools
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.localnet.cluster import LocalNet
from bridge.localnet.daemon import Daemon
from bridge.localnet.faults import talk_through_kills
from bridge.localnet.people import Person

NETS = ("wa", "ig", "fbm")


def damage(got: list[str], sent: list[str]) -> tuple[int, int, int]:
    """(lost, duplicated, out of order) of `got` against the send order `sent`."""
    lost = len(set(sent) - set(got))
    duplicated = len(got) - len(set(got))
    position = {body: i for i, body in enumerate(sent)}
    order = [position[b] for b in dict.fromkeys(got) if b in position]
    out_of_order = sum(1 for a, b in itertools.pairwise(order) if b < a)
    return lost, duplicated, out_of_order


async def run(net: LocalNet, messages: int, kills: int) -> dict[str, Any]:
    names = {"wa": "+1555" + str(secrets.randbelow(10**7)).zfill(7),
             "ig": f"bob{secrets.token_hex(3)}", "fbm": f"carol{secrets.token_hex(3)}=40ex.com"}
    people = {n: await Person.register(net.url(n), names[n], n.upper()) for n in NETS}
    rooms = {n: await people[n].create_room(
        "faults", invite=[f"@tribridge:{net.server_name(n)}"]) for n in NETS}
    daemon = Daemon(net, net.root)
    daemon.write_config([rooms], log_level="warning")
    await daemon.start()
    start = trio.current_time()
    per_sender = messages // 3
    # One /sync watcher per (reader, source): when each relayed message became visible.
    seen: dict[tuple[str, str], dict[str, float]] = {
        (src, reader): {} for reader in NETS for src in NETS if src != reader
    }
    caught_up: float | None = None
    async with trio.open_nursery() as nursery:
        watching = trio.CancelScope()

        async def watch_all() -> None:
            with watching:
                async with trio.open_nursery() as watchers:
                    for (src, reader), arrivals in seen.items():
                        watchers.start_soon(people[reader].watch, rooms[reader], f"{src} ",
                                            arrivals, per_sender)
            done.set()

        done = trio.Event()
        nursery.start_soon(watch_all)
        sent = await talk_through_kills(
            daemon, people, rooms, per_sender, kills,
            on_kill=lambda count: print(f"  killed -9 after {count} messages", flush=True),
        )
        last_send = trio.current_time()
        sending = last_send - start
        print(f"  all {3 * per_sender} sent in {sending:.0f} s; waiting for the relays",
              flush=True)
        with trio.move_on_after(600):
            await done.wait()
            caught_up = max(max(a.values()) for a in seen.values()) - last_send
        watching.cancel()
    pairs = {}
    for reader in NETS:
        view = await people[reader].timeline(rooms[reader])
        for src in NETS:
            if src != reader:
                got = [e["content"].get("body") for e in view
                       if e.get("type") == "m.room.message"
                       and e["sender"].startswith(f"@_tb_{src}_")]
                pairs[(src, reader)] = damage(got, sent[src])
    await daemon.stop()
    for p in people.values():
        await p.aclose()
    return {"pairs": pairs, "sending": sending, "caught_up": caught_up,
            "sent": sum(len(v) for v in sent.values()), "kills": kills}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tribridge-faults-"))
    net = LocalNet.create(root)
    try:
        net.start()
        r = trio.run(run, net, args.messages, args.kills)
    finally:
        net.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"tribridge under kill -9, {time.strftime('%Y-%m-%d %H:%M')}: {r['sent']} messages "
          f"from three networks, {r['kills']} kills, {2 * r['sent']} relays expected")
    print(f"{'source -> reader':18} {'lost':>6} {'dup':>6} {'order':>6}")
    total = [0, 0, 0]
    for (src, reader), counts in sorted(r["pairs"].items()):
        print(f"{src + ' -> ' + reader:18} {counts[0]:>6} {counts[1]:>6} {counts[2]:>6}")
        total = [t + c for t, c in zip(total, counts, strict=True)]
    print(f"{'total':18} {total[0]:>6} {total[1]:>6} {total[2]:>6}")
    caught = "did not catch up in 600 s" if r["caught_up"] is None else f"{r['caught_up']:.1f} s"
    print(f"sending took {r['sending']:.0f} s; catch-up after the last send: {caught}")
    return 0 if total == [0, 0, 0] and r["caught_up"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
