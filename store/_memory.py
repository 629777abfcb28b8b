"""Per-(agent, user) memory as a projection of the event log: `fold(memory, recorded) -> memory`.

Pure functions over immutable records. Must not import trio, `actors`, `transport` or sqlite.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable

from attrs import evolve, frozen

from ._events import AgentMessage, MemoryCleared, Recorded, UserMessage

DEFAULT_WINDOW = 20


@frozen
class Message:
    """One remembered message."""

    seq: int
    role: str  # "user" or "assistant"
    content: str
    at: str


@frozen
class Clear:
    """One clear of memory, as replay shows it."""

    seq: int
    at: str
    long_term: bool


@frozen
class Memory:
    """What an agent remembers about one user, as of event `last_seq`.

    `short_term` is the last `window` messages since the last clear of any kind.
    Long-term memory is every message with a sequence number above `long_term_since`
    (the last long-term clear, 0 if none); there are `long_term_count` of them. The
    messages themselves stay in the log and its search index, not in this record.
    """

    agent_id: str
    user: str
    window: int = DEFAULT_WINDOW
    short_term: tuple[Message, ...] = ()
    long_term_since: int = 0
    long_term_count: int = 0
    clears: tuple[Clear, ...] = ()
    last_seq: int = 0

    @property
    def short_term_since(self) -> int:
        """Lowest sequence number that short-term search may return (0 if the window is empty)."""
        return self.short_term[0].seq if self.short_term else self.last_seq + 1


def fold(memory: Memory, recorded: Recorded) -> Memory:
    """Apply one recorded event of this (agent, user) to `memory`; events of others are ignored."""
    event = recorded.event
    if event.agent_id != memory.agent_id or event.user != memory.user:
        return memory
    if isinstance(event, (UserMessage, AgentMessage)):
        message = Message(recorded.seq, event.role, event.content, event.at)
        window = memory.short_term + (message,)
        if len(window) > memory.window:
            window = window[len(window) - memory.window:]
        return evolve(
            memory,
            short_term=window,
            long_term_count=memory.long_term_count + 1,
            last_seq=recorded.seq,
        )
    if isinstance(event, MemoryCleared):
        clear = Clear(recorded.seq, event.at, event.long_term)
        if event.long_term:
            return evolve(
                memory,
                short_term=(),
                long_term_since=recorded.seq,
                long_term_count=0,
                clears=memory.clears + (clear,),
                last_seq=recorded.seq,
            )
        return evolve(memory, short_term=(), clears=memory.clears + (clear,), last_seq=recorded.seq)
    raise TypeError(f"fold: not an event: {event!r}")


def rebuild(agent_id: str, user: str, events: Iterable[Recorded], window: int = DEFAULT_WINDOW) -> Memory:
    """The memory of (agent_id, user) after `events`, folded from nothing."""
    return functools.reduce(fold, events, Memory(agent_id, user, window))
