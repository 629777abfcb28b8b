"""The lanes of an agent: one per user in memory (`Lane`: its queue of commands, its memory, its window's
size), which of them are idle and when they are dropped (`Lanes`), and the bound on resident lanes of
all a server's agents (`LaneBudget`).

Owns a lane's state and its residency: it becomes busy and idle, idle lanes are dropped after
`lane_idle_seconds` or when the budget is passed (least recently used first), a dropped lane's task ends
as its queue closes. What a lane carries out is the agent's (`Agent._serve_lane`). Imports trio and the
store's `Memory`; must not import `transport`.
"""
from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING

import trio

from ..store import Memory

from ._messages import AgentCommand

if TYPE_CHECKING:
    from ._turn import Chat

#: The defaults of `LaneBudget`: resident lanes, and UTF-8 bytes of text in their short-term windows.
DEFAULT_MAX_LANES = 10_000
DEFAULT_MAX_LANES_WINDOW_BYTES = 64 * 1024 * 1024


class Lane:
    """A user's lane: its queue of commands, its memory, and since when it has been idle (no command queued or running)."""

    __slots__ = ("send", "receive", "idle_since", "idle", "memory", "counted", "window_bytes", "saved", "interrupted")

    def __init__(self, send: trio.MemorySendChannel[AgentCommand], receive: trio.MemoryReceiveChannel[AgentCommand]) -> None:
        self.send = send
        self.receive = receive
        self.idle_since = 0.0  # trio time; meaningful while the user has no command queued or running
        self.idle = False  # the lane is in its `Lanes.idle_order`
        self.memory: Memory | None = None  # None until read from the log (and again after a failure)
        #: The memory whose short-term window `window_bytes` measures (counted in the `LaneBudget`).
        self.counted: Memory | None = None
        self.window_bytes = 0
        self.saved = 0  # the version of the memory's latest snapshot
        #: A chat whose brain a cancel interrupted: it ends (`Agent._run_lane`) once out of the cancelled scope.
        self.interrupted: Chat | None = None


class Lanes(dict[str, Lane]):
    """An agent's lanes in memory, by user, and which of them are idle, least recently used first.

    The idle lanes are kept in the order they fell idle (an `OrderedDict`: O(1) to take one out when it
    gets a command and to put it back at the end). Those idle for `idle_seconds` are dropped by one task
    (`drop_idle`, woken through its scope's deadline) rather than each lane waiting for its next command
    under a timeout of its own (a cancel scope per command); the `LaneBudget` drops them from the front too.
    """

    __slots__ = ("idle_order", "idle_seconds", "budget", "_reaper")

    def __init__(self, idle_seconds: float, budget: LaneBudget) -> None:
        super().__init__()
        self.idle_order: collections.OrderedDict[str, Lane] = collections.OrderedDict()
        self.idle_seconds = idle_seconds
        self.budget = budget
        self._reaper: trio.CancelScope | None = None
        budget.join(self)

    def start(self, user: str, lane: Lane) -> None:
        """`lane` is `user`'s, new and busy: counted in the budget (which may drop idle lanes for it)."""
        self[user] = lane
        budget = self.budget
        budget.lanes += 1
        if budget.lanes > budget.max_lanes:
            budget.enforce()

    def busy(self, user: str, lane: Lane) -> None:
        """`user`'s idle `lane` got a command."""
        lane.idle = False
        del self.idle_order[user]

    def fell_idle(self, user: str, lane: Lane) -> None:
        """`user`'s `lane` has no command queued or running any more: dropped `idle_seconds` later unless used
        again. The budget counts its window as it is now (and may drop idle lanes for it)."""
        budget = self.budget
        memory = lane.memory
        if memory is not lane.counted:
            size = window_bytes(lane.counted, lane.window_bytes, memory)
            budget.window_bytes += size - lane.window_bytes
            lane.window_bytes, lane.counted = size, memory
        lane.idle_since = trio.current_time()
        lane.idle = True
        idle_order = self.idle_order
        idle_order[user] = lane
        # The reaper sleeps until the first idle lane is due (or earlier): this one, if it is the only one.
        if len(idle_order) == 1 and self._reaper is not None:
            self._reaper.deadline = lane.idle_since + self.idle_seconds
        if budget.window_bytes > budget.max_window_bytes or budget.lanes > budget.max_lanes:
            budget.enforce()

    def drop(self, user: str, lane: Lane) -> None:
        """Drop the idle `lane` (its memory is rebuilt from the log on next use): close its queue, which ends its task."""
        del self.idle_order[user]
        del self[user]
        lane.idle = False
        lane.send.close()
        budget = self.budget
        budget.lanes -= 1
        budget.window_bytes -= lane.window_bytes

    async def drop_idle(self) -> None:
        """Drop each lane idle for `idle_seconds`, until cancelled. Sleeps until the next lane is due: the
        lanes fell idle in the order of `idle_order`, so the first is the first due."""
        idle = self.idle_seconds
        lanes = self.idle_order
        while True:
            now = trio.current_time()
            deadline = math.inf
            while lanes:
                user, lane = next(iter(lanes.items()))
                due = lane.idle_since + idle
                if due > now:
                    deadline = due
                    break
                self.drop(user, lane)
            self._reaper = trio.CancelScope(deadline=deadline)
            with self._reaper:
                await trio.sleep_forever()


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
        self._lane_sets: list[Lanes] = []

    def join(self, lanes: Lanes) -> None:
        """Count an agent's `lanes` in this budget."""
        self._lane_sets.append(lanes)

    def enforce(self) -> None:
        """Drop idle lanes, least recently used first (across agents), until within both bounds
        or no lane is idle. O(agents) per lane dropped."""
        while self.lanes > self.max_lanes or self.window_bytes > self.max_window_bytes:
            oldest: tuple[Lanes, str, Lane] | None = None
            for lanes in self._lane_sets:
                idle = lanes.idle_order
                if idle:
                    user, lane = next(iter(idle.items()))
                    if oldest is None or lane.idle_since < oldest[2].idle_since:
                        oldest = (lanes, user, lane)
            if oldest is None:
                return
            oldest[0].drop(oldest[1], oldest[2])


def window_bytes(before: Memory | None, before_bytes: int, after: Memory | None) -> int:
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
