"""A fake OpenAI-compatible Chat Completions server for the tests: real HTTP on loopback, scripted SSE.

HTTP parsing by h11 (httpx's own HTTP/1.1 library); runs in the test's trio run, or in a thread of its own for a
server in another process (`fake_openai_in_thread`). Reaches nothing outside.
"""
from __future__ import annotations

import functools
import json
import socket
import ssl
import struct
import threading
from collections import deque
from contextlib import contextmanager
from typing import Iterator

import h11
import trio
from attrs import define, field

from .timeouts import scaled

#: A reply the fake sends when a test scripted too few (the brain then fails with HTTP 500).
UNSCRIPTED = "the fake OpenAI server has no scripted reply left"


@define
class Reply:
    """One scripted answer to one POST /v1/chat/completions.

    With `status` 200 and no `body`: a `text/event-stream` of `chunks` (a dict is sent as JSON,
    a str as it is), then `data: [DONE]` if `done`. `stall_after=N`: after N chunks send nothing
    more and wait until the client closes the connection. `cut_after=N`: after N chunks close
    the connection abruptly (no end of the chunked body). `keepalive=S`: after the chunks, send an SSE
    comment every S seconds until the client closes the connection. `linger_after_done`: after `data: [DONE]`
    do not end the body; wait until the client closes the connection. With a `body`: that, with `status`.
    `pieces`: the event stream's bytes as they are, each sent 10 ms after the one before (each its own read
    for a client that is waiting: use the autojump clock), instead of `chunks` and `data: [DONE]`.
    `raw`: the bytes of the whole answer as they are (status line and head included: any HTTP, or none), each
    sent 10 ms after the one before, instead of all the above; then `end` says what the connection does:
    "close" (FIN), "reset" (RST), "stall" (nothing more, until the client closes it) or "keep" (the answer
    was whole: the next request is read on the same connection).
    `close_after`: once this answer is sent (in full, kept alive as far as the client knows), close the
    connection while the client holds it idle.
    """

    status: int = 200
    chunks: list = field(factory=list)
    done: bool = True
    body: str | None = None
    content_type: str = "text/event-stream"
    headers: dict = field(factory=dict)
    stall_after: int | None = None
    cut_after: int | None = None
    keepalive: float | None = None
    linger_after_done: bool = False
    pieces: list[bytes] | None = None
    raw: list[bytes] | None = None
    end: str = "close"
    close_after: bool = False


def chunk(content: str | None = None, *, tool_calls: list | None = None, finish: str | None = None) -> dict:
    """One streamed Chat Completions chunk, as OpenAI sends it."""
    delta: dict = {}
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def usage_chunk(prompt_tokens: int, completion_tokens: int) -> dict:
    """The last chunk when the request asked `stream_options: {include_usage: true}`."""
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def text(*pieces: str, usage: tuple[int, int] | None = None, **options) -> Reply:
    """A plain answer streamed as `pieces` (one chunk each), then `finish_reason: stop`."""
    chunks: list = [chunk(p) for p in pieces] + [chunk(finish="stop")]
    if usage is not None:
        chunks.append(usage_chunk(*usage))
    return Reply(chunks=chunks, **options)


def tool_calls(*calls: tuple[str, str, object], pieces: int = 3, usage: tuple[int, int] | None = None) -> Reply:
    """The model calling tools: each (call_id, name, arguments) with its JSON arguments streamed in
    `pieces` fragments, as OpenAI does (id and name in the first fragment only)."""
    chunks: list = []
    for index, (call_id, name, arguments) in enumerate(calls):
        raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
        size = max(1, -(-len(raw) // pieces))
        fragments = [raw[i:i + size] for i in range(0, len(raw), size)] or [""]
        for n, fragment in enumerate(fragments):
            piece: dict = {"index": index, "function": {"arguments": fragment}}
            if n == 0:
                piece.update(id=call_id, type="function")
                piece["function"]["name"] = name
            chunks.append(chunk(tool_calls=[piece]))
    chunks.append(chunk(finish="tool_calls"))
    if usage is not None:
        chunks.append(usage_chunk(*usage))
    return Reply(chunks=chunks)


def error(status: int, message: str, *, retry_after: str | None = None) -> Reply:
    """An error answer with OpenAI's error body."""
    body = json.dumps({"error": {"message": message, "type": "fake_error", "code": None}})
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return Reply(status=status, body=body, content_type="application/json", headers=headers)


class FakeOpenAI:
    """Serves scripted `Reply`s in order, one per request; records every request.

    `requests` holds each request's JSON body, `headers` each one's headers (lower-case names),
    `targets` each one's path and query.
    `stalled` is set when a reply starts stalling; `disconnected` once the client has closed a
    stalled connection (so a test can see that cancelling really closed the HTTP stream).
    `connection_of` holds, for each request, the number of the TCP connection it came on (0, 1, ... in
    the order they were accepted): whether the client kept its connection for the next request.
    `closed_by_client` counts the connections the client closed between requests. `reset_connections`: how
    many of the next connections are reset (RST) as soon as accepted, before any request is read.
    """

    def __init__(self, *replies: Reply) -> None:
        self.replies: deque[Reply] = deque(replies)
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.targets: list[str] = []
        self.connection_of: list[int] = []
        self._accepted = 0
        self.closed_by_client = 0
        self.reset_connections = 0
        self.stalled = trio.Event()
        self.disconnected = trio.Event()
        self.port = 0

    tls = False

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def start(self, nursery: trio.Nursery, ssl_context: ssl.SSLContext | None = None) -> FakeOpenAI:
        """Listen on loopback (over TLS with `ssl_context`: https://, see `base_url`)."""
        self.tls = ssl_context is not None
        if ssl_context is None:
            serve = functools.partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1")
        else:
            serve = functools.partial(trio.serve_ssl_over_tcp, self._serve, 0, ssl_context, host="127.0.0.1",
                                      https_compatible=True)
        listeners = await nursery.start(serve)
        self.port = listeners[0].transport_listener.socket.getsockname()[1] if ssl_context else \
            listeners[0].socket.getsockname()[1]
        return self

    async def _serve(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        number, self._accepted = self._accepted, self._accepted + 1
        if self.reset_connections:
            self.reset_connections -= 1
            reset(stream)
            return
        try:
            while True:
                request = await self._read_request(conn, stream)
                if request is None:
                    self.closed_by_client += 1
                    return
                self.connection_of.append(number)
                reply = self.replies.popleft() if self.replies else Reply(status=500, body=UNSCRIPTED,
                                                                          content_type="text/plain")
                if reply.raw is not None:
                    if not await self._send_raw(stream, reply):
                        return
                    conn = h11.Connection(h11.SERVER)  # the raw answer passed h11 by
                    continue
                if not await self._answer(conn, stream, reply):
                    return
                if reply.close_after:
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _send_raw(self, stream: trio.abc.Stream, reply: Reply) -> bool:
        """Send `reply.raw`; True if the connection serves the next request (`end="keep"`)."""
        for n, piece in enumerate(reply.raw or ()):
            if n:
                await trio.sleep(0.01)
            await stream.send_all(piece)
        if reply.end == "reset":
            reset(stream)
        elif reply.end == "stall":
            await self._stall(stream)
        elif reply.end == "keep":  # the answer was whole: the connection serves the next request
            return True
        return False

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
        request = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and request is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                return None
        self.targets.append(request.target.decode())
        self.headers.append({k.decode().lower(): v.decode() for k, v in request.headers})
        self.requests.append(json.loads(body) if body else {})
        return request

    async def _answer(self, conn: h11.Connection, stream: trio.SocketStream, reply: Reply) -> bool:
        """Send `reply`; False if the connection is over afterwards (a stall or a cut)."""
        headers = [("content-type", reply.content_type), *reply.headers.items()]
        if reply.body is not None:
            body = reply.body.encode()
            headers.append(("content-length", str(len(body))))
            await stream.send_all(conn.send(h11.Response(status_code=reply.status, headers=headers)))
            await stream.send_all(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            return True
        await stream.send_all(conn.send(h11.Response(status_code=reply.status, headers=headers)))
        if reply.pieces is not None:
            for piece in reply.pieces:
                await trio.sleep(0.01)
                await stream.send_all(conn.send(h11.Data(data=piece)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            return True
        for n, item in enumerate(reply.chunks):
            if reply.stall_after == n:
                await self._stall(stream)
                return False
            if reply.cut_after == n:
                return False  # closed in `_serve`'s finally, mid-body
            data = item if isinstance(item, str) else json.dumps(item)
            await stream.send_all(conn.send(h11.Data(data=f"data: {data}\n\n".encode())))
        if reply.stall_after is not None:
            await self._stall(stream)
            return False
        if reply.keepalive is not None:
            self.stalled.set()
            try:
                while True:
                    await trio.sleep(reply.keepalive)
                    await stream.send_all(conn.send(h11.Data(data=b": keepalive\n\n")))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.disconnected.set()
                return False
        if reply.done:
            await stream.send_all(conn.send(h11.Data(data=b"data: [DONE]\n\n")))
        if reply.linger_after_done:
            await self._stall(stream)
            return False
        await stream.send_all(conn.send(h11.EndOfMessage()))
        return True

    async def _stall(self, stream: trio.SocketStream) -> None:
        """Send nothing more; return once the client has closed the connection."""
        self.stalled.set()
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            if not data:
                break
        self.disconnected.set()


def reset(stream: trio.abc.Stream) -> None:
    """Close `stream`'s TCP connection with a reset (RST), not a FIN: SO_LINGER with a zero timeout."""
    while not isinstance(stream, trio.SocketStream):
        stream = stream.transport_stream  # a TLS stream's TCP stream
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


def sse_head(*headers: str, chunked: bool = True) -> bytes:
    """A 200 head of an event stream (for `Reply.raw`), chunked unless told, with `headers` ("Name: value") more."""
    lines = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream", *(["Transfer-Encoding: chunked"] if chunked else []),
             *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def sse_event(item: object) -> bytes:
    """One SSE event (`data: ...`) of a chunk (a dict, as JSON) or a str, unframed."""
    data = item if isinstance(item, str) else json.dumps(item)
    return f"data: {data}\n\n".encode()


def in_chunk(data: bytes) -> bytes:
    """`data` as one chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class ThreadedFake:
    """A `FakeOpenAI` served by its own trio run in a thread; `wait("stalled")` blocks (bounded) until that
    event of the fake is set."""

    def __init__(self, fake: FakeOpenAI, token: trio.lowlevel.TrioToken) -> None:
        self.fake = fake
        self._token = token

    @property
    def base_url(self) -> str:
        return self.fake.base_url

    def wait(self, name: str, timeout: float = 10) -> None:
        async def wait() -> None:
            with trio.fail_after(scaled(timeout)):  # its own trio run, on the real clock
                await getattr(self.fake, name).wait()

        trio.from_thread.run(wait, trio_token=self._token)


@contextmanager
def fake_openai_in_thread(*replies: Reply) -> Iterator[ThreadedFake]:
    """The fake scripted with `replies`, listening on loopback from a thread until the block ends."""
    fake = FakeOpenAI(*replies)
    started = threading.Event()
    state: dict = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await fake.start(nursery)
            state["token"], state["scope"] = trio.lowlevel.current_trio_token(), nursery.cancel_scope
            started.set()

    def run() -> None:
        try:
            trio.run(main)
        finally:
            started.set()

    thread = threading.Thread(target=run, name="fake-openai", daemon=True)
    thread.start()
    started.wait(scaled(10))
    assert "token" in state, "the fake OpenAI server did not start"
    try:
        yield ThreadedFake(fake, state["token"])
    finally:
        trio.from_thread.run_sync(state["scope"].cancel, trio_token=state["token"])
        thread.join(scaled(10))
