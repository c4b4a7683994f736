"""`tribridge chat`: a minimal terminal client for one encrypted portal room.

Log in, join the room, announce this device, then print every message as it arrives (decrypted
here, on your machine) and send every line you type, encrypted. `/safety <user id>` prints the
safety number with someone, `/quit` leaves. Warnings (an identity key that changed) are printed
as they happen. Keys, sessions and what was already read are kept in a 0600 file (saved before
each ciphertext leaves), so the next run is the same device and carries on where this one stopped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

import httpx
import trio

from bridge.client.e2ee import E2EEClient, Received
from bridge.core.e2ee.safety import grouped

V3 = "/_matrix/client/v3"


async def login(homeserver: str, user: str, password: str) -> tuple[httpx.AsyncClient, str]:
    http = httpx.AsyncClient(base_url=homeserver, timeout=60, trust_env=False)
    try:
        response = await http.post(f"{V3}/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
            "password": password,
        })
    except httpx.TransportError as exc:
        await http.aclose()
        raise SystemExit(f"tribridge chat: cannot reach {homeserver}: {exc}") from None
    if response.status_code != 200:
        await http.aclose()
        raise SystemExit(f"tribridge chat: login failed: {response.status_code} {response.text}")
    body = response.json()
    http.headers["Authorization"] = f"Bearer {body['access_token']}"
    return http, str(body["user_id"])


def _show(item: Received, out: TextIO) -> None:
    if item.body is not None:
        print(f"<{item.sender}> {item.body}", file=out, flush=True)
    else:
        print(f"<{item.sender}> (cannot decrypt: {item.error})", file=out, flush=True)


async def chat(
    homeserver: str, user: str, password: str, room: str, origin: str, keys: Path,
    out: TextIO = sys.stdout,
) -> int:
    http, user_id = await login(homeserver, user, password)
    try:
        client = E2EEClient(http, user_id, origin, state_path=keys)
        if await trio.Path(keys).exists():
            client.load_state(keys)
        else:
            client.save_state(keys)
        join = await http.post(f"{V3}/join/{quote(room)}", json={})
        if join.status_code != 200:
            print(f"tribridge chat: cannot join {room}: {join.text}", file=out)
            return 1
        await client.enter(room)
        client.save_state(keys)
        print(f"in {room} as {user_id} (device {client.device.device_id}); /quit to leave",
              file=out, flush=True)
        shown, warned = 0, 0

        async def refresh() -> None:
            nonlocal shown, warned
            received = await client.read(room)
            for item in received[shown:]:
                _show(item, out)
            shown = len(received)
            for warning in client.warnings[warned:]:
                print(f"!! {warning}", file=out, flush=True)
            warned = len(client.warnings)

        async def follow() -> None:
            flt = quote(json.dumps({"room": {"rooms": [room], "timeline": {"limit": 50}}}))
            since = (await http.get(f"{V3}/sync?filter={flt}&timeout=0")).json()["next_batch"]
            await refresh()
            while True:  # long-polls: the homeserver answers when something happens
                batch = (await http.get(
                    f"{V3}/sync?filter={flt}&since={since}&timeout=25000"
                )).json()
                since = batch["next_batch"]
                if batch.get("rooms", {}).get("join", {}).get(room):
                    await refresh()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            stdin = trio.wrap_file(sys.stdin)
            async for line in stdin:
                text = line.strip()
                if text == "/quit":
                    break
                if text.startswith("/safety "):
                    number = client.safety_number(text.split(None, 1)[1])
                    print(grouped(number) if number else "no key known for them yet",
                          file=out, flush=True)
                elif text:
                    await client.send(room, text)
            nursery.cancel_scope.cancel()
    finally:
        await http.aclose()
    return 0
