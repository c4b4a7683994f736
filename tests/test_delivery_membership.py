"""Membership, profiles and room state carried out by the delivery worker (bridge/delivery.py:
Member, GhostSync and RoomState actions) and ghosts' avatars (bridge/ghostkeeper.py).

Runs the real worker, store and client against tests/fakehs.py, extended here with the calls these
actions make (kick, ban, unban, room state, the media API), under trio's virtual clock. Every
request is recorded, so the tests say what reached each homeserver, as whom.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import trio
import trio.testing

from bridge.core.actions import (
    Action,
    GhostSync,
    Member,
    RoomState,
    SendMessage,
    txn_id,
)
from bridge.core.ghosts import derive_key
from bridge.core.model import EventRef, Network
from bridge.core.translate import ghost_for
from bridge.delivery import DeliveryWorker
from bridge.ghostkeeper import AVATAR_SECONDS
from bridge.matrix.client import Homeserver
from bridge.store import Store

from .fakehs import FakeHomeserver, error
from .rigs import start_workers, until

KEY = derive_key(b"m" * 32)
WA = Network("wa", "WhatsApp", "wa.test", "phone", "tribridge", "_tb_", False)
IG = Network("ig", "Instagram", "ig.test", "handle", "tribridge", "_tb_", True)
NETWORKS = {"wa": WA, "ig": IG}
CLIENT = "/_matrix/client/v3"
UPLOAD = "/_matrix/media/v3/upload"
DOWNLOAD = "/_matrix/client/v1/media/download/"

PERSON = "@+15551234567:wa.test"  # the person whose membership changes
KICKER = "@+15557654321:wa.test"  # the one who kicks, bans or invites them
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
FORBIDDEN = error(403, "M_FORBIDDEN")


def ghost_of(user: str) -> str:
    """The localpart of the ghost on Instagram of a WhatsApp user."""
    localpart = ghost_for(user, WA, IG, NETWORKS, KEY)
    assert localpart is not None
    return localpart


PERSON_GHOST, KICKER_GHOST = ghost_of(PERSON), ghost_of(KICKER)
PERSON_ID, KICKER_ID = IG.user_id(PERSON_GHOST), IG.user_id(KICKER_GHOST)


@dataclass
class Call:
    method: str
    path: str  # percent-decoded
    user: str  # the user the appservice acted as (the bot unless user_id says otherwise)
    body: Any


@dataclass
class Hs(FakeHomeserver):
    """FakeHomeserver plus kick/ban/unban, room state and the media API; every request is in
    `calls`. `refuse(call)` may answer a call instead (an error), `hang(call)` may sit on it."""

    calls: list[Call] = field(default_factory=list)
    refuse: Callable[[Call], httpx.Response | None] = lambda call: None
    hang: Callable[[Call], bool] = lambda call: False
    files: dict[str, bytes] = field(default_factory=dict)  # media id -> bytes, for downloads
    uploads: list[tuple[str, bytes]] = field(default_factory=list)  # (as whom, bytes)
    room_state: dict[tuple[str, str], Any] = field(default_factory=dict)  # (room, type) -> content

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = unquote(request.url.path)
        user = request.url.params.get("user_id") or f"@tribridge:{self.server_name}"
        if path == UPLOAD:  # streamed: read it here, before the base class looks at it
            data = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
            call = Call(request.method, path, user, data)
        else:
            call = Call(request.method, path, user,
                        json.loads(request.content) if request.content else {})
        self.calls.append(call)
        if self.hang(call):
            await trio.sleep_forever()
        refused = self.refuse(call)
        if refused is not None:
            return refused
        parts = path.split("/")
        if path == UPLOAD:
            self.uploads.append((user, call.body))
            return httpx.Response(
                200, json={"content_uri": f"mxc://{self.server_name}/up{len(self.uploads)}"})
        if path.startswith(DOWNLOAD):
            data = self.files.get(parts[-1])
            if data is None:
                return error(404, "M_NOT_FOUND")
            return httpx.Response(200, content=_chunks(data), headers={
                "Content-Type": "image/png", "Content-Length": str(len(data))})
        if request.method == "POST" and "rooms" in parts and parts[-1] in ("kick", "ban", "unban"):
            return httpx.Response(200, json={})
        if request.method == "PUT" and "/state/" in path:
            room_id, event_type = parts[parts.index("rooms") + 1], parts[-2]
            self.room_state[(room_id, event_type)] = call.body
            return httpx.Response(200, json={"event_id": f"$state{len(self.calls)}"})
        return await super().handle_async_request(request)

    def did(self, method: str, path: str) -> list[Call]:
        """The calls of `method` to `path` (relative to the client API), in order."""
        return [c for c in self.calls if c.method == method and c.path == CLIENT + path]


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1000):
        yield data[i:i + 1000]


def refuse_if(method: str, path: str, user: str | None = None,
              answer: httpx.Response = FORBIDDEN) -> Callable[[Call], httpx.Response | None]:
    def refuse(call: Call) -> httpx.Response | None:
        mine = call.method == method and call.path == CLIENT + path
        return answer if mine and user in (None, call.user) else None
    return refuse


@dataclass
class Rig:
    store: Store
    fakes: dict[str, Hs]
    workers: dict[str, DeliveryWorker]

    def queue(self, *actions: Action) -> None:
        with self.store.transaction():
            self.store.enqueue(actions)
        for worker in self.workers.values():
            worker.wake()

    def state(self, event_id: str) -> list[tuple[str, str, str, str | None]]:
        """(target network, kind, state, note) of each action of a WhatsApp event."""
        return [(s.network, s.kind, s.state, s.last_error)
                for s in self.store.delivery_status("wa", event_id)]

    async def settled(self, within: float = 3600) -> None:
        """Until no action is pending anywhere (polled in virtual time)."""
        await until(lambda: not self.store.outbox_depth(), within)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    fakes = {"wa": Hs("wa.test"), "ig": Hs("ig.test")}
    store = Store(tmp_path / "m.db", durability="process")
    store.sync_config_portals([{"wa": "!wa-room", "ig": "!ig-room"}])
    async with (
        httpx.AsyncClient(transport=fakes["wa"], base_url="http://wa") as wa_http,
        httpx.AsyncClient(transport=fakes["ig"], base_url="http://ig") as ig_http,
        trio.open_nursery() as nursery,
    ):
        homeservers = {
            "wa": Homeserver(wa_http, "wa.test", deadline=30),
            "ig": Homeserver(ig_http, "ig.test", deadline=30),
        }
        workers = await start_workers(nursery, homeservers, NETWORKS, store, KEY)
        yield Rig(store, fakes, workers)
        nursery.cancel_scope.cancel()
    store.close()


def member(op: str, event: str = "$member", actor: str | None = KICKER,
           reason: str | None = None) -> Member:
    return Member(
        network="ig", room_id="!ig-room", ghost=PERSON_GHOST, person=PERSON, op=op,
        source=EventRef("wa", "!wa-room", event, actor or PERSON),
        actor=ghost_of(actor) if actor else None, reason=reason,
        txn_id=txn_id("wa", event, "ig", "member"),
    )


def message(body: str, sender: str = PERSON) -> SendMessage:
    event = f"$msg-{body}"
    return SendMessage(
        network="ig", room_id="!ig-room", ghost=ghost_of(sender),
        source=EventRef("wa", "!wa-room", event, sender),
        content={"msgtype": "m.text", "body": body},
        txn_id=txn_id("wa", event, "ig", "message"),
    )


def ghost_sync(event: str) -> GhostSync:
    return GhostSync("ig", "!ig-room", PERSON_GHOST, EventRef("wa", "!wa-room", event, PERSON),
                     txn_id("wa", event, "ig", "profile"))


def room_state(event_type: str, content: dict[str, Any], event: str = "$state") -> RoomState:
    return RoomState("ig", "!ig-room", event_type, content,
                     EventRef("wa", "!wa-room", event, PERSON), txn_id("wa", event, "ig", "state"))


def ghost_made(store: Store, name: str = "Alice (WhatsApp)") -> None:
    """PERSON's ghost on Instagram, registered and named, as an earlier message left it."""
    store.set_profile("wa", PERSON, "Alice")
    store.save_ghost("ig", PERSON_GHOST, "wa", name, PERSON)


# -- Member ------------------------------------------------------------------------------------


async def test_a_join_registers_the_ghost_and_joins_it(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.store.set_profile("wa", PERSON, "Alice")
    rig.queue(member("join", actor=None))
    await rig.settled()
    ig = rig.fakes["ig"]
    assert rig.state("$member") == [("ig", "member", "done", None)]
    assert PERSON_ID in ig.registered
    assert ("!ig-room", PERSON_ID) in ig.joined
    assert [(c.user, c.body) for c in ig.did("PUT", f"/profile/{PERSON_ID}/displayname")] == [
        (PERSON_ID, {"displayname": "Alice (WhatsApp)"})]
    assert [(c.user, c.body) for c in ig.did("POST", "/rooms/!ig-room/invite")] == [
        (IG.bot_user_id, {"user_id": PERSON_ID})]
    steps = [c.path for c in ig.calls]
    assert steps.index(f"{CLIENT}/register") < steps.index(f"{CLIENT}/join/!ig-room")
    assert rig.store.ghost_in_room("ig", PERSON_GHOST, "!ig-room")
    assert rig.fakes["wa"].sent == []


async def test_a_kick_is_done_by_the_kickers_ghost_and_a_later_message_rejoins(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    ghost_made(rig.store)
    rig.store.set_ghost_in_room("ig", PERSON_GHOST, "!ig-room", True)
    rig.queue(member("kick", reason="spam"))
    await rig.settled()
    ig = rig.fakes["ig"]
    assert [(c.user, c.body) for c in ig.did("POST", "/rooms/!ig-room/kick")] == [
        (KICKER_ID, {"user_id": PERSON_ID, "reason": "spam"})]
    assert ("!ig-room", KICKER_ID) in ig.joined  # the kicker's ghost came in to do it
    assert rig.state("$member") == [("ig", "member", "done", None)]
    assert ("!ig-room", PERSON_ID) not in ig.joined
    rig.queue(message("back"))  # out of the room now: speaking again brings the ghost back
    await rig.settled()
    assert ("!ig-room", PERSON_ID) in ig.joined
    assert ig.texts("!ig-room") == ["back"]


async def test_a_kick_the_kickers_ghost_may_not_do_falls_back_to_the_bot(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    ig = rig.fakes["ig"]
    ig.refuse = refuse_if("POST", "/rooms/!ig-room/kick", user=KICKER_ID)
    rig.store.set_ghost_in_room("ig", PERSON_GHOST, "!ig-room", True)
    rig.store.save_ghost("ig", PERSON_GHOST, "wa", "Person", PERSON)  # seen before
    rig.queue(member("kick"))
    await rig.settled()
    assert [(c.user, c.body) for c in ig.did("POST", "/rooms/!ig-room/kick")] == [
        (KICKER_ID, {"user_id": PERSON_ID}), (IG.bot_user_id, {"user_id": PERSON_ID})]
    assert rig.state("$member") == [("ig", "member", "done", None)]
    assert not rig.store.ghost_in_room("ig", PERSON_GHOST, "!ig-room")


async def test_a_kicker_whose_ghost_may_not_come_in_leaves_the_kick_to_the_bot(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    ig = rig.fakes["ig"]
    invite, join = refuse_if("POST", "/rooms/!ig-room/invite"), refuse_if(
        "POST", "/join/!ig-room", user=KICKER_ID)
    ig.refuse = lambda call: invite(call) or join(call)
    rig.queue(member("ban"))
    await rig.settled()
    assert [c.user for c in ig.did("POST", "/rooms/!ig-room/ban")] == [IG.bot_user_id]
    assert rig.state("$member") == [("ig", "member", "done", None)]


async def test_a_kick_no_one_may_do_is_done_with_a_note_and_holds_nothing_up(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    ig = rig.fakes["ig"]
    ig.refuse = refuse_if("POST", "/rooms/!ig-room/kick")
    rig.store.set_ghost_in_room("ig", PERSON_GHOST, "!ig-room", True)
    rig.store.save_ghost("ig", PERSON_GHOST, "wa", "Person", PERSON)  # seen before
    rig.queue(member("kick"), message("after the kick", sender=KICKER))
    await rig.settled()
    ((network, kind, state, note),) = rig.state("$member")
    assert (network, kind, state) == ("ig", "member", "done")  # done, not failed
    assert note is not None and note.startswith("not mirrored: 403 M_FORBIDDEN")
    assert [c.user for c in ig.did("POST", "/rooms/!ig-room/kick")] == [KICKER_ID, IG.bot_user_id]
    assert ig.texts("!ig-room") == ["after the kick"]  # the room went on
    assert rig.state("$msg-after the kick") == [("ig", "message", "done", None)]
    assert rig.store.ghost_in_room("ig", PERSON_GHOST, "!ig-room")  # it is still there
    assert rig.fakes["wa"].sent == []  # a membership is no message: no failure notice


@pytest.mark.parametrize(("op", "body"), [
    ("invite", {"user_id": PERSON_ID}),
    ("ban", {"user_id": PERSON_ID, "reason": "rude"}),
    ("unban", {"user_id": PERSON_ID, "reason": "rude"}),
])
async def test_invite_ban_and_unban_are_done_by_the_actors_ghost(
    rig: Rig, autojump_clock: trio.testing.MockClock, op: str, body: dict[str, str]
) -> None:
    rig.store.save_ghost("ig", PERSON_GHOST, "wa", "Person", PERSON)  # seen before
    rig.queue(member(op, reason="rude"))
    await rig.settled()
    ig = rig.fakes["ig"]
    done_to_them = [(c.user, c.body) for c in ig.did("POST", f"/rooms/!ig-room/{op}")
                    if c.body["user_id"] == PERSON_ID]  # (the bot invites the actor's ghost)
    assert done_to_them == [(KICKER_ID, body)]
    assert ("!ig-room", PERSON_ID) not in ig.joined  # invited or banned, never joined by us
    assert rig.state("$member") == [("ig", "member", "done", None)]


async def test_a_server_error_on_a_kick_is_retried_not_noted(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    ig = rig.fakes["ig"]
    busy = refuse_if("POST", "/rooms/!ig-room/kick", answer=error(500, "M_UNKNOWN"))
    kicks = "/rooms/!ig-room/kick"
    ig.refuse = lambda call: busy(call) if len(ig.did("POST", kicks)) == 1 else None
    rig.store.save_ghost("ig", PERSON_GHOST, "wa", "Person", PERSON)  # seen before
    rig.queue(member("kick"))
    await rig.settled()
    assert [c.user for c in ig.did("POST", "/rooms/!ig-room/kick")] == [KICKER_ID, KICKER_ID]
    ((_, _, state, note),) = rig.state("$member")
    assert (state, note) == ("done", None)


# -- GhostSync and avatars -----------------------------------------------------------------------


async def test_a_new_name_renames_a_registered_ghost(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    ghost_made(rig.store)
    rig.fakes["wa"].profiles[PERSON] = {"displayname": "Alice Liddell"}  # her own, now
    rig.queue(ghost_sync("$rename"))
    await rig.settled()
    ig = rig.fakes["ig"]
    assert [(c.user, c.body) for c in ig.did("PUT", f"/profile/{PERSON_ID}/displayname")] == [
        (PERSON_ID, {"displayname": "Alice Liddell (WhatsApp)"})]
    assert ig.did("POST", "/register") == []
    assert rig.state("$rename") == [("ig", "profile", "done", None)]


async def test_a_profile_change_of_a_ghost_never_made_makes_none(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.fakes["wa"].profiles[PERSON] = {"displayname": "Alice", "avatar_url": "mxc://wa.test/face"}
    rig.fakes["wa"].files["face"] = PNG
    rig.queue(ghost_sync("$rename"))
    await rig.settled()
    assert rig.fakes["ig"].calls == []  # a ghost made later gets the name and avatar then
    assert rig.state("$rename") == [("ig", "profile", "done", None)]


async def test_a_new_avatar_is_carried_to_the_ghost_once(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    ghost_made(rig.store)
    wa, ig = rig.fakes["wa"], rig.fakes["ig"]
    wa.files.update({"face": PNG, "face2": PNG[::-1]})
    wa.profiles[PERSON] = {"displayname": "Alice", "avatar_url": "mxc://wa.test/face"}
    rig.queue(ghost_sync("$avatar"))
    await rig.settled()
    assert [c.path for c in wa.calls if c.path.startswith(DOWNLOAD)] == [DOWNLOAD + "wa.test/face"]
    assert ig.uploads == [(PERSON_ID, PNG)]  # uploaded as the ghost
    assert [(c.user, c.body) for c in ig.did("PUT", f"/profile/{PERSON_ID}/avatar_url")] == [
        (PERSON_ID, {"avatar_url": "mxc://ig.test/up1"})]

    rig.queue(ghost_sync("$again"), message("hello"))  # the same picture: not carried again
    await rig.settled()
    assert len(ig.uploads) == 1
    assert len([c for c in wa.calls if c.path.startswith(DOWNLOAD)]) == 1
    assert len(ig.did("PUT", f"/profile/{PERSON_ID}/avatar_url")) == 1

    wa.profiles[PERSON] = {"displayname": "Alice", "avatar_url": "mxc://wa.test/face2"}
    rig.queue(ghost_sync("$avatar2"))
    await rig.settled()
    assert ig.uploads[1:] == [(PERSON_ID, PNG[::-1])]
    assert [c.body for c in ig.did("PUT", f"/profile/{PERSON_ID}/avatar_url")][1:] == [
        {"avatar_url": "mxc://ig.test/up2"}]


async def test_an_avatar_removed_is_removed_from_the_ghost(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    ghost_made(rig.store)
    rig.store.set_ghost_avatar("ig", PERSON_GHOST, "mxc://wa.test/face")
    rig.fakes["wa"].profiles[PERSON] = {"displayname": "Alice"}  # no picture any more
    rig.queue(ghost_sync("$no-avatar"))
    await rig.settled()
    ig = rig.fakes["ig"]
    assert [c.body for c in ig.did("PUT", f"/profile/{PERSON_ID}/avatar_url")] == [
        {"avatar_url": ""}]
    assert ig.uploads == []
    assert [c for c in rig.fakes["wa"].calls if c.path.startswith(DOWNLOAD)] == []


async def test_an_avatar_that_cannot_be_carried_holds_no_message_back_and_is_not_retried(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.store.set_profile("wa", PERSON, "Alice", "mxc://wa.test/gone")  # wa no longer has it
    rig.queue(message("first"))
    await rig.settled()
    ig, wa = rig.fakes["ig"], rig.fakes["wa"]
    assert ig.texts("!ig-room") == ["first"]
    assert rig.state("$msg-first") == [("ig", "message", "done", None)]
    assert [c.path for c in wa.calls if c.path.startswith(DOWNLOAD)] == [DOWNLOAD + "wa.test/gone"]
    assert ig.did("PUT", f"/profile/{PERSON_ID}/avatar_url") == []
    rig.queue(message("second"))
    await rig.settled()
    assert ig.texts("!ig-room") == ["first", "second"]
    assert len([c for c in wa.calls if c.path.startswith(DOWNLOAD)]) == 1  # not before each one


async def test_an_avatar_the_source_sits_on_delays_a_message_by_at_most_avatar_seconds(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.store.set_profile("wa", PERSON, "Alice", "mxc://wa.test/slow")
    rig.fakes["wa"].hang = lambda call: call.path.startswith(DOWNLOAD)
    start = trio.current_time()
    rig.queue(message("hi"))
    await until(lambda: rig.fakes["ig"].texts("!ig-room") == ["hi"], within=AVATAR_SECONDS + 5)
    assert trio.current_time() - start >= AVATAR_SECONDS
    assert rig.fakes["ig"].did("PUT", f"/profile/{PERSON_ID}/avatar_url") == []


# -- RoomState ---------------------------------------------------------------------------------


async def test_a_room_name_is_set_by_the_bot(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.queue(room_state("m.room.topic", {"topic": "Saturday plans"}))
    await rig.settled()
    ig = rig.fakes["ig"]
    assert [(c.user, c.body) for c in ig.did("PUT", "/rooms/!ig-room/state/m.room.topic/")] == [
        (IG.bot_user_id, {"topic": "Saturday plans"})]
    assert rig.state("$state") == [("ig", "state", "done", None)]
    assert rig.fakes["wa"].sent == []


async def test_a_refused_room_state_tells_the_source_room_once(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    ig, wa = rig.fakes["ig"], rig.fakes["wa"]
    ig.refuse = refuse_if("PUT", "/rooms/!ig-room/state/m.room.name/")
    rig.queue(room_state("m.room.name", {"name": "Plans"}), message("after the rename"))
    await rig.settled()
    (notice,) = wa.sent
    assert (notice.room_id, notice.sender) == ("!wa-room", WA.bot_user_id)
    assert notice.content["msgtype"] == "m.notice"
    assert notice.content["body"].startswith("The room's name was not copied to Instagram:")
    statuses = [(net, kind, state) for net, kind, state, _ in rig.state("$state")]
    assert statuses == [("ig", "state", "done"), ("wa", "notice", "done")]  # done, not failed
    assert len(ig.did("PUT", "/rooms/!ig-room/state/m.room.name/")) == 1  # not retried
    assert ig.texts("!ig-room") == ["after the rename"]


async def test_a_room_state_refused_for_a_passing_reason_is_retried(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    ig = rig.fakes["ig"]
    path = "/rooms/!ig-room/state/m.room.name/"
    busy = refuse_if("PUT", path, answer=error(429, "M_LIMIT_EXCEEDED", retry_after_ms=2000))
    ig.refuse = lambda call: busy(call) if len(ig.did("PUT", path)) < 3 else None
    rig.queue(room_state("m.room.name", {"name": "Plans"}))
    await rig.settled()
    assert len(ig.did("PUT", path)) == 3
    assert ig.room_state[("!ig-room", "m.room.name")] == {"name": "Plans"}
    assert rig.state("$state") == [("ig", "state", "done", None)]
    assert rig.fakes["wa"].sent == []  # no notice for a refusal that passed


async def test_a_room_avatar_is_carried_as_media_by_the_bot(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    wa, ig = rig.fakes["wa"], rig.fakes["ig"]
    wa.files["roompic"] = PNG
    info = {"mimetype": "image/png", "size": len(PNG)}
    rig.queue(room_state("m.room.avatar", {"url": "mxc://wa.test/roompic", "info": info}))
    await rig.settled()
    assert [c.path for c in wa.calls] == [DOWNLOAD + "wa.test/roompic"]
    assert ig.uploads == [(IG.bot_user_id, PNG)]
    assert [(c.user, c.body) for c in ig.did("PUT", "/rooms/!ig-room/state/m.room.avatar/")] == [
        (IG.bot_user_id, {"url": "mxc://ig.test/up1", "info": info})]
    assert rig.state("$state") == [("ig", "state", "done", None)]


async def test_a_room_avatar_the_source_no_longer_has_fails_and_holds_nothing_up(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.queue(room_state("m.room.avatar", {"url": "mxc://wa.test/gone"}), message("next"))
    await rig.settled()
    ig = rig.fakes["ig"]
    ((_, _, state, note),) = rig.state("$state")
    assert state == "failed" and note is not None and "TB_MEDIA_GONE" in note
    assert ig.did("PUT", "/rooms/!ig-room/state/m.room.avatar/") == []
    assert ig.uploads == []
    assert ig.texts("!ig-room") == ["next"]


async def test_a_kick_of_someone_who_has_no_ghost_here_makes_none(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.queue(member("kick"))
    await rig.settled()
    ig = rig.fakes["ig"]
    assert ig.did("POST", "/rooms/!ig-room/kick") == []
    assert PERSON_GHOST not in str(ig.did("POST", "/register"))
    assert rig.state("$member") == [
        ("ig", "member", "done", "not mirrored: the person has no ghost here")]


# -- a ghost's state, remembered between messages ---------------------------------------------


async def test_a_settled_ghost_costs_a_message_only_its_send_until_its_person_changes(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.store.set_profile("wa", PERSON, "Alice")
    ig = rig.fakes["ig"]
    rig.queue(message("one"))
    await rig.settled()
    assert [c.method for c in ig.calls if "/send/" not in c.path] != []  # made: register, ...
    made = len(ig.calls)
    rig.queue(message("two"), message("three"))
    await rig.settled()
    assert [c.path.rsplit("/", 3)[-3] for c in ig.calls[made:]] == ["send", "send"]
    # Settled now: the next message's send does not even read the ghost's record again.
    reads: list[tuple[str, str]] = []
    ghost = rig.store.ghost
    rig.store.ghost = lambda *a: reads.append(a) or ghost(*a)  # type: ignore[method-assign]
    rig.queue(message("three and a half"))
    await rig.settled()
    rig.store.ghost = ghost  # type: ignore[method-assign]
    assert reads == []
    # The person renames themselves (their member event wrote the profile): the next message
    # renames the ghost first, though the ghost's state was remembered.
    rig.store.set_profile("wa", PERSON, "Alice Liddell")
    rig.queue(message("four"))
    await rig.settled()
    assert [c.body for c in ig.did("PUT", f"/profile/{PERSON_ID}/displayname")][-1] == {
        "displayname": "Alice Liddell (WhatsApp)"}
    # The ghost was taken out of the room (a kick carried out here wrote it down): the next
    # message brings it back before its send.
    rig.store.set_ghost_in_room("ig", PERSON_GHOST, "!ig-room", False)
    rig.queue(message("five"))
    await rig.settled()
    assert ig.did("POST", "/join/!ig-room")[-1].user == PERSON_ID
    assert ig.texts("!ig-room") == ["one", "two", "three", "three and a half", "four", "five"]


async def test_a_ghost_whose_persons_profile_could_not_be_read_asks_again_next_time(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    wa, ig = rig.fakes["wa"], rig.fakes["ig"]
    wa.refuse = lambda call: error(502, "M_UNKNOWN") if "/profile/" in call.path else None
    for body in ("one", "two"):  # the second finds the ghost made and named, by a fallback
        rig.queue(message(body))
        await rig.settled()
    asked = len([c for c in wa.calls if "/profile/" in c.path])
    assert asked >= 2 and ig.texts("!ig-room") == ["one", "two"]
    wa.refuse = lambda call: None
    rig.queue(message("three"))
    await rig.settled()
    assert len([c for c in wa.calls if "/profile/" in c.path]) > asked
