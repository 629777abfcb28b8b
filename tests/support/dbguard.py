"""The test suite's guard against opening a live database file behind SQLite's back.

SQLite's locks are POSIX advisory locks, which a process loses, all of them, as soon as it closes
*any* descriptor of the file: a Python `open()` of the database (or of its `-wal`, `-shm`,
`-journal`) in a process that holds SQLite connections to it leaves that process without locks,
and the next outside connection to close then deletes the WAL under it. `install()` adds an audit
hook that refuses (and records) every Python-level open (`builtins.open`, `io.open`, `os.open`,
`Path.read_bytes`...) of such a file while a connection to it is open in this process; the
conftest fails the test that did it. Connections are tracked as they are made, by wrapping the
`connect` of the sqlite3 module the store uses (pysqlite3) and of the stdlib's.
"""
from __future__ import annotations

import os
import sys
import threading
import traceback
import weakref

#: The companions SQLite keeps beside a database file.
SUFFIXES = ("-wal", "-shm", "-journal")

#: Every violation since the last `take_violations()`: a description with the stack that opened the file.
_violations: list[str] = []
#: (weak reference to a connection, the real path of its database file)
_connections: list[tuple[weakref.ref, str]] = []
_lock = threading.RLock()
_wrapped: dict = {}  # each module's original `connect` -> its wrapper
_inside = threading.local()  # set while the hook itself runs (it must not audit its own work)


class DatabaseFileOpened(RuntimeError):
    """A file that SQLite holds open in this process was opened by other means."""


def _path_of(database: object) -> str | None:
    """The real path of the file a `connect(database)` opens, or None (in memory, a temporary database)."""
    try:
        name = os.fsdecode(os.fspath(database))
    except TypeError:
        return None
    if name.startswith("file:"):
        name = name[len("file:"):].split("?", 1)[0].split("#", 1)[0]
        from urllib.parse import unquote

        name = unquote(name)
        if name.startswith("//"):  # file://host/path: only an empty host or localhost is allowed
            name = "/" + name[2:].split("/", 1)[1] if "/" in name[2:] else ""
    if name in ("", ":memory:"):
        return None
    return os.path.realpath(name)


def _track(conn: object, database: object) -> None:
    path = _path_of(database)
    if path is None:
        return
    with _lock:
        _connections[:] = [(ref, p) for ref, p in _connections if _is_open(ref())]
        _connections.append((weakref.ref(conn), path))


def _is_open(conn: object) -> bool:
    if conn is None:
        return False
    try:
        conn.in_transaction  # raises ProgrammingError on a closed connection (from any thread)
    except Exception:
        return False
    return True


def _live_paths() -> set[str]:
    with _lock:
        return {p for ref, p in _connections if _is_open(ref())}


def _hook(event: str, args: tuple) -> None:
    if event == "open":
        if not _connections or getattr(_inside, "active", False):
            return
        _inside.active = True
        try:
            _check_open(args[0])
        finally:
            _inside.active = False


def _check_open(target: object) -> None:
    if isinstance(target, int):
        return
    try:
        path = os.path.realpath(os.fsdecode(os.fspath(target)))
    except (TypeError, ValueError):
        return
    base = path
    for suffix in SUFFIXES:
        if path.endswith(suffix):
            base = path[: -len(suffix)]
            break
    if base not in _live_paths():
        return
    stack = "".join(traceback.format_stack(sys._getframe(2), limit=12))
    message = (f"{path} was opened with a Python open() while a SQLite connection to {base} is open in this "
               f"process: closing it drops every SQLite lock the process holds on the database "
               f"(read it through SQLite, or from another process)\n{stack}")
    _violations.append(message)
    raise DatabaseFileOpened(message)


def _wrap_connect(module) -> None:
    original = module.connect
    if getattr(original, "_dbguard", False):
        return
    wrapped = _wrapped.get(original)
    if wrapped is not None:  # the same function under another module's name (`sqlite3.dbapi2.connect`)
        module.connect = wrapped
        return
    # A subclass made in Python takes weak references (pysqlite3's own `Connection` does not).
    tracked = type("Connection", (module.Connection,), {"__module__": __name__})

    def connect(database, *args, **kwargs):
        if "factory" not in kwargs and len(args) < 5:
            kwargs["factory"] = tracked
        conn = original(database, *args, **kwargs)
        try:
            _track(conn, database)
        except TypeError:  # a factory of the caller's own that takes no weak reference
            pass
        return conn

    connect._dbguard = True
    _wrapped[original] = connect
    module.connect = connect


def install() -> None:
    """Add the audit hook (once per process) and track the store's sqlite3 module's connections."""
    if getattr(install, "done", False):
        return
    install.done = True
    import sqlite3
    import sqlite3.dbapi2

    from sqlite_utils.utils import sqlite3 as store_sqlite3

    modules = [sqlite3, sqlite3.dbapi2, store_sqlite3]
    dbapi2 = sys.modules.get(store_sqlite3.__name__ + ".dbapi2")
    if dbapi2 is not None:
        modules.append(dbapi2)
    for module in modules:
        _wrap_connect(module)
    sys.addaudithook(_hook)


def take_violations() -> list[str]:
    """The violations recorded since the last call (and forget them)."""
    found = _violations[:]
    del _violations[:]
    return found
