"""The `openai` brain's HTTP/1.1 client: a POST whose streamed answer is read as it comes, over trio streams.

Owns: a request's bytes on the wire (the head made once per endpoint, the body); the response's head (bounded)
and body (chunked, Content-Length or close-delimited; gzip or deflate decoded if a server sends them anyway),
parsed here from each socket read, one pass per read (`ResponseHead`, `ChunkedBody`, `LengthBody`, `CloseBody`,
`ContentDecoder`: sans-IO); connections kept alive between requests (`Pool`, one per client and trio run);
the timeouts of an exchange, kept by one watchdog task per pool instead of a cancel scope per read; TLS
(`trio.SSLStream`); HTTP proxies named by the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY: an
absolute-form request through the proxy for http://, a CONNECT tunnel for https://).

Errors are `HTTPError`s whose text never holds the URL's credentials or query, nor the proxy's URL. Imports
nothing of agentcast (and so never `transport` or the store).
"""
from __future__ import annotations

import base64
import collections
import math
import os
import select
import socket
import ssl
import urllib.request
import zlib
from collections.abc import Awaitable, Callable
from typing import cast
from urllib.parse import quote, unquote, urlsplit

import trio

#: The most bytes of a response's head (status line and headers); beyond, the response is refused.
MAX_HEAD_BYTES = 65_536
#: The most bytes asked of the socket at a time.
READ_SIZE = 65_536
#: The most bytes one `read` of a compressed body gives (the rest is decoded at the next read), as a socket
#: read would: what follows (the event stream's split) takes no longer for a compressed body than for another.
MAX_DECODED_READ = 65_536
#: The most a compressed body may inflate (its decoded bytes over its encoded ones) once it has given
#: INFLATION_FLOOR decoded bytes; beyond, it is refused (a decompression bomb). An event stream of
#: model answers inflates about 100 times, one of identical events about 350 times; deflate at most ~1030.
MAX_INFLATION = 500
#: The decoded bytes a compressed body gives before MAX_INFLATION is enforced (short bodies inflate more).
INFLATION_FLOOR = 4 * 1024 * 1024
#: The longest chunk-size line (with its extensions) or trailer line of a chunked body held across reads (one
#: whole in a read is bounded by READ_SIZE).
MAX_CHUNK_LINE = 4096
#: The most idle connections a pool keeps for the next requests.
MAX_IDLE_CONNECTIONS = 1024
#: How long an idle connection is kept (seconds) before it is closed.
IDLE_CONNECTION_SECONDS = 5.0


# -- errors ------------------------------------------------------------------------------------------------


class HTTPError(Exception):
    """A request failed. Its text says how, never with the URL's secrets or the proxy's URL."""


class ConnectError(HTTPError):
    """No connection to the server (refused, unreachable, no such host, TLS handshake failed, timed out)."""


class ProxyError(HTTPError):
    """The proxy could not be reached, or would not open the way to the server."""


class UnsupportedProxy(HTTPError):
    """The environment names a proxy of a kind this client does not speak (socks://, https://)."""


class SendError(HTTPError):
    """The request could not be written (the connection broke, or took longer than the timeout)."""


class ReadTimeout(HTTPError):
    """Nothing came from the server for the timeout."""


class DeadlineReached(HTTPError):
    """The exchange's deadline (the caller's, for the whole request) came."""


class ProtocolError(HTTPError):
    """The response is not valid HTTP/1.1, or the server closed the connection before its end."""


class ReadError(ProtocolError):
    """The connection broke while the response was read (reset, TLS failure)."""


class CutOff(ProtocolError):
    """The server closed the connection before the end of the body."""


class DecodingError(HTTPError):
    """The body's content encoding is broken or unknown."""


# -- the response's head (sans-IO) ----------------------------------------------------------------------------


class ResponseHead:
    """A response's status line and headers (`headers`: lower-case names; repeated ones joined by ", ")."""

    __slots__ = ("version", "status", "reason", "headers")

    def __init__(self, version: str, status: int, reason: str, headers: dict[str, str]) -> None:
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers

    @classmethod
    def parse(cls, data: bytes) -> ResponseHead:
        """The head in `data` (its bytes up to and without the empty line that ends it); `ProtocolError`
        if it is not one."""
        lines = data.split(b"\n")
        status_line = lines[0].rstrip(b"\r")
        version, _, rest = status_line.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.1 status line: {status_line[:100]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            line = line.rstrip(b"\r")
            if not line:
                continue
            if line[:1] in (b" ", b"\t"):
                raise ProtocolError("a header folded over two lines")
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or b" " in name:
                raise ProtocolError(f"a malformed header line: {line[:100]!r}")
            key = name.decode("latin-1").lower()
            text = value.strip(b" \t").decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        return cls(version.decode(), int(code), reason.decode("latin-1"), headers)


def head_end(buffer: bytes, start: int = 0) -> tuple[int, int]:
    """(where the head in `buffer` ends, where its body starts), or (-1, -1) if the empty line is not in it
    yet; `start`: where a new empty line could begin (bytes before were searched already)."""
    crlf = buffer.find(b"\r\n\r\n", start)
    lf = buffer.find(b"\n\n", start)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf, lf + 2
    if crlf >= 0:
        return crlf, crlf + 4
    return -1, -1


# -- the response's body (sans-IO): each read of the socket in, the body's bytes out ------------------------


class ChunkedBody:
    """A chunked body (`Transfer-Encoding: chunked`): `feed` takes each read, gives the data it holds."""

    __slots__ = ("done", "_left", "_line", "_state", "_trailer")

    _SIZE, _DATA, _DATA_END, _TRAILER = 0, 1, 2, 3

    def __init__(self) -> None:
        self.done = False
        self._left = 0  # bytes of the current chunk's data still to come
        self._line = b""  # the start of a size or trailer line cut by the read's end
        self._state = self._SIZE
        self._trailer = 0  # bytes of the trailer section so far (at most MAX_HEAD_BYTES)

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """(the body's bytes in `data`, what came after the body's end: bytes of no response)."""
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state == self._DATA:
                take = min(self._left, end - pos)
                out.append(data[pos:pos + take] if take != end or pos else data)
                pos += take
                self._left -= take
                if not self._left:
                    self._state = self._DATA_END
                continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                self._line += data[pos:]
                if len(self._line) > MAX_CHUNK_LINE:
                    raise ProtocolError(f"a chunk-size line longer than {MAX_CHUNK_LINE} bytes")
                break
            line = data[pos:newline]
            if self._line:
                line, self._line = self._line + line, b""
            pos = newline + 1
            if line[-1:] == b"\r":
                line = line[:-1]
            if state == self._SIZE:
                size = line.partition(b";")[0].strip(b" \t")
                if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
                    raise ProtocolError(f"a bad chunk size: {line[:40]!r}")
                self._left = int(size, 16)
                self._state = self._DATA if self._left else self._TRAILER
            elif state == self._DATA_END:
                if line:
                    raise ProtocolError("a chunk's data is longer than its size")
                self._state = self._SIZE
            elif not line:  # the empty line that ends the trailer: the end of the body
                self.done = True
                return b"".join(out) if len(out) != 1 else out[0], data[pos:]
            else:  # a trailer field (not used)
                self._trailer += len(line) + 2
                if self._trailer > MAX_HEAD_BYTES:
                    raise ProtocolError(f"a trailer section longer than {MAX_HEAD_BYTES} bytes")
        return (b"".join(out) if len(out) != 1 else out[0]), b""

    def end(self) -> None:
        """The connection ended here (EOF): `ProtocolError` unless the body was complete."""
        if not self.done:
            raise CutOff("the connection closed before the end of the chunked body")


class LengthBody:
    """A body of `Content-Length` bytes."""

    __slots__ = ("done", "_left")

    def __init__(self, length: int) -> None:
        self._left = length
        self.done = length == 0

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        left = self._left
        if len(data) < left:
            self._left = left - len(data)
            return data, b""
        self._left = 0
        self.done = True
        return (data, b"") if len(data) == left else (data[:left], data[left:])

    def end(self) -> None:
        if not self.done:
            raise CutOff(f"the connection closed {self._left} bytes before the end of the body (Content-Length)")


class CloseBody:
    """A body that ends when the connection does (no length, not chunked)."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        return data, b""

    def end(self) -> None:
        self.done = True


def body_of(head: ResponseHead) -> ChunkedBody | LengthBody | CloseBody:
    """How the body after `head` is framed (RFC 9112 §6.3: the answer to a POST). With both Transfer-Encoding
    and Content-Length, Transfer-Encoding frames it (and the connection is not kept: `Response`)."""
    if head.status in (204, 304):
        return LengthBody(0)
    headers = head.headers
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if coding.rpartition(",")[2].strip().lower() == "chunked":
            return ChunkedBody()
        return CloseBody()
    length = headers.get("content-length")
    if length is not None:
        values = {v.strip() for v in length.split(",")}
        value = values.pop() if len(values) == 1 else ""
        if not value.isdigit() or not value.isascii() or len(value) > 18:
            raise ProtocolError(f"a bad Content-Length: {length[:40]!r}")
        return LengthBody(int(value))
    return CloseBody()


class ContentDecoder:
    """The body's content encoding (`gzip`, `deflate`) undone with zlib, at most MAX_DECODED_READ bytes at a time;
    `DecodingError` for a body that inflates more than MAX_INFLATION times (past INFLATION_FLOOR bytes)."""

    __slots__ = ("_zlib", "_deflate", "_tail", "_started", "_encoded", "_decoded")

    def __init__(self, encoding: str) -> None:
        codings = [c.strip().lower() for c in encoding.split(",")]
        codings = [c for c in codings if c not in ("", "identity")]
        if len(codings) != 1 or codings[0] not in ("gzip", "x-gzip", "deflate"):
            raise DecodingError(f"unsupported content encoding {encoding[:40]!r}")
        self._deflate = codings[0] == "deflate"
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS if self._deflate else 16 + zlib.MAX_WBITS)
        self._tail = b""  # input left undecoded by the last call (its output would have been too long)
        self._started = False  # some input was decoded
        self._encoded = 0  # bytes taken (those of `_tail` not decoded yet)
        self._decoded = 0  # bytes given

    @property
    def pending(self) -> bool:
        """Input is left to decode (call `decode(b"")`)."""
        return bool(self._tail)

    def decode(self, data: bytes) -> bytes:
        self._encoded += len(data)
        if self._tail:
            data, self._tail = self._tail + data, b""
        try:
            try:
                out = self._zlib.decompress(data, MAX_DECODED_READ)
            except zlib.error:
                if not self._deflate or self._started:
                    raise
                # `deflate` as many servers send it: raw, without the zlib wrapper
                self._deflate = False
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                out = self._zlib.decompress(data, MAX_DECODED_READ)
        except zlib.error as exc:
            raise DecodingError(f"broken content encoding: {exc}") from None
        self._tail = self._zlib.unconsumed_tail
        self._started = True
        return self._counted(out)

    def flush(self) -> bytes:
        try:
            return self._counted(self._zlib.flush())
        except zlib.error as exc:
            raise DecodingError(f"broken content encoding: {exc}") from None

    def _counted(self, out: bytes) -> bytes:
        decoded = self._decoded = self._decoded + len(out)
        if decoded > INFLATION_FLOOR and decoded > MAX_INFLATION * (self._encoded - len(self._tail)):
            raise DecodingError(f"a compressed body that inflates more than {MAX_INFLATION} times (a decompression "
                                "bomb): refused")
        return out


# -- where requests go: the URL, the proxy (from the environment) -------------------------------------------


def _basic(user: str | None, password: str | None) -> str:
    token = f"{unquote(user or '')}:{unquote(password or '')}".encode()
    return "Basic " + base64.b64encode(token).decode("ascii")


class Proxy:
    """An http:// proxy of the environment: where it listens, and its credentials (as a header line)."""

    __slots__ = ("host", "port", "authorization")

    def __init__(self, host: str, port: int, authorization: bytes) -> None:
        self.host = host
        self.port = port
        self.authorization = authorization  # b"Proxy-Authorization: ...\r\n" or b""


def proxy_from_environment(scheme: str, host: str, port: int) -> Proxy | UnsupportedProxy | None:
    """The proxy the environment names for a request to `scheme://host:port` (HTTPS_PROXY for https,
    HTTP_PROXY for http, else ALL_PROXY; any of them lower-case too), None for none or for a host NO_PROXY
    names (`no_proxy_names`), an `UnsupportedProxy` for a proxy of another kind than http:// (raised at the
    first request)."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(scheme) or proxies.get("all")
    if not url:
        return None
    if proxies.get("no") and no_proxy_names(proxies["no"], host, port):
        return None
    variable = f"{scheme.upper()}_PROXY" if proxies.get(scheme) else "ALL_PROXY"
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme.lower() != "http":
        kind = parts.scheme.lower() or "?"
        return UnsupportedProxy(f"the proxy in {variable} is a {kind}:// proxy, which the openai brain does not "
                                "speak: give an http:// proxy (https:// endpoints are reached through it by CONNECT)")
    try:
        proxy_port = parts.port or 80
    except ValueError:
        return UnsupportedProxy(f"the proxy in {variable} has a bad port")
    if not parts.hostname:
        return UnsupportedProxy(f"the proxy in {variable} names no host")
    authorization = b""
    if parts.username is not None or parts.password is not None:
        authorization = f"Proxy-Authorization: {_basic(parts.username, parts.password)}\r\n".encode("latin-1")
    return Proxy(parts.hostname, proxy_port, authorization)


def no_proxy_names(no_proxy: str, host: str, port: int) -> bool:
    """Whether the list `no_proxy` (NO_PROXY's value: comma-separated) names `host` at `port`: `*` names every
    host; a name names itself and the names under it, with a leading `.` or `*.` or without (`example.com`,
    `.example.com` and `*.example.com` each name `api.example.com` and `example.com`); `name:port` and
    `[IPv6]:port` only at that port; an IPv6 address with or without brackets. Not CIDR ranges."""
    host = host.lower().strip("[]")
    for entry in no_proxy.split(","):
        entry = entry.strip().lower()
        if entry == "*":
            return True
        name, entry_port = entry, ""
        if entry.startswith("["):  # [IPv6] or [IPv6]:port
            name, _, rest = entry[1:].partition("]")
            entry_port = rest[1:] if rest[:1] == ":" else ""
        elif entry.count(":") == 1:  # name:port (more colons: an IPv6 address without brackets)
            name, _, entry_port = entry.partition(":")
        if entry_port and entry_port != str(port):
            continue
        name = name.removeprefix("*").lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


# -- connections --------------------------------------------------------------------------------------------


class PlainStream:
    """A TCP connection's socket (non-blocking), read and written with trio's I/O waits directly: a read that
    waits has its one schedule point in that wait (trio's SocketStream takes another after every read)."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def receive_some(self, max_bytes: int) -> bytes:
        sock = self.sock
        try:
            data = sock.recv(max_bytes)
        except BlockingIOError:
            pass
        else:
            await trio.lowlevel.checkpoint()
            return data
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(max_bytes)
            except BlockingIOError:
                continue

    async def send_all(self, data: bytes | memoryview) -> None:
        sock = self.sock
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        while view:
            try:
                view = view[sock.send(view):]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)

    def close(self) -> None:
        if self.sock.fileno() != -1:
            trio.lowlevel.notify_closing(self.sock)  # a wait on it in another task ends (ClosedResourceError)
            self.sock.close()


#: The private attribute of trio.SSLStream that holds bytes read off the socket and not yet decrypted (read by
#: `Connection.in_step`; an `ssl.MemoryBIO` in trio 0.35). A trio without it costs keep-alive over TLS, not
#: safety: such a connection is never lent again (tests/test_http11.py runs both ways).
TRIO_SSL_INCOMING = "_incoming"


class Connection:
    """One open connection to the server (or through the proxy): a stream (`PlainStream`, or trio's SSLStream
    over TCP), the bytes read past the last response, and the timing of the exchange under way (kept by the
    pool's watchdog)."""

    __slots__ = ("stream", "_close", "_fileno", "_receive", "buffer", "last", "deadline", "expired", "open")

    def __init__(self, stream: PlainStream | trio.abc.Stream, close: Callable[[], None], fileno: int) -> None:
        self.stream = stream
        self._close = close  # closes its socket at once
        self._fileno = fileno  # its TCP socket's
        # (SSLStream's reads are bytes; trio types any stream's as bytes | bytearray)
        self._receive = cast(Callable[[int], Awaitable[bytes]], stream.receive_some)
        self.buffer = b""
        self.last = 0.0  # when the exchange last got a byte (or started)
        self.deadline = math.inf  # the exchange's deadline, whatever comes
        self.expired: type[HTTPError] | None = None  # set by the watchdog when it closed the connection
        self.open = True

    def close(self) -> None:
        """Close at once (no TLS close_notify, nothing awaited): a wait on the socket in another task ends."""
        if self.open:
            self.open = False
            self._close()

    def in_step(self) -> bool:
        """Nothing has come since its last response ended (no byte, no EOF, no error): the next bytes it gives
        are the next request's response. A connection of which this is not true must be closed: its bytes would
        answer whoever asks next (a server's stray or second answer, another exchange's end)."""
        stream = self.stream
        if not isinstance(stream, PlainStream):
            # SSLStream: bytes already decrypted, or read off the socket with an earlier record and not yet
            # decrypted (its incoming buffer: trio's, private; without it, the connection is taken as not in step)
            incoming = getattr(stream, TRIO_SSL_INCOMING, None)
            if incoming is None or incoming.pending or stream.pending():
                return False
        poll = select.poll()
        poll.register(self._fileno, select.POLLIN | select.POLLPRI)
        return not poll.poll(0)  # readable (bytes or EOF), hung up or failed: not in step

    async def receive(self) -> bytes:
        """The next bytes read (b"" at EOF); `ReadTimeout`/`DeadlineReached` once the watchdog closed it,
        `ReadError` if the connection broke."""
        try:
            data = await self._receive(READ_SIZE)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._broken(exc, ReadError) from None
        self.last = trio.current_time()
        return data

    async def send(self, data: bytes) -> None:
        """Write `data`: a piece of READ_SIZE at a time, each one that goes out resetting the timeout."""
        try:
            if len(data) <= READ_SIZE:
                await self.stream.send_all(data)
            else:
                view = memoryview(data)
                for start in range(0, len(data), READ_SIZE):
                    await self.stream.send_all(view[start:start + READ_SIZE])
                    self.last = trio.current_time()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self.expired is ReadTimeout:  # the server took nothing for the timeout
                self.close()
                raise SendError("timed out") from None
            raise self._broken(exc, SendError) from None

    def _broken(self, exc: BaseException, kind: type[HTTPError]) -> HTTPError:
        self.close()
        if self.expired is not None:
            return self.expired(_expired_text(self.expired))
        return kind(_os_text(exc))


def _expired_text(kind: type[HTTPError]) -> str:
    return "timed out" if kind is ReadTimeout else "the deadline came"


def _os_text(exc: BaseException) -> str:
    """What failed, from an OSError or a trio stream error (its cause), without addresses."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:  # breadth first through causes and groups (trio's open_tcp_stream: one error per address tried)
        error = todo.pop(0)
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, OSError) and isinstance(error.errno, int) and error.errno > 0:
            return os.strerror(error.errno).lower()  # not its text: trio's names the address
        if isinstance(error, OSError) and error.strerror:  # e.g. socket.gaierror: no such host
            return error.strerror.lower()
        todo.extend(getattr(error, "exceptions", ()))
        todo.extend(e for e in (error.__cause__, error.__context__) if e is not None)
    text = str(exc)
    if isinstance(exc, trio.ClosedResourceError):
        return "the connection was closed"
    return text or type(exc).__name__


class Pool:
    """A client's open connections in one trio run: those idle (at most MAX_IDLE_CONNECTIONS, none longer
    than IDLE_CONNECTION_SECONDS, the last given back lent first), and those in an exchange, whose timeouts one
    watchdog task keeps: it closes a connection that got nothing for `timeout` seconds or whose exchange's
    deadline came, which ends the wait of its reader (`Connection.expired` says why). A read only notes when it
    came (no cancel scope per read)."""

    __slots__ = ("timeout", "_idle", "_some_idle", "_busy", "_wake", "_wake_at")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._idle: collections.deque[tuple[float, Connection]] = collections.deque()  # (since, connection)
        self._some_idle = trio.Event()
        self._busy: set[Connection] = set()
        self._wake = trio.Event()
        self._wake_at = math.inf
        trio.lowlevel.spawn_system_task(self._close_idle, name="agentcast http11 idle connections")
        trio.lowlevel.spawn_system_task(self._watch, name="agentcast http11 timeouts")

    # lending

    def take(self) -> Connection | None:
        """An idle connection (the last one given back) on which nothing came since its response ended, or
        None; those on which something came (an answer no request asked for, the server's close) are closed."""
        idle = self._idle
        since = trio.current_time() - IDLE_CONNECTION_SECONDS
        while idle and idle[0][0] <= since:
            idle.popleft()[1].close()
        while idle:
            conn = idle.pop()[1]
            if conn.open and conn.in_step():
                return conn
            conn.close()
        return None

    def give_back(self, conn: Connection) -> None:
        self._busy.discard(conn)
        if len(self._idle) < MAX_IDLE_CONNECTIONS and conn.open:
            self._idle.append((trio.current_time(), conn))
            self._some_idle.set()
        else:
            conn.close()

    async def _close_idle(self) -> None:
        """Close each idle connection once it has waited IDLE_CONNECTION_SECONDS, and those left when the trio
        run ends (system tasks are cancelled once the main task is done)."""
        idle = self._idle
        try:
            while True:
                if not idle:
                    self._some_idle = trio.Event()
                    await self._some_idle.wait()
                    continue
                await trio.sleep_until(idle[0][0] + IDLE_CONNECTION_SECONDS)
                since = trio.current_time() - IDLE_CONNECTION_SECONDS
                while idle and idle[0][0] <= since:
                    idle.popleft()[1].close()
        finally:
            while idle:
                idle.pop()[1].close()

    # timing

    def watch(self, conn: Connection, deadline: float) -> None:
        """Start timing an exchange on `conn`: `timeout` seconds for each wait, `deadline` for all of it."""
        conn.last = now = trio.current_time()
        conn.deadline = deadline
        conn.expired = None
        self._busy.add(conn)
        if min(now + self.timeout, deadline) < self._wake_at:
            self._wake.set()

    def unwatch(self, conn: Connection) -> None:
        self._busy.discard(conn)

    async def _watch(self) -> None:
        busy, timeout = self._busy, self.timeout
        try:
            while True:
                now = trio.current_time()
                due = math.inf
                for conn in list(busy):
                    idle_due = conn.last + timeout
                    if idle_due <= now or conn.deadline <= now:
                        busy.discard(conn)
                        conn.expired = ReadTimeout if idle_due <= now and idle_due <= conn.deadline else DeadlineReached
                        conn.close()
                    else:
                        due = min(due, idle_due, conn.deadline)
                self._wake_at = due
                self._wake = trio.Event()
                with trio.move_on_at(due):
                    await self._wake.wait()
        finally:
            for conn in busy:
                conn.close()


#: Per trio run: each client's pool.
_POOLS: trio.lowlevel.RunVar[dict[Client, Pool]] = trio.lowlevel.RunVar("agentcast_http11_pools")


# -- the client ---------------------------------------------------------------------------------------------


class Client:
    """POSTs to one URL, streaming the answers (`post`). Made once per endpoint (off the event loop: it reads
    the proxy settings of the environment); its connections are pooled per trio run.

    `url`: http:// or https://, its credentials sent as basic auth when no other Authorization is given;
    `timeout`: seconds for connecting, and for each wait for a byte after; `ssl_context`: for https://.
    """

    def __init__(self, url: str, *, timeout: float, ssl_context: ssl.SSLContext, user_agent: str) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        host = parts.hostname or ""
        try:
            host = host.encode("idna").decode("ascii") if not host.isascii() else host
        except UnicodeError:
            pass
        self.host = host
        self.port = parts.port or (443 if self.tls else 80)
        self.timeout = timeout
        self.ssl_context = ssl_context
        default_port = parts.port is None or parts.port == (443 if self.tls else 80)
        host_header = f"[{host}]" if ":" in host else host
        if not default_port:
            host_header += f":{self.port}"
        target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
        if parts.query:
            target += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
        self.proxy = proxy_from_environment(parts.scheme, host, self.port)
        proxy_header = b""
        if isinstance(self.proxy, Proxy) and not self.tls:  # through the proxy: the absolute URL, its credentials
            target = f"http://{host_header}{target}"
            proxy_header = self.proxy.authorization
        #: Sent when no other Authorization is: the URL's credentials.
        self.basic_auth = (f"Authorization: {_basic(parts.username, parts.password)}\r\n".encode("latin-1")
                           if parts.username is not None or parts.password is not None else b"")
        self._head = (f"POST {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {user_agent}\r\n"
                      "Accept-Encoding: identity\r\nContent-Type: application/json\r\n").encode("latin-1") + proxy_header
        authority = (f"[{host}]" if ":" in host else host) + f":{self.port}"
        self._connect_head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n".encode("latin-1")

    def pool(self) -> Pool:
        try:
            pools = _POOLS.get()
        except LookupError:
            pools = {}
            _POOLS.set(pools)
        pool = pools.get(self)
        if pool is None:
            pool = pools[self] = Pool(self.timeout)
        return pool

    async def post(self, headers: bytes, body: bytes, deadline: float) -> Response:
        """Send a POST of `body` (JSON) with `headers` (header lines, each ending in CRLF, after the client's
        own) and read its response's head; the body is read from the `Response` (which must be closed).
        `deadline` (trio time) bounds the whole exchange: `DeadlineReached` when it comes. A kept connection
        the server closed meanwhile (nothing of a response read) is replaced by a new one, once."""
        if isinstance(self.proxy, UnsupportedProxy):
            raise self.proxy
        request = b"%s%s%sContent-Length: %d\r\n\r\n%s" % (
            self._head, headers, b"" if b"Authorization:" in headers else self.basic_auth, len(body), body)
        pool = self.pool()
        conn = pool.take()
        while True:
            kept = conn is not None
            if conn is None:
                conn = await self._connect(deadline)
            pool.watch(conn, deadline)
            try:
                await conn.send(request)
                head = await self._read_head(conn, kept)
                if head.status == 407 and isinstance(self.proxy, Proxy):  # the proxy's, not the server's
                    raise ProxyError("the proxy answered HTTP 407 (its credentials are missing or refused)")
                return Response(pool, conn, head)  # ProtocolError, DecodingError for a framing or coding refused
            except _Stale:
                pool.unwatch(conn)
                conn.close()
                conn = None
                continue
            except BaseException:
                pool.unwatch(conn)
                conn.close()
                raise

    async def _read_head(self, conn: Connection, kept: bool) -> ResponseHead:
        """The response's head (1xx ones skipped); its body's first bytes stay in `conn.buffer`."""
        buffer, searched = conn.buffer, 0
        conn.buffer = b""
        stale = kept  # nothing came yet on a kept connection: the server may have closed it before the request
        interim = 0  # bytes of the 1xx responses so far
        while True:
            end, body_start = head_end(buffer, searched)
            if end > MAX_HEAD_BYTES or (end < 0 and len(buffer) > MAX_HEAD_BYTES):
                raise ProtocolError(f"a response head longer than {MAX_HEAD_BYTES} bytes")
            if end >= 0:
                head = ResponseHead.parse(buffer[:end])
                buffer = buffer[body_start:]
                if 100 <= head.status < 200:
                    if head.status == 101:
                        raise ProtocolError("the server switched protocols")
                    stale = False  # the server has the request: it is never sent again
                    interim += body_start
                    if interim > MAX_HEAD_BYTES:
                        raise ProtocolError(f"interim (1xx) responses longer than {MAX_HEAD_BYTES} bytes in all")
                    searched = 0
                    continue
                conn.buffer = buffer
                return head
            searched = max(0, len(buffer) - 3)
            try:
                data = await conn.receive()
            except ReadError:
                if stale and not buffer:
                    raise _Stale from None
                raise
            if not data:
                if stale and not buffer:
                    raise _Stale
                raise ProtocolError("the server closed the connection without sending a response"
                                    if not buffer else "the server closed the connection in the response's head")
            buffer += data

    async def _connect(self, deadline: float) -> Connection:
        now = trio.current_time()
        stage = ["connect"]
        with trio.move_on_at(min(now + self.timeout, deadline)):
            return await self._open(stage)
        if deadline <= now + self.timeout:
            raise DeadlineReached("the deadline came while connecting")
        if stage[0] == "tls":  # the server's (the proxy, if any, opened the tunnel)
            raise ConnectError(f"no TLS handshake within {self.timeout:g} s (timeout)")
        if isinstance(self.proxy, Proxy):
            raise ProxyError(f"no answer from the proxy within {self.timeout:g} s")
        raise ConnectError(f"no connection within {self.timeout:g} s (timeout)")

    async def _open(self, stage: list[str]) -> Connection:
        """A new connection; `stage[0]` becomes "tls" when the TLS handshake with the server starts."""
        proxy = self.proxy
        if isinstance(proxy, Proxy):
            try:
                tcp = await trio.open_tcp_stream(proxy.host, proxy.port)
            except OSError as exc:
                raise ProxyError(f"could not connect to the proxy: {_os_text(exc)}") from None
            except UnicodeError:  # a name the resolver cannot take (an empty label: "a..b")
                raise ProxyError("could not connect to the proxy: its host name is not valid") from None
        else:
            try:
                tcp = await trio.open_tcp_stream(self.host, self.port)
            except OSError as exc:
                raise ConnectError(_os_text(exc)) from None
            except UnicodeError:
                raise ConnectError(f"{self.host[:100]!r} is not a valid host name") from None
        try:
            if not self.tls:
                plain = PlainStream(socket.socket(fileno=tcp.socket.detach()))
                return Connection(plain, plain.close, plain.sock.fileno())
            if isinstance(proxy, Proxy):
                await self._tunnel(Connection(tcp, tcp.socket.close, tcp.socket.fileno()), proxy)
            stream = trio.SSLStream(tcp, self.ssl_context, server_hostname=self.host, https_compatible=True)
            stage[0] = "tls"
            try:
                await stream.do_handshake()
            except (trio.BrokenResourceError, OSError) as exc:
                raise ConnectError(f"TLS handshake failed: {_tls_text(exc)}") from None
            return Connection(stream, tcp.socket.close, tcp.socket.fileno())
        except BaseException:
            tcp.socket.close()
            raise

    async def _tunnel(self, conn: Connection, proxy: Proxy) -> None:
        """Ask the proxy for a tunnel to the server (CONNECT)."""
        try:
            await conn.send(self._connect_head + proxy.authorization + b"\r\n")
            head = await self._read_head(conn, kept=False)
        except HTTPError as exc:
            raise ProxyError(f"the proxy failed while opening the tunnel: {exc}") from None
        if not 200 <= head.status < 300:
            raise ProxyError(f"the proxy answered HTTP {head.status} to CONNECT")
        if conn.buffer:
            raise ProxyError("the proxy sent bytes before the tunnel was open")


def _tls_text(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        if isinstance(cause, OSError):
            return getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or str(cause)
        cause = cause.__cause__ or cause.__context__
    return _os_text(exc)


class _Stale(Exception):
    """A kept connection the server had closed: nothing of a response came (internal)."""


class Response:
    """A response whose head was read: `status`, `reason`, `headers` (lower-case names); its body by `read`
    (each call: what one socket read gave, decoded). Read to its end, its connection goes back to the pool;
    `close` (always call it) closes one that was not."""

    __slots__ = ("status", "reason", "headers", "_pool", "_conn", "_body", "_decoder", "_pending", "_reusable",
                 "complete")

    def __init__(self, pool: Pool, conn: Connection, head: ResponseHead) -> None:
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self._pool = pool
        self._conn = conn
        self._body = body_of(head)  # ProtocolError for a bad framing: `Client.post` closes the connection
        encoding = head.headers.get("content-encoding")
        self._decoder = (ContentDecoder(encoding) if encoding is not None and encoding.strip().lower()
                         not in ("", "identity") else None)
        self._pending = conn.buffer
        conn.buffer = b""
        headers = head.headers
        connection = headers.get("connection", "").lower()
        # both framings named: the server's and a proxy's idea of where the body ends may differ (RFC 9112 §6.3)
        self._reusable = (head.version == "HTTP/1.1" and "close" not in connection
                          and not isinstance(self._body, CloseBody)
                          and ("transfer-encoding" not in headers or "content-length" not in headers))
        #: The body was read to its end.
        self.complete = False
        if self._body.done and not self._pending and self._decoder is None:
            self._end(b"")

    async def read(self) -> bytes:
        """The body's next bytes (b"" once it has ended); `HTTPError` if the connection fails first."""
        decoder = self._decoder
        while True:
            if self.complete:
                return b""
            if decoder is not None and decoder.pending:
                await trio.lowlevel.checkpoint()  # no socket read, whose wait would be one, between these
                out = decoder.decode(b"")
                if out:
                    return out
                continue
            body = self._body
            if self._pending:
                data, self._pending = self._pending, b""
            elif body.done:
                self._end(b"")
                return decoder.flush() if decoder is not None else b""
            else:
                data = await self._conn.receive()
                if not data:
                    body.end()  # ProtocolError unless the connection's end is the body's
                    self._reusable = False
                    self._end(b"")
                    return decoder.flush() if decoder is not None else b""
            out, after = body.feed(data)
            if decoder is not None and out:
                out = decoder.decode(out)
            if body.done:
                if decoder is None or not decoder.pending:
                    self._end(after)
                    if decoder is not None:
                        out += decoder.flush()
                elif after:  # ended later, when the decoder is drained: with bytes of no response, not kept
                    self._reusable = False
            if out:
                return out

    def aiter_bytes(self) -> Response:
        """The rest of the body, read by read (for an error's body): the response is its own iterator."""
        return self

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read()
        if not data:
            raise StopAsyncIteration
        return data

    async def finish(self, max_bytes: int, wait: float) -> None:
        """Read on to the end of the body (so that the connection serves the next request) for at most `wait`
        seconds and `max_bytes`; past either, or if the connection fails, it is closed. Never raises an
        `HTTPError`."""
        if self.complete:
            return
        try:
            # a cancel scope, once a response at most: a deadline for the watchdog would wake it each turn
            with trio.move_on_after(wait):
                left = max_bytes
                while left > 0 and not self.complete:
                    left -= len(await self.read())
        except HTTPError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection unless the body was read to its end (then it was given back already)."""
        if not self.complete:
            self.complete = True
            self._pool.unwatch(self._conn)
            self._conn.close()

    def _end(self, after: bytes) -> None:
        self.complete = True
        conn = self._conn
        if self._reusable and not after:
            self._pool.give_back(conn)
        else:
            self._pool.unwatch(conn)
            conn.close()
