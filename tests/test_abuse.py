"""Abuse against the real server over loopback: after each kind of misbehaviour, a well-behaved
client on the same server still chats, searches and gets correct, private results."""
from __future__ import annotations

import json
import random
import socket
import uuid

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from support import HANDSHAKE, assert_healthy, connect, handshake, running_server, scaled
from support.auth import OTHER_SECRET, SECRET, SECRET_ENV, authenticate, token_for
from agentcast.transport._connection import Connection, OutboxBudget

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)


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
            with trio.fail_after(scaled(10)):
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
        with trio.fail_after(scaled(10)):  # the stalled ones are dropped after the handshake timeout
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
            with trio.fail_after(scaled(10)):
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


# -- clients that never read: what the server holds for them ---------------------------------------


class PeakRecordingBudget(OutboxBudget):
    """A server's `OutboxBudget` that also records the most bytes it ever counted."""

    peak = 0

    @property
    def held(self) -> int:
        return self._held

    @held.setter
    def held(self, value: int) -> None:
        self._held = value
        self.peak = max(self.peak, value)


async def open_non_reader(server) -> tuple[trio.SocketStream, Connection]:
    """A raw client past the handshake that will never read another byte (a small receive buffer, so the
    kernel holds little for it); and its connection on the server."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", server.port))
    stream = trio.SocketStream(sock)
    before = set(server.connections)
    await stream.send_all(HANDSHAKE.format(path="/ws").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(1)  # byte by byte: nothing past the head is read
    assert head.startswith(b"HTTP/1.1 101")
    while not set(server.connections) - before:
        await trio.sleep(0.01)
    (conn,) = set(server.connections) - before
    return stream, conn


def masked_text_frame(payload: bytes) -> bytes:
    """A client's text frame (mask key 0: the payload as is)."""
    n = len(payload)
    assert 126 <= n < 65536
    return bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big") + b"\0\0\0\0" + payload


async def test_clients_that_never_read_and_flood_pings_before_auth_are_bounded_by_the_servers_cap(db_path, monkeypatch):
    """Issue 13: a client that never reads, flooding pings (allowed before authentication) with the longest
    request_id accepted. Three of them make the server hold no more than `outbox_bytes_total`, counted
    in encoded bytes, whatever the per-connection bounds; those holding the most are closed with 1013;
    everyone else goes on, and once they are gone the server holds nothing for them."""

    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    cap = 256 * 1024
    async with running_server(db_path, auth_secret_env=SECRET_ENV, auth_timeout=600, outbox_size=100_000,
                              outbox_bytes_total=cap, close_timeout=0.5) as server:
        budget = server.outbox_budget = PeakRecordingBudget(cap, server.connections)
        pings = masked_text_frame(json.dumps({"type": "ping", "request_id": "r" * 256}).encode()) * 64
        attackers = [await open_non_reader(server) for _ in range(3)]

        async def flood(stream, conn):
            try:
                while conn._closing is None:
                    await stream.send_all(pings)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        with trio.fail_after(scaled(60)):
            async with trio.open_nursery() as nursery:
                for stream, conn in attackers:
                    nursery.start_soon(flood, stream, conn)
        assert budget.peak <= cap
        for _, conn in attackers:
            assert conn._closing == (1013, "the server's outbound queues are full and this client's holds the most")
        await assert_healthy_with_auth(server)
        for stream, _ in attackers:
            await stream.aclose()
        with trio.fail_after(scaled(10)):
            while server.connections:
                await trio.sleep(0.01)
        assert budget.held == 0
