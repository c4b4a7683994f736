"""The server loop on trio: one task per connection, nothing a client sends can crash it.

Each connection reads requests with bridge/http/reader.py (a strict HTTP/1.1 reader that took
h11's place, for the CPU: docs/performance.md), hands them to the handler and writes the answers
in order. Limits bound what one connection can cost: the number of
connections, header size, body size (413 before reading past it), and deadlines for an idle
keep-alive connection, a request's head once it began, and its body.

The deadlines for heads are kept by a watchdog (one task per server, looking every second, or
more often for shorter deadlines), not by a trio cancel scope per request, which cost 17 us of
CPU a request here: a connection whose head is overdue has its read side shut, so that its
pending read ends at once, and is answered 408 (if its head began) and closed.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qs

import trio

from bridge.http.rawsocket import RawStream
from bridge.http.reader import CONTINUE, BadRequest, RequestReader, response_bytes
from bridge.http.types import Request, Response, matrix_error

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
# Decides on a request from its head alone (its body still unread, `body` empty): an answer
# that refuses it (sent at once, the connection then closed), or the handler and route
# parameters that take it. Who has no token is refused before sending megabytes.
Admit = Callable[[Request], "Response | tuple[Handler, Mapping[str, str]]"]
T = TypeVar("T")
_ERRCODES = {413: "M_TOO_LARGE"}


@dataclass(frozen=True)
class Limits:
    max_body: int = 13_107_200  # bytes; a larger request gets 413 before its body is read
    max_head: int = 16_384  # bytes of request line and headers
    idle_timeout: float = 75.0  # seconds a kept-alive connection may wait for its next request
    head_timeout: float = 10.0  # seconds for a request's head: from accept, or its first byte
    body_timeout: float = 60.0  # seconds to receive a whole body
    # Idle attackers must not crowd out the homeservers: allow many cheap connections (a task and
    # a few KiB each) and give a new one only head_timeout to say something.
    max_connections: int = 4096
    read_size: int = 65_536


class _Reject(Exception):
    """Stop reading this request: answer with `response` and close the connection."""

    def __init__(self, response: Response, *, head_only: bool = False) -> None:
        super().__init__(response.status)
        self.response = response
        self.head_only = head_only  # the answer to a HEAD request carries no body


class _Closed(Exception):
    """The client closed the connection or went idle: close without answering."""


class _Watch:
    """When each connection's head is due, and a watchdog that shuts the read side of those
    overdue (see the module's docstring)."""

    def __init__(self, limits: Limits) -> None:
        self.due: dict[RawStream, float] = {}  # connections reading a head
        self.overdue: set[RawStream] = set()  # their read side shut by the watchdog
        # A quarter of the shortest deadline (at most 1 s), and never a busy loop.
        self.tick = max(0.01, min(1.0, limits.head_timeout / 4, limits.idle_timeout / 4))

    async def run(self) -> None:
        while True:
            await trio.sleep(self.tick)
            if not self.due:
                continue
            now = trio.current_time()
            for stream, due in list(self.due.items()):
                if due <= now and stream not in self.overdue:
                    self.overdue.add(stream)
                    stream.stop_reading()


class ListenError(OSError):
    """The listening socket could not be bound; `cause` says why."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.host, self.port, self.cause = host, port, cause

    def why(self) -> str:
        if self.cause.errno == errno.EADDRINUSE:
            return "the address is in use"
        if isinstance(self.cause, socket.gaierror):
            return f"the host name does not resolve ({self.cause.strerror})"
        if self.cause.errno == errno.EADDRNOTAVAIL:
            return "that address is not one of this machine's"
        if self.cause.errno == errno.EACCES:
            return "permission denied (ports below 1024 need privileges)"
        return self.cause.strerror or str(self.cause)


async def serve(
    host: str,
    port: int,
    handler: Handler,
    limits: Limits = Limits(),
    *,
    admit: Admit | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port and serve until cancelled; started once the socket is bound. With
    `admit`, each request's head goes to it first, and `handler` is not used. A socket that
    cannot be bound raises ListenError."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:  # in use, not this machine's address, a name that does not resolve
        raise ListenError(host, port, exc) from exc
    slots = trio.Semaphore(limits.max_connections)
    watch = _Watch(limits)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, handler, limits, slots, watch, admit)
        task_status.started(listeners)


async def _accept_loop(
    listener: trio.SocketListener, handler: Handler, limits: Limits, slots: trio.Semaphore,
    watch: _Watch, admit: Admit | None,
) -> None:
    async with listener, trio.open_nursery() as nursery:
        while True:
            await slots.acquire()  # at most max_connections at once; more wait in the backlog
            try:
                stream = await listener.accept()
            except BaseException:
                slots.release()
                raise
            nursery.start_soon(_connection, stream, handler, limits, slots, watch, admit)


async def _connection(
    stream: trio.SocketStream, handler: Handler, limits: Limits, slots: trio.Semaphore,
    watch: _Watch, admit: Admit | None,
) -> None:
    try:
        async with RawStream.take(stream) as raw:
            await _serve_connection(raw, handler, limits, watch, admit)
    except (OSError, _Closed):
        pass  # the client went away: nothing to answer
    except Exception:
        # Whatever one connection does must never reach the server's nursery: log our bug and
        # drop that connection only.
        log.exception("connection failed; closed it")
    finally:
        slots.release()


async def _serve_connection(
    stream: RawStream, handler: Handler, limits: Limits, watch: _Watch, admit: Admit | None
) -> None:
    reader = RequestReader(limits.max_head, limits.max_body)
    first = True
    while True:
        try:
            request, keep_alive, taker = await _read_request(reader, stream, limits, first,
                                                             watch, admit)
            first = False
        except _Reject as reject:
            await _send(stream, reject.response, limits, close=True, head_only=reject.head_only)
            return
        # One pass through the scheduler per request, as trio's own streams made after every
        # receive (RawStream makes none when the bytes are there already): tasks that became
        # ready meanwhile (a delivery worker whose answer came in the same poll) run before the
        # handler, and a client pipelining requests from a full buffer cannot starve the loop.
        await trio.lowlevel.checkpoint()
        if request.method == "CONNECT":
            await _send(stream, matrix_error(405, "M_UNRECOGNIZED", "no CONNECT"), limits,
                        close=True)
            return
        try:
            response = await (taker or handler)(request)
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.path)
            response = matrix_error(500, "M_UNKNOWN", "internal error")
        await _send(stream, response, limits, close=not keep_alive,
                    head_only=request.method == "HEAD")
        if not keep_alive:
            return


async def _read_request(
    reader: RequestReader, stream: RawStream, limits: Limits, first: bool, watch: _Watch,
    admit: Admit | None,
) -> tuple[Request, bool, Handler | None]:
    """The next request on the connection, whether the connection may carry another, and the
    handler `admit` chose for it (None without `admit`)."""
    # A kept-alive connection may wait idle_timeout for its next request; a new one only
    # head_timeout. Once a request's first byte is in, its head must follow within head_timeout
    # (slow-header clients cannot hold a connection forever).
    began = reader.began
    wait = limits.head_timeout if first or began else limits.idle_timeout
    watch.due[stream] = trio.current_time() + wait
    try:
        while (head := _parse(reader.head)) is None:
            if began:
                # RawStream does not pass through the scheduler while bytes keep coming: a
                # client streaming them must not hold the loop, and the watchdog must run.
                await trio.lowlevel.checkpoint()
            data = await stream.receive_some(limits.read_size)
            if stream in watch.overdue:  # the deadline passed: the watchdog shut the read side
                if began or data:
                    raise _Reject(matrix_error(408, "M_UNKNOWN", "request head took too long"))
                raise _Closed
            if not data:
                raise _Closed  # the client went away, mid-request or between requests
            if not began:
                began = True
                watch.due[stream] = trio.current_time() + limits.head_timeout
            reader.feed(data)
    finally:
        del watch.due[stream]
        watch.overdue.discard(stream)
    path, _, query = head.target.partition("?")
    queried = parse_qs(query, keep_blank_values=True) if query else {}
    taker: Handler | None = None
    params: Mapping[str, str] = {}
    if admit is not None:
        decision = admit(Request(head.method, path, queried, head.headers, b""))
        if isinstance(decision, Response):
            if "transfer-encoding" in head.headers or head.headers.get(
                "content-length", "0"
            ) != "0":
                # A body announced and unread: answered, then the connection is closed.
                raise _Reject(decision, head_only=head.method == "HEAD")
            # No body: the refusal is the answer, and the connection may carry the next one.
            taker, params = _Refusal(decision), {}
        else:
            taker, params = decision
    body = _parse(reader.body)  # a push's body mostly came with its head: no deadline needed
    if body is None:
        body = await _read_body(reader, stream, limits)
    return Request(head.method, path, queried, head.headers, body, params), head.keep_alive, taker


async def _read_body(reader: RequestReader, stream: RawStream, limits: Limits) -> bytes:
    """The rest of a request's body, within body_timeout."""
    asked_continue = False
    with trio.move_on_after(limits.body_timeout):
        while (body := _parse(reader.body)) is None:
            if not asked_continue and reader.body_waiting():
                asked_continue = True
                await stream.send_all(CONTINUE, within=limits.body_timeout)
            await trio.lowlevel.checkpoint()  # as for the head
            data = await stream.receive_some(limits.read_size)
            if not data:
                raise _Closed
            reader.feed(data)
    if body is None:  # the deadline passed
        raise _Reject(matrix_error(408, "M_UNKNOWN", "request body took too long"))
    return body


class _Refusal:
    """A handler that answers with what `admit` decided."""

    def __init__(self, response: Response) -> None:
        self.response = response

    async def __call__(self, request: Request) -> Response:
        return self.response


def _parse(step: Callable[[], T | None]) -> T | None:
    try:
        return step()
    except BadRequest as exc:
        # Do not echo the client's bytes back; the status says what kind of problem it was.
        raise _Reject(matrix_error(exc.status, _ERRCODES.get(exc.status, "M_UNKNOWN"),
                                   str(exc))) from exc


async def _send(
    stream: RawStream, response: Response, limits: Limits, *, close: bool, head_only: bool = False
) -> None:
    # A client that stops reading its answers gets body_timeout to take them, then is closed
    # (TimeoutError): it must not hold a connection slot forever.
    await stream.send_all(response_bytes(response.status, response.content_type, response.body,
                                         close=close, head_only=head_only),
                          within=limits.body_timeout)
