"""transport._wsinternals, the one place that uses trio-websocket internals: several messages in one
socket write, each still arriving as its own message; the own reader task and its frame parser (receiving
exactly what trio-websocket receives); taking messages as they arrive; the list of internals it uses, the
versions they were verified for, and the switch (AGENTCAST_WS_FAST_PATHS=0) to trio-websocket's public API.

The tests of a fast path itself are skipped when the switch is off (CI's second run, `-m transport`); the
others hold on either path."""
from __future__ import annotations

import ast
import functools
import json
import logging
import os
import re
import socket
import struct
import tomllib
from pathlib import Path

import trio
import trio.testing
import trio_websocket
import wsproto
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream, wrap_server_stream
from wsproto import ConnectionType, WSConnection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.events import AcceptConnection, CloseConnection, Pong, Request, TextMessage
from wsproto.frame_protocol import XorMaskerSimple
from wsproto.utilities import LocalProtocolError

import pytest

from support import clock_bound, running_server, scaled
from agentcast.transport import protocol as p
from agentcast.transport._http import PrefixedStream
from agentcast.transport._settings import ServerSettings
from agentcast.transport import _wsinternals
from agentcast.transport._wsinternals import (
    FRAME_COST,
    PASS_WORK,
    _receive,
    abort,
    _socket_fd,
    FAST_PATHS,
    drop_handshake_parser,
    parse_text_frames,
    plain_framing,
    reject,
    send_text_batch,
    serve_stream,
    take_messages,
)

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)


def fast_path_only(why: str):
    """Skip a test of a fast path's own behaviour where the fast paths are off (`why`: what the public API does)."""
    return pytest.mark.skipif(not FAST_PATHS, reason=f"{_wsinternals.FAST_PATHS_LINE}: {why}")


async def pair(nursery):
    server_stream, client_stream = trio.testing.memory_stream_pair()
    server_ws = None

    async def accept():
        nonlocal server_ws
        server_ws = await (await wrap_server_stream(nursery, server_stream)).accept()

    nursery.start_soon(accept)
    client_ws = await wrap_client_stream(nursery, client_stream, "127.0.0.1", "/ws")
    while server_ws is None:
        await trio.sleep(0)
    return server_ws, client_ws


def test_the_installed_trio_websocket_and_wsproto_have_the_internals():
    fast, line, _ = _wsinternals._decide({})
    assert fast, line
    assert line == f"websocket fast paths on (trio-websocket {trio_websocket.__version__}, wsproto {wsproto.__version__})"


def record_writes(ws) -> list[bytes]:
    """From now on, every write through `ws`'s stream's `send_all`, as it happens (a direct socket
    write in send_text_batch does not go through it)."""
    writes: list[bytes] = []
    real_send_all = ws._stream.send_all

    async def recording_send_all(data):
        writes.append(bytes(data))
        await real_send_all(data)

    ws._stream.send_all = recording_send_all
    return writes


@fast_path_only("trio-websocket writes each message with its own send_all")
async def test_a_batch_is_one_socket_write_and_arrives_as_separate_messages():
    async with trio.open_nursery() as nursery:
        server_ws, client_ws = await pair(nursery)
        writes = record_writes(server_ws)
        texts = ["one", "two ünïcode", "x" * 30000, "four"]
        await send_text_batch(server_ws, texts)
        assert len(writes) == 1
        assert [await client_ws.get_message() for _ in texts] == texts
        # a bigger batch goes in pieces of whole messages, so a ping can be written between them
        writes.clear()
        big = ["y" * 40000, "z" * 40000, "small", "w" * 100000, "end"]
        await send_text_batch(server_ws, big)
        assert len(writes) == 3
        assert [await client_ws.get_message() for _ in big] == big
        nursery.cancel_scope.cancel()


async def test_sending_on_a_closed_connection_raises_connection_closed():
    async with trio.open_nursery() as nursery:
        server_ws, client_ws = await pair(nursery)
        await client_ws.aclose()
        with pytest.raises(ConnectionClosed):
            for _ in range(100):  # until the server side has noticed the close
                await send_text_batch(server_ws, ["late"])
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def tcp_pair(nursery):
    """A server WebSocket over a real TCP socket (behind the server's PrefixedStream), and its client."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    server_stream_ready = trio.Event()
    got = {}

    async def accept():
        stream = await listeners[0].accept()
        got["ws"] = await (await wrap_server_stream(nursery, PrefixedStream(stream, b""))).accept()
        server_stream_ready.set()

    nursery.start_soon(accept)
    port = listeners[0].socket.getsockname()[1]
    client_stream = await trio.open_tcp_stream("127.0.0.1", port)
    client_ws = await wrap_client_stream(nursery, client_stream, "127.0.0.1", "/ws")
    await server_stream_ready.wait()
    await listeners[0].aclose()
    return got["ws"], client_ws


async def test_over_tcp_a_batch_is_written_to_the_socket_directly_and_a_full_socket_waits():
    async with trio.open_nursery() as nursery:
        server_ws, client_ws = await tcp_pair(nursery)
        assert _socket_fd(server_ws._stream) >= 0  # the direct write applies
        texts = ["one", "two ünïcode", "x" * 30000, "four"]
        await send_text_batch(server_ws, texts)
        assert [await client_ws.get_message() for _ in texts] == texts
        # More than the socket buffers hold while the client is not reading: what the socket does not
        # take goes through the stream's send_all, which waits for room.
        waited = record_writes(server_ws)
        big = [f"{i:04d}" + "b" * 60000 for i in range(600)]  # 36 MB
        sent = trio.Event()

        async def send_big():
            await send_text_batch(server_ws, big)
            sent.set()

        nursery.start_soon(send_big)
        with trio.fail_after(scaled(60)):  # a generous bound against a hang, not a timing assertion
            assert [await client_ws.get_message() for _ in big] == big
            await sent.wait()
        assert waited
        await server_ws.ping()  # the stream lock was released: control frames still go out
        nursery.cancel_scope.cancel()


async def test_over_tcp_writing_to_a_connection_the_client_reset_raises_connection_closed():
    async with trio.open_nursery() as nursery:
        server_ws, client_ws = await tcp_pair(nursery)
        client_ws._stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(client_ws._stream)  # RST
        with pytest.raises(ConnectionClosed):
            with trio.fail_after(scaled(30)):
                while True:  # until the server side has seen the reset
                    await send_text_batch(server_ws, ["late"])
                    await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_frames_built_here_are_the_bytes_wsproto_makes():
    async with trio.open_nursery() as nursery:
        server_ws, client_ws = await pair(nursery)
        assert plain_framing(server_ws)  # the installed wsproto: frames are built in send_text_batch
        assert not plain_framing(client_ws)  # a client masks its frames: never built here
        texts = ["", "a", "x" * 125, "x" * 126, "é" * 63, "ü" * 64, "y" * 65535, "y" * 65536, "☕" * 40000]
        written = record_writes(server_ws)
        await send_text_batch(server_ws, texts)
        reference = WSConnection(ConnectionType.SERVER)
        reference.initiate_upgrade_connection([(b"Host", b"x"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"),
                                               (b"Sec-WebSocket-Version", b"13"),
                                               (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==")], "/ws")
        reference.send(AcceptConnection())
        assert b"".join(written) == b"".join(reference.send(TextMessage(data=t)) for t in texts)
        assert [await client_ws.get_message() for _ in texts] == texts
        # Texts given as their UTF-8 bytes (the server's frames, protocol.encode_utf8) make the same frames.
        written.clear()
        await send_text_batch(server_ws, [t.encode("utf-8") if i % 2 else t for i, t in enumerate(texts)])
        assert b"".join(written) == b"".join(reference.send(TextMessage(data=t)) for t in texts)
        assert [await client_ws.get_message() for _ in texts] == texts
        nursery.cancel_scope.cancel()


@fast_path_only("drop_handshake_parser does nothing")
async def test_dropping_the_handshake_parser_leaves_the_connection_working():
    async with trio.open_nursery() as nursery:
        server_ws, client_ws = await pair(nursery)
        drop_handshake_parser(server_ws)
        handshake = server_ws._wsproto.handshake  # the installed wsproto and trio-websocket have these
        assert handshake._h11_connection is None and handshake._events == () and handshake._initiating_request is None
        assert server_ws._open_handshake is server_ws._for_testing_peer_closed_connection
        assert server_ws._open_handshake.is_set()
        await client_ws.send_message("x" * 70_000)  # several reads, frames split across them
        assert await server_ws.get_message() == "x" * 70_000
        await server_ws.send_message("back")
        assert await client_ws.get_message() == "back"
        await client_ws.ping(b"p")
        await client_ws.aclose()
        with pytest.raises(ConnectionClosed):
            await server_ws.get_message()
        nursery.cancel_scope.cancel()


async def test_a_lone_surrogate_in_a_frame_is_replaced_and_the_batch_still_arrives():
    """A string UTF-8 cannot encode must never cut the connection off (brains clean their text; this is the net)."""
    async with trio.open_nursery() as nursery:
        server_ws, client_ws = await pair(nursery)
        await send_text_batch(server_ws, ["before", "bad \ud800 text", "after"])
        assert [await client_ws.get_message() for _ in range(3)] == ["before", "bad \ufffd text", "after"]
        nursery.cancel_scope.cancel()


# -- receiving: serve_stream's own reader, its frame parser, take_messages ---------------------------


def client_frame(opcode: int, payload: bytes, key: bytes | None = b"\x01\x02\x03\x04", *, fin: bool = True,
                 rsv: int = 0, length_bytes: int | None = None) -> bytes:
    """A frame as a client sends it (RFC 6455 5.2), masked with `key` (None: unmasked); `length_bytes`
    (2 or 8) forces an extended length even where a shorter one would do."""
    n = len(payload)
    if length_bytes is None:
        length_bytes = 0 if n < 126 else 2 if n < 65536 else 8
    first = bytes([(0x80 if fin else 0) | rsv | opcode])
    mask_bit = 0x80 if key is not None else 0
    if length_bytes == 0:
        header = first + bytes([mask_bit | n])
    else:
        header = first + bytes([mask_bit | (126 if length_bytes == 2 else 127)]) + n.to_bytes(length_bytes, "big")
    if key is None:
        return header + payload
    return header + key + bytes(XorMaskerSimple(key).process(bytearray(payload)))


def server_close_frame(code: int, reason: str | None) -> bytes:
    """The close frame a server sends (unmasked), its reason cut to the 123 bytes a close frame can carry."""
    payload = code.to_bytes(2, "big") + (reason or "").encode()[:123]
    return bytes([0x88, len(payload)]) + payload


HANDSHAKE_REQUEST = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


async def run_server_side(wrap, chunks: list[bytes], max_size: int, *, sink: bool):
    """Feed `chunks` (after the handshake), one read each, to a server WebSocket made by `wrap`
    (`wrap_server_stream` or `serve_stream`), then hang up. Returns the messages it got (through
    `take_messages` with `sink`, else `get_message`), its close code and reason, and the bytes it wrote."""
    server_stream, client_stream = trio.testing.memory_stream_pair()
    messages: list = []
    written = bytearray()
    try:
        await feed_server_side(wrap, chunks, max_size, sink, server_stream, client_stream, messages, written)
    except Exception as exc:  # the reader task failed
        return "failed", repr(exc)
    ws = messages.pop()
    closed = ws.closed
    return messages, (closed.code, closed.reason) if closed else None, bytes(written)


async def feed_server_side(wrap, chunks, max_size, sink, server_stream, client_stream, messages, written):
    async with trio.open_nursery() as nursery:
        await client_stream.send_all(HANDSHAKE_REQUEST)
        ws = await (await wrap(nursery, server_stream, message_queue_size=2, max_message_size=max_size)).accept()
        head = b""
        while b"\r\n\r\n" not in head:
            head += await client_stream.receive_some()
        written += head.split(b"\r\n\r\n", 1)[1]

        async def read_back():
            try:
                while data := await client_stream.receive_some():
                    written.extend(data)
            except trio.ClosedResourceError:
                pass

        async def get_messages():
            try:
                while True:
                    messages.append(await ws.get_message())
            except ConnectionClosed:
                pass
            if ws.closed is None:  # the input ended (EOF) with the connection open: its owner ends it (Connection.run)
                await abort(ws)

        nursery.start_soon(read_back)
        if sink:
            assert take_messages(ws, messages.append)
        nursery.start_soon(get_messages)  # with the sink: only waits for the end
        for chunk in chunks:
            await trio.testing.wait_all_tasks_blocked()  # the reader took the previous chunk
            try:
                await client_stream.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(1):  # a bound against a hang (the clock is the test's MockClock)
            await client_stream.send_eof()
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    messages.append(ws)


async def trio_websocket_counting_bytes(nursery, stream, *, message_queue_size, max_message_size):
    """`wrap_server_stream`: trio-websocket's own reader, wsproto for every frame; but its size limit counted
    in UTF-8 bytes, as serve_stream's is (trio-websocket counts a text message's characters)."""
    ws = WebSocketConnection(stream, WSConnection(ConnectionType.SERVER), message_queue_size=message_queue_size,
                             max_message_size=max_message_size)
    handle = ws._handle_message_event

    async def counting_bytes(event):
        if isinstance(event, TextMessage):
            ws._message_size += len(event.data.encode()) - len(event.data)
        await handle(event)

    ws._handle_message_event = counting_bytes
    nursery.start_soon(ws._reader_task)
    return await ws._get_request()


def run_both(chunks, max_size, sink):
    """What trio-websocket's reader and serve_stream's make of the same bytes, read in the same pieces."""
    def run(wrap):
        return trio.run(functools.partial(run_server_side, wrap, chunks, max_size, sink=sink),
                        clock=trio.testing.MockClock(autojump_threshold=0))
    return run(trio_websocket_counting_bytes), run(serve_stream)


texts = st.one_of(
    st.text(max_size=30),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "☕"]), st.sampled_from([0, 41, 125, 126, 200, 3000, 22000])),
)


@st.composite
def frame_sequences(draw):
    """Client frames of every kind, most of them plain text messages, as bytes cut at random points."""
    out = []
    for _ in range(draw(st.integers(1, 8))):
        key = draw(st.binary(min_size=4, max_size=4))
        kind = draw(st.sampled_from(["text"] * 6 + ["fragments", "binary", "ping", "pong", "bad_utf8", "long_length",
                                                    "unmasked", "rsv", "close", "64bit"]))
        if kind == "text":
            out.append(client_frame(1, draw(texts).encode(), key))
        elif kind == "fragments":  # one message in several frames, split anywhere (even inside a character)
            data = draw(texts).encode()
            cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
            for i, piece in enumerate(pieces):
                out.append(client_frame(1 if i == 0 else 0, piece, key, fin=i == len(pieces) - 1))
        elif kind == "binary":
            out.append(client_frame(2, draw(st.binary(max_size=40)), key))
        elif kind in ("ping", "pong"):
            out.append(client_frame(9 if kind == "ping" else 10, draw(st.binary(max_size=20)), key))
        elif kind == "bad_utf8":
            out.append(client_frame(1, b"ok " + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x82"])), key))
        elif kind == "long_length":  # a length in more bytes than needed: a protocol error for wsproto
            out.append(client_frame(1, b"short", key, length_bytes=draw(st.sampled_from([2, 8]))))
        elif kind == "unmasked":
            out.append(client_frame(1, b"plain", None))
        elif kind == "rsv":
            out.append(client_frame(1, b"rsv", key, rsv=draw(st.sampled_from([0x40, 0x20, 0x10]))))
        elif kind == "close":
            code = draw(st.sampled_from([None, 1000, 1001, 4000]))
            out.append(client_frame(8, b"" if code is None else code.to_bytes(2, "big") + b"bye", key))
        else:
            out.append(client_frame(1, b"y" * 65536, key))
    data = b"".join(out)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=6))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if data[a:b]]


@fast_path_only("serve_stream is trio-websocket's wrap_server_stream: nothing to compare")
@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=frame_sequences(), max_size=st.sampled_from([100, 5000, 2**20]), sink=st.booleans())
def test_serve_stream_receives_exactly_what_trio_websocket_receives(chunks, max_size, sink):
    """Differential: the same client bytes, read in the same pieces, give the same messages, the same
    close code and reason and the same bytes written back (pongs, close frames) through serve_stream's
    reader (plain text frames parsed here) as through trio-websocket's own (wsproto for every frame)."""
    reference, subject = run_both(chunks, max_size, sink)
    assert subject[0] != "failed"
    if subject[1] is not None and subject[1][0] in (1002, 1007) and subject[2] != reference[2]:
        # a protocol violation: the same messages and close code, and serve_stream's reader sends the close frame
        # (RFC 6455 7.1.7) that trio-websocket's leaves out before it drops TCP
        assert subject[:2] == reference[:2]
        assert subject[2] == reference[2] + server_close_frame(*subject[1])
    elif reference[0] == "failed":
        # trio-websocket's reader fails on a ping or a second message after a too-big one (the closing
        # connection can no longer answer them); serve_stream's stops at the too-big one
        assert subject[1][0] == 1009
    elif subject[1] is not None and subject[1][0] == 1009:
        # the same messages and the same 1009 close frame sent; trio-websocket then records the code of
        # a protocol error in what followed in the same read as the close reason, serve_stream keeps 1009
        assert subject[0] == reference[0] and subject[2] == reference[2]
    else:
        assert subject == reference


def test_parse_text_frames_takes_whole_plain_text_frames_only():
    key = b"\x9a\x00\xff\x10"
    frames = [client_frame(1, t.encode(), key) for t in ["", "a", "é" * 63, "x" * 126, "☕" * 30000]]
    data = b"".join(frames)
    assert parse_text_frames(data, 2**20) == (["", "a", "é" * 63, "x" * 126, "☕" * 30000], len(data))
    assert parse_text_frames(client_frame(1, b"y" * 65536, key), 2**20) == (["y" * 65536], 65536 + 14)
    # a partial frame, or any other kind, and what follows, are left for wsproto
    first = frames[1]
    for rest in [frames[2][:-1], client_frame(9, b"ping", key), client_frame(2, b"bin", key),
                 client_frame(1, b"frag", key, fin=False), client_frame(1, b"\xff", key),
                 client_frame(1, b"unmasked", None), client_frame(1, b"long", key, length_bytes=2),
                 client_frame(1, b"rsv", key, rsv=0x40), client_frame(1, b"12345", key)]:
        assert parse_text_frames(first + rest + first, 4) == (["a"], len(first))
    assert parse_text_frames(b"", 10) == ([], 0)


@fast_path_only("take_messages takes nothing: the connection receives with get_message")
def test_take_messages_hands_over_what_was_queued_first_then_each_message_as_it_arrives():
    async def main():
        async with trio.open_nursery() as nursery:
            server_ws, client_ws = await pair(nursery)
            for text in ("one", "two", "three"):
                await client_ws.send_message(text)
            await trio.testing.wait_all_tasks_blocked()
            taken: list = []
            assert take_messages(server_ws, taken.append)
            # the queued messages at once (the one the reader was blocked on included: queue size 1)...
            assert taken == ["one", "two"]
            await trio.testing.wait_all_tasks_blocked()
            assert taken == ["one", "two", "three"]  # ... then the reader, unblocked, hands over the next
            with pytest.raises(RuntimeError):
                take_messages(server_ws, taken.append)
            await client_ws.send_message("four")
            await client_ws.send_message(b"bytes too")
            await trio.testing.wait_all_tasks_blocked()
            assert taken == ["one", "two", "three", "four", b"bytes too"]
            await client_ws.aclose(4000, "done")
            with pytest.raises(ConnectionClosed):  # get_message still ends when the connection does
                await server_ws.get_message()
            assert server_ws.closed.code == 4000
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@fast_path_only("trio-websocket's reader hands each message through its channel to the connection's task")
def test_a_read_full_of_messages_lets_other_tasks_run_after_each_pass_of_work():
    """One read can hold hundreds of tiny frames, each handled in the reader task: it yields between them,
    each time its work (the read's bytes, FRAME_COST a frame) reaches PASS_WORK."""
    async def main():
        server_stream, client_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            await client_stream.send_all(HANDSHAKE_REQUEST)
            ws = await (await serve_stream(nursery, server_stream, message_queue_size=2, max_message_size=100)).accept()
            taken: list = []
            take_messages(ws, taken.append)
            seen: list[int] = []  # how many messages were taken each time the other task ran

            async def other_task():
                while len(taken) < 200:
                    seen.append(len(taken))
                    await trio.lowlevel.checkpoint()

            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(other_task)
            data = b"".join(client_frame(1, b"%d" % i) for i in range(200))
            await client_stream.send_all(data)  # one read
            await trio.testing.wait_all_tasks_blocked()
            assert taken == [str(i) for i in range(200)]  # all, in order
            between = {n for n in seen if 0 < n < 200}  # the other task ran while the read was being handled,
            first = -(-(PASS_WORK - len(data)) // FRAME_COST)  # at the reader's yields (some of them: trio
            yields = set(range(first, 200, PASS_WORK // FRAME_COST))  # shuffles the order of the tasks it runs)
            assert between and between <= yields
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- receiving over loopback: the real server (serve_stream's reader, the socket read directly) ------


class RawClient:
    """A client that writes frames byte by byte as given and reads the server's with wsproto."""

    def __init__(self, stream, proto):
        self.stream, self.proto, self.events = stream, proto, []

    @classmethod
    async def open(cls, port: int) -> "RawClient":
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        proto = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(proto.send(Request(host="127.0.0.1", target="/ws")))
        client = cls(stream, proto)
        (accepted,) = await client.until(lambda e: isinstance(e, AcceptConnection))
        return client

    async def until(self, done, timeout: float = 10) -> list:
        """The server's events up to the first for which `done` is true (or the connection's end)."""
        events = []
        with trio.fail_after(clock_bound(timeout)):  # a bound against a hang, not a timing assertion
            while True:
                for event in self.proto.events():
                    events.append(event)
                    if done(event):
                        return events
                data = await self.stream.receive_some()
                if not data:
                    return events
                self.proto.receive_data(data)

    async def frames(self, n: int) -> list:
        """The next `n` JSON frames (text messages) and whatever else came with them."""
        seen = []
        await self.until(lambda e: seen.append(e) or sum(isinstance(x, TextMessage) for x in seen) == n)
        return [json.loads(e.data) if isinstance(e, TextMessage) else e for e in seen]


def ping_frame(rid: str, key: bytes = b"\x10\x20\x30\x40", pad: int = 0) -> bytes:
    return client_frame(1, json.dumps({"type": "ping", "request_id": rid + " " * pad}, ensure_ascii=False).encode(), key)


async def test_over_tcp_plain_fragmented_and_binary_messages_and_control_frames_in_one_write(server):
    client = await RawClient.open(server.port)
    assert (await client.frames(1))[0]["type"] == "connected"
    fragmented = json.dumps({"type": "ping", "request_id": "fragmented ☕"}).encode()
    await client.stream.send_all(
        ping_frame("plain")
        + client_frame(1, fragmented[:7], fin=False)
        + client_frame(9, b"control ping")  # a control frame between the fragments
        + client_frame(0, fragmented[7:-3], fin=False)
        + client_frame(0, fragmented[-3:])
        + client_frame(2, b"\x00binary")
        + ping_frame("after")
    )
    got = await client.frames(4)
    assert [f for f in got if isinstance(f, dict)] == [
        {"type": "ping", "request_id": "plain"},
        {"type": "ping", "request_id": "fragmented ☕"},
        {"type": "error", "code": "binary_frame", "message": "Binary frames are not supported; send JSON text frames"},
        {"type": "ping", "request_id": "after"},
    ]
    assert [e.payload for e in got if isinstance(e, Pong)] == [b"control ping"]
    # the same, a byte at a time: every frame is partial when read
    for byte in ping_frame("bytewise") + client_frame(9, b"p2"):
        await client.stream.send_all(bytes([byte]))
    got = await client.frames(1)
    assert got[-1] == {"type": "ping", "request_id": "bytewise"}
    got += await client.until(lambda e: isinstance(e, Pong))
    assert [e.payload for e in got if isinstance(e, Pong)] == [b"p2"]
    await client.stream.aclose()


#: Frames that break RFC 6455, and the close code that fails the connection (7.1.7, 7.4.1).
VIOLATIONS = {
    "unmasked frame": (client_frame(1, b'{"type": "ping"}', None), 1002),
    "RSV bit": (client_frame(1, b'{"type": "ping"}', rsv=0x40), 1002),
    "reserved opcode": (client_frame(3, b"?"), 1002),
    "fragmented ping": (client_frame(9, b"p", fin=False), 1002),
    "length in more bytes than needed": (client_frame(1, b'{"type": "ping"}', length_bytes=2), 1002),
    "continuation without a start": (client_frame(0, b"x"), 1002),
    "invalid UTF-8 in a text frame": (client_frame(1, b'{"type": "ping", "x": "\xff"}'), 1007),
    "invalid UTF-8 across fragments": (client_frame(1, b'{"x": "\xe2', fin=False) + client_frame(0, b'\x28"}'), 1007),
    "close code out of range": (client_frame(8, (999).to_bytes(2, "big")), 1002),
    "close code only for local use": (client_frame(8, (1006).to_bytes(2, "big")), 1002),
    "close with a 1-byte payload": (client_frame(8, b"\x03"), 1002),
    "invalid UTF-8 in a close reason": (client_frame(8, (1000).to_bytes(2, "big") + b"bye \xff"), 1007),
}


@pytest.mark.parametrize("reader", ["own", "trio-websocket's"])
@pytest.mark.parametrize("violation", list(VIOLATIONS))
async def test_over_tcp_a_protocol_violation_gets_a_close_frame_then_the_server_hangs_up(
        db_path, monkeypatch, reader, violation):
    """RFC 6455 7.1.7: the server fails the connection with a close frame (1002; 1007 for invalid UTF-8), then
    closes TCP. trio-websocket's reader, used where its internals differ, drops TCP without the frame: wsproto
    reports the violation as a CloseConnection event, which trio-websocket handles as a close it received."""
    if reader == "own" and not FAST_PATHS:
        pytest.skip(f"{_wsinternals.FAST_PATHS_LINE}: the own reader is not used")
    if reader != "own":  # trio-websocket's public API throughout, as with AGENTCAST_WS_FAST_PATHS=0
        monkeypatch.setattr(_wsinternals, "FAST_PATHS", False)
    frame, code = VIOLATIONS[violation]
    async with running_server(db_path) as server:
        client = await RawClient.open(server.port)
        await client.frames(1)
        (conn,) = server.connections
        await client.stream.send_all(ping_frame("ok"))
        assert (await client.frames(1))[-1] == {"type": "ping", "request_id": "ok"}
        await client.stream.send_all(frame + ping_frame("never read"))
        events = await client.until(lambda e: False)  # all the server sends until it closes TCP
        if reader == "own":
            assert [(type(e), e.code) for e in events] == [(CloseConnection, code)]
        else:
            assert events == []
        assert conn._ws.closed.code == code
        await client.stream.aclose()
        with trio.fail_after(scaled(10)):
            while server.connections:
                await trio.sleep(0.01)


EMOJI = "\U0001F600"  # 1 character, 4 bytes in UTF-8


def message_of(n_bytes: int, char: str) -> bytes:
    """A ping of exactly `n_bytes` bytes of UTF-8, nearly all of them `char` (in a field the server ignores)."""
    fields = {"type": "ping", "request_id": "r", "pad": ""}
    k, rest = divmod(n_bytes - len(json.dumps(fields).encode()), len(char.encode()))
    fields["pad"] = char * k + " " * rest
    data = json.dumps(fields, ensure_ascii=False).encode()
    assert len(data) == n_bytes
    return data


def test_parse_text_frames_takes_messages_of_at_most_max_bytes_bytes():
    """The limit is in bytes, as it came: 1000 bytes of 4-byte characters (250 of them) are at the limit of 1000."""
    for char in ("x", EMOJI):
        at_limit, over = client_frame(1, message_of(1000, char)), client_frame(1, message_of(1001, char))
        assert parse_text_frames(at_limit + over, 1000) == ([message_of(1000, char).decode()], len(at_limit))
        assert parse_text_frames(over, 1000) == ([], 0)  # left for wsproto, which closes with 1009


@pytest.mark.parametrize("char", ["x", EMOJI], ids=["ascii", "4-byte characters"])
@pytest.mark.parametrize("fragmented", [False, True], ids=["one frame", "fragments (wsproto's way)"])
async def test_over_tcp_the_size_limit_counts_utf8_bytes_and_closes_with_1009(db_path, char, fragmented):
    """max_message_size is bytes, as docs/security.md says: exactly that many bytes of UTF-8 are taken, one
    more closes the connection with 1009, whether the message is a plain frame (parsed by serve_stream's
    reader) or comes in fragments (through wsproto and trio-websocket's handler, which counts characters)."""
    def frames(data: bytes) -> bytes:
        if not fragmented:
            return client_frame(1, data)
        cut = len(data) // 2 + 1  # inside a character, for the 4-byte ones
        return client_frame(1, data[:cut], fin=False) + client_frame(0, data[cut:])

    async with running_server(db_path, max_message_size=1000) as server:
        client = await RawClient.open(server.port)
        await client.frames(1)
        await client.stream.send_all(frames(message_of(1000, char)))
        assert (await client.frames(1))[0] == {"type": "ping", "request_id": "r"}
        await client.stream.send_all(frames(message_of(1001, char)))
        events = await client.until(lambda e: isinstance(e, (CloseConnection, TextMessage)))
        assert isinstance(events[-1], CloseConnection) and events[-1].code == 1009
        await client.stream.aclose()


async def test_over_tcp_the_close_handshake(server):
    client = await RawClient.open(server.port)
    await client.frames(1)
    await client.stream.send_all(ping_frame("last"))
    assert await client.frames(1) == [{"type": "ping", "request_id": "last"}]
    await client.stream.send_all(client_frame(8, (4000).to_bytes(2, "big") + b"bye"))
    events = await client.until(lambda e: isinstance(e, CloseConnection))
    assert [(e.code, e.reason) for e in events] == [(4000, "bye")]  # the server answers the client's close
    with trio.fail_after(scaled(10)):
        assert await client.stream.receive_some() == b""  # and then hangs up
    with trio.fail_after(scaled(10)):
        while server.connections:
            await trio.sleep(0.01)


async def test_over_tcp_a_client_that_resets_mid_session_ends_its_connection_quietly(server, caplog):
    client = await RawClient.open(server.port)
    await client.frames(1)
    await client.stream.send_all(ping_frame("before the reset"))
    await client.frames(1)
    client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(client.stream)  # RST: the server's read fails with ECONNRESET
    with trio.fail_after(scaled(10)):
        while server.connections:
            await trio.sleep(0.01)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@fast_path_only("take_messages takes nothing: the connection receives with get_message")
def test_take_messages_still_hands_over_what_was_queued_before_the_client_closed():
    async def main():
        server_stream, client_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            got = {}

            async def accept():
                request = await serve_stream(nursery, server_stream, message_queue_size=8, max_message_size=100)
                got["ws"] = await request.accept()

            nursery.start_soon(accept)
            client_ws = await wrap_client_stream(nursery, client_stream, "127.0.0.1", "/ws")
            await client_ws.send_message("sent")
            await client_ws.send_message("before closing")
            await client_ws.aclose(4000)
            server_ws = got["ws"]
            assert server_ws.closed.code == 4000
            taken: list = []
            assert take_messages(server_ws, taken.append)
            assert taken == ["sent", "before closing"]  # as get_message would have returned them
            with pytest.raises(ConnectionClosed):
                await server_ws.get_message()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def closed_by_the_server(nursery, wrap, *, max_message_size):
    """A connection served by `wrap` (serve_stream or trio-websocket's wrap_server_stream) over a memory
    stream, accepted, whose server has sent its close frame (1001); returns it and the client's stream."""
    server_stream, client_stream = trio.testing.memory_stream_pair()
    await client_stream.send_all(HANDSHAKE_REQUEST)
    ws = await (await wrap(nursery, server_stream, message_queue_size=2, max_message_size=max_message_size)).accept()
    nursery.start_soon(ws.aclose, 1001, "going away")
    await trio.testing.wait_all_tasks_blocked()  # the server's close frame is sent
    return ws, client_stream


@fast_path_only("trio-websocket's reader fails there, as the test shows")
def test_a_ping_that_crosses_the_servers_close_frame_is_ignored_and_the_close_handshake_completes():
    """trio-websocket's reader fails there (no pong may follow a close frame: LocalProtocolError)."""
    async def main(wrap):
        async with trio.open_nursery() as nursery:
            ws, client_stream = await closed_by_the_server(nursery, wrap, max_message_size=100)
            await client_stream.send_all(client_frame(9, b"late ping") + client_frame(8, (1001).to_bytes(2, "big")))
            await trio.testing.wait_all_tasks_blocked()
            assert ws.closed.code == 1001
            assert ws._close_handshake.is_set()
            nursery.cancel_scope.cancel()

    trio.run(main, serve_stream, clock=trio.testing.MockClock(autojump_threshold=0))
    with pytest.raises(BaseExceptionGroup) as failed:
        trio.run(main, wrap_server_stream, clock=trio.testing.MockClock(autojump_threshold=0))
    assert failed.group_contains(LocalProtocolError)


@fast_path_only("trio-websocket's reader fails there with LocalProtocolError")
def test_a_too_big_message_that_crosses_the_servers_close_frame_is_dropped_and_the_close_handshake_completes():
    """It can no longer be answered with 1009 (no close frame may follow ours): trio-websocket's reader fails
    there with LocalProtocolError, which ended the connection's handler with a traceback instead of a close."""
    async def main():
        async with trio.open_nursery() as nursery:
            ws, client_stream = await closed_by_the_server(nursery, serve_stream, max_message_size=10)
            await client_stream.send_all(client_frame(1, b"x" * 50) + client_frame(8, (1001).to_bytes(2, "big")))
            await trio.testing.wait_all_tasks_blocked()
            assert ws.closed.code == 1001
            assert ws._close_handshake.is_set()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class _BeforeNextStep(trio.abc.Instrument):
    """Calls `action()` once, right before `task` next runs: what another task run earlier in the same
    batch of the scheduler could have done."""

    def __init__(self, task, action) -> None:
        self.task, self.action = task, action

    def before_task_step(self, task) -> None:
        if task is self.task and self.action is not None:
            action, self.action = self.action, None
            action()


async def test_the_direct_read_never_reads_a_descriptor_reused_after_its_socket_was_closed():
    """The reader is woken (its socket readable), but before it runs another task closes the socket and a
    new socket (another client's, accepted meanwhile) gets the same descriptor number: it must not read
    that client's bytes."""
    ours, peer = trio.socket.socketpair()
    other, other_peer = socket.socketpair()
    other_peer.send(b"another client's bytes")
    fd = ours.fileno()
    got = {}

    async def read():
        try:
            got["data"] = await _receive(ours, 100)
        except trio.ClosedResourceError as exc:
            got["error"] = exc

    def close_and_reuse():
        ours.close()
        os.dup2(other.fileno(), fd)  # the lowest free descriptor, as a new socket would get it

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            (reader,) = nursery.child_tasks
            trio.lowlevel.add_instrument(_BeforeNextStep(reader, close_and_reuse))
            await peer.send(b"ours")
        assert "data" not in got
        assert other.recv(100) == b"another client's bytes"
    finally:
        if ours.fileno() == -1:
            os.close(fd)  # the duplicate
        for s in (ours, peer, other, other_peer):
            s.close()


# -- the end of a connection: a client's half-close, a client's protocol violation -------------------------


async def served_connection(nursery, wrap, server_stream, client_stream, **settings):
    """A `Connection` (no agents) served by `wrap` over the given streams, its handshake done; returns the
    Connection and whatever the server wrote after its handshake answer's head with it."""
    from agentcast.actors import Audience
    from agentcast.transport._connection import Connection

    got = {}
    ready = trio.Event()

    async def serve():
        ws = await (await wrap(nursery, server_stream, message_queue_size=8, max_message_size=1000)).accept()
        got["conn"] = Connection(ws, {}, Audience(), clock=lambda: "2026-01-01T00:00:00.000Z",
                                 settings=ServerSettings(**settings))
        ready.set()
        try:
            await got["conn"].run()
        finally:  # as the server's connection handler ends (Server._serve_connection)
            await trio.aclose_forcefully(server_stream)

    nursery.start_soon(serve)
    await client_stream.send_all(HANDSHAKE_REQUEST)
    head = b""
    while b"\r\n\r\n" not in head:
        head += await client_stream.receive_some()
    await ready.wait()
    return got["conn"], head.split(b"\r\n\r\n", 1)[1]


def read_frames(data: bytes) -> list:
    """The server's frames in `data` (after its handshake answer): ("text", json) or ("close", code, reason)."""
    frames, i = [], 0
    while i < len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        payload, i = data[i:i + n], i + n
        if opcode == 1:
            frames.append(("text", json.loads(payload)))
        elif opcode == 8:
            frames.append(("close", int.from_bytes(payload[:2], "big"), payload[2:].decode()))
        else:
            frames.append(("opcode", opcode))
    return frames


@pytest.mark.parametrize("wrap", [serve_stream, wrap_server_stream], ids=["own reader", "trio-websocket's reader"])
def test_the_answers_queued_when_the_client_half_closes_are_written_before_the_connection_ends(wrap):
    """A client sends a command and shuts down its sending half (EOF; it still reads). The answer is queued
    and the writer cannot write yet (the client has not read the `connected` frame: lockstep streams) when
    the reader sees the EOF: the connection still writes everything queued (within close_timeout), then
    closes TCP, without a close frame (1006: the client started no close handshake).

    trio-websocket's own reader (the fallback where its internals differ) aborts at the EOF, after which
    nothing can be written: the queued answers are dropped and the connection ends at once."""
    if wrap is serve_stream and not FAST_PATHS:
        pytest.skip(f"{_wsinternals.FAST_PATHS_LINE}: the own reader is not used")

    async def main():
        server_stream, client_stream = trio.testing.lockstep_stream_pair()
        async with trio.open_nursery() as nursery:
            conn, _ = await served_connection(nursery, wrap, server_stream, client_stream)
            await client_stream.send_all(ping_frame("last words") + client_frame(1, b'{"type": "dance"}'))
            await client_stream.send_eof()
            await trio.testing.wait_all_tasks_blocked()  # the reader has seen the EOF; nothing read by the client yet
            received = b""
            with trio.fail_after(1):  # mock clock: a bound against a hang, below close_timeout
                while data := await client_stream.receive_some():
                    received += data
            await trio.testing.wait_all_tasks_blocked()
            assert conn.gone
            return read_frames(received), conn._ws.closed.code

    frames, code = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert code == 1006
    if wrap is serve_stream:
        assert [f[1]["type"] for f in frames] == ["connected", "ping", "error"]
        assert frames[1][1]["request_id"] == "last words" and frames[2][1]["code"] == "unknown_type"
    else:  # the answers are lost (what "connected" became depends on where its write was cut)
        assert [f[1]["type"] for f in frames if f[0] == "text" and f[1]["type"] != "connected"] == []


async def test_over_tcp_a_command_sent_just_before_a_half_close_is_always_answered(server):
    """The raw-socket case: a command frame and the client's SHUT_WR back to back (no await between them),
    then read until the server hangs up; 20 times. Before, the reader could see the EOF before the writer had
    written the answer, and aborted the connection under it. (With the fast paths off, trio-websocket's reader
    still does: the answer may be lost, but the server hangs up all the same.)"""
    answered = 0
    for i in range(20):
        client = await RawClient.open(server.port)
        frame = ping_frame(f"r{i}")
        raw = socket.socket(fileno=client.stream.socket.fileno())  # the same socket, used synchronously
        try:
            assert raw.send(frame) == len(frame)
            raw.shutdown(socket.SHUT_WR)
        finally:
            raw.detach()
        events = await client.until(lambda e: False)  # until the server closes TCP
        texts = [json.loads(e.data) for e in events if isinstance(e, TextMessage)]
        answered += {"type": "ping", "request_id": f"r{i}"} in texts
        await client.stream.aclose()
    assert answered == 20 or not FAST_PATHS


# -- the internals used, the versions verified, the switch to trio-websocket's public API ---------------------


#: Underscored attribute names in _wsinternals.py that are agentcast's own (PrefixedStream's).
OWN_PRIVATE_NAMES = {"_prefix"}


def private_names_used(source: str) -> set[str]:
    """The underscored names the module reads or writes on other objects: attributes (`ws._stream`) and the
    names given to getattr, hasattr and setattr as strings; the lists of internals themselves left out."""
    tree = ast.parse(source)
    lists = {"TRIO_WEBSOCKET_INTERNALS", "WSPROTO_INTERNALS", "_READ_WITH_A_DEFAULT"}
    skipped = {id(node) for stmt in tree.body if isinstance(stmt, (ast.Assign, ast.AnnAssign))
               and {getattr(t, "id", None) for t in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target])} & lists
               for node in ast.walk(stmt)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            name = node.value
        else:
            continue
        if name.startswith("_") and not name.startswith("__"):
            names.add(name)
    return names - OWN_PRIVATE_NAMES


def test_every_private_name_the_module_uses_is_listed_and_every_listed_name_is_used():
    """A new use of trio-websocket's or wsproto's internals must be added to the lists, which the start-up
    probe checks on the installed versions (and a name no longer used taken off)."""
    listed = {name for internals in (_wsinternals.TRIO_WEBSOCKET_INTERNALS, _wsinternals.WSPROTO_INTERNALS)
              for names in internals.values() for name in names if name.startswith("_")}
    used = private_names_used(Path(_wsinternals.__file__).read_text(encoding="utf-8"))
    assert used == listed, f"used but not listed: {sorted(used - listed)}; listed but not used: {sorted(listed - used)}"
    # and the scan sees a new one, in either form
    assert private_names_used("ws._new_internal\ngetattr(ws, '_another', None)\n") == {"_new_internal", "_another"}


def test_the_verified_version_ranges_are_the_pins_of_pyproject():
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text(encoding="utf-8"))
    pins = {re.split(r"[<>=!~;\s]", spec, maxsplit=1)[0]: spec for spec in pyproject["project"]["dependencies"]}
    for package, (low, high) in _wsinternals.VERIFIED_VERSIONS.items():
        dotted = ".".join
        assert pins[package] == f"{package}>={dotted(map(str, low))},<{dotted(map(str, high))}"


def test_a_version_outside_the_verified_range_or_a_missing_internal_turns_the_fast_paths_off(monkeypatch):
    decide = _wsinternals._decide
    installed = f"trio-websocket {trio_websocket.__version__}, wsproto {wsproto.__version__}"
    assert decide({}) == (True, f"websocket fast paths on ({installed})", logging.INFO)
    assert decide({"AGENTCAST_WS_FAST_PATHS": "1"})[:2] == decide({})[:2]
    assert decide({"AGENTCAST_WS_FAST_PATHS": "0"}) == (
        False, f"websocket fast paths off (AGENTCAST_WS_FAST_PATHS=0): trio-websocket's public API only ({installed})",
        logging.INFO)
    fast, line, level = decide({"AGENTCAST_WS_FAST_PATHS": "off"})  # not understood: said so, and left on
    assert fast and level == logging.WARNING
    assert line.endswith("AGENTCAST_WS_FAST_PATHS='off' ignored: 0 switches them off, 1 or unset leaves them on")

    def off_because(reason: str) -> bool:
        fast, line, level = decide({})
        assert not fast and level == logging.WARNING
        assert line.startswith(f"websocket fast paths off ({reason}): trio-websocket's public API only (trio-websocket ")
        return True

    with monkeypatch.context() as m:
        m.setattr(trio_websocket, "__version__", "0.13.0")
        assert off_because("trio-websocket 0.13.0 is not in the verified range >=0.11,<0.13")
    with monkeypatch.context() as m:
        m.setattr(wsproto, "__version__", "1.1.0")
        assert off_because("wsproto 1.1.0 is not in the verified range >=1.2,<1.4")
    with monkeypatch.context() as m:
        m.delattr(WebSocketConnection, "_handle_ping_event")
        assert off_because(f"trio-websocket {trio_websocket.__version__} lacks WebSocketConnection._handle_ping_event")
    with monkeypatch.context() as m:  # an attribute set in __init__ (the probe looks at a connection it made)
        m.setitem(_wsinternals.TRIO_WEBSOCKET_INTERNALS, "WebSocketConnection",
                  (*_wsinternals.TRIO_WEBSOCKET_INTERNALS["WebSocketConnection"], "_not_there"))
        assert off_because(f"trio-websocket {trio_websocket.__version__} lacks WebSocketConnection._not_there")
    with monkeypatch.context() as m:  # on the frame protocol of a connection whose handshake was accepted
        m.setitem(_wsinternals.WSPROTO_INTERNALS, "FrameDecoder", ("header", "buffer", "_not_there"))
        assert off_because(f"wsproto {wsproto.__version__} lacks FrameDecoder._not_there")
    assert decide({})[0]


needs_the_internals = pytest.mark.skipif(not _wsinternals._decide({})[0], reason="the installed versions lack the internals")


@pytest.mark.parametrize("fast", [pytest.param(True, marks=needs_the_internals), False], ids=["on", "off"])
def test_the_switch_picks_the_fast_paths_or_trio_websockets_public_api(monkeypatch, fast):
    """The same calls, made with FAST_PATHS on and off: the own reader or trio-websocket's, messages taken as
    they arrive or left to get_message, one socket write per batch or a send_message per message, the
    handshake parser dropped or kept, the socket of a refused handshake closed at once or left open."""
    monkeypatch.setattr(_wsinternals, "FAST_PATHS", fast)

    async def main():
        async with trio.open_nursery() as nursery:
            server_stream, client_stream = trio.testing.memory_stream_pair()
            await client_stream.send_all(HANDSHAKE_REQUEST)
            request = await serve_stream(nursery, server_stream, message_queue_size=8, max_message_size=100)
            (reader,) = nursery.child_tasks
            assert reader.name.endswith("._read" if fast else "._reader_task"), reader.name
            ws = await request.accept()
            drop_handshake_parser(ws)
            assert (ws._wsproto.handshake._h11_connection is None) is fast
            taken: list = []
            assert take_messages(ws, taken.append) is fast
            sent, writes = [], record_writes(ws)
            real_send_message = ws.send_message

            async def send_message(message):
                sent.append(message)
                await real_send_message(message)

            monkeypatch.setattr(ws, "send_message", send_message)
            await send_text_batch(ws, ["one", b"two", "three"])
            assert (sent, len(writes)) == (([], 1) if fast else (["one", "two", "three"], 3))
            nursery.cancel_scope.cancel()

        # a refused handshake: the socket is closed at once, or left for the handler's end to close
        async with trio.open_nursery() as nursery:
            server_stream, client_stream = trio.testing.memory_stream_pair()
            await client_stream.send_all(HANDSHAKE_REQUEST)
            request = await serve_stream(nursery, server_stream, message_queue_size=8, max_message_size=100)
            await reject(request, 403, b"no\n")
            await trio.testing.wait_all_tasks_blocked()
            received = b""
            with trio.move_on_after(1):  # mock clock
                while data := await client_stream.receive_some():
                    received += data
            assert received.startswith(b"HTTP/1.1 403 ") and received.endswith(b"\r\n\r\nno\n")
            assert (data == b"") is fast  # EOF: the server hung up
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.process
@pytest.mark.parametrize("setting", [None, "1", "0"])
def test_agentcast_serve_logs_the_path_it_takes_and_why(serve, tmp_path, monkeypatch, setting):
    """The environment variable is read by the process (once, at import), and the start line says what it
    decided: the installed versions, and the public API when switched off; the connections work either way."""
    if setting is None:
        monkeypatch.delenv("AGENTCAST_WS_FAST_PATHS", raising=False)
    else:
        monkeypatch.setenv("AGENTCAST_WS_FAST_PATHS", setting)
    server = serve(tmp_path / "agentcast.db")
    installed = f"trio-websocket {trio_websocket.__version__}, wsproto {wsproto.__version__}"
    if setting == "0":
        expected = f"websocket fast paths off (AGENTCAST_WS_FAST_PATHS=0): trio-websocket's public API only ({installed})"
    else:
        expected = f"websocket fast paths on ({installed})"
    server.wait_for_log(f"INFO agentcast.transport: {expected}\n")
    assert server.stderr.count("websocket fast paths") == 1

    async def ping():
        async with trio_websocket.open_websocket_url(server.url) as ws:
            assert json.loads(await ws.get_message())["type"] == "connected"
            await ws.send_message(json.dumps({"type": "ping", "request_id": "p"}))
            return json.loads(await ws.get_message())

    assert trio.run(ping) == {"type": "ping", "request_id": "p"}
    assert server.stop() == 0


async def test_the_server_logs_the_path_in_use_when_it_starts(db_path, caplog):
    caplog.set_level(logging.INFO, logger="agentcast.transport")
    async with running_server(db_path):
        pass
    lines = [r for r in caplog.records if "websocket fast paths" in r.getMessage()]
    assert [r.getMessage() for r in lines] == [_wsinternals.FAST_PATHS_LINE]
    assert lines[0].getMessage().startswith("websocket fast paths on" if FAST_PATHS else "websocket fast paths off")


def test_ci_runs_the_transport_tests_again_with_the_fast_paths_off():
    root = Path(__file__).parent.parent
    ci = (root / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "AGENTCAST_WS_FAST_PATHS=0 python3 -m pytest -m transport" in ci
    markers = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("transport: ") for m in markers)
