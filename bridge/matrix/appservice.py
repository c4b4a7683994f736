"""The appservice endpoints a homeserver calls: transactions, user queries, ping.

Every network has its own hs_token, so the token on a request tells which network is pushing; one
listener serves all. Tokens are compared in constant time against every network's token.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from bridge.config import NetworkConfig
from bridge.core.ghosts import parse_ghost_localpart
from bridge.core.ids import InvalidId, parse_user_id
from bridge.http.routing import Handler, Router
from bridge.http.types import Request, Response, json_response, matrix_error
from bridge.matrix import jsontext
from bridge.store import Store

log = logging.getLogger(__name__)

# Seconds between two warnings about refused tokens: a homeserver with a stale registration
# retries its pushes for ever, and each is refused.
TOKEN_WARNING_EVERY = 60.0

PREFIX = "/_matrix/app/v1"
_TAKEN = json_response(200, {})  # the answer to every transaction taken in (never changed)


class Intake(Protocol):
    """Where pushed transactions go: returns only once their effects are on disk."""

    async def push(self, network: str, txn_id: str, body: bytes, events: list[Any]) -> None: ...


class Appservice:
    def __init__(
        self,
        networks: Mapping[str, NetworkConfig],
        intake: Intake,
        store: Store,
        public: Router | None = None,
        ephemeral: Callable[[str, list[Any]], None] | None = None,
    ) -> None:
        self.networks = networks
        # Encoded once: every request is checked against every network's token.
        self._tokens = [(net.hs_token.encode(), net) for net in networks.values()]
        self.intake = intake
        self.store = store
        self.public = public  # routes that need no token (/health, /metrics)
        self.ephemeral = ephemeral  # where typing and receipts go (best effort, never blocks)
        self._warned_at = -TOKEN_WARNING_EVERY
        self.router = Router()
        self.router.add("PUT", PREFIX + "/transactions/{txn_id}", self.transaction)
        self.router.add("GET", PREFIX + "/users/{user_id}", self.query_user)
        self.router.add("GET", PREFIX + "/rooms/{alias}", self.query_alias)
        self.router.add("POST", PREFIX + "/ping", self.ping)

    def admit(self, request: Request) -> Response | tuple[Handler, Mapping[str, str]]:
        """What takes `request`, decided from its head (the server reads the body only after
        this): its route and network, or the refusal (no route, no token, a wrong token)."""
        if self.public is not None:
            public = self.public.find(request.method, request.path)
            if public is not None:
                if request.headers.get("content-length", "0") != "0" or (
                    "transfer-encoding" in request.headers
                ):
                    # Served to anyone: a body is the one thing they could make us hold.
                    return matrix_error(413, "M_TOO_LARGE", "this endpoint takes no body")
                return public
        try:
            matched = self.router.match(request.method, request.path)
        except UnicodeDecodeError:
            return matrix_error(400, "M_UNRECOGNIZED", "path is not valid UTF-8")
        if isinstance(matched, Response):
            return matched
        handler, params = matched
        network = self.authenticate(request)
        if isinstance(network, Response):
            return network
        return handler, {**params, "network": network.id}

    async def handle(self, request: Request) -> Response:
        """`request` taken whole (for a server without `admit`: its body already read)."""
        decision = self.admit(request)
        if isinstance(decision, Response):
            return decision
        handler, params = decision
        return await handler(_with_params(request, params))

    def authenticate(self, request: Request) -> NetworkConfig | Response:
        token = _bearer(request)
        if token is None:
            self._warn_refused("without a token")
            return matrix_error(401, "M_UNAUTHORIZED", "no access token: send the hs_token")
        found = None
        given = token.encode("utf-8", "replace")
        for expected, net in self._tokens:
            # Compare against every network, always, so timing says nothing about which matched.
            if hmac.compare_digest(expected, given):
                found = net
        if found is None:
            self._warn_refused("with a token that is no network's hs_token")
            return matrix_error(403, "M_FORBIDDEN", "the access token is not a known hs_token")
        return found

    def _warn_refused(self, how: str) -> None:
        """Say, now and then, that requests are refused: a homeserver whose registration file
        is older than the config's tokens pushes in vain, and nothing else would show it."""
        now = time.monotonic()
        if now - self._warned_at < TOKEN_WARNING_EVERY:
            return
        self._warned_at = now
        log.warning("refused a request %s (at most one such warning a minute): a homeserver "
                    "whose registration file predates a change of the config's tokens, url or "
                    "listen must be given the file `tribridge generate-registration` writes "
                    "now, and restarted", how)

    async def transaction(self, request: Request) -> Response:
        network = request.params["network"]
        try:
            events, ephemeral = parse_pushed(request.body)
        except InputError as exc:
            return matrix_error(400, exc.errcode, str(exc))
        # Returns only after the outbox rows are committed: acknowledged means on disk.
        await self.intake.push(network, request.params["txn_id"], request.body, events)
        if self.ephemeral is not None:
            self.ephemeral(network, ephemeral)
        return _TAKEN

    async def query_user(self, request: Request) -> Response:
        net = self.networks[request.params["network"]]
        try:
            user = parse_user_id(request.params["user_id"])
        except InvalidId:
            return matrix_error(404, "M_NOT_FOUND", "not a user id")
        if user.server_name == net.network.server_name:
            source = parse_ghost_localpart(user.localpart, net.network, set(self.networks))
            registered, _ = self.store.ghost(net.id, user.localpart)
            if source is not None and registered:
                return json_response(200, {})
        return matrix_error(404, "M_NOT_FOUND", "no such user on this bridge")

    async def query_alias(self, request: Request) -> Response:
        return matrix_error(404, "M_NOT_FOUND", "this bridge provides no room aliases")

    async def ping(self, request: Request) -> Response:
        log.debug("ping from %s", request.params["network"])
        return json_response(200, {})


class InputError(ValueError):
    """A homeserver sent something we cannot take: answered 400 with `errcode`."""

    def __init__(self, errcode: str, message: str) -> None:
        super().__init__(message)
        self.errcode = errcode


def parse_transaction(body: bytes) -> list[Any]:
    """The events of a pushed transaction body; raises InputError and nothing else."""
    return parse_pushed(body)[0]


def parse_pushed(body: bytes) -> tuple[list[Any], list[Any]]:
    """The events and the ephemeral events (typing, receipts: under the spec's key, or the one
    of MSC2409 that Synapse sends) of a pushed transaction body, from one JSON parse; raises
    InputError and nothing else.

    Events are not checked one by one here: a bad event is skipped on its own later, so one
    malformed event never makes the homeserver retry (and block) a whole transaction.
    """
    try:
        doc = jsontext.loads(body)
    except RecursionError as exc:
        raise InputError("M_BAD_JSON", "the body is nested too deeply") from exc
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InputError("M_NOT_JSON", "the body is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise InputError("M_BAD_JSON", "the body must be a JSON object")
    events = doc.get("events", [])
    if not isinstance(events, list):
        raise InputError("M_BAD_JSON", "'events' must be a list")
    for key in ("ephemeral", "de.sorunome.msc2409.ephemeral"):
        found = doc.get(key)
        if isinstance(found, list):
            return events, found
    return events, []


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    legacy = request.query.get("access_token")  # older homeservers send it in the query
    return legacy[0] if legacy else None


def _with_params(request: Request, params: Mapping[str, str]) -> Request:
    return Request(request.method, request.path, request.query, request.headers, request.body,
                   params)
