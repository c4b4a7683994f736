"""The client-server API as the bridge uses it: one instance per homeserver.

Errors, drawn once here so callers never look at raw HTTP::

    HomeserverError            something went wrong talking to a homeserver
     +-- Unreachable           no answer: connection refused or reset, timeout
     +-- MatrixError           an answer with an error status (status, errcode, retry_after_ms)

The httpx client comes from outside (base URL, as_token header, timeouts), so tests can hand in a
transport that fails on cue. Tokens live only in that client's headers; nothing here logs them.
"""

from __future__ import annotations

import functools
import json
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import trio

from bridge.http.client import AnswerTooLarge, ConnectionFailed, LeanClient
from bridge.http.types import compact_json
from bridge.matrix import jsontext

CLIENT_V3 = "/_matrix/client/v3"


class HomeserverError(Exception):
    status: int | None = None
    errcode: str | None = None
    retry_after_ms: int | None = None
    server_name: str | None = None  # whose error: the bot names the network in its replies


class Unreachable(HomeserverError):
    """No answer from the homeserver."""

    proxy_status: int | None = None  # a proxy's 502/503/504 in front of it, if that was all


class TooBig(Unreachable):
    """An answer over the lean client's size limit (httpx would take it)."""


class MatrixError(HomeserverError):
    def __init__(
        self, status: int, errcode: str, message: str, retry_after_ms: int | None = None,
        server_name: str | None = None,
    ) -> None:
        super().__init__(f"{status} {errcode}: {message}")
        self.status = status
        self.errcode = errcode
        self.message = message
        self.retry_after_ms = retry_after_ms
        self.server_name = server_name


def _q(part: str) -> str:
    if part.isascii() and part.isalnum():
        return part  # nothing to quote (our own transaction ids): quote() costs 1-2 us
    return quote(part, safe="")


# Rooms, event types and the ghosts sending are few and recur on every send, which quoted four
# parts (1-2 us each here). Nothing private is kept: room ids, and the ghosts' pseudonymous ids.
_q_recurring = functools.lru_cache(maxsize=4096)(_q)


def make_http_client(homeserver: str, as_token: str, timeout: float = 30.0) -> httpx.AsyncClient:
    """The pooled, kept-alive httpx client for one homeserver, authenticated as the appservice."""
    return httpx.AsyncClient(
        base_url=homeserver,
        headers={"Authorization": f"Bearer {as_token}"},
        timeout=httpx.Timeout(timeout, connect=10.0),
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        trust_env=False,  # a proxy from the environment must not see our tokens
    )


class Homeserver:
    def __init__(
        self, http: httpx.AsyncClient, server_name: str, deadline: float = 60.0,
        fast: LeanClient | None = None,
    ) -> None:
        self.http = http
        # The lean client for the hot paths (send_event, messages), when given; httpx for the
        # rest.
        self.fast = fast
        self.server_name = server_name
        # httpx's timeouts bound each read or write, not a whole request: a server that trickles
        # bytes could hold a send forever. This bounds the request as a whole.
        self.deadline = deadline
        self.accepted = 0  # requests answered 2xx/3xx: its token is taken

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        as_user: str | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One call whose answer is a JSON object ({} if it is anything else)."""
        payload = await self.http_json(method, path, body=body, as_user=as_user, params=params)
        return payload if isinstance(payload, dict) else {}

    async def http_json(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        as_user: str | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        """One call; its JSON answer as it is, or a HomeserverError."""
        query = dict(params or {})
        if as_user is not None:
            query["user_id"] = as_user
        try:
            with trio.fail_after(self.deadline):
                response = await self.http.request(
                    method,
                    path,
                    params=query or None,
                    content=json.dumps(body).encode() if body is not None else None,
                    headers={"Content-Type": "application/json"} if body is not None else None,
                )
        except httpx.TransportError as exc:
            raise self._unreachable(f"{type(exc).__name__}: {exc}") from exc
        except trio.TooSlowError as exc:
            raise self._unreachable(f"no answer in {self.deadline:g} s") from exc
        answer = _answer(response.status_code, response.content, response.reason_phrase,
                         response.headers.get("retry-after", ""), self.server_name)
        self.accepted += 1
        return answer

    def _unreachable(self, why: str, kind: type[Unreachable] | None = None) -> Unreachable:
        error = (kind or Unreachable)(f"{self.server_name}: {why}")
        error.server_name = self.server_name
        return error

    async def _fast_json(self, method: str, target: str, body: Any) -> Any:
        """http_json over the lean client: `target` is the path with its query, encoded."""
        assert self.fast is not None
        try:
            # The client bounds the request itself (NoAnswer, a ConnectionFailed): no cancel
            # scope per send (bridge/http/client.py says why).
            answer = await self.fast.request(
                method, target, compact_json(body).encode() if body is not None else None,
                within=self.deadline)
        except AnswerTooLarge as exc:
            raise self._unreachable(str(exc), TooBig) from exc
        except ConnectionFailed as exc:
            raise self._unreachable(str(exc)) from exc
        result = _answer(answer.status, answer.body, answer.reason, answer.retry_after,
                         self.server_name)
        self.accepted += 1
        return result

    # -- the calls the bridge makes ------------------------------------------------------------

    async def ping_appservice(self, appservice_id: str, transaction_id: str) -> int:
        """Ask the homeserver to ping us (and so push its backlog now); returns its duration_ms."""
        result = await self.request(
            "POST",
            f"/_matrix/client/v1/appservice/{_q(appservice_id)}/ping",
            body={"transaction_id": transaction_id},
        )
        return int(result.get("duration_ms", 0))

    async def versions(self) -> None:
        """The cheapest call a homeserver answers: is it reachable at all?"""
        await self.request("GET", "/_matrix/client/versions")

    async def register(self, localpart: str) -> None:
        """Register an appservice user; an existing one is fine."""
        try:
            await self.request(
                "POST",
                f"{CLIENT_V3}/register",
                body={
                    "type": "m.login.application_service",
                    "username": localpart,
                    "inhibit_login": True,
                },
            )
        except MatrixError as exc:
            if exc.errcode != "M_USER_IN_USE":
                raise

    async def set_display_name(self, user_id: str, name: str) -> None:
        await self.request(
            "PUT",
            f"{CLIENT_V3}/profile/{_q(user_id)}/displayname",
            body={"displayname": name},
            as_user=user_id,
        )

    async def set_avatar_url(self, user_id: str, mxc: str) -> None:
        await self.request(
            "PUT",
            f"{CLIENT_V3}/profile/{_q(user_id)}/avatar_url",
            body={"avatar_url": mxc},
            as_user=user_id,
        )

    async def member_profile(self, room_id: str, user_id: str) -> tuple[str | None, str | None]:
        """(display name, avatar) of `user_id` in `room_id`, read as the bot; (None, None) if
        they set none or the bot cannot see them."""
        try:
            member = await self.request(
                "GET", f"{CLIENT_V3}/rooms/{_q(room_id)}/state/m.room.member/{_q(user_id)}"
            )
        except MatrixError as exc:
            if exc.errcode in ("M_NOT_FOUND", "M_FORBIDDEN"):
                return None, None
            raise
        return _text(member.get("displayname")), _text(member.get("avatar_url"))

    async def join(self, room_id: str, as_user: str | None = None) -> str:
        result = await self.request(
            "POST", f"{CLIENT_V3}/join/{_q(room_id)}", body={}, as_user=as_user
        )
        return str(result.get("room_id", room_id))

    async def invite(self, room_id: str, user_id: str, as_user: str | None = None) -> None:
        await self.request(
            "POST",
            f"{CLIENT_V3}/rooms/{_q(room_id)}/invite",
            body={"user_id": user_id},
            as_user=as_user,
        )

    async def send_event(
        self, room_id: str, event_type: str, content: Any, txn_id: str, as_user: str
    ) -> str:
        path = (f"{CLIENT_V3}/rooms/{_q_recurring(room_id)}/send/{_q_recurring(event_type)}/"
                f"{_q(txn_id)}")
        if self.fast is not None:
            result = await self._fast_json("PUT", f"{path}?user_id={_q_recurring(as_user)}",
                                           content)
        else:
            result = await self.request("PUT", path, body=content, as_user=as_user)
        if not isinstance(result, dict):
            result = {}
        event_id = result.get("event_id")
        if not isinstance(event_id, str):
            raise MatrixError(502, "M_UNKNOWN", "the homeserver returned no event_id")
        return event_id

    async def redact(
        self, room_id: str, event_id: str, txn_id: str, as_user: str, reason: str | None = None
    ) -> None:
        await self.request(
            "PUT",
            f"{CLIENT_V3}/rooms/{_q(room_id)}/redact/{_q(event_id)}/{_q(txn_id)}",
            body={"reason": reason} if reason else {},
            as_user=as_user,
        )

    async def put_state(self, room_id: str, event_type: str, state_key: str, content: Any,
                        as_user: str | None = None) -> str:
        result = await self.request(
            "PUT",
            f"{CLIENT_V3}/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}",
            body=content,
            as_user=as_user,
        )
        return str(result.get("event_id", ""))

    async def messages(
        self, room_id: str, limit: int, from_token: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the room's timeline, newest first, as the bot sees it; and the token of
        the next (older) page, None at the start of the room."""
        params = {"dir": "b", "limit": str(limit)}
        if from_token:
            params["from"] = from_token
        path = f"{CLIENT_V3}/rooms/{_q(room_id)}/messages"
        result: Any = None
        lean = self.fast is not None
        if lean:
            # Reads come by the thousand (every room at start, each room after a gap in
            # transaction ids): the lean client's cost, not httpx's. A page it cannot take (an
            # answer over its size limit: ten events with large bundled edits) goes by httpx.
            try:
                result = await self._fast_json("GET", f"{path}?{urlencode(params)}", None)
            except TooBig:
                lean = False
        if not lean:
            result = await self.request("GET", path, params=params)
        if not isinstance(result, dict):
            result = {}
        chunk = result.get("chunk")
        events = [e for e in chunk if isinstance(e, dict)] if isinstance(chunk, list) else []
        end = result.get("end")
        return events, (end if isinstance(end, str) and events else None)

    # -- rooms and profiles, for the bot's commands --------------------------------------------

    async def create_room(self, body: dict[str, Any], as_user: str | None = None) -> str:
        result = await self.request("POST", f"{CLIENT_V3}/createRoom", body=body, as_user=as_user)
        room_id = result.get("room_id")
        if not isinstance(room_id, str):
            raise MatrixError(502, "M_UNKNOWN", "the homeserver returned no room_id")
        return room_id

    async def leave(self, room_id: str, as_user: str | None = None) -> None:
        await self.request("POST", f"{CLIENT_V3}/rooms/{_q(room_id)}/leave", body={},
                           as_user=as_user)

    async def state(
        self, room_id: str, event_type: str, state_key: str = "", as_user: str | None = None
    ) -> dict[str, Any] | None:
        """The content of one state event, or None if the room has none (or hides it)."""
        try:
            return await self.request(
                "GET",
                f"{CLIENT_V3}/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}",
                as_user=as_user,
            )
        except MatrixError as exc:
            if exc.errcode in ("M_NOT_FOUND", "M_FORBIDDEN"):
                return None
            raise

    async def state_events(self, room_id: str) -> list[dict[str, Any]]:
        """Every current state event of the room, as the bot sees it."""
        result = await self.http_json("GET", f"{CLIENT_V3}/rooms/{_q(room_id)}/state")
        return [e for e in result if isinstance(e, dict)] if isinstance(result, list) else []

    async def membership(self, room_id: str, user_id: str) -> str | None:
        """`user_id`'s membership in `room_id` as the bot sees it (join, invite, leave...)."""
        member = await self.state(room_id, "m.room.member", user_id)
        value = member.get("membership") if member else None
        return value if isinstance(value, str) else None

    async def resolve_alias(self, alias: str) -> str | None:
        try:
            result = await self.request("GET", f"{CLIENT_V3}/directory/room/{_q(alias)}")
        except MatrixError as exc:
            if exc.errcode == "M_NOT_FOUND":
                return None
            raise
        room_id = result.get("room_id")
        return room_id if isinstance(room_id, str) else None

    async def profile(self, user_id: str) -> tuple[str | None, str | None]:
        """`user_id`'s own (display name, avatar), not a room's; None for what they set not."""
        try:
            result = await self.request("GET", f"{CLIENT_V3}/profile/{_q(user_id)}")
        except MatrixError as exc:
            if exc.errcode in ("M_NOT_FOUND", "M_FORBIDDEN"):
                return None, None
            raise
        return _text(result.get("displayname")), _text(result.get("avatar_url"))

    async def kick(self, room_id: str, user_id: str, as_user: str, reason: str | None = None,
                   action: str = "kick") -> None:
        """Kick (or with `action` "ban" or "unban", ban or unban) `user_id`, as `as_user`."""
        body = {"user_id": user_id, **({"reason": reason} if reason else {})}
        await self.request("POST", f"{CLIENT_V3}/rooms/{_q(room_id)}/{action}", body=body,
                           as_user=as_user)

    async def typing(self, room_id: str, user_id: str, typing: bool, timeout_ms: int) -> None:
        body: dict[str, Any] = {"typing": typing}
        if typing:
            body["timeout"] = timeout_ms
        await self.request("PUT", f"{CLIENT_V3}/rooms/{_q(room_id)}/typing/{_q(user_id)}",
                           body=body, as_user=user_id)

    async def read_receipt(self, room_id: str, event_id: str, user_id: str) -> None:
        await self.request(
            "POST", f"{CLIENT_V3}/rooms/{_q(room_id)}/receipt/m.read/{_q(event_id)}",
            body={}, as_user=user_id,
        )


# A homeserver's retry_after_ms (or Retry-After) beyond this is read as this: a day.
MAX_RETRY_AFTER_MS = 86_400_000


def _answer(status: int, content: bytes, reason: str, retry_header: str,
            server_name: str | None = None) -> Any:
    """The JSON of an answer, or the MatrixError it stands for."""
    try:
        answer = jsontext.loads(content) if content else {}
    except ValueError:
        answer = {}
    if status in (502, 503, 504) and not (isinstance(answer, dict) and "errcode" in answer):
        # A proxy's answer (an HTML "Bad Gateway"): the homeserver behind it is not there,
        # which is silence, not a refusal (its probe starts; /health counts it).
        error = Unreachable(f"{server_name or 'the homeserver'}: {status} {reason} from a proxy "
                            "in front of it")
        error.server_name = server_name
        error.proxy_status = status
        raise error
    if status >= 400:
        payload = answer if isinstance(answer, dict) else {}
        retry = payload.get("retry_after_ms")
        if not isinstance(retry, int) or isinstance(retry, bool):
            retry = _retry_header_ms(retry_header.strip())
        if retry is not None:
            # A negative wait means nothing (our own backoff applies); a huge one, a day.
            retry = None if retry < 0 else min(retry, MAX_RETRY_AFTER_MS)
        raise MatrixError(
            status,
            str(payload.get("errcode", "M_UNKNOWN")),
            str(payload.get("error", reason))[:300],
            retry,
            server_name,
        )
    return answer


def _retry_header_ms(header: str) -> int | None:
    """Retry-After in seconds, as milliseconds; None unless it is ASCII digits ("²".isdigit()
    is true too, and int() refuses it)."""
    if not (header.isascii() and header.isdigit()):
        return None
    # Ten digits are already over MAX_RETRY_AFTER_MS: no need to convert a thousand of them.
    return int(header) * 1000 if len(header) < 10 else MAX_RETRY_AFTER_MS


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
