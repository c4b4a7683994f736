"""A lean HTTP/1.1 client on h11 + trio, for the one call the bridge makes per relayed message.

httpx is general and pays for it on every request (URL and header models, cookies, event hooks,
its transport layers): measured in docs/performance.md, it was most of the bridge's CPU per send.
This client does only what the hot path needs: keep-alive connections to one origin, a request
with a prebuilt head and a complete body, the whole response read into bytes. Everything else
(media streaming, rare calls, tests' injected transports) stays on httpx.

A kept-alive connection may have been closed by the server while it sat idle; a request that
fails on such a connection before any answer came is tried once more on a fresh one. That is
safe here because the hot path only sends idempotent requests (PUT with a transaction id).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

import certifi
import h11
import trio

READ_SIZE = 65_536
MAX_RESPONSE = 1_048_576  # bytes: an answer to a send is tiny; anything this big is refused


class Answer(NamedTuple):
    status: int
    body: bytes
    reason: str
    retry_after: str  # the Retry-After header ("" if none)


class ConnectionFailed(Exception):
    """No usable answer: the connection could not be made, broke, or spoke bad HTTP."""


class _Connection:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


class H11Client:
    """Pooled keep-alive connections to one origin (http or https)."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        max_idle: int = 16,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        # The same certificate authorities as httpx (certifi's), so both clients agree.
        self.ssl_context = ssl_context or (
            ssl.create_default_context(cafile=certifi.where()) if self.https else None)
        host_header = parts.netloc.rsplit("@", 1)[-1]
        # Built once: every request carries the same Host and Authorization.
        self.base_headers = [(b"host", host_header.encode("ascii"))] + [
            (k.lower().encode("ascii"), v.encode("latin-1")) for k, v in headers.items()
        ]
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(
        self, method: str, target: str, body: bytes | None = None,
        content_type: bytes = b"application/json",
    ) -> Answer:
        """The answer to one request; raises ConnectionFailed."""
        headers = list(self.base_headers)
        if body is not None:
            headers.append((b"content-type", content_type))
            headers.append((b"content-length", str(len(body)).encode("ascii")))
        head = h11.Request(method=method, target=self.prefix + target, headers=headers)
        if self._idle:
            conn = self._idle.pop()
            try:
                return await self._exchange(conn, head, body)
            except _Stale:
                # Closed by the server while idle: the others idled as long, so they go too,
                # and the request goes once more, on a fresh connection.
                stale, self._idle = self._idle, []
                for old in stale:
                    await old.aclose()
        conn = await self._connect()
        try:
            return await self._exchange(conn, head, body)
        except _Stale as exc:
            raise ConnectionFailed(f"{self.host}:{self.port} closed the connection") from exc

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()

    async def __aenter__(self) -> H11Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- internals -----------------------------------------------------------------------------

    async def _connect(self) -> _Connection:
        try:
            if self.https:
                assert self.ssl_context is not None
                stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                    self.host, self.port, ssl_context=self.ssl_context, https_compatible=True
                )
            else:
                tcp = await trio.open_tcp_stream(self.host, self.port)
                tcp.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
                stream = tcp
        except (OSError, trio.BrokenResourceError) as exc:
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return _Connection(stream)

    async def _exchange(
        self, conn: _Connection, head: h11.Request, body: bytes | None
    ) -> Answer:
        answered = False
        try:
            data = conn.h11.send(head) or b""
            if body:
                data += conn.h11.send(h11.Data(data=body)) or b""
            data += conn.h11.send(h11.EndOfMessage()) or b""
            await conn.stream.send_all(data)
            status, reason, chunks, size, retry_after = 0, "", [], 0, ""
            while True:
                event = conn.h11.next_event()
                if event is h11.NEED_DATA:
                    got = await conn.stream.receive_some(READ_SIZE)
                    if not got and not answered:
                        raise _Stale()
                    conn.h11.receive_data(bytes(got))
                    continue
                if isinstance(event, h11.Response):
                    answered = True
                    status, reason = event.status_code, event.reason.decode("latin-1")
                    retry_after = next(
                        (v.decode("latin-1") for k, v in event.headers if k == b"retry-after"), "")
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_RESPONSE:
                        raise ConnectionFailed(f"an answer of over {MAX_RESPONSE} bytes")
                    chunks.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    if not answered:
                        raise _Stale()
                    raise ConnectionFailed("the connection closed mid-answer")
                elif isinstance(event, h11.InformationalResponse):
                    continue
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            await conn.aclose()
            if not answered:
                raise _Stale() from exc
            raise ConnectionFailed(f"{self.host}:{self.port}: {exc}") from exc
        except h11.ProtocolError as exc:
            await conn.aclose()
            raise ConnectionFailed(f"{self.host}:{self.port} spoke bad HTTP: {exc}") from exc
        except BaseException:
            # Cancelled or failed mid-request: the connection is in an unknown state.
            await conn.aclose()
            raise
        await self._release(conn)
        return Answer(status, b"".join(chunks), reason, retry_after)

    async def _release(self, conn: _Connection) -> None:
        if (conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE
                and not self._closed and len(self._idle) < self.max_idle):
            conn.h11.start_next_cycle()
            self._idle.append(conn)
        else:
            await conn.aclose()


class _Stale(Exception):
    """The request got no answer at all on this connection (often: closed while idle)."""
