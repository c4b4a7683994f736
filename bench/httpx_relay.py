"""A calibration relay for issue 7: the floor relay, with httpx where the floor has LeanClient.

Issue 7's calibration table has "trio + h11 server, two httpx PUTs per event, no logic, no DB".
This is that relay: bench/floor.py's Floor unchanged (our h11 server, the same sends in the same
order, the transaction answered once they are done), except that each network's sends go through
an httpx.AsyncClient on trio, configured as tribridge's own httpx clients are
(bridge.matrix.client.make_http_client). Run beside floor.py, the pair shows what the lean
client saves per send on this machine.

    python bench/httpx_relay.py --listen 29399 --hs wa=<token>=<url>=<room> --hs ig=... ...

Same command line as floor.py, `--as` and `--own` included.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor import Floor, Sender, main

from bridge.http.client import Answer
from bridge.matrix.client import make_http_client


class HttpxSender:
    """What Floor asks of a client (Sender), answered by httpx."""

    def __init__(self, base_url: str, token: str) -> None:
        self.http: httpx.AsyncClient = make_http_client(base_url, token)

    async def request(
        self, method: str, target: str, body: bytes | None = None,
        content_type: bytes = b"application/json",
    ) -> Answer:
        headers = {"Content-Type": content_type.decode("latin-1")} if body is not None else {}
        response = await self.http.request(method, target, content=body, headers=headers)
        return Answer(response.status_code, response.content, response.reason_phrase,
                      response.headers.get("retry-after", ""))


class HttpxFloor(Floor):
    """Floor, sending through httpx."""

    def client(self, url: str, token: str) -> Sender:
        return HttpxSender(url, token)


if __name__ == "__main__":
    trio.run(main, HttpxFloor, __doc__)
