"""Test support: a small JSON WebSocket client and a real server on a free loopback port."""
from __future__ import annotations

import json
from contextlib import asynccontextmanager

import trio
from trio_websocket import open_websocket_url

from actors import agent_specs
from transport.server import Server, ServerSettings


class Client:
    """A test client: JSON frames over a real WebSocket."""

    def __init__(self, ws):
        self.ws = ws

    async def send(self, frame) -> None:
        await self.ws.send_message(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def recv(self, timeout: float = 5) -> dict:
        with trio.fail_after(timeout):
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
async def running_server(db: str, specs=None, **settings):
    """A `Server` on a free loopback port, stopped gracefully on exit."""
    server = Server(ServerSettings(host="127.0.0.1", port=0, db=db, **settings), specs or agent_specs(None))
    async with trio.open_nursery() as nursery:
        server.port = await nursery.start(server.run)
        try:
            yield server
        finally:
            server.stop()
