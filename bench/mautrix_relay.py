"""A calibration relay for issue 7: a minimal relay written with mautrix-python.

Issue 7's calibration table has "a minimal relay written with mautrix-python (asyncio +
aiohttp)". This is that relay, to run beside bench/floor.py on the same machine so that the
table's figures become ratios. It does what the floor does (each m.room.message pushed by one
network is sent, as is, into the portal room of every other network; the relay's own echoes are
skipped) the way a mautrix bridge does it, on plain asyncio (mautrix's Program would install
uvloop if it were present; it is not a dependency of mautrix, so this is what `pip install
mautrix` runs on).

Receiving. mautrix.appservice.AppService holds one hs_token, and its transaction ids are
remembered in one set; here three networks push to one listener, each with its own hs_token and
its own transaction numbering (the fake homeserver, like Synapse, numbers each appservice's
transactions from 1: one shared set would drop a network's transaction 1 as a repeat of
another's). So each network gets its own mautrix AppServiceServerMixin (AppService's server
part: token check, transaction dedup, event parsing, handler dispatch), and one aiohttp app
hands each push, by its token, to that network's server's own transaction handler
(`_http_handle_transaction`, a private method: the mixin has no public entry point other than
register_routes, which would bind all three to the same paths). Nothing of AppService's client
side is used: no state store (AppService's default writes mx-state.json and updates it on every
event) and no IntentAPI.

How mautrix handles a transaction (0.21): it checks the token, answers a transaction id it has
already finished at once with {} (the set only grows, and a repeat that arrives while the first
is still in hand is handled twice), parses each event into a mautrix Event, and starts one
background asyncio task per event and handler; it answers the homeserver without waiting for
those tasks (synchronous_handlers is off by default and no mautrix bridge turns it on). So the
relay acknowledges a push before its sends are done, and the events of a push are relayed
concurrently, in no guaranteed order. That is kept: it is how mautrix bridges behave, and it is
part of what the calibration measures.

Sending. One mautrix ClientAPI per network (over one shared aiohttp session, as AppService
shares one), with the appservice's user_id query parameter (as_user_id), calling
send_message_event with the parsed content; its transaction ids are mautrix's own
(mautrix-python_<time_ns>_<counter>, unique within and across runs). IntentAPI is not used: its
ensure_joined and state-store bookkeeping are a bridge's logic, which the floor has none of.

    python bench/mautrix_relay.py --listen 29399 --hs wa=<token>=<url>=<room> --hs ig=... ...

Same command line as floor.py: `--as net=as_token=user_id` sends as that user with that token;
without it, each network sends with its hs_token (the fake homeserver takes any token) as
@floor:<net>.localhost. `--own PREFIX` skips events of senders starting with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from functools import partial
from pathlib import Path

import aiohttp
from aiohttp import web
from mautrix.api import HTTPAPI
from mautrix.appservice import AppServiceServerMixin
from mautrix.client import ClientAPI
from mautrix.types import Event, EventType, RoomID, UserID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor import command_line  # the relays' shared command line

TRANSACTION_PATHS = ("/_matrix/app/v1/transactions/{transaction_id}",
                     "/transactions/{transaction_id}")  # the legacy path, as mautrix serves it


class MautrixRelay:
    def __init__(self, networks: dict[str, tuple[str, str, str]],
                 senders: dict[str, tuple[str, str]] | None, own: tuple[str, ...],
                 session: aiohttp.ClientSession) -> None:
        # network -> (hs_token, homeserver URL, room); network -> (as_token, user id to send as)
        senders = senders or {net: (token, f"@floor:{net}.localhost")
                              for net, (token, _, _) in networks.items()}
        self.rooms = {net: RoomID(room) for net, (_, _, room) in networks.items()}
        self.clients = {
            net: ClientAPI(base_url=url, token=senders[net][0], client_session=session,
                           as_user_id=UserID(senders[net][1]),
                           log=logging.getLogger(f"mau.client.{net}"))
            for net, (_, url, _) in networks.items()}
        self.own = own
        self.servers: dict[str, AppServiceServerMixin] = {}
        for net, (hs_token, _, _) in networks.items():
            server = AppServiceServerMixin(hs_token=hs_token,
                                           log=logging.getLogger(f"mau.appservice.{net}"))
            server.matrix_event_handler(partial(self.relay, net))
            self.servers[hs_token] = server

    def app(self) -> web.Application:
        app = web.Application()
        for path in TRANSACTION_PATHS:
            app.router.add_route("PUT", path, self.dispatch)
        # Synapse pings the appservice when asked to (bench/relay.py does, after a start).
        app.router.add_route("POST", "/_matrix/app/v1/ping", self.ping)
        return app

    def _server(self, request: web.Request) -> AppServiceServerMixin:
        """The server of the network whose hs_token the request carries."""
        # Read where mautrix's own check reads it (which then checks it once more).
        token = request.rel_url.query.get("access_token") or request.headers.get(
            "Authorization", "").removeprefix("Bearer ")
        server = self.servers.get(token)
        if server is None:
            raise web.HTTPUnauthorized(content_type="application/json", text=json.dumps(
                {"error": "Invalid auth token", "errcode": "M_UNKNOWN_TOKEN"}))
        return server

    async def ping(self, request: web.Request) -> web.Response:
        return await self._server(request)._http_ping(request)

    async def dispatch(self, request: web.Request) -> web.Response:
        """Hand a push to the server of the network whose hs_token it carries."""
        return await self._server(request)._http_handle_transaction(request)

    async def relay(self, source: str, event: Event) -> None:
        """One event's handler, run by mautrix as a background task."""
        if event.type != EventType.ROOM_MESSAGE or event.sender.startswith(self.own):
            return  # not a message, or the relay's own, pushed back
        for net, client in self.clients.items():
            if net != source:
                await client.send_message_event(self.rooms[net], EventType.ROOM_MESSAGE,
                                                event.content)


async def main() -> None:
    port, networks, senders, own, _ = command_line(__doc__)  # no --db: it acks first anyway
    # A send mautrix gave up on is logged, not raised (handlers are background tasks).
    logging.basicConfig(level=logging.WARNING, format="mautrix relay: %(name)s: %(message)s")
    # As AppService.start makes its session: 100 connections at most, mautrix's User-Agent.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100),
                                     headers={"User-Agent": HTTPAPI.default_ua}) as session:
        relay = MautrixRelay(networks, senders, own, session)
        runner = web.AppRunner(relay.app())
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            await asyncio.Event().wait()  # serve until killed
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
