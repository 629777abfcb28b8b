"""Abuse against the real server over loopback: after each kind of misbehaviour, a well-behaved
client on the same server still chats, searches and gets correct, private results."""
from __future__ import annotations

import json
import random
import uuid

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from support import HANDSHAKE, connect, handshake, running_server


async def assert_healthy(server) -> None:
    """A fresh client chats, finds its own words, and nobody else does."""
    word = "zq" + uuid.uuid4().hex[:10]
    async with connect(server.port) as me, connect(server.port) as other:
        await me.request({"type": "set_user", "user_id": f"healthy-{word}"}, "user_set")
        await other.request({"type": "set_user", "user_id": f"other-{word}"}, "user_set")
        frames = await me.request({"type": "chat", "agent_id": "my_agent", "message": f"remember {word}"}, "agent_done")
        assert frames[-2]["type"] == "response" and word in frames[-2]["message"]
        (mine,) = await me.request({"type": "search_memory", "agent_id": "my_agent", "query": word}, "memory_results")
        assert [r["content"] for r in mine["results"]][0] == f"remember {word}"
        (theirs,) = await other.request({"type": "search_memory", "agent_id": "my_agent", "query": word},
                                        "memory_results")
        assert theirs["results"] == []


def random_frame(rng: random.Random) -> str | bytes:
    kind = rng.randrange(8)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if kind == 1:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(1, 64)))
    if kind == 2:
        return "[" * rng.randrange(1, 5000)
    if kind == 3:
        return json.dumps(rng.choice([None, 1, 2.5, "x", [], {}, True]))
    fields = {"type": rng.choice(["chat", "search_memory", "clear_memory", "set_user", "subscribe", "unsubscribe",
                                  "ping", "auth", "bogus", 7, None])}
    for key in rng.sample(["agent_id", "message", "query", "limit", "use_long_term", "clear_long_term", "user_id",
                           "request_id", "after_seq", "command_id"], rng.randrange(0, 5)):
        fields[key] = rng.choice([None, "", "my_agent", "ghost", 0, -1, 101, 10**30, 1.5, True, [], {}, "x" * 300])
    return json.dumps(fields)


async def test_thousands_of_random_and_malformed_frames(server):
    rng = random.Random(20261129)
    async with connect(server.port) as c:
        for i in range(2000):
            await c.send(random_frame(rng))
            if i % 100 == 99:  # stay in step: everything before the ping has been answered
                await c.send({"type": "ping", "request_id": f"sync{i}"})
                while (await c.recv(timeout=10)).get("request_id") != f"sync{i}":
                    pass
    await assert_healthy(server)


async def test_an_oversize_frame_closes_only_that_connection(db_path):
    async with running_server(db_path, max_message_size=4096) as server:
        async with connect(server.port) as c:
            await c.send("x" * 10_000)
            with pytest.raises(ConnectionClosed) as closed:
                await c.recv()
            assert closed.value.reason.code == 1009
        await assert_healthy(server)


async def test_a_flood_past_the_rate_limit(db_path):
    async with running_server(db_path, rate_limit=20, rate_burst=20) as server:
        async with connect(server.port) as c:
            for _ in range(300):
                await c.send({"type": "ping"})
            codes = [(await c.recv()).get("code") for _ in range(300)]
            assert codes.count("rate_limited") >= 200
        await assert_healthy(server)


async def test_a_client_that_never_reads(db_path):
    async with running_server(db_path, outbox_size=64, close_timeout=0.5) as server:
        async with connect(server.port) as writer:  # big messages to search for
            await writer.request({"type": "set_user", "user_id": "hog"}, "user_set")
            for i in range(20):
                await writer.request({"type": "chat", "agent_id": "my_agent", "message": f"hog {i} " + "z" * 20_000},
                                     "agent_done")
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await ws.send_message(json.dumps({"type": "set_user", "user_id": "hog"}))
            for _ in range(200):  # ~800 KB answers pile up: it never reads one
                await ws.send_message(json.dumps({"type": "search_memory", "agent_id": "my_agent", "query": "hog",
                                                  "limit": 40}))
            with trio.fail_after(10):
                while server.connections:  # it is cut off
                    await trio.sleep(0.05)
        await assert_healthy(server)


async def test_clients_that_vanish_mid_handshake(db_path):
    async with running_server(db_path, handshake_timeout=0.5) as server:
        streams = []
        for _ in range(50):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(HANDSHAKE.format(path="/ws").encode()[:40])  # half a request line
            streams.append(stream)
        for stream in streams[:25]:
            await stream.aclose()  # some vanish; the rest just stall
        with trio.fail_after(10):  # the stalled ones are dropped after the handshake timeout
            for stream in streams[25:]:
                assert await stream.receive_some() == b""
        await assert_healthy(server)


async def test_connections_past_the_cap(db_path):
    async with running_server(db_path, max_connections=5) as server:
        async with trio.open_nursery() as nursery:
            held = trio.Event()

            async def hold():
                async with connect(server.port):
                    await held.wait()

            for _ in range(4):
                nursery.start_soon(hold)
            with trio.fail_after(10):
                while len(server.connections) < 4:
                    await trio.sleep(0.01)
            for _ in range(20):  # one place left: none of these get in while it is taken
                async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
                    async with connect(server.port):
                        await stream.send_all(HANDSHAKE.format(path="/ws").encode())
                        head = await stream.receive_some()
                        assert head.startswith(b"HTTP/1.1 503")
            held.set()
        await assert_healthy(server)


# -- with authentication on ------------------------------------------------------------------


async def assert_healthy_with_auth(server) -> None:
    """As `assert_healthy`, for a server that wants tokens."""
    from test_auth import authenticate, token_for

    word = "zq" + uuid.uuid4().hex[:10]
    async with connect(server.port) as me, connect(server.port) as other:
        assert (await authenticate(me, token_for(f"healthy-{word}")))["type"] == "authenticated"
        assert (await authenticate(other, token_for(f"other-{word}")))["type"] == "authenticated"
        frames = await me.request({"type": "chat", "agent_id": "my_agent", "message": f"remember {word}"}, "agent_done")
        assert word in frames[-2]["message"]
        (mine,) = await me.request({"type": "search_memory", "agent_id": "my_agent", "query": word}, "memory_results")
        assert mine["results"] and mine["results"][0]["content"] == f"remember {word}"
        (theirs,) = await other.request({"type": "search_memory", "agent_id": "my_agent", "query": word},
                                        "memory_results")
        assert theirs["results"] == []


async def test_forged_expired_and_stolen_identities(db_path, monkeypatch):
    from test_auth import OTHER_SECRET, SECRET, SECRET_ENV, authenticate, token_for

    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    async with running_server(db_path, auth_secret_env=SECRET_ENV, allow_origins=("https://chat.example",),
                              close_timeout=0.2) as server:
        async with connect(server.port) as victim:  # the victim's memory, which nobody else may read
            await authenticate(victim, token_for("victim"))
            await victim.request({"type": "chat", "agent_id": "my_agent", "message": "victim secret zqvictim"},
                                 "agent_done")
        async with connect(server.port) as thief:
            forged = token_for("victim", secret=OTHER_SECRET)
            expired = token_for("victim", ttl=-60)
            for bad in (forged, expired, forged[:-3] + "abc", "not.a.token", "x" * 5000):
                reply = await authenticate(thief, bad)
                assert reply["type"] == "error" and reply["code"] in ("invalid_token", "invalid_field")
            for frame in ({"type": "search_memory", "agent_id": "my_agent", "query": "zqvictim"},
                          {"type": "set_user", "user_id": "victim"}):
                await thief.send(frame)
                assert (await thief.recv())["code"] == "unauthenticated"
            assert (await authenticate(thief, token_for("thief")))["type"] == "authenticated"
            await thief.send({"type": "set_user", "user_id": "victim"})
            assert (await thief.recv())["code"] == "forbidden"
            (found,) = await thief.request({"type": "search_memory", "agent_id": "my_agent", "query": "zqvictim"},
                                           "memory_results")
            assert found["results"] == []
        assert (await handshake(server.port, "Origin: https://evil.example")).startswith(b"HTTP/1.1 403")
        assert (await handshake(server.port, f"Authorization: Bearer {token_for('victim', secret=OTHER_SECRET)}")
                ).startswith(b"HTTP/1.1 401")
        await assert_healthy_with_auth(server)
