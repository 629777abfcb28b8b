"""`Agent`: one actor per configured agent: it takes commands (`submit`, `cancel`) and runs each user's in
that user's lane, in arrival order, users concurrently; `Agents`, the configured agents run together.

Owns the agent's life (`run`), routing a command to its user's lane, and what a lane carries out: its
memory restored from the log, each command (a chat through `TurnRunner`, a search, a clear, a backlog),
snapshots, a failure answered and the lane going on. The parts are modules of their own: `_admission`
(how many commands it holds, `Busy`), `_lanes` (a lane's state, idle lanes dropped, `LaneBudget`), `_turn`
(a chat turn run), `_backlog` (a resume's backlog), `_audience` (who hears). Must not import `transport`.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import assert_never

import trio
from attrs import frozen

from ..store import Memory, UserClearedMemory, fold

from ._admission import Admission, Busy
from ._audience import Audience
from ._backlog import deliver_backlog
from ._brain import Brain
from ._embedders import EmbedderChoice
from ._journal import Journal
from ._lanes import Lane, LaneBudget, Lanes
from ._messages import (
    AgentCommand,
    ChatCommand,
    ClearCommand,
    FailedOutput,
    Found,
    MemoryClearedOutput,
    Outbox,
    ResumeCommand,
    SearchCommand,
    SearchResultsOutput,
    is_live,
)
from ._semantic import SearchUnavailable, SemanticMemory
from ._turn import TurnRunner

__all__ = ["Agent", "AgentSpec", "Agents", "Busy", "NothingToCancel", "ON_BUSY", "SNAPSHOT_EVERY", "utc_now"]

logger = logging.getLogger("agentcast.actors")

#: A lane saves a snapshot of its memory once this many events were folded since the last one,
#: so that rebuilding a lane folds at most about this many events whatever its history.
SNAPSHOT_EVERY = 1000


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
    #: Commands queued or running in the agent, all users together; beyond, a user who already has
    #: one queued is refused `busy` (a user with none still gets one: flooders cannot starve others).
    mailbox_size: int = 4096
    #: Commands queued or running for one user of the agent; more are refused `busy`.
    lane_size: int = 64
    #: Commands queued or running from one connection; more are refused `busy`, so that a client
    #: flooding commands without waiting for answers cannot fill the mailbox for everyone else.
    connection_size: int = 16
    #: A user's lane idle this long (seconds) is dropped; it is rebuilt from the log on next use.
    lane_idle_seconds: float = 60.0
    #: Cancel a running turn when the connection that asked for it goes away (by default it
    #: completes and is logged, so the user can read it after reconnecting).
    cancel_on_disconnect: bool = False
    #: A chat from a user whose previous chat is still queued or running: "queue" it behind
    #: (default), "reject" it (`busy`), or "interrupt" the running turn (cancelled) and queue it.
    on_busy: str = "queue"
    #: The embedder of semantic memory (None: the search is lexical only); made by the server, shared by the
    #: agents whose choices are equal.
    embedder: EmbedderChoice | None = None

    def __attrs_post_init__(self) -> None:
        sizes = (self.short_term_window, self.mailbox_size, self.lane_size, self.connection_size)
        if min(sizes) < 1 or not self.lane_idle_seconds > 0:
            raise ValueError(f"agent {self.agent_id!r}: sizes must be >= 1 and lane_idle_seconds > 0")
        if self.on_busy not in ON_BUSY:
            raise ValueError(f"agent {self.agent_id!r}: on_busy must be one of {', '.join(map(repr, ON_BUSY))}")


#: The choices of `AgentSpec.on_busy`.
ON_BUSY = ("queue", "reject", "interrupt")


class NothingToCancel(Exception):
    """A cancel found no running turn of that user (with that request_id) on the agent."""


class Agent:
    """An actor: serializes each user's commands in arrival order, runs users concurrently.

    `submit` never blocks: it queues the command or raises `Busy`. `run` must be running
    (in a nursery) for commands to be carried out.
    """

    def __init__(self, spec: AgentSpec, journal: Journal, audience: Audience, clock: Callable[[], str] = utc_now,
                 budget: LaneBudget | None = None, semantic: SemanticMemory | None = None) -> None:
        self.spec = spec
        self.agent_id = spec.agent_id
        self._journal = journal
        self._audience = audience
        self._clock = clock
        # Commands submitted before `run` starts wait here; once it runs, `submit` hands each command
        # straight to its user's lane (no hop through a task of the agent's own).
        # Bounded by `submit`: at most mailbox_size commands, plus one for each user with none queued.
        self._mailbox_send, self._mailbox_receive = trio.open_memory_channel[AgentCommand](math.inf)
        self._nursery: trio.Nursery | None = None  # the lanes' nursery, while `run` runs
        #: The users' lanes in memory (and which are idle), counted in the server's `LaneBudget`.
        self._lanes = Lanes(spec.lane_idle_seconds, budget if budget is not None else LaneBudget())
        self._admission = Admission(spec)
        self._turns = TurnRunner(spec, journal, audience, clock, semantic)

    # -- the outside -------------------------------------------------------------------

    def submit(self, command: AgentCommand) -> None:
        """Queue `command` behind the same user's earlier ones, or raise `Busy`."""
        is_chat = self._admission.admit(command)
        try:
            self._route(command)
        except BaseException:
            self._admission.finished(command)  # not queued after all
            raise
        if is_chat and self.spec.on_busy == "interrupt":
            running = self._turns.running.get(command.user)
            if running is not None:
                running.scope.cancel()

    def cancel(self, user: str, request_id: str | None, canceller: Outbox) -> None:
        """Cancel `user`'s running turn (the one with `request_id`, if given) at once: the brain is
        stopped where it is, its partial answer is logged as a cancelled turn, and its recipients (and
        `canceller`, whoever it is) get `TurnCancelledOutput` then `TurnDoneOutput`. Raises `NothingToCancel` if
        there is none.

        A cancel that did not raise is always answered so: the turn ends cancelled even if the brain
        finished its answer meanwhile (in a step that cannot be interrupted, such as closing its
        connection), with all of its text as the partial answer.

        Only `user`'s own turn can be cancelled: turns are found by user. Queued turns are untouched.
        """
        running = self._turns.running.get(user)
        if running is None or running.scope.cancel_called:
            raise NothingToCancel(f"Agent '{self.agent_id}' is not answering you right now: nothing to cancel")
        if request_id is not None and running.request_id != request_id:
            # (the client's request_id is not repeated here: the error frame carries it)
            raise NothingToCancel(f"Agent '{self.agent_id}' is not answering a message with this request_id "
                                  "right now: nothing to cancel")
        if canceller is not running.origin and canceller not in running.cancellers:
            running.cancellers.append(canceller)
        running.scope.cancel()

    def disconnected(self, origin: Outbox) -> None:
        """`origin` has gone: with `cancel_on_disconnect`, cancel the turn it is waiting for (its
        chats still queued are cancelled as they come up)."""
        if self.spec.cancel_on_disconnect:
            for running in self._turns.running.values():
                if running.origin is origin:
                    running.scope.cancel()

    @property
    def semantic(self) -> SemanticMemory | None:
        """The semantic side of the agent's memory search (None: lexical only)."""
        return self._turns.semantic

    @property
    def in_flight(self) -> int:
        """Commands queued or running."""
        return self._admission.in_flight

    @property
    def lanes(self) -> int:
        """Users with a lane in memory."""
        return len(self._lanes)

    async def wait_idle(self) -> None:
        """Return once no command is queued or running."""
        await self._admission.idle.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Carry out submitted commands until cancelled: each user's in order, users concurrently."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._lanes.drop_idle)
            self._nursery = nursery
            try:
                while True:  # what was submitted before
                    try:
                        command = self._mailbox_receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    self._route(command)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def _route(self, command: AgentCommand) -> None:
        """Queue `command` in its user's lane (started if the user has none), or in the mailbox until `run` runs."""
        nursery = self._nursery
        if nursery is None:
            self._mailbox_send.send_nowait(command)
            return
        user = command.user
        lane = self._lanes.get(user)
        if lane is None:
            send, receive = trio.open_memory_channel[AgentCommand](math.inf)  # bounded by submit
            lane = Lane(send, receive)
            nursery.start_soon(self._run_lane, user, lane)
            lane.send.send_nowait(command)
            self._lanes.start(user, lane)
            return
        if lane.idle:  # busy from now
            self._lanes.busy(user, lane)
        lane.send.send_nowait(command)

    # -- lanes ---------------------------------------------------------------------------

    def _finished(self, command: AgentCommand) -> None:
        """`command` is done: no longer counted; its user's lane is idle if it was the last."""
        if self._admission.finished(command):
            user = command.user
            lane = self._lanes.get(user)
            if lane is not None:  # idle from now: dropped lane_idle_seconds later unless used again
                self._lanes.fell_idle(user, lane)

    async def _run_lane(self, user: str, lane: Lane) -> None:
        """Carry out `user`'s commands in order until `Lanes.drop_idle` closes the lane.

        The lane runs in one cancel scope, made anew only after a cancel has used it: `Agent.cancel`
        cancels it to stop a chat's brain (entering a scope for every turn cost about 25 µs a turn,
        as much as the rest of its bookkeeping). The chat interrupted so ends here, outside the
        cancelled scope, before the lane takes its next command.
        """
        try:
            while True:
                try:
                    with trio.CancelScope() as scope:
                        await self._serve_lane(user, lane, scope)
                        return  # closed: idle
                except Exception as exc:  # what the interrupted brain raised with the Cancelled (an exception group)
                    if lane.interrupted is None:
                        raise
                    logger.error("agent %s: brain failed as it was cancelled: %s (message withheld)", self.agent_id,
                                 type(exc).__name__)
                chat = lane.interrupted
                if chat is not None:
                    try:
                        assert lane.memory is not None  # a chat ran on it
                        lane.memory = await self._turns.end_chat(lane.memory, chat)
                        await self._snapshot_if_due(lane)
                    except Exception:
                        self._lane_failed(lane, chat.cmd, "ending a cancelled turn")
                    finally:
                        lane.interrupted = None
                        self._finished(chat.cmd)
        finally:
            if lane.interrupted is not None:  # cancelled from outside (shutdown) as well: it ends unlogged
                self._finished(lane.interrupted.cmd)
                lane.interrupted = None

    async def _serve_lane(self, user: str, lane: Lane, scope: trio.CancelScope) -> None:
        """Carry out the lane's commands until it is closed (returns) or a chat is interrupted
        (`Cancelled`, with the chat in `lane.interrupted`: it is not finished yet)."""
        window = self.spec.short_term_window
        async for command in lane.receive:  # until `Lanes.drop_idle` closes it
            try:
                memory = lane.memory
                if memory is None:
                    restored: tuple[Memory, int] = await self._journal.read(
                        lambda log: log.restore(self.agent_id, user, window=window))
                    memory, folded = restored
                    lane.memory, lane.saved = memory, memory.version - folded
                if isinstance(command, ChatCommand):
                    lane.memory = await self._turns.chat(lane, command, scope)
                else:
                    lane.memory = await self._carry_out(memory, command)
                await self._snapshot_if_due(lane)
            except Exception:
                self._lane_failed(lane, command, "command")
            finally:
                if lane.interrupted is None:  # an interrupted chat is finished once it has ended
                    self._finished(command)

    def _lane_failed(self, lane: Lane, command: AgentCommand, what: str) -> None:
        """`command` failed in `lane` (logged with its stack): the lane lives on, its memory rebuilt from the log."""
        # %r: the user id is the client's (escaped as transport.protocol.shown escapes it; its length is capped by the protocol)
        logger.exception("agent %s: %s for user %r failed", self.agent_id, what, command.user)
        lane.memory = None
        self._turns.fail(command, "agent_error", "The agent failed while handling this message")

    async def _snapshot_if_due(self, lane: Lane) -> None:
        """Save a snapshot of the lane's memory once SNAPSHOT_EVERY events were folded since the last."""
        memory = lane.memory
        if memory is not None and memory.version - lane.saved >= SNAPSHOT_EVERY:
            await self._journal.save_snapshot(memory)
            lane.saved = memory.version

    async def _carry_out(self, memory: Memory, command: SearchCommand | ClearCommand | ResumeCommand) -> Memory:
        """Carry out a command other than a chat (`TurnRunner.chat`)."""
        match command:
            case SearchCommand():
                origin = command.origin
                if not (is_live(origin) and origin.gone):  # else nobody is left to read the results
                    await self._search(memory, command)
                return memory
            case ResumeCommand():
                await deliver_backlog(self.agent_id, self._journal, self._audience, self.spec.short_term_window,
                                      command)
                return memory
            case ClearCommand():
                return await self._clear(memory, command)
            case _:
                assert_never(command)

    async def _search(self, memory: Memory, cmd: SearchCommand) -> None:
        """Answer a search of the user's memory (long-term, or the short-term window alone) to its origin."""
        since = 0 if cmd.use_long_term else memory.short_term_since
        try:
            result = await self._turns.memory_search(cmd.user, cmd.query, cmd.limit, since_seq=since, legs=cmd.legs)
        except SearchUnavailable as exc:
            cmd.origin.deliver(FailedOutput(self.agent_id, "semantic_unavailable", str(exc), cmd.request_id))
            return
        window_start = memory.short_term_since
        found = [Found(h, "short_term" if h.seq >= window_start else "long_term") for h in result.hits]
        cmd.origin.deliver(SearchResultsOutput(self.agent_id, cmd.query, found, cmd.request_id, result.legs))

    async def _clear(self, memory: Memory, cmd: ClearCommand) -> Memory:
        """Log a clear of the user's memory, tell its recipients; the memory after it."""
        (rec,) = await self._journal.append([UserClearedMemory(self.agent_id, cmd.user, cmd.at, cmd.long_term, cmd.request_id)])
        forgotten = memory.long_term_count if cmd.long_term else 0
        self._turns.recipients(cmd).deliver(MemoryClearedOutput(self.agent_id, cmd.long_term, forgotten, rec.seq, cmd.request_id))
        return fold(memory, rec)


class Agents(Mapping[str, Agent]):
    """The configured agents by id, run together in one nursery."""

    def __init__(self, specs: Iterable[AgentSpec], journal: Journal, audience: Audience, clock: Callable[[], str] = utc_now,
                 budget: LaneBudget | None = None, semantic: Mapping[str, SemanticMemory] | None = None) -> None:
        """`semantic`: the semantic memory of each agent that has an embedder, by agent id."""
        #: The bounds on resident lanes, shared by all the agents.
        self.budget = budget if budget is not None else LaneBudget()
        semantic = semantic or {}
        self._agents = {s.agent_id: Agent(s, journal, audience, clock, self.budget, semantic.get(s.agent_id))
                        for s in specs}

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
