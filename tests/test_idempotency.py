"""Idempotent chats: a chat retried with a `command_id` the log already holds is answered from the
log (the same response and seq) and never appended twice, across restarts and for that user only."""
from __future__ import annotations

import pytest
import trio

from agentcast.actors import AgentSpec, BrainError
from agentcast.store import EventLog
from support import connect, running_server, scaled

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)

AGENT = "my_agent"


def chat(message, command_id=None, **extra):
    frame = {"type": "chat", "agent_id": AGENT, "message": message, **extra}
    if command_id is not None:
        frame["command_id"] = command_id
    return frame


def logged(db_path, user):
    with EventLog.open(db_path, readonly=True) as log:
        return [(r.event.TYPE, getattr(r.event, "content", None)) for r in log.read(user=user)]


async def test_a_retry_is_answered_from_the_log_and_not_appended_again(db_path):
    async with running_server(db_path) as server:
        async with connect(server.port) as c:
            await c.request({"type": "set_user", "user_id": "u"}, "user_set")
            first = await c.request(chat("hello once", "cmd-1", request_id="a"), "agent_done")
            again = await c.request(chat("hello once", "cmd-1", request_id="b"), "agent_done")
            assert again[-2]["message"] == first[-2]["message"] and again[-2]["seq"] == first[-2]["seq"]
            assert [f["type"] for f in again] == ["agent_thinking", "response_chunk", "response", "agent_done"]
            assert all(f["request_id"] == "b" for f in again)
            assert "".join(f["delta"] for f in again if f["type"] == "response_chunk") == again[-2]["message"]
            nxt = await c.request(chat("next one", "cmd-2"), "agent_done")
            assert "remember 2 earlier messages" in nxt[-2]["message"]  # the retry added nothing
    assert [t for t, _ in logged(db_path, "u")] == ["user_message", "agent_message"] * 2
    async with running_server(db_path) as server, connect(server.port) as c:  # across a restart
        await c.request({"type": "set_user", "user_id": "u"}, "user_set")
        after = await c.request(chat("hello once", "cmd-1"), "agent_done")
        assert after[-2]["seq"] == first[-2]["seq"]
    assert len(logged(db_path, "u")) == 4


async def test_another_user_with_the_same_command_id_gets_their_own_turn(server):
    async with connect(server.port) as a, connect(server.port) as b:
        await a.request({"type": "set_user", "user_id": "a"}, "user_set")
        await b.request({"type": "set_user", "user_id": "b"}, "user_set")
        mine = await a.request(chat("alice private words", "same-id"), "agent_done")
        theirs = await b.request(chat("bob words", "same-id"), "agent_done")
        assert "alice" not in theirs[-2]["message"] and theirs[-2]["seq"] != mine[-2]["seq"]


class FlakyBrain:
    """Fails its first answer, then answers; can hold an answer until `gate` is set."""

    recall = 0

    def __init__(self):
        self.calls = 0
        self.gate = trio.Event()
        self.gate.set()

    async def reply(self, turn):
        self.calls += 1
        if self.calls == 1 and turn.message.startswith("flaky"):
            raise BrainError("try again")
        await self.gate.wait()
        yield f"answer {self.calls}"


async def test_a_failed_turn_retried_runs_again_and_logs_the_user_message_once(db_path):
    brain = FlakyBrain()
    async with running_server(db_path, [AgentSpec(AGENT, brain)]) as server, connect(server.port) as c:
        await c.request({"type": "set_user", "user_id": "f"}, "user_set")
        failed = await c.request(chat("flaky question", "cmd-f"), "agent_done")
        assert failed[1]["code"] == "brain_error"
        retried = await c.request(chat("flaky question", "cmd-f"), "agent_done")
        assert retried[-2]["message"] == "answer 2"
        again = await c.request(chat("flaky question", "cmd-f"), "agent_done")
        assert again[-2]["seq"] == retried[-2]["seq"] and brain.calls == 2
    # The user's message once; the failed try logged as a failed turn (no text of its own).
    assert logged(db_path, "f") == [
        ("user_message", "flaky question"), ("turn_ended", None), ("agent_message", "answer 2"),
    ]


async def test_a_retry_sent_while_the_first_is_running_gets_the_same_answer(db_path):
    brain = FlakyBrain()
    brain.gate = trio.Event()
    async with running_server(db_path, [AgentSpec(AGENT, brain)]) as server, connect(server.port) as c:
        await c.send(chat("steady", "cmd-s", request_id="1"))
        await c.send(chat("steady", "cmd-s", request_id="2"))
        with trio.fail_after(scaled(5)):
            while server.agents[AGENT].in_flight < 2:  # both queued in the lane, the first running
                await trio.sleep(0.001)
        brain.gate.set()
        responses = []
        while len(responses) < 2:
            frame = await c.recv()
            if frame["type"] == "response":
                responses.append(frame)
        assert [r["request_id"] for r in responses] == ["1", "2"]
        assert responses[0]["seq"] == responses[1]["seq"] and responses[0]["message"] == responses[1]["message"]
        assert brain.calls == 1


@pytest.mark.parametrize("bad", ['""', "5", "true", "null", '"' + "x" * 300 + '"'])
async def test_a_bad_command_id_is_an_invalid_field(server, bad):
    async with connect(server.port) as c:
        await c.send('{"type":"chat","agent_id":"my_agent","message":"hi","command_id":' + bad + "}")
        error = await c.recv()
        if bad == "null":  # null is the same as leaving it out
            assert error["type"] == "agent_thinking"
        else:
            assert error["type"] == "error" and error["code"] == "invalid_field" and "command_id" in error["message"]


async def test_a_failed_turn_retried_after_other_traffic_is_answered_once(db_path):
    brain = FlakyBrain()
    async with running_server(db_path, [AgentSpec(AGENT, brain)]) as server:
        async with connect(server.port) as f, connect(server.port) as g:
            await f.request({"type": "set_user", "user_id": "f"}, "user_set")
            await g.request({"type": "set_user", "user_id": "g"}, "user_set")
            assert (await f.request(chat("flaky again", "cmd-x"), "agent_done"))[1]["code"] == "brain_error"
            await g.request(chat("someone else in between"), "agent_done")  # the answer will not be seq + 1
            first = await f.request(chat("flaky again", "cmd-x"), "agent_done")
            await g.request(chat("and again"), "agent_done")
            for _ in range(3):
                again = await f.request(chat("flaky again", "cmd-x"), "agent_done")
                assert again[-2]["seq"] == first[-2]["seq"] and again[-2]["message"] == first[-2]["message"]
    assert [t for t, _ in logged(db_path, "f")] == ["user_message", "turn_ended", "agent_message"]
