"""`EventLog`: the SQLite recorder. The append-only event log in one SQLite file, with the search index and
the snapshots kept in step with it (`store.Recorder` and `store.RecorderInspection` over SQLite).

The only module that touches the database connection of a log (the schema's module opens it). Synchronous
and thread-agnostic (one caller at a time). Must not import trio, `actors` or `transport`.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from ._events import (
    ACTIVITY_TYPES,
    REDACTED,
    ROLE_OF_TYPE,
    Event,
    Recorded,
    UserClearedMemory,
    event_from_row,
    redacted_payload,
)
from ._memory import DEFAULT_WINDOW, Memory, fold_rows, memory_to_json, read_snapshot
from . import _vectors
from ._recorder import (
    AppendConflict,
    EmbeddingConflict,
    EmbeddingCursor,
    Fence,
    FoundTurn,
    Hit,
    MessageVector,
    RecorderInspection,
    SavedSnapshot,
    StoredEvent,
    StoredVectors,
    TextToEmbed,
    Unembedded,
)
from ._schema import FTS5_SECURE_DELETE, connect_readonly, connect_writable, sqlite3
from ._terms import MESSAGE_TYPES_SQL, index_terms, scope_token, term, words

logger = logging.getLogger("agentcast.store")

#: Most distinct words of a query that a search uses; the rest are ignored.
MAX_QUERY_TERMS = 32

#: The most vectors one row of `vector_blocks` holds. Each `add_vectors` adds a row per (agent, user) it
#: touches and merges the newest rows of that (agent, user) while the one before holds no more vectors than
#: the last (a binary counter): a vector is rewritten about log2(MAX_BLOCK_VECTORS) times in all, and a
#: search reads about n / MAX_BLOCK_VECTORS + log2(MAX_BLOCK_VECTORS) rows for n vectors.
MAX_BLOCK_VECTORS = 1024

#: Most seqs bound in one `IN (...)` (SQLite's own bound is 32,766 host parameters).
_IN_CHUNK = 500

#: Seconds a writable open waits for readers of old snapshots (other processes) to let its WAL be
#: truncated; after that the truncation is done after a later commit (see `EventLog._checkpoint`).
OPEN_CHECKPOINT_PATIENCE = 1.0

def match_expression(agent_id: str, user: str, query: str) -> str | None:
    """The FTS5 MATCH for `query` within one (agent, user), or None if it has no words.

    The query is text, never FTS syntax: it is cut into words (as messages are, see `_terms`)
    and each becomes the quoted index term of that word in that memory, so quotes, operators,
    `NEAR(`, `*`, `-` or `:` in it are just characters, and only that memory's postings are read.
    """
    scope = scope_token(agent_id, user)
    terms: list[str] = []
    for word in words(query):
        t = term(scope, word)
        if t not in terms:
            terms.append(t)
            if len(terms) == MAX_QUERY_TERMS:
                break
    if not terms:
        return None
    return " OR ".join(f'"{t}"' for t in terms)


#: A row of the events table as a `StoredEvent` (made in C: a scan of every row makes one per row).
_stored_event = functools.partial(tuple.__new__, StoredEvent)

#: The stored types of the turn activity a long-term clear redacts, for SQL `type IN (...)`.
_ACTIVITY_TYPES_SQL = ", ".join(f"'{t}'" for t in sorted(ACTIVITY_TYPES))


class EventLog:
    """An agentcast event log in one SQLite file: the SQLite `Recorder` (and `RecorderInspection`).

    Events are only ever appended; each gets the next sequence number. The full-text
    index of remembered messages is a projection kept in step with the log inside the
    same transactions. Use from one thread at a time.
    """

    def __init__(self, conn, path: str, readonly: bool) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly
        self._checkpoint_due = False  # a forgetting's WAL truncation is still to be done

    @classmethod
    def open(cls, path: str | os.PathLike, *, readonly: bool = False, synchronous: str = "NORMAL") -> "EventLog":
        """Open the log at `path`.

        Writable (the default): created if absent, schema migrated. Read-only: the file
        must exist and is never modified. A file that is not an agentcast log raises
        `NotAnEventLog` and is left untouched; a missing read-only file raises `MissingEventLog`.
        """
        if readonly:
            return cls(connect_readonly(path), os.fspath(path), True)
        log = cls(connect_writable(path, synchronous=synchronous), os.fspath(path), False)
        # Whatever the WAL holds is copied into the database and the WAL truncated before the log is used: a
        # process that stopped before its own truncation (killed while a reader held an old snapshot after a
        # forgetting) must not leave old page versions, forgotten text among them, in the -wal file.
        log._checkpoint(patience=OPEN_CHECKPOINT_PATIENCE)
        return log

    def close(self) -> None:
        """Close the file; further calls fail."""
        self._conn.close()

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------

    def append(
        self,
        batches: Sequence[Sequence[Event]],
        snapshots: Sequence[Memory] = (),
        *,
        fences: Sequence[Fence | None] | None = None,
    ) -> list[list[Recorded]]:
        """Append every batch, in order, in one transaction (group commit); see `Recorder.append`.

        Returns the recorded events batch by batch. When this returns, all of them are
        committed; when it raises, none is. A long-term `UserClearedMemory` also erases the text
        it clears (see `_forget`) before this returns. `snapshots` are saved in the same
        transaction (each replaces the previous snapshot of its agent, user and window), before the
        events: a long-term clear among them forgets the snapshots of its stream, these included.
        """
        if fences is not None and len(fences) != len(batches):
            raise ValueError(f"{len(fences)} fences for {len(batches)} batches")
        conn = self._conn
        out: list[list[Recorded]] = []
        forgot = False
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Sequence numbers are given explicitly: the next ones after the newest, which is what
            # SQLite would pick (seq is the rowid; nothing else writes during this transaction), so
            # that the rows go in with one executemany per table instead of two statements per event.
            (seq,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
            # Snapshots first: a long-term clear of their stream later in this transaction forgets them too.
            for memory in snapshots:
                conn.execute(
                    "INSERT OR REPLACE INTO snapshots (agent_id, user, window, seq, state) VALUES (?, ?, ?, ?, ?)",
                    (memory.agent_id, memory.user, memory.window, memory.last_seq, memory_to_json(memory)),
                )
            rows: list[tuple] = []
            indexed: list[tuple[int, str]] = []
            add_row, add_terms = rows.append, indexed.append
            for number, batch in enumerate(batches):
                if fences is not None and fences[number] is not None:
                    self._write_rows(rows, indexed)  # a stream's last seq is read from the table
                    self._check_fence(fences[number], seq)
                recorded = []
                for event in batch:
                    seq += 1
                    type_ = event.TYPE
                    add_row((seq, event.at, type_, event.agent_id, event.user, event.payload(),
                             getattr(event, "command_id", None)))
                    if type_ in ROLE_OF_TYPE:  # a message; a turn's activity (tool calls, ended turns) is not indexed
                        add_terms((seq, index_terms(scope_token(event.agent_id, event.user), event.content)))  # type: ignore[union-attr]
                    elif type_ == UserClearedMemory.TYPE and event.long_term:  # type: ignore[union-attr]
                        self._write_rows(rows, indexed)  # what it forgets must be in the tables first
                        self._forget(seq, event.agent_id, event.user, scope_token(event.agent_id, event.user))
                        forgot = True
                    recorded.append(Recorded(seq, event))
                out.append(recorded)
            self._write_rows(rows, indexed)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
                conn.execute("ROLLBACK")
            raise
        if forgot:
            self._checkpoint(patience=1.0)
        elif self._checkpoint_due:
            self._checkpoint(patience=0.0)
        return out

    def _check_fence(self, fence: Fence | None, last_seq: int) -> None:
        """Raise `AppendConflict` unless `fence` holds now (`last_seq`: the log's, rows written)."""
        assert fence is not None
        if fence.agent_id is not None:
            (last_seq,) = self._conn.execute(
                "SELECT coalesce(max(seq), 0) FROM events WHERE agent_id = ? AND user = ?", (fence.agent_id, fence.user)
            ).fetchone()
        if last_seq != fence.last_seq:
            raise AppendConflict(fence, last_seq)

    def check_writable(self, wait: float = 0.25) -> None:
        """Raise `sqlite3.OperationalError` unless this connection can take the database's write lock now
        (waiting at most `wait` seconds for a lock another connection holds): `BEGIN IMMEDIATE`, then
        `ROLLBACK`. Writes nothing. For health checks."""
        conn = self._conn
        (busy_timeout,) = conn.execute("PRAGMA busy_timeout").fetchone()
        conn.execute(f"PRAGMA busy_timeout={max(0, int(wait * 1000))}")
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout)}")

    def _write_rows(self, rows: list[tuple], indexed: list[tuple[int, str]]) -> None:
        """Insert the pending event rows and their index rows (the search index is kept in step
        with the log in the same transaction); empties both lists."""
        if rows:
            self._conn.executemany(
                "INSERT INTO events (seq, at, type, agent_id, user, payload, command_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            rows.clear()
        if indexed:
            self._conn.executemany("INSERT INTO memory_index (rowid, terms) VALUES (?, ?)", indexed)
            indexed.clear()

    def _forget(self, seq: int, agent_id: str, user: str, scope: str) -> None:
        """Erase the text of every message (user, agent, fact) of (agent_id, user) before `seq`, index rows,
        vectors and event payloads, and the text of its turns' activity (tool arguments and results, partial
        answers), and the ids the client chose for them (`command_id`, column and payload, and `request_id`).

        The events keep their rows and sequence numbers; their payload becomes REDACTED. Without its
        `command_id` a forgotten turn is not found by `find_turn`: a retry of it is a new turn. With
        `secure_delete` on, SQLite zeroes the freed bytes; FTS5 drops the tokens from its
        index in place (secure-delete, SQLite >= 3.42) or, on older SQLite, by rewriting it.
        """
        conn = self._conn
        # The index keeps no text: a row is deleted by giving its terms again (made from the
        # event's text, still there until the UPDATE below).
        remembered = conn.execute(
            "SELECT seq, payload FROM events WHERE agent_id = ? AND user = ? AND seq < ? "
            f"AND type IN ({MESSAGE_TYPES_SQL}) AND payload != ?",
            (agent_id, user, seq, REDACTED),
        ).fetchall()
        conn.executemany(
            "INSERT INTO memory_index (memory_index, rowid, terms) VALUES ('delete', ?, ?)",
            [(s, index_terms(scope, json.loads(payload)["content"])) for s, payload in remembered],
        )
        conn.execute("DELETE FROM snapshots WHERE agent_id = ? AND user = ?", (agent_id, user))
        # Every vector of the (agent, user), of every model: only messages before this clear can have one (a
        # vector is written after its message is committed). With secure_delete their pages are zeroed.
        conn.execute("DELETE FROM vector_blocks WHERE agent_id = ? AND user = ?", (agent_id, user))
        conn.execute(
            "UPDATE events SET payload = ?, command_id = NULL WHERE agent_id = ? AND user = ? AND seq < ? "
            f"AND type IN ({MESSAGE_TYPES_SQL}) AND (payload != ? OR command_id IS NOT NULL)",
            (REDACTED, agent_id, user, seq, REDACTED),
        )
        # Tool calls and results and partial answers hold the user's words too: their text goes as well.
        rows = conn.execute(
            "SELECT seq, type, payload, command_id FROM events WHERE agent_id = ? AND user = ? AND seq < ? "
            f"AND type IN ({_ACTIVITY_TYPES_SQL})",
            (agent_id, user, seq),
        ).fetchall()
        for row_seq, type_, payload, command_id in rows:
            redacted = redacted_payload(type_, payload)
            if redacted != payload or command_id is not None:
                conn.execute("UPDATE events SET payload = ?, command_id = NULL WHERE seq = ?", (redacted, row_seq))
        if not FTS5_SECURE_DELETE:
            conn.execute("INSERT INTO memory_index (memory_index) VALUES ('optimize')")

    def _checkpoint(self, patience: float) -> None:
        """Copy the WAL into the database and truncate it, so no old page survives in the WAL.

        A reader holding an old snapshot blocks this; it is retried for `patience` seconds (the
        writer waits meanwhile, so keep it short), then after each later commit until it succeeds.
        """
        conn = self._conn
        conn.execute("PRAGMA busy_timeout=0")
        try:
            deadline = time.monotonic() + patience
            while True:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    self._checkpoint_due = False
                    return
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.01)
        finally:
            conn.execute("PRAGMA busy_timeout=5000")
        if not self._checkpoint_due:
            logger.warning("%s: a reader holds an old snapshot; the WAL is truncated at a later commit", self.path)
        self._checkpoint_due = True

    # -- reading -------------------------------------------------------------------

    @contextlib.contextmanager
    def snapshot(self) -> Iterator["EventLog"]:
        """Within this block, every read sees the log as of one moment (one read transaction).

        Ending it cannot fail: on a damaged file the COMMIT of a read may, and nothing was written."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            yield self
        finally:
            try:
                conn.execute("COMMIT")
            except sqlite3.DatabaseError:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    def read(
        self,
        *,
        agent_id: str | None = None,
        user: str | None = None,
        after_seq: int = 0,
        until_seq: int | None = None,
        limit: int | None = None,
    ) -> Iterator[Recorded]:
        """The recorded events in sequence order, optionally of one agent and/or user (see `Recorder.read`)."""
        for seq, type_, agent, usr, at, payload in self._select(agent_id, user, after_seq, until_seq, None, limit):
            yield Recorded(seq, event_from_row(type_, agent, usr, at, payload))

    def rows(
        self,
        *,
        agent_id: str | None = None,
        user: str | None = None,
        after_seq: int = 0,
        until_seq: int | None = None,
        types: Collection[str] | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> Iterator[StoredEvent]:
        """The stored rows, undecoded (see `RecorderInspection.rows`)."""
        return map(_stored_event, self._select(agent_id, user, after_seq, until_seq, types, limit, descending))

    def _select(self, agent_id: str | None, user: str | None, after_seq: int, until_seq: int | None,
                types: Collection[str] | None, limit: int | None, descending: bool = False):
        """A cursor over the rows (seq, type, agent_id, user, at, payload) that `read` and `rows` give."""
        where = ["seq > ?"]
        params: list[object] = [after_seq]
        if until_seq is not None:
            where.append("seq <= ?")
            params.append(until_seq)
        if agent_id is not None:
            where.append("agent_id = ?")
            params.append(agent_id)
        if user is not None:
            where.append("user = ?")
            params.append(user)
        if types is not None:
            where.append(f"type IN ({', '.join('?' * len(types))})")
            params.extend(types)
        sql = (f"SELECT seq, type, agent_id, user, at, payload FROM events WHERE {' AND '.join(where)} "
               f"ORDER BY seq{' DESC' if descending else ''}")
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return self._conn.execute(sql, params)

    def memory(self, agent_id: str, user: str, *, window: int = DEFAULT_WINDOW, until_seq: int | None = None) -> Memory:
        """The memory of (agent_id, user), rebuilt from all its events up to `until_seq`."""
        sql = "SELECT seq, type, at, payload FROM events WHERE agent_id = ? AND user = ?"
        params: list[object] = [agent_id, user]
        if until_seq is not None:
            sql += " AND seq <= ?"
            params.append(until_seq)
        return fold_rows(Memory(agent_id, user, window), self._conn.execute(sql + " ORDER BY seq", params))

    def restore(self, agent_id: str, user: str, *, window: int = DEFAULT_WINDOW) -> tuple[Memory, int]:
        """The current memory of (agent_id, user): its latest snapshot plus the events after it.

        Returns the memory and how many events were folded onto the snapshot (all of them if
        there was none, or if it is to be written anew: one of an earlier version that listed every
        clear), so the caller can tell when a new snapshot is worth saving.
        """
        row = self._conn.execute(
            "SELECT seq, state FROM snapshots WHERE agent_id = ? AND user = ? AND window = ?",
            (agent_id, user, window),
        ).fetchone()
        start, stale = (Memory(agent_id, user, window), False) if row is None else read_snapshot(agent_id, user, row[1])
        rows = self._conn.execute(
            "SELECT seq, type, at, payload FROM events WHERE agent_id = ? AND user = ? AND seq > ? ORDER BY seq",
            (agent_id, user, 0 if row is None else row[0]),
        )
        memory = fold_rows(start, rows)
        return memory, memory.version if stale else memory.version - start.version

    def find_turn(self, agent_id: str, user: str, command_id: str) -> FoundTurn | None:
        """The logged turn of the chat command `command_id`: its user message and how it ended — its
        answer (`agent_message`), else the latest `turn_ended` (a failed or cancelled try), else None
        (no try ended: the server stopped mid-turn) — or None if the log holds no such command."""
        query = ("SELECT seq, type, agent_id, user, at, payload FROM events "
                 "WHERE agent_id = ? AND user = ? AND command_id = ? AND type IN ({}) ORDER BY {} LIMIT 1")
        found: list[Recorded | None] = []
        for types, order in (("'user_message'", "seq"),
                             ("'agent_message', 'turn_ended'", "type = 'agent_message' DESC, seq DESC")):
            row = self._conn.execute(query.format(types, order), (agent_id, user, command_id)).fetchone()
            found.append(None if row is None else Recorded(row[0], event_from_row(row[1], row[2], row[3], row[4], row[5])))
        said, ending = found
        return None if said is None else (said, ending)

    def streams(self) -> list[tuple[str, str]]:
        """Every (agent_id, user) that has events, sorted."""
        return [(agent_id, user) for agent_id, user in
                self._conn.execute("SELECT DISTINCT agent_id, user FROM events ORDER BY 1, 2")]

    def last_seq(self) -> int:
        """The sequence number of the newest event, 0 for an empty log."""
        return self._conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]

    def first_seq(self) -> int:
        """The sequence number of the oldest event, 0 for an empty log."""
        return self._conn.execute("SELECT coalesce(min(seq), 0) FROM events").fetchone()[0]

    def storage_bytes(self) -> int:
        """Bytes of the database file and its WAL (what is missing counts 0). Reads no connection: any thread."""
        total = 0
        for path in (self.path, self.path + "-wal"):
            try:
                total += os.stat(path).st_size
            except OSError:
                pass
        return total

    def search(self, agent_id: str, user: str, query: str, limit: int, *, since_seq: int = 0) -> list[Hit]:
        """The best `limit` messages of (agent_id, user)'s long-term memory for `query`, best first.

        Only messages with a sequence number >= `since_seq` are considered (to search the
        short-term window alone). Ranking is SQLite FTS5's BM25, with a word's document frequency
        counted among this memory's messages (the term is the memory's own; the number of
        messages and their average length are the whole index's). Equally good messages come in
        FTS5's order.
        """
        match = match_expression(agent_id, user, query)
        if match is None:
            return []
        rows = self._conn.execute(
            "SELECT e.seq, e.type, json_extract(e.payload, '$.content'), e.at, -memory_index.rank "
            "FROM memory_index JOIN events e ON e.seq = memory_index.rowid "
            "WHERE memory_index MATCH ? AND memory_index.rowid >= ? "
            "ORDER BY memory_index.rank LIMIT ?",
            (match, since_seq, limit),
        )
        return [
            Hit(seq, ROLE_OF_TYPE.get(type_, "assistant"), content, at, score)
            for seq, type_, content, at, score in rows
        ]

    # -- semantic memory: message vectors (`Recorder.add_vectors`, `nearest`, ...) ----------------------

    def _model(self, name: str) -> tuple[int, int] | None:
        """(model id, dimensions) of the embedding model `name`, or None if it has stored nothing."""
        return self._conn.execute("SELECT model, dimensions FROM embedding_models WHERE name = ?", (name,)).fetchone()

    def embedding_cursor(self, agent_id: str, model: str) -> int:
        """The seq up to which the messages of `agent_id` have vectors of `model` (0: none yet)."""
        row = self._conn.execute(
            "SELECT c.seq FROM embedding_cursors c JOIN embedding_models m ON m.model = c.model "
            "WHERE c.agent_id = ? AND m.name = ?", (agent_id, model)).fetchone()
        return 0 if row is None else row[0]

    def unembedded(self, agent_ids: Collection[str], after_seq: int, limit: int) -> Unembedded:
        """The next `limit` remembered messages of `agent_ids` after `after_seq` (see `Recorder.unembedded`).

        Read by seq (the table's own order; the `+` keeps SQLite from taking a per-stream index and sorting),
        in one read transaction, so that `scanned_to` (the newest seq, when fewer than `limit` were found)
        is of the same moment as the messages."""
        agents = sorted(set(agent_ids))
        if not agents or limit < 1:
            return Unembedded((), after_seq)
        conn = self._conn
        own = not conn.in_transaction
        if own:
            conn.execute("BEGIN")
        try:
            rows = conn.execute(
                "SELECT seq, agent_id, user, payload FROM events WHERE seq > ? "
                f"AND +type IN ({MESSAGE_TYPES_SQL}) AND +agent_id IN ({', '.join('?' * len(agents))}) "
                "ORDER BY seq LIMIT ?", (after_seq, *agents, limit)).fetchall()
            scanned_to = rows[-1][0] if len(rows) == limit else max(after_seq, self.last_seq())
        finally:
            if own:
                conn.execute("COMMIT")
        texts = tuple(TextToEmbed(seq, agent_id, user, json.loads(payload)["content"])
                      for seq, agent_id, user, payload in rows if payload != REDACTED)
        return Unembedded(texts, scanned_to)

    def count_unembedded(self, agent_ids: Collection[str], after_seq: int) -> int:
        """How many remembered messages of `agent_ids` after `after_seq` are not forgotten (a scan by seq)."""
        agents = sorted(set(agent_ids))
        if not agents:
            return 0
        return self._conn.execute(
            f"SELECT count(*) FROM events WHERE seq > ? AND +type IN ({MESSAGE_TYPES_SQL}) "
            f"AND +agent_id IN ({', '.join('?' * len(agents))}) AND payload != ?",
            (after_seq, *agents, REDACTED)).fetchone()[0]

    def add_vectors(self, model: str, dimensions: int, vectors: Sequence[MessageVector],
                    cursors: Mapping[str, tuple[int, int]]) -> int:
        """Store `vectors` and move the agents' embedding cursors in one transaction (see `Recorder.add_vectors`).

        Each (agent, user) gets one new row of its vectors, in seq order; then its newest rows are merged
        (see MAX_BLOCK_VECTORS). A vector is stored only if its seq is, in this transaction, a remembered
        message of its (agent, user) that no clear has redacted: a long-term clear committed while the vector
        was being made has forgotten it."""
        if type(dimensions) is not int or not 1 <= dimensions <= _vectors.MAX_DIMENSIONS:
            raise ValueError(f"dimensions must be an integer from 1 to {_vectors.MAX_DIMENSIONS}")
        for agent_id, (expected, new) in cursors.items():
            if not 0 <= expected <= new:
                raise ValueError(f"agent {agent_id!r}: a cursor moves forward (from {expected} to {new}?)")
        for v in vectors:
            moves = cursors.get(v.agent_id)
            if moves is None or not moves[0] < v.seq <= moves[1]:
                raise ValueError(f"the vector of seq {v.seq} (agent {v.agent_id!r}) is not within the range its "
                                 "agent's cursor moves over")
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = self._model(model)
            if found is None:
                model_id = conn.execute("INSERT INTO embedding_models (name, dimensions) VALUES (?, ?)",
                                        (model, dimensions)).lastrowid
            else:
                model_id, stored_dimensions = found
                if stored_dimensions != dimensions:
                    raise ValueError(f"the model {model!r} stored vectors of {stored_dimensions} dimensions, not "
                                     f"{dimensions}: a model whose vectors change length needs another name")
            for agent_id, (expected, _new) in cursors.items():
                row = conn.execute("SELECT seq FROM embedding_cursors WHERE agent_id = ? AND model = ?",
                                   (agent_id, model_id)).fetchone()
                actual = 0 if row is None else row[0]
                if actual != expected:
                    raise EmbeddingConflict(agent_id, model, expected, actual)
            live: dict[int, tuple[str, str]] = {}
            seqs = [v.seq for v in vectors]
            for start in range(0, len(seqs), _IN_CHUNK):
                part = seqs[start:start + _IN_CHUNK]
                live.update((seq, (agent_id, user)) for seq, agent_id, user in conn.execute(
                    f"SELECT seq, agent_id, user FROM events WHERE seq IN ({', '.join('?' * len(part))}) "
                    f"AND type IN ({MESSAGE_TYPES_SQL}) AND payload != ?", (*part, REDACTED)))
            streams: dict[tuple[str, str], list[MessageVector]] = {}
            for v in sorted(vectors, key=lambda v: v.seq):
                if live.get(v.seq) == (v.agent_id, v.user):
                    streams.setdefault((v.agent_id, v.user), []).append(v)
            stored = 0
            for (agent_id, user), kept in streams.items():
                block = _vectors.pack([v.seq for v in kept], [v.vector for v in kept])
                if _vectors.dimensions_of(block) != dimensions:
                    raise ValueError(f"vectors of {_vectors.dimensions_of(block)} dimensions were given for the model "
                                     f"{model!r} of {dimensions}")
                conn.execute("INSERT INTO vector_blocks (agent_id, user, model, first_seq, count, block) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (agent_id, user, model_id, kept[0].seq, len(kept), block))
                self._merge_newest_rows(agent_id, user, model_id)
                stored += len(kept)
            conn.executemany(
                "INSERT INTO embedding_cursors (agent_id, model, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (agent_id, model) DO UPDATE SET seq = excluded.seq",
                [(agent_id, model_id, new) for agent_id, (_expected, new) in cursors.items()])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return stored

    def _merge_newest_rows(self, agent_id: str, user: str, model_id: int) -> None:
        """Merge the newest rows of (agent_id, user, model_id) while the one before the last holds no more
        vectors than the last, up to MAX_BLOCK_VECTORS a row (see there)."""
        conn = self._conn
        rows = conn.execute("SELECT id, count FROM vector_blocks WHERE agent_id = ? AND user = ? AND model = ? "
                            "ORDER BY first_seq", (agent_id, user, model_id)).fetchall()
        while len(rows) >= 2:
            (before, n_before), (last, n_last) = rows[-2], rows[-1]
            if n_before > n_last or n_before + n_last > MAX_BLOCK_VECTORS:
                break
            blocks = dict(conn.execute("SELECT id, block FROM vector_blocks WHERE id IN (?, ?)", (before, last)))
            conn.execute("UPDATE vector_blocks SET block = ?, count = ? WHERE id = ?",
                         (_vectors.concat([blocks[before], blocks[last]]), n_before + n_last, before))
            conn.execute("DELETE FROM vector_blocks WHERE id = ?", (last,))
            rows[-2:] = [(before, n_before + n_last)]

    def drop_vectors(self, agent_id: str, *, keep_model: str | None = None) -> int:
        """Delete the vectors and cursors of `agent_id` under every model but `keep_model`; how many vectors went."""
        conn = self._conn
        keep = self._model(keep_model) if keep_model is not None else None
        keep_id = -1 if keep is None else keep[0]
        if conn.execute("SELECT 1 FROM embedding_cursors WHERE agent_id = ? AND model != ? UNION ALL "
                        "SELECT 1 FROM vector_blocks WHERE agent_id = ? AND model != ? LIMIT 1",
                        (agent_id, keep_id, agent_id, keep_id)).fetchone() is None:
            return 0  # nothing to drop: no write transaction
        conn.execute("BEGIN IMMEDIATE")
        try:
            (dropped,) = conn.execute("SELECT coalesce(sum(count), 0) FROM vector_blocks WHERE agent_id = ? "
                                      "AND model != ?", (agent_id, keep_id)).fetchone()
            conn.execute("DELETE FROM vector_blocks WHERE agent_id = ? AND model != ?", (agent_id, keep_id))
            conn.execute("DELETE FROM embedding_cursors WHERE agent_id = ? AND model != ?", (agent_id, keep_id))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return dropped

    def nearest(self, agent_id: str, user: str, model: str, vector: Sequence[float], limit: int, *,
                since_seq: int = 0, centred: bool = False) -> list[Hit]:
        """The `limit` messages of (agent_id, user) closest to `vector` under `model` (see `Recorder.nearest`):
        its rows of vectors read and scanned with numpy (`store._vectors.top_k`)."""
        found = self._model(model)
        if found is None or limit < 1:
            return []
        blocks = [block for (block,) in self._conn.execute(
            "SELECT block FROM vector_blocks WHERE agent_id = ? AND user = ? AND model = ?", (agent_id, user, found[0]))]
        if not blocks:
            return []
        unpacked = [_vectors.VectorBlock(block) for block in blocks]
        center = (_vectors.mean_vector(unpacked) if centred and sum(map(len, unpacked)) >= _vectors.CENTRE_FROM
                  else None)
        ranked = _vectors.top_k(vector, unpacked, limit, center=center, since_seq=since_seq)
        if not ranked:
            return []
        seqs = [seq for seq, _ in ranked]
        rows = {seq: (type_, content, at) for seq, type_, content, at in self._conn.execute(
            "SELECT seq, type, json_extract(payload, '$.content'), at FROM events "
            f"WHERE seq IN ({', '.join('?' * len(seqs))}) AND payload != ?", (*seqs, REDACTED))}
        return [Hit(seq, ROLE_OF_TYPE.get(rows[seq][0], "assistant"), rows[seq][1], rows[seq][2], score)
                for seq, score in ranked if seq in rows]

    # -- inspection (`RecorderInspection`): the index, the snapshots, the file -------------------

    def indexed_seqs(self, agent_id: str, user: str) -> set[int]:
        """The seqs of the messages of (agent_id, user) in the search index (its scope token's rows)."""
        return {row[0] for row in self._conn.execute(
            "SELECT rowid FROM memory_index WHERE memory_index MATCH ?", (f'"{scope_token(agent_id, user)}"',)
        )}

    def index_size(self) -> int:
        """How many rows the search index holds."""
        return self._conn.execute("SELECT count(*) FROM memory_index").fetchone()[0]

    def saved_snapshots(self) -> list[SavedSnapshot] | None:
        """Every saved snapshot; None for a log without the snapshots table (an older schema)."""
        conn = self._conn
        if not self._has_table("snapshots"):
            return None
        return [SavedSnapshot(*row) for row in conn.execute(
            "SELECT agent_id, user, window, seq, state FROM snapshots ORDER BY agent_id, user, window")]

    def _has_table(self, name: str) -> bool:
        return self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                  (name,)).fetchone() is not None

    def embedding_cursors(self) -> list[EmbeddingCursor]:
        """Every embedding cursor, by agent and model (none in a log of an older schema)."""
        if not self._has_table("embedding_cursors"):
            return []
        return [EmbeddingCursor(*row) for row in self._conn.execute(
            "SELECT c.agent_id, m.name, m.dimensions, c.seq FROM embedding_cursors c "
            "JOIN embedding_models m ON m.model = c.model ORDER BY c.agent_id, m.name")]

    def stored_vectors(self) -> Iterator[StoredVectors]:
        """The vectors stored per (agent, user, model), with what cannot be read in their rows."""
        if not self._has_table("vector_blocks"):
            return
        rows = self._conn.execute(
            "SELECT b.agent_id, b.user, b.model, m.name, m.dimensions, b.first_seq, b.count, b.block "
            "FROM vector_blocks b LEFT JOIN embedding_models m ON m.model = b.model "
            "ORDER BY b.agent_id, b.user, b.model, b.first_seq")
        key = None
        seqs: list[int] = []
        problems: list[str] = []
        for agent_id, user, model_id, name, dimensions, first_seq, count, block in rows:
            if (agent_id, user, model_id) != key:
                if key is not None:
                    yield StoredVectors(key[0], key[1], model_name, tuple(seqs), tuple(problems))
                key, model_name, seqs, problems = (agent_id, user, model_id), name or f"#{model_id}", [], []
                if name is None:
                    problems.append(f"vectors of model #{model_id}, which is not in embedding_models")
            try:
                unpacked = _vectors.VectorBlock(block)
            except (ValueError, TypeError) as exc:
                problems.append(f"a row of vectors from seq {first_seq} is unreadable: {exc}")
                continue
            if dimensions is not None and unpacked.dimensions != dimensions:
                problems.append(f"a row from seq {first_seq} holds vectors of {unpacked.dimensions} dimensions, "
                                f"the model's have {dimensions}")
            if len(unpacked) != count or (len(unpacked) and int(unpacked.seqs[0]) != first_seq):
                problems.append(f"a row from seq {first_seq} says it holds {count} vectors from seq {first_seq}; "
                                f"it holds {len(unpacked)}" + (f" from seq {int(unpacked.seqs[0])}" if len(unpacked) else ""))
            seqs.extend(int(s) for s in unpacked.seqs)
        if key is not None:
            yield StoredVectors(key[0], key[1], model_name, tuple(seqs), tuple(problems))

    def integrity_problems(self) -> list[str]:
        """What SQLite's `PRAGMA integrity_check` finds wrong (an empty list for "ok")."""
        rows = [row[0] for row in self._conn.execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else rows


if TYPE_CHECKING:  # type checking proves that EventLog is what the interfaces say (tests/test_types.py)

    def _a_recorder(log: EventLog) -> RecorderInspection:
        return log
