"""Limits that keep one connection from hurting the others: heartbeat, idle timeout, rate limit,
text length, connections per user and in total (issue 4's limits, each with its default)."""
from __future__ import annotations

import json
import sys

import pytest
import trio
from trio_websocket import ConnectionClosed

from support import connect, handshake, running_server
from support.harness import Harness, recv
from agentcast.transport._connection import GOING_AWAY, INTERNAL_ERROR, TRY_AGAIN_LATER

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)


@pytest.fixture
async def h(nursery, tmp_path):
    harness = Harness(nursery, str(tmp_path / "agentcast.db"))
    await harness.start()
    return harness


async def test_a_client_that_answers_pings_stays_connected(h, autojump_clock):
    h.settings = {"heartbeat_interval": 20, "heartbeat_timeout": 20, "idle_timeout": 0}
    ws, conn = await h.client()
    assert (await recv(ws))["type"] == "connected"

    async def keep_reading():  # trio-websocket answers pings while a reader is waiting
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as n:
        n.start_soon(keep_reading)
        await trio.sleep(3600)  # 180 heartbeats (virtual time)
        assert conn not in h.finished and conn._closing is None
        n.cancel_scope.cancel()


async def test_a_client_that_never_answers_pings_is_closed_with_1011(h, autojump_clock):
    h.settings = {"heartbeat_interval": 20, "heartbeat_timeout": 20, "idle_timeout": 0}
    ws, conn = await h.client(lockstep=True)
    for _ in range(3):  # answers it never reads: its library's queue fills, then nothing is read at all
        await ws.send_message(json.dumps({"type": "ping"}))
    start = trio.current_time()
    await h.wait_finished(conn, timeout=None)
    assert conn._closing[0] == INTERNAL_ERROR
    assert 40 <= trio.current_time() - start <= 41


async def test_an_idle_connection_is_closed_with_1001_and_activity_keeps_it(h, autojump_clock):
    h.settings = {"heartbeat_interval": 0, "idle_timeout": 100}
    ws, conn = await h.client()
    assert (await recv(ws))["type"] == "connected"
    for _ in range(5):  # active every 60 s: stays open past the 100 s limit
        await trio.sleep(60)
        await ws.send_message(json.dumps({"type": "ping"}))
        assert (await recv(ws))["type"] == "ping"
    start = trio.current_time()
    with pytest.raises(ConnectionClosed) as closed:
        await ws.get_message()
    assert closed.value.reason.code == GOING_AWAY and 99 <= trio.current_time() - start <= 101


async def test_with_heartbeats_on_an_idle_connection_is_still_closed_and_pongs_are_not_activity(h, autojump_clock):
    """Heartbeat and idle timeout share one task per connection: both act."""
    h.settings = {"heartbeat_interval": 20, "heartbeat_timeout": 20, "idle_timeout": 100}
    ws, conn = await h.client()
    assert (await recv(ws))["type"] == "connected"
    start = trio.current_time()
    with pytest.raises(ConnectionClosed) as closed:  # reading: trio-websocket answers the pings meanwhile
        while True:
            await ws.get_message()
    assert closed.value.reason.code == GOING_AWAY and 99 <= trio.current_time() - start <= 101


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the attribute layout of CPython 3.11")
async def test_a_connection_keeps_its_attributes_in_the_compact_shared_key_layout(h):
    """Memory per idle connection (bench/idle.py): CPython 3.11 keeps an instance's attributes inline,
    with keys shared by the class, only while the class has at most 29 of them; with 30 or more each
    Connection carries a full dict of its own (about 1.3 KiB more). See Connection.__init__."""
    conns = []
    for _ in range(3):
        ws, conn = await h.client()
        assert (await recv(ws))["type"] == "connected"
        await ws.send_message(json.dumps({"type": "ping"}))  # has read, written and taken a rate token
        assert (await recv(ws))["type"] == "ping"
        conns.append(conn)
    for conn in conns:
        attributes = vars(conn)
        assert len(attributes) <= 29, sorted(attributes)
        assert sys.getsizeof(attributes) < sys.getsizeof(dict(attributes)) / 2  # a split dict, not a full one


async def test_frames_past_the_rate_limit_are_refused_and_the_bucket_refills(h, autojump_clock):
    h.settings = {"rate_limit": 5, "rate_burst": 3}
    ws, _ = await h.client()
    assert (await recv(ws))["type"] == "connected"
    for _ in range(5):
        await ws.send_message(json.dumps({"type": "ping"}))
    answers = [await recv(ws) for _ in range(5)]
    assert [a["type"] for a in answers] == ["ping"] * 3 + ["error"] * 2
    assert answers[-1]["code"] == "rate_limited"
    await trio.sleep(1)  # 5 more tokens, capped at the burst of 3
    for _ in range(4):
        await ws.send_message(json.dumps({"type": "ping"}))
    assert [(await recv(ws))["type"] for _ in range(4)] == ["ping"] * 3 + ["error"]


async def test_messages_and_queries_over_their_length_limit_are_too_long(db_path):
    async with running_server(db_path, max_chat_chars=10, max_query_chars=5) as server, connect(server.port) as c:
        await c.send({"type": "chat", "agent_id": "my_agent", "message": "x" * 11, "request_id": "l"})
        error = await c.recv()
        assert error["code"] == "too_long" and "message" in error["message"] and error["request_id"] == "l"
        await c.send({"type": "search_memory", "agent_id": "my_agent", "query": "y" * 6})
        assert (await c.recv())["code"] == "too_long"
        frames = await c.request({"type": "chat", "agent_id": "my_agent", "message": "x" * 10}, "agent_done")
        assert frames[-2]["type"] == "response"


async def test_a_user_past_the_per_user_cap_is_closed_with_1013(db_path):
    async with running_server(db_path, max_connections_per_user=2) as server:
        async with connect(server.port) as a, connect(server.port) as b, connect(server.port) as c:
            for client in (a, b):
                await client.request({"type": "set_user", "user_id": "u"}, "user_set")
            await c.send({"type": "set_user", "user_id": "u"})
            error = await c.recv()
            assert error["code"] == "too_many_connections"
            with pytest.raises(ConnectionClosed) as closed:
                await c.recv()
            assert closed.value.reason.code == TRY_AGAIN_LATER
            await a.send({"type": "set_user", "user_id": "u"})  # already one of them: fine
            assert (await a.recv())["type"] == "user_set"
        async with connect(server.port) as d:  # the others left: room again
            assert (await d.request({"type": "set_user", "user_id": "u"}, "user_set"))[-1]["type"] == "user_set"


async def test_past_the_connection_cap_the_handshake_is_refused_with_503(db_path):
    async with running_server(db_path, max_connections=2) as server:
        async with connect(server.port), connect(server.port):
            assert (await handshake(server.port)).startswith(b"HTTP/1.1 503")
        async with connect(server.port) as c:
            assert c.hello["type"] == "connected"


@pytest.mark.process
async def test_the_connection_cap_holds_under_concurrent_handshakes(db_path):
    async with running_server(db_path, max_connections=2) as server:
        opened = []

        async def try_connect():
            try:
                async with connect(server.port):
                    opened.append(1)
                    await trio.sleep(0.5)  # hold it while the others try
            except Exception:
                pass

        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(try_connect)
            await trio.sleep(0.3)
            assert len(server.connections) <= 2
        assert len(opened) <= 2


def test_heartbeat_timeout_must_be_positive_while_heartbeats_are_on():
    from agentcast.transport.server import ServerSettings

    with pytest.raises(ValueError, match="heartbeat_timeout"):
        ServerSettings(heartbeat_interval=20, heartbeat_timeout=0)
    ServerSettings(heartbeat_interval=0, heartbeat_timeout=0)  # heartbeats off: fine


async def test_a_connection_switching_to_new_users_with_big_chats_keeps_resident_lanes_bounded(db_path):
    """Issue 13's reproduction, small: each new user's lane holds a window of two 64,000-byte messages;
    the server keeps at most `max_lanes` lanes and `max_lanes_window_bytes` of window text."""
    big = "\N{GRINNING FACE}" * 16_000  # 64,000 bytes in UTF-8 (16,000 characters)
    async with running_server(db_path, max_lanes=4, max_lanes_window_bytes=300_000) as server, \
            connect(server.port) as c:
        budget = server.agents.budget
        for i in range(10):
            await c.request({"type": "set_user", "user_id": f"newcomer-{i}"}, "user_set")
            await c.send(json.dumps({"type": "chat", "agent_id": "my_agent", "message": big}, ensure_ascii=False))
            await c.recv_until("agent_done")
            await server.agents.wait_idle()
            assert budget.lanes == sum(a.lanes for a in server.agents.values()) <= 4
            assert budget.window_bytes <= 300_000
        assert budget.window_bytes > 200_000  # two windows of over 128,000 bytes each fit, three do not
        await c.request({"type": "set_user", "user_id": "newcomer-0"}, "user_set")  # long dropped: rebuilt
        frames = await c.request({"type": "chat", "agent_id": "my_agent", "message": "me again"}, "agent_done")
        assert "I remember 2 earlier messages" in frames[-2]["message"]
