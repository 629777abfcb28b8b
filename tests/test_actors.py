"""Unit tests of the actors package: agents, lanes, mailboxes, fan-out, memory, the journal.
Each test wires real agents to a real SQLite event log in tmp_path; no wall-clock sleeps."""
from __future__ import annotations

from collections import Counter

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from agentcast.actors import (
    AgentSpec,
    BrainError,
    Busy,
    ClearCommand,
    ConfigError,
    EchoBrain,
    FailedOutput,
    LaneBudget,
    MemoryClearedOutput,
    SearchCommand,
    SearchResultsOutput,
    TurnCancelledOutput,
    TurnChunkOutput,
    TurnDoneOutput,
    TurnResponseOutput,
    TurnStartedOutput,
    agent_specs,
    split_chunks,
)
from agentcast.store import AgentAnswered, EventLog, UserClearedMemory, TurnEnded, UserSaid
from support.actors import AT, WAIT, Recorder, chat, logged, running


class GateBrain:
    """Answers `re: <message>`, but turns it gates wait until `release` is set.

    `all_entered` is set once `expected` gated turns are waiting (or have waited).
    """

    recall = 0

    def __init__(self, expected: int = 1, gated=lambda turn: True) -> None:
        self.gated = gated
        self.expected = expected
        self.entered = 0
        self.all_entered = trio.Event()
        self.release = trio.Event()

    async def reply(self, turn):
        if self.gated(turn):
            self.entered += 1
            if self.entered >= self.expected:
                self.all_entered.set()
            await self.release.wait()
        yield f"re: {turn.message}"


class StaggeredBrain:
    """Echo whose earlier messages (`m0`, `m1`, ...) take longer: many more scheduler checkpoints."""

    recall = 0

    async def reply(self, turn):
        index = int(turn.message.split()[0][1:]) if turn.message.startswith("m") else 0
        for _ in range((10 - index) * 20):
            await trio.lowlevel.checkpoint()
        yield EchoBrain.answer(turn)


class FaultyBrain:
    """Fails as the message asks: `brain-error`, `crash`, `silent` (no chunk), `blank` (only "");
    anything else is echoed."""

    recall = 0

    async def reply(self, turn):
        await trio.lowlevel.checkpoint()
        if turn.message == "brain-error":
            raise BrainError("the oracle is closed today")
        if turn.message == "crash":
            raise RuntimeError("boom")
        if turn.message == "silent":
            return
        if turn.message == "blank":
            yield ""
            return
        yield EchoBrain.answer(turn)


def search(user, query, origin, *, long_term, request_id=None, limit=50) -> SearchCommand:
    return SearchCommand(user, query, limit, long_term, origin, request_id)


# -- chat outputs ------------------------------------------------------------------------------


async def test_chat_outputs_started_chunks_response_done_in_order(tmp_path):
    async with running(tmp_path, AgentSpec("a", EchoBrain(chunks=4))) as w:
        agent, out = w.agents["a"], Recorder()

        agent.submit(chat("u", "hello there, agent of mine", out, "r1"))
        await out.wait_for(TurnDoneOutput)

        kinds = [type(o) for o in out.outputs]
        assert kinds[0] is TurnStartedOutput
        assert kinds[-2:] == [TurnResponseOutput, TurnDoneOutput]
        assert set(kinds[1:-2]) == {TurnChunkOutput}
        chunks, (response,) = out.of(TurnChunkOutput), out.of(TurnResponseOutput)
        assert len(chunks) >= 2  # the echo brain streams several pieces
        assert "".join(c.delta for c in chunks) == response.message
        assert all(o.request_id == "r1" and o.agent_id == "a" for o in out.outputs)
        assert "hello there, agent of mine" in response.message
        assert "I remember 0 earlier messages" in response.message

        events = logged(w.path)
        assert [type(r.event) for r in events] == [UserSaid, AgentAnswered]
        assert response.seq == events[1].seq
        assert events[1].event.content == response.message


async def test_echo_brain_counts_earlier_messages_across_turns(tmp_path):
    async with running(tmp_path, AgentSpec("a", EchoBrain())) as w:
        agent, out = w.agents["a"], Recorder()

        agent.submit(chat("u", "first", out))
        agent.submit(chat("u", "second", out))
        first, second = await out.wait_for(TurnResponseOutput, 2)

        assert "You said: first" in first.message and "I remember 0 earlier messages" in first.message
        assert "You said: second" in second.message and "I remember 2 earlier messages" in second.message
        assert first.seq < second.seq


# -- ordering and concurrency -------------------------------------------------------------------


async def test_search_right_behind_chat_sees_that_chats_messages(tmp_path):
    async with running(tmp_path, AgentSpec("a", StaggeredBrain())) as w:
        agent, out = w.agents["a"], Recorder()

        agent.submit(chat("u", "m0 zebra crossing", out, "c"))
        agent.submit(search("u", "zebra", out, long_term=False, request_id="short"))
        agent.submit(search("u", "zebra", out, long_term=True, request_id="long"))
        short, long = await out.wait_for(SearchResultsOutput, 2)

        assert (short.request_id, long.request_id) == ("short", "long")
        response = out.of(TurnResponseOutput)[0]
        for results in (short, long):
            assert sorted(f.hit.role for f in results.results) == ["assistant", "user"]
            assert response.seq in {f.hit.seq for f in results.results}
        # The chat's TurnDoneOutput came before either search result.
        assert out.outputs.index(out.of(TurnDoneOutput)[0]) < out.outputs.index(short)


async def test_chats_of_one_user_complete_in_submit_order(tmp_path):
    async with running(tmp_path, AgentSpec("a", StaggeredBrain())) as w:
        agent, out_a, out_b = w.agents["a"], Recorder("A"), Recorder("B")

        for i in range(6):  # m0 is the slowest to answer, m5 the fastest
            agent.submit(chat("alice", f"m{i} from alice", out_a, f"a{i}"))
            agent.submit(chat("bob", f"m{i} from bob", out_b, f"b{i}"))
        await out_a.wait_for(TurnDoneOutput, 6)
        await out_b.wait_for(TurnDoneOutput, 6)

        assert [d.request_id for d in out_a.of(TurnDoneOutput)] == [f"a{i}" for i in range(6)]
        assert [d.request_id for d in out_b.of(TurnDoneOutput)] == [f"b{i}" for i in range(6)]
        assert [r.seq for r in out_a.of(TurnResponseOutput)] == sorted(r.seq for r in out_a.of(TurnResponseOutput))
        # Each turn ran after the previous one of that user had been remembered.
        for i, response in enumerate(out_a.of(TurnResponseOutput)):
            assert f"I remember {2 * i} earlier messages" in response.message


async def test_slow_turn_of_one_user_does_not_stall_another_user(tmp_path):
    brain = GateBrain(gated=lambda turn: turn.user == "slow")
    async with running(tmp_path, AgentSpec("a", brain)) as w:
        agent, slow, fast = w.agents["a"], Recorder("slow"), Recorder("fast")

        agent.submit(chat("slow", "take your time", slow, "s"))
        with trio.fail_after(WAIT):
            await brain.all_entered.wait()
        agent.submit(chat("fast", "quick one", fast, "f"))
        await fast.wait_for(TurnDoneOutput)

        assert fast.of(TurnResponseOutput)[0].message == "re: quick one"
        assert [type(o) for o in slow.outputs] == [TurnStartedOutput]  # still thinking
        assert agent.in_flight == 1

        brain.release.set()
        await slow.wait_for(TurnDoneOutput)
        assert slow.of(TurnResponseOutput)[0].message == "re: take your time"


# -- mailbox limits -----------------------------------------------------------------------------


async def test_full_mailbox_and_full_lane_answer_busy_and_drop_nothing(tmp_path):
    brain = GateBrain()  # alice's first turn waits in the brain until released
    spec = AgentSpec("a", brain, mailbox_size=3, lane_size=2)
    async with running(tmp_path, spec) as w:
        agent, out = w.agents["a"], Recorder()

        agent.submit(chat("alice", "one", out, "alice-1"))
        agent.submit(chat("alice", "two", out, "alice-2"))
        with pytest.raises(Busy, match="2 of your commands queued"):
            agent.submit(chat("alice", "three", out, "alice-refused"))
        agent.submit(search("bob", "anything", out, long_term=True, request_id="bob-search"))
        # The mailbox is full: a user with something queued is refused; one with nothing still gets
        # a turn (so that flooders cannot starve everyone else), and only one.
        with pytest.raises(Busy, match="busy"):
            agent.submit(chat("bob", "hi", out, "bob-refused"))
        agent.submit(chat("carol", "first", out, "carol-first"))
        with pytest.raises(Busy, match="busy"):
            agent.submit(chat("carol", "hi", out, "carol-refused"))
        assert agent.in_flight == 4

        with trio.fail_after(WAIT):
            await brain.all_entered.wait()
        await out.wait_for(SearchResultsOutput)  # bob's lane is not held up by alice's
        brain.release.set()
        with trio.fail_after(WAIT):
            await agent.wait_idle()

        assert agent.in_flight == 0
        for rid in ("alice-1", "alice-2", "carol-first"):
            assert [type(o) for o in out.for_request(rid)] == [TurnStartedOutput, TurnChunkOutput, TurnResponseOutput, TurnDoneOutput]
        assert [type(o) for o in out.for_request("bob-search")] == [SearchResultsOutput]
        for rid in ("alice-refused", "carol-refused", "bob-refused"):
            assert out.for_request(rid) == []

        # The backlog drained: the same users are accepted again.
        agent.submit(chat("alice", "three", out, "alice-3"))
        agent.submit(chat("carol", "hi", out, "carol-1"))
        agent.submit(chat("bob", "hi", out, "bob-1"))
        await out.wait_for(TurnDoneOutput, 6)
        assert {d.request_id for d in out.of(TurnDoneOutput)} == {"alice-1", "alice-2", "carol-first", "alice-3", "carol-1",
                                                            "bob-1"}


async def test_busy_is_raised_while_commands_are_running_not_only_queued(tmp_path):
    brain = GateBrain(expected=2)
    spec = AgentSpec("a", brain, mailbox_size=2, lane_size=1)
    async with running(tmp_path, spec) as w:
        agent, out = w.agents["a"], Recorder()

        agent.submit(chat("alice", "one", out, "a1"))
        agent.submit(chat("bob", "one", out, "b1"))
        with trio.fail_after(WAIT):
            await brain.all_entered.wait()  # both are running now, none is queued

        with pytest.raises(Busy):
            agent.submit(chat("alice", "two", out))
        agent.submit(chat("carol", "one", out, "c1"))  # nothing queued for carol: she still gets her turn
        with pytest.raises(Busy):
            agent.submit(chat("carol", "two", out))

        brain.release.set()
        await out.wait_for(TurnDoneOutput, 3)
        with trio.fail_after(WAIT):
            await agent.wait_idle()
        agent.submit(chat("carol", "two", out, "c2"))
        await out.wait_for(TurnDoneOutput, 4)


# -- brain failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "text"),
    [
        ("brain-error", "the oracle is closed today"),
        ("crash", "The agent failed while answering"),
        ("silent", "The agent gave an empty answer"),
        ("blank", "The agent gave an empty answer"),
    ],
)
async def test_brain_failure_becomes_failed_then_done_and_lane_keeps_working(tmp_path, message, text):
    async with running(tmp_path, AgentSpec("a", FaultyBrain())) as w:
        agent, out = w.agents["a"], Recorder()

        agent.submit(chat("u", message, out, "bad"))
        agent.submit(chat("u", "are you still there", out, "good"))
        await out.wait_for(TurnDoneOutput, 2)

        bad = out.for_request("bad")
        assert [type(o) for o in bad] == [TurnStartedOutput, FailedOutput, TurnDoneOutput]
        assert (bad[1].code, bad[1].message) == ("brain_error", text)
        (response,) = out.of(TurnResponseOutput)
        assert response.request_id == "good"
        # The failed turn's user message is remembered: one earlier message.
        assert "I remember 1 earlier message of" in response.message

        # ... and the failed turn is logged as such, with the reason the client was given.
        events = logged(w.path)
        assert [(type(r.event), getattr(r.event, "content", None) or r.event.reason) for r in events] == [
            (UserSaid, message),
            (TurnEnded, text),
            (UserSaid, "are you still there"),
            (AgentAnswered, response.message),
        ]
        assert events[1].event.outcome == "failed"


async def test_brain_failure_after_a_chunk_still_ends_with_failed_and_done(tmp_path):
    class HalfBrain:
        recall = 0

        async def reply(self, turn):
            yield "I was about to say"
            raise BrainError("lost my train of thought")

    async with running(tmp_path, AgentSpec("a", HalfBrain())) as w:
        out = Recorder()
        w.agents["a"].submit(chat("u", "go on", out, "r"))
        await out.wait_for(TurnDoneOutput)

        assert [type(o) for o in out.outputs] == [TurnStartedOutput, TurnChunkOutput, FailedOutput, TurnDoneOutput]
        assert out.of(FailedOutput)[0].message == "lost my train of thought"
        events = logged(w.path)
        assert [type(r.event) for r in events] == [UserSaid, TurnEnded]
        assert (events[1].event.outcome, events[1].event.partial) == ("failed", "I was about to say")


# -- fan-out ------------------------------------------------------------------------------------


async def test_chat_fans_out_to_same_user_subscribers_exactly_once(tmp_path):
    async with running(tmp_path, AgentSpec("a", EchoBrain()), AgentSpec("b", EchoBrain())) as w:
        agent, audience = w.agents["a"], w.audience
        origin, tab, other_user, other_agent, bystander = (
            Recorder("origin"), Recorder("tab"), Recorder("other_user"), Recorder("other_agent"), Recorder("bystander"),
        )
        audience.subscribe("a", "u", origin)
        audience.subscribe("a", "u", tab)
        audience.subscribe("a", "v", other_user)
        audience.subscribe("b", "u", other_agent)

        agent.submit(chat("u", "hello everyone", origin, "r1"))
        await origin.wait_for(TurnDoneOutput)

        assert [type(o) for o in origin.outputs][0] is TurnStartedOutput
        assert tab.outputs == origin.outputs  # same outputs, same order, none duplicated
        assert len(origin.of(TurnDoneOutput)) == len(origin.of(TurnStartedOutput)) == len(origin.of(TurnResponseOutput)) == 1
        assert other_user.outputs == other_agent.outputs == bystander.outputs == []

        # An origin that is not subscribed itself still hears its turn, and so do the subscribers.
        agent.submit(chat("u", "from a fresh tab", bystander, "r2"))
        await bystander.wait_for(TurnDoneOutput)
        for outbox in (origin, tab):
            assert outbox.for_request("r2") == bystander.outputs
        assert other_user.outputs == other_agent.outputs == []

        # After unsubscribing, the tab hears nothing more.
        audience.unsubscribe("a", "u", tab)
        heard = len(tab.outputs)
        agent.submit(chat("u", "only for me", origin, "r3"))
        await origin.wait_for(TurnDoneOutput, 3)
        assert len(tab.outputs) == heard


async def test_search_results_go_only_to_origin_and_clear_fans_out(tmp_path):
    async with running(tmp_path, AgentSpec("a", EchoBrain())) as w:
        agent, origin, tab = w.agents["a"], Recorder("origin"), Recorder("tab")
        w.audience.subscribe("a", "u", origin)
        w.audience.subscribe("a", "u", tab)

        agent.submit(chat("u", "remember the lighthouse", origin, "c"))
        agent.submit(search("u", "lighthouse", origin, long_term=True, request_id="s"))
        agent.submit(ClearCommand("u", False, AT, origin, "x"))
        await origin.wait_for(MemoryClearedOutput)

        assert len(origin.of(SearchResultsOutput)) == 1 and origin.of(SearchResultsOutput)[0].results
        assert tab.of(SearchResultsOutput) == []
        assert tab.of(MemoryClearedOutput) == origin.of(MemoryClearedOutput)
        assert tab.of(TurnResponseOutput) == origin.of(TurnResponseOutput)


# -- memory -------------------------------------------------------------------------------------


async def test_short_term_search_only_returns_the_window_and_sources_are_labelled(tmp_path):
    async with running(tmp_path, AgentSpec("a", EchoBrain(), short_term_window=2)) as w:
        agent, out = w.agents["a"], Recorder()
        for word in ("one", "two", "three"):
            agent.submit(chat("u", f"apple {word}", out))
        agent.submit(search("u", "apple", out, long_term=False, request_id="short"))
        agent.submit(search("u", "apple", out, long_term=True, request_id="long"))
        short, long = await out.wait_for(SearchResultsOutput, 2)

        messages = logged(w.path)
        assert len(messages) == 6
        window = {r.seq for r in messages[-2:]}  # "apple three" and its answer

        assert {f.hit.seq for f in short.results} == window
        assert {f.source for f in short.results} == {"short_term"}
        assert {f.hit.seq for f in long.results} == {r.seq for r in messages}
        for found in long.results:
            assert found.source == ("short_term" if found.hit.seq in window else "long_term")
            assert "apple" in found.hit.content


async def test_clear_short_term_then_long_term(tmp_path):
    async with running(tmp_path, AgentSpec("a", EchoBrain(), short_term_window=4)) as w:
        agent, out = w.agents["a"], Recorder()
        agent.submit(chat("u", "banana split", out))
        agent.submit(chat("u", "banana bread", out))
        agent.submit(ClearCommand("u", False, AT, out, "clear-short"))
        agent.submit(search("u", "banana", out, long_term=False, request_id="s1"))
        agent.submit(search("u", "banana", out, long_term=True, request_id="l1"))
        agent.submit(ClearCommand("u", True, AT, out, "clear-all"))
        agent.submit(search("u", "banana", out, long_term=False, request_id="s2"))
        agent.submit(search("u", "banana", out, long_term=True, request_id="l2"))
        agent.submit(chat("u", "what do you remember", out, "after"))
        await out.wait_for(TurnDoneOutput, 3)

        results = {r.request_id: r.results for r in out.of(SearchResultsOutput)}
        assert results["s1"] == []
        assert len(results["l1"]) == 4
        assert {f.source for f in results["l1"]} == {"long_term"}
        assert results["s2"] == [] and results["l2"] == []

        cleared = out.of(MemoryClearedOutput)
        assert [(c.request_id, c.long_term) for c in cleared] == [("clear-short", False), ("clear-all", True)]
        clears = [r for r in logged(w.path) if isinstance(r.event, UserClearedMemory)]
        assert [(r.seq, r.event.long_term) for r in clears] == [(c.seq, c.long_term) for c in cleared]
        assert "I remember 0 earlier messages" in out.for_request("after")[-2].message


async def test_memory_is_per_user(tmp_path):
    async with running(tmp_path, AgentSpec("a", EchoBrain())) as w:
        agent, out = w.agents["a"], Recorder()
        agent.submit(chat("alice", "my secret is tangerine", out))
        agent.submit(chat("bob", "hello", out, "bob-chat"))
        agent.submit(search("bob", "tangerine secret", out, long_term=True, request_id="bob-search"))
        (found,) = await out.wait_for(SearchResultsOutput)

        assert found.results == []
        assert "I remember 0 earlier messages" in out.for_request("bob-chat")[-2].message


async def test_idle_lane_is_dropped_and_rebuilt_from_the_log(tmp_path, autojump_clock):
    spec = AgentSpec("a", EchoBrain(), short_term_window=2, lane_idle_seconds=60)
    async with running(tmp_path, spec) as w:
        agent, out = w.agents["a"], Recorder()
        # No deadlines while SQLite runs in threads: the autojump clock would jump to them.
        agent.submit(chat("u", "kiwi one", out))
        agent.submit(chat("u", "kiwi two", out))
        await out.wait_for(TurnDoneOutput, 2, timeout=None)
        assert agent.lanes == 1

        await trio.sleep(59)
        assert agent.lanes == 1
        await trio.sleep(2)
        assert agent.lanes == 0

        agent.submit(chat("u", "kiwi three", out))
        agent.submit(search("u", "kiwi", out, long_term=False, request_id="short"))
        (short,) = await out.wait_for(SearchResultsOutput, timeout=None)
        assert agent.lanes == 1

        third = out.of(TurnResponseOutput)[2]
        assert "I remember 4 earlier messages" in third.message
        assert {f.hit.seq for f in short.results} == {r.seq for r in logged(w.path)[-2:]}


async def test_a_lane_used_again_is_dropped_only_lane_idle_seconds_after_its_last_command(tmp_path, autojump_clock):
    spec = AgentSpec("a", EchoBrain(), lane_idle_seconds=60)
    async with running(tmp_path, spec) as w:
        agent, out = w.agents["a"], Recorder()
        agent.submit(chat("u", "one", out))
        await out.wait_for(TurnDoneOutput, 1, timeout=None)
        await trio.sleep(40)
        agent.submit(chat("u", "two", out))  # idle again from t=40: due at t=100, not t=60
        await out.wait_for(TurnDoneOutput, 2, timeout=None)
        await trio.sleep(59)
        assert agent.lanes == 1
        await trio.sleep(2)
        assert agent.lanes == 0


async def test_a_turn_longer_than_lane_idle_seconds_keeps_its_lane(tmp_path, autojump_clock):
    class SlowBrain:
        recall = 0

        async def reply(self, turn):
            await trio.sleep(300)
            yield "done thinking"

    spec = AgentSpec("a", SlowBrain(), lane_idle_seconds=60)
    async with running(tmp_path, spec) as w:
        agent, out = w.agents["a"], Recorder()
        agent.submit(chat("u", "one", out))
        await trio.sleep(200)
        assert agent.lanes == 1
        (answer,) = await out.wait_for(TurnResponseOutput, timeout=None)
        assert answer.message == "done thinking"
        await trio.sleep(61)
        assert agent.lanes == 0


# -- resident lanes: LaneBudget ------------------------------------------------------------------


def resident(agents) -> dict[tuple[str, str], object]:
    """The memory of every lane in memory, by (agent, user)."""
    return {(a.agent_id, user): lane.memory for a in agents.values() for user, lane in a._lanes.items()}


def window_bytes(memory) -> int:
    return sum(len(m.content.encode()) for m in memory.short_term) if memory is not None else 0


async def test_resident_lanes_and_their_window_bytes_stay_within_the_budget_least_recently_used_go(tmp_path, mock_clock):
    """Many new users, each chatting once, some with big messages, across two agents sharing one budget:
    after every command the lanes in memory and the UTF-8 bytes of their windows are within the bounds,
    the lanes kept are the most recently used, and a dropped user's next command has the same memory."""
    budget = LaneBudget(max_lanes=6, max_window_bytes=120_000)
    specs = [AgentSpec(agent_id, EchoBrain(), lane_idle_seconds=3600) for agent_id in ("a", "b")]
    async with running(tmp_path, *specs, budget=budget) as w:
        out = Recorder()
        big = "\N{GRINNING FACE}" * 5_000  # 20,000 bytes: with its echo, a window of over 40,000
        used: list[tuple[str, str]] = []  # (agent, user), least recently used first
        memories = {}
        for i in range(40):
            key = ("a" if i % 3 else "b", f"user{i}")
            w.agents[key[0]].submit(chat(key[1], big if i % 2 else f"small {i}", out))
            await out.wait_for(TurnDoneOutput, i + 1)
            await w.agents[key[0]].wait_idle()
            mock_clock.jump(1)
            used.append(key)
            lanes = resident(w.agents)
            memories[key] = lanes[key]  # kept at least until the next command
            assert budget.lanes == len(lanes) <= 6
            assert budget.window_bytes == sum(map(window_bytes, lanes.values())) <= 120_000
            assert set(lanes) == set(used[len(used) - len(lanes):])  # the most recently used ones
        assert budget.window_bytes > 80_000 and 2 <= budget.lanes < 6  # the bytes bound dropped some
        # A user whose lane was dropped: the next command rebuilds it from the log, the same memory.
        for key in (used[0], used[1], used[2]):
            assert key not in resident(w.agents)
            agent = w.agents[key[0]]
            agent.submit(search(key[1], "small", out, long_term=True, request_id=f"s-{key[1]}"))
            await out.wait_for(SearchResultsOutput, len(out.of(SearchResultsOutput)) + 1)
            memory = agent._lanes[key[1]].memory
            assert memory is not None and memory.version == 2
            assert memory == memories[key] == logged_memory(w.path, key)  # as it was before it was dropped
            await agent.wait_idle()
        # and a chat finds what it remembered
        agent = w.agents[used[0][0]]
        agent.submit(chat(used[0][1], "again", out, "again"))
        (answer,) = [o for o in await out.wait_for(TurnResponseOutput, 41) if o.request_id == "again"]
        assert "I remember 2 earlier messages" in answer.message


def logged_memory(path, key):
    with EventLog.open(path, readonly=True) as reader:
        return reader.memory(key[0], key[1])


async def test_a_busy_lane_is_never_dropped_and_the_bound_holds_again_once_it_is_idle(tmp_path, mock_clock):
    budget = LaneBudget(max_lanes=2, max_window_bytes=10**9)
    brain = GateBrain(expected=3)
    async with running(tmp_path, AgentSpec("a", brain), budget=budget) as w:
        agent, out = w.agents["a"], Recorder()
        for user in ("u1", "u2", "u3"):
            agent.submit(chat(user, f"hello from {user}", out))
        agent.submit(search("u1", "hello", out, long_term=True))  # queued behind u1's chat
        with trio.fail_after(WAIT):
            await brain.all_entered.wait()
        assert agent.lanes == budget.lanes == 3  # beyond the bound while all three are busy
        brain.release.set()
        await agent.wait_idle()
        assert agent.lanes == budget.lanes == 2
        assert len(out.of(TurnDoneOutput)) == 3 and len(out.of(SearchResultsOutput)) == 1


async def test_a_window_larger_than_the_whole_budget_is_dropped_once_idle_and_rebuilt_on_next_use(tmp_path):
    budget = LaneBudget(max_lanes=100, max_window_bytes=1_000)
    async with running(tmp_path, AgentSpec("a", EchoBrain()), budget=budget) as w:
        agent, out = w.agents["a"], Recorder()
        agent.submit(chat("small", "hi", out))
        await out.wait_for(TurnDoneOutput)
        await agent.wait_idle()
        assert agent.lanes == 1 and 0 < budget.window_bytes < 1_000
        agent.submit(chat("huge", "é" * 600, out))  # 1,200 bytes (600 characters), and its echo
        await out.wait_for(TurnDoneOutput, 2)
        await agent.wait_idle()
        assert budget.lanes == agent.lanes == 0 and budget.window_bytes == 0  # "small" went first, then "huge"
        agent.submit(chat("huge", "still there?", out, "again"))
        (answer,) = [o for o in await out.wait_for(TurnResponseOutput, 3) if o.request_id == "again"]
        assert "I remember 2 earlier messages" in answer.message


def test_window_bytes_follow_the_window_turn_by_turn_and_through_clears():
    from agentcast.actors._lanes import window_bytes as _window_bytes
    from agentcast.store import fold, Memory, Recorded

    memory, counted = Memory("a", "u", window=3), 0
    steps = [UserSaid("a", "u", AT, "ab"), AgentAnswered("a", "u", AT, "\N{GRINNING FACE}é"),
             UserSaid("a", "u", AT, "c" * 10), AgentAnswered("a", "u", AT, "d"), UserClearedMemory("a", "u", AT, False),
             UserSaid("a", "u", AT, "after the clear"), UserClearedMemory("a", "u", AT, True)]
    for seq, event in enumerate(steps, start=1):
        before = memory
        memory = fold(memory, Recorded(seq, event))
        counted = _window_bytes(before, counted, memory)
        assert counted == sum(len(m.content.encode()) for m in memory.short_term), seq
    # several events at once (a turn with a tool call and a fact), and from nothing
    turn = [UserSaid("a", "u", AT, "x" * 7), AgentAnswered("a", "u", AT, "y" * 9), UserSaid("a", "u", AT, "zz")]
    before = memory
    for seq, event in enumerate(turn, start=len(steps) + 1):
        memory = fold(memory, Recorded(seq, event))
    assert _window_bytes(before, counted, memory) == 18 == _window_bytes(None, 0, memory)
    assert _window_bytes(memory, 18, None) == 0


async def test_a_lane_cancelled_twice_answers_each_cancel_and_goes_on_serving(tmp_path):
    brain = GateBrain(gated=lambda turn: turn.message.startswith("slow"))
    async with running(tmp_path, AgentSpec("a", brain)) as w:
        agent, out = w.agents["a"], Recorder()
        for n in (1, 2):
            agent.submit(chat("u", f"slow {n}", out, f"slow{n}"))
            brain.all_entered = trio.Event()
            brain.expected = n
            with trio.fail_after(WAIT):
                await brain.all_entered.wait()
            agent.cancel("u", f"slow{n}", out)
            await out.wait_for(TurnDoneOutput, n)
        agent.submit(chat("u", "quick", out, "quick"))
        (answer,) = await out.wait_for(TurnResponseOutput)
        await agent.wait_idle()

        assert answer.message == "re: quick"
        assert [type(o) for o in out.for_request("slow2")] == [TurnStartedOutput, TurnCancelledOutput, TurnDoneOutput]
        events = [r.event for r in logged(w.path)]
        assert [type(e).__name__ for e in events] == [
            "UserSaid", "TurnEnded", "UserSaid", "TurnEnded", "UserSaid", "AgentAnswered"]
        assert [e.outcome for e in events if isinstance(e, TurnEnded)] == ["cancelled", "cancelled"]


class NurseryBrain:
    """Waits in a nursery of its own for `slow` messages (`entered` set once there), its child task failing
    as it is cancelled if the message says `failing`; answers `re: <message>` otherwise."""

    recall = 0

    def __init__(self) -> None:
        self.entered = trio.Event()

    async def reply(self, turn):
        if turn.message.startswith("slow"):
            async def child():
                try:
                    await trio.sleep_forever()
                finally:
                    if "failing" in turn.message:
                        raise ValueError("the child failed on its way out")

            async with trio.open_nursery() as nursery:  # a Cancelled leaves it in an exception group
                nursery.start_soon(child)
                self.entered.set()
                await trio.sleep_forever()
        yield f"re: {turn.message}"


@pytest.mark.parametrize("message", ["slow", "slow and failing"])
async def test_a_cancelled_brain_that_runs_a_nursery_still_ends_cancelled_and_the_lane_goes_on(tmp_path, message):
    brain = NurseryBrain()
    async with running(tmp_path, AgentSpec("a", brain)) as w:
        agent, out = w.agents["a"], Recorder()
        agent.submit(chat("u", message, out, "slow"))
        with trio.fail_after(WAIT):
            await brain.entered.wait()
        agent.cancel("u", "slow", out)
        agent.submit(chat("u", "quick", out, "quick"))
        await out.wait_for(TurnDoneOutput, 2)
        with trio.fail_after(WAIT):
            await agent.wait_idle()

        assert [type(o) for o in out.for_request("slow")] == [TurnStartedOutput, TurnCancelledOutput, TurnDoneOutput]
        assert out.of(TurnResponseOutput)[0].message == "re: quick"
        events = [r.event for r in logged(w.path)]
        assert [type(e).__name__ for e in events] == ["UserSaid", "TurnEnded", "UserSaid", "AgentAnswered"]
        assert events[1].outcome == "cancelled"


# -- group commit -------------------------------------------------------------------------------


async def test_group_commit_many_lanes_share_commits_and_log_each_event_once(tmp_path):
    users, per_user = 20, 3
    turns = users * per_user
    # Every user's first turn waits in the brain until all 20 are there; after that it answers at once.
    brain = GateBrain(expected=users)
    async with running(tmp_path, AgentSpec("a", brain, connection_size=turns)) as w:
        agent, journal, out = w.agents["a"], w.journal, Recorder()
        for i in range(per_user):
            for u in range(users):
                agent.submit(chat(f"user{u}", f"user{u} turn {i}", out, f"user{u}-{i}"))
        with trio.fail_after(WAIT):
            await brain.all_entered.wait()
        assert agent.lanes == users
        assert journal.commits == 0
        brain.release.set()
        await out.wait_for(TurnDoneOutput, turns)

        assert journal.events_appended == 2 * turns
        assert 0 < journal.commits < turns

        events = logged(w.path)
        assert len(events) == 2 * turns
        assert len({r.seq for r in events}) == 2 * turns
        expected = Counter()
        for i in range(per_user):
            for u in range(users):
                expected[("user_message", f"user{u}", f"user{u} turn {i}")] += 1
                expected[("agent_message", f"user{u}", f"re: user{u} turn {i}")] += 1
        assert Counter((r.event.TYPE, r.event.user, r.event.content) for r in events) == expected
        # Each turn's answer is the event its TurnResponseOutput names.
        by_seq = {r.seq: r.event for r in events}
        for response in out.of(TurnResponseOutput):
            assert by_seq[response.seq].content == response.message
            assert by_seq[response.seq].request_id == response.request_id


# -- configuration -------------------------------------------------------------------------------


def test_default_agents():
    specs = agent_specs(None)
    assert [s.agent_id for s in specs] == ["my_agent", "assistant", "multi_user_agent"]
    assert all(isinstance(s.brain, EchoBrain) for s in specs)


def test_config_sets_sizes_and_brain_options():
    (spec,) = agent_specs(
        {"helper": {"brain": {"kind": "echo", "chunks": 2}, "short_term_window": 5, "lane_idle_seconds": 1.5}}
    )
    assert (spec.agent_id, spec.short_term_window, spec.lane_idle_seconds) == ("helper", 5, 1.5)
    assert isinstance(spec.brain, EchoBrain) and spec.brain.chunks == 2


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"x": {"brain": "oracle"}}, "agents.x.brain: unknown brain 'oracle' (known: echo, openai)"),
        ({"x": {"brain": "echo", "colour": "blue"}}, "agents.x: unknown setting(s) colour"),
        ({"x": {"mailbox_size": "lots"}}, "agents.x.mailbox_size must be a number"),
        ({"x": {"lane_size": True}}, "agents.x.lane_size must be a number"),
        ({"x": {"short_term_window": 0}}, "sizes must be >= 1"),
        ({"x": {"lane_idle_seconds": 0}}, "lane_idle_seconds > 0"),
        # TOML can spell nan; trio.move_on_after(nan) raises, which would crash the agent's lanes.
        ({"x": {"lane_idle_seconds": float("nan")}}, "lane_idle_seconds > 0"),
        ({"x": {"brain": {"kind": "echo", "chunks": 0}}}, "agents.x.brain: echo brain"),
        ({"x": {"brain": {"kind": "echo", "volume": 11}}}, "agents.x.brain:"),
        ({"x": "echo"}, "agents.x must be a table"),
        ({}, "at least one agent"),
    ],
)
def test_bad_config_raises_config_error_saying_what_is_wrong(table, says):
    with pytest.raises(ConfigError) as caught:
        agent_specs(table)
    assert says in str(caught.value)


# -- split_chunks ---------------------------------------------------------------------------------


@given(
    text=st.one_of(st.text(), st.text(alphabet=" ab\n", max_size=60), st.lists(st.sampled_from(["a", "bb ", " ", "word "])).map("".join)),
    n=st.integers(min_value=1, max_value=40),
)
def test_split_chunks_pieces_join_to_text_are_non_empty_and_at_most_n(text, n):
    pieces = split_chunks(text, n)
    assert "".join(pieces) == text
    assert all(pieces)
    assert len(pieces) <= n


def test_split_chunks_cuts_at_spaces():
    # Pieces are about len/n long, each ending just after a space; the last one takes the rest.
    assert split_chunks("one two three four", 2) == ["one two three ", "four"]
    assert split_chunks("one two three four", 4) == ["one two ", "three ", "four"]
    assert split_chunks("unbroken", 3) == ["unbroken"]
    assert split_chunks("", 3) == []
