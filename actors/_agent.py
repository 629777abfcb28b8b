"""`Agent`: one actor per configured agent, with a bounded mailbox and a lane per user.

Owns turn execution, who hears it (`Audience`) and how many lanes stay in memory (`LaneBudget`).
Must not import `transport`.
"""
from __future__ import annotations

import collections
import logging
import math
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import aclosing
from datetime import datetime, timezone
from typing import assert_never

import trio
from attrs import define, field, frozen

from ..store import (
    CANCELLED,
    FAILED,
    AgentAnswered,
    Event,
    FactRemembered,
    Hit,
    Memory,
    Recorded,
    Recorder,
    ToolCalled,
    ToolReturned,
    TurnEnded,
    UserClearedMemory,
    UserSaid,
    fold,
    fold_all,
)

from ._brain import Brain, BrainError, ToolCallItem, ToolResultItem, Turn, UsageItem
from ._journal import Journal
from ._messages import (
    AgentCommand,
    ChatCommand,
    ClearCommand,
    FailedOutput,
    Found,
    MemoryClearedOutput,
    LiveOutbox,
    Outbox,
    Output,
    ResumeCommand,
    ResumedOutput,
    SearchCommand,
    SearchResultsOutput,
    TurnCancelledOutput,
    TurnChunkOutput,
    TurnDoneOutput,
    TurnResponseOutput,
    TurnStartedOutput,
    ToolCallOutput,
    ToolResultOutput,
    UserMessageOutput,
    is_live,
)
from ._tools import ToolContext, Toolbox

logger = logging.getLogger("agentcast.actors")

#: Events read from the log at a time for a resumed subscription's backlog (never the whole history at once).
BACKLOG_PAGE = 500


#: The defaults of `LaneBudget`: resident lanes, and UTF-8 bytes of text in their short-term windows.
DEFAULT_MAX_LANES = 10_000
DEFAULT_MAX_LANES_WINDOW_BYTES = 64 * 1024 * 1024

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

    def __attrs_post_init__(self) -> None:
        sizes = (self.short_term_window, self.mailbox_size, self.lane_size, self.connection_size)
        if min(sizes) < 1 or not self.lane_idle_seconds > 0:
            raise ValueError(f"agent {self.agent_id!r}: sizes must be >= 1 and lane_idle_seconds > 0")
        if self.on_busy not in ON_BUSY:
            raise ValueError(f"agent {self.agent_id!r}: on_busy must be one of {', '.join(map(repr, ON_BUSY))}")


#: The choices of `AgentSpec.on_busy`.
ON_BUSY = ("queue", "reject", "interrupt")


class Busy(Exception):
    """The agent (or this user's lane in it) has as many commands as it may hold."""


class NothingToCancel(Exception):
    """A cancel found no running turn of that user (with that request_id) on the agent."""


@define(eq=False)
class RunningTurn:
    """A user's chat turn while its brain runs: cancelling `scope` (its lane's) stops it (and closes its HTTP stream)."""

    scope: trio.CancelScope
    request_id: str | None
    origin: Outbox
    #: Outboxes other than `origin` that cancelled it: each gets its end, whether it hears the turn or not.
    cancellers: list[Outbox] = field(factory=list)


class _TurnLog:
    """The events of one chat turn, appended in order. The user's message goes with the first
    append (a tool call, a remembered fact, or the end of the turn), so nothing of a turn is
    ever logged before the message that caused it."""

    def __init__(self, agent: "Agent", recipients: "Recipients", said: UserSaid | None) -> None:
        self._agent = agent
        self._recipients = recipients
        self._said = said
        self.recorded: list[Recorded] = []

    async def append(self, events: Sequence[Event]) -> list[Recorded]:
        """Append `events` (after the user's message, the first time); returns their records once committed."""
        batch = [self._said, *events] if self._said is not None else list(events)
        recorded = await self._agent._append(self._recipients, batch)
        self._said = None  # only once committed: after a failed append, the next one carries it again
        self.recorded.extend(recorded)
        return recorded[len(recorded) - len(events):]


@frozen
class _TurnMemory:
    """The user's memory as the turn's tools reach it (`actors._tools.MemoryAccess`): bound to
    the turn's agent and user, so a tool can neither read nor write anyone else's."""

    agent: "Agent"
    user: str
    request_id: str | None
    log: _TurnLog

    async def search(self, query: str, limit: int) -> Sequence[Hit]:
        agent_id, user = self.agent.agent_id, self.user
        return await self.agent._journal.read(lambda log: log.search(agent_id, user, query, limit))

    async def remember(self, fact: str) -> int:
        event = FactRemembered(self.agent.agent_id, self.user, self.agent._clock(), fact, self.request_id)
        (rec,) = await self.log.append([event])
        return rec.seq


#: The toolbox of a brain that has no tools: it never reaches a context (see `Toolbox.run`).
_NO_TOOLS = Toolbox((), None)  # type: ignore[arg-type]

_HELD, _LIVE, _TAIL = "held", "live", "tail"


class Audience:
    """Who hears an agent's turns: the outboxes subscribed per (agent, user).

    A subscription is *live* (`subscribe`), *held* (`subscribe(held=True)`: registered for a
    `ResumeCommand` that has not delivered its backlog yet; hears nothing) or a *tail* (a resume made
    it live: it also hears each user message as it is committed, so it sees every logged event).
    """

    def __init__(self) -> None:
        self._subscribers: dict[tuple[str, str], dict[Outbox, str]] = {}
        #: The backlogs being delivered, by (agent, user, outbox): at most one each (a user's resumes run in its lane).
        self._backlogs: dict[tuple[str, str, Outbox], Backlog] = {}

    def subscribe(self, agent_id: str, user: str, outbox: Outbox, *, held: bool = False) -> None:
        """Subscribe `outbox` (live). With `held`, register it for a pending `ResumeCommand` instead; an
        existing subscription then stays as it is until the resume has delivered its backlog."""
        subs = self._subscribers.setdefault((agent_id, user), {})
        if held:
            subs.setdefault(outbox, _HELD)
        else:
            subs[outbox] = _LIVE

    def subscribed(self, agent_id: str, user: str, outbox: Outbox) -> bool:
        """True while `outbox` has a subscription (of any kind) to `agent_id` under `user`."""
        subs = self._subscribers.get((agent_id, user))
        return subs is not None and outbox in subs

    def tail(self, agent_id: str, user: str, outbox: Outbox) -> None:
        """Make `outbox`'s subscription a tail (a resume delivered its backlog); nothing if it has none."""
        subs = self._subscribers.get((agent_id, user))
        if subs is not None and outbox in subs:
            subs[outbox] = _TAIL

    def release(self, agent_id: str, user: str, outbox: Outbox) -> None:
        """Drop `outbox`'s subscription if it is still held (its resume failed); a live one stays."""
        subs = self._subscribers.get((agent_id, user))
        if subs is not None and subs.get(outbox) == _HELD:
            self.unsubscribe(agent_id, user, outbox)

    def unsubscribe(self, agent_id: str, user: str, outbox: Outbox) -> None:
        """Drop `outbox`'s subscription to `agent_id` under `user`; a backlog under way to it stops at once."""
        key = (agent_id, user)
        subs = self._subscribers.get(key)
        if subs is not None:
            subs.pop(outbox, None)
            if not subs:
                del self._subscribers[key]
        if self._backlogs:
            backlog = self._backlogs.pop((agent_id, user, outbox), None)
            if backlog is not None:
                backlog.withdrawn = True

    def backlog(self, agent_id: str, user: str, outbox: Outbox) -> "Backlog":
        """Register a backlog about to be delivered to `outbox`: it is `withdrawn` as soon as that
        subscription is dropped (unsubscribed, the connection's user switched or gone), even if the
        outbox subscribes again meanwhile. `end_backlog` unregisters it."""
        backlog = self._backlogs[(agent_id, user, outbox)] = Backlog()
        return backlog

    def end_backlog(self, agent_id: str, user: str, outbox: Outbox, backlog: "Backlog") -> None:
        key = (agent_id, user, outbox)
        if self._backlogs.get(key) is backlog:
            del self._backlogs[key]

    def recipients(self, agent_id: str, user: str, origin: Outbox) -> "Recipients":
        """`origin`, then every other outbox subscribed to `agent_id` under `user`: each once."""
        subs = self._subscribers.get((agent_id, user))
        others = [o for o, kind in subs.items() if o is not origin and kind != _HELD] if subs else []
        return Recipients(self, agent_id, user, origin, others)

    def hears(self, agent_id: str, user: str, outbox: Outbox) -> bool:
        """True while `outbox` is subscribed (live or tail) to `agent_id` under `user`."""
        subs = self._subscribers.get((agent_id, user))
        return subs is not None and subs.get(outbox, _HELD) != _HELD

    def tails(self, agent_id: str, user: str, outbox: Outbox) -> bool:
        """True while `outbox` is a tail subscriber (a resumed one) of `agent_id` under `user`."""
        subs = self._subscribers.get((agent_id, user))
        return subs is not None and subs.get(outbox) == _TAIL


class Backlog:
    """A resume's backlog under way (`Audience.backlog`): `withdrawn` once its subscription is dropped."""

    __slots__ = ("withdrawn",)

    def __init__(self) -> None:
        self.withdrawn = False


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

    def deliver(self, output: Output, also: Sequence[Outbox] = ()) -> None:
        """Deliver `output` to the recipients, and to each outbox of `also` that is not one of them
        (e.g. a tab that cancelled a turn begun before it subscribed): each outbox once."""
        self._origin.deliver(output)
        for outbox in self._others:
            if self._audience.hears(self._agent_id, self._user, outbox):
                outbox.deliver(output)
        for outbox in also:
            if not self.reaches(outbox):
                outbox.deliver(output)

    def hold(self) -> list[LiveOutbox]:
        """Ask the recipients that can (a `LiveOutbox`) to keep what they are given until `release`:
        what was delivered so far and what comes next then go out together. Returns them, for `release`."""
        origin = self._origin
        held: list[LiveOutbox] = [origin] if is_live(origin) else []
        for outbox in self._others:
            if is_live(outbox) and self._audience.hears(self._agent_id, self._user, outbox):
                held.append(outbox)
        for outbox in held:
            outbox.hold()
        return held

    @staticmethod
    def release(held: Sequence[LiveOutbox]) -> None:
        """End the `hold` that returned `held`."""
        for outbox in held:
            outbox.release()

    def reaches(self, outbox: Outbox) -> bool:
        """True if `deliver` gives its outputs to `outbox` now."""
        if outbox is self._origin:
            return True
        return outbox in self._others and self._audience.hears(self._agent_id, self._user, outbox)

    def deliver_to_tails(self, output: Output) -> None:
        """Deliver `output` to those of the recipients (the origin too) that are tail subscribers."""
        for outbox in (self._origin, *self._others):
            if self._audience.tails(self._agent_id, self._user, outbox):
                outbox.deliver(output)


class LaneBudget:
    """How many lanes may stay in memory, shared by all the agents of a server: at most `max_lanes`
    lanes, holding at most `max_window_bytes` bytes (UTF-8) of message text in their short-term
    windows, all agents together (so that the process is bounded however many agents it has).

    Beyond either bound the least recently used idle lanes (no command queued or running) are
    dropped, whichever agent they belong to; a dropped lane is rebuilt from the log on next use.
    A busy lane is never dropped: while every lane is busy, the bounds can be exceeded by the
    lanes of the commands in flight (each agent holds at most `mailbox_size` of them, plus one per
    user with nothing queued).
    """

    def __init__(self, max_lanes: int = DEFAULT_MAX_LANES, max_window_bytes: int = DEFAULT_MAX_LANES_WINDOW_BYTES) -> None:
        if max_lanes < 1 or max_window_bytes < 1:
            raise ValueError("max_lanes and max_lanes_window_bytes must be at least 1")
        self.max_lanes = max_lanes
        self.max_window_bytes = max_window_bytes
        #: Lanes in memory, busy or idle, of all the agents.
        self.lanes = 0
        #: UTF-8 bytes of the message text in those lanes' short-term windows.
        self.window_bytes = 0
        self._agents: list[Agent] = []

    def _join(self, agent: "Agent") -> None:
        self._agents.append(agent)

    def _enforce(self) -> None:
        """Drop idle lanes, least recently used first (across agents), until within both bounds
        or no lane is idle. O(agents) per lane dropped."""
        while self.lanes > self.max_lanes or self.window_bytes > self.max_window_bytes:
            oldest: tuple[Agent, str, _Lane] | None = None
            for agent in self._agents:
                idle = agent._idle_lanes
                if idle:
                    user, lane = next(iter(idle.items()))
                    if oldest is None or lane.idle_since < oldest[2].idle_since:
                        oldest = (agent, user, lane)
            if oldest is None:
                return
            oldest[0]._drop_lane(oldest[1], oldest[2])


def _window_bytes(before: Memory | None, before_bytes: int, after: Memory | None) -> int:
    """UTF-8 bytes of the text in `after`'s short-term window, given those (`before_bytes`) of
    `before`, an earlier memory of the same lane (or None): only the messages that left the window
    and those that entered it are measured, so a turn costs O(its messages), not O(window)."""
    if after is None or not after.short_term:
        return 0
    if before is None:
        return sum(len(m.content.encode("utf-8", "surrogatepass")) for m in after.short_term)
    size = before_bytes
    first = after.short_term[0].seq
    for message in before.short_term:  # left the window (or a clear emptied it)
        if message.seq >= first:
            break
        text = message.content  # (`len` is the size of an ASCII text, and cheaper than encoding it)
        size -= len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    last = before.last_seq
    for message in reversed(after.short_term):  # entered it
        if message.seq <= last:
            break
        text = message.content
        size += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return size


class _Lane:
    """A user's lane: its queue of commands, its memory, and since when it has been idle (no command queued or running)."""

    __slots__ = ("send", "receive", "idle_since", "idle", "memory", "counted", "window_bytes", "saved", "interrupted")

    def __init__(self, send: trio.MemorySendChannel, receive: trio.MemoryReceiveChannel) -> None:
        self.send = send
        self.receive = receive
        self.idle_since = 0.0  # trio time; meaningful while the user has no command queued or running
        self.idle = False  # the lane is in Agent._idle_lanes
        self.memory: Memory | None = None  # None until read from the log (and again after a failure)
        #: The memory whose short-term window `window_bytes` measures (counted in the `LaneBudget`).
        self.counted: Memory | None = None
        self.window_bytes = 0
        self.saved = 0  # the version of the memory's latest snapshot
        #: A chat whose brain a cancel interrupted: it ends (`Agent._end_chat`) once out of the cancelled scope.
        self.interrupted: _Chat | None = None


class _Chat:
    """A chat turn under way: what its brain said so far, and how it is to end."""

    __slots__ = ("cmd", "recipients", "running", "log", "deltas", "usage", "failure")

    def __init__(self, cmd: ChatCommand, recipients: Recipients, running: RunningTurn, log: _TurnLog) -> None:
        self.cmd = cmd
        self.recipients = recipients
        self.running = running
        self.log = log
        self.deltas: list[str] = []
        self.usage: UsageItem | None = None
        self.failure: str | None = None


class Agent:
    """An actor: serializes each user's commands in arrival order, runs users concurrently.

    `submit` never blocks: it queues the command or raises `Busy`. `run` must be running
    (in a nursery) for commands to be carried out.
    """

    def __init__(self, spec: AgentSpec, journal: Journal, audience: Audience, clock: Callable[[], str] = utc_now,
                 budget: LaneBudget | None = None) -> None:
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
        self._lanes: dict[str, _Lane] = {}
        # The idle lanes (no command queued or running), least recently used first: they fell idle in
        # this order. Those idle for lane_idle_seconds are dropped by one task (`_drop_idle_lanes`, woken
        # through `_reaper`'s deadline) rather than each lane waiting for its next command under a
        # timeout of its own (a cancel scope per command); the `LaneBudget` drops them from the front too.
        self._idle_lanes: collections.OrderedDict[str, _Lane] = collections.OrderedDict()
        self._reaper: trio.CancelScope | None = None
        self._budget = budget if budget is not None else LaneBudget()
        self._budget._join(self)
        self._pending: dict[str, int] = {}  # per user: commands queued or running
        self._per_origin: dict[Outbox, int] = {}  # per connection: commands queued or running
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._chats: dict[str, int] = {}  # per user: chats queued or running
        self._running: dict[str, RunningTurn] = {}  # per user: the turn whose brain is running

    # -- the outside -------------------------------------------------------------------

    def submit(self, command: AgentCommand) -> None:
        """Queue `command` behind the same user's earlier ones, or raise `Busy`."""
        pending = self._pending.get(command.user, 0)
        if self._in_flight >= self.spec.mailbox_size and pending:  # a user with nothing queued always gets a turn
            raise Busy(f"Agent '{self.agent_id}' is busy ({self.spec.mailbox_size} commands queued); try again shortly")
        if pending >= self.spec.lane_size:
            raise Busy(f"Agent '{self.agent_id}' has {self.spec.lane_size} of your commands queued; try again shortly")
        from_origin = self._per_origin.get(command.origin, 0)
        if from_origin >= self.spec.connection_size:
            raise Busy(f"Agent '{self.agent_id}' has {self.spec.connection_size} commands of this connection "
                       "queued; wait for their answers")
        is_chat = isinstance(command, ChatCommand)
        if is_chat and self.spec.on_busy == "reject" and self._chats.get(command.user):
            raise Busy(f"Agent '{self.agent_id}' is still answering your previous message; wait for its "
                       "agent_done (or cancel it) and send again")
        self._route(command)
        self._pending[command.user] = pending + 1
        self._per_origin[command.origin] = from_origin + 1
        self._in_flight += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        if is_chat:
            self._chats[command.user] = self._chats.get(command.user, 0) + 1
            running = self._running.get(command.user)
            if self.spec.on_busy == "interrupt" and running is not None:
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
        running = self._running.get(user)
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
            for running in self._running.values():
                if running.origin is origin:
                    running.scope.cancel()

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
            nursery.start_soon(self._drop_idle_lanes)
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
        lane = self._lanes.get(command.user)
        if lane is None:
            send, receive = trio.open_memory_channel[AgentCommand](math.inf)  # bounded by submit
            lane = self._lanes[command.user] = _Lane(send, receive)
            nursery.start_soon(self._run_lane, command.user, lane)
            lane.send.send_nowait(command)
            budget = self._budget
            budget.lanes += 1
            if budget.lanes > budget.max_lanes:
                budget._enforce()
            return
        if lane.idle:  # busy from now
            lane.idle = False
            del self._idle_lanes[command.user]
        lane.send.send_nowait(command)

    # -- lanes ---------------------------------------------------------------------------

    def _finished(self, command: AgentCommand) -> None:
        user, origin = command.user, command.origin
        left = self._pending[user] - 1
        if left:
            self._pending[user] = left
        else:
            del self._pending[user]
            lane = self._lanes.get(user)
            if lane is not None:  # idle from now: dropped lane_idle_seconds later unless used again
                budget = self._budget
                memory = lane.memory
                if memory is not lane.counted:  # the budget counts its window as it is now
                    size = _window_bytes(lane.counted, lane.window_bytes, memory)
                    budget.window_bytes += size - lane.window_bytes
                    lane.window_bytes, lane.counted = size, memory
                lane.idle_since = trio.current_time()
                lane.idle = True
                idle_lanes = self._idle_lanes
                idle_lanes[user] = lane
                # The reaper sleeps until the first idle lane is due (or earlier): this one, if it is the only one.
                if len(idle_lanes) == 1 and self._reaper is not None:
                    self._reaper.deadline = lane.idle_since + self.spec.lane_idle_seconds
                if budget.window_bytes > budget.max_window_bytes or budget.lanes > budget.max_lanes:
                    budget._enforce()
        left = self._per_origin[origin] - 1
        if left:
            self._per_origin[origin] = left
        else:
            del self._per_origin[origin]
        if isinstance(command, ChatCommand):
            left = self._chats[user] - 1
            if left:
                self._chats[user] = left
            else:
                del self._chats[user]
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def _run_lane(self, user: str, lane: _Lane) -> None:
        """Carry out `user`'s commands in order until `_drop_idle_lanes` closes the lane.

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
                        lane.memory = await self._end_chat(lane.memory, chat)
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

    async def _serve_lane(self, user: str, lane: _Lane, scope: trio.CancelScope) -> None:
        """Carry out the lane's commands until it is closed (returns) or a chat is interrupted
        (`Cancelled`, with the chat in `lane.interrupted`: it is not finished yet)."""
        window = self.spec.short_term_window
        async for command in lane.receive:  # until `_drop_idle_lanes` closes it
            try:
                memory = lane.memory
                if memory is None:
                    restored: tuple[Memory, int] = await self._journal.read(
                        lambda log: log.restore(self.agent_id, user, window=window))
                    memory, folded = restored
                    lane.memory, lane.saved = memory, memory.version - folded
                if type(command) is ChatCommand:
                    lane.memory = await self._chat(lane, command, scope)
                else:
                    lane.memory = await self._carry_out(memory, command)
                await self._snapshot_if_due(lane)
            except Exception:
                self._lane_failed(lane, command, "command")
            finally:
                if lane.interrupted is None:  # an interrupted chat is finished once it has ended
                    self._finished(command)

    def _lane_failed(self, lane: _Lane, command: AgentCommand, what: str) -> None:
        """`command` failed in `lane` (logged with its stack): the lane lives on, its memory rebuilt from the log."""
        # %r: the user id is the client's (escaped as transport.protocol.shown escapes it; its length is capped by the protocol)
        logger.exception("agent %s: %s for user %r failed", self.agent_id, what, command.user)
        lane.memory = None
        self._fail(command, "agent_error", "The agent failed while handling this message")

    async def _snapshot_if_due(self, lane: _Lane) -> None:
        memory = lane.memory
        if memory is not None and memory.version - lane.saved >= SNAPSHOT_EVERY:
            await self._journal.save_snapshot(memory)
            lane.saved = memory.version

    def _drop_lane(self, user: str, lane: _Lane) -> None:
        """Drop the idle `lane` (its memory is rebuilt from the log on next use): close its queue, which ends its task."""
        del self._idle_lanes[user]
        del self._lanes[user]
        lane.idle = False
        lane.send.close()
        budget = self._budget
        budget.lanes -= 1
        budget.window_bytes -= lane.window_bytes

    async def _drop_idle_lanes(self) -> None:
        """Drop each lane idle for `lane_idle_seconds`. Sleeps until the next lane is due: the lanes
        fell idle in the order of `_idle_lanes`, so the first is the first due."""
        idle = self.spec.lane_idle_seconds
        lanes = self._idle_lanes
        while True:
            now = trio.current_time()
            deadline = math.inf
            while lanes:
                user, lane = next(iter(lanes.items()))
                due = lane.idle_since + idle
                if due > now:
                    deadline = due
                    break
                self._drop_lane(user, lane)
            self._reaper = trio.CancelScope(deadline=deadline)
            with self._reaper:
                await trio.sleep_forever()

    def _fail(self, command: AgentCommand, code: str, message: str) -> None:
        recipients = self._recipients(command)
        recipients.deliver(FailedOutput(self.agent_id, code, message, command.request_id))
        if isinstance(command, ChatCommand):
            recipients.deliver(TurnDoneOutput(self.agent_id, command.request_id))

    def _recipients(self, command: AgentCommand) -> Recipients:
        if isinstance(command, (SearchCommand, ResumeCommand)):
            return Recipients(self._audience, self.agent_id, command.user, command.origin, [])
        return self._audience.recipients(self.agent_id, command.user, command.origin)

    async def _carry_out(self, memory: Memory, command: SearchCommand | ClearCommand | ResumeCommand) -> Memory:
        """Carry out a command other than a chat (`_chat`)."""
        match command:
            case SearchCommand():
                origin = command.origin
                if not (is_live(origin) and origin.gone):  # else nobody is left to read the results
                    await self._search(memory, command)
                return memory
            case ResumeCommand():
                await self._resume(command)
                return memory
            case ClearCommand():
                return await self._clear(memory, command)
            case _:
                assert_never(command)

    async def _append(self, recipients: Recipients, events: list) -> list[Recorded]:
        """Append `events`; once they are committed, tell tail subscribers the user's messages among them."""
        recorded = await self._journal.append(events)
        for rec in recorded:
            if isinstance(rec.event, UserSaid):
                recipients.deliver_to_tails(UserMessageOutput(self.agent_id, rec.event.content, rec.seq, rec.event.request_id))
        return recorded

    async def _chat(self, lane: _Lane, cmd: ChatCommand, scope: trio.CancelScope) -> Memory:
        """Carry out a chat turn in `lane` (whose cancel scope is `scope`); returns the memory after it.

        A cancel (of `scope`) stops the brain: then this raises `Cancelled` with the chat in
        `lane.interrupted`, and `_run_lane` ends it once out of the cancelled scope."""
        memory = lane.memory
        assert memory is not None
        agent_id, rid = self.agent_id, cmd.request_id
        recipients = self._recipients(cmd)
        recipients.deliver(TurnStartedOutput(agent_id, rid))
        logged = None  # a retry: the turn of this command_id as the log has it
        command_id = cmd.command_id
        if command_id is not None:
            logged = await self._journal.read(lambda log: log.find_turn(agent_id, cmd.user, command_id))
            ending = logged[1] if logged is not None else None
            if ending is not None and _answered_from_log(agent_id, ending, rid, recipients):
                return memory
        running = RunningTurn(scope, rid, cmd.origin)
        origin = cmd.origin
        if self.spec.cancel_on_disconnect and is_live(origin) and origin.gone:
            scope.cancel()  # its asker left while it was queued
        # The user's message is logged once, even if the turn fails, is cancelled or is retried.
        said = None if logged is not None else UserSaid(agent_id, cmd.user, cmd.at, cmd.message, rid, cmd.command_id)
        chat = _Chat(cmd, recipients, running, _TurnLog(self, recipients, said))
        self._running[cmd.user] = running
        try:
            await self._think(memory, chat)
            if scope.cancel_called:
                # Cancelled after the brain's last checkpoint (or it had none): take the cancel now,
                # so that this turn too ends cancelled, outside the cancelled scope.
                await trio.lowlevel.checkpoint()
        except BaseException:  # Cancelled, or an exception group holding it (a nursery in the brain)
            if scope.cancel_called:
                lane.interrupted = chat
            raise
        finally:
            if self._running.get(cmd.user) is running:
                del self._running[cmd.user]
        return await self._end_chat(memory, chat)

    async def _think(self, memory: Memory, chat: _Chat) -> None:
        """Run the brain on `chat`: deliver its chunks and tool frames as they come, log its tool
        calls; its failure (never raised, but for cancellation) goes to `chat.failure`."""
        cmd, recipients, turn_log = chat.cmd, chat.recipients, chat.log
        agent_id, rid = self.agent_id, cmd.request_id
        brain = self.spec.brain
        try:
            recalled: Sequence[Hit] = ()
            if brain.recall and memory.long_term_count:
                recalled = await self._journal.read(
                    lambda log: log.search(agent_id, cmd.user, cmd.message, brain.recall)
                )
            tools = getattr(brain, "tools", ())
            # A brain without tools gets the agent's empty toolbox (it only ever answers "no such tool").
            toolbox = Toolbox(tools, ToolContext(
                agent_id, cmd.user, _TurnMemory(self, cmd.user, rid, turn_log))) if tools else _NO_TOOLS
            turn = Turn(agent_id, cmd.user, cmd.message, memory, recalled, toolbox)
            async with aclosing(brain.reply(turn)) as items:
                async for item in items:
                    if isinstance(item, str):
                        if item:
                            chat.deltas.append(item)
                            recipients.deliver(TurnChunkOutput(agent_id, item, rid))
                    elif isinstance(item, ToolCallItem):
                        await turn_log.append([ToolCalled(
                            agent_id, cmd.user, self._clock(), item.call_id, item.tool, item.arguments, rid)])
                        recipients.deliver(ToolCallOutput(agent_id, item.call_id, item.tool, item.arguments, rid))
                    elif isinstance(item, ToolResultItem):
                        await turn_log.append([ToolReturned(
                            agent_id, cmd.user, self._clock(), item.call_id, item.tool, item.result,
                            item.error, rid)])
                        recipients.deliver(ToolResultOutput(
                            agent_id, item.call_id, item.tool, item.result, item.error, rid))
                    elif isinstance(item, UsageItem):
                        chat.usage = item
            if not chat.deltas:
                chat.failure = "The agent gave an empty answer"
        except BrainError as exc:
            chat.failure = str(exc) or "The agent could not answer"
        except Exception as exc:  # its kind and stack, not its text: that may quote a header (a key) or a URL
            logger.error("agent %s: brain failed: %s (message withheld)\n%s", agent_id, type(exc).__name__,
                         "".join(traceback.format_tb(exc.__traceback__)).rstrip())
            chat.failure = "The agent failed while answering"

    async def _end_chat(self, memory: Memory, chat: _Chat) -> Memory:
        """Log how `chat` ended (answered, failed or cancelled), tell its recipients; the memory after it.

        The recipients hold what the turn delivered in this step (from a brain that answered at once:
        the `agent_thinking` and every chunk) while the ending commits, so that it goes out with the
        ending's frames in one socket write instead of two. What earlier steps delivered has gone
        already: only the brain's last burst waits, and for no longer than the ending's own frames. (A
        connection that also hears another lane, of another agent, may meanwhile have that lane's
        frames wait too: one commit at most, as every release lets the queue go; see `Outbox`.)
        """
        cmd, recipients, turn_log, running = chat.cmd, chat.recipients, chat.log, chat.running
        agent_id, rid = self.agent_id, cmd.request_id
        partial = "".join(chat.deltas)
        held = recipients.hold()
        try:
            if running.scope.cancel_called:  # accepted cancels are answered so even if the brain finished meanwhile
                await turn_log.append([TurnEnded(agent_id, cmd.user, self._clock(), CANCELLED, partial, "", rid,
                                                 cmd.command_id)])
                for output in (TurnCancelledOutput(agent_id, partial, rid), TurnDoneOutput(agent_id, rid)):
                    recipients.deliver(output, also=running.cancellers)
            elif chat.failure is not None:
                await turn_log.append([TurnEnded(agent_id, cmd.user, self._clock(), FAILED, partial, chat.failure,
                                                 rid, cmd.command_id)])
                recipients.deliver(FailedOutput(agent_id, "brain_error", chat.failure, rid))
                recipients.deliver(TurnDoneOutput(agent_id, rid))
            else:
                answer = AgentAnswered(agent_id, cmd.user, self._clock(), partial, rid, cmd.command_id)
                (answer_rec,) = await turn_log.append([answer])
                recipients.deliver(TurnResponseOutput(agent_id, answer.content, answer_rec.seq, rid, chat.usage))
                recipients.deliver(TurnDoneOutput(agent_id, rid))
        finally:
            recipients.release(held)
        return fold_all(memory, turn_log.recorded)

    async def _search(self, memory: Memory, cmd: SearchCommand) -> None:
        since = 0 if cmd.use_long_term else memory.short_term_since
        hits = await self._journal.read(
            lambda log: log.search(self.agent_id, cmd.user, cmd.query, cmd.limit, since_seq=since)
        )
        window_start = memory.short_term_since
        found = [Found(h, "short_term" if h.seq >= window_start else "long_term") for h in hits]
        cmd.origin.deliver(SearchResultsOutput(self.agent_id, cmd.query, found, cmd.request_id))

    async def _clear(self, memory: Memory, cmd: ClearCommand) -> Memory:
        (rec,) = await self._journal.append([UserClearedMemory(self.agent_id, cmd.user, cmd.at, cmd.long_term, cmd.request_id)])
        forgotten = memory.long_term_count if cmd.long_term else 0
        self._recipients(cmd).deliver(MemoryClearedOutput(self.agent_id, cmd.long_term, forgotten, rec.seq, cmd.request_id))
        return fold(memory, rec)


    async def _resume(self, cmd: ResumeCommand) -> None:
        """Deliver to the origin `ResumedOutput`, then the (agent, user)'s logged events after
        `cmd.after_seq` in seq order, then make its held subscription a tail.

        This runs in the user's lane, and the lane is the only writer of the user's events: until
        it returns, nothing of the user is committed, so the backlog meets the live stream with
        no gap and no duplicate. The backlog is read BACKLOG_PAGE events at a time on the
        journal's readers, and before each output it waits for room in the origin's queue (a
        `LiveOutbox`), so neither the lane nor the connection holds the whole history.

        The backlog stops as soon as the subscription is dropped (an unsubscribe, a switch of the
        connection's user, its end): nothing of it is delivered after that, wherever it was.
        """
        agent_id, user, origin = self.agent_id, cmd.user, cmd.origin
        audience = self._audience
        if not audience.subscribed(agent_id, user, origin):
            return  # withdrawn (unsubscribed, switched user, disconnected) before it started
        room = origin.room if is_live(origin) else None
        memory: Memory | None = None  # as of the previous event; read only once a long-term clear needs it
        window = self.spec.short_term_window
        backlog = audience.backlog(agent_id, user, origin)
        try:
            origin.deliver(ResumedOutput(agent_id, cmd.after_seq, cmd.request_id))
            after = cmd.after_seq
            while True:
                page = await self._journal.read(lambda log: _read_page(log, agent_id, user, after))  # awaited at once
                for rec in page:
                    event = rec.event
                    if isinstance(event, UserClearedMemory) and event.long_term and memory is None:
                        before = rec.seq - 1
                        memory = await self._journal.read(  # awaited at once: `before` is this event's
                            lambda log: log.memory(agent_id, user, window=window, until_seq=before)
                        )
                    outputs = _replayed(agent_id, rec, memory)
                    if memory is not None:
                        memory = fold(memory, rec)
                    for output in outputs:
                        if room is not None:
                            await room()
                        if backlog.withdrawn:  # checked after every wait: the rest is not wanted
                            return
                        origin.deliver(output)
                if len(page) < BACKLOG_PAGE or backlog.withdrawn:
                    break
                after = page[-1].seq
        except BaseException:
            audience.release(agent_id, user, origin)  # no live stream after an incomplete backlog
            raise
        finally:
            audience.end_backlog(agent_id, user, origin, backlog)
        if not backlog.withdrawn:
            audience.tail(agent_id, user, origin)


def _answered_from_log(agent_id: str, ending: Recorded, rid: str | None, recipients: Recipients) -> bool:
    """Answer a retried chat from how its logged turn ended, if that settles it: an answer is given
    again (same seq), a cancellation again (`TurnCancelledOutput`, never re-run: that would pay for the
    answer the user stopped). False for a failed turn: that one is run again."""
    event = ending.event
    if isinstance(event, AgentAnswered):
        recipients.deliver(TurnChunkOutput(agent_id, event.content, rid))
        recipients.deliver(TurnResponseOutput(agent_id, event.content, ending.seq, rid))
    elif isinstance(event, TurnEnded) and event.outcome == CANCELLED:
        recipients.deliver(TurnCancelledOutput(agent_id, event.partial, rid))
    else:
        return False
    recipients.deliver(TurnDoneOutput(agent_id, rid))
    return True


def _read_page(log: Recorder, agent_id: str, user: str, after_seq: int) -> list[Recorded]:
    """Up to BACKLOG_PAGE events of (agent_id, user) after `after_seq`; the read ends with the call."""
    return list(log.read(agent_id=agent_id, user=user, after_seq=after_seq, limit=BACKLOG_PAGE))


def _replayed(agent_id: str, rec: Recorded, memory: Memory | None) -> tuple[Output, ...]:
    """The outputs that replay one logged event in a backlog, as the live turn's frames carried it.

    A user message, an answer, a clear, a tool call or result, and a turn that ended without an answer
    (`TurnCancelledOutput`, or `FailedOutput` `brain_error`, then `TurnDoneOutput`). A remembered fact gives
    none: live, a client saw it as the `remember` tool's call and result, which are replayed from their
    own events (docs/protocol.md). A message whose text a later long-term clear erased gives none (the
    clear itself is replayed); a tool call's arguments, a result or a partial answer it erased are
    replayed empty. `memory` is the memory before `rec`, when known (a long-term clear's `forgotten`)."""
    event, rid = rec.event, rec.event.request_id
    match event:
        case UserSaid():
            return (UserMessageOutput(agent_id, event.content, rec.seq, rid),) if event.content else ()
        case AgentAnswered():
            return (TurnResponseOutput(agent_id, event.content, rec.seq, rid),) if event.content else ()
        case FactRemembered():
            return ()
        case UserClearedMemory():
            forgotten = memory.long_term_count if event.long_term and memory is not None else 0
            return (MemoryClearedOutput(agent_id=agent_id, long_term=event.long_term, forgotten=forgotten,
                                        seq=rec.seq, request_id=rid),)
        case ToolCalled():
            return (ToolCallOutput(agent_id, event.call_id, event.tool, event.arguments, rid),)
        case ToolReturned():
            return (ToolResultOutput(agent_id, event.call_id, event.tool, event.result, event.error, rid),)
        case TurnEnded():
            if event.outcome == CANCELLED:
                return TurnCancelledOutput(agent_id, event.partial, rid), TurnDoneOutput(agent_id, rid)
            return (FailedOutput(agent_id, "brain_error", event.reason or "The agent could not answer", rid),
                    TurnDoneOutput(agent_id, rid))
        case _:
            assert_never(event)


class Agents(Mapping[str, Agent]):
    """The configured agents by id, run together in one nursery."""

    def __init__(self, specs: Iterable[AgentSpec], journal: Journal, audience: Audience, clock: Callable[[], str] = utc_now,
                 budget: LaneBudget | None = None) -> None:
        #: The bounds on resident lanes, shared by all the agents.
        self.budget = budget if budget is not None else LaneBudget()
        self._agents = {s.agent_id: Agent(s, journal, audience, clock, self.budget) for s in specs}

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
