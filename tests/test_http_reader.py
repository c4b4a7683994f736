"""The server's HTTP/1.1 on the wire (bridge/http/reader.py): requests written by h11 read as h11
reads them, in any split and pipelined; keep-alive; what the strict reader refuses, and that h11
refuses it too unless we mean to be stricter; leading empty lines; Expect: 100-continue; `began`;
and the answers (response_bytes, CONTINUE) as h11 reads them back. All pure: no sockets."""

from __future__ import annotations

import string
from dataclasses import dataclass
from http import HTTPStatus

import h11
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bridge.http.reader import CONTINUE, BadRequest, Head, RequestReader, response_bytes

from .http_strategies import TOKEN, VISIBLE, field_names, field_values

# Fields the generated requests set themselves, or that change how h11 frames or reads them.
FRAMING = {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade", "te"}
MAX_HEAD = 65_536
MAX_BODY = 1_000_000


# A few names drawn often, so that repeated fields (joined by ", ") come up.
request_fields = st.lists(st.tuples(st.one_of(field_names(FRAMING),
                                              st.sampled_from(["X-Dup", "x-dup", "Accept"])),
                                    field_values), max_size=6)
methods = st.one_of(st.sampled_from(["GET", "PUT", "POST", "HEAD", "DELETE"]),
                    st.text(TOKEN, min_size=1, max_size=10).filter(lambda m: m != "CONNECT"))
targets = st.text(VISIBLE, max_size=30).map(lambda t: "/" + t)
hosts = st.text(string.ascii_letters + string.digits + ".-:[]", max_size=24)
chunk_extensions = st.sampled_from([b"", b"", b";a", b";name=value", b';q="a;b c"', b";x=1;y"])


# -- what each side makes of some bytes -----------------------------------------------------------


@dataclass
class Read:
    """One request as read, in terms both readers can be held to."""

    method: str
    target: str
    headers: dict[str, str]  # lower-case names; a repeated field's values joined by ", "
    body: bytes
    keep_alive: bool
    leftover: bytes  # what follows the request


def drain(reader: RequestReader) -> list[tuple[Head, bytes]]:
    """Every request that is whole in the reader, in order, as the server takes them."""
    out = []
    while (head := reader.head()) is not None and (body := reader.body()) is not None:
        out.append((head, body))
    return out


def our_read(wire: bytes, *, max_head: int = MAX_HEAD, max_body: int = MAX_BODY,
             ) -> Read | int | None:
    """What the reader makes of `wire` fed in one piece: its first request, the status of the
    BadRequest it raises, or None while it waits for more."""
    reader = RequestReader(max_head, max_body)
    reader.feed(wire)
    try:
        head = reader.head()
        body = None if head is None else reader.body()
    except BadRequest as exc:
        return exc.status
    if head is None or body is None:
        return None
    return Read(head.method, head.target, head.headers, body, head.keep_alive,
                bytes(reader.buffer))


def h11_read(wire: bytes, *, max_incomplete_event_size: int = 16 * 1024) -> Read | int | None:
    """The oracle: what h11, as a server, makes of `wire`: its first request, the status it
    suggests for refusing it, or None while it waits for more."""
    server = h11.Connection(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
    server.receive_data(wire)
    request, body = None, b""
    try:
        while not isinstance(event := server.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.Request):
                request = event
            else:
                assert isinstance(event, h11.Data), event
                body += event.data
    except h11.RemoteProtocolError as exc:
        return exc.error_status_hint
    assert request is not None
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.headers:
        name, value = raw_name.decode("ascii"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Read(request.method.decode("ascii"), request.target.decode("ascii"), headers, body,
                server.their_state is h11.DONE, bytes(server.trailing_data[0]))


def refused(data: bytes, *, max_head: int = MAX_HEAD, max_body: int = MAX_BODY) -> int:
    """The status of the BadRequest that `data` earns, fed whole; fed a byte at a time, as the
    server reads it (head() and body() after every byte), it earns the same one."""
    whole = RequestReader(max_head, max_body)
    whole.feed(data)
    with pytest.raises(BadRequest) as at_once:
        drain(whole)
        pytest.fail(f"not refused: {data[:80]!r}")
    bytewise = RequestReader(max_head, max_body)
    with pytest.raises(BadRequest) as byte_by_byte:
        for i in range(len(data)):
            bytewise.feed(data[i:i + 1])
            drain(bytewise)
        pytest.fail(f"not refused fed a byte at a time: {data[:80]!r}")
    assert byte_by_byte.value.status == at_once.value.status
    return at_once.value.status


def split(wire: bytes, cuts: list[int]) -> list[bytes]:
    return [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]


# -- 1. requests as h11 writes them, in random pieces and pipelined -------------------------------


@dataclass
class Written:
    wire: bytes
    method: str
    target: str
    body: bytes


def _sent(client: h11.Connection, event: h11.Event) -> bytes:
    data = client.send(event)
    assert data is not None
    return data


def _dressed(chunk: bytes, extension: bytes, upper: bool) -> bytes:
    """A chunk as h11 wrote it ("5\\r\\nhello\\r\\n"), its size in upper-case hex if `upper`,
    with a chunk extension (h11 writes none)."""
    size, rest = chunk.split(b"\r\n", 1)
    return (size.upper() if upper else size) + extension + b"\r\n" + rest


ANY_BYTES = st.binary(max_size=300)


@st.composite
def h11_requests(draw: st.DrawFn, bodies: st.SearchStrategy[bytes] = ANY_BYTES) -> Written:
    method, target, host = draw(methods), draw(targets), draw(hosts)
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    pieces = [] if framing == "none" else draw(st.lists(bodies, max_size=4))
    body = b"".join(pieces)
    headers = [("Host", host), *draw(request_fields)]
    connection = draw(st.sampled_from([None, "close", "keep-alive", "keep-alive, Close"]))
    if connection is not None:
        headers.append(("Connection", connection))
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
    headers = draw(st.permutations(headers))

    client = h11.Connection(h11.CLIENT)
    wire = _sent(client, h11.Request(method=method, target=target, headers=headers))
    for piece in pieces:
        chunk = _sent(client, h11.Data(data=piece))
        if framing == "chunked" and chunk:  # (h11 writes nothing for an empty piece)
            chunk = _dressed(chunk, draw(chunk_extensions), draw(st.booleans()))
        wire += chunk
    if framing == "chunked":
        trailers = draw(st.lists(st.tuples(field_names(FRAMING), field_values), max_size=3))
        wire += _dressed(_sent(client, h11.EndOfMessage(headers=trailers)),
                         draw(chunk_extensions), False)
    else:
        wire += _sent(client, h11.EndOfMessage())
    return Written(wire, method, target, body)


@settings(max_examples=200, deadline=None)
@given(written=st.lists(h11_requests(), min_size=1, max_size=3), data=st.data())
def test_requests_written_by_h11_read_as_h11_reads_them_in_any_split_and_pipelined(
    written: list[Written], data: st.DataObject
) -> None:
    wire = b"".join(w.wire for w in written)
    ends = [sum(len(w.wire) for w in written[:i + 1]) for i in range(len(written))]
    cuts = data.draw(st.one_of(
        st.just(list(range(1, len(wire)))),  # a byte at a time
        st.lists(st.integers(1, len(wire) - 1), unique=True, max_size=12).map(sorted),
    ), label="cuts")
    # The bound is inclusive: a body of exactly max_body bytes is taken.
    max_body = (max(len(w.body) for w in written)
                + data.draw(st.sampled_from([0, 1, 100_000]), label="slack"))
    reader = RequestReader(MAX_HEAD, max_body)
    assert not reader.began
    got: list[tuple[Head, bytes, int]] = []
    fed = 0
    for piece in split(wire, cuts):
        reader.feed(piece)
        fed += len(piece)
        got += [(head, body, fed) for head, body in drain(reader)]
        # Begun exactly while bytes of a request that is not out yet are in.
        assert reader.began is (fed > max([0, *(end for end in ends if end <= fed)])), fed

    # In order, each as soon as the piece with its last byte is in (not a piece early), and
    # nothing left.
    piece_ends = [*cuts, len(wire)]
    assert [fed for _, _, fed in got] == [min(e for e in piece_ends if e >= end) for end in ends]
    assert reader.buffer == b""
    for w, (head, body, _) in zip(written, got, strict=True):
        assert (head.method, head.target, body) == (w.method, w.target, w.body)
        oracle = h11_read(w.wire)
        assert isinstance(oracle, Read)
        assert oracle.leftover == b""
        assert Read(head.method, head.target, head.headers, body, head.keep_alive, b"") == oracle


_MUTATIONS = [b"\r", b"\r\n", b" ", b"\t", b":", b";", b"\x00", b"\x01", b"\x0b", b"\x7f",
              b"\xff", b"0", b"a", b"Z", b"-"]


@settings(max_examples=300, deadline=None)
@given(written=h11_requests(bodies=st.text(string.ascii_letters, max_size=40).map(str.encode)),
       data=st.data())
def test_a_mangled_request_is_refused_if_h11_refuses_it_and_else_read_as_h11_reads_it(
    written: Written, data: st.DataObject
) -> None:
    """One byte of a valid request replaced, deleted, or a byte or CRLF put in. Whatever h11
    refuses, the reader refuses (or still waits for); whatever h11 reads, the reader reads the
    same or refuses. Left out, where the reader is looser on purpose: empty lines before the
    request line (RFC 9112 2.2), and BWS before a chunk extension's ';' (RFC 9112 7.1.1 allows
    it, h11 does not)."""
    wire = written.wire
    at = data.draw(st.integers(0, len(wire) - 1), label="at")
    what = data.draw(st.sampled_from(["replace", "insert", "delete"]), label="what")
    new = b"" if what == "delete" else data.draw(st.sampled_from(_MUTATIONS), label="byte")
    mangled = wire[:at] + new + wire[at + (0 if what == "insert" else 1):]
    near = mangled[max(0, at - 3):at + len(new) + 3]
    assume(not mangled.startswith((b"\r\n", b"\n")))
    assume(all(p not in near for p in (b" ;", b"\t;")))

    ours, oracle = our_read(mangled), h11_read(mangled)
    if isinstance(oracle, Read):
        assert ours == oracle or isinstance(ours, int), mangled
    else:
        assert not isinstance(ours, Read), f"h11 refuses ({oracle}) what we read: {mangled!r}"


# -- 2. keep-alive --------------------------------------------------------------------------------


@pytest.mark.parametrize("head, keep_alive", [
    (b"GET / HTTP/1.0\r\n", False),
    (b"GET / HTTP/1.0\r\nHost: x\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: x\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: CLOSE\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n", False),
    (b"GET / HTTP/1.1\r\nConnection: x\r\nHost: x\r\nconnection: close\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: closed, upgrade\r\n", True),
])
def test_keep_alive(head: bytes, keep_alive: bool) -> None:
    got = our_read(head + b"\r\n")
    assert isinstance(got, Read)
    assert got.keep_alive is keep_alive
    oracle = h11_read(head + b"\r\n")
    assert isinstance(oracle, Read)
    assert oracle.keep_alive is keep_alive


# -- 3. refusals ----------------------------------------------------------------------------------

GET = b"GET / HTTP/1.1\r\nHost: x\r\n"
PUT = b"PUT / HTTP/1.1\r\nHost: x\r\n"
CHUNKED = PUT + b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("data, status", [
    pytest.param(b"garbage\r\n\r\n", 400, id="garbage"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, id="tls"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="no-host"),
    pytest.param(GET + b"Host: y\r\n\r\n", 400, id="two-hosts"),
    pytest.param(GET + b"host: x\r\n\r\n", 400, id="two-equal-hosts"),
    pytest.param(GET + b"Bad Header: 1\r\n\r\n", 400, id="space-in-name"),
    pytest.param(GET + b"Name : v\r\n\r\n", 400, id="space-before-colon"),
    pytest.param(GET + b"No-Colon\r\n\r\n", 400, id="no-colon"),
    pytest.param(GET + b"X-A: a\x00b\r\n\r\n", 400, id="nul-in-value"),
    pytest.param(GET + b"X-A: a\x0bb\r\n\r\n", 400, id="vt-in-value"),
    pytest.param(GET + b"X-A: a\rb\r\n\r\n", 400, id="bare-cr-in-value"),
    pytest.param(PUT + b"Content-Length: x\r\n\r\n", 400, id="content-length-x"),
    pytest.param(PUT + b"Content-Length: -1\r\n\r\n", 400, id="content-length-negative"),
    pytest.param(PUT + b"Content-Length: 5, 6\r\n\r\nhello!", 400, id="content-length-5-6"),
    pytest.param(PUT + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400,
                 id="content-lengths-5-6"),
    pytest.param(PUT + b"Transfer-Encoding: gzip\r\n\r\n", 501, id="gzip"),
    pytest.param(PUT + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501, id="gzip-chunked"),
    # An empty Transfer-Encoding is still a second framing beside a length (a proxy may let it
    # take over), and alone it names no coding this server reads.
    pytest.param(PUT + b"Transfer-Encoding: \r\nContent-Length: 1\r\n\r\nX", 400,
                 id="empty-te-and-length"),
    pytest.param(PUT + b"Transfer-Encoding: ,\r\n\r\n", 501, id="empty-te"),
    pytest.param(CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n", 400, id="chunk-size-zz"),
    pytest.param(CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n", 400, id="chunk-size-negative"),
    pytest.param(CHUNKED + b"5\r\nhelloXY0\r\n\r\n", 400, id="chunk-without-crlf"),
    pytest.param(CHUNKED + b"5\r\nhello\rX0\r\n\r\n", 400, id="chunk-without-lf"),
    pytest.param(CHUNKED + b"0\r\nnot a field\r\n\r\n", 400, id="bad-trailer"),
    # Only CRLF ends a chunk's size line or data: a bare LF is how requests are smuggled.
    pytest.param(CHUNKED + b"5;e=1\nhello\r\n0\r\n\r\n", 400, id="chunk-size-bare-lf"),
    pytest.param(CHUNKED + b"5\r\nhello\n0\r\n\r\n", 400, id="chunk-data-bare-lf"),
    pytest.param(CHUNKED + b"1\r\n\r\n0\r\n\r\n", 400, id="chunk-cr-as-data"),
])
def test_what_h11_refuses_is_refused(data: bytes, status: int) -> None:
    assert refused(data) == status
    assert isinstance(h11_read(data), int), "h11 reads it: the case tests nothing"


# Where h11 reads what we refuse, on purpose.
@pytest.mark.parametrize("data, status", [
    # h11 reads any HTTP/x.y; anything but HTTP/1.x is 505 (RFC 9110 15.6.6).
    pytest.param(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, id="http-2.0"),
    pytest.param(b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", 505, id="http-0.9"),
    # Obsolete line folding: h11 unfolds it, we refuse it (RFC 9112 5.2 lets a server do that).
    pytest.param(GET + b"X-A: a\r\n  b\r\n\r\n", 400, id="obs-fold"),
    pytest.param(GET + b"X-A: a\r\n\tb\r\n\r\n", 400, id="obs-fold-tab"),
    # h11 lets control characters but NUL and whitespace through; the grammar does not.
    pytest.param(GET + b"X-A: a\x01b\r\n\r\n", 400, id="ctl-in-value"),
    pytest.param(GET + b"X-A: a\x1bb\r\n\r\n", 400, id="esc-in-value"),
    pytest.param(GET + b"X-A: a\x7fb\r\n\r\n", 400, id="del-in-value"),
    # Both framings at once: h11 takes the chunks; we refuse (RFC 9112 6.3: smuggling).
    pytest.param(PUT + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n0\r\n\r\n", 400, id="content-length-and-chunked"),
    pytest.param(PUT + b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"
                 b"0\r\n\r\n", 400, id="chunked-and-content-length"),
])
def test_what_we_refuse_on_purpose_though_h11_reads_it(data: bytes, status: int) -> None:
    assert refused(data) == status


@pytest.mark.parametrize("length", [b"9" * 4301, b"1" + b"0" * 30, b"0" * 50 + b"1000001"])
def test_a_content_length_of_many_digits_is_413_not_a_crash(length: bytes) -> None:
    # int() refuses over 4,300 digits; a length longer than max_body's digits is over it anyway.
    assert refused(PUT + b"Content-Length: " + length + b"\r\n\r\n") == 413


def test_leading_zeros_do_not_hide_a_small_content_length() -> None:
    got = our_read(PUT + b"Content-Length: " + b"0" * 40 + b"5\r\n\r\nhello")
    assert isinstance(got, Read) and got.body == b"hello"


@pytest.mark.parametrize("data", [CHUNKED + b"0\r\n\n", CHUNKED + b"0\r\nX-T: 1\n\r\n"])
def test_a_bare_lf_ends_a_trailer_field_as_it_ends_a_field_in_the_head(data: bytes) -> None:
    ours = our_read(data)
    assert isinstance(ours, Read) and ours.body == b""
    assert ours == h11_read(data)
    assert isinstance(h11_read(data), Read)


def test_agreeing_content_lengths_are_taken() -> None:
    for head in (b"Content-Length: 5, 5\r\n", b"Content-Length: 5\r\ncontent-length: 5\r\n"):
        got = our_read(PUT + head + b"\r\nhello")
        assert isinstance(got, Read)
        assert (got.body, got.leftover) == (b"hello", b"")
        oracle = h11_read(PUT + head + b"\r\nhello")
        assert isinstance(oracle, Read)
        assert oracle.body == b"hello"


def test_a_head_over_max_head_is_refused_whether_or_not_its_end_is_in() -> None:
    start = GET + b"X-Big: "
    # Its end not in yet: refused as soon as there is more than max_head of it.
    reader = RequestReader(100, MAX_BODY)
    reader.feed(start + b"a" * (100 - len(start)))
    assert reader.head() is None
    reader.feed(b"a")
    with pytest.raises(BadRequest) as caught:
        reader.head()
    assert caught.value.status == 431
    assert h11_read(start + b"a" * 200, max_incomplete_event_size=100) == 431
    # Its end in, all in one piece. (h11 reads a head of any size that comes in one piece: we
    # are stricter on purpose.)
    assert refused(start + b"a" * 200 + b"\r\n\r\n", max_head=100) == 431
    assert isinstance(h11_read(start + b"a" * 200 + b"\r\n\r\n",
                               max_incomplete_event_size=100), Read)


def test_a_head_near_max_head_reads_the_same_in_any_split() -> None:
    """A head of exactly max_head bytes (its last CRLF and the empty line not counted) is taken
    when it comes in one piece, so it must be taken however TCP split it."""
    wire = GET + b"X-Pad: abc\r\n\r\n"
    max_head = len(wire) - 4
    assert isinstance(our_read(wire, max_head=max_head), Read)
    for cut in range(1, len(wire)):
        reader = RequestReader(max_head, MAX_BODY)
        reader.feed(wire[:cut])
        try:
            reader.head()
        except BadRequest as exc:
            pytest.fail(f"refused ({exc.status}) after {cut} of {len(wire)} bytes, "
                        f"though taken in one piece with max_head={max_head}: {wire[:cut]!r}")
        reader.feed(wire[cut:])
        assert [head.headers for head, _ in drain(reader)] == [{"host": "x", "x-pad": "abc"}]


def test_a_content_length_over_max_body_is_refused_before_the_body_comes() -> None:
    # (h11 has no bound on a body.)
    for length in (b"11", b"99999999999999999999"):
        reader = RequestReader(MAX_HEAD, 10)
        reader.feed(PUT + b"Content-Length: " + length + b"\r\n\r\n")
        with pytest.raises(BadRequest) as caught:
            reader.head()
        assert caught.value.status == 413
    # Exactly max_body is taken.
    got = our_read(PUT + b"Content-Length: 10\r\n\r\n0123456789", max_body=10)
    assert isinstance(got, Read)
    assert got.body == b"0123456789"


@pytest.mark.parametrize("chunks", [
    b"6\r\n012345\r\n5\r\n",  # the second chunk's size takes it over
    b"B\r\n",
    b"ffffffffffffffff\r\n",
])
def test_a_chunked_body_growing_past_max_body_is_refused(chunks: bytes) -> None:
    assert refused(CHUNKED + chunks, max_body=10) == 413
    got = our_read(CHUNKED + b"4\r\n0123\r\n6\r\n456789\r\n0\r\n\r\n", max_body=10)
    assert isinstance(got, Read)
    assert got.body == b"0123456789"


def test_two_host_fields_are_refused_in_http_1_0_too() -> None:
    """RFC 9112 3.2: a server MUST answer 400 to any request message with more than one Host
    field line, not only to an HTTP/1.1 one; h11 refuses it."""
    wire = b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"
    assert h11_read(wire) == 400
    assert our_read(wire) == 400


@pytest.mark.parametrize("wire", [
    pytest.param(b"GET / HTTP/1.1\r\nX-A: a\r\r\nHost: x\r\n\r\n", id="inner-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\r\n\r\n", id="last-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\r\n\n", id="last-line-lf"),
    pytest.param(b"GET / HTTP/1.0\r\r\n\r\n", id="request-line"),
])
def test_a_bare_cr_ending_the_last_head_line_is_refused(wire: bytes) -> None:
    """A bare CR before a line's CRLF (RFC 9112 2.2: invalid, or read as a space) is refused
    on any line of the head, the last one too, as h11 refuses it."""
    assert h11_read(wire) == 400
    assert our_read(wire) == 400


# -- 4. leading empty lines -----------------------------------------------------------------------


@pytest.mark.parametrize("empty", [b"\r\n", b"\n", b"\r\n\r\n", b"\n\r\n\n"])
def test_empty_lines_before_a_request_line_are_skipped(empty: bytes) -> None:
    """RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request line (a
    client's stray CRLF after a body). h11 refuses them: here we are the looser one."""
    first = PUT + b"Content-Length: 5\r\n\r\nhello"
    second = GET + b"X-N: 2\r\n\r\n"
    wire = empty + first + empty + second
    for step in (len(wire), 1):  # in one piece, and a byte at a time
        reader = RequestReader(MAX_HEAD, MAX_BODY)
        got = []
        for i in range(0, len(wire), step):
            reader.feed(wire[i:i + step])
            got += drain(reader)
        assert [(h.method, h.headers.get("x-n"), body) for h, body in got] == [
            ("PUT", None, b"hello"), ("GET", "2", b"")]
        assert reader.buffer == b""
    assert h11_read(empty + first) == 400


# -- 5. Expect: 100-continue ----------------------------------------------------------------------

EXPECT = PUT + b"Expect: 100-continue\r\n"


def _reader_at_body(head: bytes) -> RequestReader:
    """A reader that has read `head` and waits for its body."""
    reader = RequestReader(MAX_HEAD, MAX_BODY)
    reader.feed(head)
    assert reader.head() is not None
    assert reader.body() is None
    return reader


@pytest.mark.parametrize("head", [
    EXPECT + b"Content-Length: 5\r\n\r\n",
    PUT + b"expect: 100-Continue\r\nContent-Length: 5\r\n\r\n",
    EXPECT + b"Transfer-Encoding: chunked\r\n\r\n",
])
def test_a_body_is_waiting_for_100_continue_until_a_byte_of_it_comes(head: bytes) -> None:
    reader = _reader_at_body(head)
    assert reader.body_waiting()
    reader.feed(b"h" if b"Content-Length" in head else b"5")
    assert not reader.body_waiting()
    assert reader.body() is None
    assert not reader.body_waiting()


@pytest.mark.parametrize("head", [
    PUT + b"Content-Length: 5\r\n\r\n",  # no Expect
    PUT + b"Transfer-Encoding: chunked\r\n\r\n",
    EXPECT + b"Content-Length: 0\r\n\r\n",  # no body to wait for
    EXPECT + b"\r\n",
])
def test_no_body_is_waiting_for_100_continue(head: bytes) -> None:
    reader = RequestReader(MAX_HEAD, MAX_BODY)
    reader.feed(head)
    assert reader.head() is not None
    assert not reader.body_waiting()


def test_the_body_waiting_goes_with_the_request() -> None:
    reader = _reader_at_body(EXPECT + b"Content-Length: 5\r\n\r\n")
    reader.feed(b"hello" + GET + b"\r\n")
    assert reader.body() == b"hello"
    assert not reader.body_waiting()  # between requests
    assert reader.head() is not None
    assert not reader.body_waiting()  # the next request asked for nothing


def test_no_100_continue_is_owed_once_the_chunked_body_has_begun() -> None:
    """The client has begun its body with a chunk size line: it sends without waiting, and a
    100 (Continue) would come late."""
    reader = _reader_at_body(EXPECT + b"Transfer-Encoding: chunked\r\n\r\n")
    reader.feed(b"5\r\n")
    assert reader.body() is None
    assert not reader.body_waiting()


def test_no_100_continue_is_owed_to_http_1_0() -> None:
    """RFC 9110 10.1.1: a server that receives a 100-continue expectation in an HTTP/1.0
    request MUST ignore it."""
    reader = _reader_at_body(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\n"
                             b"Content-Length: 5\r\n\r\n")
    assert not reader.body_waiting()


# -- 6. answers -----------------------------------------------------------------------------------


def h11_reads_answer(wire: bytes, method: str = "GET") -> tuple[list[h11.Event], bytes, bool]:
    """What h11, as the client that sent `method`, reads from `wire`: the interim and final
    answers, the body, and whether the connection must close after it."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    answers: list[h11.Event] = []
    body = b""
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        assert event is not h11.NEED_DATA, "h11 waits for more"
        if isinstance(event, h11.Data):
            body += event.data
        else:
            answers.append(event)
    assert client.trailing_data == (b"", False)
    return answers, body, client.their_state is h11.MUST_CLOSE


@settings(max_examples=200, deadline=None)
@given(status=st.integers(200, 599).filter(lambda s: s not in (204, 304)),
       content_type=st.sampled_from(["application/json", "text/plain; charset=utf-8", "x/y"]),
       body=st.binary(max_size=200), close=st.booleans())
def test_an_answer_reads_in_h11(status: int, content_type: str, body: bytes, close: bool,
                                ) -> None:
    answers, received, must_close = h11_reads_answer(
        response_bytes(status, content_type, body, close=close))
    [response] = answers
    assert isinstance(response, h11.Response)
    assert response.status_code == status
    known = status in {s.value for s in HTTPStatus}
    assert response.reason == (HTTPStatus(status).phrase.encode() if known else b"")
    headers = dict(response.headers)
    assert headers[b"content-type"] == content_type.encode()
    assert headers[b"content-length"] == str(len(body)).encode()
    assert (headers.get(b"connection") == b"close") is close
    assert received == body
    assert must_close is close


def test_an_unknown_status_still_makes_a_valid_status_line() -> None:
    wire = response_bytes(299, "application/json", b"{}", close=False)
    assert wire.startswith(b"HTTP/1.1 299 \r\n")
    [response], received, _ = h11_reads_answer(wire)
    assert isinstance(response, h11.Response)
    assert (response.status_code, response.reason, received) == (299, b"", b"{}")


def test_the_answer_to_head_announces_the_body_and_leaves_it_out() -> None:
    wire = response_bytes(200, "application/json", b'{"ok":true}', close=False, head_only=True)
    assert wire.endswith(b"\r\n\r\n")
    [response], received, must_close = h11_reads_answer(wire, method="HEAD")
    assert isinstance(response, h11.Response)
    assert response.status_code == 200
    assert dict(response.headers)[b"content-length"] == b"11"
    assert (received, must_close) == (b"", False)


def test_100_continue_reads_in_h11_as_an_interim_answer() -> None:
    answers, received, _ = h11_reads_answer(
        CONTINUE + response_bytes(201, "application/json", b"{}", close=False))
    interim, final = answers
    assert isinstance(interim, h11.InformationalResponse)
    assert isinstance(final, h11.Response)
    assert (interim.status_code, final.status_code) == (100, 201)
    assert received == b"{}"


# -- 7. began --------------------------------------------------------------------------------------


def test_began_says_whether_a_byte_of_the_next_request_is_in() -> None:
    reader = RequestReader(MAX_HEAD, MAX_BODY)
    assert not reader.began
    reader.feed(b"")
    assert not reader.began
    reader.feed(b"G")
    assert reader.began
    reader.feed(GET[1:] + b"\r\n")
    assert reader.head() is not None
    assert reader.began  # its body (none) not read yet
    assert reader.body() == b""
    assert not reader.began
    # Pipelined: the next request's bytes are in.
    reader.feed(PUT + b"Content-Length: 2\r\n\r\nok" + GET)
    assert [body for _, body in drain(reader)] == [b"ok"]
    assert reader.began
    reader.feed(b"\r\n")
    assert [body for _, body in drain(reader)] == [b""]
    assert not reader.began


def test_began_holds_while_a_body_is_read() -> None:
    reader = _reader_at_body(PUT + b"Content-Length: 5\r\n\r\n")
    assert reader.began
    reader.feed(b"hel")
    assert reader.body() is None
    assert reader.began
    reader.feed(b"lo")
    assert reader.body() == b"hello"
    assert not reader.began
