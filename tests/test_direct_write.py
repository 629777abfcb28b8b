"""A streamed token (`response_chunk`) for a connection whose queue is idle and that has been quiet for a moment
is written to its socket by the task that delivers it (over real loopback TCP): the frames still arrive in the
order they were delivered, a rest the socket did not take goes before anything else (control frames included)
and counts in the bounds until written, and a client that never reads is still closed with 1013. Without the
fast paths, every frame is queued as before."""
from __future__ import annotations

import json
import socket
import struct

import pytest
import trio

from agentcast.actors import TurnChunkOutput, TurnDoneOutput
from agentcast.transport._connection import FRAME_OVERHEAD, GOING_AWAY, TRY_AGAIN_LATER, Connection
from agentcast.transport._wsinternals import FAST_PATHS
from support import scaled
from support.server import HANDSHAKE, running_server

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)

#: Settings that keep the server from writing anything the test did not ask for.
QUIET = {"heartbeat_interval": 0, "idle_timeout": 0}

fast_path_only = pytest.mark.skipif(not FAST_PATHS, reason="the direct write is a fast path")


class RawClient:
    """A WebSocket client by hand on a non-blocking stdlib socket, so that the test can look at what the
    server wrote without yielding to the server's tasks (`available`)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def available(self) -> bytes:
        """What the server has written so far, read now without waiting (no checkpoint)."""
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return self.buffer
            if not data:
                return self.buffer
            self.buffer += data

    async def read(self) -> bool:
        """Wait for bytes and read them; False at EOF."""
        await trio.lowlevel.wait_readable(self.sock)
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            return False
        self.buffer += data
        return bool(data)

    def frames(self) -> list[tuple[int, bytes]]:
        """The complete frames in the buffer, (opcode, payload), taken out of it."""
        out = []
        data = self.buffer
        while len(data) >= 2:
            b0, b1 = data[0], data[1]
            assert b0 & 0x80 and not b1 & 0x80, "a server's frames are whole (FIN) and unmasked"
            n, at = b1 & 0x7F, 2
            if n == 126:
                if len(data) < 4:
                    break
                (n,), at = struct.unpack("!H", data[2:4]), 4
            elif n == 127:
                if len(data) < 10:
                    break
                (n,), at = struct.unpack("!Q", data[2:10]), 10
            if len(data) < at + n:
                break
            out.append((b0 & 0x0F, data[at:at + n]))
            data = data[at + n:]
        self.buffer = data
        return out

    async def frames_until(self, count: int) -> list[tuple[int, bytes]]:
        frames: list[tuple[int, bytes]] = []
        with trio.fail_after(scaled(10)):
            while len(frames) < count:
                frames += self.frames()
                if len(frames) < count and not await self.read():
                    break
        return frames

    def send_masked(self, opcode: int, payload: bytes) -> None:
        assert len(payload) < 126
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)


async def open_client(server, *, receive_buffer: int | None = None) -> tuple[RawClient, Connection]:
    """A client past the handshake, and its connection on the server once the writer has written `connected`
    and waits for more."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    try:
        sock.connect(("127.0.0.1", server.port))
    except BlockingIOError:
        await trio.lowlevel.wait_writable(sock)
    before = set(server.connections)
    sock.sendall(HANDSHAKE.format(path="/ws").encode())
    client = RawClient(sock)
    with trio.fail_after(scaled(10)):
        while b"\r\n\r\n" not in client.buffer:
            assert await client.read()
        head, client.buffer = client.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101")
        while not set(server.connections) - before:
            await trio.sleep(0.01)
        (conn,) = set(server.connections) - before
        (connected,) = await client.frames_until(1)
        assert json.loads(connected[1])["type"] == "connected"
        while conn.held_bytes:  # the writer has written `connected`
            await trio.sleep(0.01)
        await trio.sleep(0.01)
    return client, conn


def chunk(delta: str, rid: str = "r1") -> TurnChunkOutput:
    return TurnChunkOutput("my_agent", delta, rid)


def texts(frames: list[tuple[int, bytes]]) -> list[str]:
    assert all(opcode == 1 for opcode, _ in frames)
    return [json.loads(payload) for _, payload in frames]


async def test_frames_go_out_in_the_order_delivered_whether_written_at_once_or_queued(db_path):
    async with running_server(db_path, **QUIET) as server:
        client, conn = await open_client(server)
        conn.deliver(chunk("a"))
        if FAST_PATHS:  # on the socket already, though the delivering task has not yielded since
            assert b'"delta":"a"' in client.available() and conn.held_bytes == 0
        conn.hold()  # held: what is delivered meanwhile waits in the queue
        conn.deliver(chunk("b", "r2"))
        conn.deliver(chunk("c", "r2"))
        conn.release()  # the writer waits with nothing to write: what was held is written at once, in one write
        if FAST_PATHS:
            assert client.available().endswith(b'"delta":"bc","request_id":"r2"}') and conn.held_bytes == 0
        conn.deliver(chunk("d", "r3"))  # right behind a write: part of a burst, queued for the writer
        assert conn.held_bytes > 0
        with trio.fail_after(scaled(10)):
            while conn.held_bytes:
                await trio.sleep(0.01)
        await trio.sleep(0.01)
        conn.deliver(chunk("e", "r4"))  # idle and quiet again: written at once
        if FAST_PATHS:
            assert b'"delta":"e"' in client.available() and conn.held_bytes == 0
        conn.deliver(chunk("f", "r4"))  # right behind a frame written: part of a burst, queued for the writer
        assert conn.held_bytes > 0
        with trio.fail_after(scaled(10)):
            while conn.held_bytes:
                await trio.sleep(0.01)
        await trio.sleep(0.01)
        conn.deliver(TurnDoneOutput("my_agent", "r4"))  # not a streamed token: through the writer, quiet or not
        assert conn.held_bytes > 0
        # (without the fast paths "e" was queued too, and "f" joined it: one frame)
        ef = [("response_chunk", "e"), ("response_chunk", "f")] if FAST_PATHS else [("response_chunk", "ef")]
        expected = [("response_chunk", "a"), ("response_chunk", "bc"), ("response_chunk", "d"), *ef, ("agent_done", None)]
        got = texts(await client.frames_until(len(expected)))
        assert [(f["type"], f.get("delta")) for f in got] == expected
        client.sock.close()


async def test_frames_held_through_a_commit_go_out_when_released_in_order_after_a_rest_kept_before(db_path):
    async with running_server(db_path, **QUIET) as server:
        client, conn = await open_client(server, receive_buffer=4096)
        conn.hold()
        conn.deliver(chunk("a"))
        conn.deliver(TurnDoneOutput("my_agent", "r1"))
        assert client.available() == b""  # held
        conn.release()
        if FAST_PATHS:  # written by the releasing task, before it has yielded
            client.available()
            assert texts(client.frames()) == [{"type": "response_chunk", "agent_id": "my_agent", "delta": "a",
                                               "request_id": "r1"}, {"type": "agent_done", "agent_id": "my_agent",
                                                                     "request_id": "r1"}]
            assert conn.held_bytes == 0 == server.outbox_budget.held
        else:
            assert len(await client.frames_until(2)) == 2
        await trio.sleep(0.01)  # quiet again
        if FAST_PATHS:  # a frame the socket took in part: its rest is kept, and the next release must not pass it
            direct = conn._ws._stream
            direct.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            big = "x" * 1_000_000
            conn.deliver(chunk(big, "r2"))
            assert direct.rest
        else:
            big = "x"
            conn.deliver(chunk(big, "r2"))
        conn.hold()
        conn.deliver(TurnDoneOutput("my_agent", "r2"))
        conn.release()
        got = texts(await client.frames_until(2))
        assert [(f["type"], f.get("delta")) for f in got] == [("response_chunk", big), ("agent_done", None)]
        with trio.fail_after(scaled(10)):
            while conn.held_bytes:
                await trio.sleep(0.01)
        assert server.outbox_budget.held == 0
        client.sock.close()


@fast_path_only
async def test_the_rest_of_a_frame_the_socket_did_not_take_goes_before_a_ping_and_the_close_and_counts_until_written(db_path):
    async with running_server(db_path, **QUIET) as server:
        client, conn = await open_client(server, receive_buffer=4096)
        direct = conn._ws._stream
        direct.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = "x" * 1_000_000
        conn.deliver(chunk(big))
        rest = len(direct.rest)
        assert 0 < rest < len(big)  # written in part at once; the kernel took no more
        assert conn.held_bytes == rest + FRAME_OVERHEAD == server.outbox_budget.held
        # Before the writer has run: a control frame written now must come after the whole frame.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn._ws.ping, b"after the rest")
            got: list[tuple[int, bytes]] = []
            with trio.fail_after(scaled(10)):
                while len(got) < 2:
                    got += client.frames()
                    if len(got) < 2:
                        assert await client.read()
            client.send_masked(10, b"after the rest")  # the pong `ping` waits for
        assert [opcode for opcode, _ in got] == [1, 9] and got[1][1] == b"after the rest"
        assert json.loads(got[0][1])["delta"] == big
        with trio.fail_after(scaled(10)):
            while conn.held_bytes:  # the writer has told the queue the rest is written
                await trio.sleep(0.01)
        assert server.outbox_budget.held == 0
        await trio.sleep(0.01)  # quiet again
        # A pong and the close after another partial write: both after the frame, whole.
        conn.deliver(chunk(big, "r2"))
        assert direct.rest
        client.send_masked(9, b"client ping")
        conn.close(GOING_AWAY, "bye")
        got = []
        with trio.fail_after(scaled(10)):
            while not got or got[-1][0] != 8:
                got += client.frames()
                if not got or got[-1][0] != 8:
                    assert await client.read()
        assert got[0][0] == 1 and json.loads(got[0][1])["delta"] == big
        assert (10, b"client ping") in got[1:]
        assert got[-1][0] == 8 and struct.unpack("!H", got[-1][1][:2])[0] == GOING_AWAY
        client.sock.close()


async def test_a_client_that_never_reads_is_still_closed_with_1013(db_path):
    async with running_server(db_path, outbox_size=64, outbox_bytes=64 * 1024, close_timeout=0.5, **QUIET) as server:
        client, conn = await open_client(server, receive_buffer=4096)
        conn.deliver(chunk("first"))
        if FAST_PATHS:
            assert conn.held_bytes == 0  # written at once
        with trio.fail_after(scaled(30)):
            turn = 0
            while conn._closing is None:
                turn += 1
                conn.deliver(chunk("y" * 2000, f"r{turn}"))
                await trio.sleep(0)
            assert conn._closing[0] == TRY_AGAIN_LATER
            while conn in server.connections:
                await trio.sleep(0.01)
        assert server.outbox_budget.held == 0
        client.sock.close()


def test_without_the_fast_paths_a_connection_has_no_direct_writer(monkeypatch):
    from agentcast.transport import _wsinternals

    class Stream:  # what direct_writer would look at, were it allowed to
        stream = None
    monkeypatch.setattr(_wsinternals, "FAST_PATHS", False)
    assert _wsinternals.direct_writer(Stream()) is None  # type: ignore[arg-type]
