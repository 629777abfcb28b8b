"""What `agentcast replay` shows: memory at a point in time (`Cut`), a turn's activity and the clears, the
raw events, and the report the command prints (`replay` -> `ReplayReport`; the command line only formats it).

Everything here only reads, through `RecorderInspection`: meant for a log opened read-only, possibly
while a server appends to it. Must not import trio, `actors` or `transport`.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

import attrs
from attrs import frozen

from ._events import (
    ACTIVITY_TYPES,
    ROLE_OF_TYPE,
    Recorded,
    RememberedMessage,
    TurnActivity,
    UndecodableEvent,
    UserClearedMemory,
    event_from_row,
    is_redacted,
)
from ._memory import DEFAULT_WINDOW, Clear, Memory, Message, fold_all
from ._recorder import RecorderInspection

# -- point in time ---------------------------------------------------------------------------


def parse_instant(text: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime; raises `ValueError` with a message for a person.

    Accepts `Z` or a numeric offset (`+02:00`); a time without either is taken as UTC, like
    the log's own timestamps. A date alone means its midnight.
    """
    try:
        instant = datetime.fromisoformat(text.strip())
    except (ValueError, TypeError):
        raise ValueError(
            f"not an ISO 8601 time: {text!r} (expected e.g. 2026-11-29T02:21:31.747Z or 2026-11-29T03:21:31+01:00)"
        ) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=timezone.utc)
    return instant.astimezone(timezone.utc)


def _instant_of(seq: int, at: str) -> datetime:
    try:
        return parse_instant(at)
    except ValueError:
        raise UndecodableEvent(f"event {seq} has an unreadable time {at!r}") from None


@frozen
class Cut:
    """A point in the log: events with seq <= `until_seq`, or with `at` <= `until_time` (a UTC instant).

    With neither, every event. With `until_time`, events are chosen by their own timestamps,
    compared as instants (so `Z` and `+01:00` forms compare correctly).
    """

    until_seq: int | None = None
    until_time: datetime | None = None

    def __attrs_post_init__(self) -> None:
        if self.until_seq is not None and self.until_seq < 0:
            raise ValueError(f"a sequence number is never negative (got {self.until_seq})")
        if self.until_time is not None and self.until_time.tzinfo is None:
            raise ValueError("until_time must be an aware datetime")
        if self.until_seq is not None and self.until_time is not None:
            raise ValueError("a cut is by sequence number or by time, not both")

    @property
    def everything(self) -> bool:
        return self.until_seq is None and self.until_time is None

    def admits(self, recorded: Recorded) -> bool:
        if self.until_seq is not None and recorded.seq > self.until_seq:
            return False
        if self.until_time is not None and _instant_of(recorded.seq, recorded.event.at) > self.until_time:
            return False
        return True


def memory_at(
    log: RecorderInspection, agent_id: str, user: str, *, window: int = DEFAULT_WINDOW, cut: Cut = Cut()
) -> tuple[Memory, list[Message], frozenset[int]]:
    """(agent_id, user)'s memory as of `cut`; its long-term messages as of `cut`, in seq order; and
    the seqs of those messages (short- or long-term) whose text a later long-term clear erased.

    The log keeps every event, but a long-term clear redacts the text of the messages it clears,
    so a point before such a clear shows those messages with empty content. Call inside
    `log.snapshot()` to read several streams as of one moment.
    """
    if cut.until_time is None:  # a prefix of the log: the recorder's own rebuild, then the long-term messages
        memory = log.memory(agent_id, user, window=window, until_seq=cut.until_seq)
        events = list(log.read(agent_id=agent_id, user=user, after_seq=memory.long_term_since, until_seq=cut.until_seq))
    else:
        events = [r for r in log.read(agent_id=agent_id, user=user) if cut.admits(r)]
        memory = fold_all(Memory(agent_id, user, window), events)
    long_term = [
        Message(r.seq, r.event.role, r.event.content, r.event.at)
        for r in events
        if r.seq > memory.long_term_since and isinstance(r.event, RememberedMessage)
    ]
    forgotten: frozenset[int] = frozenset()
    if not cut.everything and memory.last_seq:  # without a cut, no remembered message can have been erased
        forgotten = frozenset(
            row.seq for row in log.rows(agent_id=agent_id, user=user, until_seq=memory.last_seq, types=ROLE_OF_TYPE)
            if is_redacted(row.type, row.payload)
        )
    return memory, long_term, forgotten


def last_seq_at(log: RecorderInspection, cut: Cut = Cut()) -> int:
    """The highest sequence number in the log that `cut` admits (0 if none)."""
    if cut.until_time is None:
        if cut.until_seq is None:
            return log.last_seq()
        newest = next(log.rows(until_seq=cut.until_seq, descending=True, limit=1), None)
        return 0 if newest is None else newest.seq
    for row in log.rows(descending=True):
        if _instant_of(row.seq, row.at) <= cut.until_time:
            return row.seq
    return 0


def _decoded(log: RecorderInspection, agent_id: str, user: str, cut: Cut, types: frozenset[str]) -> list[Recorded]:
    """The events of these `types` of (agent_id, user) as of `cut`, in seq order."""
    rows = log.rows(agent_id=agent_id, user=user, until_seq=cut.until_seq, types=types)
    recorded = [Recorded(row.seq, event_from_row(row.type, row.agent_id, row.user, row.at, row.payload)) for row in rows]
    return [r for r in recorded if cut.admits(r)]


def activity_at(log: RecorderInspection, agent_id: str, user: str, *, cut: Cut = Cut()) -> list[Recorded]:
    """What the turns of (agent_id, user) did besides answering, as of `cut`, in seq order: the tool
    calls and their results, and the turns that ended cancelled or failed (with their partial answer).

    These events are logged but are not memory; replaying them never calls a model or a tool.
    """
    return _decoded(log, agent_id, user, cut, ACTIVITY_TYPES)


def clears_at(log: RecorderInspection, agent_id: str, user: str, *, cut: Cut = Cut()) -> list[Clear]:
    """Every clear of (agent_id, user)'s memory as of `cut`, in seq order, read from the log (the
    memory itself keeps only the last of each kind)."""
    clears = []
    for r in _decoded(log, agent_id, user, cut, frozenset({UserClearedMemory.TYPE})):
        assert isinstance(r.event, UserClearedMemory)
        clears.append(Clear(r.seq, r.event.at, r.event.long_term))
    return clears


# -- the report `agentcast replay` prints -------------------------------------------------------


@frozen
class StreamReplay:
    """One (agent, user)'s memory as of a cut, with what `agentcast replay` shows beside it."""

    memory: Memory
    #: its long-term messages as of the cut, in seq order
    long_term: tuple[Message, ...]
    #: the seqs of those messages whose text a later long-term clear erased
    forgotten: frozenset[int]
    #: its turn activity as of the cut (tool calls and results, ended turns), in seq order
    activity: tuple[Recorded, ...]
    #: every clear as of the cut, in seq order
    clears: tuple[Clear, ...]

    def as_json(self) -> dict:
        m = self.memory
        return {
            "agent_id": m.agent_id,
            "user": m.user,
            "window": m.window,
            "short_term": [self.message_json(message) for message in m.short_term],
            "long_term": [self.message_json(message) for message in self.long_term],
            "clears": [{"seq": c.seq, "timestamp": c.at, "long_term": c.long_term} for c in self.clears],
            "last_seq": m.last_seq,
            "activity": [_activity_json(r) for r in self.activity],
        }

    def message_json(self, m: Message) -> dict:
        out: dict[str, object] = {"seq": m.seq, "role": m.role, "content": m.content, "timestamp": m.at}
        if m.seq in self.forgotten:
            out["forgotten"] = True  # its text was erased by a later long-term clear
        return out

    def activity_lines(self) -> list[tuple[int, str, str, str]]:
        """The activity as `agentcast replay` shows it: (seq, at, label, text) per event (`TurnActivity.shown`)."""
        lines = []
        for r in self.activity:
            assert isinstance(r.event, TurnActivity)
            label, text = r.event.shown()
            lines.append((r.seq, r.event.at, label, text))
        return lines


def _activity_json(recorded: Recorded) -> dict:
    """A tool call or result, or an ended turn, as replay's JSON shows it (`event_fields` without the stream)."""
    fields = event_fields(recorded)
    del fields["agent_id"], fields["user"]
    return fields


@frozen
class ReplayReport:
    """What `agentcast replay` shows: every (agent, user)'s memory as of `cut` (`streams`), the log's last
    seq then (`last_seq`) and now (`log_last_seq`). The command prints `as_json()` or formats it as text."""

    path: str
    cut: Cut
    #: the --until-time as it was written, shown back
    until_time_text: str | None
    last_seq: int
    log_last_seq: int
    streams: tuple[StreamReplay, ...]

    def as_json(self) -> dict:
        out: dict[str, object] = {"db": self.path, "last_seq": self.last_seq}
        if self.cut.until_seq is not None:
            out.update(until_seq=self.cut.until_seq, log_last_seq=self.log_last_seq)
        elif self.cut.until_time is not None:
            out.update(until_time=self.until_time_text, log_last_seq=self.log_last_seq)
        out["memories"] = [s.as_json() for s in self.streams]
        return out


def replay(
    log: RecorderInspection,
    *,
    cut: Cut = Cut(),
    windows: Mapping[str, int] | None = None,
    agent_id: str | None = None,
    user: str | None = None,
    until_time_text: str | None = None,
) -> ReplayReport:
    """Every (agent, user)'s memory as of `cut` (of `agent_id` and `user` only, if given), read as of one
    moment. `windows` gives an agent's short-term window size (DEFAULT_WINDOW for the others); a stream
    with no event yet at the cut is left out."""
    windows = windows or {}
    streams = []
    with log.snapshot():
        for agent, usr in log.streams():
            if (agent_id is not None and agent != agent_id) or (user is not None and usr != user):
                continue
            memory, long_term, forgotten = memory_at(log, agent, usr, window=windows.get(agent, DEFAULT_WINDOW), cut=cut)
            if memory.last_seq == 0:  # nothing of this (agent, user) yet at the cut
                continue
            activity = activity_at(log, agent, usr, cut=cut)
            clears = clears_at(log, agent, usr, cut=cut)
            streams.append(StreamReplay(memory, tuple(long_term), forgotten, tuple(activity), tuple(clears)))
        last_seq = last_seq_at(log, cut)
        log_last_seq = log.last_seq() if not cut.everything else last_seq
    return ReplayReport(log.path, cut, until_time_text, last_seq, log_last_seq, tuple(streams))


# -- the raw events --------------------------------------------------------------------------


def events_after(
    log: RecorderInspection,
    after_seq: int = 0,
    *,
    agent_id: str | None = None,
    user: str | None = None,
    until_seq: int | None = None,
    limit: int = 1000,
) -> list[dict]:
    """Up to `limit` events with `after_seq` < seq <= `until_seq` (of one agent and/or user), in seq order, as JSON
    objects (see `event_fields`); an event whose text a long-term clear erased has `"redacted": true`.

    All rows are fetched at once, so outside `snapshot()` each call is one short read
    transaction and sees everything committed before it. An event this version cannot read ends
    the list early; when it is the first, raises `UndecodableEvent` naming its seq.
    """
    rows = list(log.rows(agent_id=agent_id, user=user, after_seq=after_seq, until_seq=until_seq, limit=limit))
    out: list[dict] = []
    for seq, type_, agent, usr, at, payload in rows:
        try:
            fields = event_fields(Recorded(seq, event_from_row(type_, agent, usr, at, payload)))
        except UndecodableEvent as exc:
            if out:  # return what comes before it; the next call raises
                break
            raise UndecodableEvent(f"event {seq}: {exc} (`agentcast replay verify` checks the whole log)") from None
        if is_redacted(type_, payload):
            fields["redacted"] = True
        out.append(fields)
    return out


_HEAD = ("agent_id", "user", "at")


def event_fields(recorded: Recorded) -> dict:
    """One event as a JSON object: seq, type, agent_id, user, at, then the event's own fields
    (content or long_term, request_id, and any other field the event has), None as null."""
    event = recorded.event
    fields: dict[str, object] = {"seq": recorded.seq, "type": event.TYPE}
    fields.update((name, getattr(event, name)) for name in _HEAD)
    fields.update((a.name, getattr(event, a.name)) for a in attrs.fields(type(event)) if a.name not in _HEAD)
    return fields
