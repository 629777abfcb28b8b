"""Resumable subscriptions: `subscribe` with `after_seq` gives `subscribed`, then every logged event of
the connection's own (agent, user) after that seq, in order, then the live stream: with no gap and
no duplicate, across restarts, for a turn in flight, in pages, paced by the client's reading."""
from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from agentcast.actors import _backlog as actors_backlog
from agentcast.actors import AgentSpec, BrainError, EchoBrain
from agentcast.store import AgentAnswered, EventLog, UserSaid
from support import GatedBrain, connect, running_server, scaled

AGENT = "my_agent"
AT = "2026-01-01T00:00:00.000Z"


def chat(message, request_id=None, agent=AGENT):
    frame = {"type": "chat", "agent_id": agent, "message": message}
    if request_id is not None:
        frame["request_id"] = request_id
    return frame


def resume(after_seq, request_id=None, agent=AGENT):
    frame = {"type": "subscribe", "agent_id": agent, "after_seq": after_seq}
    if request_id is not None:
        frame["request_id"] = request_id
    return frame


def subscribed(after_seq, request_id=None, agent=AGENT):
    frame = {"type": "subscribed", "agent_id": agent, "message": f"Successfully subscribed to agent {agent}",
             "after_seq": after_seq}
    if request_id is not None:
        frame["request_id"] = request_id
    return frame


def with_rid(frame, request_id):
    return frame if request_id is None else {**frame, "request_id": request_id}


class Log:
    """What a user did over one connection, as the frames a resumed subscription must replay."""

    def __init__(self, client):
        self.client = client
        self.frames: list[dict] = []

    async def say(self, message, request_id=None, agent=AGENT) -> list[dict]:
        """One chat turn; records its user message and answer as `user_message` and `response` frames."""
        frames = await self.client.request(chat(message, request_id, agent), "agent_done")
        answer = frames[-2]
        assert answer["type"] == "response"
        self.frames += [
            with_rid({"type": "user_message", "agent_id": agent, "message": message, "seq": answer["seq"] - 1}, request_id),
            with_rid({"type": "response", "agent_id": agent, "message": answer["message"], "seq": answer["seq"]}, request_id),
        ]
        return frames

    async def clear(self, long_term=False, request_id=None) -> dict:
        frame = {"type": "clear_memory", "agent_id": AGENT, "clear_long_term": long_term}
        (cleared,) = await self.client.request(with_rid(frame, request_id), "memory_cleared")
        self.frames.append(cleared)
        return cleared

    def after(self, seq) -> list[dict]:
        return [f for f in self.frames if f["seq"] > seq]


async def recv_n(client, n, timeout=10) -> list[dict]:
    with trio.fail_after(scaled(timeout)):
        return [await client.recv() for _ in range(n)]


async def assert_nothing_more(client):
    """The next frame is the answer to a ping: nothing else was queued for the client before it."""
    assert await client.request({"type": "ping", "request_id": "quiet"}, "ping") == [{"type": "ping", "request_id": "quiet"}]


async def as_user(client, user):
    await client.request({"type": "set_user", "user_id": user}, "user_set")


def seqs(frames):
    return [f["seq"] for f in frames if "seq" in f]


async def test_resume_from_zero_gets_the_whole_history_in_order_then_the_live_stream(server):
    async with connect(server.port) as phone, connect(server.port) as laptop:
        await as_user(phone, "ann")
        history = Log(phone)
        await history.say("first words", "c1")
        await history.say("second words")
        await history.clear(request_id="clr")
        await history.say("third words", "c3")
        await as_user(laptop, "ann")
        await laptop.send(resume(0, "s"))
        backlog = await recv_n(laptop, 1 + len(history.frames))
        assert backlog == [subscribed(0, "s"), *history.frames]
        assert seqs(backlog) == sorted(set(seqs(backlog)))
        assert [f["type"] for f in backlog[1:]] == ["user_message", "response"] * 2 + ["memory_cleared"] + [
            "user_message", "response"]
        await assert_nothing_more(laptop)
        # then live: the turn's frames, with the user's message (seq) right before the response
        sent = await phone.request(chat("live words", "c4"), "agent_done")
        seen = await laptop.recv_until("agent_done")
        assert [f for f in seen if f["type"] != "user_message"] == sent
        (said,) = [f for f in seen if f["type"] == "user_message"]
        assert said == {"type": "user_message", "agent_id": AGENT, "message": "live words", "seq": sent[-2]["seq"] - 1,
                        "request_id": "c4"}
        assert [f["type"] for f in seen[-3:]] == ["user_message", "response", "agent_done"]
        # a live clear, too
        cleared = await phone.request({"type": "clear_memory", "agent_id": AGENT}, "memory_cleared")
        assert await laptop.recv_until("memory_cleared") == cleared
        await assert_nothing_more(laptop)


async def test_resume_from_the_last_seen_seq_gets_only_later_events(server):
    async with connect(server.port) as phone:
        await as_user(phone, 7)
        history = Log(phone)
        for i in range(3):
            await history.say(f"message {i}")
        last_seen = history.frames[-1]["seq"]
        await history.say("while you were away")
        await history.clear(long_term=False)
        for after in (last_seen, 0, history.frames[-1]["seq"], history.frames[-1]["seq"] + 1000):
            async with connect(server.port) as laptop:
                await as_user(laptop, "7")  # the same user: ids compare by their text
                await laptop.send(resume(after))
                expected = history.after(after)
                assert await recv_n(laptop, 1 + len(expected)) == [subscribed(after), *expected]
                await assert_nothing_more(laptop)
        assert len(history.after(last_seen)) == 3


async def test_events_before_and_after_a_restart_are_resumable(db_path):
    async with running_server(db_path) as server, connect(server.port) as c:
        await as_user(c, "rita")
        before = Log(c)
        await before.say("before the restart", "b1")
        await before.clear(long_term=False)
    async with running_server(db_path) as server:
        async with connect(server.port) as c:
            await as_user(c, "rita")
            after = Log(c)
            await after.say("after the restart", "a1")
        async with connect(server.port) as c:
            await as_user(c, "rita")
            await c.send(resume(0))
            everything = before.frames + after.frames
            assert await recv_n(c, 1 + len(everything)) == [subscribed(0), *everything]
            mid = before.frames[-1]["seq"]
            await c.send(resume(mid, "again"))  # a second resume restarts the stream after its `subscribed`
            assert await recv_n(c, 1 + len(after.frames)) == [subscribed(mid, "again"), *after.frames]
            await assert_nothing_more(c)


async def test_turns_in_flight_or_queued_while_resuming_arrive_once_from_the_backlog(db_path):
    brain = GatedBrain(answer=lambda turn: [EchoBrain.answer(turn)])
    async with running_server(db_path, [AgentSpec(AGENT, brain)]) as server:
        async with connect(server.port) as phone, connect(server.port) as laptop:
            for c in (phone, laptop):
                await as_user(c, "max")
            await phone.send(chat("in flight", "f"))
            await phone.send(chat("queued behind it", "q"))
            assert (await phone.recv())["type"] == "agent_thinking"
            with trio.fail_after(scaled(10)):
                await brain.started.wait()
            await laptop.send(resume(0, "s"))
            # the resume waits behind both turns in the lane: nothing yet, not even `subscribed`
            await assert_nothing_more(laptop)
            brain.gate.set()
            first = (await phone.recv_until("agent_done"))[-2]
            second = (await phone.recv_until("agent_done"))[-2]
            backlog = await recv_n(laptop, 5)
            expected = []
            for answer, said, rid in ((first, "in flight", "f"), (second, "queued behind it", "q")):
                expected += [
                    {"type": "user_message", "agent_id": AGENT, "message": said, "seq": answer["seq"] - 1, "request_id": rid},
                    {"type": "response", "agent_id": AGENT, "message": answer["message"], "seq": answer["seq"],
                     "request_id": rid},
                ]
            assert backlog == [subscribed(0, "s"), *expected]
            await assert_nothing_more(laptop)  # none of the turns' live frames: it was not subscribed yet
            live = await phone.request(chat("after it", "g"), "agent_done")
            seen = await laptop.recv_until("agent_done")
            assert [f for f in seen if f["type"] != "user_message"] == live
            all_seqs = seqs(backlog) + seqs(seen)
            assert all_seqs == [first["seq"] - 1, first["seq"], second["seq"] - 1, second["seq"],
                                live[-2]["seq"] - 1, live[-2]["seq"]]


async def test_a_resume_right_behind_the_connections_own_turn_starts_its_stream_after_that_turn(db_path):
    brain = GatedBrain(answer=lambda turn: [EchoBrain.answer(turn)])
    async with running_server(db_path, [AgentSpec(AGENT, brain)]) as server, connect(server.port) as c:
        await as_user(c, "own")
        await c.send(chat("mine", "m"))
        await c.send(resume(0, "s"))
        with trio.fail_after(scaled(10)):
            await brain.started.wait()
        brain.gate.set()
        turn = await c.recv_until("agent_done")  # the sender's answer, as always
        assert [f["type"] for f in turn][0] == "agent_thinking" and turn[-2]["type"] == "response"
        # `subscribed` comes after: from there on, each event exactly once, in order
        stream = await recv_n(c, 3)
        assert stream[0] == subscribed(0, "s")
        assert seqs(stream) == [turn[-2]["seq"] - 1, turn[-2]["seq"]]
        await assert_nothing_more(c)


async def test_another_users_events_never_appear(server):
    async with connect(server.port) as ann, connect(server.port) as bob:
        await as_user(ann, "ann")
        await as_user(bob, "bob")
        ann_log, bob_log = Log(ann), Log(bob)
        await ann_log.say("ann secret one")
        await bob_log.say("bob words")
        await ann_log.say("ann secret two")
        await bob_log.say("bob words for another agent", agent="assistant")  # another agent: not in the stream
        await ann_log.clear(long_term=True)
        async with connect(server.port) as bob_laptop:
            await as_user(bob_laptop, "bob")
            await bob_laptop.send(resume(0))
            expected = [f for f in bob_log.frames if f["agent_id"] == AGENT]
            assert await recv_n(bob_laptop, 1 + len(expected)) == [subscribed(0), *expected]
            await assert_nothing_more(bob_laptop)
            await ann.request(chat("ann live secret"), "agent_done")
            await ann.request({"type": "clear_memory", "agent_id": AGENT}, "memory_cleared")
            await assert_nothing_more(bob_laptop)
        async with connect(server.port) as anonymous:  # no set_user: its own private user, with no history
            await anonymous.send(resume(0))
            assert await anonymous.recv() == subscribed(0)
            await assert_nothing_more(anonymous)


@pytest.mark.parametrize("after_seq", [True, False, 1.5, 1.0, "3", "", -1, None, [], {}, 2**63])
async def test_an_invalid_after_seq_is_invalid_field(server, after_seq):
    async with connect(server.port) as c:
        await c.send(json.dumps({"type": "subscribe", "agent_id": AGENT, "after_seq": after_seq, "request_id": "x"}))
        error = await c.recv()
        assert error["type"] == "error" and error["code"] == "invalid_field" and error["request_id"] == "x"
        assert "after_seq" in error["message"]
        await assert_nothing_more(c)
        await c.send(resume(0, "ok"))  # the connection goes on, unsubscribed meanwhile
        assert await c.recv() == subscribed(0, "ok")


async def test_resume_of_an_unknown_agent_is_unknown_agent(server):
    async with connect(server.port) as c:
        await c.send(resume(0, "g", agent="ghost"))
        error = await c.recv()
        assert error["code"] == "unknown_agent" and error["agent_id"] == "ghost" and error["request_id"] == "g"


async def test_clears_appear_in_the_backlog_and_forgotten_messages_do_not(server):
    async with connect(server.port) as c:
        await as_user(c, "cleo")
        history = Log(c)
        await history.say("kept for a while", "k")
        short = await history.clear(long_term=False, request_id="s")
        await history.say("then forgotten")
        long = await history.clear(long_term=True, request_id="l")
        await history.say("after forgetting", "a")
        assert short["forgotten"] == 0 and long["forgotten"] == 4
        async with connect(server.port) as laptop:
            await as_user(laptop, "cleo")
            await laptop.send(resume(0))
            # the messages a long-term clear forgot are not replayed (their text is gone); the clears are,
            # as they were sent live (with `forgotten`)
            expected = [short, long, *history.after(long["seq"])]
            assert await recv_n(laptop, 1 + len(expected)) == [subscribed(0), *expected]
            await assert_nothing_more(laptop)
            after_short = short["seq"]
            await laptop.send(resume(after_short))  # starting after the first clear: the same `forgotten`
            assert await recv_n(laptop, len(expected)) == [subscribed(after_short), *expected[1:]]
            await assert_nothing_more(laptop)


def write_history(db_path, user, turns, *, other="someone else"):
    """`turns` chat turns of `user` (and one of `other` between each), straight into the log."""
    with EventLog.open(db_path) as log:
        batches = []
        for i in range(turns):
            batches.append([UserSaid(AGENT, user, AT, f"question {i}", f"q{i}"), AgentAnswered(AGENT, user, AT, f"answer {i}")])
            batches.append([UserSaid(AGENT, other, AT, f"not yours {i}")])
        log.append(batches)


async def test_a_long_history_arrives_complete_and_in_order_at_the_pace_the_client_reads(db_path):
    write_history(db_path, "long", 600)  # 1,200 events of this user: three pages, twenty outboxes full
    async with running_server(db_path, outbox_size=64) as server, connect(server.port) as c:
        await as_user(c, "long")
        await c.send(resume(0, "r"))
        frames = await recv_n(c, 1 + 1200, timeout=20)
        assert frames[0] == subscribed(0, "r")
        assert seqs(frames) == sorted(seqs(frames)) and len(set(seqs(frames))) == 1200
        expected = []
        for i in range(600):
            expected += [("user_message", f"question {i}", f"q{i}"), ("response", f"answer {i}", None)]
        assert [(f["type"], f["message"], f.get("request_id")) for f in frames[1:]] == expected
        await assert_nothing_more(c)
        live = await c.request(chat("and now live"), "agent_done")
        assert live[-2]["seq"] > frames[-1]["seq"]


@pytest.mark.parametrize("page", [1, 5, 6])
async def test_pages_join_without_gap_or_duplicate(db_path, monkeypatch, page):
    monkeypatch.setattr(actors_backlog, "BACKLOG_PAGE", page)
    write_history(db_path, "pager", 5)  # 10 events: pages that end exactly at the end, or not
    async with running_server(db_path) as server, connect(server.port) as c:
        await as_user(c, "pager")
        await c.send(resume(0))
        frames = await recv_n(c, 11)
        assert [f.get("message") for f in frames[1:]] == [x for i in range(5) for x in (f"question {i}", f"answer {i}")]
        await assert_nothing_more(c)
        await c.send(resume(frames[4]["seq"]))
        assert await recv_n(c, 7) == [subscribed(frames[4]["seq"]), *frames[5:]]
        await assert_nothing_more(c)


async def test_a_plain_subscription_is_unchanged_and_gets_no_user_message(server):
    async with connect(server.port) as phone, connect(server.port) as plain, connect(server.port) as resumed:
        for c in (phone, plain, resumed):
            await as_user(c, "pat")
        assert await plain.request({"type": "subscribe", "agent_id": AGENT}, "subscribed") == [
            {"type": "subscribed", "agent_id": AGENT, "message": f"Successfully subscribed to agent {AGENT}"}]
        await resumed.send(resume(0))
        assert await resumed.recv() == subscribed(0)
        sent = await phone.request(chat("hello both"), "agent_done")
        assert await plain.recv_until("agent_done") == sent
        assert [f["type"] for f in await resumed.recv_until("agent_done")] == [
            "agent_thinking", "response_chunk", "user_message", "response", "agent_done"]
        # the sender itself, once resumed, also gets its own message back with its seq
        await phone.send(resume(sent[-2]["seq"]))
        assert await phone.recv() == subscribed(sent[-2]["seq"])
        own = await phone.request(chat("mine too"), "agent_done")
        assert [f["type"] for f in own] == ["agent_thinking", "response_chunk", "user_message", "response", "agent_done"]
        # unsubscribing ends it like any subscription
        await resumed.request({"type": "unsubscribe", "agent_id": AGENT}, "unsubscribed")
        await phone.request(chat("gone"), "agent_done")
        await assert_nothing_more(resumed)


class FailingBrain:
    recall = 0

    async def reply(self, turn):
        if turn.message == "fail":
            raise BrainError("no answer today")
        yield EchoBrain.answer(turn)


async def test_a_failed_turn_gives_its_user_message_live_and_in_the_backlog(db_path):
    async with running_server(db_path, [AgentSpec(AGENT, FailingBrain())]) as server:
        async with connect(server.port) as phone, connect(server.port) as laptop:
            for c in (phone, laptop):
                await as_user(c, "fay")
            await laptop.send(resume(0))
            assert await laptop.recv() == subscribed(0)
            sent = await phone.request(chat("fail", "x"), "agent_done")
            assert [f["type"] for f in sent] == ["agent_thinking", "error", "agent_done"]
            seen = await laptop.recv_until("agent_done")
            assert [f["type"] for f in seen] == ["agent_thinking", "user_message", "error", "agent_done"]
            said = seen[1]
            assert said["message"] == "fail" and said["request_id"] == "x"
            await laptop.send(resume(0))  # the backlog shows how the turn ended, as it was seen live
            assert await recv_n(laptop, 4) == [subscribed(0), said, *seen[2:]]
            await assert_nothing_more(laptop)


async def test_a_resume_withdrawn_before_it_starts_delivers_nothing(db_path):
    brain = GatedBrain(answer=lambda turn: [EchoBrain.answer(turn)])
    async with running_server(db_path, [AgentSpec(AGENT, brain)]) as server:
        async with connect(server.port) as phone, connect(server.port) as laptop:
            for c in (phone, laptop):
                await as_user(c, "wes")
            await phone.send(chat("hold on"))
            with trio.fail_after(scaled(10)):
                await brain.started.wait()
            await laptop.send(resume(0))
            await laptop.request({"type": "unsubscribe", "agent_id": AGENT}, "unsubscribed")
            await laptop.send(resume(0, "switch"))
            await as_user(laptop, "other")  # its subscription follows it to the new user, as a plain one
            brain.gate.set()
            await phone.recv_until("agent_done")
            await assert_nothing_more(laptop)  # neither resume sent `subscribed` nor wes's backlog
            await phone.request(chat("still wes"), "agent_done")
            await assert_nothing_more(laptop)
            async with connect(server.port) as other:
                await as_user(other, "other")
                sent = await other.request(chat("other's turn"), "agent_done")
                assert await laptop.recv_until("agent_done") == sent


# -- pacing, over in-memory streams where the server's writes wait for the client's reads --------

from agentcast.transport._connection import TRY_AGAIN_LATER, Connection  # noqa: E402
from support.harness import Harness  # noqa: E402

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)


@pytest.fixture
async def h(nursery, tmp_path):
    harness = Harness(nursery, str(tmp_path / "agentcast.db"))
    await harness.start()
    return harness


async def lockstep_client(h, user, *, outbox_size):
    ws, conn = await h.client(lockstep=True, outbox_size=outbox_size)
    await ws.send_message(json.dumps({"type": "set_user", "user_id": user}))
    with trio.fail_after(scaled(10)):
        assert json.loads(await ws.get_message())["type"] == "connected"
        assert json.loads(await ws.get_message())["type"] == "user_set"
    return ws, conn


async def log_turns(h, user, turns):
    await h.journal.append([e for i in range(turns) for e in (UserSaid(AGENT, user, AT, f"question {i}"),
                                                              AgentAnswered(AGENT, user, AT, f"answer {i}"))])


async def test_a_client_that_reads_slowly_gets_a_backlog_many_times_its_queue_whole(h):
    await log_turns(h, "slow reader", 300)
    ws, conn = await lockstep_client(h, "slow reader", outbox_size=8)
    await ws.send_message(json.dumps(resume(0)))
    with trio.fail_after(scaled(10)):
        frames = [json.loads(await ws.get_message()) for _ in range(601)]
    assert frames[0] == subscribed(0)
    assert [f["message"] for f in frames[1:]] == [x for i in range(300) for x in (f"question {i}", f"answer {i}")]
    assert conn._closing is None


@pytest.mark.process
async def test_a_client_that_stops_reading_during_a_backlog_is_closed_and_the_lane_goes_on(h, monkeypatch):
    await log_turns(h, "stalled", 600)
    ws, conn = await lockstep_client(h, "stalled", outbox_size=32)
    waits = []  # the backlog's waits for room that found the queue crowded: (closing before, closing after)
    room = Connection.room

    async def counted_room(self):
        crowded, closing = self is conn and self._outbox.crowded(), self._closing
        await room(self)
        if crowded:
            waits.append((closing, self._closing))

    monkeypatch.setattr(Connection, "room", counted_room)
    await ws.send_message(json.dumps(resume(0)))  # and never reads again
    await h.wait_finished(conn)
    assert conn._closing[0] == TRY_AGAIN_LATER
    # Waits end as the writer takes frames, until one lasts a close_timeout without room and closes it; once
    # closing, the backlog waits no more (not a close_timeout per frame).
    assert [after is not None for _, after in waits].count(True) == 1 and waits[-1][1] is not None, waits
    assert all(before is None for before, _ in waits), waits
    other, _ = await h.client()  # the same user's next command is carried out
    with trio.fail_after(scaled(10)):
        assert json.loads(await other.get_message())["type"] == "connected"
        await other.send_message(json.dumps({"type": "set_user", "user_id": "stalled"}))
        await other.send_message(json.dumps(chat("are you there?")))
        frames = []
        while not frames or frames[-1]["type"] != "agent_done":
            frames.append(json.loads(await other.get_message()))
    assert "are you there?" in frames[-2]["message"]
    assert not h.audience.subscribed(AGENT, "stalled", conn)  # nothing left behind


@pytest.mark.parametrize("withdraw", [
    [{"type": "set_user", "user_id": "bob", "request_id": "w"}],
    [{"type": "unsubscribe", "agent_id": AGENT, "request_id": "w"}],
    # back to the same user: still a new subscription, not the resumed one
    [{"type": "set_user", "user_id": "bob"}, {"type": "set_user", "user_id": "ann", "request_id": "w"}],
], ids=["set_user", "unsubscribe", "set_user_and_back"])
async def test_a_backlog_stops_at_once_when_its_subscription_is_dropped(h, withdraw):
    await log_turns(h, "ann", 300)  # 600 events: more than the first page (500) alone
    ws, conn = await lockstep_client(h, "ann", outbox_size=8)
    await ws.send_message(json.dumps(resume(0, "r")))
    with trio.fail_after(scaled(10)):
        seen = [json.loads(await ws.get_message()) for _ in range(3)]
    assert seen[0] == subscribed(0, "r")
    for frame in withdraw:
        await ws.send_message(json.dumps(frame))
    # The backlog now waits for room in the client's queue, in the middle of its first page; the
    # commands above are handled meanwhile (their answers queue behind the backlog's frames).
    await trio.testing.wait_all_tasks_blocked()
    with trio.fail_after(scaled(10)):
        while seen[-1].get("request_id") != "w":
            seen.append(json.loads(await ws.get_message()))
    backlog = [f for f in seen[1:] if f["type"] in ("user_message", "response")]
    assert 0 < len(backlog) < 500
    assert [f["message"] for f in backlog] == [x for i in range(300) for x in (f"question {i}", f"answer {i}")][:len(backlog)]
    # nothing of the backlog after the answer to the switch (or unsubscribe): the next frame answers a ping
    await ws.send_message(json.dumps({"type": "ping", "request_id": "after"}))
    with trio.fail_after(scaled(10)):
        assert json.loads(await ws.get_message()) == {"type": "ping", "request_id": "after"}
    await h.agents.wait_idle()
    assert not h.audience.tails(AGENT, "ann", conn)  # the resumed subscription did not come back as a tail
