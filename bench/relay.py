"""make bench: relay throughput and added latency over three real Synapse homeservers.

One person on wa sends N messages (one after another, each send awaited); people on ig and fbm
long-poll /sync and note when each relayed message becomes visible to them. Prints:
- relayed events/s: 2N relayed events over the time from the first send to the last arrival;
- added latency: send returned -> visible on the other network, median and p95;
- CPU seconds of the bridge process and of the three Synapse processes over the run (from /proc),
  since on these machines Synapse, not the bridge, is the bottleneck.

Run it: `make bench` (or `.venv/bin/python bench/relay.py --messages 300`).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.localnet.cluster import LocalNet  # noqa: E402
from bridge.localnet.people import Person  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def watch(person: Person, room_id: str, arrivals: dict[str, float], want: int) -> None:
    """Long-poll /sync and note when each bench message first becomes visible."""
    flt = quote('{"room":{"timeline":{"limit":0}},"presence":{"types":[]}}')
    since = (await person.call("GET", f"/sync?filter={flt}"))["next_batch"]
    while len(arrivals) < want:
        batch = await person.call("GET", f"/sync?since={since}&timeout=5000")
        now = trio.current_time()
        since = batch["next_batch"]
        room = batch.get("rooms", {}).get("join", {}).get(room_id, {})
        for event in room.get("timeline", {}).get("events", []):
            body = event.get("content", {}).get("body", "")
            if body.startswith("bench ") and body not in arrivals:
                arrivals[body] = now


async def bench(net: LocalNet, messages: int) -> dict[str, Any]:
    alice = await Person.register(net.url("wa"), "+1555" + str(secrets.randbelow(10**7)).zfill(7),
                                  "Alice")
    readers = {
        "ig": await Person.register(net.url("ig"), f"bob{secrets.token_hex(3)}", "Bob"),
        "fbm": await Person.register(net.url("fbm"), f"carol{secrets.token_hex(3)}=40ex.com",
                                     "Carol"),
    }
    rooms = {"wa": await alice.create_room("bench", invite=["@tribridge:wa.localhost"])}
    for net_id, person in readers.items():
        rooms[net_id] = await person.create_room(
            "bench", invite=[f"@tribridge:{net.server_name(net_id)}"])
    config = net.write_config(net.root / "bench.toml", [rooms], net.root / "bench.db", "warning")
    notify_name = f"tribridge-bench-{secrets.token_hex(4)}"
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
    await sock.bind("\0" + notify_name)
    daemon = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bridge", "run", "-c", str(config)],
        cwd=ROOT, env={**os.environ, "NOTIFY_SOCKET": "@" + notify_name},
        stdin=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(30):
            while b"READY=1" not in await sock.recv(4096):
                pass
        # Warm up: ghosts registered and joined before timing starts.
        await alice.send_text(rooms["wa"], "warm-up")
        for net_id, person in readers.items():
            await person.wait_for(rooms[net_id], lambda evs: any(
                e.get("content", {}).get("body") == "warm-up" for e in evs))
        synapse_pids = [s.process.pid for s in net.servers.values() if s.process]
        cpu0 = (cpu_seconds(daemon.pid), sum(cpu_seconds(p) for p in synapse_pids))
        arrivals: dict[str, dict[str, float]] = {n: {} for n in readers}
        sent: dict[str, float] = {}
        async with trio.open_nursery() as nursery:
            for net_id, person in readers.items():
                nursery.start_soon(watch, person, rooms[net_id], arrivals[net_id], messages)
            start = trio.current_time()
            for i in range(messages):
                body = f"bench {i:05d}"
                await alice.send_text(rooms["wa"], body, txn=f"bench-{i}")
                sent[body] = trio.current_time()
            with trio.fail_after(120):
                while any(len(a) < messages for a in arrivals.values()):
                    await trio.sleep(0.05)  # waiting for the watchers, under a deadline
            end = max(max(a.values()) for a in arrivals.values())
        cpu1 = (cpu_seconds(daemon.pid), sum(cpu_seconds(p) for p in synapse_pids))
        latencies = sorted(
            (arrivals[n][b] - sent[b]) * 1000 for n in readers for b in sent
        )
        return {
            "messages": messages,
            "relayed": 2 * messages,
            "seconds": end - start,
            "rate": 2 * messages / (end - start),
            "p50": statistics.median(latencies),
            "p95": latencies[int(0.95 * (len(latencies) - 1))],
            "bridge_cpu": cpu1[0] - cpu0[0],
            "synapse_cpu": cpu1[1] - cpu0[1],
        }
    finally:
        daemon.send_signal(signal.SIGTERM)
        await daemon.wait()
        sock.close()
        for p in (alice, *readers.values()):
            await p.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tribridge-bench-"))
    net = LocalNet.create(root)
    try:
        net.start()
        r = trio.run(bench, net, args.messages)
    finally:
        net.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"tribridge relay over three real Synapse homeservers ({time.strftime('%Y-%m-%d')})")
    print(f"  messages sent on wa            {r['messages']}")
    print(f"  relayed events (ig + fbm)      {r['relayed']} in {r['seconds']:.2f} s")
    print(f"  relayed events/s               {r['rate']:.1f}")
    print(f"  added latency, median          {r['p50']:.1f} ms")
    print(f"  added latency, p95             {r['p95']:.1f} ms")
    print(f"  bridge CPU                     {r['bridge_cpu']:.2f} s "
          f"({1000 * r['bridge_cpu'] / r['relayed']:.2f} ms per relayed event)")
    print(f"  three Synapses' CPU            {r['synapse_cpu']:.2f} s "
          f"(bridge = {100 * r['bridge_cpu'] / max(r['synapse_cpu'], 1e-9):.1f}% of it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
