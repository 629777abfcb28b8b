"""Per-(agent, user) memory as a projection of the event log: `fold(memory, recorded) -> memory`.

Pure functions over immutable records. Must not import trio, `actors`, `transport` or sqlite.
"""
from __future__ import annotations

import collections
import functools
import json
from collections.abc import Iterable

from attrs import evolve, frozen

from ._events import ACTIVITY_TYPES, ROLE_OF_TYPE, MemoryCleared, Recorded, UndecodableEvent, event_from_row, is_message

DEFAULT_WINDOW = 20


@frozen
class Message:
    """One remembered message."""

    seq: int
    role: str  # "user", "assistant" or "fact" (remembered by the agent's `remember` tool)
    content: str
    at: str


@frozen
class Clear:
    """One clear of memory: its event's seq and time, and whether it cleared long-term memory too."""

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
    `last_clears` is the last clear of each kind (short-term, long-term), in seq order: at
    most two, however many clears the log holds (replay reads the whole history of clears
    from the log, `store.clears_at`), so the record stays O(window).
    """

    agent_id: str
    user: str
    window: int = DEFAULT_WINDOW
    short_term: tuple[Message, ...] = ()
    long_term_since: int = 0
    long_term_count: int = 0
    last_clears: tuple[Clear, ...] = ()
    last_seq: int = 0
    #: How many events of this (agent, user) have been folded in: the memory's version.
    version: int = 0

    @property
    def short_term_since(self) -> int:
        """Lowest sequence number that short-term search may return (0 if the window is empty)."""
        return self.short_term[0].seq if self.short_term else self.last_seq + 1


def fold(memory: Memory, recorded: Recorded) -> Memory:
    """Apply one recorded event of this (agent, user) to `memory`; events of others are ignored."""
    event = recorded.event
    if event.agent_id != memory.agent_id or event.user != memory.user:
        return memory
    if is_message(event):
        message = Message(recorded.seq, event.role, event.content, event.at)
        window = memory.short_term + (message,)
        if len(window) > memory.window:
            window = window[len(window) - memory.window:]
        m = memory  # built directly rather than with attrs.evolve: this runs once per event
        return Memory(m.agent_id, m.user, m.window, window, m.long_term_since, m.long_term_count + 1,
                      m.last_clears, recorded.seq, m.version + 1)
    if isinstance(event, MemoryCleared):
        clear = Clear(recorded.seq, event.at, event.long_term)
        last_clears = tuple(c for c in memory.last_clears if c.long_term != clear.long_term) + (clear,)
        if event.long_term:
            return evolve(
                memory,
                short_term=(),
                long_term_since=recorded.seq,
                long_term_count=0,
                last_clears=last_clears,
                last_seq=recorded.seq,
                version=memory.version + 1,
            )
        return evolve(memory, short_term=(), last_clears=last_clears, last_seq=recorded.seq, version=memory.version + 1)
    if event.TYPE in ACTIVITY_TYPES:  # a tool call or result, an ended turn: logged, not remembered
        return evolve(memory, last_seq=recorded.seq, version=memory.version + 1)
    raise TypeError(f"fold: not an event: {event!r}")


def last_of_each_kind(clears: Iterable[Clear]) -> tuple[Clear, ...]:
    """The last short-term and the last long-term clear among `clears` (given in seq order), in seq order."""
    last: dict[bool, Clear] = {}
    for clear in clears:
        last[clear.long_term] = clear
    return tuple(sorted(last.values(), key=lambda c: c.seq))


def memory_to_json(memory: Memory) -> str:
    """`memory` as JSON text (a snapshot); `memory_from_json` reads it back.

    `last_clears` is written under the key "clears", the key under which earlier versions wrote
    every clear: each version reads the other's snapshots.
    """
    return json.dumps(
        {
            "window": memory.window,
            "short_term": [[m.seq, m.role, m.content, m.at] for m in memory.short_term],
            "long_term_since": memory.long_term_since,
            "long_term_count": memory.long_term_count,
            "clears": [[c.seq, c.at, c.long_term] for c in memory.last_clears],
            "last_seq": memory.last_seq,
            "version": memory.version,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def memory_from_json(agent_id: str, user: str, text: str) -> Memory:
    """The `Memory` that `memory_to_json` wrote."""
    return read_snapshot(agent_id, user, text)[0]


def read_snapshot(agent_id: str, user: str, text: str) -> tuple[Memory, bool]:
    """The `Memory` that `memory_to_json` wrote, and whether the snapshot is worth writing anew: True
    for one written by an earlier version, which listed every clear (the memory keeps the last of each kind)."""
    d = json.loads(text)
    clears = d["clears"]
    memory = Memory(
        agent_id,
        user,
        d["window"],
        tuple(Message(*m) for m in d["short_term"]),
        d["long_term_since"],
        d["long_term_count"],
        last_of_each_kind(Clear(*c) for c in clears),
        d["last_seq"],
        d["version"],
    )
    return memory, len(clears) > len(memory.last_clears)


def fold_rows(memory: Memory, rows: Iterable[tuple[int, str, str, str]]) -> Memory:
    """`memory` with the stored events `rows` (seq, type, at, payload) of its (agent, user) folded in.

    Equal to folding the decoded events one by one with `fold` (tests/test_snapshots.py checks),
    but only the messages that end up in the short-term window are decoded: rebuilding a long
    history costs about one row fetch per event.
    """
    recent: collections.deque = collections.deque(memory.short_term, maxlen=memory.window)
    since, count = memory.long_term_since, memory.long_term_count
    last_clear = {c.long_term: c for c in memory.last_clears}  # the last clear of each kind
    last_seq, version = memory.last_seq, memory.version
    for row in rows:
        seq, type_ = row[0], row[1]
        if type_ in ROLE_OF_TYPE:
            recent.append(row)
            count += 1
        elif type_ in ACTIVITY_TYPES:
            pass
        elif type_ == "memory_cleared":
            event = event_from_row(type_, memory.agent_id, memory.user, row[2], row[3])
            last_clear[event.long_term] = Clear(seq, event.at, event.long_term)
            recent.clear()
            if event.long_term:
                since, count = seq, 0
        else:
            raise UndecodableEvent(f"unknown event type {type_!r} at seq {seq}")
        last_seq, version = seq, version + 1
    window = tuple(
        item if isinstance(item, Message) else _message(memory, item) for item in recent
    )
    last_clears = tuple(sorted(last_clear.values(), key=lambda c: c.seq))
    return Memory(memory.agent_id, memory.user, memory.window, window, since, count, last_clears, last_seq, version)


def _message(memory: Memory, row: tuple[int, str, str, str]) -> Message:
    seq, type_, at, payload = row
    event = event_from_row(type_, memory.agent_id, memory.user, at, payload)
    return Message(seq, event.role, event.content, at)


def rebuild(agent_id: str, user: str, events: Iterable[Recorded], window: int = DEFAULT_WINDOW) -> Memory:
    """The memory of (agent_id, user) after `events`, folded from nothing."""
    return functools.reduce(fold, events, Memory(agent_id, user, window))
