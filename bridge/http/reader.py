"""HTTP/1.1 requests off the wire for our server, and its answers onto it (RFC 9112). Pure: no
sockets, no trio.

h11 did this job and cost about a tenth of the bridge's CPU at one event per push
(docs/performance.md). What connects to the listener is a homeserver pushing transactions and
now and then a health check or a metrics scraper, so the reader takes what those send and
refuses, with a 4xx or 5xx status and no guessing, everything else, in particular whatever is
known to smuggle requests past a proxy:

- the request line is `token SP target SP HTTP/1.x` with a target of visible ASCII; leading empty
  lines are skipped (RFC 9112 2.2), any other version is 505;
- fields are checked against the grammar: obsolete line folding, a field without a colon, a bad
  name, whitespace before the colon or a control character in a value is a 400; HTTP/1.1 needs
  exactly one Host;
- the body is framed by Content-Length (several values must agree) or by Transfer-Encoding:
  chunked, never by both (400); another transfer coding is 501; a chunk's size line and its
  data end with CRLF (a bare LF is 400);
- the head and the body are bounded: a head over `max_head` is 431 (empty lines before it and
  the trailers after a chunked body count as head), a body over `max_body` 413, the latter from
  Content-Length before a byte of the body is read;
- its checks are linear in the bytes: no pattern backtracks over a long field.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import NamedTuple

from bridge.http.wire import (
    CHUNK_SIZE,
    FIELD,
    HEAD_END,
    MAX_CHUNK_LINE,
    TOKEN,
    content_length,
    field_lines,
    head_size,
    split_head,
    unfinished_head_size,
)

_REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}


class BadRequest(Exception):
    """The client's bytes are not a request this server takes; `status` says what kind."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class Head(NamedTuple):
    method: str
    target: str
    headers: dict[str, str]  # lower-case names; a repeated field's values joined by ", "
    keep_alive: bool  # the connection may carry the next request after this one


class RequestReader:
    """Bytes in, requests out, one at a time: feed() what arrives, then head() until it returns
    the head and body() until it returns the body. Bytes after a request stay in the buffer for
    the next one (a client pipelining). Everything it refuses is a BadRequest."""

    def __init__(self, max_head: int, max_body: int) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self.buffer = bytearray()
        self._head: Head | None = None
        self._length = 0  # Content-Length framing: the bytes of body to read
        self._chunked = False
        self._chunk_left = -1  # chunked: bytes of the current chunk still to come (-1: a size)
        self._trailers = False
        self._body = bytearray()
        self._http11 = True
        self._body_began = False  # a byte of the current body was read
        self._blank = 0  # bytes of empty lines skipped before the next request line
        self._trailer_bytes = 0

    @property
    def began(self) -> bool:
        """Whether a byte of the next request is in."""
        return self._head is not None or bool(self.buffer.lstrip(b"\r\n"))

    def feed(self, data: bytes | bytearray) -> None:
        self.buffer += data

    def head(self) -> Head | None:
        """The next request's head, once all of it is in; None until then."""
        if self._head is not None:
            return self._head
        # Empty lines before a request line are skipped (a client's stray CRLF after a body).
        while self.buffer[:1] == b"\n" or self.buffer[:2] == b"\r\n":
            skip = 1 if self.buffer[0] == 0x0A else 2
            del self.buffer[:skip]
            self._blank += skip
            if self._blank > self.max_head:  # they count as head: no endless stream of them
                raise BadRequest(431, f"request head over {self.max_head} bytes")
        end = HEAD_END.search(self.buffer)
        if end is None:
            if unfinished_head_size(self.buffer) > self.max_head:
                raise BadRequest(431, f"request head over {self.max_head} bytes")
            return None
        if head_size(self.buffer, end.start()) > self.max_head:
            raise BadRequest(431, f"request head over {self.max_head} bytes")
        head = bytes(self.buffer[:end.start() + 1])
        del self.buffer[:end.end()]
        self._blank = 0
        self._head = self._parse(head)
        return self._head

    def body(self) -> bytes | None:
        """The body of the request whose head() came last, once all of it is in; None until
        then. The reader is then ready for the next request."""
        self._body_began = self._body_began or bool(self.buffer)
        if self._chunked:
            if not self._read_chunks():
                return None
        else:
            if len(self.buffer) < self._length:
                return None
            self._body = self.buffer[:self._length]
            del self.buffer[:self._length]
        body = bytes(self._body)
        self._head, self._length, self._chunked = None, 0, False
        self._chunk_left, self._trailers, self._body = -1, False, bytearray()
        self._body_began, self._trailer_bytes = False, 0
        return body

    def body_waiting(self) -> bool:
        """Whether the body still to come is owed to a client that asked to be told to send it
        (Expect: 100-continue) and has not begun."""
        return (self._head is not None and self._http11 and not self._body_began
                and not self.buffer
                and (self._chunked or self._length > 0)
                and self._head.headers.get("expect", "").lower() == "100-continue")

    # -- internals -----------------------------------------------------------------------------

    def _parse(self, head: bytes) -> Head:
        start, section = split_head(head)
        line = _REQUEST_LINE.fullmatch(start)
        if line is None:
            raise BadRequest(400, "not an HTTP/1.1 request line")
        method, target, major, minor = line.groups()
        if major != b"1":
            raise BadRequest(505, "only HTTP/1.0 and HTTP/1.1 are served")
        fields = field_lines(section)
        if fields is None:
            # Also what a folded line (leading whitespace) and "Name : value" come to.
            raise BadRequest(400, "a malformed header field")
        headers: dict[str, str] = {}
        for raw_name, raw_value in fields:
            name = raw_name.decode("ascii").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        # One Host, not two (a comma cannot appear in a host, only in joined fields); and
        # HTTP/1.1 must send one.
        if "," in headers.get("host", "") or (minor != b"0" and "host" not in headers):
            raise BadRequest(400, "a request needs exactly one Host field")
        self._http11 = minor != b"0"
        close_tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = minor != b"0" and "close" not in close_tokens
        self._frame(headers)
        return Head(method.decode("ascii"), target.decode("ascii"), headers, keep_alive)

    def _frame(self, headers: dict[str, str]) -> None:
        if "transfer-encoding" in headers:
            if "content-length" in headers:
                # Two framings at once is how requests are smuggled past a proxy (RFC 9112 6.3),
                # even when one of them is empty.
                raise BadRequest(400, "both Transfer-Encoding and Content-Length")
            codings = [c for c in (t.strip().lower()
                                   for t in headers["transfer-encoding"].split(",")) if c]
            if codings != ["chunked"]:
                raise BadRequest(501, "only the chunked transfer coding is read")
            self._chunked = True
            return
        if "content-length" not in headers:
            return  # a request without framing has no body
        lengths = {v.strip() for v in headers["content-length"].split(",")}
        length = content_length(lengths.pop(), self.max_body) if len(lengths) == 1 else None
        if length is None:
            raise BadRequest(400, "a bad Content-Length")
        self._length = length
        if self._length > self.max_body:
            raise BadRequest(413, f"body over {self.max_body} bytes")

    def _read_chunks(self) -> bool:
        """Read chunks from the buffer into the body; True once the last chunk (and the
        trailers, which nothing here uses) are in."""
        while True:
            if self._trailers:
                # Trailer fields are fields: a bare LF ends one, as in the head. All of them,
                # and a line still arriving, count against max_head.
                line_end = self.buffer.find(b"\n")
                pending = line_end + 1 if line_end >= 0 else len(self.buffer)
                if self._trailer_bytes + pending > self.max_head:
                    raise BadRequest(431, f"trailers over {self.max_head} bytes")
                if line_end < 0:
                    return False
                self._trailer_bytes += pending
                line = bytes(self.buffer[:line_end]).removesuffix(b"\r")
                del self.buffer[:line_end + 1]
                if not line:
                    return True
                if FIELD.fullmatch(line) is None:
                    raise BadRequest(400, "a malformed trailer field")
                continue
            if self._chunk_left < 0:
                line_end = self.buffer.find(b"\n")
                if line_end > MAX_CHUNK_LINE or (line_end < 0
                                                 and len(self.buffer) > MAX_CHUNK_LINE):
                    raise BadRequest(400, "a chunk size line that does not end")
                if line_end < 0:
                    return False
                size = CHUNK_SIZE.fullmatch(_crlf_line(self.buffer, line_end))
                if size is None:
                    raise BadRequest(400, "a malformed chunk size")
                self._chunk_left = int(size.group(1), 16)
                if self._chunk_left == 0:
                    self._trailers = True
                    continue
                if len(self._body) + self._chunk_left > self.max_body:
                    raise BadRequest(413, f"body over {self.max_body} bytes")
            # The chunk's data, then its CRLF.
            end = self._chunk_left
            if len(self.buffer) < end + 2:
                return False
            if self.buffer[end:end + 2] != b"\r\n":
                raise BadRequest(400, "a chunk not followed by CRLF")
            self._body += self.buffer[:end]
            del self.buffer[:end + 2]
            self._chunk_left = -1


def _crlf_line(buffer: bytearray, line_end: int) -> bytes:
    """The line before buffer[line_end] (a newline), taken out of the buffer. Only CRLF ends a
    chunk's size line or its data: a bare LF there is read differently by different parsers,
    which is how requests are smuggled past a proxy."""
    if line_end == 0 or buffer[line_end - 1] != 0x0D:
        raise BadRequest(400, "a line in chunked framing that does not end with CRLF")
    line = bytes(buffer[:line_end - 1])
    del buffer[:line_end + 1]
    return line


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def response_bytes(status: int, content_type: str, body: bytes, *, close: bool,
                   head_only: bool = False) -> bytes:
    """One answer on the wire. To HEAD, `head_only`: the fields announce the body, which is
    left out."""
    reason = _REASONS.get(status, b"")
    head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n" % (
        status, reason, content_type.encode("latin-1"), len(body),
        b"connection: close\r\n" if close else b"")
    return head if head_only else head + body
