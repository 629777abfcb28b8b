"""One connection cannot take more than its share of the event loop (issue 13 §2): its input is read no
faster than its budget (`input_bytes_per_second`, bursts of `input_burst_bytes`, every frame counting
FRAME_COST more), with backpressure instead of errors; its reader lets the others run after each pass of
work however much it has sent; a well-behaved connection is answered meanwhile; and a fragmented message
cannot make the server hold more than its size. Real loopback sockets; time is trio's MockClock
(`autojump_clock`) and work is counted in frames, never measured on the real clock."""
from __future__ import annotations

import json
import socket

import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection

from support import HANDSHAKE, connect, running_server
from agentcast.transport._settings import ServerSettings
from agentcast.transport._wsinternals import (
    FAST_PATHS,
    FAST_PATHS_LINE,
    PASS_WORK,
    WSPROTO_FRAME_COST,
    serve_stream,
    take_messages,
)

#: With the fast paths off (AGENTCAST_WS_FAST_PATHS=0) trio-websocket's own reader serves each connection:
#: none of this applies (docs/security.md says so). CI runs the module both ways.
pytestmark = pytest.mark.transport
fast_path_only = pytest.mark.skipif(not FAST_PATHS, reason=f"{FAST_PATHS_LINE}: trio-websocket's reader is not paced")

#: What trio-websocket reads at a time (and so this server's reader).
READ_BYTES = 4096


def client_frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """A client's masked frame with mask key 0 (the payload as is)."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def open_raw(server) -> trio.SocketStream:
    """A raw client past the handshake (its receive buffer small: it will not read again)."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", server.port))
    stream = trio.SocketStream(sock)
    await stream.send_all(HANDSHAKE.format(path="/ws").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(1)  # byte by byte: nothing past the head is read
    assert head.startswith(b"HTTP/1.1 101")
    return stream


def server_ws(server, before: set) -> WebSocketConnection:
    """The server side of the one connection opened since `before` (a copy of `server.connections`)."""
    (conn,) = set(server.connections) - before
    return conn._ws


@fast_path_only
async def test_a_connection_sending_faster_than_its_budget_is_read_no_faster_than_it(db_path, autojump_clock):
    """A client sends 512 KiB of pings at once against a budget of 64 KiB a second (bursts of 64 KiB): the
    server answers them no faster than the budget allows (counted at every answer, in mock-clock time), and
    no slower than it either; nothing is refused or dropped. Another client, within its own budget, is
    answered at once all along."""
    rate = burst = 64 * 1024
    async with running_server(db_path, input_bytes_per_second=rate, input_burst_bytes=burst,
                              heartbeat_interval=0, idle_timeout=0) as server:
        async with connect(server.port) as flooder, connect(server.port) as other:
            pad = "p" * 8000
            frames = [json.dumps({"type": "ping", "request_id": str(i), "pad": pad}) for i in range(64)]
            wire = len(frames[0]) + 8  # the frame's header (4 bytes here) and mask key (4)
            start = trio.current_time()
            answered: list[float] = []  # mock seconds after the start at which each ping was answered
            other_waits: list[float] = []

            async def flood():
                for frame in frames:
                    await flooder.send(frame)

            async def keep_chatting():  # a well-behaved client: a ping every half second, each answered at once
                while len(answered) < len(frames):
                    sent = trio.current_time()
                    assert (await other.request({"type": "ping", "request_id": "o"}, "ping"))[-1]["request_id"] == "o"
                    other_waits.append(trio.current_time() - sent)
                    await trio.sleep(0.5)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                nursery.start_soon(keep_chatting)
                for i in range(len(frames)):
                    answer = await flooder.recv(timeout=60)
                    assert answer == {"type": "ping", "request_id": str(i)}  # every one, in order
                    answered.append(trio.current_time() - start)

        # Never faster than the budget: by each answer, the bytes handled are within the burst plus what
        # the budget has refilled since, give or take one read beyond an empty bucket (and a frame).
        for k, at in enumerate(answered, 1):
            assert k * wire <= burst + rate * at + READ_BYTES + WSPROTO_FRAME_COST, (k, at)
        # Nor slower: the last answer comes once the budget has refilled for everything it counts (the bytes;
        # these frames are larger than a read, so wsproto parses them: WSPROTO_FRAME_COST for each part of one
        # that a read took), and a pass more at most.
        counted = len(frames) * (wire + WSPROTO_FRAME_COST) + (len(frames) * wire // READ_BYTES + 2) * WSPROTO_FRAME_COST
        assert answered[-1] <= (counted - burst + PASS_WORK) / rate
        assert answered[-1] >= (len(frames) * wire - burst - READ_BYTES) / rate > 5  # it did take its time
        assert len(other_waits) > 10 and max(other_waits) == 0  # the other client's budget is its own


@fast_path_only
@pytest.mark.parametrize("rate", [0, ServerSettings().input_bytes_per_second], ids=["unpaced", "default budget"])
async def test_a_well_behaved_connection_is_answered_after_a_pass_of_a_floods_work(db_path, monkeypatch, rate):
    """A client has queued 300 KB of empty pong frames (control frames: never answered, 682 to a read of
    4 KiB). Meanwhile another client's ping is answered while the flooder's reader has handled at most a
    few passes of work (PASS_WORK each, a frame counting WSPROTO_FRAME_COST): counted in frames, not timed."""
    handled = 0
    handle_pong = WebSocketConnection._handle_pong_event

    async def counting(self, event):
        nonlocal handled
        handled += 1
        await handle_pong(self, event)

    monkeypatch.setattr(WebSocketConnection, "_handle_pong_event", counting)
    flood = client_frame(b"", opcode=0xA) * 50_000
    async with running_server(db_path, input_bytes_per_second=rate, heartbeat_interval=0) as server:
        async with connect(server.port) as client:
            flooder = await open_raw(server)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flooder.send_all, flood)
                while handled < 1000:  # the flood is being read
                    await trio.sleep(0.001)
                waited = []
                for i in range(5):
                    before = handled
                    await client.request({"type": "ping", "request_id": str(i)}, "ping")
                    waited.append(handled - before)
                    await trio.lowlevel.checkpoint()
                nursery.cancel_scope.cancel()
            await flooder.aclose()
    per_pass = PASS_WORK // WSPROTO_FRAME_COST
    # Answering takes a few of the scheduler's rounds (the reader, the writer, the client), the flood's reader
    # doing a pass in each; before passes were bounded it handled a whole read in one (682 frames).
    assert max(waited) <= 10 * per_pass, waited


@fast_path_only
async def test_a_fragmented_message_is_held_in_few_parts_and_empty_fragments_add_nothing(db_path):
    """trio-websocket keeps a fragmented message's parts in a list until its last fragment: 20,000 empty
    continuation frames would add 20,000 slots (without end: they never bring the message nearer its size
    limit), 2,000 fragments of one character 2,000 objects. The server keeps a few parts at most, and the
    message arrives whole."""
    async with running_server(db_path, heartbeat_interval=0, input_bytes_per_second=0) as server, \
            connect(server.port) as watcher:
        before = set(server.connections)
        stream = await open_raw(server)
        ws = server_ws(server, before)
        rid = "é" * 100
        text = json.dumps({"type": "ping", "request_id": rid}, ensure_ascii=False)
        first, *rest = text
        await stream.send_all(client_frame(first.encode(), fin=False))
        empty = client_frame(b"", opcode=0x0, fin=False)
        for char in rest:
            await stream.send_all(client_frame(char.encode(), opcode=0x0, fin=False) + empty * 100)
        await watcher.request({"type": "ping"}, "ping")  # the server has read everything before this
        with trio.fail_after(10):
            while ws._message_size < len(text.encode()):
                await trio.sleep(0.01)
        assert len(ws._message_parts) <= 64
        await stream.send_all(client_frame(b"", opcode=0x0, fin=True))
        answer = b""
        with trio.fail_after(10):
            while rid.encode() not in answer:  # the whole message was taken: the ping is answered
                answer += await stream.receive_some(65536)
        await stream.aclose()


def test_the_input_budget_settings_are_checked():
    assert ServerSettings(input_bytes_per_second=0).input_bytes_per_second == 0  # 0: unpaced
    with pytest.raises(ValueError, match="input_bytes_per_second"):
        ServerSettings(input_bytes_per_second=-1)
    with pytest.raises(ValueError, match="input_burst_bytes"):
        ServerSettings(input_burst_bytes=0)


@fast_path_only
def test_small_frames_cut_by_the_reads_are_parsed_without_wsproto():
    """A flood of small frames rarely ends where a read of 4 KiB does: the start of the frame a read cuts off
    is kept for the next one, so the whole stream is parsed here (the cheaper path, FRAME_COST a frame),
    not by wsproto from the first cut on."""
    async def main():
        server_stream, client_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            await client_stream.send_all(HANDSHAKE.format(path="/ws").encode())
            request = await serve_stream(nursery, server_stream, message_queue_size=2, max_message_size=1000)
            ws = await request.accept()
            fed = []
            receive_data = ws._wsproto.receive_data
            ws._wsproto.receive_data = lambda data: (fed.append(data), receive_data(data))
            taken: list = []
            take_messages(ws, taken.append)
            data = b"".join(client_frame(b'{"type":"ping","request_id":"%d"}' % i) for i in range(1500))
            assert len(data) % READ_BYTES and len(data) > 10 * READ_BYTES  # reads end inside frames
            await client_stream.send_all(data)
            await trio.testing.wait_all_tasks_blocked()
            assert taken == ['{"type":"ping","request_id":"%d"}' % i for i in range(1500)]
            assert fed == []
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
