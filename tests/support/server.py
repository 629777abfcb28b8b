"""In-process servers for the tests: a real `Server` on a free loopback port (with echo agents, or with an
`openai` agent talking to the fake OpenAI-compatible server of support/fake_openai.py), a small JSON
WebSocket client (trio-websocket), raw handshakes, test tokens, and a check that a server is still healthy."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import asynccontextmanager

import trio
from trio_websocket import open_websocket_url

from agentcast.actors import AgentSpec, BrainError, OpenAIBrain, OpenAIBrainSettings, agent_specs
from agentcast.transport._auth import mint
from agentcast.transport.server import Server, ServerSettings

from .fake_openai import FakeOpenAI
from .timeouts import clock_bound, scaled


_COUNT_ON_DISK = """
import json, os, sys
db, needles = sys.argv[1], sys.argv[2:]
data = b"".join(open(p, "rb").read() for p in (db, db + "-wal", db + "-shm") if os.path.exists(p))
print(json.dumps([data.count(bytes.fromhex(n)) for n in needles]))
"""


def on_disk(db, *needles: str | bytes) -> dict:
    """How often each of `needles` (text as UTF-8, or bytes) occurs in the bytes SQLite keeps on disk for
    `db`: the file, its -wal and its -shm. Read by another process: this one may hold SQLite connections to
    the file, and closing a descriptor of it here would drop their locks (see support/dbguard.py)."""
    raw = [n.encode() if isinstance(n, str) else bytes(n) for n in needles]
    done = subprocess.run([sys.executable, "-c", _COUNT_ON_DISK, os.fspath(db), *(n.hex() for n in raw)],
                          capture_output=True, text=True, timeout=scaled(30), check=True)
    return dict(zip(needles, json.loads(done.stdout)))


class Client:
    """A test client: JSON frames over a real WebSocket."""

    def __init__(self, ws):
        self.ws = ws

    async def send(self, frame) -> None:
        await self.ws.send_message(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def recv(self, timeout: float = 5) -> dict:
        """The next frame, within `timeout` seconds (scaled on the real clock, see `clock_bound`)."""
        with trio.fail_after(clock_bound(timeout)):
            return json.loads(await self.ws.get_message())

    async def recv_until(self, type_: str, timeout: float = 5) -> list[dict]:
        """Frames up to and including the first of `type_`."""
        frames = []
        while True:
            frames.append(await self.recv(timeout))
            if frames[-1]["type"] == type_:
                return frames

    async def request(self, frame, until: str) -> list[dict]:
        await self.send(frame)
        return await self.recv_until(until)


@asynccontextmanager
async def connect(port: int, path: str = "/ws"):
    """A `Client` connected to a local server; its `connected` frame already read into `.hello`."""
    async with open_websocket_url(f"ws://127.0.0.1:{port}{path}") as ws:
        client = Client(ws)
        client.hello = await client.recv()
        yield client


@asynccontextmanager
async def running_server(db: str, specs=None, *, port: int = 0, **settings):
    """A `Server` on loopback `port` (0: a free one), stopped gracefully on exit."""
    server = Server(ServerSettings(host="127.0.0.1", port=port, db=db, **settings), specs or agent_specs(None))
    async with trio.open_nursery() as nursery:
        server.port = await nursery.start(server.run)
        try:
            yield server
        finally:
            server.stop()


def token_for(secret: bytes, user, ttl: int = 3600) -> str:
    """A token for `user` signed with `secret`, valid for `ttl` seconds from now (as `agentcast token` makes)."""
    return mint(secret, user, int(time.time()) + ttl)


#: The agent id of `llm_server`'s `openai` agent.
LLM_AGENT = "llm"


@asynccontextmanager
async def llm_server(db_path, *replies, brain=None, agent_id=LLM_AGENT, others=(), **spec_options):
    """A server with the agents `others` and one `openai` agent `agent_id` whose model is a fake
    (support/fake_openai.py) scripted with `replies` (`server.fake`: script more with `server.fake.script(...)`)."""
    async with trio.open_nursery() as nursery:
        fake = await FakeOpenAI(*replies).start(nursery)
        brain_options = {"model": "fake-model", "base_url": fake.base_url, "retries": 0, **(brain or {})}
        spec = AgentSpec(agent_id, OpenAIBrain(OpenAIBrainSettings(**brain_options)), **spec_options)
        async with running_server(db_path, [*others, spec]) as server:
            server.fake = fake
            yield server
        nursery.cancel_scope.cancel()


#: A WebSocket upgrade request for `path`, to send by hand over a raw TCP stream.
HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def handshake(port: int, *headers: str, path: str = "/ws") -> bytes:
    """The HTTP head the server answers a raw handshake for `path` with `headers` ("Name: value") added."""
    extra = "".join(f"{h}\r\n" for h in headers)
    request = HANDSHAKE.format(path=path).replace("\r\n\r\n", "\r\n" + extra + "\r\n")
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(request.encode())
        head = b""
        with trio.fail_after(clock_bound(5)):
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some()
                if not chunk:
                    break
                head += chunk
    return head


class GatedBrain:
    """Answers only when the test opens `gate` (`started` is set once a turn is waiting).

    Its answer is `answer(turn)` (a list of deltas; by default "gated answer" in two); a turn
    whose message is "fail please" fails at once with a `BrainError`.
    """

    recall = 0

    def __init__(self, answer=lambda turn: ["gated ", "answer"]):
        self.answer = answer
        self.gate = trio.Event()
        self.started = trio.Event()

    async def reply(self, turn):
        self.started.set()
        if turn.message == "fail please":
            raise BrainError("the model is down")
        await self.gate.wait()
        for delta in self.answer(turn):
            yield delta


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
