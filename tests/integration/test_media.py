"""Files, images and stickers cross byte for byte, with their thumbnails and info; a file over
the size limit does not cross, and its sender is told why."""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

import pytest

from bridge.localnet.people import wait_until

from .conftest import Cast, Daemon
from .test_relations import WITHIN, event_where, send
from .test_relay import three_way

pytestmark = pytest.mark.synapse

NETS = ("wa", "ig", "fbm")


def is_body(body: str) -> Any:
    return lambda e: e.get("content", {}).get("body") == body


async def test_images_files_and_stickers_cross_byte_identical_from_every_network(
    cast: Cast, daemon: Daemon
) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    for src in NETS:
        sender = people[src]
        image, thumb = secrets.token_bytes(300_000), secrets.token_bytes(2_000)
        url = await sender.upload(image, "image/png", "cat.png")
        thumb_url = await sender.upload(thumb, "image/png", "thumb.png")
        await send(sender, rooms[src], "m.room.message", {
            "msgtype": "m.image", "body": f"cat from {src}", "filename": "cat.png", "url": url,
            "info": {"mimetype": "image/png", "size": len(image), "w": 640, "h": 480,
                     "thumbnail_url": thumb_url,
                     "thumbnail_info": {"mimetype": "image/png", "size": len(thumb), "w": 64,
                                        "h": 48}},
        })
        doc = secrets.token_bytes(5_000)
        doc_url = await sender.upload(doc, "application/pdf", "plan.pdf")
        await send(sender, rooms[src], "m.room.message", {
            "msgtype": "m.file", "body": f"plan from {src}", "url": doc_url,
            "info": {"mimetype": "application/pdf", "size": len(doc)},
        })
        await send(sender, rooms[src], "m.sticker", {
            "body": f"sticker from {src}", "url": thumb_url, "info": {"w": 64, "h": 48},
        })
        for reader in NETS:
            if reader == src:
                continue
            person, room = people[reader], rooms[reader]
            got = await event_where(person, room, f"the image from {src}",
                                    is_body(f"cat from {src}"))
            content = got["content"]
            server = f"mxc://{reader}.localhost/"
            # A copy on the reader's own homeserver, identical to the byte.
            assert content["url"].startswith(server), content["url"]
            assert _sha(await person.download(content["url"])) == _sha(image)
            info = content["info"]
            assert (info["mimetype"], info["size"], info["w"], info["h"]) == (
                "image/png", len(image), 640, 480)
            assert info["thumbnail_url"].startswith(server)
            assert _sha(await person.download(info["thumbnail_url"])) == _sha(thumb)
            assert info["thumbnail_info"]["w"] == 64
            assert (content["msgtype"], content["filename"]) == ("m.image", "cat.png")
            plan = await event_where(person, room, f"the file from {src}",
                                     is_body(f"plan from {src}"))
            assert plan["content"]["msgtype"] == "m.file"
            assert _sha(await person.download(plan["content"]["url"])) == _sha(doc)
            sticker = await event_where(person, room, f"the sticker from {src}",
                                        is_body(f"sticker from {src}"))
            assert sticker["type"] == "m.sticker"
            assert _sha(await person.download(sticker["content"]["url"])) == _sha(thumb)


async def test_a_file_over_the_limit_is_refused_with_a_notice(cast: Cast, daemon: Daemon) -> None:
    daemon.bridge_extra = 'max_media_size = "64KB"'
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    alice = people["wa"]
    big = secrets.token_bytes(100_000)
    url = await alice.upload(big, "video/mp4", "clip.mp4")
    declared = await send(alice, rooms["wa"], "m.room.message", {
        "msgtype": "m.video", "body": "clip.mp4", "url": url,
        "info": {"mimetype": "video/mp4", "size": len(big)},
    })
    notice = await event_where(alice, rooms["wa"], "the too-big notice", lambda e: (
        e.get("content", {}).get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
        == declared))
    assert notice["content"]["body"] == (
        "Your file does not reach the other networks: it is 98 kB, and this bridge carries "
        "files up to 64 kB. The message goes without it.")
    # A file that claims to be small is measured as it streams, and refused all the same.
    lying = await send(alice, rooms["wa"], "m.room.message", {
        "msgtype": "m.file", "body": "small.bin", "url": url, "info": {"size": 10},
    })
    await alice.send_text(rooms["wa"], "after the files")

    async def refusals() -> list[str] | None:
        found = [e["content"]["body"] for e in await alice.messages(rooms["wa"])
                 if e.get("content", {}).get("m.relates_to", {}).get("m.in_reply_to", {})
                 .get("event_id") == lying]
        return found if len(found) == 2 else None

    bodies = await wait_until(refusals, WITHIN, "a notice per network for the lying file")
    # Its size as the bridge found it: from the server's length, or counted as it streamed.
    shapes = [re.sub(r"\(\d+ kB\)", "(N kB)", b) for b in sorted(bodies)]
    assert shapes == [
        f"Your file does not reach {label} (the file (N kB) is over the 64 kB limit); the "
        "message goes without it." for label in ("Instagram", "Messenger")], bodies
    for reader in ("ig", "fbm"):
        await event_where(people[reader], rooms[reader], "the text after the files",
                          is_body("after the files"))
        bodies_there = [e.get("content", {}).get("body")
                        for e in await people[reader].messages(rooms[reader])]
        assert "clip.mp4" not in bodies_there and "small.bin" not in bodies_there
        # What was sent, without the file: the others know something came.
        assert "(A file was sent here, too large for the bridge to carry.)" in bodies_there
        assert "(A video was sent here, too large for the bridge to carry.)" in bodies_there


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


