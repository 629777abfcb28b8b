"""Connections over in-memory streams (trio.testing), for transport units: `Harness` wires real agents on a
real SQLite file to in-memory clients; `recv`, `recv_until` read JSON frames from a client's WebSocket."""
from __future__ import annotations

import json

import trio
import trio.testing
from trio_websocket import wrap_client_stream, wrap_server_stream

from agentcast.actors import Agents, Audience, Journal, agent_specs
from agentcast.store import EventLog
from agentcast.transport._connection import Connection, OutboxBudget
from agentcast.transport.server import ServerSettings

from .timeouts import clock_bound


class Harness:
    """Agents over a real SQLite file, and a way to attach in-memory clients to them."""

    def __init__(self, nursery, db, specs=None):
        self.nursery = nursery
        self.log = EventLog.open(db)
        self.journal = Journal(self.log, lambda: EventLog.open(db, readonly=True))
        self.audience = Audience()
        self.agents = Agents(agent_specs(None) if specs is None else specs, self.journal, self.audience,
                             clock=lambda: "2026-01-01T00:00:00.000Z")
        self.finished: list[Connection] = []
        self.settings: dict = {}  # ServerSettings fields for the next clients
        #: The connections open, and the budget of their outbound queues (as a server's).
        self.connections: set[Connection] = set()
        self.budget: OutboxBudget | None = None

    async def start(self):
        await self.nursery.start(self.journal.run)
        await self.nursery.start(self.agents.run)

    async def client(self, *, lockstep=False, outbox_size=1024, writes=None):
        """A connected client; with `lockstep`, the server's writes block until the client reads.
        With a list as `writes`, the bytes of each of the server's writes to it are appended to it."""
        if lockstep:
            server_stream, client_stream = trio.testing.lockstep_stream_pair()
        else:
            server_stream, client_stream = trio.testing.memory_stream_pair()
        if writes is not None:
            send_all = server_stream.send_all

            async def recording_send_all(data):
                writes.append(bytes(data))
                await send_all(data)

            server_stream.send_all = recording_send_all
        connection_ready = trio.Event()

        async def serve():
            request = await wrap_server_stream(self.nursery, server_stream)
            ws = await request.accept()
            conn = Connection(ws, self.agents, self.audience, clock=lambda: "2026-01-01T00:00:00.000Z",
                              settings=ServerSettings(outbox_size=outbox_size, close_timeout=0.5, **self.settings),
                              budget=self.budget)
            self.current = conn
            self.connections.add(conn)
            connection_ready.set()
            await conn.run()
            self.connections.discard(conn)
            self.finished.append(conn)

        self.nursery.start_soon(serve)
        ws = await wrap_client_stream(self.nursery, client_stream, "127.0.0.1", "/ws")
        await connection_ready.wait()
        return ws, self.current

    async def wait_finished(self, conn, timeout=10):
        """Until `conn.run()` has returned (bounded by `timeout` seconds unless None; see `clock_bound`)."""
        with trio.fail_after(clock_bound(timeout)) if timeout is not None else trio.CancelScope():
            while conn not in self.finished:
                await trio.sleep(0.01)


async def recv(ws):
    with trio.fail_after(clock_bound(10)):
        return json.loads(await ws.get_message())


async def recv_until(ws, type_):
    frames = [await recv(ws)]
    while frames[-1]["type"] != type_:
        frames.append(await recv(ws))
    return frames
