"""The contract of a recorder (`store.Recorder`, and `store.RecorderInspection` for the read side): what every
backend must do, written against the interface only.

A backend's test module subclasses `RecorderContract` (and `InspectionContract` if it implements the
inspection side), naming the class `Test...` and saying how to open a fresh recorder and a second
reader on it (tests/test_sqlite_recorder.py does it for SQLite). Each test gets a fresh, empty log.
Covered: seqs in commit order without gaps, all-or-nothing appends, read-your-writes across a reader,
reads by stream and range, one moment within `snapshot()`, idempotent command ids (`find_turn`),
forgetting, search scoping, fences, snapshots, streams and the last seq; semantic memory: the messages to
embed, vectors fenced by their cursor, nearest by cosine (centred), forgetting a user's vectors, a vector
for a message forgotten meanwhile dropped, a model change, and the hybrid search over all of it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from agentcast.store._vectors import CENTRE_FROM

from agentcast.store import (
    LEXICAL,
    SEMANTIC,
    AgentAnswered,
    AppendConflict,
    EmbeddingConflict,
    EmbeddingCursor,
    MessageVector,
    QueryVector,
    FactRemembered,
    Fence,
    Memory,
    Recorded,
    Recorder,
    RecorderInspection,
    ToolCalled,
    ToolReturned,
    TurnEnded,
    UserClearedMemory,
    UserSaid,
    fold_all,
    search_memory,
)

A, B = "agent_a", "agent_b"


def at(i: int) -> str:
    return f"2026-01-01T00:00:{i:02d}.000Z"


def said(text: str, user: str = "alice", agent: str = A, i: int = 0, request_id: str | None = None,
         command_id: str | None = None) -> UserSaid:
    return UserSaid(agent, user, at(i), text, request_id, command_id)


def answered(text: str, user: str = "alice", agent: str = A, i: int = 0, request_id: str | None = None,
             command_id: str | None = None) -> AgentAnswered:
    return AgentAnswered(agent, user, at(i), text, request_id, command_id)


def cleared(long_term: bool, user: str = "alice", agent: str = A, i: int = 0) -> UserClearedMemory:
    return UserClearedMemory(agent, user, at(i), long_term, "r-clear")


def a_turn_with_tools(user: str = "alice", mark: str = "teal") -> list:
    """One turn that called tools and remembered a fact, with the client's ids: every kind of text a clear forgets."""
    return [
        said(f"I like {mark}", user, request_id="r1", command_id="c1"),
        ToolCalled(A, user, at(1), "call_1", "remember", {"fact": f"likes {mark}"}, "r1"),
        FactRemembered(A, user, at(2), f"likes {mark}", "r1"),
        ToolReturned(A, user, at(3), "call_1", "remember", {"remembered": f"likes {mark}"}, None, "r1"),
        answered(f"Noted {mark}", user, i=4, request_id="r1", command_id="c1"),
        said(f"tell me about {mark}", user, i=5, request_id="r2", command_id="c2"),
        TurnEnded(A, user, at(6), "cancelled", f"Once upon a {mark}", "", "r2", "c2"),
    ]


class RecorderContract:
    """What every `Recorder` does. A subclass says how to open one (`open_recorder`) and a second reader on it."""

    def open_recorder(self, where: Path) -> Recorder:
        """A writable recorder on a fresh, empty log kept under the directory `where`."""
        raise NotImplementedError

    def open_reader(self, recorder: Recorder) -> Recorder:
        """A second recorder, read-only, on the same log as `recorder` (another connection)."""
        raise NotImplementedError

    @pytest.fixture
    def recorder(self, tmp_path):
        recorder = self.open_recorder(tmp_path)
        try:
            yield recorder
        finally:
            recorder.close()

    @pytest.fixture
    def reader(self, recorder):
        reader = self.open_reader(recorder)
        try:
            yield reader
        finally:
            reader.close()

    # -- an empty log ------------------------------------------------------------------------

    def test_an_empty_log_has_nothing(self, recorder):
        assert recorder.last_seq() == 0
        assert recorder.streams() == []
        assert list(recorder.read()) == []
        assert recorder.search(A, "alice", "anything", 10) == []
        assert recorder.find_turn(A, "alice", "c1") is None
        assert recorder.memory(A, "alice") == Memory(A, "alice")
        assert recorder.restore(A, "alice", window=5) == (Memory(A, "alice", 5), 0)
        assert recorder.append([]) == []
        assert recorder.append([[]]) == [[]]
        assert recorder.last_seq() == 0

    # -- ordering, no gaps, all or nothing ------------------------------------------------------

    def test_seqs_run_one_two_three_in_commit_order_without_gaps(self, recorder):
        first = recorder.append([[said("one"), answered("two")], [said("three", "bob")]])
        second = recorder.append([[said("four", agent=B)]])
        assert [[r.seq for r in batch] for batch in first + second] == [[1, 2], [3], [4]]
        assert recorder.last_seq() == 4
        events = list(recorder.read())
        assert [r.seq for r in events] == [1, 2, 3, 4]
        assert events == [r for batch in first + second for r in batch]
        assert [r.event.content for r in events] == ["one", "two", "three", "four"]

    def test_every_event_type_reads_back_equal(self, recorder):
        events = a_turn_with_tools() + [TurnEnded(A, "alice", at(7), "failed", "", "HTTP 503"), cleared(False, i=8)]
        (recorded,) = recorder.append([events])
        assert [r.event for r in recorder.read()] == events
        assert list(recorder.read()) == recorded

    def test_an_append_is_all_or_nothing(self, recorder):
        recorder.append([[said("kept")]])
        with pytest.raises(AppendConflict):
            recorder.append([[said("first batch")], [said("second batch")]], fences=[None, Fence(0)])
        assert [r.event.content for r in recorder.read()] == ["kept"]
        assert recorder.search(A, "alice", "batch", 10) == []
        (recorded,) = recorder.append([[said("next")]])
        assert [r.seq for r in recorded] == [2]  # no seq was used up by the refused append

    # -- reading --------------------------------------------------------------------------------

    def test_read_by_stream_range_and_limit(self, recorder):
        recorder.append([[said("a1"), said("b1", "bob"), said("a2"), said("x1", agent=B), answered("a3"), said("b2", "bob")]])
        content = lambda **kw: [r.event.content for r in recorder.read(**kw)]  # noqa: E731
        assert content(agent_id=A, user="alice") == ["a1", "a2", "a3"]
        assert content(user="bob") == ["b1", "b2"]
        assert content(agent_id=B) == ["x1"]
        assert content(after_seq=2) == ["a2", "x1", "a3", "b2"]
        assert content(after_seq=2, until_seq=4) == ["a2", "x1"]
        assert content(agent_id=A, user="alice", after_seq=1, limit=1) == ["a2"]
        assert content(after_seq=6) == []

    def test_a_reader_sees_every_append_committed_before_its_read(self, recorder, reader):
        assert reader.last_seq() == 0
        recorder.append([[said("hello teal"), answered("hi")]])
        assert reader.last_seq() == 2
        assert [r.event.content for r in reader.read(agent_id=A, user="alice")] == ["hello teal", "hi"]
        assert [h.seq for h in reader.search(A, "alice", "teal", 10)] == [1]
        assert reader.restore(A, "alice")[0] == recorder.memory(A, "alice")
        assert reader.streams() == [(A, "alice")]

    def test_within_a_snapshot_a_reader_sees_one_moment(self, recorder, reader):
        recorder.append([[said("before")]])
        with reader.snapshot():
            assert reader.last_seq() == 1
            recorder.append([[said("during")]])
            assert reader.last_seq() == 1
            assert [r.event.content for r in reader.read()] == ["before"]
        assert reader.last_seq() == 2

    def test_memory_is_the_fold_of_the_streams_events_up_to_a_seq(self, recorder):
        events = [said("m1"), answered("m2"), said("other", "bob"), cleared(False), said("m3"), said("m4"), cleared(True),
                  said("m5")] + a_turn_with_tools()
        recorder.append([events])
        recorded = list(recorder.read())  # as the log holds them now: the long-term clear erased what came before it
        assert recorded[0].event.content == ""
        for until in (None, 0, 2, 4, 6, 7, 8, len(events)):
            expected = fold_all(Memory(A, "alice", 3), [r for r in recorded if until is None or r.seq <= until])
            assert recorder.memory(A, "alice", window=3, until_seq=until) == expected, until

    # -- retries: a chat's command_id finds its turn --------------------------------------------------

    def test_find_turn_finds_a_commands_message_and_how_its_turn_ended(self, recorder):
        recorder.append([[said("q1", command_id="c1"), answered("a1", command_id="c1")]])
        recorder.append([[said("q2", command_id="c2"),
                          TurnEnded(A, "alice", at(1), "failed", "", "boom", None, "c2"),
                          TurnEnded(A, "alice", at(2), "cancelled", "par", "", None, "c2")]])
        recorder.append([[said("q3", command_id="c3")]])
        recorder.append([[said("q4", command_id="c4"), TurnEnded(A, "alice", at(3), "failed", "", "x", None, "c4"),
                          answered("a4", command_id="c4")]])
        said1, ending1 = recorder.find_turn(A, "alice", "c1")
        assert (said1.seq, said1.event.content, ending1.seq, ending1.event.content) == (1, "q1", 2, "a1")
        said2, ending2 = recorder.find_turn(A, "alice", "c2")
        assert said2.seq == 3 and isinstance(ending2.event, TurnEnded) and ending2.event.outcome == "cancelled"
        assert recorder.find_turn(A, "alice", "c3") == (Recorded(6, said("q3", command_id="c3")), None)
        assert isinstance(recorder.find_turn(A, "alice", "c4")[1].event, AgentAnswered)  # the answer wins
        assert recorder.find_turn(A, "alice", "c9") is None
        assert recorder.find_turn(A, "bob", "c1") is None
        assert recorder.find_turn(B, "alice", "c1") is None

    # -- forgetting ----------------------------------------------------------------------------------

    def test_a_long_term_clear_forgets_text_index_command_ids_and_snapshots(self, recorder, reader):
        mine = a_turn_with_tools("alice", "teal")
        theirs = a_turn_with_tools("bob", "teal")
        recorder.append([mine + theirs], [fold_all(Memory(A, "alice"), recorder.append([[said("first")]])[0])])
        seqs_before = [(r.seq, r.event.TYPE) for r in recorder.read()]
        (clear,) = recorder.append([[cleared(True)]])[0]
        recorder.append([[said("after teal")]])
        events = list(reader.read(agent_id=A, user="alice"))
        assert [(r.seq, r.event.TYPE) for r in events if r.seq < clear.seq] == [
            (seq, type_) for seq, type_ in seqs_before if seq in {r.seq for r in events}]
        forgotten = [r.event for r in events if r.seq < clear.seq]
        for event in forgotten:
            assert "teal" not in repr(event), event
            assert getattr(event, "request_id", None) is None and getattr(event, "command_id", None) is None, event
        tool_call = next(e for e in forgotten if isinstance(e, ToolCalled))
        assert (tool_call.call_id, tool_call.tool, tool_call.arguments) == ("call_1", "remember", {})
        ended = next(e for e in forgotten if isinstance(e, TurnEnded))
        assert (ended.outcome, ended.partial) == ("cancelled", "")
        assert [h.content for h in reader.search(A, "alice", "teal", 10)] == ["after teal"]
        assert reader.find_turn(A, "alice", "c1") is None and reader.find_turn(A, "alice", "c2") is None
        memory, folded = reader.restore(A, "alice")
        assert folded == memory.version  # the snapshot went with the text
        assert memory == reader.memory(A, "alice") and memory.long_term_count == 1
        # bob's memory of the same words is untouched
        assert [r.event for r in reader.read(user="bob")] == theirs
        assert len(reader.search(A, "bob", "teal", 10)) == 4
        assert reader.find_turn(A, "bob", "c1") is not None

    def test_a_snapshot_saved_with_a_long_term_clear_of_its_stream_is_forgotten_with_it(self, recorder):
        """The clear forgets every snapshot of its stream, also one saved in the same append (a group commit
        may carry a lane's snapshot with a clear): no forgotten text survives in a snapshot."""
        (recorded,) = recorder.append([[said("secret teal"), answered("noted teal")]])
        before = fold_all(Memory(A, "alice"), recorded)
        recorder.append([[said("bob's", "bob")], [cleared(True)]], [before, fold_all(Memory(A, "bob"), [])])
        memory, folded = recorder.restore(A, "alice")
        assert folded == memory.version == 3  # folded from the log: no snapshot is left
        assert memory == recorder.memory(A, "alice") and "teal" not in repr(memory)

    def test_a_short_term_clear_forgets_nothing(self, recorder):
        recorder.append([[said("keep teal", command_id="c1"), cleared(False)]])
        assert [h.content for h in recorder.search(A, "alice", "teal", 10)] == ["keep teal"]
        assert recorder.find_turn(A, "alice", "c1") is not None
        assert recorder.memory(A, "alice").short_term == ()

    # -- search --------------------------------------------------------------------------------------

    def test_a_search_finds_only_its_own_users_messages_of_its_own_agent(self, recorder):
        recorder.append([[said("my secret teal", "alice"), said("their secret teal", "bob"),
                          said("another agent's teal", "alice", B), answered("teal noted", "alice"),
                          FactRemembered(A, "alice", at(1), "likes teal")]])
        hits = recorder.search(A, "alice", "teal", 10)
        assert sorted(h.seq for h in hits) == [1, 4, 5]
        assert {h.role for h in hits} == {"user", "assistant", "fact"}
        assert [h.seq for h in recorder.search(A, "bob", "teal secret", 10)] == [2]
        assert [h.seq for h in recorder.search(B, "alice", "teal", 10)] == [3]
        assert recorder.search(B, "bob", "teal", 10) == []
        assert [h.seq for h in recorder.search(A, "alice", "teal", 10, since_seq=4)] == sorted(
            h.seq for h in recorder.search(A, "alice", "teal", 10, since_seq=4)) and all(
            h.seq >= 4 for h in recorder.search(A, "alice", "teal", 10, since_seq=4))
        assert len(recorder.search(A, "alice", "teal", 1)) == 1

    def test_a_query_is_text_never_syntax(self, recorder):
        recorder.append([[said('say "NEAR(teal*" OR -x: :col')]])
        for query in ('"', "NEAR(", "teal*", "OR", "-x:", "*", ")", "AND NOT"):
            recorder.search(A, "alice", query, 5)  # never an error
        assert [h.seq for h in recorder.search(A, "alice", '"teal', 5)] == [1]
        assert recorder.search(A, "alice", "  ", 5) == []

    # -- fences --------------------------------------------------------------------------------------

    def test_a_stream_fence_holds_only_at_the_streams_last_seq(self, recorder):
        recorder.append([[said("one")]], fences=[Fence(0, A, "alice")])
        recorder.append([[said("bob", "bob")]])
        recorder.append([[said("two")]], fences=[Fence(1, A, "alice")])  # bob's event is not alice's stream
        with pytest.raises(AppendConflict) as refused:
            recorder.append([[said("stale")]], fences=[Fence(1, A, "alice")])
        assert refused.value.actual == 3 and refused.value.fence == Fence(1, A, "alice")
        assert "3" in str(refused.value) and "alice" in str(refused.value)
        assert [r.event.content for r in recorder.read()] == ["one", "bob", "two"]

    def test_a_log_fence_holds_only_at_the_logs_last_seq(self, recorder):
        recorder.append([[said("one")]], fences=[Fence(0)])
        with pytest.raises(AppendConflict) as refused:
            recorder.append([[said("two")]], fences=[Fence(0)])
        assert refused.value.actual == 1
        recorder.append([[said("two")]], fences=[Fence(1)])
        assert recorder.last_seq() == 2

    def test_a_fence_sees_the_batches_before_it_in_the_same_append(self, recorder):
        out = recorder.append([[said("one")], [said("two")], [said("three", "bob")]],
                              fences=[Fence(0, A, "alice"), Fence(1, A, "alice"), Fence(2)])
        assert [r.seq for batch in out for r in batch] == [1, 2, 3]
        with pytest.raises(AppendConflict):
            recorder.append([[said("four")], [said("five")]], fences=[Fence(2, A, "alice"), Fence(2, A, "alice")])
        assert recorder.last_seq() == 3

    def test_a_fence_is_on_a_stream_or_the_log(self):
        with pytest.raises(ValueError):
            Fence(1, A, None)
        with pytest.raises(ValueError):
            Fence(-1)

    # -- snapshots -----------------------------------------------------------------------------------

    def test_restore_starts_from_the_latest_snapshot_and_folds_what_came_after(self, recorder):
        (first,) = recorder.append([[said(f"m{i}") for i in range(5)]])
        recorder.append([[said("m5")]], [fold_all(Memory(A, "alice", 3), first)])
        assert recorder.restore(A, "alice", window=3) == (recorder.memory(A, "alice", window=3), 1)
        assert recorder.restore(A, "alice", window=4)[1] == 6  # no snapshot for that window
        recorder.append([], [recorder.memory(A, "alice", window=3)])  # a newer one replaces it
        assert recorder.restore(A, "alice", window=3) == (recorder.memory(A, "alice", window=3), 0)
        assert recorder.restore(A, "bob", window=3) == (Memory(A, "bob", 3), 0)

    # -- streams, the last seq, health ---------------------------------------------------------------

    def test_streams_are_every_agent_and_user_with_events_sorted(self, recorder):
        recorder.append([[said("x", "zed", B), said("x", "bob"), said("x", "alice"), said("y", "bob")]])
        assert recorder.streams() == [(A, "alice"), (A, "bob"), (B, "zed")]
        assert recorder.last_seq() == 4

    def test_a_writable_recorder_says_so_and_takes_room(self, recorder, reader):
        recorder.check_writable()
        recorder.append([[said("x" * 1000)]])
        assert recorder.storage_bytes() > 0 and reader.storage_bytes() > 0


# -- semantic memory: hand-made vectors ------------------------------------------------------------

#: Hand-made 4-dimensional vectors, one per "topic": a message's vector is its topic's, so cosines are known.
TOPIC = {"tea": [1.0, 0.0, 0.0, 0.0], "bus": [0.0, 1.0, 0.0, 0.0], "cat": [0.0, 0.0, 1.0, 0.0],
         "sky": [0.0, 0.0, 0.0, 1.0], "tea-ish": [0.9, 0.1, 0.0, 0.0]}


def embed_all(recorder: Recorder, model: str = "m1", agents=(A,), vector_of=None, batch: int = 100) -> int:
    """Embed every message of `agents` as a worker would: read after the cursor, add, move the cursor; each
    message's vector is its topic's (the text's first word), or `vector_of(text)`. Returns the cursor."""
    (agent,) = agents if len(agents) == 1 else (None,)
    cursor = recorder.embedding_cursor(agents[0], model)
    while True:
        found = recorder.unembedded(list(agents), cursor, batch)
        vectors = [MessageVector(t.seq, t.agent_id, t.user,
                                 vector_of(t.text) if vector_of else TOPIC.get(t.text.split()[0], [0.5] * 4))
                   for t in found.texts]
        recorder.add_vectors(model, 4, vectors, {a: (cursor, found.scanned_to) for a in agents})
        cursor = found.scanned_to
        if len(found.texts) < batch:
            return cursor


class VectorContract:
    """What every `Recorder` does for semantic memory: message vectors, a projection an embedding worker keeps."""

    def test_unembedded_are_the_remembered_messages_of_the_agents_in_seq_order(self, recorder):
        recorder.append([a_turn_with_tools("alice") + [said("bob tea", "bob"), said("other agent", agent=B)]])
        found = recorder.unembedded([A], 0, 100)
        assert [(t.seq, t.user, t.text) for t in found.texts] == [
            (1, "alice", "I like teal"), (3, "alice", "likes teal"), (5, "alice", "Noted teal"),
            (6, "alice", "tell me about teal"), (8, "bob", "bob tea")]
        assert found.scanned_to == 9  # the last seq of the log: nothing after it is missing
        first = recorder.unembedded([A], 0, 2)
        assert [t.seq for t in first.texts] == [1, 3] and first.scanned_to == 3
        assert [t.seq for t in recorder.unembedded([A, B], 5, 100).texts] == [6, 8, 9]
        assert recorder.unembedded([A], 9, 100).texts == () and recorder.unembedded([A], 9, 100).scanned_to == 9
        assert recorder.count_unembedded([A], 0) == 5 and recorder.count_unembedded([A, B], 5) == 3
        recorder.append([[cleared(True)]])
        assert [t.user for t in recorder.unembedded([A], 0, 100).texts] == ["bob"]  # forgotten: nothing to embed
        assert recorder.count_unembedded([A], 0) == 1 and recorder.count_unembedded([], 0) == 0

    def test_vectors_are_found_by_cosine_within_their_own_stream(self, recorder, reader):
        recorder.append([[said("tea time"), said("bus route"), said("cat nap"), said("tea for bob", "bob"),
                          answered("sky blue"), said("tea again", agent=B)]])
        assert embed_all(recorder) == 6 and recorder.embedding_cursor(A, "m1") == 6
        assert recorder.embedding_cursor(A, "other") == 0 and recorder.embedding_cursor(B, "m1") == 0
        hits = reader.nearest(A, "alice", "m1", TOPIC["tea-ish"], 10)
        assert [h.seq for h in hits] == [1, 2, 3, 5]  # tea (cos 0.99), bus (0.11), then the two at cosine 0
        assert (hits[0].role, hits[0].content, hits[0].at) == ("user", "tea time", at(0))
        assert hits[0].score == pytest.approx(0.9939, abs=0.01) and hits[1].score == pytest.approx(0.1104, abs=0.01)
        assert {h.role for h in hits} == {"user", "assistant"}
        assert [h.seq for h in reader.nearest(A, "bob", "m1", TOPIC["tea"], 10)] == [4]
        assert reader.nearest(B, "alice", "m1", TOPIC["tea"], 10) == []  # agent B's messages were not embedded
        assert reader.nearest(A, "alice", "other", TOPIC["tea"], 10) == []
        assert [h.seq for h in reader.nearest(A, "alice", "m1", TOPIC["tea"], 2, since_seq=2)] == [2, 3]
        assert len(reader.nearest(A, "alice", "m1", TOPIC["tea"], 1)) == 1

    def test_vectors_added_one_at_a_time_are_all_found(self, recorder):
        for i in range(70):
            recorder.append([[said(f"{'tea' if i == 33 else 'bus'} {i}")]])
            embed_all(recorder, batch=1)
        hits = recorder.nearest(A, "alice", "m1", TOPIC["tea"], 100)
        assert len(hits) == 70 and hits[0].content == "tea 33"
        assert sorted(h.seq for h in hits) == list(range(1, 71))

    def test_a_cursor_that_moved_refuses_the_write_and_stores_nothing(self, recorder, reader):
        recorder.append([[said("tea one"), said("bus two")]])
        found = recorder.unembedded([A], 0, 10)
        vectors = [MessageVector(t.seq, A, "alice", TOPIC[t.text.split()[0]]) for t in found.texts]
        assert recorder.add_vectors("m1", 4, vectors, {A: (0, 2)}) == 2
        with pytest.raises(EmbeddingConflict) as conflict:  # another writer embedded the same messages first
            recorder.add_vectors("m1", 4, vectors, {A: (0, 2)})
        assert (conflict.value.expected, conflict.value.actual) == (0, 2) and "2" in str(conflict.value)
        assert len(recorder.nearest(A, "alice", "m1", TOPIC["tea"], 10)) == 2 and recorder.embedding_cursor(A, "m1") == 2
        with pytest.raises(ValueError, match="within the range"):  # a vector the cursor does not move over
            recorder.add_vectors("m1", 4, [MessageVector(1, A, "alice", TOPIC["tea"])], {A: (2, 2)})
        with pytest.raises(ValueError, match="dimensions"):
            recorder.append([[said("tea three")]])
            recorder.add_vectors("m1", 4, [MessageVector(3, A, "alice", [1.0, 0.0])], {A: (2, 3)})
        with pytest.raises(ValueError, match="dimensions"):  # a model keeps the length of its vectors
            recorder.add_vectors("m1", 2, [MessageVector(3, A, "alice", [1.0, 0.0])], {A: (2, 3)})
        assert recorder.embedding_cursor(A, "m1") == 2 and reader.embedding_cursor(A, "m1") == 2

    def test_a_vector_for_a_message_forgotten_meanwhile_is_dropped(self, recorder):
        recorder.append([[said("tea secret"), said("bus", "bob")]])
        found = recorder.unembedded([A], 0, 10)  # the worker read the text ...
        recorder.append([[cleared(True)]])  # ... a long-term clear committed while it embedded it ...
        vectors = [MessageVector(t.seq, t.agent_id, t.user, TOPIC[t.text.split()[0]]) for t in found.texts]
        assert recorder.add_vectors("m1", 4, vectors, {A: (0, found.scanned_to)}) == 1  # ... only bob's is stored
        assert recorder.nearest(A, "alice", "m1", TOPIC["tea"], 10) == []
        assert [h.seq for h in recorder.nearest(A, "bob", "m1", TOPIC["bus"], 10)] == [2]
        with pytest.raises(ValueError):  # and a vector for another stream's message is not taken either
            recorder.add_vectors("m1", 4, [MessageVector(2, A, "alice", TOPIC["bus"])], {A: (2, 2)})

    def test_a_vector_under_the_wrong_stream_is_not_stored(self, recorder):
        recorder.append([[said("tea", "bob")]])
        assert recorder.add_vectors("m1", 4, [MessageVector(1, A, "alice", TOPIC["tea"])], {A: (0, 1)}) == 0
        assert recorder.nearest(A, "alice", "m1", TOPIC["tea"], 5) == [] == recorder.nearest(A, "bob", "m1", TOPIC["tea"], 5)

    def test_a_long_term_clear_forgets_the_users_vectors_of_every_model(self, recorder):
        recorder.append([[said("tea mine"), said("tea theirs", "bob")]])
        embed_all(recorder, "m1")
        embed_all(recorder, "m2")
        recorder.append([[cleared(False)]])
        assert len(recorder.nearest(A, "alice", "m1", TOPIC["tea"], 5)) == 1  # a short-term clear forgets nothing
        recorder.append([[cleared(True)]])
        for model in ("m1", "m2"):
            assert recorder.nearest(A, "alice", model, TOPIC["tea"], 5) == []
            assert [h.content for h in recorder.nearest(A, "bob", model, TOPIC["tea"], 5)] == ["tea theirs"]
        recorder.append([[said("tea again")]])
        embed_all(recorder, "m1")
        assert [h.content for h in recorder.nearest(A, "alice", "m1", TOPIC["tea"], 5)] == ["tea again"]

    def test_a_model_change_drops_the_other_models_vectors_of_the_agent(self, recorder):
        recorder.append([[said("tea"), said("tea", agent=B)]])
        embed_all(recorder, "old")
        embed_all(recorder, "old", agents=(B,))
        embed_all(recorder, "new")
        assert recorder.drop_vectors(A, keep_model="new") == 1
        assert recorder.nearest(A, "alice", "old", TOPIC["tea"], 5) == [] and recorder.embedding_cursor(A, "old") == 0
        assert len(recorder.nearest(A, "alice", "new", TOPIC["tea"], 5)) == 1
        assert len(recorder.nearest(B, "alice", "old", TOPIC["tea"], 5)) == 1  # another agent's are its own
        assert recorder.drop_vectors(A, keep_model="new") == 0
        assert recorder.drop_vectors(A) == 1 and recorder.embedding_cursor(A, "new") == 0

    def test_a_zero_vector_stands_for_a_message_that_matches_nothing(self, recorder):
        recorder.append([[said("tea"), said("refused by the embedder")]])
        assert embed_all(recorder, vector_of=lambda text: TOPIC["tea"] if text == "tea" else [0.0] * 4) == 2
        assert [h.seq for h in recorder.nearest(A, "alice", "m1", TOPIC["tea"], 5)] == [1]

    def test_centred_ranks_by_what_sets_a_message_apart(self, recorder):
        # everyday chat around one direction, one message that differs; the query is mostly the everyday direction
        everyday = [[1.0, 0.0, 0.1, 0.0], [1.0, 0.0, 0.0, 0.1], [1.0, 0.0, -0.1, 0.0], [1.0, 0.0, 0.0, -0.1]] * 5
        vectors = {f"everyday {i}": v for i, v in enumerate(everyday[:CENTRE_FROM - 1])} | {"apart": [0.5, 1.0, 0.0, 0.0]}
        recorder.append([[said(name) for name in vectors]])
        embed_all(recorder, vector_of=vectors.get)
        query = [1.0, 0.3, 0.0, 0.0]
        assert recorder.nearest(A, "alice", "m1", query, 20)[-1].content == "apart"
        assert recorder.nearest(A, "alice", "m1", query, 20, centred=True)[0].content == "apart"
        recorder.append([[said("everyday 20", "bob")] * 3 + [said("apart", "bob")]])
        embed_all(recorder, vector_of=lambda text: vectors.get(text, everyday[0]))
        # fewer than CENTRE_FROM vectors: their mean says little, the ranking is the plain one
        assert [h.content for h in recorder.nearest(A, "bob", "m1", query, 4, centred=True)][-1] == "apart"

    def test_the_hybrid_search_fuses_meaning_exact_tokens_and_what_is_not_embedded_yet(self, recorder):
        recorder.append([[said("tea is my favourite drink"), said("bus 152 to work"), said("cat called Mia")]])
        embed_all(recorder)
        recorder.append([[said("sky diving next weekend")]])  # said a moment ago: not embedded yet
        tea = QueryVector("m1", TOPIC["tea-ish"])
        hybrid = search_memory(recorder, A, "alice", "What do I like to drink?", 5, semantic=tea)
        assert hybrid.legs == (LEXICAL, SEMANTIC) and hybrid.hits[0].content == "tea is my favourite drink"
        exact = search_memory(recorder, A, "alice", "Which is bus 152?", 2, semantic=QueryVector("m1", TOPIC["cat"]))
        assert [h.content for h in exact.hits] == ["bus 152 to work", "cat called Mia"]  # the exact token wins
        recent = search_memory(recorder, A, "alice", "diving", 5, semantic=QueryVector("m1", TOPIC["cat"]))
        assert "sky diving next weekend" in [h.content for h in recent.hits]
        lexical = search_memory(recorder, A, "alice", "favourite drink", 5)
        assert lexical.legs == (LEXICAL,) and [h.seq for h in lexical.hits] == [1]
        only = search_memory(recorder, A, "alice", "drink?", 2, semantic=tea, lexical=False)
        assert only.legs == (SEMANTIC,) and [h.seq for h in only.hits] == [1, 2]
        assert search_memory(recorder, A, "bob", "tea", 5, semantic=tea).hits == ()  # never another user's


class InspectionContract:
    """What every `RecorderInspection` does besides `Recorder` (the read side of `replay` and `verify`)."""

    def open_recorder(self, where: Path) -> RecorderInspection:
        raise NotImplementedError

    @pytest.fixture
    def inspected(self, tmp_path):
        recorder = self.open_recorder(tmp_path)
        try:
            yield recorder
        finally:
            recorder.close()

    def test_rows_are_the_stored_events_by_stream_type_and_range(self, inspected):
        (recorded,) = inspected.append([a_turn_with_tools() + [said("bob", "bob")]])
        rows = list(inspected.rows())
        assert [r.seq for r in rows] == [r.seq for r in recorded]
        assert [(r.type, r.agent_id, r.user, r.at) for r in rows] == [
            (r.event.TYPE, r.event.agent_id, r.event.user, r.event.at) for r in recorded]
        assert [r.payload for r in rows] == [r.event.payload() for r in recorded]
        assert [r.seq for r in inspected.rows(types={"tool_called", "tool_returned"})] == [2, 4]
        assert [r.seq for r in inspected.rows(user="bob")] == [8]
        assert [r.seq for r in inspected.rows(descending=True, limit=2)] == [8, 7]
        assert [r.seq for r in inspected.rows(after_seq=2, until_seq=4)] == [3, 4]
        assert inspected.first_seq() == 1

    def test_the_index_holds_the_long_term_messages_of_each_stream(self, inspected):
        inspected.append([a_turn_with_tools("alice") + a_turn_with_tools("bob")])
        assert inspected.indexed_seqs(A, "alice") == {1, 3, 5, 6}
        assert inspected.index_size() == 8
        inspected.append([[cleared(True)]])
        assert inspected.indexed_seqs(A, "alice") == set() and inspected.index_size() == 4

    def test_saved_snapshots_and_integrity(self, inspected):
        assert inspected.saved_snapshots() == []
        (recorded,) = inspected.append([[said("one")]])
        memory = fold_all(Memory(A, "alice", 7), recorded)
        inspected.append([], [memory])
        (saved,) = inspected.saved_snapshots()
        assert (saved.agent_id, saved.user, saved.window, saved.seq) == (A, "alice", 7, 1)
        assert inspected.integrity_problems() == []
        assert isinstance(inspected.path, str) and inspected.path

    def test_embedding_cursors_and_stored_vectors(self, inspected):
        assert inspected.embedding_cursors() == [] and list(inspected.stored_vectors()) == []
        inspected.append([[said("tea"), said("bus", "bob"), said("cat")]])
        embed_all(inspected, "m1")
        assert inspected.embedding_cursors() == [EmbeddingCursor(A, "m1", 4, 3)]
        stored = {(v.agent_id, v.user, v.model): v for v in inspected.stored_vectors()}
        assert set(stored) == {(A, "alice", "m1"), (A, "bob", "m1")}
        assert stored[(A, "alice", "m1")].seqs == (1, 3) and stored[(A, "bob", "m1")].seqs == (2,)
        assert all(v.problems == () for v in stored.values())
