"""The floor: a relay with no logic, to put every tribridge figure beside (issue 7).

trio + tribridge's own HTTP code (the h11 server, the lean pooled client with its own response
reader, both on raw sockets), nothing else: no store, no translation, no ghosts. Each pushed
event is sent, as is, into the portal room of every other network; the transaction is answered
once the sends are done. What tribridge costs above this is the price of its guarantees and its
logic. It is not issue 7's calibration floor (h11 on both sides, on trio's streams): it moves
with this project's HTTP code, so that the ratio to it keeps measuring the logic.

    python bench/floor.py --listen 29399 --hs wa=<token>=<url>=<room> --hs ig=... --hs fbm=...

Against real homeservers (bench/relay.py) it sends with each network's as_token as a user the
appservice owns (`--as net=as_token=user_id`), and skips the events of senders starting with an
`--own` prefix: the homeserver pushes back what the relay sent, which must not go round again.

With `--db FILE` it is the durable floor: each pushed transaction's events are written to a
SQLite table (WAL, synchronous=FULL, as tribridge's default) and committed before its sends, one
commit per transaction, so that it is answered only once on disk. Issue 7's calibration has this
row ("the same plus one SQLite WAL commit per event, synchronous=FULL"), for its httpx relay;
beside tribridge it shows what the durability alone costs on this stack, and so what is left for
the logic.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sqlite3
import sys
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.http.client import Answer, LeanClient
from bridge.http.server import Limits, serve
from bridge.http.types import Request, Response, json_response


class Sender(Protocol):
    async def request(self, method: str, target: str, body: bytes | None = None,
                      content_type: bytes = b"application/json") -> Answer: ...


class Floor:
    def __init__(self, networks: dict[str, tuple[str, str, str]],
                 senders: dict[str, tuple[str, str]] | None = None,
                 own: tuple[str, ...] = (), db: str = "") -> None:
        # network -> (hs_token, homeserver URL, room); network -> (as_token, user id to send as)
        self.networks = networks
        self.by_token = {token: net for net, (token, _, _) in networks.items()}
        senders = senders or {net: (token, f"@floor:{net}.localhost")
                              for net, (token, _, _) in networks.items()}
        self.clients: dict[str, Sender] = {net: self.client(url, senders[net][0])
                        for net, (_, url, _) in networks.items()}
        self.users = {net: quote(user, safe="") for net, (_, user) in senders.items()}
        self.own = own
        self.run = secrets.token_hex(4)  # transaction ids unique across runs
        self.count = 0
        self.db: sqlite3.Connection | None = None
        if db:
            self.db = sqlite3.connect(db, isolation_level=None)
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")
            self.db.execute("CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, "
                            "event TEXT NOT NULL)")

    def keep(self, events: list[dict[str, object]]) -> None:
        """With --db: the transaction's events on disk, in one commit."""
        if self.db is None or not events:
            return
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?)",
                            [(str(e.get("event_id")), json.dumps(e)) for e in events])
        self.db.execute("COMMIT")

    def client(self, url: str, token: str) -> Sender:
        return LeanClient(url, {"Authorization": f"Bearer {token}"})

    async def handle(self, request: Request) -> Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        source = self.by_token.get(token)
        if source is None:
            return json_response(403, {"errcode": "M_FORBIDDEN"})
        # Not a message, or the relay's own, pushed back: nothing to do, nothing to keep.
        events = [event for event in json.loads(request.body).get("events", [])
                  if event.get("type") == "m.room.message"
                  and not str(event.get("sender", "")).startswith(self.own)]
        self.keep(events)
        for event in events:
            for net, (_, _, room) in self.networks.items():
                if net == source:
                    continue
                self.count += 1
                target = (f"/_matrix/client/v3/rooms/{quote(room, safe='')}/send/m.room.message/"
                          f"f{self.run}.{self.count}?user_id={self.users[net]}")
                await self.clients[net].request(
                    "PUT", target, json.dumps(event["content"]).encode())
        return json_response(200, {})


def command_line(doc: str | None) -> tuple[int, dict[str, tuple[str, str, str]],
                                             dict[str, tuple[str, str]] | None, tuple[str, ...],
                                             str]:
    """The relays' shared command line: (port, networks, senders or None, own prefixes, db)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--hs", action="append", required=True,
                        help="network=hs_token=url=room, once per network")
    parser.add_argument("--as", dest="senders", action="append", default=[],
                        help="network=as_token=user_id: send as this user (real homeservers)")
    parser.add_argument("--own", action="append", default=[],
                        help="skip events of senders starting with this (the relay's echoes)")
    parser.add_argument("--db", default="",
                        help="write each transaction's events to this SQLite file, one commit "
                             "per transaction, before sending (the durable floor)")
    args = parser.parse_args()
    networks = {}
    for item in args.hs:
        net, token, url, room = item.split("=", 3)
        networks[net] = (token, url, room)
    senders = {}
    for item in args.senders:
        net, token, user = item.split("=", 2)
        senders[net] = (token, user)
    return args.listen, networks, senders or None, tuple(args.own), args.db


async def main(relay: type[Floor] = Floor, doc: str | None = __doc__) -> None:
    port, networks, senders, own, db = command_line(doc)
    await serve("127.0.0.1", port, relay(networks, senders, own, db).handle, Limits())


if __name__ == "__main__":
    trio.run(main)
