"""bench/e2ee.py: what tribridge's end-to-end encryption costs, and what it costs the bridge.

- a client: encrypt+sign and verify+decrypt of a 1 KB message (microseconds, median of runs);
- a sender: making one key share for a 50-device portal (milliseconds), and opening one's own
  share in it;
- the bridge: CPU per relayed event taken in (dedupe, translate, queue, commit) for an encrypted
  event against a plaintext one of the same size, over the same in-memory store. They should be
  equal: the bridge never decrypts; it copies the encrypted content as it is.

Run it: `.venv/bin/python bench/e2ee.py` (a few seconds). Figures are medians of several runs in
the same call, and a ratio to the plaintext baseline; these machines are shared and noisy.
"""

from __future__ import annotations

import json
import secrets
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.core.e2ee import (
    Device,
    DeviceCert,
    IdentityKey,
    OutboundSession,
    make_keyshare,
    open_keyshare,
)
from bridge.core.ghosts import derive_key
from bridge.core.model import Network
from bridge.inbound import Inbound
from bridge.store import Store

PORTAL = "b7e2c1a0-portal"


def median_us(fn: object, runs: int = 2000) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def client_figures() -> None:
    alice = Device.generate(IdentityKey.generate(), "WhatsApp")
    bob = Device.generate(IdentityKey.generate(), "Instagram")
    session = OutboundSession.start(alice, PORTAL)
    inbound = open_keyshare(make_keyshare(session, [bob.cert]), bob, alice.cert, PORTAL)
    assert inbound is not None
    plaintext = {"type": "m.room.message",
                 "content": {"msgtype": "m.text", "body": secrets.token_hex(512)}}  # 1 KB
    sent: list[dict[str, object]] = []
    enc = median_us(lambda: sent.append(session.encrypt(plaintext)))
    queue = iter(sent)
    dec = median_us(lambda: inbound.decrypt(next(queue)))  # type: ignore[arg-type]
    print(f"encrypt+sign 1 KB:     {enc:8.1f} us (median of 2000)")
    print(f"verify+decrypt 1 KB:   {dec:8.1f} us (median of 2000)")

    devices = [Device.generate(IdentityKey.generate(), "Messenger") for _ in range(50)]
    certs: list[DeviceCert] = [d.cert for d in devices]
    share_ms = median_us(lambda: make_keyshare(session, certs), runs=50) / 1000
    share = make_keyshare(session, certs)
    open_us = median_us(lambda: open_keyshare(share, devices[-1], alice.cert, PORTAL), runs=200)
    size = len(json.dumps(share))
    print(f"key share, 50 devices: {share_ms:8.2f} ms to make, {open_us:.0f} us to open one's own "
          f"({size / 1024:.1f} KB event)")


def bridge_figures(rounds: int = 5, events: int = 2000) -> None:
    wa = Network("wa", "WhatsApp", "wa.bench", "phone", "tribridge", "_tb_", False)
    ig = Network("ig", "Instagram", "ig.bench", "handle", "tribridge", "_tb_", True)
    nets = {"wa": wa, "ig": ig}
    alice = Device.generate(IdentityKey.generate(), "WhatsApp")
    session = OutboundSession.start(alice, PORTAL)
    body = secrets.token_hex(512)
    encrypted = session.encrypt({"type": "m.room.message",
                                 "content": {"msgtype": "m.text", "body": body}})
    kinds = {
        "plaintext": ("m.room.message", {"msgtype": "m.text", "body": body}),
        "encrypted": ("m.room.encrypted", encrypted),
    }
    results: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for kind, (etype, content) in kinds.items():
            store = Store(":memory:", "process")
            store.sync_config_portals([{"wa": "!a:wa.bench", "ig": "!b:ig.bench"}])
            inbound = Inbound(store, nets, derive_key(b"k" * 32), wake=lambda n, rooms: None)
            batch = [
                {"type": etype, "sender": "@+15551234567:wa.bench", "room_id": "!a:wa.bench",
                 "event_id": f"${kind}{i}", "content": content}
                for i in range(events)
            ]
            start = time.process_time()
            for i in range(0, events, 50):
                chunk = batch[i:i + 50]
                inbound.take_transaction("wa", f"{kind}{i}", json.dumps(chunk).encode(), chunk)
            results[kind].append((time.process_time() - start) / events * 1e6)
            store.close()
    plain = statistics.median(results["plaintext"])
    enc = statistics.median(results["encrypted"])
    print(f"bridge, plaintext event: {plain:7.1f} us CPU taken in (median of {rounds} x {events})")
    print(f"bridge, encrypted event: {enc:7.1f} us CPU taken in; ratio {enc / plain:.2f}")


if __name__ == "__main__":
    client_figures()
    bridge_figures()
