"""transport._wsinternals, the one place that uses trio-websocket internals: several messages in one
socket write, each still arriving as its own message; and frame coalescing (transport.protocol.coalesce)."""
from __future__ import annotations

import socket
import struct

import trio
import trio.testing
from trio_websocket import ConnectionClosed, wrap_client_stream, wrap_server_stream
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, TextMessage

import pytest

from transport import protocol as p
from transport._http import PrefixedStream
from transport._wsinternals import _socket_fd, batching_supported, drop_handshake_parser, plain_framing, send_text_batch


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


async def test_the_installed_trio_websocket_has_the_internals():
    async with trio.open_nursery() as nursery:
        server_ws, _ = await pair(nursery)
        assert batching_supported(server_ws)
        nursery.cancel_scope.cancel()


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


def test_coalesce_merges_adjacent_chunks_of_one_turn_only():
    frames = [
        p.AgentThinking("a", "r"),
        p.ResponseChunk("a", "Hel", "r"),
        p.ResponseChunk("a", "lo", "r"),
        p.ResponseChunk("b", "other agent", "r"),
        p.ResponseChunk("a", " there", "r2"),
        p.ResponseChunk("a", "!", "r2"),
        p.Response("a", "Hello", 3, "r"),
        p.ResponseChunk("a", "after", "r"),
    ]
    assert p.coalesce(frames) == [
        p.AgentThinking("a", "r"),
        p.ResponseChunk("a", "Hello", "r"),
        p.ResponseChunk("b", "other agent", "r"),
        p.ResponseChunk("a", " there!", "r2"),
        p.Response("a", "Hello", 3, "r"),
        p.ResponseChunk("a", "after", "r"),
    ]
    assert p.coalesce([]) == []


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
        with trio.fail_after(60):  # a generous bound against a hang, not a timing assertion
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
            with trio.fail_after(30):
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
