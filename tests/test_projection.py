"""One projection: random logs of every event type, appended through the real SQLite recorder, folded through
every path that builds memory (a lane's live `fold`, the recorder's `fold_rows` rebuild, `restore` from
snapshots saved at random points, replay's point-in-time rebuild by seq and by time, verify's one-pass
rebuild), and every path finds the same memory."""
from __future__ import annotations

import tempfile
import typing
from datetime import datetime, timedelta, timezone
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentcast.store import (
    EVENT_TYPES,
    AgentAnswered,
    Cut,
    Event,
    EventLog,
    FactRemembered,
    Memory,
    ToolCalled,
    ToolReturned,
    TurnEnded,
    UserClearedMemory,
    UserSaid,
    fold,
    fold_all,
    memory_at,
    rebuild_all,
    verify,
)

AGENTS = ("a1", "a2")
USERS = ("u1", "u2", "u3")
START = datetime(2026, 1, 1, tzinfo=timezone.utc)

text = st.text(alphabet=st.sampled_from("ab teal\u00e9\U0001f600\n\""), min_size=1, max_size=12)
ids = st.none() | st.sampled_from(["r1", "r2", "c1", "c2"])
json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                           max_leaves=5)


@st.composite
def an_event(draw) -> typing.Callable[[str], Event]:
    """An event of any type, of a random (agent, user), waiting for its time."""
    agent, user = draw(st.sampled_from(AGENTS)), draw(st.sampled_from(USERS))
    kind = draw(st.sampled_from(sorted(EVENT_TYPES)))
    if kind == UserSaid.TYPE:
        content, rid, cid = draw(text), draw(ids), draw(ids)
        return lambda at: UserSaid(agent, user, at, content, rid, cid)
    if kind == AgentAnswered.TYPE:
        content, rid, cid = draw(text), draw(ids), draw(ids)
        return lambda at: AgentAnswered(agent, user, at, content, rid, cid)
    if kind == FactRemembered.TYPE:
        content, rid = draw(text), draw(ids)
        return lambda at: FactRemembered(agent, user, at, content, rid)
    if kind == UserClearedMemory.TYPE:
        long_term, rid = draw(st.booleans()), draw(ids)
        return lambda at: UserClearedMemory(agent, user, at, long_term, rid)
    if kind == ToolCalled.TYPE:
        call_id, tool, arguments, rid = draw(text), draw(text), draw(json_values), draw(ids)
        return lambda at: ToolCalled(agent, user, at, call_id, tool, arguments, rid)
    if kind == ToolReturned.TYPE:
        call_id, tool, rid = draw(text), draw(text), draw(ids)
        result, error = draw(st.one_of(st.tuples(json_values, st.none()), st.tuples(st.none(), text)))
        return lambda at: ToolReturned(agent, user, at, call_id, tool, result, error, rid)
    assert kind == TurnEnded.TYPE
    outcome, partial, reason, rid, cid = (draw(st.sampled_from(["cancelled", "failed"])), draw(st.just("") | text),
                                          draw(st.just("") | text), draw(ids), draw(ids))
    return lambda at: TurnEnded(agent, user, at, outcome, partial, reason, rid, cid)


#: A log: batches of events (each appended in one call), with the streams whose snapshot is saved with it.
a_log = st.lists(st.tuples(st.lists(an_event(), min_size=1, max_size=4),
                           st.lists(st.tuples(st.sampled_from(AGENTS), st.sampled_from(USERS)), max_size=2)),
                 min_size=1, max_size=12)


def at(i: int) -> str:
    return (START + timedelta(seconds=i)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_plan=a_log, window=st.sampled_from([1, 2, 3, 20]), cuts=st.lists(st.integers(0, 60), max_size=3))
def test_every_path_folds_every_event_type_to_the_same_memory(log_plan, window, cuts):
    with tempfile.TemporaryDirectory() as tmp, EventLog.open(Path(tmp) / "events.db") as log:
        live: dict[tuple[str, str], Memory] = {}  # a lane's memory, folded event by event as turns commit
        i = 0
        for makers, snapshot_of in log_plan:
            batch = []
            for make in makers:
                i += 1
                batch.append(make(at(i)))
            snapshots = [live[key] for key in dict.fromkeys(snapshot_of) if key in live]
            (recorded,) = log.append([batch], snapshots)
            for rec in recorded:
                key = (rec.event.agent_id, rec.event.user)
                live[key] = fold(live.get(key) or Memory(*key, window), rec)

        kinds = {type(rec.event) for rec in log.read()}
        everything = list(log.read())  # as the log holds them now (long-term clears erased text before them)
        rebuilt = rebuild_all(log, window=window)
        assert verify(log, window=window).ok
        assert set(rebuilt.memories) == set(live)
        for (agent, user), memory in live.items():
            assert log.memory(agent, user, window=window) == memory  # fold_rows
            assert log.restore(agent, user, window=window)[0] == memory  # from its snapshot, if any
            assert memory_at(log, agent, user, window=window)[0] == memory  # replay, now
            assert rebuilt.memories[(agent, user)] == memory  # verify's one pass
            assert fold_all(Memory(agent, user, window), everything) == memory
            for cut_seq in cuts:
                then = fold_all(Memory(agent, user, window), [r for r in everything if r.seq <= cut_seq])
                assert memory_at(log, agent, user, window=window, cut=Cut(until_seq=cut_seq))[0] == then
                assert log.memory(agent, user, window=window, until_seq=cut_seq) == then
                by_time = Cut(until_time=START + timedelta(seconds=cut_seq))  # times rise with seqs here
                assert memory_at(log, agent, user, window=window, cut=by_time)[0] == then
        assert kinds <= set(EVENT_TYPES.values())


def test_the_strategy_draws_every_event_type():
    """The property above is only as good as the logs it sees: each type is drawn."""
    seen: set[str] = set()

    @settings(max_examples=200, deadline=None)
    @given(an_event())
    def draw(make):
        seen.add(make(at(0)).TYPE)

    draw()
    assert seen == set(EVENT_TYPES)
