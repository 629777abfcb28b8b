"""`Agent`: one actor per configured agent, with a bounded mailbox and a lane per user.

Owns turn execution and who hears it (`Audience`). Must not import `transport`.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone

import trio
from attrs import frozen

from store import AgentMessage, Memory, MemoryCleared, UserMessage, fold

from ._brain import Brain, BrainError, Turn
from ._journal import Journal
from ._messages import (
    AgentCommand,
    ChatTurn,
    ClearMemory,
    Failed,
    Found,
    MemoryWasCleared,
    Outbox,
    Output,
    SearchMemory,
    SearchResults,
    TurnChunk,
    TurnDone,
    TurnResponse,
    TurnStarted,
)

logger = logging.getLogger("agentcast.actors")


def utc_now() -> str:
    """Now, as ISO 8601 UTC with milliseconds and a Z: the timestamps of events."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@frozen
class AgentSpec:
    """One agent's configuration."""

    agent_id: str
    brain: Brain
    description: str = ""
    #: Messages kept in short-term memory.
    short_term_window: int = 20
    #: Commands queued or running in the agent, all users together; more are refused `busy`.
    mailbox_size: int = 1024
    #: Commands queued or running for one user of the agent; more are refused `busy`.
    lane_size: int = 64
    #: A user's lane idle this long (seconds) is dropped; it is rebuilt from the log on next use.
    lane_idle_seconds: float = 60.0

    def __attrs_post_init__(self) -> None:
        if self.short_term_window < 1 or self.mailbox_size < 1 or self.lane_size < 1 or not self.lane_idle_seconds > 0:
            raise ValueError(f"agent {self.agent_id!r}: sizes must be >= 1 and lane_idle_seconds > 0")


class Busy(Exception):
    """The agent (or this user's lane in it) has as many commands as it may hold."""


class Audience:
    """Who hears an agent's turns: the outboxes subscribed per (agent, user)."""

    def __init__(self) -> None:
        self._subscribers: dict[tuple[str, str], dict[Outbox, None]] = {}

    def subscribe(self, agent_id: str, user: str, outbox: Outbox) -> None:
        self._subscribers.setdefault((agent_id, user), {})[outbox] = None

    def unsubscribe(self, agent_id: str, user: str, outbox: Outbox) -> None:
        key = (agent_id, user)
        subs = self._subscribers.get(key)
        if subs is not None:
            subs.pop(outbox, None)
            if not subs:
                del self._subscribers[key]

    def recipients(self, agent_id: str, user: str, origin: Outbox) -> "Recipients":
        """`origin`, then every other outbox subscribed to `agent_id` under `user`: each once."""
        subs = self._subscribers.get((agent_id, user))
        others = [o for o in subs if o is not origin] if subs else []
        return Recipients(self, agent_id, user, origin, others)

    def hears(self, agent_id: str, user: str, outbox: Outbox) -> bool:
        """True while `outbox` is subscribed to `agent_id` under `user`."""
        subs = self._subscribers.get((agent_id, user))
        return subs is not None and outbox in subs


class Recipients:
    """Who gets the outputs of one command: its origin, and the subscribers it had when it
    started that still are subscribed under the same user when an output is delivered (a
    connection that switches user mid-turn gets nothing more of the old user's turn)."""

    __slots__ = ("_audience", "_agent_id", "_user", "_origin", "_others")

    def __init__(self, audience: Audience, agent_id: str, user: str, origin: Outbox, others: list[Outbox]) -> None:
        self._audience = audience
        self._agent_id = agent_id
        self._user = user
        self._origin = origin
        self._others = others

    def deliver(self, output: Output) -> None:
        self._origin.deliver(output)
        for outbox in self._others:
            if self._audience.hears(self._agent_id, self._user, outbox):
                outbox.deliver(output)


@frozen
class _Lane:
    send: trio.MemorySendChannel
    receive: trio.MemoryReceiveChannel


class Agent:
    """An actor: serializes each user's commands in arrival order, runs users concurrently.

    `submit` never blocks: it queues the command or raises `Busy`. `run` must be running
    (in a nursery) for commands to be carried out.
    """

    def __init__(self, spec: AgentSpec, journal: Journal, audience: Audience, clock: Callable[[], str] = utc_now) -> None:
        self.spec = spec
        self.agent_id = spec.agent_id
        self._journal = journal
        self._audience = audience
        self._clock = clock
        self._mailbox_send, self._mailbox_receive = trio.open_memory_channel[AgentCommand](spec.mailbox_size)
        self._lanes: dict[str, _Lane] = {}
        self._pending: dict[str, int] = {}  # per user: commands queued or running
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()

    # -- the outside -------------------------------------------------------------------

    def submit(self, command: AgentCommand) -> None:
        """Queue `command` behind the same user's earlier ones, or raise `Busy`."""
        if self._in_flight >= self.spec.mailbox_size:
            raise Busy(f"Agent '{self.agent_id}' is busy ({self.spec.mailbox_size} commands queued); try again shortly")
        pending = self._pending.get(command.user, 0)
        if pending >= self.spec.lane_size:
            raise Busy(f"Agent '{self.agent_id}' has {self.spec.lane_size} of your commands queued; try again shortly")
        self._mailbox_send.send_nowait(command)  # its capacity is mailbox_size, checked above
        self._pending[command.user] = pending + 1
        self._in_flight += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    @property
    def in_flight(self) -> int:
        """Commands queued or running."""
        return self._in_flight

    @property
    def lanes(self) -> int:
        """Users with a lane in memory."""
        return len(self._lanes)

    async def wait_idle(self) -> None:
        """Return once no command is queued or running."""
        await self._idle.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Carry out submitted commands until cancelled: each user's in order, users concurrently."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for command in self._mailbox_receive:
                lane = self._lanes.get(command.user)
                if lane is None:
                    send, receive = trio.open_memory_channel[AgentCommand](math.inf)  # bounded by submit
                    lane = self._lanes[command.user] = _Lane(send, receive)
                    nursery.start_soon(self._run_lane, command.user, lane)
                lane.send.send_nowait(command)

    # -- lanes ---------------------------------------------------------------------------

    def _finished(self, user: str) -> None:
        left = self._pending[user] - 1
        if left:
            self._pending[user] = left
        else:
            del self._pending[user]
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def _run_lane(self, user: str, lane: _Lane) -> None:
        memory: Memory | None = None
        window = self.spec.short_term_window
        while True:
            command = None
            with trio.move_on_after(self.spec.lane_idle_seconds):
                command = await lane.receive.receive()
            if command is None:
                if user not in self._pending:  # idle: drop it (no await between check and removal)
                    del self._lanes[user]
                    return
                continue
            try:
                if memory is None:
                    memory = await self._journal.read(lambda log: log.memory(self.agent_id, user, window=window))
                memory = await self._carry_out(memory, command)
            except Exception:  # the lane lives on; its state is rebuilt from the log
                logger.exception("agent %s: command for user %s failed", self.agent_id, user)
                memory = None
                self._fail(command, "agent_error", "The agent failed while handling this message")
            finally:
                self._finished(user)

    def _fail(self, command: AgentCommand, code: str, message: str) -> None:
        recipients = self._recipients(command)
        recipients.deliver(Failed(self.agent_id, code, message, command.request_id))
        if isinstance(command, ChatTurn):
            recipients.deliver(TurnDone(self.agent_id, command.request_id))

    def _recipients(self, command: AgentCommand) -> Recipients:
        if isinstance(command, SearchMemory):
            return Recipients(self._audience, self.agent_id, command.user, command.origin, [])
        return self._audience.recipients(self.agent_id, command.user, command.origin)

    async def _carry_out(self, memory: Memory, command: AgentCommand) -> Memory:
        if isinstance(command, ChatTurn):
            return await self._chat(memory, command)
        if isinstance(command, SearchMemory):
            await self._search(memory, command)
            return memory
        return await self._clear(memory, command)

    async def _chat(self, memory: Memory, cmd: ChatTurn) -> Memory:
        agent_id, rid = self.agent_id, cmd.request_id
        recipients = self._recipients(cmd)
        recipients.deliver(TurnStarted(agent_id, rid))
        logged = None  # a retry: the turn of this command_id as the log has it
        if cmd.command_id is not None:
            logged = await self._journal.read(lambda log: log.find_turn(agent_id, cmd.user, cmd.command_id))
            if logged is not None and logged[1] is not None:  # answered before: answer from the log
                answer_rec = logged[1]
                recipients.deliver(TurnChunk(agent_id, answer_rec.event.content, rid))
                recipients.deliver(TurnResponse(agent_id, answer_rec.event.content, answer_rec.seq, rid))
                recipients.deliver(TurnDone(agent_id, rid))
                return memory
        brain = self.spec.brain
        recalled = ()
        if brain.recall and memory.long_term_count:
            recalled = await self._journal.read(
                lambda log: log.search(agent_id, cmd.user, cmd.message, brain.recall)
            )
        deltas: list[str] = []
        failure: str | None = None
        try:
            async for delta in brain.reply(Turn(agent_id, cmd.user, cmd.message, memory, recalled)):
                if delta:
                    deltas.append(delta)
                    recipients.deliver(TurnChunk(agent_id, delta, rid))
            if not deltas:
                failure = "The agent gave an empty answer"
        except BrainError as exc:
            failure = str(exc) or "The agent could not answer"
        except Exception:
            logger.exception("agent %s: brain failed", agent_id)
            failure = "The agent failed while answering"
        # The user's message is logged once, even if the turn fails or is retried.
        said = [] if logged is not None else [UserMessage(agent_id, cmd.user, cmd.at, cmd.message, rid, cmd.command_id)]
        if failure is not None:
            for rec in await self._journal.append(said) if said else ():
                memory = fold(memory, rec)
            recipients.deliver(Failed(agent_id, "brain_error", failure, rid))
            recipients.deliver(TurnDone(agent_id, rid))
            return memory
        answer = AgentMessage(agent_id, cmd.user, self._clock(), "".join(deltas), rid)
        *said_recs, answer_rec = await self._journal.append([*said, answer])
        recipients.deliver(TurnResponse(agent_id, answer.content, answer_rec.seq, rid))
        recipients.deliver(TurnDone(agent_id, rid))
        for rec in (*said_recs, answer_rec):
            memory = fold(memory, rec)
        return memory

    async def _search(self, memory: Memory, cmd: SearchMemory) -> None:
        since = 0 if cmd.use_long_term else memory.short_term_since
        hits = await self._journal.read(
            lambda log: log.search(self.agent_id, cmd.user, cmd.query, cmd.limit, since_seq=since)
        )
        window_start = memory.short_term_since
        found = [Found(h, "short_term" if h.seq >= window_start else "long_term") for h in hits]
        cmd.origin.deliver(SearchResults(self.agent_id, cmd.query, found, cmd.request_id))

    async def _clear(self, memory: Memory, cmd: ClearMemory) -> Memory:
        (rec,) = await self._journal.append([MemoryCleared(self.agent_id, cmd.user, cmd.at, cmd.long_term, cmd.request_id)])
        forgotten = memory.long_term_count if cmd.long_term else 0
        self._recipients(cmd).deliver(MemoryWasCleared(self.agent_id, cmd.long_term, forgotten, rec.seq, cmd.request_id))
        return fold(memory, rec)


class Agents(Mapping[str, Agent]):
    """The configured agents by id, run together in one nursery."""

    def __init__(self, specs: Iterable[AgentSpec], journal: Journal, audience: Audience, clock: Callable[[], str] = utc_now) -> None:
        self._agents = {s.agent_id: Agent(s, journal, audience, clock) for s in specs}

    def __getitem__(self, agent_id: str) -> Agent:
        return self._agents[agent_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._agents)

    def __len__(self) -> int:
        return len(self._agents)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every agent until cancelled."""
        async with trio.open_nursery() as nursery:
            for agent in self._agents.values():
                await nursery.start(agent.run)
            task_status.started()

    async def wait_idle(self) -> None:
        """Return once no agent has a command queued or running."""
        for agent in self._agents.values():
            await agent.wait_idle()
