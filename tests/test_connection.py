"""Transport units over in-memory streams (trio.testing): a client that stops reading is cut off
with 1013 while everyone else goes on, and what it missed is still complete in the log; a turn's
frames go out in as few writes as its brain allows."""
from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, wrap_client_stream, wrap_server_stream

from agentcast.actors import AgentSpec, EchoBrain, TurnChunkOutput, TurnDoneOutput, TurnResponseOutput, TurnStartedOutput
from agentcast.transport import protocol as p
from agentcast.transport._connection import FRAME_OVERHEAD, TRY_AGAIN_LATER, Connection, OutboxBudget
from agentcast.transport.server import ServerSettings
from support import scaled
from support.harness import Harness, recv, recv_until
from agentcast.transport._wsinternals import FAST_PATHS, FAST_PATHS_LINE

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)


@pytest.fixture
async def h(nursery, tmp_path):
    """Agents on a fresh log; everything is cancelled when the test ends (pytest-trio's nursery)."""
    harness = Harness(nursery, str(tmp_path / "agentcast.db"))
    await harness.start()
    return harness


async def test_a_client_that_stops_reading_is_closed_with_1013_and_nobody_waits(h):
    reader_ws, _ = await h.client()
    assert (await recv(reader_ws))["type"] == "connected"
    stalled_ws, stalled = await h.client(lockstep=True, outbox_size=4)
    # The stalled client never reads: its first frame ("connected") already blocks the writer.
    await stalled_ws.send_message(json.dumps({"type": "set_user", "user_id": "slow"}))
    for i in range(3):
        await stalled_ws.send_message(json.dumps({"type": "chat", "agent_id": "my_agent", "message": f"unread {i}"}))
    await h.wait_finished(stalled)
    assert stalled._closing[0] == TRY_AGAIN_LATER
    # Everyone else goes on.
    await reader_ws.send_message(json.dumps({"type": "chat", "agent_id": "my_agent", "message": "still fine"}))
    frames = await recv_until(reader_ws, "agent_done")
    assert "still fine" in frames[-2]["message"]
    # Whatever the stalled client's commands started is complete in the log: the turns it
    # submitted before being cut off were carried out and committed, whole.
    await h.agents.wait_idle()
    events = list(h.log.read(user="slow"))
    said = [r.event.content for r in events if r.event.role == "user"]
    assert said and said == [f"unread {i}" for i in range(len(said))]
    assert [r.event.role for r in events] == ["user", "assistant"] * len(said)


async def test_deliveries_after_the_client_left_are_ignored(h):
    ws, conn = await h.client()
    assert (await recv(ws))["type"] == "connected"
    await ws.aclose()
    await h.wait_finished(conn)
    conn.deliver(TurnDoneOutput("my_agent", None))  # must neither raise nor block


async def test_a_slow_client_that_reads_again_in_time_sees_the_1013_close(h):
    ws, conn = await h.client(lockstep=True, outbox_size=2)
    for _ in range(2):  # 14 frames: more than the client library buffers plus the queue holds
        await ws.send_message(json.dumps({"type": "chat", "agent_id": "my_agent", "message": "flood me"}))
    with trio.fail_after(scaled(10)):
        while conn._closing is None:
            await trio.sleep(0.01)
    received = []
    try:
        while True:
            received.append(await recv(ws))
    except ConnectionClosed as closed:
        assert closed.reason.code == TRY_AGAIN_LATER
    # it got what was already on its way when the queue overflowed (its WebSocket library
    # buffers a frame or two), then the close; not the rest of the turn
    types = [f["type"] for f in received]
    assert types[0] == "connected" and types.count("agent_done") < 2


async def test_the_outbound_queue_is_bounded_in_size_not_only_in_frames(h):
    h.settings = {"outbox_bytes": 3000}  # frames are many fewer than outbox_size; their text is not
    ws, conn = await h.client(lockstep=True)
    for _ in range(3):
        await ws.send_message(json.dumps({"type": "chat", "agent_id": "my_agent", "message": "z" * 2000}))
    await h.wait_finished(conn)
    assert conn._closing[0] == TRY_AGAIN_LATER


async def test_a_connection_closed_before_it_runs_closes_with_that_code_at_once(h):
    """As at a shutdown that began during the handshake: `close` before `run` (no scope yet) still
    bounds the connection by `close_timeout`, and the client gets the close code, nothing else."""
    server_stream, client_stream = trio.testing.memory_stream_pair()
    done = trio.Event()

    async def serve():
        ws = await (await wrap_server_stream(h.nursery, server_stream)).accept()
        conn = Connection(ws, h.agents, h.audience, clock=lambda: "2026-01-01T00:00:00.000Z",
                          settings=ServerSettings(close_timeout=0.5))
        conn.close(1001, "server shutting down")
        await conn.run()
        done.set()

    h.nursery.start_soon(serve)
    ws = await wrap_client_stream(h.nursery, client_stream, "127.0.0.1", "/ws")
    with pytest.raises(ConnectionClosed) as closed:
        await recv(ws)
    assert closed.value.reason.code == 1001
    with trio.fail_after(scaled(5)):
        await done.wait()


async def chat_turn(ws, agent_id, message="hello there, how are you today"):
    """Send a chat and receive its frames up to agent_done."""
    await ws.send_message(json.dumps({"type": "subscribe", "agent_id": agent_id}))
    assert (await recv(ws))["type"] == "subscribed"
    await ws.send_message(json.dumps({"type": "chat", "agent_id": agent_id, "message": message}))
    return await recv_until(ws, "agent_done")


def turn_writes(writes):
    """The server's writes from the one carrying agent_thinking on."""
    first = next(i for i, w in enumerate(writes) if b'"agent_thinking"' in w)
    return writes[first:]


@pytest.mark.skipif(not FAST_PATHS, reason=f"{FAST_PATHS_LINE}: trio-websocket writes each frame on its own")
async def test_a_turn_answered_at_once_goes_out_in_one_write(h):
    """The echo brain answers within one step: its agent_thinking and chunks are held while the answer
    commits, and go out with response and agent_done in a single socket write (not two)."""
    writes = []
    ws, _ = await h.client(writes=writes)
    assert (await recv(ws))["type"] == "connected"
    frames = await chat_turn(ws, "my_agent")
    assert [f["type"] for f in frames][0] == "agent_thinking" and frames[-2]["type"] == "response"
    (turn,) = turn_writes(writes)
    assert b'"response_chunk"' in turn and b'"response"' in turn and b'"agent_done"' in turn


@pytest.mark.skipif(not FAST_PATHS, reason=f"{FAST_PATHS_LINE}: trio-websocket writes each frame on its own")
async def test_a_streaming_brain_still_streams_only_its_last_burst_waits_for_the_commit(nursery, tmp_path):
    """A brain that waits between chunks: agent_thinking and each chunk but the last are written as they
    come (nothing is held while the brain works); the last chunk goes with the ending's frames.
    (Real time, 20 ms a chunk: the journal's thread would make an autojump clock skip ahead.)"""
    h = Harness(nursery, str(tmp_path / "agentcast.db"), [AgentSpec("slow", EchoBrain(delay=0.02, chunks=3))])
    await h.start()
    writes = []
    ws, _ = await h.client(writes=writes)
    assert (await recv(ws))["type"] == "connected"
    frames = await chat_turn(ws, "slow")
    assert [f["type"] for f in frames] == ["agent_thinking"] + ["response_chunk"] * 3 + ["response", "agent_done"]
    turn = turn_writes(writes)
    assert len(turn) == 4, turn  # agent_thinking, chunk 1, chunk 2, then chunk 3 + response + agent_done
    assert b'"response_chunk"' not in turn[0]
    assert [w.count(b'"response_chunk"') for w in turn[1:]] == [1, 1, 1]
    assert b'"agent_done"' in turn[3] and b'"agent_done"' not in turn[2]


async def test_held_frames_wait_for_a_release_and_a_close_does_not_wait(h):
    writes = []
    ws, conn = await h.client(writes=writes)
    assert (await recv(ws))["type"] == "connected"
    before = len(writes)
    conn.hold()
    conn.deliver(TurnChunkOutput("my_agent", "one", "r1"))
    conn.deliver(TurnChunkOutput("my_agent", "two", "r1"))
    await trio.testing.wait_all_tasks_blocked()
    assert len(writes) == before  # held: the writer leaves them queued
    conn.release()
    frame = await recv(ws)
    assert (frame["type"], frame["delta"]) == ("response_chunk", "onetwo")  # one write, chunks merged
    assert len(writes) == before + 1
    conn.hold()
    conn.deliver(TurnChunkOutput("my_agent", "three", "r2"))
    conn.close(1000, "bye")  # never released: the close drains the queue anyway
    assert (await recv(ws))["delta"] == "three"
    with pytest.raises(ConnectionClosed):
        await recv(ws)
    await h.wait_finished(conn)


async def test_holds_taken_in_turn_never_starve_the_writer(h):
    """Two lanes holding one connection in turn (its user chatting with two agents), so that some hold
    is always on: every release lets the queue go, a frame waits for one commit at most."""
    writes = []
    ws, conn = await h.client(writes=writes)
    assert (await recv(ws))["type"] == "connected"
    conn.hold()  # lane a
    for n in range(5):
        conn.deliver(TurnChunkOutput("my_agent", f"chunk{n}", f"r{n}"))
        conn.hold()  # the other lane holds before this one releases
        await trio.testing.wait_all_tasks_blocked()
        conn.release()
        frame = await recv(ws)
        assert frame["delta"] == f"chunk{n}"
    assert conn._outbox._holds == 1
    conn.release()


async def test_frames_queued_before_a_hold_wait_for_its_release(h):
    """The writer woken for a frame (agent_thinking) before the lane holds the queue leaves it queued
    until the release: the turn's frames still go out together."""
    writes = []
    ws, conn = await h.client(writes=writes)
    assert (await recv(ws))["type"] == "connected"
    before = len(writes)
    conn.deliver(TurnChunkOutput("my_agent", "a", "r1"))  # wakes the writer...
    conn.hold()  # ... which runs only after this
    await trio.testing.wait_all_tasks_blocked()
    assert len(writes) == before
    conn.deliver(TurnChunkOutput("my_agent", "b", "r1"))
    conn.release()
    assert (await recv(ws))["delta"] == "ab"
    assert len(writes) == before + 1


# -- the outbound queue's bounds, in encoded bytes ------------------------------------------------------

EMOJI = "\U0001F600"


async def sent_pings(ws, request_ids):
    """Send a ping per request id; return once the server has handled them all (in-memory streams)."""
    for rid in request_ids:
        await ws.send_message(json.dumps({"type": "ping", "request_id": rid}))
    await trio.testing.wait_all_tasks_blocked()


def counted(frames) -> int:
    """What `frames` count for in the queue's bounds: their UTF-8 JSON plus the per-frame overhead."""
    return sum(len(p.encode_utf8(f)) + FRAME_OVERHEAD for f in frames)


async def test_the_outbound_queue_counts_each_frames_utf8_bytes_every_field_included(h):
    """A pong is as big as its request_id makes it: escapes, multi-byte characters and all. The queue
    takes exactly `outbox_bytes` of them, and closes (1013) at the next byte."""
    rids = ["\x01" * 40, EMOJI * 64, "é" * 128, "plain"]  # 6 bytes per character as JSON, 4, 2, 1
    h.settings = {"outbox_bytes": counted(p.Pong(r) for r in rids)}
    ws, conn = await h.client()
    assert (await recv(ws))["type"] == "connected"
    await trio.testing.wait_all_tasks_blocked()
    conn.hold()  # nothing is taken from the queue now: it only grows
    await sent_pings(ws, rids)
    assert conn._closing is None and conn.held_bytes == h.settings["outbox_bytes"]
    await sent_pings(ws, ["x"])
    assert conn._closing[0] == TRY_AGAIN_LATER


async def test_many_tiny_frames_count_too(h):
    """Each frame counts FRAME_OVERHEAD bytes beside its JSON: 1,024 tiny frames hold more than their text."""
    h.settings = {"outbox_bytes": 1024 * FRAME_OVERHEAD}
    ws, conn = await h.client(outbox_size=100_000)
    assert (await recv(ws))["type"] == "connected"
    await trio.testing.wait_all_tasks_blocked()
    conn.hold()
    for n in range(1024):
        conn.deliver(TurnDoneOutput("a", None))  # {"type":"agent_done","agent_id":"a"}: 37 bytes of JSON
        if conn._closing is not None:
            break
    assert conn._closing[0] == TRY_AGAIN_LATER and n < 1024
    assert n == 1024 * FRAME_OVERHEAD // (len(p.encode_utf8(p.AgentDone("a"))) + FRAME_OVERHEAD)


async def test_adjacent_chunks_of_a_turn_are_one_frame_counted_as_it_is_sent(h):
    """Chunks of one turn queued back to back are merged into one frame as they are queued; the queue
    counts that frame's bytes exactly, and nothing once written."""
    writes = []
    ws, conn = await h.client(writes=writes)
    assert (await recv(ws))["type"] == "connected"
    await trio.testing.wait_all_tasks_blocked()
    conn.hold()
    for output in [
        TurnStartedOutput("a", "r"), TurnChunkOutput("a", "Hel", "r"), TurnChunkOutput("a", "lo \x00 ☕", "r"),
        TurnChunkOutput("b", "other agent", "r"), TurnChunkOutput("a", " there", "r2"), TurnChunkOutput("a", "!", "r2"),
        TurnResponseOutput("a", "Hello", 3, "r"), TurnChunkOutput("a", "after", "r"),
    ]:
        conn.deliver(output)
    expected = [
        p.AgentThinking("a", "r"), p.ResponseChunk("a", "Hello \x00 ☕", "r"), p.ResponseChunk("b", "other agent", "r"),
        p.ResponseChunk("a", " there!", "r2"), p.Response("a", "Hello", 3, "r"), p.ResponseChunk("a", "after", "r"),
    ]
    assert conn.held_bytes == conn._outbox.budget.held == counted(expected)
    before = len(writes)
    conn.release()
    assert [await recv(ws) for _ in expected] == [json.loads(p.encode_utf8(f)) for f in expected]
    assert len(writes) == before + (1 if FAST_PATHS else len(expected))  # one socket write (the public API: one a frame)
    assert conn.held_bytes == conn._outbox.budget.held == 0


async def test_a_client_that_stops_reading_holds_no_more_than_outbox_bytes_written_or_not(h):
    """Frames count until they are written: a batch the writer is stuck writing to a client that stopped
    reading still counts, so what such a client makes the server hold stays within `outbox_bytes`.
    More than WRITE_PIECE bytes are taken from the queue a piece at a time, and a close drops the rest."""
    h.settings = {"outbox_bytes": 200_000}
    ws, conn = await h.client(lockstep=True)  # its writes wait for the client to read: it never does
    await trio.testing.wait_all_tasks_blocked()
    conn.hold()
    rids = [f"{n:04d}" + "r" * 250 for n in range(800)]  # about 350 bytes counted each
    await sent_pings(ws, rids[:400])
    held = conn.held_bytes
    assert held > 100_000
    conn.release()  # the writer takes a piece and is stuck writing it
    await trio.testing.wait_all_tasks_blocked()
    assert conn._mid_frame and conn.held_bytes == held  # written or not, all of it counts
    queued = sum(len(f) + FRAME_OVERHEAD for f in conn._outbox.queued)
    assert 0 < held - queued <= 64 * 1024 + 400  # in the writer's hands: one piece
    await sent_pings(ws, rids[400:])
    assert conn._closing[0] == TRY_AGAIN_LATER
    assert not conn._outbox.queued and conn.held_bytes == held - queued  # the queue was dropped at once


# -- the server-wide cap on outbound bytes ------------------------------------------------------------------


async def test_past_the_servers_cap_the_connections_holding_the_most_are_closed(h):
    """`outbox_bytes_total` bounds the bytes all queues hold together: a frame that would pass it closes
    (1013, queue dropped) the connection holding the most first, whoever queues the frame."""
    pong = len(p.encode_utf8(p.Pong("r" * 200))) + FRAME_OVERHEAD
    h.budget = OutboxBudget(100 * pong, h.connections)
    big_ws, big = await h.client()
    small_ws, small = await h.client()
    for ws in (big_ws, small_ws):
        assert (await recv(ws))["type"] == "connected"
    await trio.testing.wait_all_tasks_blocked()
    assert h.budget.held == 0
    big.hold()
    small.hold()
    await sent_pings(big_ws, ["r" * 200] * 60)
    await sent_pings(small_ws, ["r" * 200] * 40)
    assert h.budget.held == 100 * pong and big._closing is None and small._closing is None  # at the cap
    await sent_pings(small_ws, ["r" * 200])  # one more, from the smaller: the bigger goes
    assert big._closing == (TRY_AGAIN_LATER, "the server's outbound queues are full and this client's holds the most")
    assert big.held_bytes == 0 and small._closing is None and small.held_bytes == 41 * pong
    assert h.budget.held == 41 * pong
    # The total is now well under the cap (at most 3/4 of it): the next frames go in without another trim.
    await sent_pings(small_ws, ["r" * 200] * 34)
    assert small._closing is None and h.budget.held == 75 * pong
    await sent_pings(small_ws, ["r" * 200] * 26)  # past the cap again: now it holds the most
    assert small._closing[0] == TRY_AGAIN_LATER and h.budget.held == 0
    await h.wait_finished(big)
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await recv(big_ws)
    assert closed.value.reason.code == TRY_AGAIN_LATER


async def test_a_connection_closing_with_a_queue_to_drain_loses_it_to_the_servers_cap(h):
    """A close that drains (a shutdown's 1001) keeps the queue of a client that does not read: past the
    server's cap that queue is dropped too, and the close keeps its code."""
    pong = len(p.encode_utf8(p.Pong("r" * 200))) + FRAME_OVERHEAD
    h.budget = OutboxBudget(10**9, h.connections)
    closing_ws, closing = await h.client(lockstep=True)  # it never reads
    other_ws, other = await h.client()
    assert (await recv(other_ws))["type"] == "connected"
    await trio.testing.wait_all_tasks_blocked()
    closing.hold()
    other.hold()
    await sent_pings(closing_ws, ["r" * 200] * 400)
    closing.close(1001, "server shutting down")
    await trio.testing.wait_all_tasks_blocked()
    assert closing._outbox.queued  # its writer is stuck on a piece of WRITE_PIECE bytes: the rest waits to be drained
    in_flight = closing.held_bytes - sum(len(f) + FRAME_OVERHEAD for f in closing._outbox.queued)
    h.budget.cap = closing.held_bytes + 10 * pong
    await sent_pings(other_ws, ["r" * 200] * 11)
    assert closing._closing == (1001, "server shutting down") and not closing._outbox.queued
    assert closing.held_bytes == in_flight and other._closing is None
    assert h.budget.held == in_flight + 11 * pong
