"""Real people on a local homeserver: register, make rooms, talk, read what they see.

A thin client-server API user, for the demo and the tests; the bridge itself never uses it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import trio

V3 = "/_matrix/client/v3"
T = TypeVar("T")


async def wait_until(
    check: Callable[[], Awaitable[T | None]], within: float = 20.0, what: str = "the condition"
) -> T:
    """Poll `check` until it returns something other than None (or False); return that, or fail
    after `within` seconds naming `what`."""
    deadline = trio.current_time() + within
    while True:
        result = await check()
        if result is not None and result is not False:
            return result
        if trio.current_time() > deadline:
            raise TimeoutError(f"{what} did not happen in {within} s")
        await trio.sleep(0.1)  # polling interval under a deadline


def _is_bot_notice(event: dict[str, Any]) -> bool:
    return (
        event.get("type") == "m.room.message"
        and event.get("content", {}).get("msgtype") == "m.notice"
        and str(event.get("sender", "")).startswith("@tribridge:")
    )


class Person:
    def __init__(self, http: httpx.AsyncClient, user_id: str) -> None:
        self.http = http
        self.user_id = user_id

    @classmethod
    async def register(
        cls, homeserver: str, localpart: str, display_name: str | None = None
    ) -> Person:
        http = httpx.AsyncClient(base_url=homeserver, timeout=30, trust_env=False)
        response = await http.post(
            f"{V3}/register",
            json={"username": localpart, "password": "tribridge-pass-1",
                  "auth": {"type": "m.login.dummy"}},
        )
        if response.status_code != 200:
            await http.aclose()
            raise RuntimeError(f"cannot register {localpart}: {response.text}")
        body = response.json()
        http.headers["Authorization"] = f"Bearer {body['access_token']}"
        person = cls(http, body["user_id"])
        if display_name is not None:
            await person.call("PUT", f"/profile/{quote(person.user_id)}/displayname",
                              {"displayname": display_name})
        return person

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        response = await self.http.request(method, V3 + path, json=body, params=params or None)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {response.status_code} {response.text}")
        return response.json()

    async def create_room(
        self,
        name: str | None,
        invite: list[str] | None = None,
        preset: str = "private_chat",
        *,
        is_direct: bool = False,
        topic: str | None = None,
    ) -> str:
        body: dict[str, Any] = {"preset": preset, "invite": invite or []}
        if name is not None:
            body["name"] = name
        if topic is not None:
            body["topic"] = topic
        if is_direct:
            body["is_direct"] = True
        return str((await self.call("POST", "/createRoom", body))["room_id"])

    async def leave(self, room_id: str) -> None:
        await self.call("POST", f"/rooms/{quote(room_id)}/leave", {})

    async def invites(self) -> dict[str, dict[str, Any]]:
        """Rooms this person is invited to, with the invite's stripped state, from /sync."""
        # Synapse caches an initial /sync per (user, filter) for a while: a fresh filter each
        # time (an unused presence type) makes it look again.
        nonce = f"org.tribridge.nonce.{secrets.token_hex(6)}"
        flt = quote(json.dumps({"room": {"timeline": {"limit": 0}},
                                "presence": {"types": [nonce]}}))
        batch = await self.call("GET", f"/sync?filter={flt}&timeout=0")
        return dict(batch.get("rooms", {}).get("invite", {}))

    async def wait_for_invite(
        self, predicate: Callable[[str, dict[str, Any]], bool] = lambda room, invite: True,
        within: float = 20.0,
    ) -> str:
        """Poll until an invite matching `predicate` (room id, invite state) arrives."""
        deadline = trio.current_time() + within
        while True:
            for room_id, invite in (await self.invites()).items():
                if predicate(room_id, invite):
                    return room_id
            if trio.current_time() > deadline:
                raise TimeoutError(f"{self.user_id} got no matching invite in {within} s")
            await trio.sleep(0.2)  # polling interval under a deadline

    async def command(self, room_id: str, text: str, within: float = 20.0) -> str:
        """Send `text` to the bot and return the body of the bot's next notice in the room."""
        before = {e["event_id"] for e in await self.messages(room_id, 50)}
        await self.send_text(room_id, text)

        def answered(events: list[dict[str, Any]]) -> bool:
            return any(_is_bot_notice(e) and e["event_id"] not in before for e in events)

        events = await self.wait_for(room_id, answered, within, f"the bot's answer to {text!r}")
        return next(
            str(e["content"]["body"]) for e in events
            if _is_bot_notice(e) and e["event_id"] not in before
        )

    async def join(self, room_id: str) -> None:
        await self.call("POST", f"/join/{quote(room_id)}", {})

    async def upload(self, data: bytes, content_type: str, filename: str) -> str:
        """Upload a file to this person's homeserver; its mxc URI."""
        response = await self.http.post(
            "/_matrix/media/v3/upload", params={"filename": filename}, content=data,
            headers={"Content-Type": content_type},
        )
        if response.status_code >= 400:
            raise RuntimeError(f"upload -> {response.status_code} {response.text}")
        return str(response.json()["content_uri"])

    async def download(self, mxc: str) -> bytes:
        """A file from this person's homeserver (authenticated media)."""
        server, _, media_id = mxc.removeprefix("mxc://").partition("/")
        response = await self.http.get(
            f"/_matrix/client/v1/media/download/{quote(server)}/{quote(media_id)}")
        if response.status_code >= 400:
            raise RuntimeError(f"download {mxc} -> {response.status_code} {response.text}")
        return response.content

    async def ephemeral(self, room_id: str) -> list[dict[str, Any]]:
        """The room's typing and receipt events as an initial /sync shows them now."""
        nonce = f"org.tribridge.nonce.{secrets.token_hex(6)}"  # see invites()
        flt = quote(json.dumps({"room": {"rooms": [room_id], "timeline": {"limit": 0},
                                         "state": {"types": []}},
                                "presence": {"types": [nonce]}}))
        batch = await self.call("GET", f"/sync?filter={flt}&timeout=0")
        room = batch.get("rooms", {}).get("join", {}).get(room_id, {})
        return list(room.get("ephemeral", {}).get("events", []))

    async def send_text(self, room_id: str, body: str, txn: str | None = None, **extra: Any) -> str:
        txn = txn or f"t{secrets.token_hex(8)}"
        content = {"msgtype": "m.text", "body": body, **extra}
        path = f"/rooms/{quote(room_id)}/send/m.room.message/{quote(txn)}"
        return str((await self.call("PUT", path, content))["event_id"])

    async def messages(self, room_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """The room's recent timeline, oldest first."""
        chunk = (
            await self.call("GET", f"/rooms/{quote(room_id)}/messages", dir="b", limit=limit)
        )["chunk"]
        return list(reversed(chunk))

    async def timeline(self, room_id: str) -> list[dict[str, Any]]:
        """The room's whole timeline as this person sees it, oldest first (paged)."""
        events: list[dict[str, Any]] = []
        token = None
        while True:
            params: dict[str, Any] = {"dir": "b", "limit": 1000}
            if token:
                params["from"] = token
            page = await self.call("GET", f"/rooms/{quote(room_id)}/messages", **params)
            events.extend(page["chunk"])
            token = page.get("end")
            if not page["chunk"] or not token:
                return list(reversed(events))

    async def texts(self, room_id: str) -> list[tuple[str, str]]:
        """(sender, body) of every m.room.message in the room, oldest first."""
        return [
            (e["sender"], e["content"].get("body", ""))
            for e in await self.messages(room_id)
            if e.get("type") == "m.room.message"
        ]

    async def watch(self, room_id: str, prefix: str, seen: dict[str, float], want: int) -> None:
        """Long-poll /sync (filtered to the room's timeline) and note, in `seen`, when each
        message whose body starts with `prefix` became visible; return once `want` were seen.
        Cheap for the homeserver, unlike polling /messages, so benches measure the bridge."""
        flt = quote(json.dumps({
            "room": {"rooms": [room_id], "state": {"types": []}, "ephemeral": {"types": []},
                     "account_data": {"types": []}, "timeline": {"limit": 1000}},
            "presence": {"types": []}, "account_data": {"types": []},
        }))
        since = (await self.call("GET", f"/sync?filter={flt}&timeout=0"))["next_batch"]
        while len(seen) < want:
            batch = await self.call("GET", f"/sync?filter={flt}&since={since}&timeout=5000")
            now = trio.current_time()
            since = batch["next_batch"]
            room = batch.get("rooms", {}).get("join", {}).get(room_id, {})
            for event in room.get("timeline", {}).get("events", []):
                body = event.get("content", {}).get("body", "")
                if isinstance(body, str) and body.startswith(prefix) and body not in seen:
                    seen[body] = now

    async def members(self, room_id: str) -> dict[str, str | None]:
        """Joined members and their display names in the room."""
        joined = (await self.call("GET", f"/rooms/{quote(room_id)}/joined_members"))["joined"]
        return {uid: info.get("display_name") for uid, info in joined.items()}

    async def wait_for(
        self,
        room_id: str,
        predicate: Callable[[list[dict[str, Any]]], bool],
        within: float = 20.0,
        what: str = "the expected events",
        *,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """Poll the room's timeline (its newest `limit` events) until `predicate` holds, or fail
        after `within` seconds. A small `limit` keeps the polling cheap for the homeserver when
        only the newest events matter (a catch-up being timed must not be slowed by the
        watcher)."""
        deadline = trio.current_time() + within
        while True:
            events = await self.messages(room_id, limit)
            if predicate(events):
                return events
            if trio.current_time() > deadline:
                raise TimeoutError(f"{self.user_id} did not see {what} in {within} s")
            await trio.sleep(0.1)  # polling interval under a deadline
