"""The trio server (bridge/http/server.py) on real loopback sockets.

A tiny echo app built with the Router stands in for the appservice. Normal requests go through
httpx; protocol abuse goes through raw trio sockets. Nothing here sleeps: every wait is bounded by a
deadline, and "nothing happens" is checked by waiting a bounded time for bytes that must not come.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio

from bridge.http.routing import Router
from bridge.http.server import Limits, serve
from bridge.http.types import Request, Response, json_response

DEADLINE = 5.0  # seconds: a generous bound on anything that should happen promptly
QUIET = 0.5  # seconds to wait for bytes that must not come


# -- the app under the server ----------------------------------------------------------------------


async def _echo(request: Request) -> Response:
    return json_response(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": {k: list(v) for k, v in request.query.items()},
            "params": dict(request.params),
            "body": request.body.decode("utf-8", "replace"),
        },
    )


async def _boom(request: Request) -> Response:
    raise RuntimeError("a bug in a handler")


def make_app() -> Callable[[Request], Awaitable[Response]]:
    router = Router()
    router.add("GET", "/echo", _echo)
    router.add("POST", "/echo", _echo)
    router.add("GET", "/items/{name}", _echo)
    router.add("GET", "/boom", _boom)

    async def app(request: Request) -> Response:
        matched = router.match(request.method, request.path)
        if isinstance(matched, Response):
            return matched
        handler, params = matched
        return await handler(dataclasses.replace(request, params=params))

    return app


Start = Callable[..., Awaitable[int]]


@pytest.fixture
def start(nursery: trio.Nursery) -> Start:
    """Start a server with the given Limits on a free loopback port; return the port."""

    async def _start(limits: Limits | None = None) -> int:
        listeners = await nursery.start(
            serve, "127.0.0.1", 0, make_app(), limits if limits is not None else Limits()
        )
        port: int = listeners[0].socket.getsockname()[1]
        return port

    return _start


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=DEADLINE) as c:
        yield c


# -- a raw client ----------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Raw:
    """A client socket that sends any bytes and reads HTTP/1.1 responses itself."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.eof = False

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        """Read more bytes into the buffer; False once the server closed (or reset) the socket."""
        if self.eof:
            return False
        try:
            data = await self.stream.receive_some()
        except trio.BrokenResourceError:  # a reset counts as closed
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    async def response(self, *, head_only: bool = False) -> RawResponse:
        """The next response on this connection, within DEADLINE."""
        with trio.fail_after(DEADLINE):
            while b"\r\n\r\n" not in self.buf:
                if not await self._fill():
                    raise AssertionError(f"closed before a full response head: {bytes(self.buf)!r}")
            head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
            self.buf = bytearray(rest)
            lines = head.decode("latin-1").split("\r\n")
            version, status, *_ = lines[0].split(" ", 2)
            assert version == "HTTP/1.1", lines[0]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = 0 if head_only else int(headers.get("content-length", "0"))
            while len(self.buf) < length:
                if not await self._fill():
                    raise AssertionError("closed in the middle of a response body")
            body, self.buf = bytes(self.buf[:length]), self.buf[length:]
            return RawResponse(int(status), headers, body)

    async def wait_closed(self, within: float = DEADLINE) -> None:
        """Wait until the server closes the connection; no further bytes may arrive before."""
        with trio.fail_after(within):
            while await self._fill():
                pass
        assert not self.buf, f"unexpected bytes before the close: {bytes(self.buf)!r}"

    async def quiet(self, for_seconds: float = QUIET) -> bool:
        """True if the server sent nothing and kept the connection open for `for_seconds`."""
        with trio.move_on_after(for_seconds):
            await self._fill()
        return not self.buf and not self.eof

    async def aclose(self) -> None:
        await self.stream.aclose()


def request_bytes(
    method: str = "GET", target: str = "/echo", body: bytes | None = None, *extra: str
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *extra]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


# -- normal requests -------------------------------------------------------------------------------


async def test_a_request_gets_its_response(start: Start, client: httpx.AsyncClient) -> None:
    port = await start()
    reply = await client.post(f"http://127.0.0.1:{port}/echo?a=1&b=", content=b"hello")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {
        "method": "POST",
        "path": "/echo",
        "query": {"a": ["1"], "b": [""]},
        "params": {},
        "body": "hello",
    }


async def test_path_parameters_are_decoded(start: Start, client: httpx.AsyncClient) -> None:
    port = await start()
    reply = await client.get(f"http://127.0.0.1:{port}/items/caf%C3%A9%2Fau%20lait")
    assert reply.status_code == 200
    assert reply.json()["params"] == {"name": "café/au lait"}
    assert reply.json()["path"] == "/items/caf%C3%A9%2Fau%20lait"


async def test_keep_alive_serves_two_requests_on_one_connection(start: Start) -> None:
    port = await start()
    raw = await Raw.open(port)
    async with raw.stream:
        await raw.send(request_bytes("POST", "/echo", b"first"))
        first = await raw.response()
        assert first.status == 200
        assert first.json()["body"] == "first"
        assert first.headers.get("connection", "").lower() != "close"
        await raw.send(request_bytes("POST", "/echo", b"second"))
        second = await raw.response()
        assert second.status == 200
        assert second.json()["body"] == "second"


async def test_pipelined_requests_are_answered_in_order(start: Start) -> None:
    port = await start()
    raw = await Raw.open(port)
    async with raw.stream:
        await raw.send(
            request_bytes("POST", "/echo", b"one")
            + request_bytes("GET", "/nowhere")
            + request_bytes("POST", "/echo", b"three")
        )
        one, two, three = [await raw.response() for _ in range(3)]
        assert (one.status, one.json()["body"]) == (200, "one")
        assert two.status == 404
        assert (three.status, three.json()["body"]) == (200, "three")


async def test_httpx_reuses_the_kept_alive_connection(
    start: Start, client: httpx.AsyncClient
) -> None:
    port = await start()
    ports = []
    for body in (b"a", b"b", b"c"):
        reply = await client.post(f"http://127.0.0.1:{port}/echo", content=body)
        assert reply.json()["body"] == body.decode()
        stream = reply.extensions["network_stream"]
        ports.append(stream.get_extra_info("client_addr")[1])
    assert len(set(ports)) == 1, "each request opened a new connection"


async def test_http_1_0_request_is_answered_then_closed(start: Start) -> None:
    port = await start()
    raw = await Raw.open(port)
    async with raw.stream:
        await raw.send(b"GET /echo HTTP/1.0\r\n\r\n")
        reply = await raw.response()
        assert reply.status == 200
        await raw.wait_closed()


async def test_unknown_path_is_404_and_wrong_method_is_405(
    start: Start, client: httpx.AsyncClient
) -> None:
    port = await start()
    missing = await client.get(f"http://127.0.0.1:{port}/nowhere")
    assert missing.status_code == 404
    assert missing.json()["errcode"] == "M_UNRECOGNIZED"
    wrong = await client.delete(f"http://127.0.0.1:{port}/echo")
    assert wrong.status_code == 405
    assert wrong.json()["errcode"] == "M_UNRECOGNIZED"
    also_wrong = await client.put(f"http://127.0.0.1:{port}/items/x", content=b"{}")
    assert also_wrong.status_code == 405


async def test_a_handler_that_raises_gets_500_and_the_server_goes_on(
    start: Start, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    port = await start()
    reply = await client.get(f"http://127.0.0.1:{port}/boom")
    assert reply.status_code == 500
    assert reply.json()["errcode"] == "M_UNKNOWN"
    assert "a bug in a handler" not in reply.text  # internals stay in the log
    assert any("handler failed" in r.getMessage() for r in caplog.records)
    again = await client.get(f"http://127.0.0.1:{port}/echo")  # same client, same connection
    assert again.status_code == 200
    async with httpx.AsyncClient(timeout=DEADLINE) as other:
        assert (await other.get(f"http://127.0.0.1:{port}/echo")).status_code == 200


# -- bodies ----------------------------------------------------------------------------------------


async def test_content_length_over_max_body_is_refused_before_the_body(start: Start) -> None:
    # Only the head is sent: if the server waited for the body, no answer would come in time.
    port = await start(Limits(max_body=1000))
    raw = await Raw.open(port)
    async with raw.stream:
        await raw.send(
            b"PUT /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000000\r\n\r\n"
        )
        reply = await raw.response()
        assert reply.status == 413
        assert reply.json()["errcode"] == "M_TOO_LARGE"
        assert reply.headers.get("connection", "").lower() == "close"
        await raw.wait_closed()


async def test_a_body_of_exactly_max_body_is_accepted(
    start: Start, client: httpx.AsyncClient
) -> None:
    port = await start(Limits(max_body=1000))
    reply = await client.post(f"http://127.0.0.1:{port}/echo", content=b"x" * 1000)
    assert reply.status_code == 200
    assert reply.json()["body"] == "x" * 1000
    over = await client.post(f"http://127.0.0.1:{port}/echo", content=b"x" * 1001)
    assert over.status_code == 413


async def test_a_chunked_body_under_max_body_is_read_whole(start: Start) -> None:
    port = await start(Limits(max_body=100))
    raw = await Raw.open(port)
    async with raw.stream:
        await raw.send(
            b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        reply = await raw.response()
        assert reply.status == 200
        assert reply.json()["body"] == "hello world"


async def test_a_client_expecting_100_continue_is_told_to_send_its_body(start: Start) -> None:
    port = await start()
    raw = await Raw.open(port)
    async with raw.stream:
        await raw.send(request_bytes("POST", "/echo", None, "Expect: 100-continue",
                                     "Content-Length: 5"))
        interim = await raw.response()
        assert interim.status == 100
        await raw.send(b"hello")
        reply = await raw.response()
        assert reply.status == 200
        assert reply.json()["body"] == "hello"
        # The connection goes on: a stray CRLF between requests is skipped.
        await raw.send(b"\r\n" + request_bytes("POST", "/echo", b"again"))
        assert (await raw.response()).json()["body"] == "again"


async def test_a_chunk_ended_by_a_bare_lf_gets_400_and_the_connection_is_closed(
    start: Start,
) -> None:
    port = await start()
    raw = await Raw.open(port)
    async with raw.stream:
        # Read differently by different parsers, this is how requests are smuggled past proxies.
        await raw.send(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                       b"\r\n5\nhello\r\n0\r\n\r\n")
        reply = await raw.response()
        assert reply.status == 400
        assert "CRLF" in reply.json()["error"]
        await raw.wait_closed()


async def test_a_chunked_body_growing_past_max_body_gets_413(start: Start) -> None:
    port = await start(Limits(max_body=100))
    raw = await Raw.open(port)
    async with raw.stream:
        # No Content-Length: the size is known only once 120 bytes came in 2 chunks of 60.
        await raw.send(
            b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"3c\r\n" + b"a" * 60 + b"\r\n"
            + b"3c\r\n" + b"b" * 60
        )  # fmt: skip
        reply = await raw.response()
        assert reply.status == 413
        assert reply.json()["errcode"] == "M_TOO_LARGE"
        await raw.wait_closed()


async def test_a_body_that_stalls_gets_408(start: Start) -> None:
    port = await start(Limits(body_timeout=0.3, idle_timeout=30, head_timeout=30))
    raw = await Raw.open(port)
    async with raw.stream:
        began = trio.current_time()
        await raw.send(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\nabc")
        reply = await raw.response()
        assert reply.status == 408
        assert trio.current_time() - began < 10  # the body timeout, not the 30 s ones
        await raw.wait_closed()


# -- protocol abuse --------------------------------------------------------------------------------


async def test_garbage_gets_400_and_the_server_serves_others(
    start: Start, client: httpx.AsyncClient
) -> None:
    port = await start()
    raw = await Raw.open(port)
    async with raw.stream:
        await raw.send(b"NOT HTTP\r\n\r\n")
        reply = await raw.response()
        assert reply.status == 400
        assert reply.json()["errcode"] == "M_UNKNOWN"
        await raw.wait_closed()
    assert (await client.get(f"http://127.0.0.1:{port}/echo")).status_code == 200


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\xff\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS-ish bytes
        b"GET /echo HTTP/1.1\r\n\r\n",  # no Host
        b"GET /echo HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: a\r\nBad Header: 1\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_malformed_requests_get_4xx_and_the_server_goes_on(
    start: Start, client: httpx.AsyncClient, data: bytes
) -> None:
    port = await start()
    raw = await Raw.open(port)
    async with raw.stream:
        await raw.send(data)
        reply = await raw.response()
        assert 400 <= reply.status < 500
        await raw.wait_closed()
    assert (await client.get(f"http://127.0.0.1:{port}/echo")).status_code == 200


async def test_a_field_built_to_make_a_pattern_backtrack_is_refused_at_once(
    start: Start, client: httpx.AsyncClient
) -> None:
    # 64 kB of spaces and tabs, then a control byte: a backtracking pattern would take minutes
    # over it, and the whole server with it.
    port = await start(Limits(max_head=70_000))
    raw = await Raw.open(port)
    async with raw.stream:
        started = trio.current_time()
        await raw.send(b"GET /echo HTTP/1.1\r\nHost: a\r\nX: a" + b" \t" * 32_000
                       + b"\x01\r\n\r\n")
        assert (await raw.response()).status == 400
        # A pattern that blocks the loop blocks the deadlines too: ask the clock.
        took = trio.current_time() - started
        assert took < DEADLINE, f"the server was stuck on one field for {took:.0f} s"
    assert (await client.get(f"http://127.0.0.1:{port}/echo")).status_code == 200


@pytest.mark.parametrize("flood", [
    pytest.param(b"\r\n" * 20_000, id="empty-lines"),
    pytest.param(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
                 + b"a: b\r\n" * 5_000, id="trailers"),
])
async def test_an_endless_head_in_disguise_gets_431_and_the_server_goes_on(
    start: Start, client: httpx.AsyncClient, flood: bytes
) -> None:
    port = await start(Limits(max_head=1024))
    raw = await Raw.open(port)
    async with raw.stream:
        await raw.send(flood)
        assert (await raw.response()).status == 431
    assert (await client.get(f"http://127.0.0.1:{port}/echo")).status_code == 200


@dataclass
class _Hog:
    """A client in a thread that sends pipelined requests and never reads an answer."""

    blocked: threading.Event = dataclasses.field(default_factory=threading.Event)
    ended: threading.Event = dataclasses.field(default_factory=threading.Event)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    closed_by_server: OSError | None = None  # what its socket said when the server closed it

    def run(self, port: int, requests: bytes) -> None:
        try:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # full at once
                sock.settimeout(0.05)
                sock.connect(("127.0.0.1", port))
                view = memoryview(requests)
                while view and not self.stop.is_set():
                    try:
                        view = view[sock.send(view):]
                    except TimeoutError:
                        self.blocked.set()  # the server stopped reading: it holds the slot
                    except OSError as exc:  # reset, or a broken pipe: closed by the server
                        self.closed_by_server = exc
                        return
        finally:
            self.ended.set()


async def _within(event: threading.Event, what: str) -> None:
    if not await trio.to_thread.run_sync(event.wait, DEADLINE):
        raise AssertionError(f"{what} within {DEADLINE} s")


async def test_a_client_that_never_reads_its_answers_is_closed_and_frees_its_slot(
    start: Start,
) -> None:
    port = await start(Limits(max_connections=1, body_timeout=0.5, idle_timeout=30,
                              head_timeout=30))
    # Pipelined requests whose answers (each echoes its 4 kB query) fill every buffer between.
    requests = b"GET /echo?q=" + b"x" * 4000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    hog = _Hog()
    thread = threading.Thread(target=hog.run, args=(port, requests * 3000), daemon=True)
    thread.start()
    try:
        # The only slot is the hog's, and the server has stopped taking its requests, before
        # the other client comes: it is served only once the server gives up on the hog.
        await _within(hog.blocked, "the hog's sends did not block")
        other = await Raw.open(port)
        async with other.stream:
            await other.send(request_bytes("POST", "/echo", b"served"))
            reply = await other.response()
            assert reply.status == 200
            assert reply.json()["body"] == "served"
        await _within(hog.ended, "the hog's connection was not closed")
        assert isinstance(hog.closed_by_server, OSError), "the hog never saw the server close"
    finally:
        hog.stop.set()
        await trio.to_thread.run_sync(thread.join, DEADLINE)


async def test_a_head_over_max_head_gets_431(start: Start, client: httpx.AsyncClient) -> None:
    port = await start(Limits(max_head=1024))
    raw = await Raw.open(port)
    async with raw.stream:
        await raw.send(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 4000)
        reply = await raw.response()
        assert reply.status == 431
        await raw.wait_closed()
    assert (await client.get(f"http://127.0.0.1:{port}/echo")).status_code == 200


async def test_a_head_request_is_answered_and_the_server_goes_on(
    start: Start, client: httpx.AsyncClient
) -> None:
    # HEAD is a method every HTTP client may send; a reply to it carries no body.
    port = await start()
    raw = await Raw.open(port)
    async with raw.stream:
        await raw.send(request_bytes("HEAD", "/echo"))
        reply = await raw.response(head_only=True)
        assert reply.status < 500
    assert (await client.get(f"http://127.0.0.1:{port}/echo")).status_code == 200


# -- timeouts --------------------------------------------------------------------------------------


async def _answered_408_or_closed(raw: Raw) -> None:
    with trio.fail_after(DEADLINE):
        got_bytes = await raw._fill()
    if got_bytes:
        reply = await raw.response()
        assert reply.status == 408
    await raw.wait_closed()


async def test_a_head_that_never_completes_is_cut_off_after_head_timeout(start: Start) -> None:
    # The idle timeout is long: only the head timeout can end this in time.
    port = await start(Limits(head_timeout=0.3, idle_timeout=30))
    raw = await Raw.open(port)
    async with raw.stream:
        began = trio.current_time()
        await raw.send(b"PUT /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await _answered_408_or_closed(raw)
        assert 0.25 <= trio.current_time() - began < 10


async def test_a_trickled_head_cannot_outlive_head_timeout(start: Start) -> None:
    # Slowloris: one byte at a time keeps the connection busy but must not reset the deadline.
    port = await start(Limits(head_timeout=0.3, idle_timeout=30))
    raw = await Raw.open(port)
    async with raw.stream:
        began = trio.current_time()
        await raw.send(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        with trio.fail_after(DEADLINE):
            while not raw.eof and not raw.buf:
                try:
                    await raw.send(b"a")
                except trio.BrokenResourceError:
                    break
                with trio.move_on_after(0.05):  # the pace of the trickle, and a poll for an answer
                    await raw._fill()
        assert trio.current_time() - began < 3
        if raw.buf:
            reply = await raw.response()
            assert reply.status == 408


async def test_a_new_silent_connection_is_closed_after_head_timeout(start: Start) -> None:
    # A new connection must say something soon, however long kept-alive ones may idle: idle
    # attackers cannot crowd out the homeservers.
    port = await start(Limits(idle_timeout=30, head_timeout=0.5))
    raw = await Raw.open(port)
    async with raw.stream:
        began = trio.current_time()
        await raw.wait_closed()  # without a word: nothing was asked
        assert 0.3 <= trio.current_time() - began < DEADLINE


async def test_a_kept_alive_connection_is_closed_after_idle_timeout(start: Start) -> None:
    port = await start(Limits(idle_timeout=0.5, head_timeout=30))
    raw = await Raw.open(port)
    async with raw.stream:
        await raw.send(request_bytes())
        assert (await raw.response()).status == 200
        began = trio.current_time()
        await raw.wait_closed()
        assert 0.3 <= trio.current_time() - began < DEADLINE


async def test_an_open_connection_is_not_closed_before_idle_timeout(start: Start) -> None:
    port = await start(Limits(idle_timeout=30, head_timeout=30))
    raw = await Raw.open(port)
    async with raw.stream:
        assert await raw.quiet()
        await raw.send(request_bytes())
        assert (await raw.response()).status == 200


# -- connection limit ------------------------------------------------------------------------------


async def test_max_connections_bounds_concurrent_connections(start: Start) -> None:
    port = await start(Limits(max_connections=2, idle_timeout=30, head_timeout=30))
    first, second = await Raw.open(port), await Raw.open(port)
    for raw in (first, second):  # both are being served
        await raw.send(request_bytes())
        assert (await raw.response()).status == 200
    third = await Raw.open(port)  # the kernel completes the handshake; the server must not serve
    try:
        await third.send(request_bytes("POST", "/echo", b"third"))
        assert await third.quiet(), "a third connection was served while two were open"
        await second.send(request_bytes())  # the two that hold the slots still work
        assert (await second.response()).status == 200
        await first.aclose()  # frees a slot
        reply = await third.response()
        assert reply.status == 200
        assert reply.json()["body"] == "third"
    finally:
        for raw in (first, second, third):
            await raw.aclose()


# -- fairness --------------------------------------------------------------------------------------


def _pipeline(port: int, requests: int) -> int:
    """In threads of its own: write `requests` pipelined requests in one go while reading the
    answers (so the server never waits to send them); the number of answers that came."""
    data = b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n" * requests
    received = bytearray()
    answers = position = 0
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        writer = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
        writer.start()
        while answers < requests:
            got = sock.recv(65_536)
            if not got:
                break
            received += got
            while (found := received.find(b"HTTP/1.1 404 ", position)) >= 0:
                answers += 1
                position = found + 1
        writer.join(DEADLINE)
    return answers


async def test_a_client_pipelining_many_requests_does_not_stall_the_other_tasks(
    start: Start, nursery: trio.Nursery
) -> None:
    # The 404 is answered without the handler ever waiting, and the requests are all there to
    # read: only the server's own pass through the scheduler lets anything else run meanwhile.
    port = await start()
    requests = 3000
    gaps: list[float] = []
    done = trio.Event()

    async def ticker() -> None:
        last = trio.current_time()
        while not done.is_set():
            await trio.sleep(0.005)  # a probe of the loop: how long until it runs again
            now = trio.current_time()
            gaps.append(now - last)
            last = now

    with trio.fail_after(30):
        nursery.start_soon(ticker)
        try:
            answered = await trio.to_thread.run_sync(_pipeline, port, requests)
        finally:
            done.set()
    assert answered == requests
    assert gaps, "the ticker never ran"
    assert max(gaps) < 0.25, f"another task waited {max(gaps):.3f} s for the loop"
