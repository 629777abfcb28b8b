"""Snapshots: a lane with a long history starts from its latest snapshot plus the events after it,
and gets exactly the memory a full rebuild gives; forgetting removes snapshots too."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcast.actors import _agent as actors_agent
from agentcast.actors import AgentSpec, EchoBrain
from agentcast.store import (
    AgentAnswered,
    Clear,
    EventLog,
    UserClearedMemory,
    Recorded,
    UserSaid,
    memory_from_json,
    memory_to_json,
    rebuild,
)
from support import connect, running_server, scaled

STEP = st.one_of(
    st.tuples(st.just("chat"), st.text(min_size=1, max_size=20)),
    st.tuples(st.just("clear"), st.booleans()),
)


def events_for(step, user="u"):
    kind, arg = step
    if kind == "chat":
        return [UserSaid("a", user, "t", arg), AgentAnswered("a", user, "t", "re: " + arg)]
    return [UserClearedMemory("a", user, "t", arg)]


@settings(max_examples=25, deadline=None)
@given(steps=st.lists(STEP, max_size=20), cut=st.integers(0, 20), window=st.integers(1, 5))
def test_restore_from_any_snapshot_equals_a_full_rebuild(tmp_path_factory, steps, cut, window):
    db = tmp_path_factory.mktemp("snap") / "s.db"
    with EventLog.open(db) as log:
        for i, step in enumerate(steps):
            log.append([events_for(step), events_for(step, user="other")])
            if i == cut:
                log.append([], snapshots=[log.memory("a", "u", window=window)])
        full = rebuild("a", "u", log.read(), window)  # the definition: the pure fold of every event
        restored, folded = log.restore("a", "u", window=window)
        assert restored == full == log.memory("a", "u", window=window)
        assert memory_from_json("a", "u", memory_to_json(full)) == full
        later = steps[cut + 1:]
        if cut < len(steps) and ("clear", True) not in later:  # the snapshot stands: only what came after is folded
            assert folded == sum(len(events_for(s)) for s in later)
        else:  # no snapshot, or forgetting removed it
            assert folded == full.version


def test_a_snapshot_is_per_window_size(tmp_path):
    with EventLog.open(tmp_path / "w.db") as log:
        for i in range(5):
            log.append([events_for(("chat", f"m{i}"))])
        log.append([], snapshots=[log.memory("a", "u", window=2)])
        three, folded = log.restore("a", "u", window=3)
        assert folded == 10 and len(three.short_term) == 3
        two, folded = log.restore("a", "u", window=2)
        assert folded == 0 and len(two.short_term) == 2


def test_forgetting_removes_the_snapshots_that_hold_the_text(tmp_path):
    db = tmp_path / "f.db"
    with EventLog.open(db) as log:
        log.append([events_for(("chat", "zqxsnapshotmarker"))])
        log.append([], snapshots=[log.memory("a", "u")])
        log.append([[UserClearedMemory("a", "u", "t", True)]])
        memory, folded = log.restore("a", "u")
        assert memory.short_term == () and memory.long_term_count == 0 and folded == 3
    data = b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())
    assert b"zqxsnapshotmarker" not in data


async def test_lanes_save_snapshots_and_start_from_them(db_path, monkeypatch):
    monkeypatch.setattr(actors_agent, "SNAPSHOT_EVERY", 6)
    specs = [AgentSpec("my_agent", EchoBrain(), lane_idle_seconds=0.05)]
    async with running_server(db_path, specs) as server, connect(server.port) as c:
        await c.request({"type": "set_user", "user_id": "s"}, "user_set")
        for i in range(4):  # 8 events: one snapshot after the third turn
            await c.request({"type": "chat", "agent_id": "my_agent", "message": f"turn {i}"}, "agent_done")
        with EventLog.open(db_path, readonly=True) as log:
            memory, folded = log.restore("my_agent", "s")
            assert folded == 2 and memory.version == 8
            assert memory == log.memory("my_agent", "s")
        with trio.fail_after(scaled(5)):  # the idle lane is dropped; the next chat rebuilds it from the snapshot
            while server.agents["my_agent"].lanes:
                await trio.sleep(0.01)
        frames = await c.request({"type": "chat", "agent_id": "my_agent", "message": "after"}, "agent_done")
        assert "remember 8 earlier messages" in frames[-2]["message"]


def test_a_memory_with_100000_clears_stays_the_size_of_its_window(tmp_path):
    """The projection keeps the last clear of each kind, not every clear: the memory folded from a
    log of 100,000 clears, and its snapshot, are as small as with two (replay reads clears from the log)."""
    clears = 100_000
    long_term_at = {clears // 2, clears - 2}  # two long-term clears; forgetting scans the stream, so not more
    events = [UserSaid("a", "u", "t0", "before")]
    events += [UserClearedMemory("a", "u", f"t{i + 1}", i in long_term_at) for i in range(clears)]
    events += [UserSaid("a", "u", "t-end", "after")]
    last_long, last_short = clears - 2 + 2, clears + 1  # their seqs (the first message is seq 1)
    expected = (Clear(last_long, f"t{last_long - 1}", True), Clear(last_short, f"t{last_short - 1}", False))
    with EventLog.open(tmp_path / "c.db") as log:
        log.append([events])
        memory = log.memory("a", "u")  # `fold_rows`, as a lane's restore does
        snapshot = memory_to_json(memory)
        assert len(snapshot.encode()) < 1_000, len(snapshot)
        assert len(pickle.dumps(memory)) < 2_000
        assert memory.last_clears == expected
        assert [m.content for m in memory.short_term] == ["after"] and memory.version == clears + 2
        log.append([], snapshots=[memory])
        assert log.restore("a", "u") == (memory, 0)
        recorded = list(log.read())
    assert rebuild("a", "u", recorded) == memory  # the pure fold agrees
    # one more clear onto such a memory (what a lane does per clear) keeps it as small
    more = rebuild("a", "u", [Recorded(clears + 3, UserClearedMemory("a", "u", "t-more", True))])
    assert len(more.last_clears) == 1


def test_a_snapshot_that_lists_every_clear_is_read_and_written_anew(tmp_path):
    """Earlier versions listed every clear in a snapshot: such a snapshot still reads (as the last
    clear of each kind) and `restore` asks for it to be replaced (every event counts as folded)."""
    db = tmp_path / "old.db"
    steps = [("chat", "one"), ("clear", False), ("clear", True), ("chat", "two"), ("clear", False),
             ("clear", False), ("chat", "three")]
    with EventLog.open(db) as log:
        for step in steps:
            log.append([events_for(step)])
        memory = log.memory("a", "u")
        every_clear = [[r.seq, r.event.at, r.event.long_term] for r in log.read() if isinstance(r.event, UserClearedMemory)]
        assert len(every_clear) == 4 and len(memory.last_clears) == 2
        old = json.loads(memory_to_json(memory))
        old["clears"] = every_clear
        old_text = json.dumps(old)
        assert memory_from_json("a", "u", old_text) == memory
        with log._conn:
            log._conn.execute("INSERT INTO snapshots (agent_id, user, window, seq, state) VALUES (?, ?, ?, ?, ?)",
                              ("a", "u", memory.window, memory.last_seq, old_text))
        restored, folded = log.restore("a", "u")
        assert restored == memory and folded == memory.version


async def test_a_lane_replaces_a_snapshot_that_lists_every_clear(db_path, monkeypatch):
    monkeypatch.setattr(actors_agent, "SNAPSHOT_EVERY", 6)
    with EventLog.open(db_path) as log:
        for step in [("chat", "one"), ("clear", False), ("clear", False), ("clear", True), ("chat", "two")]:
            log.append([events_for(step, user="s")])
        memory = log.memory("a", "s")
        old = json.loads(memory_to_json(memory))
        old["clears"] = [[r.seq, r.event.at, r.event.long_term] for r in log.read() if isinstance(r.event, UserClearedMemory)]
        with log._conn:
            log._conn.execute("INSERT INTO snapshots (agent_id, user, window, seq, state) VALUES (?, ?, ?, ?, ?)",
                              ("a", "s", memory.window, memory.last_seq, json.dumps(old)))
    async with running_server(db_path, [AgentSpec("a", EchoBrain())]) as server, connect(server.port) as c:
        await c.request({"type": "set_user", "user_id": "s"}, "user_set")
        frames = await c.request({"type": "chat", "agent_id": "a", "message": "three"}, "agent_done")
        assert "remember 2 earlier messages" in frames[-2]["message"]
        await server.agents.wait_idle()  # the snapshot is saved once the turn is answered
        with EventLog.open(db_path, readonly=True) as log:
            (state,) = log._conn.execute("SELECT state FROM snapshots WHERE agent_id = 'a' AND user = 's'").fetchone()
            assert len(json.loads(state)["clears"]) == 2
            assert memory_from_json("a", "s", state) == log.memory("a", "s")
