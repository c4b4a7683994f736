"""A lean HTTP/1.1 client on trio, for the call the bridge makes per relayed message (and the
timeline reads it makes by the thousand).

httpx is general and pays for it on every request (URL and header models, cookies, event hooks,
its transport layers): measured in docs/performance.md, it was most of the bridge's CPU per send.
So was h11 after it, on this path. This client does only what the hot path needs: keep-alive
connections to one origin, a request with a prebuilt head and a complete body, the whole
response read into bytes by bridge/http/wire.py's strict reader. Everything else (media
streaming, rare calls, tests' injected transports) stays on httpx.

A kept-alive connection may have been closed by the server while it sat idle; an idempotent
request (the hot path's PUT with a transaction id) that fails on such a connection before any
answer came is tried once more on a fresh one. Any other fails with ConnectionFailed: it may
have been carried out.

A request given `within` seconds fails with NoAnswer if its answer is not all in by then: a
watchdog closes the connection under it. It does not need a trio cancel scope per request, which
cost 17 us of CPU a request here (as much as the client's own reading of the answer). Nor does
it look at a clock's pace: it sleeps until the earliest answer due, so that under a steady load
of requests answered in time it wakes about once per `within`, not once a second (each wake-up
of an idle bridge costs as much as a send's bookkeeping: docs/performance.md, item 44).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

import certifi
import trio

from bridge.http.rawsocket import RawStream, close_now
from bridge.http.wire import (
    BadResponse,
    ResponseReader,
    TooLarge,
    fixed_fields,
    request_head,
)

READ_SIZE = 65_536
# Bytes: an answer to a send is tiny, a page of ten timeline events seldom near this; anything
# bigger is refused (AnswerTooLarge), and the caller may read it with httpx.
MAX_RESPONSE = 1_048_576
# Sent again on a fresh connection when a kept-alive one died before any answer (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class Answer(NamedTuple):
    status: int
    body: bytes
    reason: str
    retry_after: str  # the Retry-After header ("" if none)


class ConnectionFailed(Exception):
    """No usable answer: the connection could not be made, broke, or spoke bad HTTP."""


class NoAnswer(ConnectionFailed):
    """The whole answer did not come within the time the request was given."""


class AnswerTooLarge(ConnectionFailed):
    """The answer's body was over MAX_RESPONSE: refused (the connection is closed)."""


class _TLSConnection:
    """A kept-alive TLS connection: a trio stream (plain ones are RawStreams)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def send_all(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive_some(self, size: int) -> bytes:
        return bytes(await self.stream.receive_some(size))

    def abort(self) -> None:
        """Close the socket under the TLS stream now, from another task: whoever waits on it
        gets ClosedResourceError (or BrokenResourceError from the TLS layer)."""
        transport = getattr(self.stream, "transport_stream", None)
        if isinstance(transport, trio.SocketStream):
            close_now(transport.socket)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    def idle_and_open(self) -> bool:
        # TLS hides a peer's unasked bytes and its close behind records: not peeked at; a
        # connection found dead is then retried as a stale one.
        return True


_Connection = _TLSConnection | RawStream


class LeanClient:
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
        self.fixed = fixed_fields([("Host", host_header), *headers.items()])
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        self._closed = False
        self._due: dict[_Connection, float] = {}  # busy connections: when their answer is due
        self._timed_out: set[_Connection] = set()  # closed by the watchdog
        self._watching = False
        self._sleep: trio.CancelScope | None = None  # the watchdog's, until the earliest due

    async def request(
        self, method: str, target: str, body: bytes | None = None,
        content_type: bytes = b"application/json", *, within: float | None = None,
    ) -> Answer:
        """The answer to one request; raises ConnectionFailed (NoAnswer when `within` seconds
        passed first; ValueError for a target that would break the request line)."""
        if body is None and method in ("PUT", "POST"):
            body = b""
        data = request_head(method, self.prefix + target, self.fixed, body, content_type)
        if body:
            data += body
        head_only = method == "HEAD"
        await trio.lowlevel.checkpoint_if_cancelled()  # a caller cancelled already sends nothing
        while self._idle:
            conn = self._idle.pop()
            if not conn.idle_and_open():
                await conn.aclose()  # closed by the server, or it said something unasked
                continue
            try:
                return await self._exchange(conn, data, head_only, within)
            except _Stale as exc:
                if method not in IDEMPOTENT:
                    # It may have been carried out with its answer lost: not ours to repeat.
                    raise ConnectionFailed(
                        f"{self.host}:{self.port} closed the connection") from exc
                # Closed by the server while idle: the others idled as long, so they go too,
                # and the request goes once more, on a fresh connection.
                stale, self._idle = self._idle, []
                for old in stale:
                    await old.aclose()
        if within is None:
            conn = await self._connect()
        else:
            # Connecting is rare (a connection is kept for many requests): a scope will do.
            with trio.move_on_after(within) as scope:
                conn = await self._connect()
            if scope.cancelled_caught:
                raise NoAnswer(f"no connection to {self.host}:{self.port} in {within:g} s")
        try:
            return await self._exchange(conn, data, head_only, within)
        except _Stale as exc:
            raise ConnectionFailed(f"{self.host}:{self.port} closed the connection") from exc

    async def aclose(self) -> None:
        self._closed = True
        if self._sleep is not None:
            self._sleep.cancel()  # the watchdog ends now, not when an answer was due
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()

    async def __aenter__(self) -> LeanClient:
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
                return RawStream.take(tcp)
        except (OSError, trio.BrokenResourceError) as exc:
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return _TLSConnection(stream)

    async def _exchange(
        self, conn: _Connection, data: bytes, head_only: bool, within: float | None
    ) -> Answer:
        reader = ResponseReader(MAX_RESPONSE, head_only)
        if within is not None:
            due = self._due[conn] = trio.current_time() + within
            if not self._watching:
                self._watching = True
                trio.lowlevel.spawn_system_task(self._watch, name="LeanClient watchdog")
            elif self._sleep is not None and due < self._sleep.deadline:
                self._sleep.deadline = due  # a shorter `within` than those before: wake for it
        try:
            await conn.send_all(data)
            answer = None
            while answer is None:
                got = await conn.receive_some(READ_SIZE)
                if not got:
                    if not reader.received:
                        raise _Stale()
                    answer = reader.eof()
                else:
                    answer = reader.feed(got)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            await conn.aclose()
            if conn in self._timed_out:
                raise NoAnswer(f"{self.host}:{self.port}: no answer in {within:g} s") from exc
            if not reader.received:
                raise _Stale() from exc
            raise ConnectionFailed(f"{self.host}:{self.port}: {exc}") from exc
        except TooLarge as exc:
            await conn.aclose()
            raise AnswerTooLarge(f"{self.host}:{self.port} sent {exc}") from exc
        except BadResponse as exc:
            await conn.aclose()
            raise ConnectionFailed(f"{self.host}:{self.port} spoke bad HTTP: {exc}") from exc
        except BaseException:
            # Cancelled or failed mid-request: the connection is in an unknown state.
            await conn.aclose()
            raise
        finally:
            if within is not None:
                del self._due[conn]
                self._timed_out.discard(conn)
        # A peer that said more than the answer is out of step: its connection is not reused.
        if (answer.keep_alive and not reader.leftover and not self._closed
                and len(self._idle) < self.max_idle):
            self._idle.append(conn)
        else:
            await conn.aclose()
        return Answer(answer.status, answer.body, answer.reason,
                      answer.header(b"retry-after"))

    async def _watch(self) -> None:
        """Close the connections whose answer is overdue (see the module's docstring). A trio
        system task: it must never raise. It ends when it finds no request under way but
        those it closed already (the next one starts it again: an idle bridge is not woken
        for it) or the client closed."""
        try:
            while not self._closed:
                # Until the earliest answer due; a request due sooner moves this deadline.
                # Those closed already are their requests' to clear: their deadlines passed,
                # and counted they would wake this at once, again and again, until then.
                pending = [d for conn, d in self._due.items() if conn not in self._timed_out]
                if not pending:
                    break
                with trio.CancelScope(deadline=min(pending)) as self._sleep:
                    await trio.sleep_forever()
                now = trio.current_time()
                for conn, due in list(self._due.items()):
                    if due <= now and conn not in self._timed_out:
                        self._timed_out.add(conn)
                        conn.abort()
        finally:
            self._sleep = None
            self._watching = False


class _Stale(Exception):
    """The request got no answer at all on this connection (often: closed while idle)."""

