"""A fault-injecting fake homeserver, for faults Synapse cannot be made to show on cue.

It is an httpx transport: the bridge's real client (bridge.matrix.client.Homeserver) talks to it
unchanged, and because nothing touches a socket, tests can run it under trio's virtual clock so
backoff schedules and timeouts take milliseconds of real time. It answers the client-server calls
the delivery worker makes, keeps rooms' timelines, and is idempotent on transaction ids the way
Synapse is (same request path -> same event id). Faults are a function of the nth send.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx
import trio

# nth send -> a response to give instead, "hang" (never answer), "slow" (answer after 3 s), None
Fault = Callable[[int], "httpx.Response | str | None"]


@dataclass
class Sent:
    room_id: str
    sender: str
    content: dict[str, Any]
    event_id: str
    at: float  # trio.current_time() when accepted


@dataclass
class FakeHomeserver(httpx.AsyncBaseTransport):
    server_name: str
    fault: Fault = lambda n: None
    down: bool = False  # every request fails to connect while True
    sent: list[Sent] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)  # times of send attempts
    txns: dict[str, str] = field(default_factory=dict)  # request path -> event id
    joined: set[tuple[str, str]] = field(default_factory=set)  # (room, user)
    registered: set[str] = field(default_factory=set)
    timelines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # room -> oldest first
    requests: int = 0
    reads: int = 0  # /messages requests
    room_reads: dict[str, int] = field(default_factory=dict)  # room -> its /messages requests
    read_delay: dict[str, float] = field(default_factory=dict)  # room -> seconds per read
    state: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (room, type)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # user -> their profile
    send_delay: float = 0.0  # seconds every send takes to be answered

    def texts(self, room_id: str) -> list[str]:
        return [s.content.get("body", "") for s in self.sent if s.room_id == room_id]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = unquote(request.url.path)
        user = request.url.params.get("user_id") or f"@tribridge:{self.server_name}"
        body = json.loads(request.content) if request.content else {}
        parts = path.split("/")
        if path == "/_matrix/client/versions":
            return _ok({"versions": ["v1.11"]})
        if path.endswith("/register"):
            name = f"@{body['username']}:{self.server_name}"
            if name in self.registered:
                return _err(400, "M_USER_IN_USE")
            self.registered.add(name)
            return _ok({"user_id": name})
        if "/profile/" in path and request.method == "GET":
            return _ok(self.profiles.get(parts[parts.index("profile") + 1], {}))
        if "/profile/" in path or path.endswith("/invite"):
            return _ok({})
        if "/join/" in path:
            self.joined.add((parts[-1], user))
            return _ok({"room_id": parts[-1]})
        if "/state/m.room.member/" in path:
            return _err(404, "M_NOT_FOUND")
        if "/state/" in path and request.method == "GET":
            room_id, event_type = parts[parts.index("rooms") + 1], parts[parts.index("state") + 1]
            found = self.state.get((room_id, event_type))
            return _ok(found) if found is not None else _err(404, "M_NOT_FOUND")
        if path.endswith("/messages"):
            room_id = parts[parts.index("rooms") + 1]
            if room_id in self.read_delay:
                await trio.sleep(self.read_delay[room_id])  # a slow read (virtual time in tests)
            return self._messages(room_id, request.url.params)
        if "/send/" in path:
            return await self._send(request, path, parts, user, body)
        return _err(404, "M_UNRECOGNIZED")

    def _messages(self, room_id: str, params: httpx.QueryParams) -> httpx.Response:
        """Newest first from the `from` position, like GET /rooms/{id}/messages?dir=b."""
        self.reads += 1
        self.room_reads[room_id] = self.room_reads.get(room_id, 0) + 1
        timeline = self.timelines.get(room_id, [])
        start = int(params.get("from", len(timeline)))
        limit = int(params.get("limit", 10))
        chunk = list(reversed(timeline[max(0, start - limit):start]))
        end = str(max(0, start - limit))
        return _ok({"chunk": chunk, "start": str(start), "end": end} if chunk else {"chunk": []})

    async def _send(
        self, request: httpx.Request, path: str, parts: list[str], user: str, body: Any
    ) -> httpx.Response:
        self.attempts.append(trio.current_time())
        outcome = self.fault(len(self.attempts))
        if outcome == "hang":
            await trio.sleep_forever()
        if outcome == "slow":
            await trio.sleep(3)  # a slow homeserver (virtual time in tests)
        if self.send_delay:
            await trio.sleep(self.send_delay)  # a refusal takes as long as an acceptance
        if isinstance(outcome, httpx.Response):
            return outcome
        room_id = parts[parts.index("rooms") + 1]
        if path in self.txns:  # Synapse's idempotency: same path, same event, no new send
            return _ok({"event_id": self.txns[path]})
        event_id = f"${len(self.sent) + 1}:{self.server_name}"
        self.txns[path] = event_id
        self.sent.append(Sent(room_id, user, body, event_id, trio.current_time()))
        return _ok({"event_id": event_id})


def _ok(payload: Any) -> httpx.Response:
    # JSON with non-ASCII escaped (json.dumps's default), as some servers send it: so a
    # timeline can carry what only an escape can say, such as half a surrogate pair.
    return httpx.Response(200, content=json.dumps(payload).encode(),
                          headers={"content-type": "application/json"})


def _err(status: int, errcode: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"errcode": errcode, "error": errcode, **extra})


def error(status: int, errcode: str, **extra: Any) -> httpx.Response:
    """A canned error response for a fault function."""
    return _err(status, errcode, **extra)
