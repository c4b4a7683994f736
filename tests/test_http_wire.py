"""The lean client's HTTP/1.1 on the wire (bridge/http/wire.py): responses read as h11 reads
them, in any split; what the strict reader refuses; request heads that h11 reads back; and what
the client does with odd answers, against real sockets."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import h11
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.http import wire
from bridge.http.client import ConnectionFailed, LeanClient
from bridge.http.rawsocket import RawStream
from bridge.http.wire import (
    MAX_CHUNK_LINE,
    MAX_HEAD,
    BadResponse,
    Response,
    ResponseReader,
    TooLarge,
    fixed_fields,
    request_head,
)

from .http_strategies import TOKEN, VISIBLE, field_names, field_values

FRAMING = {"content-length", "transfer-encoding", "connection"}


# (h11 writes a Host field first, wherever it was given: not one to move about here.)
response_fields = st.lists(st.tuples(field_names(FRAMING | {"host"}), field_values), max_size=5)


def read(data: bytes, *, max_body: int = 1_000_000, head_only: bool = False,
         ) -> tuple[Response, ResponseReader]:
    """The response in `data`, fed in one piece (it must be complete)."""
    reader = ResponseReader(max_body, head_only)
    response = reader.feed(data)
    assert response is not None
    return response, reader


def refused(data: bytes, *, max_body: int = 1_000_000) -> str:
    """The message of the BadResponse that `data` earns; fed byte by byte, it earns the same
    refusal (the message may quote fewer of the bytes)."""
    with pytest.raises(BadResponse) as whole:
        ResponseReader(max_body).feed(data)
    reader = ResponseReader(max_body)
    with pytest.raises(BadResponse) as bytewise:
        for i in range(len(data)):
            reader.feed(data[i:i + 1])
    assert str(bytewise.value).split(":")[0] == str(whole.value).split(":")[0]
    return str(whole.value)


# -- 1. responses as h11 writes them, in random pieces ------------------------------------------


@dataclass
class Written:
    wire: bytes
    status: int
    reason: str
    fields: list[tuple[str, str]]
    body: bytes
    framing: str  # "length", "chunked" or "close" (an HTTP/1.0 request: h11 frames by close)
    close: bool


@st.composite
def h11_responses(draw: st.DrawFn) -> Written:
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    status = draw(st.integers(200, 599))
    reason = draw(st.text(VISIBLE + " \t", max_size=20))
    fields = draw(response_fields)
    close = draw(st.booleans())
    pieces = draw(st.lists(st.binary(max_size=64), max_size=6))
    no_body = status in (204, 304)
    if no_body:
        pieces = []
    body = b"".join(pieces)

    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.0\r\n\r\n" if framing == "close"
                        else b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n")
    assert isinstance(server.next_event(), h11.Request)
    assert isinstance(server.next_event(), h11.EndOfMessage)
    wire = b""
    if framing != "close":
        for code, interim_fields in draw(st.lists(
                st.tuples(st.sampled_from([100, 102, 103]), response_fields), max_size=2)):
            wire += server.send(h11.InformationalResponse(status_code=code,
                                                          headers=interim_fields))
    headers = list(fields)
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
    if close:
        headers.append(("Connection", "close"))
    wire += server.send(h11.Response(status_code=status, reason=reason, headers=headers))
    for piece in pieces:
        wire += server.send(h11.Data(data=piece))
    trailers = (draw(response_fields) if framing == "chunked" and not no_body else [])
    wire += server.send(h11.EndOfMessage(headers=trailers))
    return Written(wire, status, reason, fields, body, framing, close)


def h11_reads(wire: bytes) -> tuple[h11.Response, bytes]:
    """The oracle: the final response and body that h11, as a client, reads from `wire`."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "example.org")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    client.receive_data(b"")
    response, body = None, b""
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        else:
            assert isinstance(event, h11.InformationalResponse), event
    assert response is not None
    return response, body


@settings(max_examples=200, deadline=None)
@given(written=h11_responses(), data=st.data())
def test_a_response_written_by_h11_reads_the_same_in_any_split(
    written: Written, data: st.DataObject
) -> None:
    wire = written.wire
    cuts = data.draw(st.one_of(
        st.just(list(range(1, len(wire)))),  # a byte at a time
        st.lists(st.integers(1, len(wire) - 1), unique=True, max_size=12).map(sorted),
    ), label="cuts")
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    # The bound is inclusive: a body of exactly max_body bytes is taken.
    max_body = len(written.body) + data.draw(st.sampled_from([0, 1, 100_000]), label="slack")
    reader = ResponseReader(max_body)
    results = [reader.feed(piece) for piece in pieces]
    framed_by_close = written.framing == "close" and written.status not in (204, 304)
    if framed_by_close:
        assert results == [None] * len(pieces)
        got = reader.eof()
    else:
        # Not a byte early (that would be a truncated body), and as soon as it is all in.
        assert results[:-1] == [None] * (len(pieces) - 1)
        got = results[-1]
        assert got is not None
    assert reader.leftover == b""

    assert (got.status, got.reason, got.body) == (written.status, written.reason, written.body)
    assert got.keep_alive is not (written.close or written.framing == "close")
    chosen = [(name.lower().encode(), value.encode()) for name, value in written.fields]
    assert [f for f in got.headers if f[0].decode() not in FRAMING] == chosen
    if written.framing == "length":
        assert got.header(b"content-length") == str(len(written.body))
    if written.framing == "chunked" and written.status not in (204, 304):
        assert got.header(b"transfer-encoding") == "chunked"
    if written.close:
        assert "close" in got.header(b"connection")
    # And all of it as h11 itself reads it.
    oracle, oracle_body = h11_reads(wire)
    assert got.status == oracle.status_code
    assert got.reason.encode("latin-1") == oracle.reason
    assert list(got.headers) == list(oracle.headers)
    assert got.body == oracle_body


# -- 2. framing and keep-alive, by hand -----------------------------------------------------------


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",  # the length a 200 would have had
    b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
])
def test_204_and_304_have_no_body_and_what_follows_is_leftover(head: bytes) -> None:
    got, reader = read(head + b"hello")
    assert got.body == b""
    assert got.keep_alive
    assert reader.leftover == b"hello"


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
])
def test_the_answer_to_head_has_no_body(head: bytes) -> None:
    got, reader = read(head, head_only=True)
    assert (got.status, got.body, got.keep_alive) == (200, b"", True)
    assert reader.leftover == b""


def test_a_body_framed_by_the_close_comes_with_eof_and_the_connection_is_not_kept() -> None:
    reader = ResponseReader(1000)
    assert reader.feed(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome ") is None
    assert reader.feed(b"body") is None
    got = reader.eof()
    assert (got.status, got.body, got.keep_alive) == (200, b"some body", False)


def test_a_body_framed_by_the_close_is_bounded() -> None:
    reader = ResponseReader(10)
    assert reader.feed(b"HTTP/1.1 200 OK\r\n\r\n0123456789") is None
    with pytest.raises(BadResponse, match="an answer of over 10 bytes"):
        reader.feed(b"!")


@pytest.mark.parametrize("head, keep_alive", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", True),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Keep-Alive , CLOSE\r\n", False),
    (b"HTTP/1.1 200 OK\r\nConnection: x\r\nContent-Length: 2\r\nconnection: close\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: closed, upgrade\r\n", True),
])
def test_keep_alive(head: bytes, keep_alive: bool) -> None:
    got, reader = read(head + b"\r\nok")
    assert (got.body, got.keep_alive, reader.leftover) == (b"ok", keep_alive, b"")


def test_bare_lf_line_endings_are_accepted() -> None:
    got, _ = read(b"HTTP/1.1 201 Created\nContent-Length: 2\nX-A:  b c \n\nok")
    assert (got.status, got.reason, got.body) == (201, "Created", b"ok")
    assert list(got.headers) == [(b"content-length", b"2"), (b"x-a", b"b c")]
    got, _ = read(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\nok\n3\n!!!\n0\n\n")
    assert (got.body, got.keep_alive) == (b"ok!!!", True)


def test_chunk_extensions_and_trailers_are_accepted_and_trailers_dropped() -> None:
    wire = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Head: 1\r\n\r\n"
            b"5;name=value\r\nhello\r\n6 ; quoted=\"a;b\"\r\n world\r\nA\r\n0123456789\r\n"
            b"0;last\r\nX-Trailer: 1\r\nServer-Timing: a;dur=2\r\n\r\n")
    for split in (len(wire), 1):  # whole, and a byte at a time
        reader = ResponseReader(1000)
        results = [reader.feed(wire[i:i + split]) for i in range(0, len(wire), split)]
        got = results[-1]
        assert got is not None and results[:-1] == [None] * (len(results) - 1)
        assert got.body == b"hello world0123456789"
        assert list(got.headers) == [(b"transfer-encoding", b"chunked"), (b"x-head", b"1")]
        assert got.header(b"x-trailer") == ""
        assert got.keep_alive and reader.leftover == b""


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: y\r\n\r\n",
])
def test_bytes_after_a_complete_response_are_leftover(response: bytes) -> None:
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    got, reader = read(response + extra)
    assert got.body == b"abc"
    assert reader.leftover == extra


def test_a_head_read_before_reads_the_same_whatever_the_reader_s_limits() -> None:
    # Heads already read are kept (wire._HEADS): the same bytes read again, by readers of
    # other limits, for a HEAD, or with another body, give what reading them afresh gives.
    wire._HEADS.clear()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Hs: synapse\r\n\r\n"
    for body in (b"hello", b"world"):
        got, reader = read(head + body + b"extra")
        assert (got.status, got.body, got.keep_alive, reader.leftover) == (
            200, body, True, b"extra")
        assert got.header(b"x-hs") == "synapse"
    assert len(wire._HEADS) == 1  # the second was the first's
    got, _ = read(head, head_only=True)  # the answer to a HEAD: no body follows
    assert (got.status, got.body) == (200, b"")
    with pytest.raises(TooLarge):
        read(head + b"hello", max_body=4)
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
    for _ in range(2):
        got, _ = read(closing + b"hello")
        assert (got.body, got.keep_alive) == (b"hello", False)
    with pytest.raises(BadResponse, match="Content-Length"):
        read(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")  # refused, every time
    with pytest.raises(BadResponse, match="Content-Length"):
        read(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")


def test_the_heads_kept_stay_few_and_small() -> None:
    wire._HEADS.clear()
    for n in range(wire.HEADS_KEPT + 10):
        got, _ = read(b"HTTP/1.1 200 OK\r\nDate: %d\r\nContent-Length: 0\r\n\r\n" % n)
        assert got.status == 200
    assert 0 < len(wire._HEADS) <= wire.HEADS_KEPT
    wire._HEADS.clear()
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * wire.HEAD_KEPT_SIZE + b"\r\n"
    got, _ = read(big + b"Content-Length: 0\r\n\r\n")
    assert got.status == 200 and not wire._HEADS


def test_interim_answers_are_skipped() -> None:
    got, reader = read(b"HTTP/1.1 100 Continue\r\n\r\n"
                       b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                       b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert (got.status, got.reason, got.body) == (200, "OK", b"ok")
    assert list(got.headers) == [(b"content-length", b"2")]  # not the 103's Link
    assert reader.leftover == b""


def test_a_body_of_exactly_max_body_is_taken() -> None:
    got, _ = read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", max_body=10)
    assert got.body == b"0123456789"
    got, _ = read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"4\r\n0123\r\n6\r\n456789\r\n0\r\n\r\n", max_body=10)
    assert got.body == b"0123456789"


# -- 3. refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status_line", [
    b"HTTP/2 200", b"HTTP/2.0 200 OK", b"HTTP/1.2 200 OK", b"ICY 200 OK", b"http/1.1 200 OK",
    b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"HTTP/1.1 200OK", b"HTTP/1.1  200 OK",
    b"HTTP/1.1 200 O\x00K", b"<html><body>Bad Gateway</body></html>", b"\x16\x03\x01\x02\x00",
    b"", b"HTTP/1.1 099 Low", b"HTTP/1.1 600 High",
])
def test_what_is_not_a_status_line_is_refused(status_line: bytes) -> None:
    message = refused(status_line + b"\r\nContent-Length: 0\r\n\r\n")
    assert "not an HTTP/1.1 status line" in message


@pytest.mark.parametrize("field", [
    b" folded",  # obsolete line folding: a continuation of the line before
    b"\tfolded",
    b" X-Folded: looks like a field",
    b"X-No-Colon value",
    b"X A: b",  # a space in the name
    b"X-A : b",  # whitespace before the colon (RFC 9112 section 5.1: must be rejected)
    b"X(A): b",
    b": no name",
    b"X-\xe9: b",
    b"X-A: a\x00b",
    b"X-A: a\x01b",
    b"X-A: a\x1bb",
    b"X-A: a\x7fb",
    b"X-A: a\rb",  # a lone CR inside a value
])
def test_a_bad_field_line_is_refused(field: bytes) -> None:
    message = refused(b"HTTP/1.1 200 OK\r\nX-First: 1\r\n" + field + b"\r\n"
                      b"Content-Length: 0\r\n\r\n")
    assert message.startswith("not a header field")
    assert repr(field.strip()[:10])[2:-1] in message  # names the line


@pytest.mark.parametrize("lengths", [
    [b"5", b"6"], [b"five"], [b"-1"], [b"+5"], [b""], [b"0x5"], [b"5 5"],
])
def test_a_bad_content_length_is_refused(lengths: list[bytes]) -> None:
    head = b"".join(b"Content-Length: %s\r\n" % length for length in lengths)
    message = refused(b"HTTP/1.1 200 OK\r\n" + head + b"\r\nhello, world")
    assert "a bad Content-Length" in message


def test_a_content_length_of_thousands_of_digits_is_over_max_body_not_a_crash() -> None:
    message = refused(b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 4301 + b"\r\n\r\n")
    assert message.startswith("an answer of over")


def test_a_field_value_keeps_its_inner_whitespace_and_loses_the_outer() -> None:
    got, _ = read(b"HTTP/1.1 200 OK\r\nX-A: \t a \t b \t \r\nContent-Length: 0\r\n\r\n")
    assert got.header(b"x-a") == "a \t b"


def test_agreeing_content_lengths_are_taken() -> None:
    got, _ = read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello")
    assert got.body == b"hello"


def test_a_head_over_max_head_is_refused() -> None:
    reader = ResponseReader(1000)
    start = b"HTTP/1.1 200 OK\r\nX-Big: "
    assert reader.feed(start + b"a" * (MAX_HEAD - len(start))) is None
    with pytest.raises(BadResponse, match=f"a response head of over {MAX_HEAD} bytes"):
        reader.feed(b"a")
    # And one that does end, past the bound, all in one piece.
    with pytest.raises(BadResponse, match=f"a response head of over {MAX_HEAD} bytes"):
        ResponseReader(1000).feed(start + b"a" * MAX_HEAD + b"\r\n\r\n")


def test_a_declared_length_over_max_body_is_refused_before_the_body_comes() -> None:
    with pytest.raises(BadResponse, match="an answer of over 10 bytes"):
        ResponseReader(10).feed(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n")
    with pytest.raises(BadResponse, match="an answer of over 10 bytes"):
        ResponseReader(10).feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n")


@pytest.mark.parametrize("chunks", [
    b"6\r\n012345\r\n5\r\n",  # the second chunk's size takes it over
    b"B\r\n",
    b"ffffffffffffffff\r\n",
])
def test_chunked_data_over_max_body_is_refused(chunks: bytes) -> None:
    message = refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks,
                      max_body=10)
    assert message == "an answer of over 10 bytes"


@pytest.mark.parametrize("after", [b"XY", b"\rX", b"hello"])
def test_a_chunk_not_followed_by_crlf_is_refused(after: bytes) -> None:
    message = refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello" + after)
    assert message == "a chunk not followed by CRLF"


@pytest.mark.parametrize("size_line", [
    b"zz", b"-5", b"0x5", b"", b";ext", b"5 6", b"12345678901234567",
])
def test_a_bad_chunk_size_is_refused(size_line: bytes) -> None:
    message = refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + size_line + b"\r\nhello\r\n0\r\n\r\n")
    assert "not a chunk size" in message


def test_a_chunk_size_line_that_does_not_end_is_refused() -> None:
    reader = ResponseReader(1000)
    reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;")
    with pytest.raises(BadResponse, match="a chunk size line of over 1024 bytes"):
        reader.feed(b"x" * 2000)


@pytest.mark.parametrize("chunks", [
    b"5;" + b"x" * MAX_CHUNK_LINE + b"\r\nhello\r\n0\r\n\r\n",  # a chunk size line
    b"0\r\nX-Trailer: " + b"x" * MAX_HEAD + b"\r\n\r\n",  # a trailer field line
])
def test_an_overlong_chunk_line_is_refused_however_it_arrives(chunks: bytes) -> None:
    # Byte by byte, the bound refuses it; it must not depend on how TCP split the bytes.
    message = refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    assert "of over" in message or "does not end" in message


@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked", b"chunked, chunked", b"identity"])
def test_a_transfer_coding_other_than_chunked_is_refused(coding: bytes) -> None:
    # Nothing asks for one, and undecoded bytes handed over as the answer would be worse.
    message = refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding
                      + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert "a transfer coding this client does not read" in message


def test_chunks_win_over_a_length_but_the_connection_is_not_kept() -> None:
    got, _ = read(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n")
    assert got.body == b"hello"
    assert not got.keep_alive  # framed two ways: the next request goes on a fresh connection


@pytest.mark.parametrize("fields", [
    [b"Transfer-Encoding: chunked,"],
    [b"Transfer-Encoding: , chunked"],
    [b"Transfer-Encoding: chunked", b"Transfer-Encoding: "],
    [b"Transfer-Encoding: chunked , ,"],
])
def test_empty_elements_of_transfer_encoding_are_ignored(fields: list[bytes]) -> None:
    """RFC 9110 section 5.6.1: a recipient MUST parse and ignore empty list elements. Read as
    chunked: neither refused nor the chunk framing handed over as the body."""
    wire = (b"HTTP/1.1 200 OK\r\n" + b"".join(f + b"\r\n" for f in fields)
            + b"\r\n5\r\nhello\r\n0\r\n\r\n")
    got = ResponseReader(1000).feed(wire)
    assert got is not None, "still waiting for the close after a whole chunked body"
    assert got.body == b"hello"


def test_a_bad_trailer_is_refused() -> None:
    message = refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"0\r\nnot a field\r\n\r\n")
    assert "not a trailer field" in message


def test_switching_protocols_is_refused() -> None:
    message = refused(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: upgrade\r\n\r\n")
    assert "switched protocols" in message


@pytest.mark.parametrize("received", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",  # mid-body
    b"HTTP/1.1 200 OK\r\nContent-Len",  # mid-head
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",  # no last chunk
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n",  # mid-trailers
    b"HTTP/1.1 100 Continue\r\n\r\n",  # only the interim answer
])
def test_eof_mid_answer_is_refused(received: bytes) -> None:
    reader = ResponseReader(1000)
    assert reader.feed(received) is None
    with pytest.raises(BadResponse, match="the connection closed mid-answer"):
        reader.eof()


def test_eof_before_any_answer_is_refused_with_its_own_message() -> None:
    reader = ResponseReader(1000)
    assert reader.feed(b"") is None
    assert not reader.received
    with pytest.raises(BadResponse, match="the connection closed before any answer"):
        reader.eof()


# -- 4. request heads -----------------------------------------------------------------------------

REQUEST_FRAMING = {"host", "content-length", "content-type", "transfer-encoding", "connection",
                   "upgrade", "expect"}


def h11_request(wire: bytes) -> tuple[h11.Request, bytes]:
    """The one request h11, as a server, reads from `wire` (and that nothing follows it)."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(wire)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    body = b""
    while not isinstance(event := server.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data), event
        body += event.data
    assert server.next_event() is h11.NEED_DATA  # one request, not two
    assert server.trailing_data == (b"", False)
    return request, body


@settings(max_examples=200, deadline=None)
@given(
    method=st.text(TOKEN, min_size=1, max_size=10).filter(lambda m: m != "CONNECT"),
    target=st.text(VISIBLE, max_size=30).map(lambda t: "/" + t),
    fields=st.lists(st.tuples(field_names(REQUEST_FRAMING), field_values), max_size=5),
    body=st.none() | st.binary(max_size=100),
)
def test_a_request_head_reads_in_h11_as_built(
    method: str, target: str, fields: list[tuple[str, str]], body: bytes | None
) -> None:
    fixed = fixed_fields([("Host", "hs.example.org:8448"), *fields])
    head = request_head(method, target, fixed, body, b"application/json")
    request, received = h11_request(head + (body or b""))
    assert (request.method, request.target) == (method.encode(), target.encode())
    expected = [(b"host", b"hs.example.org:8448"),
                *((name.lower().encode(), value.encode()) for name, value in fields)]
    if body is not None:
        expected += [(b"content-type", b"application/json"),
                     (b"content-length", str(len(body)).encode())]
    assert list(request.headers) == expected
    assert received == (body or b"")


_LINE_BREAKERS = st.sampled_from(["\r", "\n", " ", "\x00", "\t", "\x7f", "\x0b", "é"])
_any_text = st.text(st.one_of(st.characters(max_codepoint=0x17F), _LINE_BREAKERS), max_size=20)


@settings(max_examples=300, deadline=None)
@given(target=st.builds(lambda start, rest: start + rest, st.sampled_from(["", "/", "a"]),
                        _any_text))
def test_a_target_is_sent_as_it_is_or_refused(target: str) -> None:
    unsafe = (not target.startswith("/") or not target.isascii()
              or re.search(r"[\x00-\x20\x7f]", target) is not None)
    try:
        head = request_head("GET", target, fixed_fields([("Host", "h")]), None, b"")
    except ValueError:
        assert unsafe, f"refused a good target: {target!r}"
        return
    assert not unsafe, f"sent a target that breaks the request line: {target!r}"
    request, _ = h11_request(head)
    assert request.target == target.encode()
    assert list(request.headers) == [(b"host", b"h")]  # nothing injected


@settings(max_examples=300, deadline=None)
@given(name=st.one_of(field_names(REQUEST_FRAMING), _any_text), value=_any_text)
def test_a_field_is_sent_as_it_is_or_refused(name: str, value: str) -> None:
    bad_name = re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name) is None
    bad_value = (re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value) is not None
                 or any(ord(c) > 0xFF for c in value))
    try:
        fixed = fixed_fields([("Host", "h"), (name, value)])
    except ValueError:
        assert bad_name or bad_value, f"refused a good field: {name!r}: {value!r}"
        return
    assert not (bad_name or bad_value), f"sent a field that breaks the head: {name!r}: {value!r}"
    if name.lower() in REQUEST_FRAMING:
        return
    request, _ = h11_request(request_head("GET", "/", fixed, None, b""))
    assert list(request.headers) == [
        (b"host", b"h"), (name.lower().encode(), value.strip(" \t").encode("latin-1"))]


@pytest.mark.parametrize("target", [
    "/a b", "/a\r\nX-Injected: 1", "/a\nb", "/a\rb", "/a\x00", "/a\tb", "/a\x7f", "a", "",
    "http://evil.example/", "*", "/é",
])
def test_a_target_that_would_break_the_request_line_is_a_value_error(target: str) -> None:
    with pytest.raises(ValueError):
        request_head("GET", target, b"", None, b"")


@pytest.mark.parametrize("field", [
    ("X-A", "a\r\nX-Injected: 1"), ("X-A", "a\nb"), ("X-A", "a\rb"), ("X-A", "a\x00b"),
    ("X A", "b"), ("X:A", "b"), ("", "b"), ("X-A\r\nX-B", "b"),
])
def test_a_field_that_would_break_the_head_is_a_value_error(field: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="not a header field"):
        fixed_fields([field])
    with pytest.raises(ValueError, match="not a header field"):
        LeanClient("http://127.0.0.1:1", dict([field]))


# -- 5. through the client ------------------------------------------------------------------------


class ScriptedServer:
    """Reads each request with h11 and answers it with the next of `answers`, sent as they are
    in one write. The connection stays open whatever the answer said (so a client that wrongly
    reused it would be seen here), unless the request's index is in `close_after`; for an index
    in `hang_up` it closes without answering. After answering the request of an index in
    `unasked`, it waits for that event and then writes its bytes, which nobody asked for."""

    def __init__(self, answers: list[bytes], close_after: frozenset[int] = frozenset(),
                 hang_up: frozenset[int] = frozenset(),
                 unasked: dict[int, tuple[trio.Event, bytes]] | None = None) -> None:
        self.answers = answers
        self.close_after = close_after
        self.hang_up = hang_up
        self.unasked = unasked or {}
        self.unasked_sent = trio.Event()
        self.connections = 0  # accepted
        self.requests: list[tuple[int, str, str]] = []  # (connection, method, target)
        self.arrived = trio.Event()  # set by the next request read, then replaced by a new one

    async def handle(self, stream: trio.SocketStream) -> None:
        connection = self.connections
        self.connections += 1
        buffered = b""
        try:
            while True:
                conn = h11.Connection(h11.SERVER)
                if buffered:  # (b"" would tell h11 the peer closed)
                    conn.receive_data(buffered)
                request = None
                while not isinstance(event := conn.next_event(), h11.EndOfMessage):
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                assert request is not None
                buffered = bytes(conn.trailing_data[0])
                index = len(self.requests)
                self.requests.append((connection, request.method.decode(),
                                      request.target.decode()))
                self.arrived.set()
                self.arrived = trio.Event()
                if index in self.hang_up:
                    return
                await stream.send_all(self.answers[min(index, len(self.answers) - 1)])
                if index in self.close_after:
                    return
                if index in self.unasked:
                    go, data = self.unasked[index]
                    await go.wait()
                    await stream.send_all(data)
                    self.unasked_sent.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"


def answer(body: bytes, *fields: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body) + b"".join(
        field + b"\r\n" for field in fields) + b"\r\n" + body)


async def start(nursery: trio.Nursery, server: ScriptedServer) -> str:
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def test_a_chunked_body_reaches_the_caller_whole(nursery: trio.Nursery) -> None:
    body = b'{"big":"' + b"y" * 150_000 + b'"}'  # more than one read of the client's
    chunked = b"".join(b"%x;n=1\r\n%s\r\n" % (len(body[i:i + 40_000]), body[i:i + 40_000])
                       for i in range(0, len(body), 40_000))
    server = ScriptedServer([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             + chunked + b"0\r\nX-T: 1\r\n\r\n", OK])
    url = await start(nursery, server)
    async with LeanClient(url, {}) as client:
        with trio.fail_after(10):
            got = await client.request("GET", "/big")
            assert (got.status, got.body) == (200, body)
            assert (await client.request("GET", "/next")).body == b'{"ok":true}'
    assert server.connections == 1  # a chunked answer leaves the connection usable


@pytest.mark.parametrize("garbage, close", [
    (b"garbage\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nX A: b\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", False),
    (b"\x00\x01 not http at all", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ntruncated", True),
])
async def test_a_garbage_answer_fails_and_the_next_request_goes_on_a_fresh_connection(
    nursery: trio.Nursery, garbage: bytes, close: bool
) -> None:
    server = ScriptedServer([garbage, OK], close_after=frozenset({0} if close else ()))
    url = await start(nursery, server)
    async with LeanClient(url, {}) as client:
        with trio.fail_after(10):
            with pytest.raises(ConnectionFailed, match="spoke bad HTTP"):
                await client.request("PUT", "/first", b"{}")
            got = await client.request("PUT", "/second", b"{}")
    assert (got.status, got.body) == (200, b'{"ok":true}')
    assert server.connections == 2
    assert [target for _, _, target in server.requests] == ["/first", "/second"]


@pytest.mark.parametrize("close, connections", [(True, 3), (False, 1)])
async def test_connection_close_gets_a_new_connection_and_keep_alive_reuses_one(
    nursery: trio.Nursery, close: bool, connections: int
) -> None:
    fields = [b"Connection: close"] if close else []
    server = ScriptedServer([answer(b'{"n":1}', *fields)])  # and the server never closes
    url = await start(nursery, server)
    async with LeanClient(url, {}) as client:
        with trio.fail_after(10):
            for i in range(3):
                got = await client.request("PUT", f"/send/{i}", b"{}")
                assert (got.status, got.body) == (200, b'{"n":1}')
    assert server.connections == connections
    assert [target for _, _, target in server.requests] == ["/send/0", "/send/1", "/send/2"]


async def test_a_server_that_answers_twice_does_not_get_its_connection_reused(
    nursery: trio.Nursery,
) -> None:
    server = ScriptedServer([answer(b"first") + answer(b"extra"), answer(b"second")])
    url = await start(nursery, server)
    async with LeanClient(url, {}) as client:
        with trio.fail_after(10):
            assert (await client.request("GET", "/1")).body == b"first"
            assert (await client.request("GET", "/2")).body == b"second"  # never "extra"
    assert server.connections == 2


async def test_head_does_not_wait_for_a_body_and_keeps_the_connection(
    nursery: trio.Nursery,
) -> None:
    server = ScriptedServer([b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nRetry-After: 3\r\n\r\n",
                             OK])
    url = await start(nursery, server)
    async with LeanClient(url, {}) as client:
        with trio.fail_after(10):
            got = await client.request("HEAD", "/media")
            assert (got.status, got.body, got.retry_after) == (200, b"", "3")
            assert (await client.request("GET", "/next")).body == b'{"ok":true}'
    assert server.connections == 1
    assert [m for _, m, _ in server.requests] == ["HEAD", "GET"]


async def test_interim_answers_and_a_body_framed_by_the_close_reach_the_caller(
    nursery: trio.Nursery,
) -> None:
    server = ScriptedServer(
        [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
         b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\r\n{\"errcode\":1}", OK],
        close_after=frozenset({0}))
    url = await start(nursery, server)
    async with LeanClient(url, {}) as client:
        with trio.fail_after(10):
            got = await client.request("PUT", "/x", b"{}")
            assert (got.status, got.reason, got.body) == (404, "Not Found", b'{"errcode":1}')
            assert (await client.request("PUT", "/y", b"{}")).status == 200
    assert server.connections == 2


async def test_a_bad_target_is_refused_before_anything_is_sent(nursery: trio.Nursery) -> None:
    server = ScriptedServer([OK])
    url = await start(nursery, server)
    async with LeanClient(url, {}) as client:
        with pytest.raises(ValueError, match="not a request target"):
            await client.request("PUT", "/send/x HTTP/1.1\r\nX-Injected: 1\r\n\r\nPUT /y", b"{}")
        with trio.fail_after(10):
            assert (await client.request("GET", "/ok")).status == 200
    assert [target for _, _, target in server.requests] == ["/ok"]


async def test_an_answer_sent_unasked_to_an_idle_connection_is_not_taken_for_the_next(
    nursery: trio.Nursery,
) -> None:
    got_first = trio.Event()
    server = ScriptedServer([answer(b"first"), answer(b"second")],
                            unasked={0: (got_first, answer(b"late"))})
    url = await start(nursery, server)
    async with LeanClient(url, {}) as client:
        with trio.fail_after(10):
            assert (await client.request("GET", "/1")).body == b"first"
            got_first.set()  # only now does the server write its late answer
            await server.unasked_sent.wait()
            # And until it has reached the client's end of the kept-alive connection (on loopback
            # it has, almost always, once the server's write returned).
            [idle] = client._idle
            assert isinstance(idle, RawStream)
            await trio.lowlevel.wait_readable(idle.sock)
            assert (await client.request("GET", "/2")).body == b"second"  # never "late"
    assert server.connections == 2
    assert server.requests == [(0, "GET", "/1"), (1, "GET", "/2")]


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_a_request_lost_on_a_kept_alive_connection_is_sent_again_only_if_idempotent(
    nursery: trio.Nursery, method: str
) -> None:
    # The server reads the second request, then closes without answering: it may have been
    # carried out. A PUT may go again on a fresh connection; a POST must not.
    server = ScriptedServer([OK], hang_up=frozenset({1}))
    url = await start(nursery, server)
    async with LeanClient(url, {}) as client:
        with trio.fail_after(10):
            assert (await client.request(method, "/first", b"{}")).status == 200
            if method == "POST":
                with pytest.raises(ConnectionFailed, match="closed the connection"):
                    await client.request(method, "/lost", b"{}")
                sent = [(0, "/first"), (0, "/lost")]  # once: not repeated
            else:
                got = await client.request(method, "/lost", b"{}")
                assert (got.status, got.body) == (200, b'{"ok":true}')
                sent = [(0, "/first"), (0, "/lost"), (1, "/lost")]
    assert [(c, t) for c, _, t in server.requests] == sent
    assert {m for _, m, _ in server.requests} == {method}


async def test_a_caller_cancelled_before_the_request_sends_nothing(nursery: trio.Nursery) -> None:
    server = ScriptedServer([OK])
    url = await start(nursery, server)
    async with LeanClient(url, {}) as client:
        with trio.fail_after(10):
            assert (await client.request("PUT", "/first", b"{}")).status == 200
            arrived = server.arrived  # set once the server reads one more request
            with trio.CancelScope() as scope:
                scope.cancel()
                await client.request("PUT", "/cancelled", b"{}")
            assert scope.cancelled_caught
            # Nothing may reach the server: wait a bounded time for a request that must not come.
            with trio.move_on_after(0.5) as quiet:
                await arrived.wait()
            assert quiet.cancelled_caught, f"the server got {server.requests[-1]}"
            # The kept-alive connection is still there for the next request, which comes alone.
            assert (await client.request("PUT", "/next", b"{}")).status == 200
    assert server.requests == [(0, "PUT", "/first"), (0, "PUT", "/next")]
