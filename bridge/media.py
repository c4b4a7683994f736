"""Carrying a file from one network's homeserver to another's: streamed, bounded, done once.

The file is read from the source homeserver's authenticated media API with the appservice token
and written to the target's upload API as the ghost who sends it, chunk by chunk, so a 50 MB video
never sits in memory. Only the (server, media id) parts of an mxc URI are used, always against the
configured homeserver (no SSRF). Each copy is remembered, so a retry or a file sent twice is not
uploaded twice.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from urllib.parse import quote

import httpx
import trio

from bridge.core.media import DEFAULT_MAX_BYTES, human_size, parse_mxc
from bridge.matrix.client import Homeserver, MatrixError, Unreachable
from bridge.store import Store

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
TRANSFER_DEADLINE = 600.0  # seconds for one whole file, download and upload together


class MediaTooLarge(MatrixError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(413, "M_TOO_LARGE",
                         f"the file ({human_size(size)}) is over the {human_size(limit)} limit")


class MediaGone(MatrixError):
    def __init__(self, why: str) -> None:
        super().__init__(404, "TB_MEDIA_GONE", why)


class MediaCarrier:
    def __init__(
        self, homeservers: Mapping[str, Homeserver], store: Store,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.homeservers = homeservers
        self.store = store
        self.max_bytes = max_bytes

    async def carry(self, src_network: str, mxc: str, dst_network: str, as_user: str) -> str:
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
            with trio.fail_after(TRANSFER_DEADLINE):
                copy = await self._transfer(source, target, *parsed, as_user)
        except trio.TooSlowError as exc:
            raise Unreachable(f"a file took over {TRANSFER_DEADLINE:g} s to carry") from exc
        except httpx.TransportError as exc:
            raise Unreachable(f"carrying a file: {type(exc).__name__}: {exc}") from exc
        self.store.save_media_copy(src_network, mxc, dst_network, copy)
        log.debug("carried a file from %s to %s", src_network, dst_network)
        return copy

    async def _transfer(
        self, source: Homeserver, target: Homeserver, server: str, media_id: str, as_user: str
    ) -> str:
        path = f"/_matrix/client/v1/media/download/{quote(server, safe='')}/{quote(media_id)}"
        async with source.http.stream("GET", path, params={"allow_redirect": "false"}) as got:
            if got.status_code >= 400:
                await got.aread()
                if got.status_code in (404, 410):
                    raise MediaGone(f"{source.server_name} no longer has the file")
                raise _error(got)
            declared = got.headers.get("content-length", "")
            plain = got.headers.get("content-encoding", "identity") == "identity"
            length = int(declared) if declared.isdigit() and plain else None
            if length is not None and length > self.max_bytes:
                raise MediaTooLarge(length, self.max_bytes)
            ctype = got.headers.get("content-type", "application/octet-stream")
            if length is None:
                # No usable length: read it whole (bounded by the limit); uploads need one.
                body = b"".join([chunk async for chunk in self._bounded(got.aiter_bytes())])
                length, content = len(body), _once(body)
            else:
                content = self._bounded(got.aiter_raw(CHUNK), length)
            answer = await target.http.post(
                "/_matrix/media/v3/upload",
                params={"user_id": as_user},
                headers={"Content-Type": ctype, "Content-Length": str(length)},
                content=content,
            )
        if answer.status_code >= 400:
            raise _error(answer)
        uri = answer.json().get("content_uri") if _is_json(answer) else None
        if parse_mxc(uri) is None:
            raise MatrixError(502, "M_UNKNOWN", "the homeserver returned no content_uri")
        assert isinstance(uri, str)
        return uri

    async def _bounded(
        self, chunks: AsyncIterator[bytes], length: int | None = None
    ) -> AsyncIterator[bytes]:
        """The chunks, refused past the limit (or past a declared length: a lying server)."""
        total = 0
        async for chunk in chunks:
            total += len(chunk)
            if total > self.max_bytes:
                raise MediaTooLarge(total, self.max_bytes)
            if length is not None and total > length:
                raise MatrixError(502, "M_UNKNOWN", "the file is longer than its length")
            yield chunk


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _is_json(response: httpx.Response) -> bool:
    try:
        return isinstance(response.json(), dict)
    except ValueError:
        return False


def _error(response: httpx.Response) -> MatrixError:
    payload = response.json() if _is_json(response) else {}
    return MatrixError(
        response.status_code, str(payload.get("errcode", "M_UNKNOWN")),
        str(payload.get("error", response.reason_phrase))[:300],
    )
