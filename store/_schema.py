"""The database file: recognising an agentcast log, creating it and migrating its schema.

Must not import trio, `actors` or `transport`.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations
from sqlite_utils.utils import sqlite3  # pysqlite3 (a newer SQLite) when installed, else the stdlib

from ._events import ACTIVITY_TYPES, REDACTED, redacted_payload
from ._terms import index_is_current, reindex

#: FTS5 can remove a deleted row's tokens from its index in place from SQLite 3.42 on (the
#: pysqlite3-binary wheel brings a current SQLite; the stdlib's may be older). Without it the
#: index is rewritten ('optimize') after each forgetting instead.
FTS5_SECURE_DELETE = sqlite3.sqlite_version_info >= (3, 42, 0)

#: Pages of WAL after which a commit copies it into the database (SQLite's default is 1,000).
WAL_AUTOCHECKPOINT = 10_000

#: The writer connection's page cache, in KiB (SQLite's default is 2 MiB; readers keep it).
WRITER_CACHE_KIB = 32 * 1024

#: PRAGMA application_id of every agentcast log: "AGCT".
APPLICATION_ID = 0x41474354

#: SQLite's result code for a file whose header is not SQLite's ("file is not a database").
SQLITE_NOTADB = 26

migrations = Migrations("agentcast")


@migrations()
def m001_event_log(db: Database) -> None:
    """The append-only event log and the full-text index of remembered messages."""
    db.execute(
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            type TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            user TEXT NOT NULL,
            payload TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX events_by_stream ON events (agent_id, user, seq)")
    # rowid = seq of the message event; `scope` is one token naming the (agent, user),
    # so that a search filters by user inside the MATCH itself.
    db.execute("CREATE VIRTUAL TABLE memory_fts USING fts5(content, scope)")
    db.execute("INSERT INTO memory_fts (memory_fts, rank) VALUES ('rank', 'bm25(1.0, 0.0)')")


@migrations()
def m002_command_ids(db: Database) -> None:
    """Chat commands may carry a client-chosen id, so that a retry is answered from the log."""
    db.execute("ALTER TABLE events ADD COLUMN command_id TEXT")
    db.execute("CREATE INDEX events_by_command ON events (agent_id, user, command_id) WHERE command_id IS NOT NULL")


@migrations()
def m003_snapshots(db: Database) -> None:
    """Memory snapshots: a lane with a long history starts from its latest one."""
    db.execute(
        """
        CREATE TABLE snapshots (
            agent_id TEXT NOT NULL,
            user TEXT NOT NULL,
            window INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            state TEXT NOT NULL,
            PRIMARY KEY (agent_id, user, window)
        )
        """
    )


@migrations()
def m004_search_index_by_user(db: Database) -> None:
    """The search index becomes `memory_index`: one term per (agent, user, word), contentless.

    A search then reads only the user's own postings, even for words every user uses (in
    `memory_fts`, "the" had one list of every message of every user, which a search for it read
    whole to rank it). The index no longer keeps the text (a search takes it from the event); it
    is filled from the log and `memory_fts` is dropped. `memory_index_words` records the Unicode
    version the terms were made with (see `store._terms.index_is_current`).
    """
    db.execute("CREATE VIRTUAL TABLE memory_index USING fts5(terms, content='')")
    db.execute("CREATE TABLE memory_index_words (unicode TEXT NOT NULL)")
    reindex(db.conn)
    db.execute("DROP TABLE memory_fts")


@migrations()
def m005_forgotten_client_ids(db: Database) -> None:
    """Forgotten events lose the ids their client chose, as a long-term clear now erases them
    (`EventLog._forget`): the `command_id` (column and payload) and, in a turn's activity, the
    `request_id` of every event a clear redacted before this version. Runs with secure_delete on."""
    conn = db.conn
    conn.execute("UPDATE events SET command_id = NULL WHERE command_id IS NOT NULL AND payload = ?", (REDACTED,))
    activity = ", ".join(f"'{t}'" for t in sorted(ACTIVITY_TYPES))
    rows = conn.execute(
        f"SELECT seq, type, payload FROM events WHERE type IN ({activity}) "
        "AND json_extract(payload, '$.redacted') = 1 "
        "AND (command_id IS NOT NULL OR json_type(payload, '$.request_id') IS NOT NULL "
        "OR json_type(payload, '$.command_id') IS NOT NULL)"
    ).fetchall()
    conn.executemany("UPDATE events SET payload = ?, command_id = NULL WHERE seq = ?",
                     [(redacted_payload(type_, payload), seq) for seq, type_, payload in rows])


@migrations()
def m006_message_vectors(db: Database) -> None:
    """Semantic memory: the messages' vectors, a projection kept by an embedding worker (`EventLog.add_vectors`).

    `embedding_models` names each model whose vectors are stored (a model change makes a new one);
    `embedding_cursors` says, per agent and model, up to which seq every remembered message has its vector;
    `vector_blocks` holds the vectors, packed in blocks per (agent, user, model) (`store._vectors`: int8 and a
    scale each, with the message's seq), ordered by the first seq they hold. Nothing is filled here: the
    worker embeds the existing log from seq 0 (the search stays lexical until then).
    """
    db.execute("CREATE TABLE embedding_models (model INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
               "dimensions INTEGER NOT NULL)")
    db.execute("CREATE TABLE embedding_cursors (agent_id TEXT NOT NULL, model INTEGER NOT NULL, seq INTEGER NOT NULL, "
               "PRIMARY KEY (agent_id, model)) WITHOUT ROWID")
    db.execute(
        """
        CREATE TABLE vector_blocks (
            id INTEGER PRIMARY KEY,
            agent_id TEXT NOT NULL,
            user TEXT NOT NULL,
            model INTEGER NOT NULL,
            first_seq INTEGER NOT NULL,
            count INTEGER NOT NULL,
            block BLOB NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX vector_blocks_by_stream ON vector_blocks (agent_id, user, model, first_seq)")


class NotAnEventLog(Exception):
    """The file exists but is not an agentcast event log (or is one from a newer version)."""


class MissingEventLog(FileNotFoundError):
    """The file does not exist and was not to be created."""


def _is_not_a_database(exc: sqlite3.DatabaseError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == SQLITE_NOTADB or "file is not a database" in str(exc)


def _check_schema(conn: sqlite3.Connection, path: Path, *, allow_pending: bool) -> None:
    """Raise `NotAnEventLog` unless `conn` holds an agentcast log this version can read."""
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    if app_id != APPLICATION_ID:
        raise NotAnEventLog(f"{path} is a SQLite database but not an agentcast event log; refusing to touch it")
    db = Database(conn)
    known = {m.name for m in migrations._migrations}
    applied = [m.name for m in migrations.applied(db)]
    unknown = [name for name in applied if name not in known]
    if unknown:
        raise NotAnEventLog(
            f"{path} was written by a newer agentcast (schema migrations {', '.join(unknown)}); upgrade agentcast"
        )
    if not allow_pending and migrations.pending(db):
        raise NotAnEventLog(f"{path} has an older schema; open it once with `agentcast serve` to upgrade it")


def _open_readonly(p: Path, *, allow_pending: bool) -> sqlite3.Connection:
    """A read-only connection to the agentcast log `p`, checked (`_check_schema`); never writes to the file.

    The file is only ever read through SQLite, never with `open()`: SQLite's locks are POSIX advisory
    locks, and closing *any* descriptor of the file drops every lock this process holds on it, after
    which another process closing its last connection would delete the WAL under this process's
    open connections (the server opens readers while its writer is open). A file that is not
    SQLite's is recognised by SQLite itself ("file is not a database"), read-only, untouched.
    """
    if p.stat().st_size == 0:  # SQLite would take it for an empty database
        raise NotAnEventLog(f"{p} is an empty file, not an agentcast event log; refusing to touch it")
    uri = "file:" + quote(str(p.resolve())) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        _check_schema(conn, p, allow_pending=allow_pending)
    except sqlite3.DatabaseError as exc:  # not SQLite's, a damaged file, or one that only looks like SQLite
        conn.close()
        if _is_not_a_database(exc):
            raise NotAnEventLog(f"{p} is not a SQLite database; refusing to touch it") from None
        raise NotAnEventLog(f"{p}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def connect_readonly(path: str | os.PathLike, *, allow_pending: bool = False) -> sqlite3.Connection:
    """Open an existing log for reading only; never creates or modifies the file.

    A log of an older schema is refused (it is read with the newest queries) unless `allow_pending`.
    """
    p = Path(path)
    if p.exists() and not p.is_file():
        raise NotAnEventLog(f"{p} is not a regular file")
    if not p.exists():
        raise MissingEventLog(f"{p}: no such database file")
    return _open_readonly(p, allow_pending=allow_pending)


def connect_writable(path: str | os.PathLike, *, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """Open (creating if absent) a log for appending, migrating its schema to this version.

    An existing file that is not an agentcast log raises `NotAnEventLog` and is not modified.
    `synchronous` is SQLite's: NORMAL survives a crash of the process, FULL also a power loss.
    """
    p = Path(path)
    if p.exists() and not p.is_file():
        raise NotAnEventLog(f"{p} is not a regular file")
    if p.exists() and p.stat().st_size > 0:
        _open_readonly(p, allow_pending=True).close()
    try:
        conn = sqlite3.connect(str(p), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:
        raise OSError(f"cannot open the database {p}: {exc}") from None
    try:
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        # Deleted and overwritten content is zeroed in the file, not just unlinked (forgetting).
        conn.execute("PRAGMA secure_delete=ON")
        # The WAL is copied into the database every WAL_AUTOCHECKPOINT pages instead of SQLite's 1,000:
        # a page the index rewrites at many commits (B-tree leaves, FTS5 segments being merged) is
        # copied once per checkpoint, so appends write and read about a quarter less. Durability is
        # the same (the WAL is the log); the WAL file grows to ~40 MB between checkpoints.
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
        # The writer's page cache holds the pages appends touch (each user's leaf of the stream and
        # command indexes, the newest index segments) instead of reading them back from the file:
        # with SQLite's 2 MB, appends read ~10 KB per event from the OS; with this, ~1 KB.
        conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        db = Database(conn)
        if migrations.pending(db):
            with db.atomic():
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            migrations.apply(db)
        if FTS5_SECURE_DELETE:  # a persistent setting of the index; older SQLite versions ignore it
            conn.execute("INSERT INTO memory_index (memory_index, rank) VALUES ('secure-delete', 1)")
        if not index_is_current(conn):  # made by a Python with another Unicode version: made again
            with db.atomic():
                reindex(conn)
    except BaseException:
        conn.close()
        raise
    return conn
