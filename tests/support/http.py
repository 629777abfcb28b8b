"""Plain HTTP against a test server, by hand over a TCP (or TLS) stream: `exchange` sends a request as is,
`get` builds one, and `Reply` is the response as read off the wire; `receive_head` reads a message's head, for
the hand-written servers of the tests."""
from __future__ import annotations

import ssl

import trio

from .timeouts import clock_bound


class Reply:
    """An HTTP response as read off the wire."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ")[1]) if status_line.startswith("HTTP/1.1 ") else 0
        self.headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            assert name.lower() not in self.headers, f"header {name} twice"
            self.headers[name.lower()] = value.strip()


async def receive_head(stream: trio.abc.Stream, received: bytes = b"") -> tuple[bytes, bytes] | None:
    """Read from `stream` (after the bytes `received` already) until a head's end: (the head, without its blank
    line; the bytes after it). None if the stream ended first."""
    while b"\r\n\r\n" not in received:
        data = await stream.receive_some(65536)
        if not data:
            return None
        received += data
    head, _, rest = received.partition(b"\r\n\r\n")
    return head, rest


async def exchange(port: int, request: bytes, *, context: ssl.SSLContext | None = None) -> Reply:
    """Send `request` as is and read everything until the server closes the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    if context is not None:
        # like browsers, no close_notify expected (the server's TLS is https_compatible)
        stream = trio.SSLStream(stream, context, server_hostname="127.0.0.1", https_compatible=True)
    async with stream:
        await stream.send_all(request)
        data = b""
        with trio.fail_after(clock_bound(5)):
            while chunk := await stream.receive_some():
                data += chunk
    return Reply(data)


async def get(port: int, path: str, method: str = "GET", *headers: str, **kwargs) -> Reply:
    extra = "".join(f"{h}\r\n" for h in headers)
    return await exchange(port, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode(), **kwargs)
