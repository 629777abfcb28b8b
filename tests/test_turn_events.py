"""The events of real-model turns in the store: remembered facts (memory), tool calls and results and ended
turns (activity): payload round trips, folding, the fast rebuilds agreeing with `fold`, verify, forgetting,
and `replay` of a log written before these events existed."""
from __future__ import annotations

import pytest

from agentcast.store import (
    AgentAnswered,
    EventLog,
    FactRemembered,
    Memory,
    UserClearedMemory,
    ToolCalled,
    ToolReturned,
    TurnEnded,
    UndecodableEvent,
    UserSaid,
    activity_at,
    events_after,
    fold,
    rebuild,
    verify,
)
from agentcast.store._events import event_from_row, payload_of
from support import on_disk

A, U = "agent", "alice"
MARK = "zqxteamarker"


def turn_events(mark: str = MARK, user: str = U) -> list:
    return [
        UserSaid(A, user, "t1", f"I drink {mark}", "r1"),
        ToolCalled(A, user, "t2", "call_1", "remember", {"fact": f"drinks {mark}"}, "r1"),
        FactRemembered(A, user, "t3", f"drinks {mark}", "r1"),
        ToolReturned(A, user, "t4", "call_1", "remember", {"remembered": f"drinks {mark}", "seq": 3}, None, "r1"),
        ToolCalled(A, user, "t5", "call_2", "search_memory", "{not json", "r1"),
        ToolReturned(A, user, "t6", "call_2", "search_memory", None, "the arguments are not valid JSON", "r1"),
        AgentAnswered(A, user, "t7", "Noted.", "r1"),
        UserSaid(A, user, "t8", "Tell me a story", "r2"),
        TurnEnded(A, user, "t9", "cancelled", f"Once upon a {mark}", "", "r2"),
        UserSaid(A, user, "t10", "Again?", "r3"),
        TurnEnded(A, user, "t11", "failed", "", "the model server failed (HTTP 503)", "r3"),
    ]


@pytest.fixture
def log(tmp_path):
    with EventLog.open(tmp_path / "events.db") as log:
        yield log


@pytest.mark.parametrize("event", turn_events(), ids=lambda e: e.TYPE)
def test_every_event_round_trips_through_its_stored_payload(event):
    assert event_from_row(event.TYPE, event.agent_id, event.user, event.at, payload_of(event)) == event


@pytest.mark.parametrize(
    ("type_", "payload"),
    [
        ("tool_called", '{"tool":"x","arguments":{}}'),  # no call_id
        ("tool_called", '{"call_id":5,"tool":"x"}'),
        ("tool_returned", '{"call_id":"c","tool":"x","error":5}'),
        ("turn_ended", '{"partial":"x"}'),  # no outcome
        ("fact_remembered", '{"content":null}'),
    ],
)
def test_a_damaged_payload_of_the_new_events_is_undecodable_not_a_crash(type_, payload):
    with pytest.raises(UndecodableEvent):
        event_from_row(type_, A, U, "t", payload)


def test_a_fact_is_remembered_and_searchable_and_activity_is_not_memory(log):
    (recorded,) = log.append([turn_events()])
    memory = rebuild(A, U, recorded)
    # messages: the two user messages that were answered or not, the fact, the answer, the third message
    assert [(m.role, m.content) for m in memory.short_term] == [
        ("user", f"I drink {MARK}"), ("fact", f"drinks {MARK}"), ("assistant", "Noted."),
        ("user", "Tell me a story"), ("user", "Again?"),
    ]
    assert memory.long_term_count == 5 and memory.last_seq == 11 and memory.version == 11
    hits = log.search(A, U, f"{MARK}", 10)
    assert {(h.role, h.content) for h in hits} == {("user", f"I drink {MARK}"), ("fact", f"drinks {MARK}")}
    assert log.search(A, "bob", MARK, 10) == []
    # the fast rebuilds agree with fold, and verify finds the log (index included) consistent
    assert log.memory(A, U) == memory
    assert log.restore(A, U) == (memory, 11)
    report = verify(log)
    assert report.ok, report.as_json()
    assert [r.event.TYPE for r in activity_at(log, A, U)] == [
        "tool_called", "tool_returned", "tool_called", "tool_returned", "turn_ended", "turn_ended",
    ]


def test_fold_of_an_activity_event_only_advances_the_version():
    before = Memory(A, U, short_term=(), long_term_count=2, last_seq=4, version=4)
    from agentcast.store import Recorded

    after = fold(before, Recorded(9, ToolCalled(A, U, "t", "c", "current_time", {})))
    assert (after.last_seq, after.version, after.long_term_count, after.short_term) == (9, 5, 2, ())


@pytest.mark.process
def test_a_long_term_clear_erases_tool_arguments_results_and_partial_answers(tmp_path):
    db = tmp_path / "f.db"
    with EventLog.open(db) as log:
        log.append([turn_events(MARK, U)])
        log.append([turn_events("zqxothermarker", "bob")])
        assert on_disk(db, MARK)[MARK]  # read by another process (see support/dbguard.py)
        log.append([[UserClearedMemory(A, U, "t12", True)]])
        found = on_disk(db, MARK, "zqxothermarker")
        assert found[MARK] == 0 and found["zqxothermarker"] > 0  # another user's text is untouched
        activity = activity_at(log, A, U)
        assert [r.event.TYPE for r in activity] == [
            "tool_called", "tool_returned", "tool_called", "tool_returned", "turn_ended", "turn_ended",
        ]
        called, returned = activity[0].event, activity[1].event
        assert (called.call_id, called.tool, called.arguments) == ("call_1", "remember", {})
        assert returned.result is None and activity[3].event.error == ""
        assert activity[4].event.partial == "" and activity[5].event.reason == "the model server failed (HTTP 503)"
        raw = events_after(log, agent_id=A, user=U)
        assert all(e.get("redacted") for e in raw if e["type"] != "memory_cleared")
        assert verify(log).ok


def test_a_cut_shows_the_activity_as_it_was(log):
    log.append([turn_events()])
    from agentcast.store import Cut

    assert [r.seq for r in activity_at(log, A, U, cut=Cut(until_seq=4))] == [2, 4]


def test_replay_prints_tool_calls_and_cancelled_and_failed_turns_from_the_log(tmp_path, capsys):
    from agentcast.transport.cli import main

    db = tmp_path / "events.db"
    with EventLog.open(db) as log:
        log.append([turn_events()])
    assert main(["replay", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("    #")]
    activity = [line.split(None, 2)[2] for line in lines[-6:]]
    assert activity[0].startswith('tool call  remember  {"fact": "drinks zqxteamarker"}  [call_1]')
    assert activity[1].startswith('tool result remember  {"remembered": "drinks zqxteamarker", "seq": 3}')
    assert activity[3].startswith("tool result search_memory  error: the arguments are not valid JSON")
    assert activity[4] == 'cancelled  partial answer: "Once upon a zqxteamarker"'
    assert activity[5] == 'failed     the model server failed (HTTP 503)  (partial answer: "")'
