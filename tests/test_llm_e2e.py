"""Real agents end to end: a real server with `openai` agents talking to the fake OpenAI-compatible server
(support/fake_openai.py), real WebSocket clients, a real SQLite log: streaming, usage, tool calls, errors,
cancellation, busy agents, disconnects, and what the log (and `agentcast replay`) holds afterwards."""
from __future__ import annotations

import asyncio
import json

import pytest
import trio

from agentcast.actors import AgentSpec, OpenAIBrain, OpenAIBrainSettings
from agentcast.store import EventLog, activity_at
from agentcast.transport.cli import main as cli_main
from support import llm_server, running_server, scaled
from support.fake_openai import chunk, error, text, tool_calls
from support.llm import AGENT, chat, user

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)


def events_of(db_path, user_id="alice"):
    with EventLog.open(db_path, readonly=True) as log:
        return list(log.read(agent_id=AGENT, user=user_id))


async def frame_of_type(client, type_):
    """Read frames until one of `type_`; returns it."""
    return (await client.recv_until(type_))[-1]


# -- streaming and usage ---------------------------------------------------------------------


async def test_a_real_model_streams_tokens_and_the_response_carries_usage(db_path):
    async with llm_server(db_path, text("Hello", ", ", "Alice!", usage=(21, 4))) as server:
        async with user(server) as alice:
            frames = await alice.request(chat("Hi, I am Alice", "r1"), "agent_done")
    types = [f["type"] for f in frames]
    assert types[0] == "agent_thinking" and types[-2:] == ["response", "agent_done"]
    assert set(types[1:-2]) == {"response_chunk"}  # one or more, as the writer may merge them
    assert "".join(f["delta"] for f in frames[1:-2]) == "Hello, Alice!"
    response = frames[-2]
    assert response["message"] == "Hello, Alice!" and response["request_id"] == "r1"
    assert response["usage"] == {"prompt_tokens": 21, "completion_tokens": 4}
    assert [(r.event.TYPE, r.event.content) for r in events_of(db_path)] == [
        ("user_message", "Hi, I am Alice"), ("agent_message", "Hello, Alice!"),
    ]


async def test_the_next_turn_sends_the_conversation_so_far(db_path):
    async with llm_server(db_path, text("Nice to meet you."), text("Alice.")) as server:
        async with user(server) as alice:
            await alice.request(chat("I am Alice"), "agent_done")
            await alice.request(chat("Who am I?"), "agent_done")
        messages = server.fake.requests[1]["messages"]
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", "I am Alice"), ("assistant", "Nice to meet you."), ("user", "Who am I?"),
    ]


# -- tools -----------------------------------------------------------------------------------


async def test_tool_calls_stream_live_are_logged_and_a_remembered_fact_is_searchable(db_path, capsys):
    replies = (
        tool_calls(("call_1", "remember", {"fact": "Alice drinks green tea"}), ("call_2", "current_time", {})),
        text("I will remember that."),
        tool_calls(("call_3", "search_memory", {"query": "tea"})),
        text("You drink green tea."),
    )
    brain = {"tools": ["remember", "current_time", "search_memory"]}
    async with llm_server(db_path, *replies, brain=brain) as server:
        async with user(server, subscribe=True) as alice, user(server, "mallory") as mallory:
            frames = await alice.request(chat("I drink green tea", "t1"), "agent_done")
            second = await alice.request(chat("What do I drink?", "t2"), "agent_done")
            found = await alice.request({"type": "search_memory", "agent_id": AGENT, "query": "green tea"},
                                        "memory_results")
            theirs = await mallory.request({"type": "search_memory", "agent_id": AGENT, "query": "green tea"},
                                           "memory_results")
    kinds = [f["type"] for f in frames if f["type"] != "response_chunk"]
    assert kinds == ["agent_thinking", "tool_call", "tool_result", "tool_call", "tool_result", "response", "agent_done"]
    call_1, result_1, call_2, result_2 = [f for f in frames if f["type"] in ("tool_call", "tool_result")]
    assert call_1 == {"type": "tool_call", "agent_id": AGENT, "call_id": "call_1", "tool": "remember",
                      "arguments": {"fact": "Alice drinks green tea"}, "request_id": "t1"}
    assert result_1["call_id"] == "call_1" and result_1["result"]["remembered"] == "Alice drinks green tea"
    assert (call_2["tool"], result_2["tool"]) == ("current_time", "current_time") and "error" not in result_2
    # the search tool found the fact in this user's memory, and the model was given it
    search_result = next(f for f in second if f["type"] == "tool_result")
    assert any(r["content"] == "Alice drinks green tea" and r["role"] == "fact" for r in search_result["result"])
    # the client's own search finds it too (role "fact"); another user's finds nothing of Alice's
    assert [r["role"] for r in found[-1]["results"]].count("fact") == 1
    assert theirs[-1]["results"] == []
    # the log: the user's message first, then each call before its result, the fact, the answer
    assert [r.event.TYPE for r in events_of(db_path)][:6] == [
        "user_message", "tool_called", "fact_remembered", "tool_returned", "tool_called", "tool_returned",
    ]
    with EventLog.open(db_path, readonly=True) as log:
        activity = activity_at(log, AGENT, "alice")
    assert [(r.event.TYPE, r.event.tool) for r in activity] == [
        ("tool_called", "remember"), ("tool_returned", "remember"), ("tool_called", "current_time"),
        ("tool_returned", "current_time"), ("tool_called", "search_memory"), ("tool_returned", "search_memory"),
    ]
    # `agentcast replay` shows what the turns did, from the log alone (the fake server is gone)
    assert cli_main(["replay", "--db", db_path, "--user", "alice"]) == 0
    out = capsys.readouterr().out
    assert "tool call  remember" in out and '{"fact": "Alice drinks green tea"}' in out
    assert "tool result search_memory" in out and "fact" in out
    assert cli_main(["replay", "--db", db_path, "--user", "alice", "--json"]) == 0
    replayed = json.loads(capsys.readouterr().out)["memories"][0]
    assert [a["type"] for a in replayed["activity"]][:2] == ["tool_called", "tool_returned"]


# -- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (error(401, "Incorrect API key provided"), "refused the API key (HTTP 401): Incorrect API key provided"),
        (error(404, "model 'fake-model' not found"), "HTTP 404"),
        (error(503, "overloaded"), "the model server failed (HTTP 503): overloaded"),
        (text(), "the model gave an empty answer"),
    ],
)
async def test_a_provider_failure_is_a_brain_error_then_agent_done_and_the_lane_lives_on(db_path, reply, reason):
    async with llm_server(db_path, reply, text("Back again.")) as server:
        async with user(server) as alice:
            failed = await alice.request(chat("Hello?", "r1"), "agent_done")
            again = await alice.request(chat("Hello again?", "r2"), "agent_done")
    assert [f["type"] for f in failed] == ["agent_thinking", "error", "agent_done"]
    assert failed[1]["code"] == "brain_error" and reason in failed[1]["message"] and failed[1]["request_id"] == "r1"
    assert again[-2]["message"] == "Back again."
    first, ended = events_of(db_path)[:2]
    assert first.event.content == "Hello?"
    assert (ended.event.TYPE, ended.event.outcome) == ("turn_ended", "failed") and reason in ended.event.reason


async def test_connection_refused_is_a_brain_error(db_path):
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = AgentSpec(AGENT, OpenAIBrain(OpenAIBrainSettings(model="m", base_url=f"http://127.0.0.1:{port}/v1", retries=0)))
    async with running_server(db_path, [spec]) as server, user(server) as alice:
        frames = await alice.request(chat("anyone?"), "agent_done")
    assert frames[1]["code"] == "brain_error" and "could not connect to the model server" in frames[1]["message"]


# -- cancellation ----------------------------------------------------------------------------


async def test_cancel_stops_the_stream_at_once_logs_the_partial_and_queued_turns_still_run(db_path):
    async with llm_server(db_path, text("Once upon", " a time", stall_after=1), text("Short answer.")) as server:
        async with user(server, subscribe=True) as alice, user(server, subscribe=True) as alices_tab:
            await alice.send(chat("Tell me a long story", "long"))
            await alice.send(chat("And a short one", "short"))
            assert (await frame_of_type(alice, "response_chunk"))["delta"] == "Once upon"
            await server.fake.stalled.wait()
            await alice.send({"type": "cancel", "agent_id": AGENT, "request_id": "long"})
            ended = await alice.recv_until("agent_done")
            assert [f["type"] for f in ended] == ["cancelled", "agent_done"]
            assert ended[0] == {"type": "cancelled", "agent_id": AGENT, "partial": "Once upon", "request_id": "long"}
            with trio.fail_after(scaled(5)):
                await server.fake.disconnected.wait()  # the HTTP stream to the provider was closed
            short = await alice.recv_until("agent_done")
            assert short[-2]["message"] == "Short answer." and short[-2]["request_id"] == "short"
            # the user's other tab heard the cancelled turn too
            tab = await alices_tab.recv_until("cancelled")
            assert tab[-1]["partial"] == "Once upon"
    assert [(r.event.TYPE, getattr(r.event, "content", None) or getattr(r.event, "partial", None))
            for r in events_of(db_path)] == [
        ("user_message", "Tell me a long story"), ("turn_ended", "Once upon"),
        ("user_message", "And a short one"), ("agent_message", "Short answer."),
    ]
    assert events_of(db_path)[1].event.outcome == "cancelled"
    assert len(server.fake.requests) == 2


async def test_cancelling_nothing_or_another_turn_is_a_clear_error(db_path):
    async with llm_server(db_path, text("Slow", stall_after=1)) as server:
        async with user(server) as alice, user(server, "mallory") as mallory:
            nothing = await alice.request({"type": "cancel", "agent_id": AGENT, "request_id": "c0"}, "error")
            assert nothing[-1]["code"] == "nothing_to_cancel" and nothing[-1]["request_id"] == "c0"
            assert "nothing to cancel" in nothing[-1]["message"]
            unknown = await alice.request({"type": "cancel", "agent_id": "nope"}, "error")
            assert unknown[-1]["code"] == "unknown_agent"
            await alice.send(chat("Go", "mine"))
            await frame_of_type(alice, "response_chunk")
            # another user cannot cancel alice's turn: for mallory there is nothing running
            theirs = await mallory.request({"type": "cancel", "agent_id": AGENT}, "error")
            assert theirs[-1]["code"] == "nothing_to_cancel"
            wrong = await alice.request({"type": "cancel", "agent_id": AGENT, "request_id": "other"}, "error")
            assert wrong[-1]["code"] == "nothing_to_cancel" and wrong[-1]["request_id"] == "other"
            assert "with this request_id" in wrong[-1]["message"]  # the client's value is in the frame, not repeated
            assert not server.fake.disconnected.is_set()
            done = await alice.request({"type": "cancel", "agent_id": AGENT}, "agent_done")
            assert [f["type"] for f in done] == ["cancelled", "agent_done"]


async def test_a_cancel_from_another_connection_of_the_user_is_answered_there_too(db_path):
    async with llm_server(db_path, text("Slow", stall_after=1)) as server:
        async with user(server) as alice, user(server) as alices_phone:
            await alice.send(chat("Go", "mine"))
            await frame_of_type(alice, "response_chunk")
            on_phone = await alices_phone.request({"type": "cancel", "agent_id": AGENT}, "agent_done")
            assert [f["type"] for f in on_phone] == ["cancelled", "agent_done"]
            assert [f["type"] for f in await alice.recv_until("agent_done")] == ["cancelled", "agent_done"]


# -- busy agents -----------------------------------------------------------------------------


async def test_on_busy_reject_refuses_a_second_chat_while_the_first_runs(db_path):
    async with llm_server(db_path, text("Slow", stall_after=1), text("Next."), on_busy="reject") as server:
        async with user(server) as alice, user(server, "bob") as bob:
            await alice.send(chat("first", "1"))
            await frame_of_type(alice, "response_chunk")
            refused = await alice.request(chat("second", "2"), "error")
            assert refused[-1]["code"] == "busy" and refused[-1]["request_id"] == "2"
            assert "still answering your previous message" in refused[-1]["message"]
            # other users are not affected
            assert (await bob.request(chat("hi", "b"), "agent_done"))[-2]["message"] == "Next."
            await alice.request({"type": "cancel", "agent_id": AGENT}, "agent_done")


async def test_on_busy_interrupt_cancels_the_running_turn_and_answers_the_new_one(db_path):
    async with llm_server(db_path, text("Old", stall_after=1), text("New answer."), on_busy="interrupt") as server:
        async with user(server) as alice:
            await alice.send(chat("first", "1"))
            await frame_of_type(alice, "response_chunk")
            await alice.send(chat("actually, this", "2"))
            first = await alice.recv_until("agent_done")
            assert [f["type"] for f in first] == ["cancelled", "agent_done"] and first[0]["request_id"] == "1"
            second = await alice.recv_until("agent_done")
            assert second[-2]["message"] == "New answer." and second[-2]["request_id"] == "2"
            with trio.fail_after(scaled(5)):
                await server.fake.disconnected.wait()


async def test_on_busy_queue_is_the_default_and_runs_turns_in_order(db_path):
    async with llm_server(db_path, text("One."), text("Two.")) as server, user(server) as alice:
        await alice.send(chat("first", "1"))
        await alice.send(chat("second", "2"))
        first, second = await alice.recv_until("agent_done"), await alice.recv_until("agent_done")
    assert (first[-2]["message"], second[-2]["message"]) == ("One.", "Two.")


# -- disconnects -----------------------------------------------------------------------------


async def test_a_turn_whose_client_disconnects_still_completes_and_is_logged(db_path):
    gate = trio.Event()
    async with llm_server(db_path, text("Still ", "here.")) as server:
        fake = server.fake
        original = fake._answer

        async def held_answer(conn, stream, reply):  # answer only once the client has gone
            await gate.wait()
            return await original(conn, stream, reply)

        fake._answer = held_answer
        async with user(server) as alice:
            await alice.send(chat("Are you there?", "r"))
            await frame_of_type(alice, "agent_thinking")
            with trio.fail_after(scaled(5)):
                while not fake.requests:
                    await trio.sleep(0.001)
        gate.set()  # the client is gone; the model answers now
        await server.agents.wait_idle()
        async with user(server) as again:
            frames = await again.request({"type": "subscribe", "agent_id": AGENT, "after_seq": 0}, "response")
    assert frames[-1]["message"] == "Still here."
    assert [r.event.TYPE for r in events_of(db_path)] == ["user_message", "agent_message"]


async def test_cancel_on_disconnect_cancels_the_turn_and_its_queued_chats_and_closes_the_stream(db_path):
    async with llm_server(db_path, text("Part", "ial", stall_after=1), cancel_on_disconnect=True) as server:
        async with user(server) as alice:
            await alice.send(chat("Go on", "r"))
            await alice.send(chat("And then?", "q"))  # queued behind: cancelled too, the model never asked
            await frame_of_type(alice, "response_chunk")
        with trio.fail_after(scaled(5)):
            await server.fake.disconnected.wait()
        await server.agents.wait_idle()
    events = events_of(db_path)
    assert [r.event.TYPE for r in events] == ["user_message", "turn_ended", "user_message", "turn_ended"]
    assert (events[1].event.outcome, events[1].event.partial) == ("cancelled", "Part")
    assert (events[3].event.outcome, events[3].event.partial) == ("cancelled", "")
    assert len(server.fake.requests) == 1


# -- the seed document's client ----------------------------------------------------------------


async def test_the_seed_documents_python_client_chats_with_a_real_model_unchanged(db_path):
    from seed_client import AgentWebSocketClient

    async with llm_server(db_path, text("Streaming ", "from a ", "model.", usage=(5, 3))) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"

        async def scenario():
            client = AgentWebSocketClient(url=url)
            responses: list[dict] = []
            done = asyncio.Event()

            async def record(data):
                responses.append(data)

            async def finish(data):
                done.set()

            client.on("response", record)
            client.on("agent_done", finish)
            assert await client.connect()
            await client.subscribe_to_agent(AGENT)
            await client.send_chat_message("Hello model", AGENT)
            await asyncio.wait_for(done.wait(), scaled(10))
            await client.close()
            return responses

        responses = await trio.to_thread.run_sync(asyncio.run, scenario())
    assert [r["message"] for r in responses] == ["Streaming from a model."]
    assert responses[0]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3}


# -- robustness --------------------------------------------------------------------------------


async def test_a_malformed_stream_mid_answer_is_a_brain_error_with_the_partial_logged(db_path):
    from support.fake_openai import Reply

    async with llm_server(db_path, Reply(chunks=[chunk("Half"), "{broken"])) as server:
        async with user(server) as alice:
            frames = await alice.request(chat("Go", "r"), "agent_done")
    assert frames[-2]["code"] == "brain_error" and "malformed stream" in frames[-2]["message"]
    ended = events_of(db_path)[1].event
    assert (ended.outcome, ended.partial) == ("failed", "Half")


async def test_a_lone_surrogate_from_the_model_becomes_a_replacement_character_not_a_lost_turn(db_path):
    from support.fake_openai import Reply

    # JSON may escape a lone UTF-16 surrogate, which no UTF-8 frame or log row can hold.
    raw = '{"choices": [{"index": 0, "delta": {"content": "bad \\ud800 text \\ud83d\\ude00"}, "finish_reason": null}]}'
    async with llm_server(db_path, Reply(chunks=[raw, chunk(finish="stop")])) as server:
        async with user(server) as alice:
            frames = await alice.request(chat("Go", "r"), "agent_done")
            assert frames[-2]["type"] == "response"
            assert frames[-2]["message"] == "bad \ufffd text \U0001f600"  # the valid pair is kept
            again = await alice.request(chat("Still there?", "r2"), "agent_done")  # the connection lives on
    assert [r.event.TYPE for r in events_of(db_path)][:2] == ["user_message", "agent_message"]
    assert events_of(db_path)[1].event.content == "bad \ufffd text \U0001f600"
    assert again[-1]["type"] == "agent_done"


# -- retries (command_id) of turns that did not answer -----------------------------------------------


async def test_a_retry_of_a_cancelled_turn_is_answered_cancelled_from_the_log_not_run_again(db_path):
    async with llm_server(db_path, text("Once upon", " a time", stall_after=1), text("never asked for")) as server:
        async with user(server) as alice:
            await alice.send(chat("Tell me a story", "r1", command_id="story-1"))
            await frame_of_type(alice, "response_chunk")
            await server.fake.stalled.wait()
            await alice.request({"type": "cancel", "agent_id": AGENT}, "agent_done")
            retry = await alice.request(chat("Tell me a story", "r2", command_id="story-1"), "agent_done")
            assert retry == [
                {"type": "agent_thinking", "agent_id": AGENT, "request_id": "r2"},
                {"type": "cancelled", "agent_id": AGENT, "partial": "Once upon", "request_id": "r2"},
                {"type": "agent_done", "agent_id": AGENT, "request_id": "r2"},
            ]
        assert len(server.fake.requests) == 1  # the provider was not asked (and paid) again
    assert [r.event.TYPE for r in events_of(db_path)] == ["user_message", "turn_ended"]


async def test_a_retry_of_a_failed_turn_runs_it_again_without_logging_the_message_twice(db_path):
    async with llm_server(db_path, error(400, "bad request"), text("Second try.")) as server:
        async with user(server) as alice:
            failed = await alice.request(chat("Hi", "r1", command_id="hi-1"), "agent_done")
            assert failed[-2]["code"] == "brain_error"
            retry = await alice.request(chat("Hi", "r2", command_id="hi-1"), "agent_done")
            assert retry[-2]["message"] == "Second try."
            again = await alice.request(chat("Hi", "r3", command_id="hi-1"), "agent_done")
            assert again[-2]["message"] == "Second try." and again[-2]["seq"] == retry[-2]["seq"]
    assert [r.event.TYPE for r in events_of(db_path)] == ["user_message", "turn_ended", "agent_message"]
    assert [r.event.command_id for r in events_of(db_path)] == ["hi-1"] * 3


# -- a resumed subscription's backlog shows tool calls and how each turn ended --------------------------------


async def test_a_resumed_backlog_replays_tool_frames_and_cancelled_and_failed_turns_as_they_were_seen(db_path):
    replies = (tool_calls(("c1", "current_time", {})), text("It is late."),
               text("Once upon", " a time", stall_after=1), error(400, "bad request"))
    async with llm_server(db_path, *replies, brain={"tools": ["current_time"]}) as server:
        async with user(server) as alice:
            answered = await alice.request(chat("What time is it?", "t1"), "agent_done")
            await alice.send(chat("Tell me a story", "t2"))
            await frame_of_type(alice, "response_chunk")
            await server.fake.stalled.wait()
            cancelled = await alice.request({"type": "cancel", "agent_id": AGENT}, "agent_done")
            failed = await alice.request(chat("Again", "t3"), "agent_done")
        async with user(server) as laptop:
            await laptop.send({"type": "subscribe", "agent_id": AGENT, "after_seq": 0})
            backlog = await laptop.recv_until("agent_done")
            backlog += await laptop.recv_until("agent_done")
    live = [f for f in answered + cancelled + failed if f["type"] not in ("agent_thinking", "response_chunk")]
    replayed = [f for f in backlog if f["type"] not in ("subscribed", "user_message")]
    for f in live + replayed:
        f.pop("seq", None)
    assert replayed == [f for f in live if f != answered[-1]]  # an answered turn's response stands alone
    assert [f["type"] for f in backlog if f["type"] == "user_message"] == ["user_message"] * 3


async def test_a_remembered_fact_is_replayed_as_the_live_turn_showed_it_the_remember_tools_call_and_result(db_path):
    """The `fact_remembered` event adds no frame: live, the turn showed the fact as the `remember` tool's
    `tool_call` and `tool_result`, and a resumed backlog replays exactly those (docs/protocol.md)."""
    replies = (tool_calls(("c1", "remember", {"fact": "Alice drinks green tea"})), text("Noted."))
    async with llm_server(db_path, *replies, brain={"tools": ["remember"]}) as server:
        async with user(server) as alice:
            live = await alice.request(chat("I drink green tea", "t1"), "agent_done")
        async with user(server) as laptop:
            await laptop.send({"type": "subscribe", "agent_id": AGENT, "after_seq": 0})
            backlog = await laptop.recv_until("response")
    assert [r.event.TYPE for r in events_of(db_path)] == [
        "user_message", "tool_called", "fact_remembered", "tool_returned", "agent_message"]
    shown = ("tool_call", "tool_result", "response")
    assert [f["type"] for f in backlog] == ["subscribed", "user_message", *shown]
    assert [f for f in backlog if f["type"] in shown] == [f for f in live if f["type"] in shown]
    assert [f for f in live if f["type"] == "tool_result"][0]["result"] == {"remembered": "Alice drinks green tea",
                                                                            "seq": 3}
