"""Brains: what an agent thinks with. The `Brain` interface, what a brain yields, and the built-in `echo` brain.

A brain is asynchronous text generation (plus tool calls through `Turn.tools`); must not import
`transport` or write to the store.
"""
from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Protocol, Union

import trio
from attrs import frozen

from ..store import Hit, Memory

if TYPE_CHECKING:
    from ._tools import Toolbox


@frozen
class Turn:
    """What a brain is given to answer one message."""

    agent_id: str
    user: str
    message: str
    #: The user's memory before this message: short-term window, long-term count.
    memory: Memory
    #: The best long-term matches for `message` (as many as the brain's `recall` asks).
    recalled: Sequence[Hit] = ()
    #: The tools this turn may run, bound to this user's memory (None: no tools).
    tools: "Toolbox | None" = None


@frozen
class ToolCallItem:
    """Yielded by a brain when the model calls a tool, BEFORE the brain runs it: the agent logs the
    call and tells the clients, then the brain goes on (runs it with `turn.tools`)."""

    call_id: str
    tool: str
    #: The model's arguments: a JSON object, or its raw text when that was not valid JSON.
    arguments: object


@frozen
class ToolResultItem:
    """Yielded by a brain once a tool call has returned `result` (any JSON value) or failed with `error`."""

    call_id: str
    tool: str
    result: object = None
    error: str | None = None


@frozen
class UsageItem:
    """Tokens the provider counted for a whole turn (all its requests); yielded at most once, last."""

    prompt_tokens: int
    completion_tokens: int


#: What a brain's `reply` yields: text deltas of the answer, tool calls and results, usage.
BrainItem = Union[str, ToolCallItem, ToolResultItem, UsageItem]


class BrainError(Exception):
    """A brain could not answer; the text is shown to the user."""


class Brain(Protocol):
    """The async interface an agent answers with.

    `reply` yields the answer as text chunks (deltas) as they are produced; the answer is
    their concatenation. A brain that runs tools also yields a `ToolCallItem` before it runs each one
    and a `ToolResultItem` after, and may yield one `UsageItem` last. `recall` is how many long-term
    matches the brain wants in `Turn`. Raise `BrainError` for a failure the user should see.
    A turn can be cancelled at any await: the brain must then stop (and close its connections).

    Optional: `settings()`, every setting as configured (for `agentcast config check`; secrets
    masked), and `startup_warnings()`, what the server should log when it starts serving the brain
    (e.g. an API key's environment variable that is not set).
    """

    recall: int

    def reply(self, turn: Turn) -> AsyncGenerator[BrainItem, None]: ...


class EchoBrain:
    """Deterministic: repeats the message and says how much it remembers, in several chunks.

    `delay` (seconds, default 0) is the time each chunk takes, to make streaming visible: chunk n comes
    n * delay after the turn began (or as soon after as the event loop gets to it).
    """

    recall = 0

    def __init__(self, delay: float = 0.0, chunks: int = 4) -> None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not (0 <= delay < 3600):
            raise ValueError("echo brain: delay must be a number of seconds from 0 to 3600")
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            raise ValueError("echo brain: chunks must be an integer >= 1")
        self.delay = delay
        self.chunks = chunks

    def settings(self) -> dict[str, object]:
        return {"delay": self.delay, "chunks": self.chunks}

    @staticmethod
    def answer(turn: Turn) -> str:
        n = turn.memory.long_term_count
        remembered = f"I remember {n} earlier message{'' if n == 1 else 's'} of our conversation."
        return f"You said: {turn.message}\n({remembered})"

    async def reply(self, turn: Turn) -> AsyncGenerator[str, None]:
        # Chunk n is due n * delay after the turn began, as from a model generating at a steady rate: a
        # chunk taken late (a busy event loop, a slow recipient) does not push the later ones back.
        start = trio.current_time()
        for n, piece in enumerate(split_chunks(self.answer(turn), self.chunks), 1):
            if self.delay:
                await sleep_until(start + n * self.delay)
            yield piece


#: How late a `sleep` may end (seconds): deadlines are rounded up to a multiple of it, so that the sleepers
#: due within the same millisecond are woken together, by one wake-up of the timer task.
TIMER_SLACK = 0.001


class _Timers:
    """The deadlines of the tasks sleeping in `sleep`, in one trio run, and the system task that wakes them.

    `trio.sleep` waits on a cancel scope of its own, which ends by being cancelled: each wake-up raises and
    catches a `Cancelled`. Here one task waits for the earliest deadline (on one cancel scope, moved when an
    earlier deadline comes) and wakes every sleeper that is due at once; deadlines fall on a grid of
    TIMER_SLACK, so many brains streaming at a steady rate cost at most one such wake-up per TIMER_SLACK
    instead of one each.
    """

    __slots__ = ("_due", "_order", "_scope")

    def __init__(self) -> None:
        #: [deadline, order, task or None once its sleep was cancelled], a heap by deadline then order.
        self._due: list[list] = []
        self._order = itertools.count()
        self._scope: trio.CancelScope | None = None  # what the waking task waits on, while it waits

    async def run(self) -> None:
        due = self._due
        while True:
            with trio.CancelScope(deadline=due[0][0] if due else math.inf) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            now = trio.current_time()
            while due and due[0][0] <= now:
                task = heapq.heappop(due)[2]
                if task is not None:
                    trio.lowlevel.reschedule(task)

    async def sleep_until(self, deadline: float) -> None:
        # (less a nanosecond: a deadline on the grid but for float rounding stays where it is)
        deadline = math.ceil(deadline / TIMER_SLACK - 1e-6) * TIMER_SLACK
        if deadline <= trio.current_time():  # due already (a chunk taken late): a checkpoint, not a wait
            await trio.lowlevel.checkpoint()
            return
        entry = [deadline, next(self._order), trio.lowlevel.current_task()]
        heapq.heappush(self._due, entry)
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

        def abort(_: object) -> trio.lowlevel.Abort:
            entry[2] = None  # dropped from the heap when it falls due
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


_TIMERS: trio.lowlevel.RunVar[_Timers] = trio.lowlevel.RunVar("agentcast_brain_timers")


async def sleep(seconds: float) -> None:
    """`trio.sleep(seconds)`, cheaper when many tasks sleep at once (see `_Timers`), and up to TIMER_SLACK
    later; cancellable the same way."""
    await sleep_until(trio.current_time() + seconds)


async def sleep_until(deadline: float) -> None:
    """`trio.sleep_until(deadline)` the way `sleep` sleeps (see `_Timers`): up to TIMER_SLACK later."""
    try:
        timers = _TIMERS.get()
    except LookupError:
        timers = _Timers()
        _TIMERS.set(timers)
        trio.lowlevel.spawn_system_task(timers.run, name="agentcast brain timers")
    await timers.sleep_until(deadline)


def split_chunks(text: str, n: int) -> list[str]:
    """`text` cut at spaces into at most `n` non-empty pieces whose concatenation is `text`."""
    size = max(1, -(-len(text) // n))
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        space = text.find(" ", end)
        end = len(text) if space == -1 or len(pieces) == n - 1 else space + 1
        pieces.append(text[start:end])
        start = end
    return pieces


#: The brains a config file can name (`brain.kind`), by name: each a class built from the brain's table.
BRAINS: dict[str, type] = {"echo": EchoBrain}
#: The settings class of the brains built from one settings object (attrs, one field per key of the
#: brain's table), by name; a brain not listed here takes its table's keys as keyword arguments.
BRAIN_SETTINGS: dict[str, type] = {}
