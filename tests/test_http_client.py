"""The lean h11 client of the hot send path (bridge/http/client.py), against real sockets."""

from __future__ import annotations

from functools import partial

import h11
import pytest
import trio

from bridge.http.client import MAX_RESPONSE, ConnectionFailed, LeanClient, NoAnswer
from bridge.http.server import Limits, serve
from bridge.http.types import Request, Response, json_response

from .rigs import until


class RawServer:
    """An h11 server that counts connections and can close each after one answer without
    saying so (as a server closing an idle kept-alive connection does)."""

    def __init__(self, *, close_after_one: bool = False, body: bytes = b'{"ok":true}',
                 status: int = 200, extra: list[tuple[str, str]] | None = None) -> None:
        self.close_after_one = close_after_one
        self.body = body
        self.status = status
        self.extra = extra or []
        self.connections = 0
        self.requests: list[tuple[str, str, bytes, dict[str, str]]] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request, body = event, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                headers = {k.decode(): v.decode() for k, v in request.headers}
                self.requests.append((request.method.decode(), request.target.decode(), body,
                                      headers))
                out = conn.send(h11.Response(status_code=self.status, headers=[
                    ("content-length", str(len(self.body))),
                    ("content-type", "application/json"), *self.extra]))
                out += conn.send(h11.Data(data=self.body)) + conn.send(h11.EndOfMessage())
                await stream.send_all(out)
                if self.close_after_one:
                    await stream.aclose()
                    return
                conn.start_next_cycle()
            else:
                return


async def start(nursery: trio.Nursery, server: RawServer) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def test_requests_share_one_kept_alive_connection(nursery: trio.Nursery) -> None:
    server = RawServer()
    port = await start(nursery, server)
    async with LeanClient(f"http://127.0.0.1:{port}/base", {"Authorization": "Bearer t"}) as c:
        for i in range(5):
            status, body, *_ = await c.request("PUT", f"/send/{i}?user_id=%40a", b'{"n":1}')
            assert (status, body) == (200, b'{"ok":true}')
    assert server.connections == 1
    method, target, body, headers = server.requests[0]
    assert (method, target, body) == ("PUT", "/base/send/0?user_id=%40a", b'{"n":1}')
    assert headers["authorization"] == "Bearer t"
    assert headers["host"] == f"127.0.0.1:{port}"
    assert headers["content-type"] == "application/json"


async def test_a_connection_closed_while_idle_is_replaced_and_the_request_goes_through(
    nursery: trio.Nursery,
) -> None:
    server = RawServer(close_after_one=True)
    port = await start(nursery, server)
    async with LeanClient(f"http://127.0.0.1:{port}", {}) as client:
        for _ in range(3):
            status, *_ = await client.request("PUT", "/x", b"{}")
            assert status == 200
    assert server.connections == 3
    assert len(server.requests) == 3  # each sent once: no request was lost or doubled


async def test_nobody_listening_is_a_clear_connection_failure() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with LeanClient(f"http://127.0.0.1:{port}", {}) as client:
            with pytest.raises(ConnectionFailed, match=f"cannot connect to 127.0.0.1:{port}"):
                await client.request("GET", "/")


async def test_an_oversized_answer_is_refused(nursery: trio.Nursery) -> None:
    server = RawServer(body=b"x" * (MAX_RESPONSE + 1))
    port = await start(nursery, server)
    async with LeanClient(f"http://127.0.0.1:{port}", {}) as client:
        with pytest.raises(ConnectionFailed, match="an answer of over"):
            await client.request("GET", "/")


async def test_it_talks_to_the_bridges_own_server_and_reads_errors(nursery: trio.Nursery) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/missing":
            return json_response(404, {"errcode": "M_NOT_FOUND"})
        return json_response(200, {"echo": request.body.decode()})

    listeners = await nursery.start(serve, "127.0.0.1", 0, handler, Limits())
    port = listeners[0].socket.getsockname()[1]
    async with LeanClient(f"http://127.0.0.1:{port}", {}) as client:
        assert (await client.request("PUT", "/x", b"hi"))[:2] == (200, b'{"echo":"hi"}')
        status, body, *_ = await client.request("GET", "/missing")
        assert (status, body) == (404, b'{"errcode":"M_NOT_FOUND"}')


def test_only_http_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="not an http"):
        LeanClient("ftp://example.com", {})


async def test_retry_after_is_read_from_the_answer(nursery: trio.Nursery) -> None:
    server = RawServer(status=429, extra=[("retry-after", "7")],
                       body=b'{"errcode":"M_LIMIT_EXCEEDED"}')
    port = await start(nursery, server)
    async with LeanClient(f"http://127.0.0.1:{port}", {}) as client:
        answer = await client.request("PUT", "/x", b"{}")
    assert (answer.status, answer.retry_after) == (429, "7")
    assert answer.body == b'{"errcode":"M_LIMIT_EXCEEDED"}'


async def test_a_homeserver_that_takes_a_send_and_never_answers_is_unreachable_in_time(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    import httpx

    from bridge.matrix.client import Homeserver, Unreachable

    listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
    url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    async with httpx.AsyncClient(base_url=url) as http, LeanClient(url, {}) as fast:
        homeserver = Homeserver(http, "hs.test", deadline=45.0, fast=fast)
        started = trio.current_time()
        with pytest.raises(Unreachable, match="no answer in 45 s"):
            await homeserver.send_event("!room:hs.test", "m.room.message", {"body": "hi"},
                                        "tb1x", "@ghost:hs.test")
        assert 45.0 <= trio.current_time() - started <= 45.1  # the watchdog wakes when due
        # The connection it hung on is not handed to the next request.
        assert fast._idle == []


async def mute(stream: trio.abc.Stream) -> None:
    """A server that reads a request and never answers it."""
    await stream.receive_some(65536)
    await trio.sleep_forever()


async def test_a_request_without_its_answer_in_time_fails_and_others_go_on(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
    mute_url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    answering = await start(nursery, RawServer())
    async with LeanClient(mute_url, {}) as client, \
            LeanClient(f"http://127.0.0.1:{answering}", {}) as other:
        started = trio.current_time()
        with trio.fail_after(10), pytest.raises(NoAnswer, match=r"no answer in 0.2 s"):
            await client.request("PUT", "/send/1", b"{}", within=0.2)
        assert 0.2 <= trio.current_time() - started <= 0.25
        # Not taken for a connection closed while idle: a PUT is never sent twice unasked.
        assert client._idle == []
        answer = await other.request("PUT", "/send/2", b"{}", within=0.2)
        assert answer.status == 200
        # An answer that came in time leaves nothing for the watchdog to close later: its
        # deadline passes (virtual time), and the kept connection serves the next request.
        await trio.sleep(0.25)
        assert (await other.request("GET", "/again", within=0.2)).status == 200
        assert len(other._idle) == 1
        # Nothing under way: the watchdog stops rather than wake an idle bridge every second.
        await until(lambda: not other._watching, within=1)


async def test_a_short_deadline_after_a_long_one_is_kept_to(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # The watchdog sleeps until the earliest answer due: a request given less time than the
    # one under way must wake it sooner, not when the long one's deadline comes.
    listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
    async with LeanClient(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}",
                          {}) as client:
        failed: list[tuple[str, float]] = []

        async def ask(name: str, within: float) -> None:
            started = trio.current_time()
            with pytest.raises(NoAnswer):
                await client.request("PUT", f"/send/{name}", b"{}", within=within)
            failed.append((name, trio.current_time() - started))

        async with trio.open_nursery() as requests:
            requests.start_soon(ask, "long", 60.0)
            await until(lambda: client._sleep is not None, within=1)  # the watchdog sleeps
            requests.start_soon(ask, "short", 2.0)
        assert failed == [("short", pytest.approx(2.0, abs=0.05)),
                          ("long", pytest.approx(60.0, abs=0.05))]


class Unclosable:
    """A connection whose close does not end its request at once (the request clears its
    deadline itself, later)."""

    def abort(self) -> None:
        pass


async def test_an_overdue_request_already_closed_does_not_keep_the_watchdog_awake() -> None:
    # Its deadline passed: counted still, it would end the watchdog's every sleep at once.
    # Real time: a watchdog that spins never lets a virtual clock move.
    client = LeanClient("http://127.0.0.1:9", {})
    conn = Unclosable()
    client._due[conn] = trio.current_time()  # type: ignore[index]
    client._timed_out.add(conn)  # type: ignore[arg-type]
    client._watching = True
    trio.lowlevel.spawn_system_task(client._watch)
    await until(lambda: not client._watching, within=1)


async def test_closing_the_client_ends_its_watchdog_at_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
    client = LeanClient(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}", {})
    async with trio.open_nursery() as requests:
        requests.start_soon(partial(client.request, "PUT", "/send/1", b"{}", within=60.0))
        await until(lambda: client._sleep is not None, within=1)
        started = trio.current_time()
        await client.aclose()
        await until(lambda: not client._watching, within=60)
        assert trio.current_time() - started < 1  # not when the answer was due
        requests.cancel_scope.cancel()


async def test_a_tls_request_without_its_answer_in_time_fails_too(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    import ssl

    import trustme

    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    listeners = await nursery.start(partial(
        trio.serve_ssl_over_tcp, mute, 0, server_context, host="127.0.0.1"))
    port = listeners[0].transport_listener.socket.getsockname()[1]
    async with LeanClient(f"https://127.0.0.1:{port}", {},
                          ssl_context=client_context) as client:
        with trio.fail_after(10), pytest.raises(NoAnswer, match="no answer in 3 s"):
            await client.request("PUT", "/send/1", b"{}", within=3)


async def test_timeline_pages_are_read_with_the_lean_client_and_big_ones_with_httpx(
    nursery: trio.Nursery,
) -> None:
    import json

    import httpx

    from bridge.matrix.client import Homeserver

    seen: list[tuple[str, str, str]] = []  # (path, query, user agent) of each read

    async def handler(request: Request) -> Response:
        query = {k: v[0] for k, v in request.query.items()}
        seen.append((request.path, json.dumps(query, sort_keys=True),
                     request.headers.get("user-agent", "")))
        # The first page of !big has ten events that together pass the lean client's limit.
        size = MAX_RESPONSE // 8 if "big" in request.path and "from" not in query else 10
        chunk = [{"event_id": f"$e{n}", "type": "m.room.message",
                  "content": {"body": "x" * size}} for n in range(10)]
        return json_response(200, {"chunk": chunk, "start": "t0", "end": "t1"})

    listeners = await nursery.start(serve, "127.0.0.1", 0, handler, Limits())
    url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    async with httpx.AsyncClient(base_url=url) as http, LeanClient(url, {}) as fast:
        homeserver = Homeserver(http, "hs.test", fast=fast)
        events, token = await homeserver.messages("!small:hs.test", 10, "s 1_2")
        assert [e["event_id"] for e in events] == [f"$e{n}" for n in range(10)]
        assert token == "t1"
        # One request, by the lean client (httpx names itself), with the query intact.
        assert seen == [("/_matrix/client/v3/rooms/%21small%3Ahs.test/messages",
                         '{"dir": "b", "from": "s 1_2", "limit": "10"}', "")]
        seen.clear()
        events, token = await homeserver.messages("!big:hs.test", 10)
        assert len(events) == 10 and len(events[0]["content"]["body"]) == MAX_RESPONSE // 8
        # Refused by the lean client for its size, then read whole by httpx.
        assert [agent.startswith("python-httpx") for _, _, agent in seen] == [False, True]
