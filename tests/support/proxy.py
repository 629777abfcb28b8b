"""A small HTTP proxy on loopback for the tests (trio, in the test's run): CONNECT tunnels and absolute-form
requests forwarded, both then piped byte for byte. Records what it was asked; can refuse. Reaches nothing
outside loopback.
"""
from __future__ import annotations

import functools

import trio

from .http import receive_head


class FakeProxy:
    """`asked` holds each request's (method, target, Proxy-Authorization or None) as it came; `refuse` the
    status to answer the next `refusals` requests with instead of serving them; `url` its http:// URL (with
    `credentials`, "user:password", if given)."""

    def __init__(self, credentials: str | None = None) -> None:
        self.asked: list[tuple[str, str, str | None]] = []
        self.refuse = 403
        self.refusals = 0
        self.credentials = credentials
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.credentials + '@' if self.credentials else ''}127.0.0.1:{self.port}"

    async def start(self, nursery: trio.Nursery) -> FakeProxy:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def _serve(self, client: trio.SocketStream) -> None:
        async with client:
            if (got := await receive_head(client)) is None:
                return
            head, rest = got
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            authorization = next((line.partition(":")[2].strip() for line in lines[1:]
                                  if line.lower().startswith("proxy-authorization:")), None)
            self.asked.append((method, target, authorization))
            if self.refusals:
                self.refusals -= 1
                await client.send_all(f"HTTP/1.1 {self.refuse} Refused\r\nContent-Length: 0\r\n\r\n".encode())
                return
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                upstream = await trio.open_tcp_stream(host, int(port))
                await client.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                first = rest
            else:  # absolute-form: to the origin, as origin-form
                scheme, _, after = target.partition("://")
                authority, slash, path = after.partition("/")
                host, _, port = authority.rpartition(":")
                upstream = await trio.open_tcp_stream(host, int(port))
                kept = [line for line in lines[1:] if not line.lower().startswith("proxy-authorization:")]
                first = (f"{method} /{path} {version}\r\n" + "".join(f"{line}\r\n" for line in kept) + "\r\n").encode(
                    "latin-1") + rest
            async with upstream:
                if first:
                    await upstream.send_all(first)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_pipe, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(_pipe, upstream, client, nursery.cancel_scope)


async def _pipe(source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    done.cancel()
