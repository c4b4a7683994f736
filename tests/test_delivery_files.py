"""File messages whose file cannot be carried: the words still go, the sender hears why, and
nothing holds a room's queue for good (bridge/delivery.py with bridge/media.py)."""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing

from bridge.core.actions import SendMessage, txn_id
from bridge.core.model import EventRef
from bridge.delivery import MEDIA_TRIES

from .fakehs import error
from .test_delivery_membership import DOWNLOAD, PERSON, PNG, UPLOAD, Rig, ghost_of, message, rig

__all__ = ["rig"]  # the fixture, used by name


def image(event: str = "$img", body: str = "the view from the top",
          reply_to: str | None = None) -> SendMessage:
    content = {"msgtype": "m.image", "body": body, "filename": "view.png",
               "url": "mxc://wa.test/pic", "info": {"mimetype": "image/png"}}
    if reply_to:
        content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
    return SendMessage(network="ig", room_id="!ig-room", ghost=ghost_of(PERSON),
                       source=EventRef("wa", "!wa-room", event, PERSON), content=content,
                       txn_id=txn_id("wa", event, "ig", "message"))


def sent_bodies(rig: Rig) -> list[str]:
    return [str(s.content.get("body")) for s in rig.fakes["ig"].sent]


def notices(rig: Rig) -> list[str]:
    return [str(s.content.get("body")) for s in rig.fakes["wa"].sent]


async def test_a_file_its_server_no_longer_has_goes_as_text_and_the_sender_hears_why(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.queue(image(), message("after"))  # no such file on wa: gone for good
    await rig.settled()
    assert sent_bodies(rig) == [
        "(An image was sent here, could not be carried here.) the view from the top", "after"]
    (first, *_) = rig.fakes["ig"].sent
    assert first.content["msgtype"] == "m.text" and "url" not in first.content
    # Its row says so: a retry after a crash sends this same text, never the file as well.
    (payload,) = rig.store.conn.execute(
        "SELECT payload FROM outbox WHERE network = 'ig' AND src_event = '$img'").fetchone()
    assert '"m.text"' in payload and "mxc://" not in payload
    (notice,) = notices(rig)
    assert notice.startswith("Your file does not reach Instagram (wa.test could not give the "
                             "file: 404 M_NOT_FOUND")
    assert notice.endswith("); the message goes without it.")


async def test_a_file_whose_server_keeps_failing_holds_its_room_only_so_long(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    wa = rig.fakes["wa"]
    wa.files["pic"] = PNG
    wa.refuse = lambda call: error(500, "M_UNKNOWN") if call.path.startswith(DOWNLOAD) else None
    start = trio.current_time()
    rig.queue(image(), message("after"))
    await rig.settled(within=24 * 3600)
    assert sent_bodies(rig)[-1] == "after"
    assert sent_bodies(rig)[0].startswith("(An image was sent here, could not be carried")
    downloads = [c for c in wa.calls if c.path.startswith(DOWNLOAD)]
    assert len(downloads) == MEDIA_TRIES
    assert trio.current_time() - start < 3600  # not a week, as before
    assert notices(rig) == ["Your file does not reach Instagram (your homeserver kept failing "
                            "to give it); the message goes without it."]


async def test_a_stalled_download_is_given_up_on_within_a_minute_a_try(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    wa = rig.fakes["wa"]
    wa.hang = lambda call: call.path.startswith(DOWNLOAD)
    start = trio.current_time()
    rig.queue(image(), message("after"))
    await rig.settled(within=24 * 3600)
    assert sent_bodies(rig)[-1] == "after"
    # Ten tries of at most a minute each, and the backoff between them.
    assert trio.current_time() - start < MEDIA_TRIES * 60 + 1200


async def test_a_ghost_that_must_join_again_sends_the_copy_it_already_made(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    wa, ig = rig.fakes["wa"], rig.fakes["ig"]
    wa.files["pic"] = PNG
    refused = {"sends": 0}

    def once_forbidden(call: object) -> httpx.Response | None:
        path = getattr(call, "path", "")
        if "/send/" in path and refused["sends"] == 0:
            refused["sends"] += 1
            return error(403, "M_FORBIDDEN")  # kicked since it last joined
        return None

    ig.refuse = once_forbidden
    rig.queue(image())
    await rig.settled()
    assert [c for c in wa.calls if c.path.startswith(DOWNLOAD)] != []
    assert len([c for c in wa.calls if c.path.startswith(DOWNLOAD)]) == 1
    assert len([c for c in ig.calls if c.path == UPLOAD]) == 1
    (sent,) = ig.sent
    assert sent.content["url"] == "mxc://ig.test/up1"
    assert notices(rig) == []


async def test_an_upload_that_keeps_breaking_off_backs_off_and_the_file_waits_for_it(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    wa, ig = rig.fakes["wa"], rig.fakes["ig"]
    wa.files["pic"] = PNG
    base = type(ig).handle_async_request

    async def resetting(request: httpx.Request) -> httpx.Response:
        if request.url.path == UPLOAD:  # a proxy closing the connection mid-upload
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return await base(ig, request)

    ig.handle_async_request = resetting  # type: ignore[method-assign]
    rig.queue(image())
    await trio.sleep(600)
    # With backoff: not a download every half second, as when the target was taken for down.
    assert len([c for c in wa.calls if c.path.startswith(DOWNLOAD)]) <= MEDIA_TRIES
    # The target's trouble, not the file's: the message waits for it, as a text would, and
    # goes with its file once uploads work again.
    ig.handle_async_request = base.__get__(ig)  # type: ignore[method-assign]
    await rig.settled(within=24 * 3600)
    (sent,) = ig.sent
    assert sent.content["url"].startswith("mxc://ig.test/") and notices(rig) == []


async def test_a_bug_met_while_sending_tells_the_sender(
    rig: Rig, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def buggy(*args: object, **kwargs: object) -> object:
        raise ValueError("a bug of ours")

    monkeypatch.setattr(rig.workers["ig"], "_carry_files", buggy)
    rig.fakes["wa"].files["pic"] = PNG
    rig.queue(image(), message("after"))
    await rig.settled()
    assert sent_bodies(rig) == ["after"]
    assert notices(rig) == [
        "Not delivered to Instagram: an error of the bridge's own (logged for its admin)."]
