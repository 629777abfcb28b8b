"""The only code that touches trio-websocket and wsproto internals: batched writes, a reader that parses plain text
frames itself and hands each message over as it arrives, hanging up on a rejected handshake.

trio-websocket writes each message with its own `send_all`, which dominates its cost, hands each
received message through wsproto's frame parser and a channel to a second task, and keeps the
socket of a rejected handshake open until the client closes it. Its reader also drops TCP without a
close frame on a client's protocol violation, and aborts at a client's EOF so that nothing queued can
be written any more; this module's reader sends the close frame (1002, 1007) and, at an EOF, only
ends the input (the owner writes what it queued, then closes).

These fast paths use the private names of trio-websocket and wsproto listed in `TRIO_WEBSOCKET_INTERNALS`
and `WSPROTO_INTERNALS`, verified for the versions in `VERIFIED_VERSIONS` (pyproject pins the same ranges).
Whether they are used is decided once, at import (`FAST_PATHS`): off when the environment variable
`AGENTCAST_WS_FAST_PATHS` is 0, or when an installed version is outside its range or lacks one of the
names; then every function here falls back to trio-websocket's public API. The server logs the
decision when it starts (`log_fast_paths`). Imports nothing of the server but `_http.PrefixedStream`
and `protocol`.
"""
from __future__ import annotations

import collections
import functools
import logging
import math
import os
import struct
from collections.abc import Callable, Mapping, Sequence

import trio
import trio_websocket
import wsproto
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection, WebSocketRequest, wrap_server_stream
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from ._http import PrefixedStream
from .protocol import without_surrogates

logger = logging.getLogger("agentcast.transport")

_POSIX = os.name == "posix"  # os.write on a socket's descriptor

# -- the decision: fast paths, or trio-websocket's public API -------------------------------------

#: The environment variable that switches every fast path off at once (`0`), so that trio-websocket's
#: public API serves every connection, as where the internals differ. Read once, at import.
SWITCH = "AGENTCAST_WS_FAST_PATHS"

#: Every private name of trio-websocket this module uses, by the class that has it (tests/test_wsinternals.py
#: checks that the module uses no other).
TRIO_WEBSOCKET_INTERNALS: dict[str, tuple[str, ...]] = {
    "WebSocketConnection": (
        # the writer: batched writes, the direct socket write, abort
        "_wsproto", "_stream", "_stream_lock", "_close_reason", "_abort_web_socket",
        # take_messages
        "_send_channel", "_recv_channel",
        # serve_stream's reader (`_read`, a copy of trio-websocket's `_reader_task` that calls its handlers)
        "_get_request", "_close_stream", "_close_web_socket", "_send",
        "_handle_accept_connection_event", "_handle_message_event", "_handle_close_connection_event",
        "_handle_ping_event", "_handle_pong_event", "_handle_reject_connection_event",
        "_handle_reject_data_event", "_handle_request_event",
        "_reader_running", "_message_parts", "_message_size", "_max_message_size", "_close_handshake",
        "_receive_buffer_size",  # read with a default: 0.11 lacks it
        # drop_handshake_parser
        "_open_handshake", "_for_testing_peer_closed_connection",
    ),
    "WebSocketRequest": ("_connection",),  # reject: the socket to hang up
}

#: Every name of wsproto's internals this module uses: its private names, and the undocumented
#: attributes of its internal objects (the server's frame protocol, frame and message decoders, the
#: handshake's h11 state), by the class that has them.
WSPROTO_INTERNALS: dict[str, tuple[str, ...]] = {
    "WSConnection": ("connection", "handshake"),
    "Connection": ("_proto", "_events", "_state"),
    "FrameProtocol": ("client", "extensions", "_outbound_opcode", "_frame_decoder", "_message_decoder"),
    "FrameDecoder": ("header", "buffer"),
    "Buffer": ("buffer",),
    "MessageDecoder": ("opcode",),
    "H11Handshake": ("_h11_connection", "_events", "_initiating_request"),
}

#: The releases whose internals were read and tested with this module, [lowest, first excluded); the
#: same ranges as pyproject's pins (tests/test_wsinternals.py keeps them in step).
VERIFIED_VERSIONS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "trio-websocket": ((0, 11), (0, 13)),
    "wsproto": ((1, 2), (1, 4)),
}


def _release(version: str) -> tuple[int, ...]:
    """The leading numbers of a version string: "0.12.2" and "0.12.2.dev1" are (0, 12, 2)."""
    numbers = []
    for part in version.split("."):
        digits = part[:len(part) - len(part.lstrip("0123456789"))]
        if not digits:
            break
        numbers.append(int(digits))
        if digits != part:
            break
    return tuple(numbers)


def _dotted(release: tuple[int, ...]) -> str:
    return ".".join(map(str, release))


_READ_WITH_A_DEFAULT = frozenset({"_receive_buffer_size"})

_PROBE_REQUEST = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def _missing_internal(versions: dict[str, str]) -> str | None:
    """Why the installed trio-websocket and wsproto cannot take the fast paths ("trio-websocket 0.13.0 is not in
    the verified range >=0.11,<0.13", "wsproto 1.4.0 lacks FrameProtocol._frame_decoder"), or None. The names are
    looked for on the objects of a server connection just accepted (most are set in `__init__`)."""
    for package, version in versions.items():
        low, high = VERIFIED_VERSIONS[package]
        if not low <= _release(version) < high:
            return f"{package} {version} is not in the verified range >={_dotted(low)},<{_dotted(high)}"
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(_PROBE_REQUEST)
    request = next(iter(server.events()), None)
    if not isinstance(request, Request):
        return f"wsproto {versions['wsproto']} does not parse a handshake request as before"
    server.send(AcceptConnection())
    # (the stream is only kept by __init__; the probe never reads or writes)
    ws = WebSocketConnection(None, server, message_queue_size=1, max_message_size=1)  # type: ignore[arg-type]
    found: dict[str, object] = {"WSConnection": server, "WebSocketConnection": ws}
    try:
        found["WebSocketRequest"] = WebSocketRequest(ws, request)
    except TypeError:
        return f"trio-websocket {versions['trio-websocket']}: WebSocketRequest(connection, event) differs"
    path = (("Connection", "WSConnection", "connection"), ("FrameProtocol", "Connection", "_proto"),
            ("FrameDecoder", "FrameProtocol", "_frame_decoder"), ("Buffer", "FrameDecoder", "buffer"),
            ("MessageDecoder", "FrameProtocol", "_message_decoder"), ("H11Handshake", "WSConnection", "handshake"))
    for cls, owner, name in path:
        found[cls] = getattr(found[owner], name, None)
    for package, internals in (("trio-websocket", TRIO_WEBSOCKET_INTERNALS), ("wsproto", WSPROTO_INTERNALS)):
        for cls, names in internals.items():
            for name in names:
                if name in _READ_WITH_A_DEFAULT:
                    continue
                if found[cls] is None or not hasattr(found[cls], name):
                    return f"{package} {versions[package]} lacks {cls}.{name}"
    if type(found["Buffer"].buffer) is not bytearray or type(found["H11Handshake"]._events) is not collections.deque:
        return f"wsproto {versions['wsproto']}: its frame buffer or handshake events differ"
    if not (isinstance(ws._send_channel, trio.MemorySendChannel) and isinstance(ws._recv_channel, trio.MemoryReceiveChannel)
            and isinstance(ws._stream_lock, trio.StrictFIFOLock)):
        return f"trio-websocket {versions['trio-websocket']}: its message channel or stream lock differ"
    return None


def _decide(environ: Mapping[str, str]) -> tuple[bool, str, int]:
    """Whether to take the fast paths; the start log's line saying so and why, and its level (a warning when
    they are off for want of the internals, or the switch's value is not understood)."""
    versions = {"trio-websocket": getattr(trio_websocket, "__version__", "?"),
                "wsproto": getattr(wsproto, "__version__", "?")}
    installed = f"trio-websocket {versions['trio-websocket']}, wsproto {versions['wsproto']}"
    off = "websocket fast paths off ({}): trio-websocket's public API only (" + installed + ")"
    setting = (environ.get(SWITCH) or "").strip()
    if setting == "0":
        return False, off.format(f"{SWITCH}=0"), logging.INFO
    try:
        missing = _missing_internal(versions)
    except Exception as exc:  # pragma: no cover - a version that fails otherwise: the public API is safe
        missing = f"looking for the internals failed: {exc!r}"
    if missing is not None:
        return False, off.format(missing), logging.WARNING
    if setting not in ("", "1"):
        return True, (f"websocket fast paths on ({installed}); {SWITCH}={setting!r} ignored: "
                      "0 switches them off, 1 or unset leaves them on"), logging.WARNING
    return True, f"websocket fast paths on ({installed})", logging.INFO


#: Whether this process takes the fast paths (else trio-websocket's public API only): decided once, at import.
FAST_PATHS, FAST_PATHS_LINE, _LINE_LEVEL = _decide(os.environ)


def log_fast_paths() -> None:
    """Log which path serves the connections, and why (at the server's start)."""
    logger.log(_LINE_LEVEL, "%s", FAST_PATHS_LINE)


_SHORT = struct.Struct("!BB").pack
_MEDIUM = struct.Struct("!BBH").pack
_LONG = struct.Struct("!BBQ").pack


def plain_framing(ws: WebSocketConnection) -> bool:
    """True when a text message to `ws` is one plain frame that `send_text_batch` may build itself
    (FIN + text opcode, the length, the UTF-8 payload: RFC 6455 5.2), the bytes wsproto would make:
    wsproto's server side, connection open, no extension (trio-websocket negotiates none), not in the
    middle of a fragmented message. Building it here skips wsproto's per-frame event and bytearray work."""
    conn = getattr(ws._wsproto, "connection", None)
    proto = getattr(conn, "_proto", None)
    return (
        proto is not None
        and conn.state is ConnectionState.OPEN
        and getattr(proto, "client", True) is False
        and getattr(proto, "extensions", None) == []
        and getattr(proto, "_outbound_opcode", 0) is None
    )


#: Most bytes written while holding the stream lock: a ping (the heartbeat) waits at most one piece.
WRITE_PIECE = 64 * 1024


async def send_text_batch(ws: WebSocketConnection, texts: Sequence[str | bytes]) -> None:
    """Send `texts` as consecutive text messages, in as few `send_all`s as possible (pieces of
    about WRITE_PIECE bytes, whole messages, so that control frames can go between them). A text
    given as bytes must be UTF-8 (`protocol.encode_utf8`): it is sent as it is.

    Raises `ConnectionClosed` like `send_message` does. Cancelled midway, the stream may hold
    part of a message: then call `abort`, nothing more may be written to it.
    """
    if not FAST_PATHS:  # one send_message, and so one socket write, per message
        for text in texts:
            if type(text) is bytes:
                text = text.decode("utf-8")
            try:
                await ws.send_message(text)
            except UnicodeEncodeError:  # raised by wsproto before it sends anything
                await ws.send_message(without_surrogates(text))
        return
    if ws._close_reason:
        raise ConnectionClosed(ws._close_reason)
    piece: list[bytes] = []
    size = 0
    stream = ws._stream
    if stream.plain() if type(stream) is DirectStream else plain_framing(ws):
        for text in texts:
            if type(text) is bytes:
                payload = text
            else:
                try:
                    payload = text.encode("utf-8")
                except UnicodeEncodeError:
                    payload = without_surrogates(text).encode("utf-8")
            n = len(payload)
            piece.append(_text_header(n))
            piece.append(payload)
            size += n
            if size >= WRITE_PIECE:
                await _write(ws, b"".join(piece))
                piece, size = [], 0
    else:
        for text in texts:
            if type(text) is bytes:
                text = text.decode("utf-8")
            try:
                data = ws._wsproto.send(TextMessage(data=text))
            except UnicodeEncodeError:
                data = ws._wsproto.send(TextMessage(data=without_surrogates(text)))
            piece.append(data)
            size += len(data)
            if size >= WRITE_PIECE:
                await _write(ws, b"".join(piece))
                piece, size = [], 0
    if piece:
        await _write(ws, b"".join(piece))
    elif type(ws._stream) is DirectStream and ws._stream.rest:  # a direct write's rest: written now
        await _write(ws, b"")


def _text_header(n: int) -> bytes:
    """The header of a server's (unmasked) text frame of `n` bytes, FIN set (RFC 6455 5.2)."""
    return _SHORT(0x81, n) if n < 126 else _MEDIUM(0x81, 126, n) if n < 65536 else _LONG(0x81, 127, n)


def _socket_fd(stream: object) -> int:
    """The file descriptor of the TCP socket under `stream` when writing to it writes to that socket
    as is (a `trio.SocketStream`, or the `PrefixedStream` over one that the server hands trio-websocket:
    it sends straight through; a `DirectStream` keeping no rest); -1 otherwise (TLS, test streams, a
    socket that sent EOF or is closed, a `DirectStream` keeping a rest: that goes first, under the lock)."""
    if type(stream) is DirectStream:
        return stream.fd()
    if type(stream) is PrefixedStream:
        stream = stream.stream
    if not _POSIX or type(stream) is not trio.SocketStream or stream.socket.did_shutdown_SHUT_WR:
        return -1
    return stream.socket.fileno()


async def _write(ws: WebSocketConnection, data: bytes) -> None:
    if ws._close_reason:
        raise ConnectionClosed(ws._close_reason)
    lock = ws._stream_lock
    fd = -1 if lock.locked() else _socket_fd(ws._stream)
    if fd >= 0:
        # Fast path: nobody else is writing, so write to the (non-blocking) socket now; only what the
        # socket does not take goes the usual way, under the stream lock. This saves the two trips
        # through the scheduler (lock, socket) of every write; the writer still checkpoints when it
        # next waits for frames. Until something awaits, no other task runs: the lock is taken only then.
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:  # reset or broken pipe: as SocketStream.send_all would report it
            lock.acquire_nowait()
            try:
                await ws._abort_web_socket()
            finally:
                lock.release()
            raise ConnectionClosed(ws._close_reason) from None
        if sent == len(data):
            return
        lock.acquire_nowait()
        try:
            await ws._stream.send_all(memoryview(data)[sent:])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise ConnectionClosed(ws._close_reason) from None
        finally:
            lock.release()
        return
    async with lock:
        try:
            await ws._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise ConnectionClosed(ws._close_reason) from None


class DirectStream(trio.abc.HalfCloseableStream):
    """The stream a connection with a direct writer (`direct_writer`) hands trio-websocket in place of its
    own: it sends through to the TCP socket under it, but first the `rest` of a frame that `write_now`
    wrote only in part (the kernel took the rest of it later: every later write, a control frame's too,
    goes after it). Keeps the socket and what is fixed for the connection's life (plain framing, checked
    once), so that a frame's write checks only what can change."""

    __slots__ = ("stream", "socket", "rest", "ws", "plain_known")

    def __init__(self, ws: WebSocketConnection, stream: trio.abc.Stream, socket: trio.socket.SocketType) -> None:
        self.ws = ws
        self.stream = stream
        self.socket = socket
        #: Bytes of a frame that `write_now` began and the socket did not take: written before anything else.
        self.rest = b""
        self.plain_known: bool | None = None  # what `plain_framing` says of the connection, once it is open

    def fd(self) -> int:
        """The socket's descriptor while the socket can be written to directly and no rest is kept; else -1."""
        if self.rest or self.socket.did_shutdown_SHUT_WR:
            return -1
        return self.socket.fileno()  # -1 once closed (never a descriptor reused since)

    def plain(self) -> bool:
        """`plain_framing(ws)`, its fixed parts checked once: then only whether the connection is open."""
        plain = self.plain_known
        if plain is None:
            plain = plain_framing(self.ws)
            if plain:
                self.plain_known = True
            return plain
        return self.ws._wsproto.connection.state is ConnectionState.OPEN

    def can_write_now(self) -> bool:
        """True if a frame may be written to the socket at once (`write_now`, `write_batch_now`): nothing else is
        being written or kept, the connection is open, its framing plain and its socket open for writing."""
        ws = self.ws
        return not (self.rest or ws._close_reason or ws._stream_lock.locked()) and self.plain() and self.fd() >= 0

    def write_now(self, payload: bytes) -> int:
        """Write `payload` (UTF-8) as a text frame to the socket at once, without waiting, if nothing else is
        being written or kept (the caller knows nothing of its own is queued). Returns how many bytes the
        socket did not take (kept in `rest`, for the next write under the stream lock to write first), or -1
        if nothing was written (then queue the frame as usual: a write is under way, the connection is closing
        or not plain, or the socket takes nothing now or failed: the writer's own write will report that)."""
        if not self.can_write_now():
            return -1
        data = _text_header(len(payload)) + payload
        try:
            sent = os.write(self.socket.fileno(), data)
        except OSError:  # full (BlockingIOError), reset, broken pipe
            return -1
        if sent == len(data):
            return 0
        self.rest = data[sent:]
        return len(self.rest)

    def write_batch_now(self, payloads: Sequence[bytes]) -> int:
        """Write `payloads` (UTF-8) as consecutive text frames to the socket in one write, at once; call it only
        when `can_write_now()` (nothing may run between). Returns how many bytes the socket did not take: kept
        in `rest`, as by `write_now`; all of them if it took nothing or failed (the next write, the writer's,
        then reports a failure)."""
        data = b"".join([_text_header(len(payload)) + payload for payload in payloads])
        try:
            sent = os.write(self.socket.fileno(), data)
        except OSError:  # full (BlockingIOError), reset, broken pipe
            sent = 0
        if sent == len(data):
            return 0
        self.rest = data[sent:]
        return len(self.rest)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        rest = self.rest
        if rest:
            self.rest = b""  # (if this send is cut short, the stream is cut mid-frame either way)
            data = rest + bytes(data)
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        send_eof = getattr(self.stream, "send_eof", None)
        if send_eof is None:  # pragma: no cover - a socket stream has it
            raise trio.ClosedResourceError("this stream cannot half-close")
        await send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()

    def __repr__(self) -> str:
        return repr(self.stream)  # trio-websocket's `remote` of a stream it does not know


def direct_writer(ws: WebSocketConnection) -> DirectStream | None:
    """Put a `DirectStream` under `ws` (an accepted server connection) and return it, where frames can be
    written to its TCP socket directly (the fast paths are on; the stream is a socket's, or the server's
    `PrefixedStream` over one); else None (and `ws` is left as it is). Call it before anything is written
    but the handshake's answer."""
    if not FAST_PATHS:
        return None
    stream = ws._stream
    inner = stream.stream if type(stream) is PrefixedStream else stream
    if not _POSIX or type(inner) is not trio.SocketStream or ws._stream_lock.locked():
        return None
    direct = DirectStream(ws, stream, inner.socket)
    ws._stream = direct
    return direct


async def abort(ws: WebSocketConnection) -> None:
    """Drop the connection without a close frame: after a cut-off write, one would corrupt the stream. Without
    the fast paths, nothing: trio-websocket's public API cannot drop TCP, which the server's handler of the
    connection then closes when it ends (`Server._serve_connection`)."""
    if FAST_PATHS:
        await trio.aclose_forcefully(ws._stream)
        if not ws._close_reason:
            await ws._abort_web_socket()


async def reject(request: WebSocketRequest, status: int, body: bytes, extra_headers=None) -> None:
    """Refuse a handshake with an HTTP `status`, then close the socket (without waiting for the client)."""
    await request.reject(status, extra_headers=extra_headers, body=body)
    if not FAST_PATHS:  # the socket stays open until the client closes it, or its handler ends
        return
    stream = getattr(getattr(request, "_connection", None), "_stream", None)
    if stream is not None:
        await trio.aclose_forcefully(stream)


#: An Event that is set and stays set: shared by the connections for the events of theirs that are
#: set once the handshake is accepted and only ever set again or waited on after that.
_ALREADY_SET = trio.Event()
_ALREADY_SET.set()


def drop_handshake_parser(ws: WebSocketConnection) -> None:
    """Free what the handshake used and an accepted connection never uses again (memory per open
    connection, bench/idle.py): wsproto's HTTP/1.1 parser (h11, about 1.5 KiB), its handshake event
    queue (once the WebSocket is open wsproto routes all data to its frame protocol) and the handshake
    request it keeps; trio-websocket's open-handshake Event (set at the accept, only waited on by a
    client's connect) and its testing hook Event, for one shared Event that is already set.
    Does nothing without the fast paths."""
    if not FAST_PATHS:
        return
    wsproto = getattr(ws, "_wsproto", None)
    handshake = getattr(wsproto, "handshake", None)
    if getattr(wsproto, "connection", None) is None:
        return
    if hasattr(handshake, "_h11_connection"):
        handshake._h11_connection = None
    events = getattr(handshake, "_events", None)
    if type(events) is collections.deque and not events:
        handshake._events = ()  # `events()` reads it while truthy; nothing appends once the handshake is done
    if hasattr(handshake, "_initiating_request"):
        handshake._initiating_request = None
    for name in ("_open_handshake", "_for_testing_peer_closed_connection"):
        event = getattr(ws, name, None)
        if type(event) is trio.Event and (name == "_for_testing_peer_closed_connection" or event.is_set()):
            if not event.statistics().tasks_waiting:
                setattr(ws, name, _ALREADY_SET)


class _MessageSink:
    """Stands in for a `WebSocketConnection`'s message channel (`_send_channel`): the reader task's
    `send(message)` hands each message to `take` at once, instead of queueing it for another task to
    `get_message` (a task wakeup and a channel trip less per message). `aclose` closes the real
    channel, so `get_message` still ends (ConnectionClosed) when the connection does."""

    __slots__ = ("take", "channel", "ws")

    def __init__(self, take: Callable[[str | bytes], None], channel: trio.MemorySendChannel,
                 ws: WebSocketConnection) -> None:
        self.take = take
        self.channel = channel
        self.ws = ws

    def deliver(self, message: str | bytes) -> None:
        """Hand `message` to `take`, unless the connection is closing (as trio-websocket drops a message
        once it has closed its channel, e.g. one after a too-big message). Never raises: this runs in
        the connection's reader task, and an exception there would end the connection's handler."""
        if self.ws._close_reason is None:
            self.hand(message)

    def hand(self, message: str | bytes) -> None:
        try:
            self.take(message)
        except Exception:  # pragma: no cover - take handles its own errors; this is the net
            logger.exception("failed to handle a received message")

    async def send(self, message: str | bytes) -> None:  # no checkpoint: the reader goes on reading
        self.deliver(message)

    async def aclose(self) -> None:
        await self.channel.aclose()


def take_messages(ws: WebSocketConnection, take: Callable[[str | bytes], None]) -> bool:
    """From now on, call `take(message)` (synchronous, must not raise) in `ws`'s reader task for each
    message received, the ones already queued first (now). `get_message` then returns nothing more; it
    raises ConnectionClosed once the connection has ended. False (and nothing done) where trio-websocket's
    internals differ (`FAST_PATHS`): then receive with `get_message` as usual."""
    if not FAST_PATHS:
        return False
    channel = getattr(ws, "_send_channel", None)
    receive = getattr(ws, "_recv_channel", None)
    if type(channel) is _MessageSink:
        raise RuntimeError("messages are already taken")
    if (not isinstance(channel, trio.MemorySendChannel) or not isinstance(receive, trio.MemoryReceiveChannel)
            or not hasattr(ws, "_close_reason")):
        return False  # pragma: no cover - another trio-websocket version
    sink = _MessageSink(take, channel, ws)
    queued = []
    while True:  # what the reader queued before now (a sender blocked on a full queue included)
        try:
            queued.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break
    ws._send_channel = sink  # no checkpoint since the queue was emptied: the reader has not run
    for message in queued:  # even if the client has closed since: get_message would have returned them
        sink.hand(message)
    return True


# -- receiving -----------------------------------------------------------------------------------

async def serve_stream(
    nursery: trio.Nursery, stream: trio.abc.Stream, *, message_queue_size: int, max_message_size: int,
    input_rate: int = 0, input_burst: int = 0,
) -> WebSocketRequest:
    """`trio_websocket.wrap_server_stream`, with this module's reader task (`_read`) in place of
    trio-websocket's: the same handling of every event (handshake, ping, pong, close), but a plain text
    frame (the client's usual message) is parsed here, without wsproto; a protocol violation gets its close
    frame (`_handle_close`) and a client's EOF ends only the input (`_end_input`); and the connection's
    input is paced (`InputPace`: `input_rate` bytes a second with bursts of `input_burst`; 0: unpaced).
    Where the internals differ (`FAST_PATHS`), it is `wrap_server_stream` itself (unpaced)."""
    if not FAST_PATHS:
        return await wrap_server_stream(
            nursery, stream, message_queue_size=message_queue_size, max_message_size=max_message_size
        )
    ws = WebSocketConnection(stream, WSConnection(ConnectionType.SERVER), message_queue_size=message_queue_size,
                             max_message_size=max_message_size)
    nursery.start_soon(_read, ws, InputPace(input_rate, input_burst))
    return await ws._get_request()


class _Frames:
    """Where a connection's wsproto stands between frames, to tell when a frame may be parsed here:
    the connection is open, wsproto holds no part of a frame or of a fragmented message, and no
    event waits to be handed out. Then wsproto's state is the same whether it or `parse_text_frames`
    takes the next complete frames."""

    __slots__ = ("connection", "decoder", "messages", "ws")

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.connection = ws._wsproto.connection
        proto = self.connection._proto
        self.decoder = proto._frame_decoder
        self.messages = proto._message_decoder

    @staticmethod
    def of(ws: WebSocketConnection) -> _Frames | None:
        """For `ws` once open, or None where wsproto differs (or uses an extension, or is a client)."""
        try:
            frames = _Frames(ws)
            proto = frames.connection._proto
            ok = (proto.client is False and proto.extensions == [] and type(frames.decoder.buffer.buffer) is bytearray
                  and hasattr(frames.decoder, "header") and hasattr(frames.messages, "opcode")
                  and hasattr(frames.connection, "_events") and hasattr(frames.connection, "_state"))
        except AttributeError:  # pragma: no cover - another wsproto version
            return None
        return frames if ok else None

    def between_frames(self) -> bool:
        return (
            self.connection._state is ConnectionState.OPEN
            and self.decoder.header is None
            and not self.decoder.buffer.buffer  # wsproto's received bytes not yet parsed
            and self.messages.opcode is None
            and not self.connection._events
            and not self.ws._message_parts
        )


def parse_text_frames(data: bytes, max_bytes: int) -> tuple[list[str], int]:
    """The text messages of the complete frames at the start of `data` that are each a whole, valid,
    masked, plain text message (RFC 6455 5.2: FIN set, no RSV bit, opcode 1, the length in the fewest
    bytes, valid UTF-8) of at most `max_bytes` bytes; and the offset of the first byte not taken
    (a frame of any other kind, one not complete in `data`, or a bigger one: for wsproto)."""
    texts: list[str] = []
    start, end = 0, len(data)
    while end - start >= 6:  # the shortest masked frame: 2 header bytes, the 4-byte key
        if data[start] != 0x81:  # FIN + text, no RSV bit
            break
        n = data[start + 1] ^ 0x80  # the mask bit must be set
        if n >= 126:  # 126: a 16-bit length follows, 127: a 64-bit one; above 127: not masked
            if n == 126:
                if end - start < 8:
                    break
                n = (data[start + 2] << 8) | data[start + 3]
                if n < 126:
                    break  # a length in more bytes than needed: wsproto fails the connection (1002)
                key = start + 4
            elif n == 127:
                if end - start < 14:
                    break
                n = int.from_bytes(data[start + 2:start + 10], "big")
                if n < 65536 or n >> 63:
                    break
                key = start + 10
            else:
                break
        else:
            key = start + 2
        stop = key + 4 + n
        if stop > end or n > max_bytes:  # incomplete, or too big (wsproto's way then closes with 1009)
            break
        if n:
            # Unmask: XOR with the 4-byte key repeated, as one integer (little-endian, so the key's
            # repetition lines up from the first byte whatever the length).
            mask = int.from_bytes((data[key:key + 4] * ((n + 3) >> 2))[:n], "little")
            payload = (int.from_bytes(data[key + 4:stop], "little") ^ mask).to_bytes(n, "little")
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                break  # wsproto fails the connection with 1007
        else:
            text = ""
        texts.append(text)
        start = stop
    return texts, start


def _starts_small_text_frame(data: bytes, max_bytes: int, size: int) -> bool:
    """Whether `data` is the start, not yet complete, of a frame that `parse_text_frames` may take once it is
    (FIN + text, masked, at most `max_bytes`), whose whole is at most `size` bytes; or of its header."""
    end = len(data)
    if end >= size or data[0] != 0x81:
        return False
    if end < 2:
        return True
    n = data[1] ^ 0x80
    if n > 127:  # not masked: wsproto fails the connection
        return False
    if n == 126:
        if end < 4:
            return True
        n = (data[2] << 8) | data[3]
        if n < 126:
            return False
        head = 8
    elif n == 127:  # 64 KiB or more: never small
        return False
    else:
        head = 6
    return n <= max_bytes and end < head + n <= size  # not complete (a complete one was refused)


async def _receive(sock: trio.socket.SocketType, size: int) -> bytes:
    """`SocketStream.receive_some` for a plain TCP socket, with one trip through the scheduler (wait
    until readable, then read) instead of two (try, wait, read, then a checkpoint after the read)."""
    while True:
        fd = sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the socket was closed")
        await trio.lowlevel.wait_readable(fd)  # the checkpoint; raises ClosedResourceError if closed meanwhile
        if sock.fileno() != fd:  # closed after the wake-up, before this task ran: `fd` may be another socket's now
            raise trio.ClosedResourceError("the socket was closed")
        try:
            return os.read(fd, size)
        except BlockingIOError:
            continue  # woken for nothing
        except OSError as exc:  # reset by the client: as SocketStream.receive_some reports it
            raise trio.BrokenResourceError(exc) from exc


#: What each frame the reader handles costs beyond its bytes, in the units of `InputPace` (bytes): the work
#: of a frame whatever its size (parsing, handling, an answer), so that a flood of tiny frames cannot take
#: more of the event loop than one of large ones. A plain text frame that `parse_text_frames` takes costs
#: FRAME_COST; any other frame (control frames, fragments, binary, a large frame's parts as reads bring
#: them: what wsproto parses, about twice the work) costs WSPROTO_FRAME_COST, once per part.
FRAME_COST = 256
WSPROTO_FRAME_COST = 2 * FRAME_COST

#: Work (bytes and frames, counted as by `InputPace`) that the reader does before it lets the other tasks
#: run: a read of 4 KiB can hold hundreds of tiny frames, each handled at once, in this task.
PASS_WORK = 8 * 1024


class InputPace:
    """How fast one connection's reader may take its client's input: a token bucket that fills at `rate`
    bytes a second up to `burst` (full at the start). Each read spends its bytes, each frame handled
    `FRAME_COST` or `WSPROTO_FRAME_COST` more. Once the bucket is empty the reader handles nothing more and
    reads nothing until it has refilled: the client's bytes wait in the kernel, TCP's window closes, and the
    client's sends block (nothing is dropped, no error is sent). With `rate` 0 the input is not paced.

    Whatever the rate, the reader lets the other tasks run after `PASS_WORK` of work (`due`, `wait`), so a
    connection's turn on the event loop is bounded however much it has sent."""

    __slots__ = ("rate", "burst", "tokens", "at", "spent", "work")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        #: The bucket as of trio time `at` (negative once more was spent than it held)...
        self.tokens = float(burst) if rate else math.inf
        self.at = trio.current_time()
        #: ... and what was spent since, counted in at the next `refill`: one every PASS_WORK spent, or when
        #: the spending passes what the bucket held (it may have refilled since), not one a read.
        self.spent = 0
        #: Work since the reader last let the other tasks run.
        self.work = 0

    def received(self, size: int) -> None:
        """`size` bytes were read: the reader waits for the socket before each read, letting the other tasks run."""
        self.work = size
        if self.rate:
            self.spent += size
            if self.spent >= PASS_WORK:
                self.refill()

    def frame(self, cost: int = FRAME_COST) -> None:
        """A frame (or a part of one) is about to be handled: `cost` more (FRAME_COST or WSPROTO_FRAME_COST)."""
        self.work += cost
        self.spent += cost

    @property
    def due(self) -> bool:
        """Whether the reader must `wait` before it does more: its pass is used up, or maybe its budget."""
        return self.work >= PASS_WORK or self.spent > self.tokens

    async def wait(self) -> None:
        """Let the other tasks run; and once the budget is spent, sleep until it holds a pass of work again
        (`PASS_WORK`, or the whole `burst` if smaller): one sleep per pass, not one per frame."""
        self.work = 0
        if not self.rate:
            self.spent = 0  # frames counted for nothing
        elif self.spent > self.tokens:
            self.refill()
            if self.tokens < 0:
                await trio.sleep((min(PASS_WORK, self.burst) - self.tokens) / self.rate)
                self.refill()
                return
        await trio.lowlevel.checkpoint()

    def refill(self) -> None:
        """Add what the bucket has gained since it was last counted, then take what was spent meanwhile (all
        of it as if spent now: at most PASS_WORK and a read more strictly than a bucket counted each read)."""
        now = trio.current_time()
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate) - self.spent
        self.at = now
        self.spent = 0


#: Parts of a fragmented message kept apart before `_read` joins them (see there).
_MAX_PARTS = 64

#: The events that `_read` drops once the connection is closing (see there).
_CROSSING = (Ping, TextMessage, BytesMessage)


def _end_input(ws: WebSocketConnection) -> None:
    """The client sent EOF while the WebSocket is open: it closed TCP, or only its sending half and may still
    read. trio-websocket aborts there (1006), after which nothing more is written, so the answers to the last
    commands, queued but not written yet, would be lost. Here only the input ends: the reader stops, the message
    channel ends (`get_message` raises ConnectionClosed while `ws.closed` is still None), and the owner writes
    what it has queued, then ends the connection (`abort`, or `aclose`: a close frame then waits for no answer)."""
    ws._reader_running = False
    ws._close_handshake.set()  # no close frame can come from the client any more


#: The reason sent in a close frame is at most 123 bytes (RFC 6455 5.5: a control frame's payload is at most 125).
_MAX_CLOSE_REASON = 123


async def _handle_close(ws: WebSocketConnection, event: CloseConnection) -> None:
    """trio-websocket's `_handle_close_connection_event`, except for a protocol violation: wsproto reports one
    (an unmasked frame, RSV bits, a bad opcode, invalid UTF-8, a bad close code...) as a CloseConnection of code
    1002 or 1007 while the connection is still OPEN (a close frame received has made it REMOTE_CLOSING), and
    trio-websocket then drops TCP without a close frame. RFC 6455 7.1.7: the endpoint that fails the connection
    SHOULD send a close frame with the code first; it is sent here, then TCP is closed (a server closes first)."""
    if ws._wsproto.state is not ConnectionState.OPEN:
        await ws._handle_close_connection_event(event)
        return
    ws._close_reason = CloseReason(event.code, event.reason or None)  # writers stop (ConnectionClosed) from here
    reason = (event.reason or "").encode("utf-8")[:_MAX_CLOSE_REASON].decode("utf-8", "ignore")
    try:
        await ws._send(CloseConnection(code=event.code, reason=reason))
    except ConnectionClosed:  # the client is gone: nothing to tell it
        pass
    await ws._close_web_socket(event.code, event.reason or None)
    ws._close_handshake.set()
    await ws._close_stream()


async def _read(ws: WebSocketConnection, pace: InputPace) -> None:
    """trio-websocket's `_reader_task` (0.12.2) for a server connection, but once the connection is
    open, bytes that begin with complete plain text frames (`parse_text_frames`) while wsproto stands
    between frames skip wsproto: their messages go to the message channel (or the `take_messages`
    sink) as wsproto's would. Everything else (the handshake, control frames, fragments, partial
    frames, binary, invalid or too-big messages) goes through wsproto and trio-websocket's own
    handlers, as in `_reader_task`, except a protocol violation (`_handle_close`) and the client's EOF
    while the connection is open (`_end_input`); and a text message's size is counted in UTF-8 bytes, as it
    came, where trio-websocket counts the characters wsproto decoded (`max_message_size` is bytes either way).
    Its input is paced by `pace`: it waits before a read or a frame while `pace.due`."""

    async def handle_text_message(event: TextMessage) -> None:
        data = event.data
        if not data.isascii():  # trio-websocket adds len(data): the bytes beyond one a character first
            ws._message_size += len(data.encode("utf-8")) - len(data)
        await handle_message(event)

    async def handle_message(event: TextMessage | BytesMessage) -> None:
        # trio-websocket keeps a fragmented message's parts in a list until its last: an empty part adds
        # nothing to it but a slot, and tiny parts a slot and an object each, so a client could make it
        # grow without end or to many times the message's size. Empty parts are skipped; many parts joined.
        if not event.data and not event.message_finished:
            return
        parts = ws._message_parts
        if len(parts) >= _MAX_PARTS:
            ws._message_parts = ["".join(parts) if type(event) is TextMessage else b"".join(parts)]
        await ws._handle_message_event(event)

    handlers = {
        AcceptConnection: ws._handle_accept_connection_event,
        BytesMessage: handle_message,
        CloseConnection: functools.partial(_handle_close, ws),
        Ping: ws._handle_ping_event,
        Pong: ws._handle_pong_event,
        RejectConnection: ws._handle_reject_connection_event,
        RejectData: ws._handle_reject_data_event,
        Request: ws._handle_request_event,
        TextMessage: handle_text_message,
    }
    wsproto = ws._wsproto
    stream = ws._stream
    size = getattr(ws, "_receive_buffer_size", 4096)
    max_bytes = ws._max_message_size
    frames: _Frames | None = None
    carry: list[bytes] = []  # the start of a small text frame that reads cut off, as they came (see below)
    backlog: list[bytes] = []  # reads kept in `carry` that go to wsproto after all, one at a time
    fast = True  # until wsproto turns out to differ
    pending = False  # wsproto has been fed since its events were last handed out
    async with ws._send_channel:
        while ws._reader_running:
            if pending:
                pending = False
                for event in wsproto.events():
                    if pace.due:
                        await pace.wait()
                    pace.frame(WSPROTO_FRAME_COST)
                    # Two departures from trio-websocket, whose reader fails with LocalProtocolError there
                    # (the server logs the traceback and drops the socket without a close handshake):
                    if not ws._reader_running:
                        # a message over the size limit closed the connection: events after it in the
                        # same read, like a second such message or a ping, can no longer be answered;
                        break
                    if wsproto.state is not ConnectionState.OPEN and type(event) in _CROSSING:
                        # a ping or a message that crossed our close frame: no pong may follow a close, nor a
                        # 1009 close for a message too big; a message is dropped once closing anyway
                        continue
                    handler = handlers.get(type(event))
                    if handler is None:  # pragma: no cover - as trio-websocket: a server never gets others
                        logger.warning("%s received unknown event type: %s", ws, type(event))
                        continue
                    try:
                        await handler(event)
                    except ConnectionClosed:
                        ws._reader_running = False
                        break
            replayed = bool(backlog)
            if replayed:
                data = backlog.pop(0)
            else:
                if type(stream) is PrefixedStream and not stream._prefix:  # (our own class: its prefix is read)
                    stream = stream.stream  # the handshake's bytes read again: straight from the socket now
                if pace.due:  # while the budget is spent, nothing is read: the client's sends wait in the kernel
                    await pace.wait()
                    if not ws._reader_running:  # pragma: no cover - ended meanwhile
                        break
                try:
                    if _POSIX and type(stream) is trio.SocketStream:
                        data = await _receive(stream.socket, size)
                    else:
                        data = await stream.receive_some(size)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await ws._abort_web_socket()
                    break
                pace.received(len(data))
                if not data:  # the client closed TCP, or only its sending half (SHUT_WR), without a close frame
                    if wsproto.state is ConnectionState.OPEN:
                        _end_input(ws)
                    elif wsproto.state is not ConnectionState.CLOSED:
                        await ws._abort_web_socket()
                    break
            if wsproto.state is ConnectionState.CLOSED:
                carry = []
                continue
            if frames is None and fast and wsproto.connection is not None:
                frames = _Frames.of(ws)
                fast = frames is not None
            if not replayed and frames is not None and frames.between_frames():
                if carry:  # the start of a frame, kept from the last reads
                    carry.append(data)
                    data = b"".join(carry)
                texts, taken = parse_text_frames(data, max_bytes)
                if not taken and carry:
                    if _starts_small_text_frame(data, max_bytes, size):
                        continue  # still not complete
                    # Complete, and refused (invalid UTF-8): wsproto gets the reads as they came, one at a time,
                    # so that it fails the connection exactly as it would have.
                    backlog, carry = carry, []
                    continue
                carry = []
                for text in texts:
                    if pace.due:  # a flood in one read: let the other tasks run meanwhile, or wait for the budget
                        await pace.wait()
                    pace.frame()
                    sink = ws._send_channel
                    if type(sink) is _MessageSink:
                        sink.deliver(text)
                    else:  # not taken yet: queue it, as `_handle_message_event` does
                        try:
                            await sink.send(text)
                        except (trio.ClosedResourceError, trio.BrokenResourceError):
                            pass
                if taken == len(data):
                    continue
                if taken:
                    data = data[taken:]
                if wsproto.state is ConnectionState.CLOSED:  # pragma: no cover - closed while queueing
                    continue
                if _starts_small_text_frame(data, max_bytes, size):
                    # The rest of a small plain text frame comes with the next read: kept here (wsproto
                    # untouched, still between frames), so that a stream of small frames, which rarely ends
                    # at a read's end, stays on this path instead of going to wsproto from the first cut.
                    carry = [data]
                    continue
            try:
                wsproto.receive_data(data)
            except RemoteProtocolError as err:
                if err.event_hint:
                    await ws._send(err.event_hint)
                await ws._close_stream()
            pending = True
