"""Carrying a file from one network's homeserver to another's: streamed, bounded, done once.

The file is read from the source homeserver's authenticated media API with the appservice token
and written to the target's upload API as the ghost who sends it, chunk by chunk, so a 50 MB video
never sits in memory. Only the (server, media id) parts of an mxc URI are used, always against the
configured homeserver (no SSRF). Each copy is remembered, so a retry or a file sent twice is not
uploaded twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import quote

import httpx
import trio

from bridge.core.media import DEFAULT_MAX_BYTES, human_size, parse_mxc
from bridge.matrix.client import Homeserver, MatrixError, Unreachable
from bridge.store import Store

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
TRANSFER_DEADLINE = 600.0  # seconds for one whole file, download and upload together
# Seconds without a byte of the download: a stalled source is given up on well before the
# whole deadline (each try holds one of the worker's send slots, and its room's queue).
STALL_SECONDS = 60.0
THUMBNAIL_DEADLINE = 30.0  # a thumbnail is not worth holding a message back longer


class MediaTooLarge(MatrixError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(413, "M_TOO_LARGE",
                         f"the file ({human_size(size)}) is over the {human_size(limit)} limit")


class MediaGone(MatrixError):
    """The sender's homeserver cannot give the file: a permanent failure."""

    def __init__(self, why: str) -> None:
        super().__init__(404, "TB_MEDIA_GONE", why)


class SourceBusy(MatrixError):
    """The sender's homeserver is away or busy: retried, without suspecting the target."""

    def __init__(self, why: str) -> None:
        super().__init__(503, "TB_SOURCE_BUSY", why)


class UploadBroke(MatrixError):
    """The upload to the target broke off after its connection was made (a reset, a proxy
    closing it): retried with backoff. Not Unreachable: the target answers, and taking it for
    down would wake the retry at once, every half second."""

    def __init__(self, why: str) -> None:
        super().__init__(503, "TB_UPLOAD_BROKE", why)


class MediaCarrier:
    def __init__(
        self, homeservers: Mapping[str, Homeserver], store: Store,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.homeservers = homeservers
        self.store = store
        self.max_bytes = max_bytes

    async def carry(self, src_network: str, mxc: str, dst_network: str, as_user: str,
                    deadline: float = TRANSFER_DEADLINE) -> str:
        """The mxc URI on `dst_network` of the file `mxc` of `src_network`, uploaded by
        `as_user` if it is not there yet."""
        known = self.store.media_copy(src_network, mxc, dst_network)
        if known is not None:
            return known
        parsed = parse_mxc(mxc)
        if parsed is None:
            raise MediaGone("not an mxc URI")
        source, target = self.homeservers[src_network], self.homeservers[dst_network]
        try:
            with trio.fail_after(deadline):
                copy = await self._transfer(source, target, *parsed, as_user)
        except trio.TooSlowError as exc:
            # Either side may be the slow one: retried with backoff, no side taken for down.
            raise SourceBusy(f"a file took over {deadline:g} s to carry") from exc
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Unreachable(f"carrying a file: {type(exc).__name__}: {exc}") from exc
        except httpx.TransportError as exc:
            raise UploadBroke(f"the file's upload broke off: {type(exc).__name__}") from exc
        self.store.save_media_copy(src_network, mxc, dst_network, copy)
        log.debug("carried a file from %s to %s", src_network, dst_network)
        return copy

    async def _transfer(
        self, source: Homeserver, target: Homeserver, server: str, media_id: str, as_user: str
    ) -> str:
        path = f"/_matrix/client/v1/media/download/{quote(server, safe='')}/{quote(media_id)}"
        async with AsyncExitStack() as stack:
            try:
                with trio.fail_after(STALL_SECONDS):
                    got = await stack.enter_async_context(
                        source.http.stream("GET", path, params={"allow_redirect": "false"}))
            except trio.TooSlowError as exc:
                raise SourceBusy(f"{source.server_name} sent nothing for {STALL_SECONDS:g} s "
                                 "when asked for the file") from exc
            except httpx.TransportError as exc:
                # The sender's homeserver is away: try again later, but this says nothing
                # about the target's homeserver (whose reachability probe must not start).
                raise SourceBusy(f"{source.server_name} did not answer: {exc}") from exc
            if not 200 <= got.status_code < 300:
                # A redirect too (a proxy sending http to https, say): its body is no file.
                error = _error(got, await _head_of(got))
                if got.status_code in (429, 500, 503, 504):
                    raise SourceBusy(f"{source.server_name}: {error}")
                # Gone, refused, or a remote server it could not fetch it from (502): trying
                # again for ever would hold back everything after it in the room.
                raise MediaGone(f"{source.server_name} could not give the file: {error}")
            return await self._upload(got, target, as_user)
        raise AssertionError("unreachable")

    async def _upload(self, got: httpx.Response, target: Homeserver, as_user: str) -> str:
        """Stream the downloaded file `got` to the target's upload API as `as_user`."""
        declared = got.headers.get("content-length", "")
        plain = got.headers.get("content-encoding", "identity") == "identity"
        length = int(declared) if declared.isascii() and declared.isdigit() and plain else None
        if length is not None and length > self.max_bytes:
            raise MediaTooLarge(length, self.max_bytes)
        ctype = got.headers.get("content-type", "application/octet-stream")
        if length is None:
            # No usable length (Synapse always gives one): read it whole, bounded by the
            # limit, since the upload needs a length; kept as its chunks (joined, it would
            # be held twice).
            chunks = [chunk async for chunk in self._bounded(got.aiter_bytes())]
            length, content = sum(map(len, chunks)), _each(chunks)
        else:
            content = self._bounded(got.aiter_raw(CHUNK), length)
        answer = await target.http.post(
            "/_matrix/media/v3/upload",
            params={"user_id": as_user},
            headers={"Content-Type": ctype, "Content-Length": str(length)},
            content=content,
        )
        if answer.status_code >= 400:
            raise _error(answer, answer.content)
        uri = _json_object(answer.content).get("content_uri")
        if parse_mxc(uri) is None:
            raise MatrixError(502, "M_UNKNOWN", "the homeserver returned no content_uri")
        assert isinstance(uri, str)
        return uri

    async def _bounded(
        self, chunks: AsyncIterator[bytes], length: int | None = None
    ) -> AsyncIterator[bytes]:
        """The chunks, refused past the limit (or past a declared length: a lying server)."""
        total = 0
        try:
            while True:
                with trio.move_on_after(STALL_SECONDS) as stalled:
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                if stalled.cancelled_caught:
                    raise SourceBusy(f"the file's download stalled ({STALL_SECONDS:g} s "
                                     "without a byte)")
                total += len(chunk)
                if total > self.max_bytes:
                    raise MediaTooLarge(total, self.max_bytes)
                if length is not None and total > length:
                    raise MediaGone("the file was longer than its server said")
                yield chunk
        except httpx.TransportError as exc:
            # The download broke off (a reset, a stall, a body shorter than its length): the
            # source's trouble, raised here inside the upload; taken for the target's, it
            # would start its probe and cut the backoff short, every half second.
            raise SourceBusy(f"the file's download broke off: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            # A body that cannot be read as sent (a broken gzip, say): no try will read it.
            raise MediaGone(f"the file's download could not be read: {type(exc).__name__}"
                            ) from exc
        if length is not None and total < length:
            raise SourceBusy("the file's download ended before its length")


async def _each(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _json_object(body: bytes) -> dict[str, Any]:
    """The JSON object in `body`, or {} if it holds anything else."""
    try:
        payload = json.loads(body)
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


async def _head_of(response: httpx.Response, limit: int = 65_536) -> bytes:
    """The start of an error answer's body: enough for its errcode, never all of it."""
    head = bytearray()
    async for chunk in response.aiter_bytes():
        head += chunk
        if len(head) >= limit:
            break
    return bytes(head[:limit])


def _error(response: httpx.Response, body: bytes) -> MatrixError:
    payload = _json_object(body)
    return MatrixError(
        response.status_code, str(payload.get("errcode", "M_UNKNOWN")),
        str(payload.get("error", response.reason_phrase))[:300],
    )
