"""Unit tests of the store: the append-only SQLite `EventLog`, its search, and the memory folded from it.

Plain synchronous calls on files under pytest's tmp_path (no trio, no server).
"""
from __future__ import annotations

import sqlite3 as stdlib_sqlite3

import pytest
from sqlite_utils.utils import sqlite3  # the module the store itself uses

from agentcast.store import (
    AgentAnswered,
    Clear,
    EventLog,
    Memory,
    UserClearedMemory,
    Message,
    MissingEventLog,
    NotAnEventLog,
    Recorded,
    UserSaid,
    fold,
    match_expression,
    rebuild,
)
from agentcast.store._terms import scope_token, words

AGENT = "echo"
USER = "u1"


def at(i: int) -> str:
    return f"2024-01-01T00:00:{i:02d}Z"


def user_msg(content: str, *, agent: str = AGENT, user: str = USER, i: int = 0) -> UserSaid:
    return UserSaid(agent, user, at(i), content)


def agent_msg(content: str, *, agent: str = AGENT, user: str = USER, i: int = 0) -> AgentAnswered:
    return AgentAnswered(agent, user, at(i), content)


def cleared(long_term: bool, *, agent: str = AGENT, user: str = USER, i: int = 0) -> UserClearedMemory:
    return UserClearedMemory(agent, user, at(i), long_term)


@pytest.fixture
def log(tmp_path):
    with EventLog.open(tmp_path / "log.db") as log:
        yield log


def append_one(log: EventLog, *events) -> list[Recorded]:
    (recorded,) = log.append([list(events)])
    return recorded


def snapshot(path):
    """Everything about a file (and its directory) that opening it must not change."""
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(p.name for p in path.parent.iterdir())


# -- append ------------------------------------------------------------------------------


def test_append_returns_recorded_events_with_increasing_seq(log):
    first = [user_msg("a"), agent_msg("b")]
    second = [user_msg("c")]
    out = log.append([first, second])
    assert [[r.event for r in batch] for batch in out] == [first, second]
    seqs = [r.seq for batch in out for r in batch]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 1
    assert log.last_seq() == seqs[-1]


def test_append_continues_the_sequence_across_calls(log):
    (a,) = append_one(log, user_msg("one"))
    (b,) = append_one(log, user_msg("two"))
    assert b.seq > a.seq
    assert [r.seq for r in log.read()] == [a.seq, b.seq]


def test_empty_log_has_last_seq_zero_and_no_events(log):
    assert log.last_seq() == 0
    assert list(log.read()) == []
    assert log.streams() == []


def test_read_returns_stored_events_filtered_by_agent_user_and_seq(log):
    recorded = append_one(
        log,
        user_msg("mine", i=1),
        user_msg("other user", user="u2", i=2),
        user_msg("other agent", agent="other", i=3),
        agent_msg("reply", i=4),
        cleared(False, i=5),
    )
    assert list(log.read()) == recorded
    mine = list(log.read(agent_id=AGENT, user=USER))
    assert [r.event for r in mine] == [user_msg("mine", i=1), agent_msg("reply", i=4), cleared(False, i=5)]
    assert [r.seq for r in log.read(after_seq=recorded[1].seq, until_seq=recorded[3].seq)] == [
        recorded[2].seq,
        recorded[3].seq,
    ]
    assert log.streams() == [(AGENT, USER), (AGENT, "u2"), ("other", USER)]


def test_request_id_is_stored_with_the_event(log):
    event = UserSaid(AGENT, USER, at(1), "hi", "req-1")
    append_one(log, event)
    assert [r.event for r in log.read()] == [event]


@pytest.mark.parametrize(
    ("bad_content", "error"),
    [
        pytest.param("\ud800 lone surrogate", UnicodeEncodeError, id="lone-surrogate"),
        pytest.param(object(), TypeError, id="not-json-serialisable"),
    ],
)
def test_append_is_all_or_nothing_across_batches(tmp_path, bad_content, error):
    path = tmp_path / "log.db"
    with EventLog.open(path) as log:
        (before,) = append_one(log, user_msg("committed before", i=1))
        batches = [
            [user_msg("zebra first batch", i=2), agent_msg("zebra reply", i=3)],
            [user_msg("zebra second batch", i=4), user_msg(bad_content, i=5), user_msg("zebra never", i=6)],
        ]
        with pytest.raises(error):
            log.append(batches)
        assert log.last_seq() == before.seq
        assert list(log.read()) == [before]
        assert log.search(AGENT, USER, "zebra", 10) == []
        assert log.memory(AGENT, USER).long_term_count == 1
        # the log is still usable afterwards (no transaction left open)
        (after,) = append_one(log, user_msg("zebra later", i=7))
        assert after.seq > before.seq
    with EventLog.open(path, readonly=True) as reopened:
        assert [r.event.content for r in reopened.read()] == ["committed before", "zebra later"]
        assert [h.content for h in reopened.search(AGENT, USER, "zebra", 10)] == ["zebra later"]


def test_append_gives_consecutive_seqs_across_batches_and_calls(log):
    out = log.append([[user_msg("a"), agent_msg("b")], [cleared(False)], [user_msg("c", user="u2")]])
    (more,) = log.append([[agent_msg("d")]])
    seqs = [r.seq for batch in out for r in batch] + [r.seq for r in more]
    assert seqs == [1, 2, 3, 4, 5]
    assert [r.seq for r in log.read()] == seqs


def test_a_long_term_clear_inside_one_append_forgets_what_came_before_it_in_that_append(log):
    (recorded,) = log.append([[
        user_msg("zebra before", i=1),
        agent_msg("zebra reply before", i=2),
        user_msg("zebra of another user", user="u2", i=3),
        cleared(True, i=4),
        user_msg("zebra after", i=5),
    ]])
    assert [r.seq for r in recorded] == [1, 2, 3, 4, 5]
    assert [h.content for h in log.search(AGENT, USER, "zebra", 10)] == ["zebra after"]
    assert [h.content for h in log.search(AGENT, "u2", "zebra", 10)] == ["zebra of another user"]
    contents = [getattr(r.event, "content", None) for r in log.read()]
    assert contents == ["", "", "zebra of another user", None, "zebra after"]


@pytest.mark.parametrize(
    "event",
    [
        UserSaid(AGENT, USER, at(1), 'quotes " and \\ back\nslash, caf\u00e9 \U0001f600 \x00 \u2028', "r1", "c1"),
        AgentAnswered(AGENT, USER, at(1), "", None, "c2"),
        AgentAnswered(AGENT, USER, at(1), "plain", "r3"),
        UserClearedMemory(AGENT, USER, at(1), True, "r4"),
        UserClearedMemory(AGENT, USER, at(1), False),
    ],
)
def test_payload_is_the_compact_json_of_the_event(event):
    import json

    from agentcast.store._events import payload_of

    body = {"long_term": event.long_term} if isinstance(event, UserClearedMemory) else {"content": event.content}
    if event.request_id is not None:
        body["request_id"] = event.request_id
    if getattr(event, "command_id", None) is not None:
        body["command_id"] = event.command_id
    assert payload_of(event) == json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def every_kind_of_event(user: str = USER, mark: str = "teal") -> list:
    """One of each event type a log may hold (a real model's turn included), with awkward text."""
    from agentcast.store import FactRemembered, ToolCalled, ToolReturned, TurnEnded

    return [
        UserSaid(AGENT, user, at(1), f'I like {mark} "quoted" caf\u00e9 \U0001f600 \u2028', "r1", "c1"),
        ToolCalled(AGENT, user, at(2), "call_1", "remember", {"fact": f"likes {mark}", "n": [1, 2.5, None, True]}, "r1"),
        FactRemembered(AGENT, user, at(3), f"likes {mark} \u00e0 la caf\u00e9", "r1"),
        FactRemembered(AGENT, user, at(3), "no request id"),
        ToolReturned(AGENT, user, at(4), "call_1", "remember", {"remembered": f"likes {mark}", "seq": 3}, None, "r1"),
        ToolCalled(AGENT, user, at(5), "call_2", "search_memory", "{not json \x00", "r1"),
        ToolReturned(AGENT, user, at(6), "call_2", "search_memory", None, "bad \"arguments\"", "r1"),
        ToolReturned(AGENT, user, at(6), "call_3", "current_time", "12:00", None),
        AgentAnswered(AGENT, user, at(7), "Noted \u00e9.", "r1", "c1"),
        TurnEnded(AGENT, user, at(8), "cancelled", f"Once upon a {mark}", "", "r2"),
        TurnEnded(AGENT, user, at(9), "failed", "", "the model server failed (HTTP 503)"),
        TurnEnded(AGENT, user, at(9), "cancelled", "half an \u00e9", "", "r4", "c4"),  # with its chat's command_id
        UserClearedMemory(AGENT, user, at(10), False, "r3"),
    ]


@pytest.mark.parametrize("event", every_kind_of_event(), ids=lambda e: e.TYPE)
def test_payload_of_every_event_type_is_what_json_dumps_makes(event):
    """Messages (facts included) and clears are spelled out; the others go through json.dumps.
    Either way the bytes are those of the general dict + json.dumps builder."""
    from agentcast.store._events import _payload_by_dumps, event_from_row, payload_of

    assert payload_of(event) == _payload_by_dumps(event)
    assert event_from_row(event.TYPE, event.agent_id, event.user, event.at, payload_of(event)) == event


# -- fold / rebuild ------------------------------------------------------------------------


def recorded_events(*events) -> list[Recorded]:
    return [Recorded(seq, event) for seq, event in enumerate(events, start=1)]


def test_fold_short_term_window_keeps_last_n_messages():
    events = recorded_events(*(user_msg(f"m{i}", i=i) if i % 2 else agent_msg(f"m{i}", i=i) for i in range(1, 6)))
    memory = rebuild(AGENT, USER, events, window=3)
    assert memory.short_term == (
        Message(3, "user", "m3", at(3)),
        Message(4, "assistant", "m4", at(4)),
        Message(5, "user", "m5", at(5)),
    )
    assert memory.long_term_count == 5
    assert memory.last_seq == 5
    assert memory.short_term_since == 3


def test_fold_window_not_yet_full_keeps_everything():
    memory = rebuild(AGENT, USER, recorded_events(user_msg("a"), agent_msg("b")), window=3)
    assert [m.content for m in memory.short_term] == ["a", "b"]


def test_fold_short_term_clear_empties_window_but_keeps_long_term():
    events = recorded_events(user_msg("a"), agent_msg("b"), user_msg("c"), cleared(False, i=9))
    memory = rebuild(AGENT, USER, events, window=3)
    assert memory.short_term == ()
    assert memory.long_term_count == 3
    assert memory.long_term_since == 0
    assert memory.last_clears == (Clear(4, at(9), False),)
    assert memory.last_seq == 4
    assert memory.short_term_since == 5


def test_fold_long_term_clear_empties_both():
    events = recorded_events(user_msg("a"), agent_msg("b"), user_msg("c"), cleared(True, i=9))
    memory = rebuild(AGENT, USER, events, window=3)
    assert memory.short_term == ()
    assert memory.long_term_count == 0
    assert memory.long_term_since == 4
    assert memory.last_clears == (Clear(4, at(9), True),)


def test_fold_messages_after_a_clear_start_a_new_window():
    events = recorded_events(user_msg("old"), cleared(False), user_msg("new"), agent_msg("newer"))
    memory = rebuild(AGENT, USER, events, window=3)
    assert [m.content for m in memory.short_term] == ["new", "newer"]
    assert memory.long_term_count == 3


@pytest.mark.parametrize(
    "event",
    [
        user_msg("other user", user="u2"),
        agent_msg("other agent", agent="other"),
        cleared(True, user="u2"),
        cleared(False, agent="other"),
    ],
)
def test_fold_ignores_events_of_another_agent_or_user(event):
    memory = rebuild(AGENT, USER, recorded_events(user_msg("a"), agent_msg("b")), window=3)
    assert fold(memory, Recorded(99, event)) == memory


def test_fold_of_nothing_is_empty_memory():
    memory = rebuild(AGENT, USER, [], window=3)
    assert memory == Memory(AGENT, USER, 3)
    assert memory.short_term_since == 1


def test_log_memory_is_the_fold_of_its_events(log):
    append_one(
        log,
        user_msg("a", i=1),
        user_msg("noise", user="u2", i=2),
        agent_msg("b", i=3),
        cleared(False, i=4),
        user_msg("c", i=5),
        agent_msg("d", i=6),
        user_msg("e", i=7),
        user_msg("f", i=8),
    )
    memory = log.memory(AGENT, USER, window=3)
    assert memory == rebuild(AGENT, USER, log.read(), window=3)
    assert [m.content for m in memory.short_term] == ["d", "e", "f"]
    assert memory.long_term_count == 6


# -- search ----------------------------------------------------------------------------------

DISTRACTORS = ["The weather is nice today", "I like my dog", "What time is it?", "Is it raining?", "my my my"]
FAVOURITE = "My favourite colour is turquoise."
FILL_COUNT = len(DISTRACTORS) + 1


def fill(log: EventLog, *, user: str = USER, agent: str = AGENT) -> list[Recorded]:
    contents = [*DISTRACTORS[:2], FAVOURITE, *DISTRACTORS[2:]]
    return append_one(log, *(user_msg(c, agent=agent, user=user, i=i) for i, c in enumerate(contents)))


def test_search_finds_the_favourite_colour_first(log):
    fill(log)
    hits = log.search(AGENT, USER, "What is my favourite colour?", 10)
    assert hits[0].content == FAVOURITE
    assert hits[0].role == "user"


def test_search_results_are_best_first(log):
    fill(log)
    hits = log.search(AGENT, USER, "What is my favourite colour?", 10)
    assert len(hits) >= 3
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > scores[1]


def test_search_hit_carries_seq_role_content_and_time(log):
    (recorded,) = append_one(log, agent_msg("turquoise is lovely", i=7))
    (hit,) = log.search(AGENT, USER, "turquoise", 5)
    assert (hit.seq, hit.role, hit.content, hit.at) == (recorded.seq, "assistant", "turquoise is lovely", at(7))
    assert hit.score > 0


def test_search_is_per_agent_and_user(log):
    append_one(
        log,
        user_msg("My favourite colour is red.", user="u2"),
        user_msg("My favourite colour is green.", agent="other"),
        user_msg(FAVOURITE),
        user_msg("My favourite colour is blue.", user="u1x"),
    )
    assert [h.content for h in log.search(AGENT, USER, "favourite colour", 10)] == [FAVOURITE]
    assert [h.content for h in log.search(AGENT, "u2", "favourite colour", 10)] == ["My favourite colour is red."]
    assert [h.content for h in log.search("other", USER, "favourite colour", 10)] == ["My favourite colour is green."]
    assert log.search("other", "u2", "favourite colour", 10) == []


def test_search_does_not_match_scope_tokens_as_content(log):
    append_one(log, user_msg("hello", user="u2"))
    assert log.search(AGENT, USER, "hello", 10) == []
    assert log.search(AGENT, USER, "scope", 10) == []


HOSTILE_QUERIES = [
    '"',
    'favourite "colour',
    '"favourite colour"',
    "NEAR(favourite colour)",
    "NEAR(",
    "favourite AND colour",
    "favourite OR",
    "NOT colour",
    "AND",
    "colour*",
    "*",
    "-colour",
    "content: colour",
    "scope:anything",
    "^colour",
    "(colour",
    "colour)",
    "((",
    "{content scope}: colour",
    "colour + dog",
    "'; DROP TABLE events; --",
    "\x00colour",
]


@pytest.mark.parametrize("query", HOSTILE_QUERIES)
def test_search_query_is_never_fts_syntax(log, query):
    fill(log)
    hits = log.search(AGENT, USER, query, 10)
    assert isinstance(hits, list)
    everything = {FAVOURITE, *DISTRACTORS}
    assert {h.content for h in hits} <= everything
    if "colour" in query:
        assert FAVOURITE in {h.content for h in hits}
    assert log.last_seq() == FILL_COUNT  # nothing was dropped or written


def test_search_treats_operator_words_as_plain_words(log):
    append_one(log, user_msg("turquoise sea"), user_msg("NOT a colour"), user_msg("or maybe and"))
    # as FTS syntax "turquoise NOT sea" would exclude the first message; as text it matches it
    assert "turquoise sea" in {h.content for h in log.search(AGENT, USER, "turquoise NOT sea", 10)}
    assert [h.content for h in log.search(AGENT, USER, "NOT", 10)] == ["NOT a colour"]
    assert [h.content for h in log.search(AGENT, USER, "OR AND", 10)] == ["or maybe and"]


@pytest.mark.parametrize("query", ["", "   ", "?!", '""', "*", "-:^()", "'\"", "\u2014"])
def test_search_query_without_words_returns_nothing(log, query):
    fill(log)
    assert log.search(AGENT, USER, query, 10) == []
    assert match_expression(AGENT, USER, query) is None


def test_match_expression_quotes_every_word():
    expr = match_expression(AGENT, USER, 'NEAR(a "b" OR c*')
    assert expr is not None
    scope = scope_token(AGENT, USER)
    assert expr == " OR ".join(f'"{scope}w{word}"' for word in ("near", "a", "b", "or", "c"))
    assert "NEAR(" not in expr and "*" not in expr


def test_search_respects_limit(log):
    append_one(log, *(user_msg(f"turquoise number {i}", i=i) for i in range(8)))
    assert len(log.search(AGENT, USER, "turquoise", 3)) == 3
    assert len(log.search(AGENT, USER, "turquoise", 1)) == 1
    assert len(log.search(AGENT, USER, "turquoise", 100)) == 8


def test_search_since_seq_restricts_to_the_short_term_window(log):
    append_one(log, *(user_msg(f"turquoise old {i}", i=i) for i in range(4)))
    recent = append_one(log, user_msg("turquoise recent", i=10), agent_msg("nothing", i=11), user_msg("turquoise last", i=12))
    memory = log.memory(AGENT, USER, window=3)
    assert memory.short_term_since == recent[0].seq
    hits = log.search(AGENT, USER, "turquoise", 10, since_seq=memory.short_term_since)
    assert sorted(h.content for h in hits) == ["turquoise last", "turquoise recent"]
    assert len(log.search(AGENT, USER, "turquoise", 10)) == 6


def test_search_short_term_window_is_empty_after_a_clear(log):
    append_one(log, user_msg("turquoise"), cleared(False))
    memory = log.memory(AGENT, USER, window=3)
    assert log.search(AGENT, USER, "turquoise", 10, since_seq=memory.short_term_since) == []
    # a short-term clear keeps the long-term memory searchable
    assert [h.content for h in log.search(AGENT, USER, "turquoise", 10)] == ["turquoise"]


def test_search_after_long_term_clear_forgets_only_that_user(log):
    fill(log)
    fill(log, user="u2")
    fill(log, agent="other")
    append_one(log, cleared(True))
    assert log.search(AGENT, USER, "favourite colour", 10) == []
    assert [h.content for h in log.search(AGENT, "u2", "favourite colour", 10)] == [FAVOURITE]
    assert [h.content for h in log.search("other", USER, "favourite colour", 10)] == [FAVOURITE]
    # messages after the clear are remembered again
    append_one(log, user_msg("my favourite colour is now amber"))
    assert [h.content for h in log.search(AGENT, USER, "favourite colour", 10)] == ["my favourite colour is now amber"]
    # the log itself keeps every event
    assert log.last_seq() == 3 * FILL_COUNT + 2


# -- reopen ----------------------------------------------------------------------------------


def test_data_survives_close_and_reopen(tmp_path):
    path = tmp_path / "log.db"
    with EventLog.open(path) as log:
        fill(log)
        append_one(log, agent_msg("noted", i=20), cleared(False, i=21))
        events = list(log.read())
        memory = log.memory(AGENT, USER, window=3)
    for readonly in (False, True):
        with EventLog.open(path, readonly=readonly) as reopened:
            assert list(reopened.read()) == events
            assert reopened.memory(AGENT, USER, window=3) == memory
            assert reopened.search(AGENT, USER, "What is my favourite colour?", 5)[0].content == FAVOURITE
    with EventLog.open(path) as reopened:
        (more,) = append_one(reopened, user_msg("again"))
        assert more.seq == events[-1].seq + 1


def test_user_ids_are_text_keys(tmp_path):
    path = tmp_path / "log.db"
    with EventLog.open(path) as log:
        append_one(log, user_msg("turquoise for 123", user="123"), user_msg("turquoise for 0123", user="0123"))
    with EventLog.open(path) as log:
        assert log.streams() == [(AGENT, "0123"), (AGENT, "123")]
        assert all(type(user) is str for _, user in log.streams())
        assert [r.event.user for r in log.read(user="123")] == ["123"]
        assert all(type(r.event.user) is str for r in log.read())
        assert [h.content for h in log.search(AGENT, "123", "turquoise", 10)] == ["turquoise for 123"]
        assert [h.content for h in log.search(AGENT, "0123", "turquoise", 10)] == ["turquoise for 0123"]
        assert log.memory(AGENT, "123").long_term_count == 1


# -- file handling -----------------------------------------------------------------------------


def test_open_creates_a_missing_file_writable(tmp_path):
    path = tmp_path / "new.db"
    with EventLog.open(path) as log:
        assert path.is_file()
        assert not log.readonly
        (recorded,) = append_one(log, user_msg("hello"))
        assert recorded.seq == 1
    assert path.read_bytes().startswith(b"SQLite format 3\x00")


def test_readonly_open_of_a_missing_file_raises_and_creates_nothing(tmp_path):
    path = tmp_path / "missing.db"
    with pytest.raises(MissingEventLog):
        EventLog.open(path, readonly=True)
    assert list(tmp_path.iterdir()) == []


def test_missing_event_log_is_a_file_not_found_error():
    assert issubclass(MissingEventLog, FileNotFoundError)


def write_foreign_sqlite(path) -> None:
    conn = stdlib_sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('precious')")
    conn.commit()
    conn.close()


def write_hello(path) -> None:
    path.write_bytes(b"hello world")


def write_big_text(path) -> None:
    path.write_bytes(b"not sqlite at all\n" * 1000)


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
@pytest.mark.parametrize("make", [write_hello, write_big_text, write_foreign_sqlite], ids=["hello", "text", "foreign-sqlite"])
def test_not_an_event_log_raises_and_leaves_file_untouched(tmp_path, make, readonly):
    path = tmp_path / "other.db"
    make(path)
    before = snapshot(path)
    with pytest.raises(NotAnEventLog):
        EventLog.open(path, readonly=readonly)
    assert snapshot(path) == before


def test_foreign_sqlite_file_keeps_its_data(tmp_path):
    path = tmp_path / "other.db"
    write_foreign_sqlite(path)
    for readonly in (False, True):
        with pytest.raises(NotAnEventLog):
            EventLog.open(path, readonly=readonly)
    conn = stdlib_sqlite3.connect(path)
    try:
        assert conn.execute("SELECT body FROM notes").fetchall() == [("precious",)]
        assert conn.execute("PRAGMA application_id").fetchone() == (0,)
    finally:
        conn.close()


def test_writable_open_of_a_directory_raises_not_an_event_log(tmp_path):
    with pytest.raises(NotAnEventLog):
        EventLog.open(tmp_path)


def test_empty_file_is_treated_as_new(tmp_path):
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    with EventLog.open(path) as log:
        assert log.last_seq() == 0
        append_one(log, user_msg("turquoise"))
    with EventLog.open(path, readonly=True) as log:
        assert [h.content for h in log.search(AGENT, USER, "turquoise", 5)] == ["turquoise"]


def test_readonly_log_cannot_append(tmp_path):
    path = tmp_path / "log.db"
    with EventLog.open(path) as log:
        append_one(log, user_msg("first"))
    with EventLog.open(path, readonly=True) as ro:
        assert ro.readonly
        with pytest.raises(sqlite3.Error):
            ro.append([[user_msg("second")]])
        assert [r.event.content for r in ro.read()] == ["first"]
    with EventLog.open(path) as log:
        assert [r.event.content for r in log.read()] == ["first"]


def test_readonly_log_sees_events_committed_by_an_open_writable_log(tmp_path):
    path = tmp_path / "log.db"
    with EventLog.open(path) as writer:
        append_one(writer, user_msg("turquoise one"))
        with EventLog.open(path, readonly=True) as reader:
            assert [r.event.content for r in reader.read()] == ["turquoise one"]
            append_one(writer, user_msg("turquoise two"))
            assert [r.event.content for r in reader.read()] == ["turquoise one", "turquoise two"]
            assert reader.last_seq() == writer.last_seq() == 2
            assert len(reader.search(AGENT, USER, "turquoise", 10)) == 2


# -- the search index: per-memory terms, migration, rebuild ---------------------------------


def test_words_fold_case_and_accents_and_split_like_fts5():
    assert words("Café CRÈME, foo_bar don't 東京タワー 42x") == ["cafe", "creme", "foo", "bar", "don", "t", "東京タワー", "42x"]


def test_words_of_ascii_text_are_what_the_word_pattern_finds_in_the_casefolded_text():
    # ASCII text takes a faster path (one str.translate, then split); it must cut and fold exactly
    # as the regex on the case-folded text does, for every ASCII character (controls, `_`, digits).
    import random

    from agentcast.store._terms import _WORD

    rng = random.Random(5)
    samples = ["", " ", "_", "a_b", "A1b2_C3", "\x1c\x1d\x1e\x1fx\x0b\x0cy", "don't STOP-me now!", "".join(map(chr, range(128)))]
    samples += ["".join(chr(rng.randrange(128)) for _ in range(rng.randint(0, 40))) for _ in range(5000)]
    for text in samples:
        assert words(text) == _WORD.findall(text.casefold()), repr(text)


def test_search_matches_regardless_of_case_and_accents(log):
    append_one(log, user_msg("Un café crème à Genève"), user_msg("東京タワー を 見た"))
    assert [h.content for h in log.search(AGENT, USER, "CAFE creme", 5)] == ["Un café crème à Genève"]
    assert [h.content for h in log.search(AGENT, USER, "genève", 5)] == ["Un café crème à Genève"]
    assert [h.content for h in log.search(AGENT, USER, "東京タワー", 5)] == ["東京タワー を 見た"]


def test_a_rare_word_outranks_words_every_message_has(log):
    append_one(log, *(user_msg(f"the and you {i}", i=i % 60) for i in range(30)))
    append_one(log, user_msg("the and you turquoise"))
    hits = log.search(AGENT, USER, "the and you turquoise", 3)
    assert hits[0].content == "the and you turquoise"


def test_document_frequency_is_counted_within_the_memory(log):
    """Another user's messages full of a word do not make it less telling for this user."""
    append_one(log, user_msg("zebra crossing"), user_msg("quiet street"))
    before = [(h.content, h.score) for h in log.search(AGENT, USER, "zebra street", 5)]
    append_one(log, *(user_msg("zebra zebra zebra", user="u2") for _ in range(50)))
    after = [h.content for h in log.search(AGENT, USER, "zebra street", 5)]
    assert [c for c, _ in before] == after
    assert sorted(after) == ["quiet street", "zebra crossing"]


def old_schema_log(path):
    """A log as agentcast wrote it before migration m004: the `memory_fts` index with its text."""
    from sqlite_utils import Database

    from agentcast.store._schema import APPLICATION_ID, migrations

    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    db = Database(conn)
    migrations.apply(db, stop_before="m004_search_index_by_user")
    rows = [(1, "user_message", USER, '{"content":"my favourite colour is turquoise"}'),
            (2, "agent_message", USER, '{"content":"You said: my favourite colour is turquoise"}'),
            (3, "user_message", "u2", '{"content":"","redacted":true}'),
            (4, "memory_cleared", "u2", '{"long_term":true}'),
            (5, "user_message", "u2", '{"content":"turquoise again"}')]
    for seq, type_, user, payload in rows:
        conn.execute("INSERT INTO events (seq, at, type, agent_id, user, payload) VALUES (?, ?, ?, ?, ?, ?)",
                     (seq, at(seq), type_, AGENT, user, payload))
        if type_ != "memory_cleared" and "redacted" not in payload:
            conn.execute("INSERT INTO memory_fts (rowid, content, scope) VALUES (?, json_extract(?, '$.content'), ?)",
                         (seq, payload, scope_token(AGENT, user)))
    conn.close()


def test_an_old_log_is_reindexed_and_memory_fts_dropped(tmp_path):
    from agentcast.store import verify

    path = tmp_path / "old.db"
    old_schema_log(path)
    with EventLog.open(path) as log:
        tables = {r[0] for r in log._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "memory_fts" not in tables and "memory_index" in tables
        assert [h.seq for h in log.search(AGENT, USER, "turquoise", 5)] == [1, 2]
        assert [h.content for h in log.search(AGENT, "u2", "turquoise", 5)] == ["turquoise again"]
        assert verify(log).ok
        log.append([[cleared(True, i=9)]])  # forgetting works on the migrated index
        assert log.search(AGENT, USER, "turquoise", 5) == []
        assert verify(log).ok


def m003_log_as_main_wrote_it(path) -> list:
    """A log at schema m003 as the main branch's server wrote it (before m004): every event type,
    facts among them, their `memory_fts` rows (main indexed user, agent and fact messages), and a
    user whose memory, a fact included, was forgotten (payloads redacted, index rows deleted)."""
    from sqlite_utils import Database

    from agentcast.store._events import ROLE_OF_TYPE, payload_of, redacted_payload
    from agentcast.store._schema import APPLICATION_ID, migrations

    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA secure_delete=ON")  # as main's server opened its log
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    migrations.apply(Database(conn), stop_before="m004_search_index_by_user")
    conn.execute("INSERT INTO memory_fts (memory_fts, rank) VALUES ('secure-delete', 1)")
    events = every_kind_of_event(USER, "teal") + every_kind_of_event("u2", "ochre")
    events.append(cleared(True, user="u2", i=11))
    events += every_kind_of_event("u2", "umber")
    clear_seq = len(every_kind_of_event()) * 2 + 1
    for seq, event in enumerate(events, start=1):
        payload = payload_of(event)
        if event.user == "u2" and seq < clear_seq:
            payload = redacted_payload(event.TYPE, payload)
        conn.execute("INSERT INTO events (seq, at, type, agent_id, user, payload, command_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (seq, event.at, event.TYPE, event.agent_id, event.user, payload, getattr(event, "command_id", None)))
        if event.TYPE in ROLE_OF_TYPE and not (event.user == "u2" and seq < clear_seq):
            conn.execute("INSERT INTO memory_fts (rowid, content, scope) VALUES (?, ?, ?)",
                         (seq, event.content, scope_token(event.agent_id, event.user)))
    conn.close()
    return events


def test_a_main_m003_log_with_facts_and_turn_activity_migrates_to_memory_index(tmp_path):
    from agentcast.store import rebuild, verify

    path = tmp_path / "m003.db"
    events = m003_log_as_main_wrote_it(path)
    with EventLog.open(path) as log:
        assert verify(log).ok, verify(log).as_json()
        indexed = {r[0] for r in log._conn.execute("SELECT rowid FROM memory_index")}
        memory_rows = {seq for seq, e in enumerate(events, start=1)
                       if e.TYPE in ("user_message", "agent_message", "fact_remembered")}
        clear_seq = next(s for s, e in enumerate(events, start=1) if e.TYPE == "memory_cleared" and e.long_term)
        assert indexed == {s for s in memory_rows if events[s - 1].user == USER or s > clear_seq}
        hits = log.search(AGENT, USER, "teal", 10)
        assert {(h.seq, h.role) for h in hits} == {(1, "user"), (3, "fact")}  # not the tool call's arguments
        assert [h.role for h in log.search(AGENT, USER, "la", 10)] == ["fact"]
        assert log.search(AGENT, "u2", "ochre", 10) == []  # forgotten before the migration
        assert {h.role for h in log.search(AGENT, "u2", "umber", 10)} == {"user", "fact"}
        memory = log.memory(AGENT, USER)
        assert memory == rebuild(AGENT, USER, list(log.read(user=USER)))
        assert memory.long_term_count == 4 and memory.short_term == ()  # user, 2 facts, answer; a short clear
        # a long-term clear on the migrated index forgets the facts too, and verify stays clean
        log.append([[cleared(True, i=20)]])
        assert log.search(AGENT, USER, "teal", 10) == [] and log.search(AGENT, USER, "la", 10) == []
        report = verify(log)
        assert report.ok, report.as_json()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("m003.db"))
    assert b"teal" not in raw and b"ochre" not in raw and b"umber" in raw


def test_an_index_made_with_another_unicode_version_is_rebuilt(tmp_path):
    from agentcast.store import verify

    path = tmp_path / "log.db"
    with EventLog.open(path) as log:
        append_one(log, user_msg("Un café crème"), user_msg("the other one", user="u2"))
        log._conn.execute("UPDATE memory_index_words SET unicode = '1.0'")
        log._conn.execute("INSERT INTO memory_index (memory_index) VALUES ('delete-all')")  # as if made otherwise
        assert log.search(AGENT, USER, "cafe", 5) == []
    with EventLog.open(path) as log:
        assert [h.content for h in log.search(AGENT, USER, "cafe", 5)] == ["Un café crème"]
        assert verify(log).ok


@pytest.mark.parametrize("text", ["", "...", "plain words here", "Café au lait", "東京 and Tokyo", "a_b-c"])
def test_index_terms_are_the_scope_then_the_term_of_each_word(text):
    from agentcast.store._terms import index_terms, term

    scope = scope_token(AGENT, USER)
    assert index_terms(scope, text) == " ".join([scope, *(term(scope, w) for w in words(text))])
