"""Carrying files between homeservers (bridge/media.py), against in-process fake media APIs for
what Synapse will not do on cue: a server that lies about a file's length, or sends none."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bridge.core.retry import Verdict, classify
from bridge.matrix.client import Homeserver
from bridge.media import MediaCarrier, MediaGone, MediaTooLarge
from bridge.store import Store

FILE = bytes(range(256)) * 40  # 10,240 bytes


class Media(httpx.AsyncBaseTransport):
    """A media API: downloads of `files`, uploads kept in `uploads`."""

    def __init__(self, files: dict[str, bytes], *, length: bool = True) -> None:
        self.files = files
        self.length = length
        self.uploads: list[tuple[str, bytes, dict[str, str]]] = []
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(f"{request.url.host}{request.url.path}")
        if request.url.path.startswith("/_matrix/client/v1/media/download/"):
            media_id = request.url.path.rsplit("/", 1)[1]
            if media_id not in self.files:
                return httpx.Response(404, json={"errcode": "M_NOT_FOUND", "error": "no"})
            data = self.files[media_id]
            headers = {"Content-Type": "image/png"}
            if self.length:
                headers["Content-Length"] = str(len(data))
            return httpx.Response(200, content=_chunks(data), headers=headers)
        if request.url.path == "/_matrix/media/v3/upload":
            body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
            self.uploads.append((request.url.params["user_id"], body, dict(request.headers)))
            return httpx.Response(200, json={"content_uri": f"mxc://ig.test/up{len(self.uploads)}"})
        return httpx.Response(404, json={"errcode": "M_UNRECOGNIZED"})


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1000):
        yield data[i:i + 1000]


def carrier(tmp_path: Path, source: Media, target: Media, limit: int = 50_000) -> MediaCarrier:
    hs = {
        "wa": Homeserver(httpx.AsyncClient(transport=source, base_url="http://wa-hs.internal"),
                         "wa.test"),
        "ig": Homeserver(httpx.AsyncClient(transport=target, base_url="http://ig-hs.internal"),
                         "ig.test"),
    }
    return MediaCarrier(hs, Store(tmp_path / "state.db"), limit)


async def test_a_file_is_streamed_to_the_target_as_the_ghost_and_carried_once(
    tmp_path: Path,
) -> None:
    source, target = Media({"abc": FILE}), Media({})
    media = carrier(tmp_path, source, target)
    copy = await media.carry("wa", "mxc://wa.test/abc", "ig", "@ghost:ig.test")
    assert copy == "mxc://ig.test/up1"
    ((user, body, headers),) = target.uploads
    assert (user, body) == ("@ghost:ig.test", FILE)
    assert (headers["content-type"], headers["content-length"]) == ("image/png", str(len(FILE)))
    # Asked of the configured homeserver only, by server name and media id.
    assert source.paths == ["wa-hs.internal/_matrix/client/v1/media/download/wa.test/abc"]
    again = await media.carry("wa", "mxc://wa.test/abc", "ig", "@other:ig.test")
    assert again == copy and len(target.uploads) == 1 and len(source.paths) == 1


async def test_a_file_without_a_length_is_read_within_the_limit(tmp_path: Path) -> None:
    target = Media({})
    media = carrier(tmp_path, Media({"abc": FILE}, length=False), target)
    await media.carry("wa", "mxc://wa.test/abc", "ig", "@ghost:ig.test")
    assert target.uploads[0][1] == FILE


@pytest.mark.parametrize("length", [True, False])
async def test_a_file_over_the_limit_is_refused_before_any_upload(
    tmp_path: Path, length: bool
) -> None:
    target = Media({})
    media = carrier(tmp_path, Media({"abc": FILE}, length=length), target, limit=4096)
    with pytest.raises(MediaTooLarge) as caught:
        await media.carry("wa", "mxc://wa.test/abc", "ig", "@ghost:ig.test")
    assert target.uploads == []
    assert caught.value.errcode == "M_TOO_LARGE"
    assert "over the 4 kB limit" in str(caught.value)
    assert classify(caught.value.status, caught.value.errcode) is Verdict.PERMANENT


async def test_a_file_the_source_no_longer_has_is_a_permanent_failure(tmp_path: Path) -> None:
    media = carrier(tmp_path, Media({}), Media({}))
    with pytest.raises(MediaGone) as caught:
        await media.carry("wa", "mxc://wa.test/gone", "ig", "@ghost:ig.test")
    assert classify(caught.value.status, caught.value.errcode) is Verdict.PERMANENT
    with pytest.raises(MediaGone):
        await media.carry("wa", "https://wa.test/abc", "ig", "@ghost:ig.test")


class Broken(Media):
    """A media API whose downloads break off after `after` bytes (a reset, or a body shorter
    than its Content-Length), or answer with a redirect."""

    def __init__(self, files: dict[str, bytes], *, after: int = 0, redirect: bool = False,
                 ) -> None:
        super().__init__(files)
        self.after, self.redirect = after, redirect

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.redirect:
            return httpx.Response(302, headers={"Location": "https://elsewhere/"},
                                  content=b"<html>moved</html>")
        data = self.files[request.url.path.rsplit("/", 1)[1]]

        async def breaking() -> AsyncIterator[bytes]:
            yield data[:self.after]
            raise httpx.ReadError("connection reset by peer")

        return httpx.Response(200, content=breaking(),
                              headers={"Content-Length": str(len(data))})


async def test_a_download_that_breaks_off_is_the_sources_trouble_not_the_targets(
    tmp_path: Path,
) -> None:
    # Taken for the target's (Unreachable), it started the target's probe, whose quick
    # "it answers" cut the backoff short: the file was fetched again every half second.
    from bridge.media import SourceBusy

    target = Media({})
    media = carrier(tmp_path, Broken({"abc": FILE}, after=1000), target)
    with pytest.raises(SourceBusy) as broke:
        await media.carry("wa", "mxc://wa.test/abc", "ig", "@ghost:ig.test")
    assert classify(broke.value.status, broke.value.errcode) is Verdict.RETRY
    assert media.store.media_copy("wa", "mxc://wa.test/abc", "ig") is None


async def test_a_redirect_is_no_file(tmp_path: Path) -> None:
    target = Media({})
    media = carrier(tmp_path, Broken({"abc": FILE}, redirect=True), target)
    with pytest.raises(MediaGone, match="302"):
        await media.carry("wa", "mxc://wa.test/abc", "ig", "@ghost:ig.test")
    assert target.uploads == [] and media.store.media_copy("wa", "mxc://wa.test/abc", "ig") is None


@pytest.mark.parametrize("uri", ["mxc://../config", "mxc://./x", "mxc://a..b/x", "mxc://.a/x"])
def test_an_mxc_uri_cannot_climb_out_of_the_download_path(uri: str) -> None:
    from bridge.core.media import parse_mxc

    assert parse_mxc(uri) is None
