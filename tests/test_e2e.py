"""End to end over real loopback sockets and a real SQLite file: every row of the protocol table,
every error case, fan-out and privacy between users, busy agents, restarts and graceful shutdown."""
from __future__ import annotations

import json
import re
from datetime import datetime

import pytest
import trio
from trio_websocket import ConnectionClosed

from agentcast.actors import AgentSpec, EchoBrain, split_chunks
from support import HANDSHAKE, GatedBrain, connect, handshake, running_server, scaled

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)

AGENT = "my_agent"


def chat(message, request_id=None, agent=AGENT):
    frame = {"type": "chat", "agent_id": agent, "message": message}
    if request_id is not None:
        frame["request_id"] = request_id
    return frame


def search(query, **extra):
    return {"type": "search_memory", "agent_id": AGENT, "query": query, **extra}


async def test_connected_gives_each_connection_its_own_client_id(server):
    async with connect(server.port) as a, connect(server.port) as b:
        assert a.hello["type"] == b.hello["type"] == "connected"
        assert isinstance(a.hello["client_id"], str) and a.hello["client_id"]
        assert a.hello["client_id"] != b.hello["client_id"]


async def test_ping_answers_ping_with_the_request_id(server):
    async with connect(server.port) as c:
        assert await c.request({"type": "ping"}, "ping") == [{"type": "ping"}]
        assert await c.request({"type": "ping", "request_id": "p1"}, "ping") == [{"type": "ping", "request_id": "p1"}]


@pytest.mark.parametrize("user_id", [123, "123", "alice", 0, -5])
async def test_set_user_echoes_the_same_json_value_and_type(server, user_id):
    async with connect(server.port) as c:
        await c.send({"type": "set_user", "user_id": user_id})
        raw = await c.ws.get_message()
        assert json.loads(raw) == {"type": "user_set", "user_id": user_id}
        assert type(json.loads(raw)["user_id"]) is type(user_id)


async def test_subscribe_and_unsubscribe_confirm_with_a_message(server):
    async with connect(server.port) as c:
        assert await c.request({"type": "subscribe", "agent_id": "assistant"}, "subscribed") == [
            {"type": "subscribed", "agent_id": "assistant", "message": "Successfully subscribed to agent assistant"}
        ]
        assert await c.request({"type": "unsubscribe", "agent_id": "assistant", "request_id": "u"}, "unsubscribed") == [
            {"type": "unsubscribed", "agent_id": "assistant", "message": "Successfully unsubscribed from agent assistant",
             "request_id": "u"}
        ]


async def test_chat_streams_thinking_chunks_response_done_all_with_the_request_id(server):
    async with connect(server.port) as c:
        frames = await c.request(chat("Hello there, agent!", "r-1"), "agent_done")
        types = [f["type"] for f in frames]
        assert types[0] == "agent_thinking" and types[-2:] == ["response", "agent_done"]
        chunks = [f for f in frames if f["type"] == "response_chunk"]
        assert len(chunks) >= 1 and types[1:-2] == ["response_chunk"] * len(chunks)
        response = frames[-2]
        assert "".join(f["delta"] for f in chunks) == response["message"]
        assert "Hello there, agent!" in response["message"]
        assert isinstance(response["seq"], int) and response["seq"] > 0
        assert all(f["request_id"] == "r-1" and f["agent_id"] == AGENT for f in frames)


async def test_chunks_stream_as_the_brain_produces_them(db_path):
    specs = [AgentSpec(AGENT, EchoBrain(delay=0.02, chunks=4))]
    async with running_server(db_path, specs) as server, connect(server.port) as c:
        frames = await c.request(chat("stream this please"), "agent_done")
        chunks = [f["delta"] for f in frames if f["type"] == "response_chunk"]
        # one frame per delta when deltas come slower than they are written
        assert chunks == split_chunks(frames[-2]["message"], 4) and len(chunks) >= 3
        assert "".join(chunks) == frames[-2]["message"]


async def test_chat_without_request_id_has_none_and_needs_no_subscription(server):
    async with connect(server.port) as c:
        frames = await c.request(chat("no id"), "agent_done")
        assert all("request_id" not in f for f in frames)


async def test_echo_brain_counts_what_it_remembers(server):
    async with connect(server.port) as c:
        await c.request({"type": "set_user", "user_id": 9}, "user_set")
        first = (await c.request(chat("one"), "agent_done"))[-2]["message"]
        second = (await c.request(chat("two"), "agent_done"))[-2]["message"]
        assert "remember 0 earlier messages" in first
        assert "remember 2 earlier messages" in second


async def test_search_memory_finds_the_answer_to_a_question_first(server):
    async with connect(server.port) as c:
        await c.request({"type": "set_user", "user_id": 1}, "user_set")
        for text in ["The weather is lovely today.", "My favourite colour is turquoise.", "I have a dog named Rex.",
                     "What time does the shop open?"]:
            await c.request(chat(text), "agent_done")
        (frame,) = await c.request(search("What is my favourite colour?", request_id="s"), "memory_results")
        assert frame["type"] == "memory_results" and frame["agent_id"] == AGENT and frame["request_id"] == "s"
        assert frame["query"] == "What is my favourite colour?"
        results = frame["results"]
        assert 1 <= len(results) <= 5
        assert results[0]["content"] == "My favourite colour is turquoise." and results[0]["role"] == "user"
        scores = [r["score"] for r in results]
        assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) for s in scores)
        for r in results:
            assert set(r) == {"role", "content", "timestamp", "score", "source"}
            assert r["role"] in ("user", "assistant") and r["source"] in ("short_term", "long_term")
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", r["timestamp"])
            assert datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0


async def test_search_limit_and_fts_syntax_in_queries(server):
    async with connect(server.port) as c:
        for i in range(4):
            await c.request(chat(f"apples and pears number {i}"), "agent_done")
        (frame,) = await c.request(search("apples", limit=3), "memory_results")
        assert len(frame["results"]) == 3
        for query in ['"unbalanced', "NEAR(apples pears)", "apples AND", "* - : ^", "OR NOT", "(((", "apples*"]:
            (frame,) = await c.request(search(query), "memory_results")
            assert frame["type"] == "memory_results"
        (frame,) = await c.request(search("?!"), "memory_results")
        assert frame["results"] == []


async def test_clear_memory_short_term_then_long_term(server):
    async with connect(server.port) as c:
        await c.request(chat("remember the kiwi"), "agent_done")
        assert await c.request({"type": "clear_memory", "agent_id": AGENT}, "memory_cleared") == [
            {"type": "memory_cleared", "agent_id": AGENT, "clear_long_term": False, "forgotten": 0, "seq": 3}
        ]
        (short,) = await c.request(search("kiwi", use_long_term=False), "memory_results")
        assert short["results"] == []
        (both,) = await c.request(search("kiwi"), "memory_results")
        assert both["results"] and {r["source"] for r in both["results"]} == {"long_term"}
        (cleared,) = await c.request({"type": "clear_memory", "agent_id": AGENT, "clear_long_term": True,
                                      "request_id": "c"}, "memory_cleared")
        assert cleared["clear_long_term"] is True and cleared["request_id"] == "c"
        assert cleared["forgotten"] == 2 and cleared["seq"] == 4
        (after,) = await c.request(search("kiwi"), "memory_results")
        assert after["results"] == []


async def test_short_term_and_long_term_sources(db_path):
    specs = [AgentSpec(AGENT, EchoBrain(), short_term_window=2)]
    async with running_server(db_path, specs) as server, connect(server.port) as c:
        await c.request(chat("banana bread recipe"), "agent_done")
        await c.request(chat("cherry pie recipe"), "agent_done")
        (frame,) = await c.request(search("recipe", limit=10), "memory_results")
        by_content = {r["content"]: r["source"] for r in frame["results"]}
        assert by_content["banana bread recipe"] == "long_term"
        assert by_content["cherry pie recipe"] == "short_term"
        (short,) = await c.request(search("recipe", use_long_term=False, limit=10), "memory_results")
        assert {r["source"] for r in short["results"]} == {"short_term"}
        assert "banana bread recipe" not in [r["content"] for r in short["results"]]


BAD_FRAMES = [
    ("not json", "invalid_json"),
    ("[1, 2]", "invalid_message"),
    ('"text"', "invalid_message"),
    ("{}", "missing_type"),
    ('{"type": "dance"}', "unknown_type"),
    ('{"type": 7}', "unknown_type"),
    ('{"type": "chat", "agent_id": "my_agent"}', "missing_field"),
    ('{"type": "chat", "agent_id": "my_agent", "message": ""}', "invalid_field"),
    ('{"type": "chat", "agent_id": "my_agent", "message": 5}', "invalid_field"),
    ('{"type": "set_user", "user_id": 1.5}', "invalid_field"),
    ('{"type": "set_user", "user_id": null}', "invalid_field"),
    ('{"type": "set_user", "user_id": true}', "invalid_field"),
    ('{"type": "search_memory", "agent_id": "my_agent", "query": "x", "limit": 0}', "invalid_field"),
    ('{"type": "search_memory", "agent_id": "my_agent", "query": "x", "limit": "5"}', "invalid_field"),
    ('{"type": "search_memory", "agent_id": "my_agent", "query": "x", "use_long_term": "yes"}', "invalid_field"),
    ('{"type": "clear_memory", "agent_id": "my_agent", "clear_long_term": 1}', "invalid_field"),
    ('{"type": "subscribe", "agent_id": "ghost"}', "unknown_agent"),
    ('{"type": "unsubscribe", "agent_id": "ghost"}', "unknown_agent"),
    ('{"type": "chat", "agent_id": "ghost", "message": "hi"}', "unknown_agent"),
    ('{"type": "search_memory", "agent_id": "ghost", "query": "hi"}', "unknown_agent"),
    ('{"type": "clear_memory", "agent_id": "ghost"}', "unknown_agent"),
    (b"\x00\x01binary", "binary_frame"),
    ("[" * 50000, "invalid_json"),
    ("1" * 5000, "invalid_json"),
]


@pytest.mark.parametrize("frame, code", BAD_FRAMES, ids=[c + str(i) for i, (_, c) in enumerate(BAD_FRAMES)])
async def test_bad_input_gets_an_error_frame_and_the_connection_stays_open(server, frame, code):
    async with connect(server.port) as c:
        await c.send(frame)
        error = await c.recv()
        assert error["type"] == "error" and error["code"] == code
        assert isinstance(error["message"], str) and error["message"]
        assert await c.request({"type": "ping"}, "ping") == [{"type": "ping"}]


async def test_error_messages_people_can_read(server):
    async with connect(server.port) as c:
        await c.send({"type": "dance", "request_id": "d"})
        assert await c.recv() == {"type": "error", "code": "unknown_type", "message": "Unknown message type: dance",
                                  "request_id": "d"}
        await c.send(chat("hi", "g", agent="ghost"))
        assert await c.recv() == {"type": "error", "code": "unknown_agent", "message": "No agent with ID 'ghost' exists",
                                  "agent_id": "ghost", "request_id": "g"}


async def test_a_turn_goes_to_the_same_users_subscribers_once_and_to_nobody_else(server):
    async with connect(server.port) as phone, connect(server.port) as laptop, connect(server.port) as stranger:
        for c, user in ((phone, 42), (laptop, "42"), (stranger, 43)):
            await c.request({"type": "set_user", "user_id": user}, "user_set")
            await c.request({"type": "subscribe", "agent_id": AGENT}, "subscribed")
        await phone.request({"type": "subscribe", "agent_id": AGENT}, "subscribed")  # twice: still one copy
        sent = await phone.request(chat("from my phone", "t"), "agent_done")
        seen = await laptop.recv_until("agent_done")
        assert seen == sent
        # the stranger's next frame is the answer to its own ping: it received nothing of user 42's turn
        assert await stranger.request({"type": "ping"}, "ping") == [{"type": "ping"}]
        assert await phone.request({"type": "ping"}, "ping") == [{"type": "ping"}]
        (found,) = await stranger.request(search("phone"), "memory_results")
        assert found["results"] == []
        await laptop.request({"type": "unsubscribe", "agent_id": AGENT}, "unsubscribed")
        await phone.request(chat("again"), "agent_done")
        assert await laptop.request({"type": "ping"}, "ping") == [{"type": "ping"}]


async def test_subscriptions_follow_set_user(server):
    async with connect(server.port) as a, connect(server.port) as b:
        await b.request({"type": "subscribe", "agent_id": AGENT}, "subscribed")
        await b.request({"type": "set_user", "user_id": "bob"}, "user_set")
        await a.request({"type": "set_user", "user_id": "bob"}, "user_set")
        sent = await a.request(chat("hello bob"), "agent_done")
        assert await b.recv_until("agent_done") == sent


async def test_connections_without_set_user_have_private_memory(server):
    async with connect(server.port) as a, connect(server.port) as b:
        await a.request(chat("secret anonymous pineapple"), "agent_done")
        (mine,) = await a.request(search("pineapple"), "memory_results")
        (theirs,) = await b.request(search("pineapple"), "memory_results")
        assert mine["results"] and theirs["results"] == []


async def test_memory_is_per_agent(server):
    async with connect(server.port) as c:
        await c.request({"type": "set_user", "user_id": 5}, "user_set")
        await c.request(chat("agent specific mango", agent="assistant"), "agent_done")
        (other,) = await c.request(search("mango"), "memory_results")
        assert other["results"] == []


async def test_memory_survives_a_restart(db_path):
    async with running_server(db_path) as server, connect(server.port) as c:
        await c.request({"type": "set_user", "user_id": 77}, "user_set")
        await c.request(chat("persistent papaya"), "agent_done")
        await c.request({"type": "set_user", "user_id": 78}, "user_set")
        await c.request(chat("other papaya"), "agent_done")
        await c.request({"type": "clear_memory", "agent_id": AGENT, "clear_long_term": True}, "memory_cleared")
    async with running_server(db_path) as server, connect(server.port) as c:
        await c.request({"type": "set_user", "user_id": "77"}, "user_set")
        (found,) = await c.request(search("papaya"), "memory_results")
        assert [r["content"] for r in found["results"]][:1] == ["persistent papaya"]
        frames = await c.request(chat("still here?"), "agent_done")
        assert "remember 2 earlier messages" in frames[-2]["message"]
        await c.request({"type": "set_user", "user_id": 78}, "user_set")
        (gone,) = await c.request(search("papaya"), "memory_results")
        assert gone["results"] == []


async def test_wrong_path_is_rejected_with_404(server):
    assert (await handshake(server.port, path="/elsewhere")).startswith(b"HTTP/1.1 404")
    async with connect(server.port, "/ws?client=x") as c:  # a query string is fine
        assert c.hello["type"] == "connected"


async def test_busy_agent_answers_busy_and_drops_nothing(db_path):
    brain = GatedBrain()
    specs = [AgentSpec(AGENT, brain, mailbox_size=2, lane_size=2)]
    async with running_server(db_path, specs) as server, connect(server.port) as c:
        await c.send(chat("first", "1"))
        await c.send(chat("second", "2"))
        await c.send(chat("third", "3"))
        frames = await c.recv_until("error")
        assert frames[-1]["code"] == "busy" and frames[-1]["request_id"] == "3" and frames[-1]["agent_id"] == AGENT
        brain.gate.set()
        done = []
        while len(done) < 2:
            frame = await c.recv()
            if frame["type"] == "agent_done":
                done.append(frame["request_id"])
        assert done == ["1", "2"]


async def test_a_failing_brain_gives_an_error_then_agent_done(db_path):
    brain = GatedBrain()
    brain.gate.set()
    async with running_server(db_path, [AgentSpec(AGENT, brain)]) as server, connect(server.port) as c:
        frames = await c.request(chat("fail please", "f"), "agent_done")
        assert [f["type"] for f in frames] == ["agent_thinking", "error", "agent_done"]
        assert frames[1]["code"] == "brain_error" and "the model is down" in frames[1]["message"]
        frames = await c.request(chat("works now"), "agent_done")
        assert frames[-2]["message"] == "gated answer"


async def test_graceful_stop_finishes_the_running_turn_then_closes_with_1001(db_path):
    brain = GatedBrain()
    async with running_server(db_path, [AgentSpec(AGENT, brain)], shutdown_grace=30) as server:
        async with connect(server.port) as c:
            await c.send(chat("slow one", "s"))
            assert (await c.recv())["type"] == "agent_thinking"
            await brain.started.wait()
            server.stop()
            await trio.sleep(0)  # let the stop begin; the gate opens after
            brain.gate.set()
            frames = await c.recv_until("agent_done")
            assert frames[-2]["message"] == "gated answer"
            with pytest.raises(ConnectionClosed) as info:
                await c.recv(timeout=10)
            assert info.value.reason.code == 1001
        with trio.fail_after(scaled(10)):
            await server.stopped.wait()


async def test_a_frame_over_max_message_size_closes_with_1009(db_path):
    async with running_server(db_path, max_message_size=1024) as server:
        async with connect(server.port) as c:
            await c.request(chat("y" * 900), "agent_done")  # under the limit: fine
            await c.send(chat("x" * 2000))
            with pytest.raises(ConnectionClosed) as info:
                await c.recv()
            assert info.value.reason.code == 1009
        async with connect(server.port) as c:  # the server goes on
            assert await c.request({"type": "ping"}, "ping") == [{"type": "ping"}]


async def test_a_subscriber_that_switches_user_mid_turn_gets_nothing_more_of_it(db_path):
    brain = GatedBrain()
    async with running_server(db_path, [AgentSpec(AGENT, brain)]) as server:
        async with connect(server.port) as phone, connect(server.port) as kiosk:
            for c in (phone, kiosk):
                await c.request({"type": "set_user", "user_id": "alice"}, "user_set")
            await kiosk.request({"type": "subscribe", "agent_id": AGENT}, "subscribed")
            await phone.send(chat("my secret is 42"))
            assert (await kiosk.recv())["type"] == "agent_thinking"  # still alice's kiosk here
            await brain.started.wait()
            await kiosk.request({"type": "set_user", "user_id": "bob"}, "user_set")
            brain.gate.set()
            frames = await phone.recv_until("agent_done")
            assert frames[-2]["type"] == "response"
            # bob's kiosk: the next frame is the answer to its own ping, nothing of alice's turn
            assert await kiosk.request({"type": "ping"}, "ping") == [{"type": "ping"}]


async def test_clients_that_reset_right_after_the_handshake_do_not_hurt_the_server(server):
    import socket
    import struct

    for _ in range(100):
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", server.port))
        await sock.send(HANDSHAKE.format(path="/ws").encode())
        await sock.recv(1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        sock.close()
    async with connect(server.port) as c:
        frames = await c.request(chat("still serving?"), "agent_done")
        assert "still serving?" in frames[-2]["message"]


async def test_a_flooding_connection_gets_busy_and_others_are_served(db_path):
    brain = GatedBrain()
    specs = [AgentSpec(AGENT, brain, connection_size=3)]
    async with running_server(db_path, specs) as server:
        async with connect(server.port) as flood, connect(server.port) as polite:
            for i in range(4):
                await flood.send(chat(f"flood {i}", str(i)))
            frames = await flood.recv_until("error")
            assert frames[-1]["code"] == "busy" and frames[-1]["request_id"] == "3"
            await polite.send(chat("my turn", "p"))
            assert (await polite.recv())["type"] == "agent_thinking"  # accepted, not busy
            brain.gate.set()
            assert (await polite.recv_until("agent_done"))[-2]["type"] == "response"


async def test_a_refused_handshake_is_hung_up_on_even_if_the_client_stays(server):
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(HANDSHAKE.format(path="/nope").encode())
        data = b""
        with trio.fail_after(scaled(5)):
            while chunk := await stream.receive_some():  # b"" once the server has closed it
                data += chunk
        assert data.startswith(b"HTTP/1.1 404")
