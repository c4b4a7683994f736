"""The h11 + trio server loop: one task per connection, nothing a client sends can crash it.

The loop is a thin adapter over h11's state machine (h11's own trio example is the model): read
bytes, feed h11, act on its events. Limits bound what one connection can cost: the number of
connections, header size, body size (413 before reading past it), and deadlines for an idle
keep-alive connection, a request's head once it began, and its body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

import h11
import trio

from bridge.http.rawsocket import RawStream
from bridge.http.types import Request, Response, matrix_error

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


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

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class _Closed(Exception):
    """The client closed the connection or went idle: close without answering."""


async def serve(
    host: str,
    port: int,
    handler: Handler,
    limits: Limits = Limits(),
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port and serve until cancelled; started once the socket is bound."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    slots = trio.Semaphore(limits.max_connections)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, handler, limits, slots)
        task_status.started(listeners)


async def _accept_loop(
    listener: trio.SocketListener, handler: Handler, limits: Limits, slots: trio.Semaphore
) -> None:
    async with listener, trio.open_nursery() as nursery:
        while True:
            await slots.acquire()  # at most max_connections at once; more wait in the backlog
            try:
                stream = await listener.accept()
            except BaseException:
                slots.release()
                raise
            nursery.start_soon(_connection, stream, handler, limits, slots)


async def _connection(
    stream: trio.SocketStream, handler: Handler, limits: Limits, slots: trio.Semaphore
) -> None:
    try:
        async with RawStream.take(stream) as raw:
            await _serve_connection(raw, handler, limits)
    except (OSError, _Closed):
        pass  # the client went away: nothing to answer
    except Exception:
        # Whatever one connection does must never reach the server's nursery: log our bug and
        # drop that connection only.
        log.exception("connection failed; closed it")
    finally:
        slots.release()


async def _serve_connection(stream: RawStream, handler: Handler, limits: Limits) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)
    first = True
    while True:
        try:
            request = await _read_request(conn, stream, limits, first)
            first = False
        except _Reject as reject:
            await _send(conn, stream, reject.response, close=True)
            return
        # One pass through the scheduler per request, as trio's own streams made after every
        # receive (RawStream makes none when the bytes are there already): tasks that became
        # ready meanwhile (a delivery worker whose answer came in the same poll) run before the
        # handler, and a client pipelining requests from a full buffer cannot starve the loop.
        await trio.lowlevel.checkpoint()
        if request.method == "CONNECT":
            # h11 treats a 2xx answer to CONNECT as a protocol switch; we never tunnel.
            await _send(conn, stream, matrix_error(405, "M_UNRECOGNIZED", "no CONNECT"), close=True)
            return
        try:
            response = await handler(request)
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.path)
            response = matrix_error(500, "M_UNKNOWN", "internal error")
        await _send(conn, stream, response, close=False, head_only=request.method == "HEAD")
        if h11.MUST_CLOSE in (conn.our_state, conn.their_state):
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return  # the client has not finished its side: close rather than guess


async def _read_request(
    conn: h11.Connection, stream: RawStream, limits: Limits, first: bool
) -> Request:
    # A kept-alive connection may wait idle_timeout for its next request; a new one only
    # head_timeout. Once a request's first byte is in, its head must follow within head_timeout
    # (slow-header clients cannot hold a connection forever).
    began = bool(conn.trailing_data[0])
    wait = limits.head_timeout if first else limits.idle_timeout
    with trio.CancelScope(deadline=trio.current_time() + wait) as scope:
        if began:
            scope.deadline = trio.current_time() + limits.head_timeout
        while True:
            head = _next(conn)
            if head is not h11.NEED_DATA:
                break
            data = await stream.receive_some(limits.read_size)
            if data and not began:
                began = True
                scope.deadline = trio.current_time() + limits.head_timeout
            conn.receive_data(data)
    if scope.cancelled_caught:
        if began:
            raise _Reject(matrix_error(408, "M_UNKNOWN", "request head took too long"))
        raise _Closed
    if isinstance(head, h11.ConnectionClosed):
        raise _Closed
    if not isinstance(head, h11.Request):
        raise _Reject(matrix_error(400, "M_UNKNOWN", "expected a request"))
    # h11 bounds only a head still arriving; one that came whole in a single read is checked here.
    size = len(head.target) + sum(len(k) + len(v) + 4 for k, v in head.headers)
    if size > limits.max_head:
        raise _Reject(matrix_error(431, "M_UNKNOWN", f"request head over {limits.max_head} bytes"))
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
    length = headers.get("content-length", "")
    if length.isdigit() and int(length) > limits.max_body:
        raise _Reject(matrix_error(413, "M_TOO_LARGE", f"body over {limits.max_body} bytes"))
    body = bytearray()
    with trio.move_on_after(limits.body_timeout) as body_scope:
        while True:
            event = _next(conn)
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(limits.read_size))
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > limits.max_body:  # chunked bodies have no length up front
                    raise _Reject(
                        matrix_error(413, "M_TOO_LARGE", f"body over {limits.max_body} bytes")
                    )
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise _Closed
    if body_scope.cancelled_caught:
        raise _Reject(matrix_error(408, "M_UNKNOWN", "request body took too long"))
    path, _, query = head.target.decode("latin-1").partition("?")
    return Request(
        method=head.method.decode("ascii", "replace"),
        path=path,
        query=parse_qs(query, keep_blank_values=True),
        headers=headers,
        body=bytes(body),
    )


def _next(conn: h11.Connection) -> object:
    try:
        return conn.next_event()
    except h11.RemoteProtocolError as exc:
        # Do not echo the client's bytes back; the status says what kind of problem it was.
        raise _Reject(
            matrix_error(exc.error_status_hint, "M_UNKNOWN", "malformed HTTP request")
        ) from exc


async def _send(
    conn: h11.Connection,
    stream: RawStream,
    response: Response,
    *,
    close: bool,
    head_only: bool = False,
) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return  # h11 already failed this connection; there is nothing valid left to say
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
    ]
    if close:
        headers.append(("connection", "close"))
    data = conn.send(h11.Response(status_code=response.status, headers=headers))
    if not head_only:  # a reply to HEAD announces the length but carries no body
        data += conn.send(h11.Data(data=response.body))
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)
