"""`agentcast replay verify`: the whole log checked, as of one moment (`verify` -> `VerifyReport`), and the
one-pass rebuild of every stream's memory it times (`rebuild_all`).

Reads through `RecorderInspection` only. Must not import trio, `actors` or `transport`.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable

import attrs
from attrs import define, field, frozen

from ._events import EVENT_TYPES, ROLE_OF_TYPE, UndecodableEvent, check_payload
from ._memory import DEFAULT_WINDOW, Memory, Projection, memory_from_json
from ._recorder import RecorderInspection
from ._schema import sqlite3

#: What a read of a damaged database raises (from the sqlite3 module the store's SQLite recorder uses).
_DB_ERRORS = (sqlite3.DatabaseError,)

#: How many problems of one kind a verify report lists (the rest are counted).
MAX_LISTED = 10


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


def rebuild_all(log: RecorderInspection, *, window: int = DEFAULT_WINDOW) -> Rebuilt:
    """Fold every event of the log, in one pass in seq order, into every stream's memory (`Projection`'s
    row path, one projection per stream).

    Checks on the way that seqs run 1, 2, 3… without holes, and that every row decodes (without making
    the events: `check_payload`).
    Call inside `log.snapshot()` for a consistent result while a server writes.
    """
    out = Rebuilt()
    started = time.perf_counter()
    streams: dict[tuple[str, str], Projection] = {}
    messages: dict[tuple[str, str], list[int]] = {}  # per stream, the seqs of its messages
    tainted = out.tainted
    # each type's check of a stored payload (`check_payload` without its lookups: this runs for every row)
    checks = {type_: cls.payload_values for type_, cls in EVENT_TYPES.items()}
    loads = json.loads
    previous = count = 0
    for seq, type_, agent_id, user, at, payload in log.rows():
        count += 1
        if seq <= previous:  # only possible for seq <= 0: the primary key is unique and sorted
            out.bad_seqs.append(seq)
        else:
            if seq != previous + 1:
                out.gaps.append((previous + 1, seq - 1))
            previous = seq
        key = (agent_id, user)
        check = checks.get(type_)
        if check is None:
            out.unknown_types.append((seq, type_))
            tainted.add(key)
            continue
        try:
            check(loads(payload))
        except (ValueError, KeyError, TypeError, AttributeError):
            try:
                check_payload(type_, payload)  # the same check, for its message
            except UndecodableEvent as exc:
                out.undecodable.append((seq, str(exc)))
            tainted.add(key)
            continue
        projection = streams.get(key)
        if projection is None:
            projection = streams[key] = Projection(Memory(agent_id, user, window))
            messages[key] = []
        projection.apply_row(seq, type_, at, payload)
        if type_ in ROLE_OF_TYPE:
            messages[key].append(seq)
    for key, projection in streams.items():
        memory = out.memories[key] = projection.memory()
        out.indexed[key] = [seq for seq in messages[key] if seq > memory.long_term_since]
    out.seconds = time.perf_counter() - started
    out.events = count
    out.last_seq = previous
    if count:
        out.first_seq = log.first_seq()
    return out


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


def verify(log: RecorderInspection, *, window: int = DEFAULT_WINDOW) -> VerifyReport:
    """Check the whole log, as of one moment; never raises for what it finds (see `VerifyReport`).

    Checks: seqs run 1..last without holes; every event type is known and every payload decodes;
    folding the log twice (once in one pass over all of it, each row checked and applied to its
    stream's `Projection`, once stream by stream as `Recorder.memory` does) gives the same memory for every
    (agent, user); the search index holds exactly the long-term messages of every (agent, user)
    and nothing else; every saved snapshot equals the memory at its seq; every remembered message up to its
    agent's embedding cursor has exactly one vector of that model, and no other vector is stored (none for a
    forgotten or missing message: no vector outlives its text), every vector readable; SQLite's integrity_check.
    A query that fails on a damaged file is reported as a problem of the check that ran it.
    """
    checks: list[Check] = []
    with log.snapshot():
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
            try:
                checks.append(_vector_check(log, rebuilt))
            except _DB_ERRORS as exc:
                checks.append(Check("vectors", False, "could not be checked", (str(exc),), 1))
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


def _projection_check(log: RecorderInspection, r: Rebuilt, streams: list[tuple[str, str]], window: int) -> Check:
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


def _index_check(log: RecorderInspection, r: Rebuilt, streams: list[tuple[str, str]]) -> Check:
    problems = []
    accounted = 0
    compared = 0
    for key in sorted(set(streams) | set(r.memories)):
        rowids = log.indexed_seqs(*key)
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
    total = log.index_size()
    if total > accounted:
        problems.append(f"{_n(total - accounted, 'index row')} belonging to no (agent, user) of the log")
    return _check(
        "search index",
        problems,
        f"{_n(total, 'row')}, agreeing with the projection of {'all ' if compared > 1 else ''}{_n(compared, 'stream')}",
        "disagrees with the projection",
    )


def _snapshot_check(log: RecorderInspection, r: Rebuilt) -> Check:
    """Every saved snapshot (a lane starts from it) equals the memory folded from the log up to its seq."""
    rows = log.saved_snapshots()
    if rows is None:
        return Check("snapshots", True, "none (this log has no snapshots table)")
    problems = []
    compared = skipped = 0
    for saved_snapshot in rows:
        agent_id, user, window, seq, state = (saved_snapshot.agent_id, saved_snapshot.user, saved_snapshot.window,
                                              saved_snapshot.seq, saved_snapshot.state)
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


def _vector_check(log: RecorderInspection, r: Rebuilt) -> Check:
    """Every remembered message up to its agent's embedding cursor has exactly one vector of that model, and
    no vector is stored for anything else (a forgotten or missing message, one after the cursor, another
    stream's), under a model with no cursor, or unreadable."""
    cursors = {(c.agent_id, c.model): c.seq for c in log.embedding_cursors()}
    problems: list[str] = []
    stored: dict[tuple[str, str, str], tuple[int, ...]] = {}
    vectors = 0
    for found in log.stored_vectors():
        vectors += len(found.seqs)
        where = f"{_stream((found.agent_id, found.user))} model {found.model!r}"
        problems.extend(f"{where}: {p}" for p in found.problems)
        stored[(found.agent_id, found.user, found.model)] = found.seqs
        if (found.agent_id, found.model) not in cursors:
            problems.append(f"{where}: {_n(len(found.seqs), 'vector')} of a model with no embedding cursor for the agent")
    compared = 0
    for (agent_id, model), cursor in sorted(cursors.items()):
        users = {u for a, u in r.memories if a == agent_id} | {u for a, u, m in stored if a == agent_id and m == model}
        for user in sorted(users):
            key = (agent_id, user)
            if key in r.tainted:
                continue
            compared += 1
            expected = {seq for seq in r.indexed.get(key, ()) if seq <= cursor}
            seqs = stored.get((agent_id, user, model), ())
            held = set(seqs)
            detail = []
            twice = sorted({s for s in seqs if seqs.count(s) > 1}) if len(held) != len(seqs) else []
            if twice:
                detail.append(f"more than one vector for seq {_seqs(twice)}")
            if expected - held:
                detail.append(f"no vector for seq {_seqs(expected - held)}")
            if held - expected:
                detail.append(f"a vector for seq {_seqs(held - expected)}, which is not a remembered message of "
                              f"this stream up to the cursor ({cursor})")
            if detail:
                problems.append(f"{_stream(key)} model {model!r}: " + "; ".join(detail))
    if not cursors and not vectors:
        return Check("vectors", True, "none (no message embedded)")
    return _check(
        "vectors",
        problems,
        f"{_n(vectors, 'vector')}, one for each remembered message up to its agent's cursor "
        f"({_n(len(cursors), 'model cursor')}, {_n(compared, 'stream')})",
        "disagree with the log",
    )


def _integrity_check(log: RecorderInspection) -> Check:
    try:
        problems = log.integrity_problems()
    except _DB_ERRORS as exc:
        return Check("integrity", False, "PRAGMA integrity_check failed", (str(exc),), 1)
    if not problems:
        return Check("integrity", True, "PRAGMA integrity_check: ok")
    return _check("integrity", problems, "", "PRAGMA integrity_check found damage")
