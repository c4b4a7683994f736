"""A zero-cost fake homeserver, for measuring a relay's own cost (issue 7).

Synapse spends 15-20 ms of CPU per message on these machines, so against it a bridge's figures
mostly measure Synapse. This fake answers the client-server calls a relay makes with canned
answers (one process, one trio task per connection, several server names on several ports), and
pushes transactions to the relay the way Synapse does: one in flight, a chosen number of events
each. It notes when each relayed send arrives, so a run yields the relay's CPU per send (from
/proc), its throughput, the latency from push to send, and its RSS.

Used by bench/perf.py (``make bench``) for both the floor relay (bench/floor.py) and tribridge.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import trio

from bridge.http.client import LeanClient
from bridge.http.server import Limits, serve
from bridge.http.types import Request, Response, json_response, matrix_error

NETWORKS = (  # id, label, server name, identity kind
    ("wa", "WhatsApp", "wa.localhost", "phone"),
    ("ig", "Instagram", "ig.localhost", "handle"),
    ("fbm", "Messenger", "fbm.localhost", "email"),
)
SENDER = "+15550001111"  # the pushing network's real person (wa: a phone number)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Fake:
    """Three fake homeservers and the config of a relay bridging one room of each."""

    bridge_port: int = field(default_factory=free_port)
    ports: dict[str, int] = field(
        default_factory=lambda: {n: free_port() for n, *_ in NETWORKS})
    secret: str = field(default_factory=lambda: secrets.token_hex(24))
    as_tokens: dict[str, str] = field(
        default_factory=lambda: {n: secrets.token_hex(16) for n, *_ in NETWORKS})
    hs_tokens: dict[str, str] = field(
        default_factory=lambda: {n: secrets.token_hex(16) for n, *_ in NETWORKS})
    rooms: dict[str, str] = field(
        default_factory=lambda: {n: f"!bench{n}:{n}.localhost" for n, *_ in NETWORKS})
    # (network, body) -> perf_counter() when the relayed send of that body arrived there
    arrivals: dict[tuple[str, str], float] = field(default_factory=dict)
    sends: int = 0
    reads: int = 0  # timeline reads (/messages): the relay's reconciliation
    expected: int = 0  # sends to wait for
    _all_in: trio.Event = field(default_factory=trio.Event)
    _txn: dict[str, int] = field(default_factory=dict)
    # Synapse's ways, when asked for (bench/pace.py): a send is answered only after
    # `answer_delay` s (Synapse takes 15-60 ms), and with `echo` every relayed send is pushed
    # back to the relay on its network, as Synapse pushes an appservice its own users' events
    # (queued echoes go together, one transaction in flight per network).
    answer_delay: float = 0.0
    # A timeline read (/messages) answered after `read_delay` s: Synapse spends 5-20 ms of CPU on
    # one, so a start's catch-up of thousands of rooms outlasts its window (bench/scale.py).
    read_delay: float = 0.0
    echo: bool = False
    echoes: int = 0  # echo transactions pushed
    echoing: int = 0  # echo transactions on their way
    _echo_queue: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _echo_due: dict[str, trio.Event] = field(default_factory=dict)

    def url(self, net_id: str) -> str:
        return f"http://127.0.0.1:{self.ports[net_id]}"

    # -- the relay's config ------------------------------------------------------------------

    def config_text(self, portals: Any = None, database: Path | str = "bench.db",
                    log_level: str = "warning", extra: str = "", bridge_extra: str = "") -> str:
        lines = ["[bridge]", f'listen = "127.0.0.1:{self.bridge_port}"',
                 f'database = "{database}"', f'secret = "{self.secret}"',
                 f'log_level = "{log_level}"', bridge_extra, ""]
        for net_id, label, server_name, identity in NETWORKS:
            lines += [f"[networks.{net_id}]", f'label = "{label}"',
                      f'homeserver = "{self.url(net_id)}"', f'server_name = "{server_name}"',
                      f'as_token = "{self.as_tokens[net_id]}"',
                      f'hs_token = "{self.hs_tokens[net_id]}"', f'identity = "{identity}"', ""]
        lines.append("[[portals]]")
        lines += [f'{net_id} = "{room}"' for net_id, room in self.rooms.items()]
        lines.append(extra)
        return "\n".join(lines)

    def write_config(self, path: Path, portals: Any = None, database: Path | str = "bench.db",
                     log_level: str = "warning", extra: str = "", bridge_extra: str = "") -> Path:
        """The interface of bridge.localnet.daemon.Daemon's `net`."""
        path.write_text(self.config_text(portals, database, log_level, extra, bridge_extra))
        return path

    # -- serving -------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        async with trio.open_nursery() as nursery:
            for net_id, *_ in NETWORKS:
                await nursery.start(serve, "127.0.0.1", self.ports[net_id],
                                    self._handler(net_id), Limits())
                self._echo_queue[net_id], self._echo_due[net_id] = [], trio.Event()
                nursery.start_soon(self._push_echoes, net_id)
            task_status.started()

    def _handler(self, net_id: str) -> Any:
        async def handle(request: Request) -> Response:
            if self.answer_delay and request.method == "PUT" and "/send/" in request.path:
                await trio.sleep(self.answer_delay)  # the homeserver's time to answer
            if self.read_delay and request.path.endswith("/messages"):
                await trio.sleep(self.read_delay)  # the homeserver's time to read a timeline
            response = self.answer(net_id, request)
            if self.echo and request.method == "PUT" and "/send/" in request.path:
                self._echo_queue[net_id].append(self._echo_of(net_id, request, response))
                self._echo_due[net_id].set()
            return response

        return handle

    def _echo_of(self, net_id: str, request: Request, response: Response) -> dict[str, Any]:
        user = (request.query.get("user_id") or [f"@bot:{net_id}.localhost"])[0]
        return {"type": "m.room.message", "room_id": self.rooms[net_id], "sender": user,
                "event_id": json.loads(response.body)["event_id"],
                "origin_server_ts": int(time.time() * 1000), "unsigned": {"age": 1},
                "content": json.loads(request.body)}

    async def _push_echoes(self, net_id: str) -> None:
        """Push the relay's own sends back to it on `net_id`, as Synapse does."""
        url = f"http://127.0.0.1:{self.bridge_port}"
        async with LeanClient(url, {"Authorization": f"Bearer {self.hs_tokens[net_id]}"}) as client:
            while True:
                await self._echo_due[net_id].wait()
                self._echo_due[net_id] = trio.Event()
                events, self._echo_queue[net_id] = self._echo_queue[net_id], []
                if not events:
                    continue
                self._txn[net_id] = self._txn.get(net_id, 0) + 1
                body = json.dumps({"events": events}).encode()
                self.echoing += 1
                try:
                    status, *_ = await client.request(
                        "PUT", f"/_matrix/app/v1/transactions/{self._txn[net_id]}", body)
                finally:
                    self.echoing -= 1
                if status != 200:
                    raise RuntimeError(f"the relay answered an echo with {status}")
                self.echoes += 1

    def answer(self, net_id: str, request: Request) -> Response:
        path = request.path
        if request.method == "PUT" and "/send/" in path:
            self.sends += 1
            try:
                body = json.loads(request.body).get("body")
            except ValueError:
                body = None
            if isinstance(body, str):
                self.arrivals.setdefault((net_id, body), time.perf_counter())
                if self.expected and len(self.arrivals) >= self.expected:
                    self._all_in.set()
            # Idempotent like Synapse: the same path gives the same event id.
            return json_response(200, {"event_id": "$" + secrets.token_hex(8)})
        if path == "/_matrix/client/versions":
            return json_response(200, {"versions": ["v1.11"]})
        if path.endswith("/messages"):
            self.reads += 1
            return json_response(200, {"chunk": [], "start": "s0"})
        if path.endswith("/state") and request.method == "GET":
            return json_response(200, [])
        if path.startswith("/_matrix/client/v3/join/"):
            return json_response(200, {"room_id": unquote(path.rsplit("/", 1)[1])})
        if request.method == "GET":
            return matrix_error(404, "M_NOT_FOUND", "nothing here")
        if path.endswith("/ping"):
            return json_response(200, {"duration_ms": 1})
        return json_response(200, {"event_id": "$" + secrets.token_hex(8)})

    # -- pushing -------------------------------------------------------------------------------

    async def run(self, count: int, batch: int, pid: int, *, rate: float = 0.0,
                  source: str = "wa", tag: str = "", gap: bool = False,
                  gather: bool = False) -> dict[str, float]:
        """Push `count` messages from `source` in transactions of `batch`, one in flight (or
        paced at `rate` events/s); wait until each reached the two other networks. With
        `gather` (and a `rate`), as Synapse pushes a flood: the messages come at `rate`, and
        each push takes every one come since the last (one in flight, `batch` ignored). Figures:
        CPU ms per relayed send, sends/s, latency p50/p99 ms (push sent -> send arrived), RSS.
        With `gap`, one transaction id is skipped before the first push, as when Synapse strands
        a transaction: tribridge then distrusts the pushes for a while (bridge/reconcile.py)."""
        tag = tag or secrets.token_hex(3)
        targets = [n for n, *_ in NETWORKS if n != source]
        self.arrivals.clear()
        self._all_in = trio.Event()
        self.expected = count * len(targets)
        pushed: dict[str, float] = {}
        acks: list[float] = []  # ms from a push sent to its answer
        pushes = 0
        url = f"http://127.0.0.1:{self.bridge_port}"
        token = self.hs_tokens[source]
        if gap:
            self._txn[source] = self._txn.get(source, 0) + 1
        async with LeanClient(url, {"Authorization": f"Bearer {token}"}) as client:
            cpu0, sys0, wall0 = cpu_seconds(pid), kernel_seconds(pid), time.perf_counter()
            first = 0
            while first < count:
                if rate:
                    due = wall0 + first / rate
                    await trio.sleep(max(0.0, due - time.perf_counter()))  # pacing, not waiting
                if gather:  # every message come by now (the one due at least)
                    come = int((time.perf_counter() - wall0) * rate) + 1
                    last = min(count, max(first + 1, come))
                else:
                    last = min(count, first + batch)
                events = [self._event(source, f"{tag}-{i}") for i in range(first, last)]
                body = json.dumps({"events": events}).encode()
                now = time.perf_counter()
                for event in events:
                    pushed[event["content"]["body"]] = now
                # Numbered upwards as Synapse does: a gap would make the bridge read timelines.
                self._txn[source] = self._txn.get(source, 0) + 1
                status, answer, *_ = await client.request(
                    "PUT", f"/_matrix/app/v1/transactions/{self._txn[source]}", body)
                acks.append((time.perf_counter() - now) * 1000)
                pushes += 1
                if status != 200:
                    raise RuntimeError(f"the relay answered {status}: {answer[:200]!r}")
                first = last
            with trio.fail_after(max(60.0, count / 50)):
                await self._all_in.wait()
            wall, cpu = time.perf_counter() - wall0, cpu_seconds(pid) - cpu0
            kernel = kernel_seconds(pid) - sys0
        latencies = sorted((self.arrivals[(n, b)] - t) * 1000 for b, t in pushed.items()
                           for n in targets)
        return {
            "cpu_ms_per_send": cpu * 1000 / self.expected,
            "sys_ms_per_send": kernel * 1000 / self.expected,
            "sends_per_s": self.expected / wall,
            "p50_ms": statistics.median(latencies),
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "rss_mb": rss_mb(pid),
            "ack_p50_ms": statistics.median(acks),
            "pushes": pushes,
        }

    def _event(self, source: str, body: str) -> dict[str, Any]:
        return {
            "type": "m.room.message", "room_id": self.rooms[source],
            "sender": f"@{SENDER}:{source}.localhost", "event_id": f"${body}",
            "origin_server_ts": int(time.time() * 1000), "unsigned": {"age": 1},
            "content": {"msgtype": "m.text", "body": body},
        }


def cpu_seconds(pid: int) -> float:
    """User and kernel CPU of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kernel_seconds(pid: int) -> float:
    """Kernel CPU alone (system calls: sockets, fsync, epoll), a part of `cpu_seconds`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

