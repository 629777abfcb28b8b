"""Forgetting that really forgets: after a long-term clear, the cleared text is gone from the raw
bytes of the database and its WAL (FTS5 shadow tables included), other users' text is intact.

The bytes are read by another process (`support.on_disk`): reading them here, while this process
has the log open, would drop its SQLite locks (see support/dbguard.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from agentcast.store import _sqlite as store_log
from agentcast.store import _schema as store_schema
import hashlib

import numpy as np

from agentcast.actors import AgentSpec, EchoBrain, embedder_choice
from agentcast.store import AgentAnswered, EventLog, FactRemembered, MessageVector, UserClearedMemory, ToolCalled, ToolReturned, TurnEnded, UserSaid, verify
from agentcast.store import _vectors
from support import connect, on_disk, running_server, scaled
from support.embedders import FakeEmbeddings
from support.process import cli

#: Every test here runs a real process (see support/process.py).
pytestmark = pytest.mark.process

A_MARK = "zqxalphamarker"
B_MARK = "zqxbetamarker"


def found_on_disk(db, *marks: str | bytes) -> set:
    """Which of `marks` occur somewhere in the bytes SQLite keeps for `db` (file, -wal, -shm)."""
    return {mark for mark, count in on_disk(db, *marks).items() if count}


def noise_vector(text: str, dimensions: int = 64) -> list[float]:
    """A vector of random numbers seeded by `text`: its int8 components are a byte string found nowhere else."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")).standard_normal(
        dimensions).tolist()


def stored_bytes(vector) -> bytes:
    """The int8 components of `vector` as a vector row stores them (store._vectors' records)."""
    components, _ = _vectors.quantise([vector])
    return components[0].tobytes()


def fill(log: EventLog, user: str, mark: str, n: int) -> None:
    for i in range(n):  # many small commits: many FTS segments, many WAL frames
        log.append([[UserSaid("a", user, "t", f"note {i} about {mark} and more"),
                     AgentAnswered("a", user, "t", f"You said: note {i} about {mark}")]])


@pytest.fixture(params=[True, False], ids=["fts5-secure-delete", "fts5-optimize-fallback"])
def fts_mode(request, monkeypatch):
    if request.param and not store_schema.FTS5_SECURE_DELETE:
        pytest.skip("this SQLite has no FTS5 secure-delete (needs 3.42; pysqlite3-binary brings it)")
    monkeypatch.setattr(store_schema, "FTS5_SECURE_DELETE", request.param)
    monkeypatch.setattr(store_log, "FTS5_SECURE_DELETE", request.param)
    return request.param


def test_a_long_term_clear_erases_the_text_from_every_byte_on_disk(tmp_path, fts_mode):
    db = tmp_path / "f.db"
    log = EventLog.open(db)
    fill(log, "A", A_MARK, 60)
    fill(log, "B", B_MARK, 60)
    assert found_on_disk(db, A_MARK, B_MARK) == {A_MARK, B_MARK}
    (rec,), = log.append([[UserClearedMemory("a", "A", "t", True)]])
    assert found_on_disk(db, A_MARK, B_MARK) == {B_MARK}
    # the log keeps every row and sequence number; A's messages lost their text
    events = list(log.read(user="A"))
    assert [r.seq for r in events] == sorted(r.seq for r in events) and len(events) == 121
    assert all(r.event.content == "" for r in events if hasattr(r.event, "content"))
    assert log.search("a", "B", B_MARK, 5)
    assert not log.search("a", "A", A_MARK, 5)
    log.close()
    reopened = EventLog.open(db)
    fill(reopened, "A", "fresh", 1)
    reopened.close()
    assert found_on_disk(db, A_MARK, B_MARK) == {B_MARK}


def test_a_long_term_clear_erases_the_users_vectors_from_every_byte_on_disk(tmp_path, fts_mode):
    db = tmp_path / "v.db"
    log = EventLog.open(db)
    fill(log, "A", A_MARK, 40)
    fill(log, "B", B_MARK, 40)
    cursor = 0
    for _ in range(16):  # many small writes: rows merged and rewritten, many WAL frames
        found = log.unembedded(["a"], cursor, 10)
        log.add_vectors("noise", 64, [MessageVector(t.seq, t.agent_id, t.user, noise_vector(t.text))
                                      for t in found.texts], {"a": (cursor, found.scanned_to)})
        cursor = found.scanned_to
    texts = {user: [r.event.content for r in log.read(user=user)] for user in ("A", "B")}
    a_bytes = {stored_bytes(noise_vector(t)) for t in texts["A"]}
    b_bytes = {stored_bytes(noise_vector(t)) for t in texts["B"]}
    assert found_on_disk(db, *a_bytes, *b_bytes) == a_bytes | b_bytes
    log.append([[UserClearedMemory("a", "A", "t", True)]])
    assert found_on_disk(db, *a_bytes, *b_bytes) == b_bytes  # no byte of A's vectors left, B's all there
    assert log.nearest("a", "A", "noise", noise_vector(texts["A"][0]), 5) == []
    assert verify(log).ok
    log.close()
    assert found_on_disk(db, *a_bytes, *b_bytes) == b_bytes


async def five_turns_each(a, b) -> None:
    """Connection `a` as user A and `b` as user B, each chatting five turns with my_agent that carry its mark."""
    await a.request({"type": "set_user", "user_id": "A"}, "user_set")
    await b.request({"type": "set_user", "user_id": "B"}, "user_set")
    for i in range(5):
        await a.request({"type": "chat", "agent_id": "my_agent", "message": f"{A_MARK} {i}"}, "agent_done")
        await b.request({"type": "chat", "agent_id": "my_agent", "message": f"{B_MARK} {i}"}, "agent_done")


async def test_once_memory_cleared_arrives_the_vectors_are_gone_too(db_path, nursery):
    db = Path(db_path)
    fake = await FakeEmbeddings(dimensions=64, vector_of=noise_vector).start(nursery)
    spec = AgentSpec("my_agent", EchoBrain(), embedder=embedder_choice(fake.settings()))
    async with running_server(db_path, [spec]) as server:
        async with connect(server.port) as a, connect(server.port) as b:
            await five_turns_each(a, b)
            await server.embedding[0].caught_up()
            embedded = [t for texts in fake.inputs for t in texts]
            a_bytes = {stored_bytes(noise_vector(t)) for t in embedded if A_MARK in t}
            b_bytes = {stored_bytes(noise_vector(t)) for t in embedded if B_MARK in t}
            assert len(a_bytes) == len(b_bytes) == 10  # each user's messages and answers
            assert found_on_disk(db, *a_bytes, *b_bytes) == a_bytes | b_bytes
            await a.request({"type": "clear_memory", "agent_id": "my_agent", "clear_long_term": True}, "memory_cleared")
            assert found_on_disk(db, A_MARK, *a_bytes, *b_bytes) == b_bytes  # the server still running
    assert found_on_disk(db, A_MARK, *a_bytes, *b_bytes) == b_bytes


def turn_marks(user: str) -> dict[str, str]:
    """Words that only (a, `user`)'s fact, tool arguments, tool result, tool error and partial answer say."""
    return {kind: f"zqx{kind}{user.lower()}marker" for kind in ("fact", "args", "result", "error", "partial")}


def a_real_turn(user: str, i: int) -> list:
    """What a real model's turn logs: a message, a `remember` tool call, the fact, the tool's result,
    a failing tool, the answer; then a cancelled turn with a partial answer."""
    m = turn_marks(user)
    return [
        UserSaid("a", user, "t", f"remember that I like tea {i}", f"r{i}"),
        ToolCalled("a", user, "t", f"c{i}", "remember", {"fact": f"likes {m['args']} {i}"}, f"r{i}"),
        FactRemembered("a", user, "t", f"likes {m['fact']} tea, thé {i}", f"r{i}"),
        ToolReturned("a", user, "t", f"c{i}", "remember", {"remembered": f"{m['result']} {i}"}, None, f"r{i}"),
        ToolCalled("a", user, "t", f"d{i}", "search_memory", "{not json", f"r{i}"),
        ToolReturned("a", user, "t", f"d{i}", "search_memory", None, f"bad arguments {m['error']}", f"r{i}"),
        AgentAnswered("a", user, "t", "Noted.", f"r{i}"),
        UserSaid("a", user, "t", "tell me a story", f"s{i}"),
        TurnEnded("a", user, "t", "cancelled", f"Once upon a {m['partial']}", "", f"s{i}"),
    ]


def test_a_long_term_clear_erases_facts_tool_arguments_results_and_partial_answers_from_every_byte(
        tmp_path, fts_mode):
    db = tmp_path / "t.db"
    with EventLog.open(db) as log:
        for i in range(20):  # many commits: many FTS segments, many WAL frames
            log.append([a_real_turn("A", i)])
            log.append([a_real_turn("B", i)])
        a_marks, b_marks = set(turn_marks("A").values()), set(turn_marks("B").values())
        assert found_on_disk(db, *a_marks, *b_marks) == a_marks | b_marks
        fact_a, fact_b = turn_marks("A")["fact"], turn_marks("B")["fact"]
        assert {h.role for h in log.search("a", "A", fact_a, 5)} == {"fact"}  # a fact is found by search
        assert log.search("a", "A", turn_marks("A")["args"], 5) == []  # a turn's activity is not memory
        (rec,), = log.append([[UserClearedMemory("a", "A", "t", True)]])
        assert found_on_disk(db, *a_marks, *b_marks) == b_marks
        assert log.search("a", "A", fact_a, 5) == [] and log.search("a", "A", "tea", 5) == []
        assert {h.role for h in log.search("a", "B", fact_b, 5)} == {"fact"}  # B's are intact
        # the index holds nothing of A's any more (its rows were deleted with their own terms)
        assert log._conn.execute("SELECT count(*) FROM memory_index WHERE memory_index MATCH ?",
                                 (f'"{store_log.scope_token("a", "A")}"',)).fetchone() == (0,)
        report = verify(log)
        assert report.ok, report.as_json()
        log.append([a_real_turn("A", 99)])  # remembering again after the clear
        assert [h.content for h in log.search("a", "A", fact_a, 5)] == [f"likes {fact_a} tea, thé 99"]
        assert verify(log).ok


def test_a_short_term_clear_erases_nothing(tmp_path):
    db = tmp_path / "s.db"
    with EventLog.open(db) as log:
        fill(log, "A", A_MARK, 3)
        log.append([[UserClearedMemory("a", "A", "t", False)]])
        assert log.search("a", "A", A_MARK, 10)
    assert found_on_disk(db, A_MARK) == {A_MARK}


async def test_once_memory_cleared_arrives_the_text_is_gone_and_stays_gone(db_path):
    db = Path(db_path)
    async with running_server(db_path) as server:
        async with connect(server.port) as a, connect(server.port) as b:
            await five_turns_each(a, b)
            await a.request({"type": "search_memory", "agent_id": "my_agent", "query": A_MARK}, "memory_results")
            (cleared,) = await a.request(
                {"type": "clear_memory", "agent_id": "my_agent", "clear_long_term": True}, "memory_cleared")
            assert cleared["forgotten"] == 10
            assert found_on_disk(db, A_MARK, B_MARK) == {B_MARK}  # the server (and its readers) still running
            (short,) = await a.request({"type": "clear_memory", "agent_id": "my_agent"}, "memory_cleared")
            assert short["forgotten"] == 0
    assert found_on_disk(db, A_MARK, B_MARK) == {B_MARK}
    async with running_server(db_path) as server, connect(server.port) as a:
        await a.request({"type": "set_user", "user_id": "A"}, "user_set")
        (found,) = await a.request({"type": "search_memory", "agent_id": "my_agent", "query": A_MARK}, "memory_results")
        assert found["results"] == []
    assert found_on_disk(db, A_MARK, B_MARK) == {B_MARK}


def test_a_reader_holding_an_old_snapshot_delays_the_wal_truncation_not_the_writer(tmp_path):
    db = tmp_path / "r.db"
    log = EventLog.open(db)
    fill(log, "A", A_MARK, 5)
    reader = EventLog.open(db, readonly=True)
    with reader.snapshot():
        list(reader.read())  # holds a read transaction on the current snapshot
        # One thread: the append returns while the reader still holds its snapshot (a stall would hang here).
        log.append([[UserClearedMemory("a", "A", "t", True)]])
        assert log._checkpoint_due
    log.append([[UserSaid("a", "B", "t", "later")]])  # the next commit completes the truncation
    assert not log._checkpoint_due
    assert found_on_disk(db, A_MARK) == set()
    reader.close()
    log.close()


# -- the ids a client chose for forgotten turns (issue 13 §3) ------------------------------------

CMD_MARK = "zqxcommandmarker"
RID_MARK = "zqxrequestmarker"


def test_a_long_term_clear_erases_the_command_and_request_ids_of_the_forgotten_turns(tmp_path):
    db = tmp_path / "c.db"
    with EventLog.open(db) as log:
        for user in ("A", "B"):
            log.append([[UserSaid("a", user, "t", "tea?", f"{RID_MARK}-{user}-1", f"{CMD_MARK}-{user}-1"),
                         AgentAnswered("a", user, "t", "tea.", f"{RID_MARK}-{user}-1", f"{CMD_MARK}-{user}-1")]])
            log.append([[UserSaid("a", user, "t", "a story?", f"{RID_MARK}-{user}-2", f"{CMD_MARK}-{user}-2"),
                         ToolCalled("a", user, "t", "c1", "search_memory", {"query": "x"}, f"{RID_MARK}-{user}-2"),
                         TurnEnded("a", user, "t", "cancelled", "Once", "", f"{RID_MARK}-{user}-2",
                                   f"{CMD_MARK}-{user}-2")]])
        assert log.find_turn("a", "A", f"{CMD_MARK}-A-1") is not None
        log.append([[UserClearedMemory("a", "A", "t", True)]])
        for n in (1, 2):  # a retry of a forgotten command finds nothing: it is a new turn
            assert log.find_turn("a", "A", f"{CMD_MARK}-A-{n}") is None
            assert log.find_turn("a", "B", f"{CMD_MARK}-B-{n}") is not None  # B's are intact
        assert log._conn.execute("SELECT count(*) FROM events WHERE user = 'A' AND command_id IS NOT NULL"
                                 ).fetchone() == (0,)
        forgotten = [r.event for r in log.read(user="A") if r.event.TYPE != "memory_cleared"]
        assert [getattr(e, "command_id", None) for e in forgotten] == [None] * 5
        assert [e.request_id for e in forgotten] == [None] * 5
        assert verify(log).ok
        a_marks = {f"{mark}-A-{n}" for mark in (CMD_MARK, RID_MARK) for n in (1, 2)}
        b_marks = {f"{mark}-B-{n}" for mark in (CMD_MARK, RID_MARK) for n in (1, 2)}
        assert found_on_disk(db, *a_marks, *b_marks) == b_marks


async def test_a_retry_after_a_long_term_clear_is_a_new_turn(db_path):
    async with running_server(db_path) as server, connect(server.port) as c:
        await c.request({"type": "set_user", "user_id": "A"}, "user_set")
        chat = {"type": "chat", "agent_id": "my_agent", "message": "hello", "command_id": CMD_MARK}
        first = (await c.request(chat, "agent_done"))[-2]
        assert (await c.request(chat, "agent_done"))[-2]["seq"] == first["seq"]  # a retry: answered from the log
        (cleared,) = await c.request({"type": "clear_memory", "agent_id": "my_agent", "clear_long_term": True},
                                     "memory_cleared")
        assert found_on_disk(db_path, CMD_MARK) == set()
        again = await c.request(chat, "agent_done")
        # A brain's chunks reach the client merged or not, as the writer's pace finds them: their text counts.
        kinds = [f["type"] for f in again]
        assert kinds[0] == "agent_thinking" and kinds[-2:] == ["response", "agent_done"]
        assert set(kinds[1:-2]) == {"response_chunk"}
        assert "".join(f["delta"] for f in again[1:-2]) == again[-2]["message"]
        assert again[-2]["seq"] > cleared["seq"]  # a new turn, logged after the clear
        assert "remember 0 earlier messages" in again[-2]["message"]  # the brain ran again, on the cleared memory
        assert (await c.request(chat, "agent_done"))[-2]["seq"] == again[-2]["seq"]  # the new turn is retried as usual
    with EventLog.open(db_path, readonly=True) as log:
        said = [(r.seq, r.event.content, r.event.command_id) for r in log.read(user="A") if r.event.TYPE == "user_message"]
    assert said == [(1, "", None), (again[-2]["seq"] - 1, "hello", CMD_MARK)]


def test_ids_left_by_forgetting_before_this_version_are_erased_when_the_log_is_opened(tmp_path):
    """A log whose clears kept the command ids (schema m004): the migration takes them out."""
    from sqlite_utils import Database
    from sqlite_utils.utils import sqlite3

    from agentcast.store._events import REDACTED
    from agentcast.store._schema import APPLICATION_ID, migrations

    db = tmp_path / "m004.db"
    conn = sqlite3.connect(str(db), isolation_level=None)
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    migrations.apply(Database(conn), stop_before="m005_forgotten_client_ids")
    rows = [  # as the previous _forget left them: text redacted, client ids kept
        (1, "user_message", "A", REDACTED, f"{CMD_MARK}-1"),
        (2, "agent_message", "A", REDACTED, f"{CMD_MARK}-1"),
        (3, "turn_ended", "A", '{"outcome":"cancelled","partial":"","reason":"","request_id":"%s","command_id":"%s-2",'
                               '"redacted":true}' % (RID_MARK, CMD_MARK), f"{CMD_MARK}-2"),
        (4, "memory_cleared", "A", '{"long_term":true}', None),
        (5, "user_message", "B", '{"content":"hi","request_id":"rid-b","command_id":"cmd-b"}', "cmd-b"),
    ]
    conn.executemany("INSERT INTO events (seq, at, type, agent_id, user, payload, command_id) "
                     "VALUES (?, 't', ?, 'a', ?, ?, ?)", rows)
    conn.execute("INSERT INTO memory_index (rowid, terms) VALUES (5, ?)",
                 (store_log.index_terms(store_log.scope_token("a", "B"), "hi"),))
    conn.close()
    with EventLog.open(db) as log:
        assert [(seq, cmd) for seq, cmd in log._conn.execute("SELECT seq, command_id FROM events")] == [
            (1, None), (2, None), (3, None), (4, None), (5, "cmd-b")]
        assert log._conn.execute("SELECT payload FROM events WHERE seq = 3").fetchone() == (
            '{"outcome":"cancelled","partial":"","reason":"","redacted":true}',)
        assert log.find_turn("a", "B", "cmd-b") is not None
        assert verify(log).ok
    assert found_on_disk(db, CMD_MARK, RID_MARK, "cmd-b") == {"cmd-b"}


# -- a crash before the WAL truncation of a forgetting (issue 13 §3) --------------------------------

#: A reader in another process: a read-only connection (as `agentcast replay` opens) holding one read
#: transaction from the line "hold" on its stdin until the line "release"; then it exits.
HOLDING_READER = """
import sqlite3, sys
from urllib.parse import quote
conn = sqlite3.connect("file:" + quote(sys.argv[1]) + "?mode=ro", uri=True, isolation_level=None)
for line in sys.stdin:
    if line.strip() == "hold":
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM events").fetchone()
    elif line.strip() == "release":
        conn.execute("COMMIT")
        break
    print("ok", flush=True)
conn.close()
print("released", flush=True)
"""


class HoldingReader:
    """`HOLDING_READER` in a subprocess on `db`."""

    def __init__(self, db) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-c", HOLDING_READER, str(db)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def say(self, line: str, answer: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(scaled(10))
        self.proc.stdin.close()
        self.proc.stdout.close()


def test_a_wal_left_by_a_reader_held_forgetting_is_truncated_when_the_log_is_opened(tmp_path):
    db = tmp_path / "w.db"
    log = EventLog.open(db)
    fill(log, "A", A_MARK, 20)
    fill(log, "B", B_MARK, 5)
    reader = HoldingReader(db)
    try:
        reader.say("hold", "ok")
        log.append([[UserClearedMemory("a", "A", "t", True)]])
        assert log._checkpoint_due  # the reader keeps the truncation from happening
        log.close()  # not the last connection to the file: it leaves the WAL as it is, like a kill would
        reader.say("release", "released")
    finally:
        reader.close()
    assert A_MARK in found_on_disk(db, A_MARK)  # old page versions in the WAL (and the file)
    with EventLog.open(db) as reopened:
        assert found_on_disk(db, A_MARK, B_MARK) == {B_MARK}  # before anything is appended
        assert not reopened._checkpoint_due


def test_a_server_killed_after_a_reader_held_forgetting_leaves_no_trace_once_restarted(tmp_path, serve):
    """The byte scan, through a crash: a reader in another process holds a read transaction while the
    server forgets; the server is killed before it could truncate its WAL; once restarted (before it
    serves), the erased text is in no byte of the database, its WAL or its -shm."""
    import asyncio
    import signal

    from support.process import connect as connect_process

    db = tmp_path / "agentcast.db"
    server = serve(db)

    async def chat(users: dict[str, str], clear: str | None = None) -> None:
        for user, mark in users.items():
            async with connect_process(server.url) as c:
                await c.set_user(user)
                for i in range(20):
                    await c.chat(f"{mark} {i}")
                if user == clear:
                    frames = await c.request({"type": "clear_memory", "agent_id": "my_agent",
                                              "clear_long_term": True}, "memory_cleared")
                    assert frames[-1]["forgotten"] == 80  # its first 20 turns and the 20 after

    asyncio.run(chat({"A": A_MARK, "B": B_MARK}))
    reader = HoldingReader(db)
    try:
        reader.say("hold", "ok")
        asyncio.run(chat({"A": "after"}, clear="A"))
        server.wait_for_log("a reader holds an old snapshot")
        server.signal(signal.SIGKILL)
        assert server.wait() == -signal.SIGKILL
        reader.say("release", "released")
    finally:
        reader.close()
    assert found_on_disk(db, A_MARK, B_MARK) == {A_MARK, B_MARK}  # the truncation never happened
    restarted = serve(db)  # listening: the log is open
    assert found_on_disk(db, A_MARK, B_MARK) == {B_MARK}
    restarted.signal(signal.SIGKILL)
    restarted.wait()
    verified = cli("replay", "verify", "--db", str(db), cwd=tmp_path)
    assert verified.returncode == 0 and "verify: ok" in verified.stdout, verified.stdout
