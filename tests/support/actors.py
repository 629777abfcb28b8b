"""Agents without a transport, for actor units: `running` starts a journal on a fresh log and one `Agent`
per spec, `Recorder` is an outbox a test can wait on, `logged` reads the log back, `chat` makes a `ChatCommand`."""
from __future__ import annotations

from contextlib import asynccontextmanager, nullcontext
from types import SimpleNamespace

import trio

from agentcast.actors import Agent, AgentSpec, Audience, ChatCommand, Journal, LaneBudget
from agentcast.store import EventLog

from .timeouts import clock_bound

AT = "2026-01-01T00:00:00.000Z"
#: A safety net for waits in tests on the real clock: a hang fails instead of blocking forever (see `clock_bound`).
WAIT = 10


class Recorder:
    """An outbox that records what it is given and lets a test wait for an output type."""

    def __init__(self, name: str = "outbox") -> None:
        self.name = name
        self.outputs: list = []
        self._arrived = trio.Event()

    def __repr__(self) -> str:
        return f"Recorder({self.name!r})"

    def deliver(self, output) -> None:
        self.outputs.append(output)
        self._arrived.set()
        self._arrived = trio.Event()

    def of(self, type_) -> list:
        return [o for o in self.outputs if isinstance(o, type_)]

    def for_request(self, request_id) -> list:
        return [o for o in self.outputs if o.request_id == request_id]

    async def wait_for(self, type_, count: int = 1, *, timeout: float | None = WAIT) -> list:
        """Wait until `count` outputs of `type_` have arrived; returns them."""
        with trio.fail_after(clock_bound(timeout)) if timeout is not None else nullcontext():
            while len(self.of(type_)) < count:
                await self._arrived.wait()
        return self.of(type_)


@asynccontextmanager
async def running(tmp_path, *specs: AgentSpec, budget: LaneBudget | None = None):
    """A journal on a fresh log and one running `Agent` per spec (sharing `budget`, if given), cancelled on exit."""
    path = tmp_path / "a.db"
    log = EventLog.open(path)
    try:
        journal = Journal(log, lambda: EventLog.open(path, readonly=True))
        audience = Audience()
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            agents = {}
            for spec in specs:
                agents[spec.agent_id] = Agent(spec, journal, audience, clock=lambda: AT, budget=budget)
                await nursery.start(agents[spec.agent_id].run)
            yield SimpleNamespace(path=path, journal=journal, audience=audience, agents=agents)
            nursery.cancel_scope.cancel()
    finally:
        log.close()


def logged(path) -> list:
    """Every recorded event of the log at `path`, read through a separate read-only connection."""
    with EventLog.open(path, readonly=True) as reader:
        return list(reader.read())


def chat(user, message, origin, request_id=None) -> ChatCommand:
    return ChatCommand(user, message, AT, origin, request_id)
