"""Per-(agent, user) memory as a projection of the event log: `Projection`, the one fold of a stream's events.

Every reader folds with it: a lane's live turns (`fold`), a lane's start from a snapshot and the
events after it (`fold_rows`), `agentcast replay`'s point in time and `replay verify`'s rebuild.
Pure code over immutable records. Must not import trio, `actors`, `transport` or sqlite.
"""
from __future__ import annotations

import collections
import json
from collections.abc import Iterable
from typing import assert_never

from attrs import frozen

from ._events import (
    EVENT_TYPES,
    Event,
    Recorded,
    RememberedMessage,
    TurnActivity,
    UndecodableEvent,
    UserClearedMemory,
    event_from_row,
)

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


#: How the row path (`Projection.apply_row`) takes each stored type, derived from its kind: a message is
#: kept undecoded until it is known to end in the short-term window, turn activity needs no decoding at all,
#: and any other type is decoded and folded by `Projection.apply`.
_KEPT_RAW, _PASSES, _DECODED = "kept raw", "passes", "decoded"
_ROW_STEP: dict[str, str] = {
    t: _KEPT_RAW if issubclass(cls, RememberedMessage) else _PASSES if issubclass(cls, TurnActivity) else _DECODED
    for t, cls in EVENT_TYPES.items()
}

#: A stored message kept undecoded in the window: (seq, type, at, payload).
_Row = tuple[int, str, str, str]


class Projection:
    """The fold of one (agent, user)'s events into its `Memory`, starting from `memory`: events are
    applied in seq order (`apply`, or `apply_row` for a stored row), then `memory()` is the result.

    `apply` is the fold itself, one case per kind of event; `apply_row` takes a stored row and decodes
    only what the fold needs: a message only if it ends in the short-term window (so a rebuild of a long
    history costs about one row fetch per event), turn activity never, anything else always. Both give
    the memory that `apply` on the decoded events gives (tests/test_projection.py folds random logs
    through every path).
    """

    __slots__ = ("agent_id", "user", "window", "_recent", "_raw", "since", "count", "last_clears", "last_seq",
                 "version")

    def __init__(self, memory: Memory) -> None:
        self.agent_id = memory.agent_id
        self.user = memory.user
        self.window = memory.window
        #: the short-term window: its messages (and stored rows of messages, while `_raw`)
        self._recent: collections.deque[Message | _Row] = collections.deque(memory.short_term, memory.window)
        self._raw = False  # whether `_recent` may hold stored rows
        self.since = memory.long_term_since
        self.count = memory.long_term_count
        self.last_clears = memory.last_clears
        self.last_seq = memory.last_seq
        self.version = memory.version

    def apply(self, seq: int, event: Event) -> None:
        """Fold in `event`, recorded as `seq` (of this projection's (agent, user); callers check)."""
        match event:
            case RememberedMessage():
                self._remember(Message(seq, event.role, event.content, event.at))
            case UserClearedMemory():
                self._clear(Clear(seq, event.at, event.long_term))
            case TurnActivity():  # a tool call or result, an ended turn: logged, not remembered
                pass
            case _:
                assert_never(event)
        self.last_seq = seq
        self.version += 1

    def apply_row(self, seq: int, type_: str, at: str, payload: str) -> None:
        """Fold in a stored event of this (agent, user): as `apply` would, decoding only what it must."""
        step = _ROW_STEP.get(type_)
        if step is _KEPT_RAW:
            self._raw = True
            self._recent.append((seq, type_, at, payload))
            self.count += 1
        elif step is _DECODED:
            self.apply(seq, event_from_row(type_, self.agent_id, self.user, at, payload))
            return
        elif step is None:
            raise UndecodableEvent(f"unknown event type {type_!r} at seq {seq}")
        self.last_seq = seq
        self.version += 1

    def apply_rows(self, rows: Iterable[_Row]) -> None:
        """Fold in stored events (seq, type, at, payload) of this (agent, user), in seq order: what `apply_row`
        does for each, in one loop with the state in locals (a lane's start folds up to SNAPSHOT_EVERY rows,
        a rebuild without a snapshot all of its stream's)."""
        keep = self._recent.append  # a deque as long as the window: what falls out was never decoded
        step_of, kept_raw, decoded = _ROW_STEP.get, _KEPT_RAW, _DECODED
        count, last_seq, version = self.count, self.last_seq, self.version
        self._raw = True
        for row in rows:
            seq, type_ = row[0], row[1]
            step = step_of(type_)
            if step is kept_raw:
                keep(row)
                count += 1
            elif step is decoded:
                self.count, self.last_seq, self.version = count, last_seq, version
                self.apply(seq, event_from_row(type_, self.agent_id, self.user, row[2], row[3]))
                count, last_seq, version = self.count, self.last_seq, self.version
                continue
            elif step is None:
                self.count, self.last_seq, self.version = count, last_seq, version
                raise UndecodableEvent(f"unknown event type {type_!r} at seq {seq}")
            last_seq = seq
            version += 1
        self.count, self.last_seq, self.version = count, last_seq, version

    def _remember(self, message: Message | _Row) -> None:
        self._recent.append(message)
        self.count += 1

    def _clear(self, clear: Clear) -> None:
        self._recent.clear()
        self.last_clears = tuple(c for c in self.last_clears if c.long_term != clear.long_term) + (clear,)
        if clear.long_term:
            self.since, self.count = clear.seq, 0

    def memory(self) -> Memory:
        """The memory as of the events applied so far."""
        recent = self._recent
        if self._raw:
            window = tuple(item if type(item) is Message else self._decoded(item) for item in recent)
        else:
            window = tuple(recent)  # type: ignore[arg-type]  # only messages: nothing was kept raw
        return Memory(self.agent_id, self.user, self.window, window, self.since, self.count, self.last_clears,
                      self.last_seq, self.version)

    def _decoded(self, row: Message | _Row) -> Message:
        assert not isinstance(row, Message)
        seq, type_, at, payload = row
        event = event_from_row(type_, self.agent_id, self.user, at, payload)
        assert isinstance(event, RememberedMessage)
        return Message(seq, event.role, event.content, at)


def fold(memory: Memory, recorded: Recorded) -> Memory:
    """`memory` with one recorded event of its (agent, user) folded in; events of others are ignored."""
    event = recorded.event
    if event.agent_id != memory.agent_id or event.user != memory.user:
        return memory
    projection = Projection(memory)
    projection.apply(recorded.seq, event)
    return projection.memory()


def fold_all(memory: Memory, recorded: Iterable[Recorded]) -> Memory:
    """`memory` with `recorded` (in seq order) folded in, as `fold` one by one would."""
    projection = Projection(memory)
    folded = False
    for rec in recorded:
        event = rec.event
        if event.agent_id == memory.agent_id and event.user == memory.user:
            projection.apply(rec.seq, event)
            folded = True
    return projection.memory() if folded else memory


def fold_rows(memory: Memory, rows: Iterable[tuple[int, str, str, str]]) -> Memory:
    """`memory` with the stored events `rows` (seq, type, at, payload) of its (agent, user) folded in
    (`Projection.apply_row`): only the messages that end up in the short-term window are decoded."""
    projection = Projection(memory)
    projection.apply_rows(rows)
    return projection.memory()


def rebuild(agent_id: str, user: str, events: Iterable[Recorded], window: int = DEFAULT_WINDOW) -> Memory:
    """The memory of (agent_id, user) after `events`, folded from nothing."""
    return fold_all(Memory(agent_id, user, window), events)


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


