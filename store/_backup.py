"""`backup`: a consistent copy of an event log, taken through SQLite while a server may be writing to it.

Must not import trio, `actors` or `transport`.

Why not `cp`: a live log's committed pages are partly only in its `-wal` file until a checkpoint
copies them into the database file, and a copy of the file made while the server writes can mix
pages from before and after a commit (torn). Opening the file with anything but SQLite in the
server's process would even drop its locks (see `_schema._open_readonly`).

How: SQLite's online backup API copies the database page by page, a step at a time (so that
progress can be reported). A step that finds the source changed by another connection since the
previous one starts the copy again, so a stepwise copy of a busy log may never finish. Here the
source connection holds one read transaction from before the first step to after the last: every
step reads the same snapshot (in WAL mode that never blocks the writer; it only keeps the WAL
from being checkpointed past that snapshot, and so from being truncated, until the copy is done).
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from attrs import frozen

from ._schema import NotAnEventLog, _check_schema, connect_readonly, sqlite3

#: Pages copied per step of the backup (8 MiB at SQLite's 4 KiB pages); progress is reported after each step.
PAGES_PER_STEP = 2048


class BackupError(Exception):
    """The copy could not be made; the message says why. The target is left as it was."""


class TargetExists(BackupError):
    """The target exists and replacing it was not asked for."""


@frozen
class BackupReport:
    """What `backup` copied: the source as of one moment (`events` events, the last `last_seq`) into `target`."""

    source: str
    target: str
    events: int
    last_seq: int
    bytes: int
    seconds: float


def backup(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    replace: bool = False,
    progress: Callable[[int, int], None] | None = None,
    pages_per_step: int | None = None,
) -> BackupReport:
    """Copy the agentcast log `source` to `target` as of one moment, while a server may write to `source`.

    The copy is written to a temporary file beside `target`, checked (SQLite's integrity_check, our
    application_id and schema, the same events as the source's snapshot), fsynced, and only then
    renamed into place: `target` is either the whole copy or as it was. An existing `target` is
    refused (`TargetExists`) unless `replace`. `progress(copied_bytes, total_bytes)` is called after
    every step of `pages_per_step` pages (default `PAGES_PER_STEP`). A missing source raises
    `MissingEventLog`, one that is not an agentcast log `NotAnEventLog`; a target that cannot be
    written raises `BackupError` or `OSError`. The copy's file is readable by its owner only (0600).
    """
    started = time.monotonic()
    src, dst = Path(source), Path(target)
    pages_per_step = pages_per_step or PAGES_PER_STEP
    conn = connect_readonly(src, allow_pending=True)  # an older schema is copied as it is
    partial: Path | None = None
    try:
        _check_target(src, dst, replace)
        conn.execute("BEGIN")  # one snapshot for every step (see the module's docstring)
        events, last_seq = conn.execute("SELECT count(*), coalesce(max(seq), 0) FROM events").fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
        os.close(fd)
        partial = Path(name)
        out = sqlite3.connect(os.fspath(partial), isolation_level=None)
        try:
            if progress is None:
                conn.backup(out, pages=pages_per_step)
            else:
                conn.backup(out, pages=pages_per_step,
                            progress=lambda _status, remaining, total: progress((total - remaining) * page_size,
                                                                                total * page_size))
        finally:
            out.close()
        conn.execute("COMMIT")  # the source's WAL may be checkpointed again from here
        check = sqlite3.connect(os.fspath(partial), isolation_level=None)  # reads the copy back from the file
        try:
            _check_copy(check, partial, events, last_seq)
        finally:
            check.close()  # the last connection to the copy: SQLite removes the -wal and -shm it made
        _fsync(partial)
        _place(partial, dst, replace)
        partial = None
        _fsync(dst.parent)
    finally:
        conn.close()
        if partial is not None:
            for leftover in (partial, *(Path(f"{partial}{suffix}") for suffix in ("-journal", "-wal", "-shm"))):
                leftover.unlink(missing_ok=True)
    return BackupReport(os.fspath(src), os.fspath(dst), events, last_seq, dst.stat().st_size,
                        time.monotonic() - started)


def _check_target(src: Path, dst: Path, replace: bool) -> None:
    if dst.is_dir():
        raise BackupError(f"{dst} is a directory; give the path of the file to write")
    if not dst.parent.is_dir():
        raise BackupError(f"{dst.parent}: no such directory")
    if dst.exists() and os.path.samefile(src, dst):
        raise BackupError(f"{dst} is the log being copied")
    for companion in (Path(f"{dst}-wal"), Path(f"{dst}-journal")):
        if companion.exists() and companion.stat().st_size > 0:
            # SQLite would apply it to the new file when opening it: a different database's pages
            raise BackupError(f"{companion} exists: {dst} is open in some program or was not closed cleanly; "
                              "choose another target")
    if dst.exists():
        if not dst.is_file():
            raise BackupError(f"{dst} is not a regular file")
        if not replace:
            raise TargetExists(f"{dst} exists")


def _check_copy(conn, path: Path, events: int, last_seq: int) -> None:
    """Raise `BackupError` unless the copy (`conn` on `path`) is a sound agentcast log holding the source's events."""
    try:
        _check_schema(conn, path, allow_pending=True)
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        copied = conn.execute("SELECT count(*), coalesce(max(seq), 0) FROM events").fetchone()
    except (NotAnEventLog, sqlite3.DatabaseError) as exc:
        raise BackupError(f"the copy cannot be read back as an agentcast log: {exc}") from None
    if problems != ["ok"]:
        raise BackupError(f"the copy failed SQLite's integrity check: {'; '.join(problems[:5])}")
    if copied != (events, last_seq):
        raise BackupError(f"the copy holds {copied[0]} events up to seq {copied[1]}, "
                          f"the source {events} up to seq {last_seq}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _place(partial: Path, dst: Path, replace: bool) -> None:
    """Move the finished copy to `dst`: over it if `replace`, else only if `dst` still does not exist."""
    if replace:
        os.replace(partial, dst)
        return
    try:
        os.link(partial, dst)  # fails if dst appeared meanwhile, where a rename would overwrite it
    except FileExistsError:
        raise TargetExists(f"{dst} exists") from None
    except OSError:  # a file system without hard links
        if dst.exists():
            raise TargetExists(f"{dst} exists") from None
        os.replace(partial, dst)
        return
    partial.unlink()
