"""Forgetting that really forgets: after a long-term clear, the cleared text is gone from the raw
bytes of the database and its WAL (FTS5 shadow tables included), other users' text is intact.

The bytes are read by another process (`support.on_disk`): reading them here, while this process
has the log open, would drop its SQLite locks (see tests/dbguard.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

import store._log
import store._schema
from store import AgentMessage, EventLog, FactRemembered, MemoryCleared, ToolCalled, ToolReturned, TurnEnded, UserMessage, verify
from support import connect, on_disk, running_server

A_MARK = "zqxalphamarker"
B_MARK = "zqxbetamarker"


def found_on_disk(db, *marks: str) -> set[str]:
    """Which of `marks` occur somewhere in the bytes SQLite keeps for `db` (file, -wal, -shm)."""
    return {mark for mark, count in on_disk(db, *marks).items() if count}


def fill(log: EventLog, user: str, mark: str, n: int) -> None:
    for i in range(n):  # many small commits: many FTS segments, many WAL frames
        log.append([[UserMessage("a", user, "t", f"note {i} about {mark} and more"),
                     AgentMessage("a", user, "t", f"You said: note {i} about {mark}")]])


@pytest.fixture(params=[True, False], ids=["fts5-secure-delete", "fts5-optimize-fallback"])
def fts_mode(request, monkeypatch):
    if request.param and not store._schema.FTS5_SECURE_DELETE:
        pytest.skip("this SQLite has no FTS5 secure-delete (needs 3.42; pysqlite3-binary brings it)")
    monkeypatch.setattr(store._schema, "FTS5_SECURE_DELETE", request.param)
    monkeypatch.setattr(store._log, "FTS5_SECURE_DELETE", request.param)
    return request.param


def test_a_long_term_clear_erases_the_text_from_every_byte_on_disk(tmp_path, fts_mode):
    db = tmp_path / "f.db"
    log = EventLog.open(db)
    fill(log, "A", A_MARK, 60)
    fill(log, "B", B_MARK, 60)
    assert found_on_disk(db, A_MARK, B_MARK) == {A_MARK, B_MARK}
    (rec,), = log.append([[MemoryCleared("a", "A", "t", True)]])
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


def turn_marks(user: str) -> dict[str, str]:
    """Words that only (a, `user`)'s fact, tool arguments, tool result, tool error and partial answer say."""
    return {kind: f"zqx{kind}{user.lower()}marker" for kind in ("fact", "args", "result", "error", "partial")}


def a_real_turn(user: str, i: int) -> list:
    """What a real model's turn logs: a message, a `remember` tool call, the fact, the tool's result,
    a failing tool, the answer; then a cancelled turn with a partial answer."""
    m = turn_marks(user)
    return [
        UserMessage("a", user, "t", f"remember that I like tea {i}", f"r{i}"),
        ToolCalled("a", user, "t", f"c{i}", "remember", {"fact": f"likes {m['args']} {i}"}, f"r{i}"),
        FactRemembered("a", user, "t", f"likes {m['fact']} tea, thé {i}", f"r{i}"),
        ToolReturned("a", user, "t", f"c{i}", "remember", {"remembered": f"{m['result']} {i}"}, None, f"r{i}"),
        ToolCalled("a", user, "t", f"d{i}", "search_memory", "{not json", f"r{i}"),
        ToolReturned("a", user, "t", f"d{i}", "search_memory", None, f"bad arguments {m['error']}", f"r{i}"),
        AgentMessage("a", user, "t", "Noted.", f"r{i}"),
        UserMessage("a", user, "t", "tell me a story", f"s{i}"),
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
        (rec,), = log.append([[MemoryCleared("a", "A", "t", True)]])
        assert found_on_disk(db, *a_marks, *b_marks) == b_marks
        assert log.search("a", "A", fact_a, 5) == [] and log.search("a", "A", "tea", 5) == []
        assert {h.role for h in log.search("a", "B", fact_b, 5)} == {"fact"}  # B's are intact
        # the index holds nothing of A's any more (its rows were deleted with their own terms)
        assert log._conn.execute("SELECT count(*) FROM memory_index WHERE memory_index MATCH ?",
                                 (f'"{store._log.scope_token("a", "A")}"',)).fetchone() == (0,)
        report = verify(log)
        assert report.ok, report.as_json()
        log.append([a_real_turn("A", 99)])  # remembering again after the clear
        assert [h.content for h in log.search("a", "A", fact_a, 5)] == [f"likes {fact_a} tea, thé 99"]
        assert verify(log).ok


def test_a_short_term_clear_erases_nothing(tmp_path):
    db = tmp_path / "s.db"
    with EventLog.open(db) as log:
        fill(log, "A", A_MARK, 3)
        log.append([[MemoryCleared("a", "A", "t", False)]])
        assert log.search("a", "A", A_MARK, 10)
    assert found_on_disk(db, A_MARK) == {A_MARK}


async def test_once_memory_cleared_arrives_the_text_is_gone_and_stays_gone(db_path):
    db = Path(db_path)
    async with running_server(db_path) as server:
        async with connect(server.port) as a, connect(server.port) as b:
            await a.request({"type": "set_user", "user_id": "A"}, "user_set")
            await b.request({"type": "set_user", "user_id": "B"}, "user_set")
            for i in range(5):
                await a.request({"type": "chat", "agent_id": "my_agent", "message": f"{A_MARK} {i}"}, "agent_done")
                await b.request({"type": "chat", "agent_id": "my_agent", "message": f"{B_MARK} {i}"}, "agent_done")
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
    import time

    db = tmp_path / "r.db"
    log = EventLog.open(db)
    fill(log, "A", A_MARK, 5)
    reader = EventLog.open(db, readonly=True)
    with reader.snapshot():
        list(reader.read())  # holds a read transaction on the current snapshot
        t = time.monotonic()
        log.append([[MemoryCleared("a", "A", "t", True)]])
        assert time.monotonic() - t < 3  # bounded wait, not a stall
        assert log._checkpoint_due
    log.append([[UserMessage("a", "B", "t", "later")]])  # the next commit completes the truncation
    assert not log._checkpoint_due
    assert found_on_disk(db, A_MARK) == set()
    reader.close()
    log.close()
