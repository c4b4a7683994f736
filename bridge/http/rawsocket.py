"""A plain TCP connection driven on its non-blocking socket, for the hot HTTP paths.

trio's SocketStream passes through the scheduler two or three times per request and answer (a
checkpoint around each send and each receive). Here a send that the kernel takes at once (every
small request and answer) does not wait at all, and a receive waits only when nothing has come
yet: once per request, which is where it can be cancelled. On these machines the checkpoints were
most of what one request cost in trio (docs/performance.md, bench/stack.py). Whoever loops on
these must pass through the scheduler somewhere themselves (the server does, once per request).

The connection is made (or accepted) by trio, which keeps doing the address resolution and the
happy eyeballs; only the connected socket is taken over. TLS stays on trio's streams.
"""

from __future__ import annotations

import contextlib
import math
import socket

import trio


class RawStream:
    """send_all / receive_some / aclose over a connected non-blocking socket. A broken
    connection raises OSError (ConnectionResetError, BrokenPipeError, ...)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    @classmethod
    def take(cls, stream: trio.SocketStream) -> RawStream:
        """Take over the socket of a connected trio stream (which is left closed)."""
        trio_sock = stream.socket
        family, kind, proto = trio_sock.family, trio_sock.type, trio_sock.proto
        return cls(socket.socket(family, kind, proto, fileno=trio_sock.detach()))

    async def send_all(
        self, data: bytes | bytearray | memoryview, *, within: float | None = None
    ) -> None:
        """Send every byte. With `within`, a peer that has not taken them all that many seconds
        after the kernel's buffer first filled is a TimeoutError (an OSError): a client that
        never reads cannot hold its connection forever. No cost while the kernel takes them."""
        view = memoryview(data)
        deadline = None
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                if deadline is None:
                    deadline = math.inf if within is None else trio.current_time() + within
                with trio.move_on_at(deadline):
                    await trio.lowlevel.wait_writable(self.sock)
                    continue
                raise TimeoutError(f"the peer took no more bytes for {within:g} s") from None
            view = view[sent:]

    async def receive_some(self, size: int) -> bytes:
        """Up to `size` bytes; b"" once the peer has closed."""
        while True:
            try:
                return self.sock.recv(size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)

    def stop_reading(self) -> None:
        """Shut the read side: a task waiting to read wakes and reads b"" (the send side stays
        open, so that an answer can still be written)."""
        with contextlib.suppress(OSError):  # closed already, or reset: reads end anyway
            self.sock.shutdown(socket.SHUT_RD)

    def idle_and_open(self) -> bool:
        """For a kept-alive connection between requests: True if the peer has neither closed
        it nor sent anything unasked (a late or extra answer, which the next request would
        otherwise take for its own)."""
        try:
            return not self.sock.recv(1, socket.MSG_PEEK)  # b"": closed; bytes: unasked
        except BlockingIOError:
            return True
        except OSError:
            return False

    async def aclose(self) -> None:
        # No checkpoint: closing never waits, and it runs in handlers of cancellation too.
        self.abort()

    def abort(self) -> None:
        """Close now; a task waiting on the socket gets ClosedResourceError."""
        close_now(self.sock)

    async def __aenter__(self) -> RawStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def close_now(sock: socket.socket | trio.socket.SocketType) -> None:
    """Close a socket that another task may be waiting on (it gets ClosedResourceError)."""
    if sock.fileno() >= 0:
        trio.lowlevel.notify_closing(sock)
        sock.close()
