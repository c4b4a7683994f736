"""Hostile clients: a thousand slow connections do not crowd out the homeservers."""

from __future__ import annotations

import resource

import httpx
import pytest
import trio

from bridge.demo import has_body

from .conftest import Cast, Daemon
from .test_relay import three_way

pytestmark = pytest.mark.synapse


async def test_a_thousand_slowloris_connections_do_not_delay_pushes(
    cast: Cast, daemon: Daemon
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 <= hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096 if hard > 4096 else hard, hard))
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    port = daemon.net.bridge_port
    held: list[trio.SocketStream] = []
    try:
        for _ in range(1000):  # each sends half a request head and then nothing
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"PUT /_matrix/app/v1/transactions/x HTTP/1.1\r\nHost: a\r\n")
            held.append(stream)
        url = f"http://127.0.0.1:{port}/_matrix/app/v1/transactions/"
        auth = {"Authorization": f"Bearer {daemon.net.hs_tokens['ig']}"}
        fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection for every push
        took = []
        async with httpx.AsyncClient(trust_env=False, limits=fresh) as http:
            for i in range(100):
                began = trio.current_time()
                response = await http.put(f"{url}hostile-{i}", json={"events": []}, headers=auth)
                took.append(trio.current_time() - began)
                assert response.status_code == 200
        took.sort()
        assert took[98] < 1.0, f"p99 {took[98]:.3f} s"
        await people["wa"].send_text(rooms["wa"], "through the crowd")
        await people["ig"].wait_for(rooms["ig"], has_body("through the crowd"), within=10)
    finally:
        for stream in held:
            await stream.aclose()
