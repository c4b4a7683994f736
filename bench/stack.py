"""What one HTTP request costs on this machine, layer by layer (issue 7's calibration).

The floor relay (bench/floor.py) and tribridge both pay, per relayed send, one client request
and a share of one pushed request. This measures the CPU of one keep-alive PUT + answer against
our own h11 server (in another process), with four clients in turn, several rounds each:

- raw socket, blocking: the kernel's loopback cost and Python's least;
- raw socket, trio: what trio's scheduling and I/O waiting add;
- h11, blocking socket: what h11's request building and response parsing add;
- bridge.http.client.LeanClient on trio: the hot path as tribridge runs it.

    .venv/bin/python bench/stack.py [--requests 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import h11
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf import wait_for_port

from bridge.http.client import LeanClient
from bridge.http.server import Limits, serve
from bridge.http.types import Request, Response, json_response

BODY = json.dumps({"msgtype": "m.text", "body": "hello"}).encode()
TARGET = "/_matrix/client/v3/rooms/%21a%3Ab/send/m.room.message/t{}?user_id=%40g%3Ab"


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def server(port: int) -> None:
    async def handle(request: Request) -> Response:
        return json_response(200, {"event_id": "$abcdefghijklmnopqrstuvwxyz"})

    trio.run(serve, "127.0.0.1", port, handle, Limits())


def raw_request(i: int) -> bytes:
    return (f"PUT {TARGET.format(i)} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer x\r\n"
            f"content-type: application/json\r\ncontent-length: {len(BODY)}\r\n\r\n"
            ).encode() + BODY


def complete(buf: bytes) -> bool:
    head, sep, rest = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(rest) >= int(line.split(b":")[1])
    return True


def blocking_socket(port: int, n: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = cpu()
        for i in range(n):
            s.sendall(raw_request(i))
            buf = b""
            while not complete(buf):
                buf += s.recv(65536)
        return cpu() - start


def trio_socket(port: int, n: int) -> float:
    async def run() -> float:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = cpu()
        for i in range(n):
            await stream.send_all(raw_request(i))
            buf = b""
            while not complete(buf):
                buf += await stream.receive_some(65536)
        used = cpu() - start
        await stream.aclose()
        return used

    return trio.run(run)


def h11_blocking(port: int, n: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = h11.Connection(h11.CLIENT)
        headers = [(b"host", b"x"), (b"authorization", b"Bearer x"),
                   (b"content-type", b"application/json"),
                   (b"content-length", str(len(BODY)).encode())]
        start = cpu()
        for i in range(n):
            head = h11.Request(method="PUT", target=TARGET.format(i), headers=headers)
            s.sendall(conn.send(head) + conn.send(h11.Data(data=BODY))
                      + conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(s.recv(65536))
                elif isinstance(event, h11.EndOfMessage):
                    break
            conn.start_next_cycle()
        return cpu() - start


def ours(port: int, n: int) -> float:
    async def run() -> float:
        async with LeanClient(f"http://127.0.0.1:{port}", {"Authorization": "Bearer x"}) as c:
            await c.request("PUT", TARGET.format("warm"), BODY)
            start = cpu()
            for i in range(n):
                await c.request("PUT", TARGET.format(i), BODY)
            return cpu() - start

    return trio.run(run)


CLIENTS: dict[str, Callable[[int, int], float]] = {
    "raw socket, blocking": blocking_socket,
    "raw socket, trio": trio_socket,
    "h11, blocking socket": h11_blocking,
    "LeanClient on trio (the hot path)": ours,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = multiprocessing.Process(target=server, args=(port,), daemon=True)
    process.start()
    try:
        trio.run(wait_for_port, port)
        figures: dict[str, list[float]] = {name: [] for name in CLIENTS}
        for _ in range(args.rounds):  # interleaved, so drifting load hits every client alike
            for name, client in CLIENTS.items():
                figures[name].append(client(port, args.requests) * 1e6 / args.requests)
    finally:
        process.kill()
    base = statistics.median(figures["raw socket, blocking"])
    print(f"CPU per keep-alive PUT + answer, client side, median of {args.rounds} rounds of "
          f"{args.requests:,}:")
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"  {name:34} {median:7.1f} us  ({median / base:.1f}x the blocking socket)")


if __name__ == "__main__":
    main()
