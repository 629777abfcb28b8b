"""A live database among other processes (issue 13 §1): a process holding SQLite connections never opens the
file by other means (POSIX drops all of a process's locks on a file when any descriptor of it is closed),
so an outside process that opens, reads and closes the log while the server runs cannot delete the WAL
under it and lose acknowledged turns."""
from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from agentcast.store import EventLog, NotAnEventLog, UserSaid
from support import dbguard, scaled
from support.process import cli, connect, replay_json

#: Chat rounds (a turn of each of two users per round) while an outside process reads the log.
ROUNDS = 6

#: An outside process: opens the database with the stdlib's sqlite3 module, reads, closes; again and again.
#: It prints a line after each close, and stops when its stdin closes.
OUTSIDE_READER = """
import sqlite3, sys, threading, time
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
while not stop.is_set():
    conn = sqlite3.connect(sys.argv[1], timeout=10)
    (count,) = conn.execute("SELECT count(*) FROM events").fetchone()
    conn.close()
    print(count, flush=True)
    time.sleep(0.005)
"""


def test_the_guard_refuses_a_python_open_of_a_live_database_file(tmp_path):
    db = tmp_path / "g.db"
    log = EventLog.open(db)
    log.append([[UserSaid("a", "u", "t", "hello")]])
    try:
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            with pytest.raises(dbguard.DatabaseFileOpened):
                path.read_bytes()
        assert len(dbguard.take_violations()) == 3  # taken: this test provoked them on purpose
    finally:
        log.close()
    assert db.read_bytes().startswith(b"SQLite format 3\x00")  # closed: nothing to guard any more


def test_readers_opened_beside_the_writer_never_open_the_file_outside_sqlite(tmp_path):
    """What the server does (its journal opens read-only readers while its writer is open), under the guard:
    the header and schema of each reader's file are checked through SQLite alone."""
    db = tmp_path / "r.db"
    with EventLog.open(db) as writer:
        writer.append([[UserSaid("a", "u", "t", "hello")]])
        readers = [EventLog.open(db, readonly=True) for _ in range(3)]
        for reader in readers:
            assert [r.event.content for r in reader.read()] == ["hello"]
            reader.close()
        writer.append([[UserSaid("a", "u", "t", "again")]])
    assert dbguard.take_violations() == []


@pytest.mark.parametrize("content", [b"", b"not a database", b"SQLite format 3"], ids=["empty", "text", "short-header"])
def test_a_file_that_is_not_a_log_is_refused_read_only_by_sqlite_and_left_untouched(tmp_path, content):
    db = tmp_path / "other.db"
    db.write_bytes(content)
    with pytest.raises(NotAnEventLog, match="refusing to touch it"):
        EventLog.open(db, readonly=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"] and db.read_bytes() == content


async def _count_lines(stream: asyncio.StreamReader, seen: list[int]) -> None:
    while line := await stream.readline():
        seen.append(int(line))


@pytest.mark.process
def test_an_outside_process_reading_the_live_log_loses_no_acknowledged_turn(tmp_path, serve):
    db = tmp_path / "agentcast.db"
    server = serve(db)
    acked: list[tuple[str, str, int, str]] = []  # (user, message, seq, answer) of every turn a client saw done

    async def scenario() -> None:
        reader = await asyncio.create_subprocess_exec(
            sys.executable, "-c", OUTSIDE_READER, str(db),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        reads: list[int] = []
        counting = asyncio.ensure_future(_count_lines(reader.stdout, reads))
        try:
            async with connect(server.url) as alice, connect(server.url) as bob:
                await alice.set_user("alice")
                await bob.set_user("bob")
                for i in range(ROUNDS):
                    for user, client in (("alice", alice), ("bob", bob)):
                        text = f"{user} says {i}"
                        response = await client.chat(text)
                        acked.append((user, text, response["seq"], response["message"]))
                    # at least two more outside open-read-close cycles before the next round
                    wanted = len(reads) + 2
                    async with asyncio.timeout(scaled(10)):
                        while len(reads) < wanted:
                            await asyncio.sleep(0.005)
        finally:
            reader.stdin.close()
            async with asyncio.timeout(scaled(10)):
                await reader.wait()
                await counting
        assert reader.returncode == 0
        assert reads and reads == sorted(reads), reads  # it saw the log grow

    asyncio.run(scenario())
    server.signal(signal.SIGKILL)
    assert server.wait() == -signal.SIGKILL

    restarted = serve(db)
    logged = {}
    for memory in replay_json(db)["memories"]:
        for m in memory["long_term"]:
            logged[m["seq"]] = (memory["user"], m["role"], m["content"])
    missing = [(user, text, seq) for user, text, seq, answer in acked if logged.get(seq) != (user, "assistant", answer)
               or logged.get(seq - 1) != (user, "user", text)]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged turns are not in the log after the restart: {missing}"
    assert restarted.stop() == 0
    result = cli("replay", "verify", "--db", str(db), cwd=tmp_path)
    assert result.returncode == 0 and "verify: ok" in result.stdout, result.stdout + result.stderr
