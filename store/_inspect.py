"""Read-side tools over an event log: memory at a point in time, the raw events, and `verify`.

Everything here only reads: it is meant for an `EventLog` opened with `readonly=True`, possibly
while a server appends to the same file (WAL readers never block the writer). Reads that need
more than `EventLog`'s public methods (the raw rows, the search index, PRAGMAs) go through the
log's SQLite connection, `log._conn`, with plain SELECTs and PRAGMAs only.
Must not import trio, `actors` or `transport`.
"""
from __future__ import annotations

import collections
import json

import contextlib
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone

import attrs
from attrs import define, field, frozen

from ._events import (
    ACTIVITY_TYPES,
    EVENT_TYPES,
    REDACTED,
    ROLE_OF_TYPE,
    MemoryCleared,
    Recorded,
    UndecodableEvent,
    event_from_row,
    is_message,
    payload_from_row,
)
from ._log import EventLog, scope_token
from ._memory import DEFAULT_WINDOW, Clear, Memory, Message, fold, memory_from_json
from ._schema import sqlite3

#: What a read of a damaged database raises (from the sqlite3 module the store uses).
_DB_ERRORS = (sqlite3.DatabaseError,)

#: How many problems of one kind a verify report lists (the rest are counted).
MAX_LISTED = 10


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


def _instant_of(recorded: Recorded) -> datetime:
    try:
        return parse_instant(recorded.event.at)
    except ValueError:
        raise UndecodableEvent(f"event {recorded.seq} has an unreadable time {recorded.event.at!r}") from None


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
        if self.until_time is not None and _instant_of(recorded) > self.until_time:
            return False
        return True


def memory_at(
    log: EventLog, agent_id: str, user: str, *, window: int = DEFAULT_WINDOW, cut: Cut = Cut()
) -> tuple[Memory, list[Message], frozenset[int]]:
    """(agent_id, user)'s memory as of `cut`; its long-term messages as of `cut`, in seq order; and
    the seqs of those messages (short- or long-term) whose text a later long-term clear erased.

    The log keeps every event, but a long-term clear redacts the text of the messages it clears,
    so a point before such a clear shows those messages with empty content. Call inside
    `log.snapshot()` to read several streams as of one moment.
    """
    if cut.until_time is None:  # a prefix of the log: the store's own rebuild, then the long-term messages
        memory = log.memory(agent_id, user, window=window, until_seq=cut.until_seq)
        events = list(log.read(agent_id=agent_id, user=user, after_seq=memory.long_term_since, until_seq=cut.until_seq))
    else:
        events = [r for r in log.read(agent_id=agent_id, user=user) if cut.admits(r)]
        memory = Memory(agent_id, user, window)
        for recorded in events:
            memory = fold(memory, recorded)
    long_term = [
        Message(r.seq, r.event.role, r.event.content, r.event.at)
        for r in events
        if r.seq > memory.long_term_since and is_message(r.event)
    ]
    forgotten: frozenset[int] = frozenset()
    if not cut.everything and memory.last_seq:  # without a cut, no remembered message can have been erased
        forgotten = frozenset(row[0] for row in log._conn.execute(
            "SELECT seq FROM events WHERE agent_id = ? AND user = ? AND seq <= ? AND payload = ?",
            (agent_id, user, memory.last_seq, REDACTED),
        ))
    return memory, long_term, forgotten


def last_seq_at(log: EventLog, cut: Cut = Cut()) -> int:
    """The highest sequence number in the log that `cut` admits (0 if none)."""
    if cut.until_time is None:
        if cut.until_seq is None:
            return log.last_seq()
        return log._conn.execute("SELECT coalesce(max(seq), 0) FROM events WHERE seq <= ?", (cut.until_seq,)).fetchone()[0]
    cursor = log._conn.execute("SELECT seq, at FROM events ORDER BY seq DESC")
    try:
        for seq, at in cursor:
            try:
                if parse_instant(at) <= cut.until_time:
                    return seq
            except ValueError:
                raise UndecodableEvent(f"event {seq} has an unreadable time {at!r}") from None
        return 0
    finally:
        cursor.close()


def activity_at(log: EventLog, agent_id: str, user: str, *, cut: Cut = Cut()) -> list[Recorded]:
    """What the turns of (agent_id, user) did besides answering, as of `cut`, in seq order: the tool
    calls and their results, and the turns that ended cancelled or failed (with their partial answer).

    These events are logged but are not memory; replaying them never calls a model or a tool.
    """
    types = ", ".join(f"'{t}'" for t in sorted(ACTIVITY_TYPES))
    sql = (f"SELECT seq, type, agent_id, user, at, payload FROM events WHERE agent_id = ? AND user = ? "
           f"AND type IN ({types})")
    params: list[object] = [agent_id, user]
    if cut.until_seq is not None:
        sql += " AND seq <= ?"
        params.append(cut.until_seq)
    recorded = [Recorded(row[0], event_from_row(*row[1:])) for row in log._conn.execute(sql + " ORDER BY seq", params)]
    return [r for r in recorded if cut.admits(r)]


def clears_at(log: EventLog, agent_id: str, user: str, *, cut: Cut = Cut()) -> list[Clear]:
    """Every clear of (agent_id, user)'s memory as of `cut`, in seq order, read from the log (the
    memory itself keeps only the last of each kind)."""
    sql = "SELECT seq, type, agent_id, user, at, payload FROM events WHERE agent_id = ? AND user = ? AND type = ?"
    params: list[object] = [agent_id, user, MemoryCleared.TYPE]
    if cut.until_seq is not None:
        sql += " AND seq <= ?"
        params.append(cut.until_seq)
    recorded = [Recorded(row[0], event_from_row(*row[1:])) for row in log._conn.execute(sql + " ORDER BY seq", params)]
    return [Clear(r.seq, r.event.at, r.event.long_term) for r in recorded if cut.admits(r)]


# -- the raw events --------------------------------------------------------------------------


def events_after(
    log: EventLog,
    after_seq: int = 0,
    *,
    agent_id: str | None = None,
    user: str | None = None,
    until_seq: int | None = None,
    limit: int = 1000,
) -> list[dict]:
    """Up to `limit` events with `after_seq` < seq <= `until_seq` (of one agent and/or user), in seq order, as JSON
    objects (see `event_fields`); a message whose text a long-term clear erased has `"redacted": true`.

    All rows are fetched at once, so outside `snapshot()` each call is one short read
    transaction and sees everything committed before it. An event this version cannot read ends
    the list early; when it is the first, raises `UndecodableEvent` naming its seq.
    """
    rows = log.rows(agent_id=agent_id, user=user, after_seq=after_seq, until_seq=until_seq, limit=limit).fetchall()
    out = []
    for seq, type_, agent, usr, at, payload in rows:
        try:
            fields = event_fields(Recorded(seq, event_from_row(type_, agent, usr, at, payload)))
        except UndecodableEvent as exc:
            if out:  # return what comes before it; the next call raises
                break
            raise UndecodableEvent(f"event {seq}: {exc} (`agentcast replay verify` checks the whole log)") from None
        if payload == REDACTED or (type_ in ACTIVITY_TYPES and json.loads(payload).get("redacted") is True):
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


# -- the full rebuild ------------------------------------------------------------------------


@define
class Rebuilt:
    """The result of folding the whole log once, in seq order, with what was wrong on the way."""

    memories: dict[tuple[str, str], Memory] = field(factory=dict)
    #: per stream, the seqs of the messages since its last long-term clear (what the index should hold)
    indexed: dict[tuple[str, str], list[int]] = field(factory=dict)
    events: int = 0
    first_seq: int = 0
    last_seq: int = 0
    gaps: list[tuple[int, int]] = field(factory=list)
    bad_seqs: list[int] = field(factory=list)
    unknown_types: list[tuple[int, str]] = field(factory=list)
    undecodable: list[tuple[int, str]] = field(factory=list)
    #: streams with an event that could not be read (their projection cannot be trusted)
    tainted: set[tuple[str, str]] = field(factory=set)
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def rebuild_all(log: EventLog, *, window: int = DEFAULT_WINDOW, batch: int = 4096) -> Rebuilt:
    """Fold every event of the log, in one pass in seq order, into every stream's memory.

    Checks on the way that seqs run 1, 2, 3… without holes, and that every row decodes.
    Call inside `log.snapshot()` for a consistent result while a server writes.
    """
    out = Rebuilt()
    started = time.perf_counter()
    cursor = log._conn.execute("SELECT seq, type, agent_id, user, at, payload FROM events ORDER BY seq")
    try:
        count, previous = _fold_rows(cursor, batch, window, out)
    finally:
        cursor.close()
    out.seconds = time.perf_counter() - started
    out.events = count
    out.last_seq = previous
    if count:
        out.first_seq = log._conn.execute("SELECT min(seq) FROM events").fetchone()[0]
    return out


class _Stream:
    """One stream's memory while the one-pass rebuild runs: what `fold` would hold, kept in
    mutable form (the short-term window as a bounded deque of events) and made a `Memory` at the end."""

    __slots__ = ("recent", "since", "count", "last_clear", "last_seq", "version")

    def __init__(self, window: int) -> None:
        self.recent: collections.deque = collections.deque(maxlen=window)
        self.since = self.count = self.last_seq = self.version = 0
        self.last_clear: dict[bool, Clear] = {}  # the last clear of each kind, by `long_term`

    def memory(self, agent_id: str, user: str, window: int) -> Memory:
        short = tuple(Message(*item) for item in self.recent)
        last_clears = tuple(sorted(self.last_clear.values(), key=lambda c: c.seq))
        return Memory(agent_id, user, window, short, self.since, self.count, last_clears, self.last_seq, self.version)


def _fold_rows(cursor, batch: int, window: int, out: Rebuilt) -> tuple[int, int]:
    """Decode every row (to find what cannot be read) and fold it into its stream, in one pass.

    Equivalent to `fold` over each stream's decoded events (the projection check compares it with
    a stream-by-stream rebuild), but without building a `Memory` per event: that is what makes
    the full rebuild run at a few hundred thousand events a second.
    """
    streams: dict[tuple[str, str], _Stream] = {}
    indexed, tainted = out.indexed, out.tainted
    previous = 0
    count = 0
    while rows := cursor.fetchmany(batch):
        for seq, type_, agent_id, user, at, payload in rows:
            count += 1
            if seq <= previous:  # only possible for seq <= 0: the primary key is unique and sorted
                out.bad_seqs.append(seq)
            else:
                if seq != previous + 1:
                    out.gaps.append((previous + 1, seq - 1))
                previous = seq
            key = (agent_id, user)
            if type_ not in EVENT_TYPES:
                out.unknown_types.append((seq, type_))
                tainted.add(key)
                continue
            try:
                body = payload_from_row(type_, payload)
            except UndecodableEvent as exc:
                out.undecodable.append((seq, str(exc)))
                tainted.add(key)
                continue
            stream = streams.get(key)
            if stream is None:
                stream = streams[key] = _Stream(window)
                indexed[key] = []
            stream.last_seq = seq
            stream.version += 1
            if type_ in ACTIVITY_TYPES:
                continue
            if type_ == "memory_cleared":
                stream.last_clear[body["long_term"]] = Clear(seq, at, body["long_term"])
                stream.recent.clear()
                if body["long_term"]:
                    stream.since, stream.count = seq, 0
                    indexed[key] = []
            else:
                stream.recent.append((seq, ROLE_OF_TYPE[type_], body["content"], at))
                stream.count += 1
                indexed[key].append(seq)
    out.memories.update({key: st.memory(key[0], key[1], window) for key, st in streams.items()})
    return count, previous


# -- verify ----------------------------------------------------------------------------------


@frozen
class Check:
    """One check of `verify`: its name, whether it passed, a one-line summary, the problems found."""

    name: str
    ok: bool
    summary: str
    problems: tuple[str, ...] = ()
    #: how many problems there were in all (`problems` lists at most MAX_LISTED of them)
    count: int = 0


@frozen
class VerifyReport:
    """What `verify` found: the log's size, the full rebuild's speed, and every check."""

    path: str
    events: int
    first_seq: int
    last_seq: int
    streams: int
    rebuild_seconds: float
    events_per_second: float
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def problem_count(self) -> int:
        return sum(c.count for c in self.checks if not c.ok)

    def as_json(self) -> dict:
        return {
            "db": self.path,
            "ok": self.ok,
            "events": self.events,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "streams": self.streams,
            "rebuild": {"seconds": round(self.rebuild_seconds, 6), "events_per_second": round(self.events_per_second, 1)},
            "checks": [
                {"name": c.name, "ok": c.ok, "summary": c.summary, "problem_count": c.count, "problems": list(c.problems)}
                for c in self.checks
            ],
        }


def _check(name: str, problems: list[str], ok_summary: str, fail_summary: str) -> Check:
    if not problems:
        return Check(name, True, ok_summary)
    listed = tuple(problems[:MAX_LISTED])
    if len(problems) > MAX_LISTED:
        listed += (f"… and {len(problems) - MAX_LISTED} more",)
    return Check(name, False, fail_summary, listed, len(problems))


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _ranges(gaps: Iterable[tuple[int, int]]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in gaps)


def _stream(key: tuple[str, str]) -> str:
    return f"agent {key[0]!r} user {key[1]!r}"


def _seqs(seqs: Iterable[int], most: int = 5) -> str:
    seqs = sorted(seqs)
    shown = ", ".join(map(str, seqs[:most]))
    return shown + (f", … ({len(seqs)} in all)" if len(seqs) > most else "")


def _differences(a: Memory, b: Memory) -> str:
    names = [f.name for f in attrs.fields(Memory) if getattr(a, f.name) != getattr(b, f.name)]
    return ", ".join(names) or "?"


def verify(log: EventLog, *, window: int = DEFAULT_WINDOW) -> VerifyReport:
    """Check the whole log, as of one moment; never raises for what it finds (see `VerifyReport`).

    Checks: seqs run 1..last without holes; every event type is known and every payload decodes;
    folding the log twice (once in one pass over all of it with `fold`, once stream by stream
    through the stream index as `EventLog.memory` does) gives the same memory for every
    (agent, user); the search index holds exactly the long-term messages of every (agent, user)
    and nothing else; every saved snapshot equals the memory at its seq; SQLite's integrity_check.
    A query that fails on a damaged file is reported as a problem of the check that ran it.
    """
    checks: list[Check] = []
    with _read_transaction(log):
        try:
            rebuilt = rebuild_all(log, window=window)
        except _DB_ERRORS as exc:
            rebuilt = None
            checks.append(Check("events", False, "the events table could not be read", (str(exc),), 1))
        streams: list[tuple[str, str]] = []
        if rebuilt is not None:
            checks.extend(_event_checks(rebuilt))
            try:
                streams = log.streams()
                checks.append(_projection_check(log, rebuilt, streams, window))
            except (*_DB_ERRORS, UndecodableEvent) as exc:
                checks.append(Check("projection", False, "could not be checked", (str(exc),), 1))
            try:
                checks.append(_index_check(log, rebuilt, streams))
            except _DB_ERRORS as exc:
                checks.append(Check("search index", False, "could not be checked", (str(exc),), 1))
            try:
                checks.append(_snapshot_check(log, rebuilt))
            except (*_DB_ERRORS, UndecodableEvent) as exc:
                checks.append(Check("snapshots", False, "could not be checked", (str(exc),), 1))
        checks.append(_integrity_check(log))
    return VerifyReport(
        path=log.path,
        events=rebuilt.events if rebuilt else 0,
        first_seq=rebuilt.first_seq if rebuilt else 0,
        last_seq=rebuilt.last_seq if rebuilt else 0,
        streams=len(streams),
        rebuild_seconds=rebuilt.seconds if rebuilt else 0.0,
        events_per_second=rebuilt.events_per_second if rebuilt else 0.0,
        checks=tuple(checks),
    )


@contextlib.contextmanager
def _read_transaction(log: EventLog) -> Iterator[None]:
    """Like `log.snapshot()`, but ending it cannot fail: on a damaged file the COMMIT itself may."""
    conn = log._conn
    conn.execute("BEGIN")
    try:
        yield
    finally:
        try:
            conn.execute("COMMIT")
        except _DB_ERRORS:
            if conn.in_transaction:
                conn.execute("ROLLBACK")


def _event_checks(r: Rebuilt) -> list[Check]:
    seq_problems = []
    if r.gaps:
        missing = sum(b - a + 1 for a, b in r.gaps)
        seq_problems.append(f"missing seq {_ranges(r.gaps)} ({_n(missing, 'event')})")
    seq_problems += [f"seq {s} is not a positive number" for s in r.bad_seqs]
    span = f"1..{r.last_seq}" if r.events else "empty log"
    checks = [
        _check("sequence", seq_problems, f"{span}, no gaps" if r.events else "empty log", f"holes in 1..{r.last_seq}"),
        _check(
            "event types",
            [f"seq {seq}: unknown event type {type_!r}" for seq, type_ in r.unknown_types],
            f"all {r.events} known",
            f"{_n(len(r.unknown_types), 'event')} of an unknown type",
        ),
        _check(
            "payloads",
            [f"seq {seq}: {message}" for seq, message in r.undecodable],
            "all decodable",
            f"{_n(len(r.undecodable), 'undecodable payload')}",
        ),
    ]
    return checks


def _projection_check(log: EventLog, r: Rebuilt, streams: list[tuple[str, str]], window: int) -> Check:
    problems = []
    listed = set(streams)
    for key in sorted(set(r.memories) - listed):
        problems.append(f"{_stream(key)} has events but is missing from the stream index")
    compared = 0
    for key in streams:
        if key in r.tainted:
            continue
        if key not in r.memories:
            problems.append(f"{_stream(key)} is in the stream index but has no events")
            continue
        again = log.memory(key[0], key[1], window=window)
        compared += 1
        if again != r.memories[key]:
            problems.append(f"{_stream(key)}: the two rebuilds differ in {_differences(r.memories[key], again)}")
    skipped = len(listed & r.tainted)
    note = f" ({_n(skipped, 'stream')} with unreadable events not compared)" if skipped else ""
    return _check(
        "projection",
        problems,
        f"rebuilt twice, the same for {'all ' if compared > 1 else ''}{_n(compared, 'stream')}{note}",
        f"the rebuilds disagree{note}",
    )


def _index_check(log: EventLog, r: Rebuilt, streams: list[tuple[str, str]]) -> Check:
    conn = log._conn
    problems = []
    accounted = 0
    compared = 0
    for key in sorted(set(streams) | set(r.memories)):
        rowids = {row[0] for row in conn.execute(
            "SELECT rowid FROM memory_index WHERE memory_index MATCH ?", (f'"{scope_token(*key)}"',)
        )}
        accounted += len(rowids)
        if key in r.tainted:
            continue
        memory = r.memories.get(key)
        expected_count = memory.long_term_count if memory is not None else 0
        expected = set(r.indexed.get(key, ()))
        compared += 1
        if len(rowids) != expected_count or rowids != expected:
            detail = []
            if expected - rowids:
                detail.append(f"missing seq {_seqs(expected - rowids)}")
            if rowids - expected:
                detail.append(f"unexpected seq {_seqs(rowids - expected)}")
            problems.append(
                f"{_stream(key)}: the index holds {len(rowids)} messages, the projection {expected_count} long-term"
                + (f" ({'; '.join(detail)})" if detail else "")
            )
    (total,) = conn.execute("SELECT count(*) FROM memory_index").fetchone()
    if total > accounted:
        problems.append(f"{_n(total - accounted, 'index row')} belonging to no (agent, user) of the log")
    return _check(
        "search index",
        problems,
        f"{_n(total, 'row')}, agreeing with the projection of {'all ' if compared > 1 else ''}{_n(compared, 'stream')}",
        "disagrees with the projection",
    )


def _snapshot_check(log: EventLog, r: Rebuilt) -> Check:
    """Every saved snapshot (a lane starts from it) equals the memory folded from the log up to its seq."""
    conn = log._conn
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'snapshots'").fetchone() is None:
        return Check("snapshots", True, "none (this log has no snapshots table)")
    rows = conn.execute("SELECT agent_id, user, window, seq, state FROM snapshots ORDER BY agent_id, user, window").fetchall()
    problems = []
    compared = skipped = 0
    for agent_id, user, window, seq, state in rows:
        key = (agent_id, user)
        name = f"the snapshot of {_stream(key)} (window {window}) at seq {seq}"
        if key in r.tainted:
            skipped += 1
            continue
        try:
            saved = memory_from_json(agent_id, user, state)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{name} is unreadable: {exc!r}")
            continue
        compared += 1
        then = log.memory(agent_id, user, window=window, until_seq=seq)
        if then.last_seq != seq:
            problems.append(f"{name}: the log has no event {seq} of that (agent, user)")
        elif saved != then:
            problems.append(f"{name} differs from the log in {_differences(saved, then)}")
    note = f" ({_n(skipped, 'snapshot')} of streams with unreadable events not compared)" if skipped else ""
    return _check(
        "snapshots",
        problems,
        (f"{'all ' if compared > 1 else ''}{_n(compared, 'snapshot')} equal to the log at "
         f"{'their' if compared > 1 else 'its'} seq{note}"
         if rows else "none saved"),
        f"disagree with the log{note}",
    )


def _integrity_check(log: EventLog) -> Check:
    try:
        rows = [row[0] for row in log._conn.execute("PRAGMA integrity_check")]
    except _DB_ERRORS as exc:
        return Check("integrity", False, "PRAGMA integrity_check failed", (str(exc),), 1)
    if rows == ["ok"]:
        return Check("integrity", True, "PRAGMA integrity_check: ok")
    return _check("integrity", rows, "", "PRAGMA integrity_check found damage")
