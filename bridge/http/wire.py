"""HTTP/1.1 on the wire for the lean client: request heads as bytes, and a strict reader of
responses (RFC 9112). Pure: no sockets, no trio.

h11 did this job and cost ~100 µs of CPU per request on these machines, against ~5 µs for the
few checks a client of one known origin needs (docs/performance.md). The hot send path reads only
tiny JSON answers from its own homeserver, so this reader does only what such answers need, and
refuses rather than guesses at everything else:

- the status line and header fields are checked against the grammar; obsolete line folding, a
  field without a colon, a bad name, or a control character in a value is a BadResponse;
- the body is framed by Transfer-Encoding: chunked, by Content-Length (several values must agree),
  or by the connection's close; 1xx answers before the real one are skipped, and 204 and 304 have
  no body;
- the head and the body are bounded, so a broken or hostile peer cannot grow memory.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_HEAD = 65_536  # bytes of status line and fields
MAX_CHUNK_LINE = 1_024

TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9]{2})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
# Possessive (*+): no backtracking, so a long value with a bad byte at its end costs one pass,
# not one per leading space. The value keeps its trailing whitespace: see field_lines.
_FIELD = rb"(" + TOKEN + rb"):[ \t]*+([^\x00-\x08\x0a-\x1f\x7f]*+)"
FIELD = re.compile(_FIELD)
# A field section (the lines after the start line), each line a FIELD ending in LF or CRLF:
# checked whole in one pass, then read in another, instead of a match per line.
_FIELD_LINE = re.compile(_FIELD + rb"\r?\n")
_FIELD_SECTION = re.compile(rb"(?:" + _FIELD + rb"\r?\n)*+")
# From the newline ending the last field: a CR before it is that line's (a second one fails it).
HEAD_END = re.compile(rb"\n\r?\n")
CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
# What may not appear in a request target or a field value we send: it would end the line.
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def split_head(head: bytes) -> tuple[bytes, bytes]:
    """A head through the newline ending its last line: (start line without its CRLF or LF,
    the field section after it)."""
    first = head.index(b"\n")
    return head[:first].removesuffix(b"\r"), head[first + 1:]


def field_lines(section: bytes) -> list[tuple[bytes, bytes]] | None:
    """Each field of a field section (lines each ending in LF or CRLF) as (name, value, without
    the whitespace around it); None if a line is not a field."""
    if _FIELD_SECTION.fullmatch(section) is None:
        return None
    return [(name, value.rstrip(b" \t")) for name, value in _FIELD_LINE.findall(section)]


def content_length(value: str, limit: int) -> int | None:
    """A Content-Length of ASCII digits as a number, or None if it is not one; any length over
    `limit` comes back as limit + 1 (a length of thousands of digits is not worth int())."""
    if not (value.isdigit() and value.isascii()):
        return None
    digits = value.lstrip("0")
    if len(digits) > len(str(limit)):
        return limit + 1
    return min(int(digits or 0), limit + 1)


def head_size(buffer: bytearray, end: int) -> int:
    """The size of a head whose last line ends with the newline at buffer[end]: the start line
    and fields, without that last line's CRLF (or LF) and the empty line."""
    return end - 1 if end and buffer[end - 1] == 0x0D else end


def unfinished_head_size(buffer: bytearray) -> int:
    """The least size (as head_size counts) that a head still arriving in `buffer` will have:
    up to three CR and LF bytes last in may begin its end. So a verdict on the size does not
    depend on how the bytes were split."""
    trailing = 0
    while trailing < min(3, len(buffer)) and buffer[-1 - trailing] in b"\r\n":
        trailing += 1
    return len(buffer) - trailing


# Heads already read, by their bytes (status line and fields) and the reader's limits, with what
# was read from them: a homeserver answers every send with the same head but for its Date, so
# most answers in a second are a head read before, and reading one cost more than anything else
# the client does per send (docs/performance.md, item 44). What a head says is a function of its
# bytes alone. Small heads only (Synapse's are about 500 bytes), forgotten all at once when
# full: 0.4 MB for Synapse's, 5.4 MB at worst (measured: 256 heads of 1 KiB of tiny fields).
_Read = tuple[int, str, tuple[tuple[bytes, bytes], ...], bool, int | None, bool, bool]
_HEADS: dict[tuple[bytes, int, bool], _Read] = {}
HEADS_KEPT = 256
HEAD_KEPT_SIZE = 1024


class BadResponse(Exception):
    """The peer's bytes are not an HTTP/1.1 response this reader takes."""


class TooLarge(BadResponse):
    """A response whose body is over the reader's limit: well formed, maybe, but not taken."""


class Response(NamedTuple):
    status: int
    reason: str
    headers: tuple[tuple[bytes, bytes], ...]  # names lower-cased, in the order they came
    body: bytes
    keep_alive: bool  # the connection may carry the next request

    def header(self, name: bytes) -> str:
        """The first value of field `name` (lower case), or ""."""
        return next((v.decode("latin-1") for k, v in self.headers if k == name), "")


def request_head(method: str, target: str, fixed: bytes, body: bytes | None,
                 content_type: bytes) -> bytes:
    """The head of one request. `fixed` is the block of fields every request carries (from
    fixed_fields). A target with a space or a control character is a ValueError: it would
    break the request line."""
    if _UNSAFE.search(target) or not target.startswith("/"):
        raise ValueError(f"not a request target: {target!r}")
    head = b"%s %s HTTP/1.1\r\n%s" % (method.encode("ascii"), target.encode("ascii"), fixed)
    if body is not None:
        head += b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type, len(body))
    return head + b"\r\n"


def fixed_fields(fields: list[tuple[str, str]]) -> bytes:
    """Header fields as they go on the wire, checked once."""
    out = b""
    for name, value in fields:
        if not re.fullmatch(TOKEN.decode(), name) or _UNSAFE_VALUE.search(value):
            raise ValueError(f"not a header field: {name!r}")
        out += b"%s: %s\r\n" % (name.encode("ascii"), value.encode("latin-1"))
    return out


class ResponseReader:
    """Bytes in, one Response out. feed() until it returns the response; eof() when the peer
    closed. `leftover` holds what came after the response (a peer that says more than asked)."""

    def __init__(self, max_body: int, head_only: bool = False) -> None:
        self.max_body = max_body
        self.head_only = head_only  # the answer to HEAD: fields, never a body
        self.buffer = bytearray()
        self.leftover = b""
        self.received = False  # any byte at all: a connection closed before this is stale
        self._head: tuple[int, str, tuple[tuple[bytes, bytes], ...], bool] | None = None
        self._length: int | None = None  # Content-Length framing
        self._chunked = False
        self._chunk_left = -1  # chunked: bytes of the current chunk still to come (-1: a size)
        self._trailers = False
        self._suspect = False  # framed two ways: read, but not kept alive
        self._body = bytearray()

    def feed(self, data: bytes | bytearray) -> Response | None:
        if data:
            self.received = True
            self.buffer += data
        while self._head is None:
            if not self._read_head():
                return None
        if self._chunked:
            return self._read_chunks()
        if self._length is not None:
            if len(self.buffer) < self._length:
                return None
            self._body = self.buffer[:self._length]
            self.leftover = bytes(self.buffer[self._length:])
            return self._done()
        if len(self.buffer) > self.max_body:
            raise TooLarge(f"an answer of over {self.max_body} bytes")
        return None  # read until the peer closes

    def eof(self) -> Response:
        """The peer closed: the response, if its body was framed by the close; else
        BadResponse."""
        if self._head is not None and not self._chunked and self._length is None:
            self._body = self.buffer
            return self._done()
        raise BadResponse("the connection closed mid-answer" if self.received
                          else "the connection closed before any answer")

    # -- internals -----------------------------------------------------------------------------

    def _read_head(self) -> bool:
        end = HEAD_END.search(self.buffer)
        if end is None:
            if unfinished_head_size(self.buffer) > MAX_HEAD:
                raise BadResponse(f"a response head of over {MAX_HEAD} bytes")
            return False
        if head_size(self.buffer, end.start()) > MAX_HEAD:
            raise BadResponse(f"a response head of over {MAX_HEAD} bytes")
        raw = bytes(self.buffer[:end.start() + 1])
        del self.buffer[:end.end()]
        key = (raw, self.max_body, self.head_only)
        read = _HEADS.get(key)
        if read is None:
            if not self._parse_head(raw):
                return True  # an interim answer: the real one follows
            assert self._head is not None
            if len(raw) <= HEAD_KEPT_SIZE:
                if len(_HEADS) >= HEADS_KEPT:
                    _HEADS.clear()
                _HEADS[key] = (*self._head, self._length, self._chunked, self._suspect)
            return True
        code, reason, headers, keep_alive, self._length, self._chunked, self._suspect = read
        self._head = (code, reason, headers, keep_alive)
        return True

    def _parse_head(self, raw: bytes) -> bool:
        """Read a head (through the newline ending its last field) into the reader's state;
        False for an interim (1xx) answer, after which the real one follows."""
        start, section = split_head(raw)
        status_line = _STATUS_LINE.fullmatch(start)
        if status_line is None:
            raise BadResponse(f"not an HTTP/1.1 status line: {start[:80]!r}")
        minor, code = status_line.group(1), int(status_line.group(2))
        fields = field_lines(section)
        if fields is None:
            bad = next(line for line in section.split(b"\n")
                       if FIELD.fullmatch(line.removesuffix(b"\r")) is None)
            raise BadResponse(f"not a header field: {bad[:80]!r}")
        headers = tuple((name.lower(), value) for name, value in fields)
        if 100 <= code < 200:
            if code == 101:
                raise BadResponse("the server switched protocols, which nobody asked for")
            return False
        reason = (status_line.group(3) or b"").decode("latin-1")
        keep_alive = minor == b"1"
        if keep_alive:
            connection = b",".join(v for k, v in headers if k == b"connection").lower()
            keep_alive = b"close" not in {t.strip() for t in connection.split(b",")}
        self._frame(code, headers)
        self._head = (code, reason, headers, keep_alive)
        return True

    def _frame(self, code: int, headers: tuple[tuple[bytes, bytes], ...]) -> None:
        if self.head_only or code in (204, 304):
            self._length = 0
            return
        codings: list[bytes] = []
        lengths: set[bytes] = set()
        for k, v in headers:
            if k == b"content-length":
                lengths.add(v.strip())
            elif k == b"transfer-encoding":
                # Empty list items are ignored (RFC 9110 5.6.1).
                codings += [c for c in (t.strip().lower() for t in v.split(b",")) if c]
        if codings:
            if codings != [b"chunked"]:
                # Nothing asked for another coding, and its bytes are no JSON answer.
                raise BadResponse(f"a transfer coding this client does not read: "
                                  f"{b', '.join(codings).decode('latin-1')!r}")
            self._chunked = True
            # Both framings at once: the chunks win, and the connection is not trusted with
            # another request (RFC 9112 6.3: it ought to be handled as an error).
            self._suspect = bool(lengths)
            return
        if not lengths:
            return
        length = (content_length(next(iter(lengths)).decode("latin-1"), self.max_body)
                  if len(lengths) == 1 else None)
        if length is None:
            raise BadResponse("a bad Content-Length: " + repr(sorted(lengths)[:2])[:200])
        self._length = length
        if self._length > self.max_body:
            raise TooLarge(f"an answer of over {self.max_body} bytes")

    def _read_chunks(self) -> Response | None:
        while True:
            if self._trailers:
                # Trailer fields until an empty line; read and dropped (nothing here uses them).
                line_end = self.buffer.find(b"\n")
                if line_end > MAX_HEAD or (line_end < 0 and len(self.buffer) > MAX_HEAD):
                    raise BadResponse(f"trailers of over {MAX_HEAD} bytes")
                if line_end < 0:
                    return None
                line = bytes(self.buffer[:line_end]).removesuffix(b"\r")
                del self.buffer[:line_end + 1]
                if not line:
                    self.leftover = bytes(self.buffer)
                    return self._done()
                if FIELD.fullmatch(line) is None:
                    raise BadResponse(f"not a trailer field: {line[:80]!r}")
                continue
            if self._chunk_left < 0:
                line_end = self.buffer.find(b"\n")
                if line_end > MAX_CHUNK_LINE or (line_end < 0
                                                 and len(self.buffer) > MAX_CHUNK_LINE):
                    raise BadResponse(f"a chunk size line of over {MAX_CHUNK_LINE} bytes")
                if line_end < 0:
                    return None
                size = CHUNK_SIZE.fullmatch(bytes(self.buffer[:line_end]).removesuffix(b"\r"))
                if size is None:
                    raise BadResponse(f"not a chunk size: {bytes(self.buffer[:40])!r}")
                del self.buffer[:line_end + 1]
                self._chunk_left = int(size.group(1), 16)
                if self._chunk_left == 0:
                    self._trailers = True
                    continue
                if len(self._body) + self._chunk_left > self.max_body:
                    raise TooLarge(f"an answer of over {self.max_body} bytes")
            # The chunk's data, then its CRLF.
            need = self._chunk_left + 2
            if len(self.buffer) < need - 1:
                return None
            data_end = self._chunk_left
            if self.buffer[data_end:data_end + 2] == b"\r\n":
                self._body += self.buffer[:data_end]
                del self.buffer[:data_end + 2]
            elif self.buffer[data_end:data_end + 1] == b"\n":
                self._body += self.buffer[:data_end]
                del self.buffer[:data_end + 1]
            elif len(self.buffer) < need:
                return None  # the data is in, its CRLF is not yet
            else:
                raise BadResponse("a chunk not followed by CRLF")
            self._chunk_left = -1

    def _done(self) -> Response:
        assert self._head is not None
        code, reason, headers, keep_alive = self._head
        keep_alive = (keep_alive and (self._chunked or self._length is not None)
                      and not self._suspect)
        return Response(code, reason, headers, bytes(self._body), keep_alive)
