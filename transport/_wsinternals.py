"""The only code that touches trio-websocket internals: several text messages in one socket write,
and hanging up on a rejected handshake.

trio-websocket writes each message with its own `send_all`, which dominates its cost, and keeps
the socket of a rejected handshake open until the client closes it. Pinned by pyproject
(trio-websocket >=0.11,<0.13) and checked by tests/test_wsinternals.py; where the internals are
missing, each function falls back to the public API.
"""
from __future__ import annotations

import collections
import os
import struct
from collections.abc import Sequence

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest
from wsproto.connection import ConnectionState
from wsproto.events import TextMessage

from ._http import PrefixedStream
from .protocol import without_surrogates

_POSIX = os.name == "posix"  # os.write on a socket's descriptor

_INTERNALS = ("_wsproto", "_stream", "_stream_lock", "_close_reason", "_abort_web_socket")


def batching_supported(ws: WebSocketConnection) -> bool:
    """True when `ws` has the internals `send_text_batch` relies on."""
    supported = _SUPPORTED.get(type(ws))
    if supported is None:  # the attributes are set in __init__: look at an instance, once per class
        supported = _SUPPORTED[type(ws)] = all(hasattr(ws, name) for name in _INTERNALS)
    return supported


_SUPPORTED: dict[type, bool] = {}


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
    if not batching_supported(ws):  # pragma: no cover - another trio-websocket version
        for text in texts:
            await ws.send_message(text.decode("utf-8") if type(text) is bytes else text)
        return
    if ws._close_reason:
        raise ConnectionClosed(ws._close_reason)
    plain = plain_framing(ws)
    piece: list[bytes] = []
    size = 0
    for i, text in enumerate(texts):
        if plain:
            if type(text) is bytes:
                payload = text
            else:
                try:
                    payload = text.encode("utf-8")
                except UnicodeEncodeError:
                    payload = without_surrogates(text).encode("utf-8")
            n = len(payload)
            header = (
                _SHORT(0x81, n) if n < 126 else _MEDIUM(0x81, 126, n) if n < 65536 else _LONG(0x81, 127, n)
            )
            piece.append(header)
            piece.append(payload)
            size += len(header) + n
        else:
            if type(text) is bytes:
                text = text.decode("utf-8")
            try:
                data = ws._wsproto.send(TextMessage(data=text))
            except UnicodeEncodeError:
                data = ws._wsproto.send(TextMessage(data=without_surrogates(text)))
            piece.append(data)
            size += len(data)
        if size >= WRITE_PIECE or i == len(texts) - 1:
            await _write(ws, b"".join(piece))
            piece, size = [], 0


def _socket_fd(stream: object) -> int:
    """The file descriptor of the TCP socket under `stream` when writing to it writes to that socket
    as is (a `trio.SocketStream`, or the `PrefixedStream` over one that the server hands trio-websocket:
    it sends straight through); -1 otherwise (TLS, test streams, a socket that sent EOF or is closed)."""
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
        # Fast path: nobody else is writing, so take the lock without waiting and write to the
        # (non-blocking) socket now; only what the socket does not take goes the usual way. This
        # saves the two trips through the scheduler (lock, socket) of every write; the writer still
        # checkpoints when it next waits for frames.
        lock.acquire_nowait()
        try:
            try:
                sent = os.write(fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:  # reset or broken pipe: as SocketStream.send_all would report it
                await ws._abort_web_socket()
                raise ConnectionClosed(ws._close_reason) from None
            if sent < len(data):
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


async def abort(ws: WebSocketConnection) -> None:
    """Drop the connection without a close frame: after a cut-off write, one would corrupt the stream."""
    if batching_supported(ws):
        await trio.aclose_forcefully(ws._stream)
        if not ws._close_reason:
            await ws._abort_web_socket()


async def reject(request: WebSocketRequest, status: int, body: bytes, extra_headers=None) -> None:
    """Refuse a handshake with an HTTP `status`, then close the socket (without waiting for the client)."""
    await request.reject(status, extra_headers=extra_headers, body=body)
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
    Does nothing where the internals differ."""
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
