"""The only code that touches trio-websocket internals: several text messages in one socket write,
and hanging up on a rejected handshake.

trio-websocket writes each message with its own `send_all`, which dominates its cost, and keeps
the socket of a rejected handshake open until the client closes it. Pinned by pyproject
(trio-websocket >=0.11,<0.13) and checked by tests/test_wsinternals.py; where the internals are
missing, each function falls back to the public API.
"""
from __future__ import annotations

import collections
from collections.abc import Sequence

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest
from wsproto.events import TextMessage

_INTERNALS = ("_wsproto", "_stream", "_stream_lock", "_close_reason", "_abort_web_socket")


def batching_supported(ws: WebSocketConnection) -> bool:
    """True when `ws` has the internals `send_text_batch` relies on."""
    return all(hasattr(ws, name) for name in _INTERNALS)


#: Most bytes written while holding the stream lock: a ping (the heartbeat) waits at most one piece.
WRITE_PIECE = 64 * 1024


async def send_text_batch(ws: WebSocketConnection, texts: Sequence[str]) -> None:
    """Send `texts` as consecutive text messages, in as few `send_all`s as possible (pieces of
    about WRITE_PIECE bytes, whole messages, so that control frames can go between them).

    Raises `ConnectionClosed` like `send_message` does. Cancelled midway, the stream may hold
    part of a message: then call `abort`, nothing more may be written to it.
    """
    if not batching_supported(ws):  # pragma: no cover - another trio-websocket version
        for text in texts:
            await ws.send_message(text)
        return
    if ws._close_reason:
        raise ConnectionClosed(ws._close_reason)
    piece: list[bytes] = []
    size = 0
    for i, text in enumerate(texts):
        data = ws._wsproto.send(TextMessage(data=text))
        piece.append(data)
        size += len(data)
        if size >= WRITE_PIECE or i == len(texts) - 1:
            await _write(ws, b"".join(piece))
            piece, size = [], 0


async def _write(ws: WebSocketConnection, data: bytes) -> None:
    if ws._close_reason:
        raise ConnectionClosed(ws._close_reason)
    async with ws._stream_lock:
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
