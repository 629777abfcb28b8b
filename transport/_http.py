"""The plain-HTTP side of the server's one port: reading a request head (h11, bounded), telling a
WebSocket upgrade from a plain request, the static files of `transport/static/`, and HTTP responses.

Imports trio, h11 and `protocol` (`shown`); never trio_websocket, `actors` or `store` (the server passes health
and metrics in).
"""
from __future__ import annotations

import hashlib
import http
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from pathlib import Path

import h11
import trio
from attrs import frozen

from .protocol import shown

#: The largest request head (request line and headers) read; a larger one gets 431.
MAX_HEAD_BYTES = 16 * 1024
_RECEIVE_BYTES = 4096

#: The policy of the HTML pages: their scripts and styles come from this server's files (no inline
#: script or style, no eval), they may open WebSockets (to this server's /ws), and nothing may frame them.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: The policy of every other response (files, JSON, errors): nothing in it may run or load anything.
NOTHING_CSP = "default-src 'none'; frame-ancestors 'none'"

#: Content types by file extension; other files are served as application/octet-stream.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".woff2": "font/woff2",
}

#: The names a static file may have: a letter or digit first, then letters, digits, '.', '_', '-'.
_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: The files served at fixed paths besides /static/<name>.
ROUTED_FILES = {"/": "index.html", "/agentcast.js": "agentcast.js"}
STATIC_PREFIX = "/static/"


class BadRequest(Exception):
    """A request head that cannot be parsed (400) or is too large (431)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@frozen
class RequestHead:
    """The head of the first request on a connection, and every byte read from the connection so far."""

    method: str
    target: str
    headers: tuple[tuple[bytes, bytes], ...]
    raw: bytes

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    def header(self, name: bytes) -> bytes | None:
        """The values of header `name` (lower case), joined by ", "; None if absent."""
        values = [v for n, v in self.headers if n == name]
        return b", ".join(values) if values else None

    def _tokens(self, name: bytes) -> set[bytes]:
        value = self.header(name)
        return {t.strip().lower() for t in value.split(b",")} if value is not None else set()

    @property
    def wants_websocket(self) -> bool:
        """True when the request asks to upgrade to a WebSocket (whether or not it does so correctly)."""
        return b"websocket" in self._tokens(b"upgrade")

    def websocket_problem(self) -> HttpResponse | None:
        """For an upgrade request: the error response if it is not a WebSocket handshake that wsproto
        would accept, else None (then trio-websocket takes the connection over)."""
        if self.method != "GET":
            return text_response(405, "A WebSocket handshake must be a GET\n", allow="GET, HEAD")
        if b"upgrade" not in self._tokens(b"connection"):
            return text_response(400, "A WebSocket handshake needs 'Connection: Upgrade'\n")
        if self.header(b"sec-websocket-version") != b"13":
            return text_response(426, "Only WebSocket version 13 is supported\n",
                                 extra=(("Sec-WebSocket-Version", "13"),))
        if not self.header(b"sec-websocket-key"):
            return text_response(400, "A WebSocket handshake needs a Sec-WebSocket-Key header\n")
        return None


async def read_request_head(stream: trio.abc.ReceiveStream, max_bytes: int = MAX_HEAD_BYTES) -> RequestHead | None:
    """Read the head of the first request on `stream`; None if the client hangs up before sending one.

    Raises `BadRequest` for a malformed head (400) or one over `max_bytes` (431). Put a deadline around
    it: a client that sends its head slowly is waited for as long as the caller lets it.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_bytes)
    raw = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint in (400, 431) else 400
            raise BadRequest(status, f"Bad request: {shown(str(exc), 300)}") from None
        if event is h11.NEED_DATA:
            # never more than max_bytes + 1 in all: h11 refuses an incomplete head over max_bytes
            data = await stream.receive_some(max(1, min(_RECEIVE_BYTES, max_bytes + 1 - len(raw))))
            if not data and not raw:
                return None
            raw += data
            conn.receive_data(bytes(data))  # b"" is the end of the stream: h11 then reports the cut-off head
            continue
        if isinstance(event, h11.Request):
            return RequestHead(
                event.method.decode("ascii", "replace"),
                event.target.decode("ascii", "replace"),
                tuple((bytes(n), bytes(v)) for n, v in event.headers),
                bytes(raw),
            )
        return None  # h11.ConnectionClosed


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A stream that first returns `prefix` (bytes already read from `stream`), then reads `stream`.

    It lets trio-websocket parse a handshake whose head was read here to decide where it goes.
    Its `repr` is the remote address ("host:port"), as trio-websocket reports the remote of a stream it
    does not know.
    """

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            n = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        send_eof = getattr(self.stream, "send_eof", None)
        if send_eof is None:
            raise trio.ClosedResourceError("this stream cannot half-close")  # pragma: no cover - TLS only
        await send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()

    def __repr__(self) -> str:
        return remote_of(self.stream)


def remote_of(stream: trio.abc.Stream) -> str:
    """"host:port" of the peer of a socket stream (or a TLS stream over one); "?" if unknown or gone."""
    inner = getattr(stream, "transport_stream", stream)
    try:
        host, port, *_ = inner.socket.getpeername()
    except (AttributeError, OSError, ValueError):
        return "?"
    return f"{host}:{port}"


# -- responses ----------------------------------------------------------------------------------


@frozen
class HttpResponse:
    """A complete response: status, content type, body and extra headers (name, value)."""

    status: int
    content_type: str
    body: bytes
    #: Cache-Control: static files revalidate (`no-cache`, with an ETag); everything else is `no-store`.
    cache_control: str = "no-store"
    extra: tuple[tuple[str, str], ...] = ()

    def encode(self, *, head_only: bool = False) -> bytes:
        """The response as bytes on the wire (no body for a HEAD request or a 304)."""
        reason = http.HTTPStatus(self.status).phrase
        csp = PAGE_CSP if self.content_type.startswith("text/html") else NOTHING_CSP
        headers = [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(self.body))),
            ("Cache-Control", self.cache_control),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", csp),
            ("Referrer-Policy", "no-referrer"),
            ("Connection", "close"),
            *self.extra,
        ]
        if self.status == 304:
            headers = [h for h in headers if h[0] not in ("Content-Type", "Content-Length")]
        head = f"HTTP/1.1 {self.status} {reason}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
        body = b"" if head_only or self.status == 304 else self.body
        return head.encode("latin-1") + body


def text_response(status: int, text: str, *, allow: str | None = None, extra: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    """A text/plain response (errors); `allow` sets the Allow header (for 405)."""
    if allow is not None:
        extra = (("Allow", allow), *extra)
    return HttpResponse(status, "text/plain; charset=utf-8", text.encode(), extra=extra)


def json_response(status: int, body: bytes) -> HttpResponse:
    return HttpResponse(status, "application/json", body)


async def write_response(stream: trio.abc.Stream, response: HttpResponse, *, head_only: bool = False) -> None:
    """Write `response`, then end the connection politely: half-close and read (and drop) what the client
    still sends for up to a second, so that a request body it is still sending does not make the kernel
    reset the connection before the client has read the response. Put a deadline around it."""
    await stream.send_all(response.encode(head_only=head_only))
    send_eof = getattr(stream, "send_eof", None)
    if send_eof is None:  # TLS: no half-close (and, https_compatible, no close_notify): Content-Length ends it
        return
    try:
        await send_eof()
        with trio.move_on_after(1.0):
            drained = 0
            while drained < 64 * 1024 and (data := await stream.receive_some(_RECEIVE_BYTES)):
                drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


# -- static files ---------------------------------------------------------------------------------


@frozen
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def package_static_dir() -> Path:
    """The static/ folder of the installed `agentcast.transport` package."""
    return Path(str(resources.files(__package__) / "static"))


def load_static_files(directory: str | os.PathLike | None) -> dict[str, StaticFile]:
    """Every regular file directly in `directory` whose name is plain (letters, digits, '.', '_', '-';
    not starting with '.'), read into memory, by name. A missing directory serves nothing.

    Read once, at start: requests never touch the file system, and only these names can be served
    (no path from a request ever reaches `open`).
    """
    if directory is None:
        return {}
    files: dict[str, StaticFile] = {}
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        return {}
    for entry in entries:
        if not _STATIC_NAME.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        with open(entry.path, "rb") as f:
            body = f.read()
        content_type = CONTENT_TYPES.get(os.path.splitext(entry.name)[1].lower(), "application/octet-stream")
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[entry.name] = StaticFile(body, content_type, etag)
    return files


#: A route that is computed per request (health, metrics).
Handler = Callable[[], Awaitable[HttpResponse]]


class Router:
    """Answers plain HTTP requests: static files and the routes in `handlers` (path -> async handler)."""

    def __init__(self, files: Mapping[str, StaticFile], handlers: Mapping[str, Handler]) -> None:
        self.files = dict(files)
        self.handlers = dict(handlers)

    def file_name(self, path: str) -> str | None:
        """The static file `path` names, or None."""
        if path in ROUTED_FILES:
            return ROUTED_FILES[path]
        if path.startswith(STATIC_PREFIX):
            return path[len(STATIC_PREFIX):]
        return None

    def route_of(self, path: str) -> str:
        """A label of the route for metrics: the handler's path, "static" or "unknown" (never the raw path)."""
        if path in self.handlers:
            return path
        return "static" if self.file_name(path) in self.files else "unknown"

    async def respond(self, head: RequestHead) -> HttpResponse:
        """The response to a plain (not WebSocket) request."""
        path = head.path
        if head.method not in ("GET", "HEAD"):
            return text_response(405, f"Method {shown(head.method, 20)} not allowed: only GET and HEAD\n", allow="GET, HEAD")
        handler = self.handlers.get(path)
        if handler is not None:
            return await handler()
        name = self.file_name(path)
        found = self.files.get(name) if name is not None else None
        if found is None:
            return text_response(404, "Not found. The WebSocket endpoint is /ws; the chat page is /\n")
        if head.header(b"if-none-match") is not None and found.etag in head.header(b"if-none-match").decode("latin-1"):
            return HttpResponse(304, found.content_type, b"", "no-cache", (("ETag", found.etag),))
        return HttpResponse(200, found.content_type, found.body, "no-cache", (("ETag", found.etag),))
