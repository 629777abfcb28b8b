"""The trio client (`transport.client`) against a real server over loopback with a real SQLite file:
streaming chat, search, clear, errors, request correlation, pushed events, unknown frames, reconnection, and
turns of a real model (support/fake_openai.py): usage, tool activity, cancel, brain_error; list_agents.

Connections are cut, held and frozen by a TCP relay (`Relay`) between the client and the server.
"""
from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import ConnectionClosed, serve_websocket

from agentcast.actors import AgentSpec, EchoBrain
from support.fake_openai import error, text, tool_calls
from agentcast.store import EventLog
from support import LLM_AGENT, GatedBrain, connect, llm_server, running_server, scaled
from agentcast.transport.client import (
    AgentError,
    CannotConnect,
    ConnectionLost,
    Disconnected,
    Reconnected,
    frame_type,
    open_agent_client,
)
from agentcast.transport.protocol import (
    AgentDone,
    AgentInfo,
    AgentThinking,
    MemoryCleared,
    Pong,
    Response,
    ResponseChunk,
    ToolCall,
    ToolResult,
    UnknownFrame,
    Usage,
    UserMessage,
    decode_server_frame,
)

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)

AGENT = "my_agent"
#: Bound on anything a test waits for.
WAIT = scaled(10)


def url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/ws"


def logged(db_path, user):
    with EventLog.open(db_path, readonly=True) as log:
        return [(r.event.TYPE, getattr(r.event, "content", None)) for r in log.read(user=user)]


class Relay:
    """A TCP relay to `target` (a port) that a test controls: `cut()` drops every relayed connection, `hold()`
    makes new connections wait (until `release()`), `freeze()` stops forwarding on the current connections
    without closing them (a half-open connection), `close()` stops listening (connections are refused)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.accepted = 0
        self._open = trio.Event()
        self._open.set()
        self._scopes: set[trio.CancelScope] = set()
        self._frozen: set[trio.Event] = set()
        self._listening = trio.CancelScope()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        with self._listening:
            await trio.serve_listeners(self._relay, listeners)

    def close(self) -> None:
        """Stop listening and drop every connection: the server is gone (connections are refused)."""
        self._listening.cancel()

    def cut(self) -> None:
        for scope in list(self._scopes):
            scope.cancel()

    def hold(self) -> None:
        self._open = trio.Event()

    def release(self) -> None:
        self._open.set()

    def freeze(self) -> None:
        for thaw in list(self._frozen):
            self._frozen.discard(thaw)

    async def _relay(self, client) -> None:
        self.accepted += 1
        async with client:
            await self._open.wait()
            running = trio.Event()  # cleared by freeze(): forwarding stops
            running.set()
            self._frozen.add(running)
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    async with await trio.open_tcp_stream("127.0.0.1", self.target) as server:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._pump, client, server, running, nursery.cancel_scope)
                            nursery.start_soon(self._pump, server, client, running, nursery.cancel_scope)
                except OSError:
                    pass
                finally:
                    self._scopes.discard(scope)

    async def _pump(self, src, dst, running: trio.Event, scope: trio.CancelScope) -> None:
        try:
            async for data in src:
                if running not in self._frozen:
                    await trio.sleep_forever()
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            scope.cancel()


@pytest.fixture
async def relay(server, nursery):
    r = Relay(server.port)
    await nursery.start(r.run)
    return r


async def next_event(events, *types: type):
    """The next event of one of `types` (others are skipped), bounded."""
    with trio.fail_after(WAIT):
        async for event in events:
            if isinstance(event, types):
                return event
    raise AssertionError(f"events ended before a {types}")


async def wait_until(predicate) -> None:
    with trio.fail_after(WAIT):
        while not predicate():
            await trio.sleep(0.005)


# -- the codec's client side -------------------------------------------------------------------


def test_server_frames_decode_to_their_classes_and_unknown_ones_to_unknown_frames():
    assert decode_server_frame('{"type":"ping"}') == Pong()
    newer = decode_server_frame('{"type":"response","agent_id":"a","message":"m","seq":3,"from_the_future":{"x":5}}')
    assert newer == Response("a", "m", 3)  # an extra field of a newer server is ignored
    usage = decode_server_frame('{"type":"response","agent_id":"a","message":"m","seq":3,'
                                '"usage":{"prompt_tokens":7,"completion_tokens":2}}')
    assert usage == Response("a", "m", 3, usage=Usage(7, 2))
    # an optional field of another shape is dropped, not the frame: a chat waiting for it is still answered
    other = decode_server_frame('{"type":"response","agent_id":"a","message":"m","seq":3,"usage":{"tokens":5}}')
    assert other == Response("a", "m", 3)
    agents = decode_server_frame({"type": "agents", "agents": [{"agent_id": "x"}], "request_id": "r"})
    assert agents == UnknownFrame("agents", {"type": "agents", "agents": [{"agent_id": "x"}], "request_id": "r"}, "r")
    broken = decode_server_frame('{"type":"response","agent_id":"a"}')  # a known type whose fields do not fit
    assert isinstance(broken, UnknownFrame) and broken.data == {"type": "response", "agent_id": "a"}
    assert frame_type(agents) == "agents" and frame_type(Pong()) == "ping"
    for bad in ("[1]", '{"type": 5}', "not json", "{}"):
        with pytest.raises(ValueError):
            decode_server_frame(bad)


# -- commands ------------------------------------------------------------------------------------


class TwoStepBrain:
    """Yields "first part, ", then waits for `go` before "second part."."""

    recall = 0

    def __init__(self) -> None:
        self.go = trio.Event()

    async def reply(self, turn):
        yield "first part, "
        await self.go.wait()
        yield "second part."


async def test_chat_streams_chunks_as_they_arrive_and_returns_the_committed_answer(db_path):
    brain = TwoStepBrain()
    async with running_server(db_path, [AgentSpec(AGENT, brain)]) as server:
        async with open_agent_client(url(server.port), user_id="s") as client:
            async with client.stream_chat(AGENT, "tell me") as stream:
                deltas = []
                async for delta in stream:
                    deltas.append(delta)
                    brain.go.set()  # the second part exists only after the first was received
            assert deltas == ["first part, ", "second part."]
            assert stream.result.response == "first part, second part." and stream.result.seq == 2
            seen = []
            result = await client.chat(AGENT, "again", on_chunk=seen.append)
            assert "".join(seen) == result.response == "first part, second part." and result.seq == 4
            assert result.raw["type"] == "response" and result.raw["seq"] == 4

            async def slow(delta):  # an async callback is awaited
                await trio.sleep(0)
                seen.append(delta)

            seen.clear()
            await client.chat(AGENT, "third", on_chunk=slow)
            assert "".join(seen) == "first part, second part."
    assert [t for t, _ in logged(db_path, "s")] == ["user_message", "agent_message"] * 3


async def test_search_and_clear_memory(server):
    async with open_agent_client(url(server.port), user_id=42) as client:
        assert client.user_id == 42
        await client.chat(AGENT, "My favourite colour is turquoise.")
        found = await client.search_memory(AGENT, "turquoise", limit=1)
        assert [(r.role, r.content, r.source) for r in found] == [("user", "My favourite colour is turquoise.", "short_term")]
        cleared = await client.clear_memory(AGENT)
        assert isinstance(cleared, MemoryCleared) and cleared.clear_long_term is False and cleared.seq == 3
        assert await client.search_memory(AGENT, "turquoise", include_long_term=False) == []
        assert len(await client.search_memory(AGENT, "turquoise")) == 2  # long-term still has both messages
        assert len(await client.search_memory(AGENT, "turquoise", legs=["lexical"])) == 2
        with pytest.raises(AgentError) as refused:  # this agent has no embedder
            await client.search_memory(AGENT, "turquoise", legs=["semantic"])
        assert refused.value.code == "semantic_unavailable"
        everything = await client.clear_memory(AGENT, long_term=True)
        assert everything.clear_long_term is True and everything.forgotten == 2
        assert await client.search_memory(AGENT, "turquoise") == []


async def test_errors_raise_agent_error_and_the_client_goes_on(db_path):
    brain = GatedBrain()
    async with running_server(db_path, [AgentSpec(AGENT, brain)]) as server:
        async with open_agent_client(url(server.port)) as client:
            with pytest.raises(AgentError) as unknown:
                await client.chat("ghost", "hello?")
            assert unknown.value.code == "unknown_agent" and unknown.value.agent_id == "ghost"
            assert "No agent with ID 'ghost' exists" in str(unknown.value)
            with pytest.raises(AgentError) as failed:
                await client.chat(AGENT, "fail please")
            assert failed.value.code == "brain_error"
            with pytest.raises(AgentError) as bad:
                await client.search_memory(AGENT, "x", limit=0)
            assert bad.value.code == "invalid_field" and "limit" in bad.value.message
            with pytest.raises(AgentError) as empty:
                await client.set_user("")
            assert empty.value.code == "invalid_field" and client.user_id is None
            brain.gate.set()
            assert (await client.chat(AGENT, "still here")).response == "gated answer"
            assert await client.ping() >= 0


async def test_concurrent_calls_get_their_own_answers(db_path):
    slow = GatedBrain(lambda turn: [f"slow answer to {turn.message}"])
    specs = [AgentSpec("slow", slow), AgentSpec(AGENT, EchoBrain(chunks=3))]
    async with running_server(db_path, specs) as server, open_agent_client(url(server.port), user_id="c") as client:
        results = {}

        async def chat(i: int) -> None:
            results[i] = (await client.chat(AGENT, f"message number {i}")).response

        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: client.chat("slow", "held"))
            with trio.fail_after(WAIT):
                await slow.started.wait()
            # answered while the slow chat is still waiting: answers are matched by request_id, not by order
            for i in range(12):
                nursery.start_soon(chat, i)
            found = await client.search_memory(AGENT, "number", limit=100)
            await wait_until(lambda: len(results) == 12)
            assert not slow.gate.is_set()
            slow.gate.set()
        assert all(results[i].startswith(f"You said: message number {i}\n") for i in range(12))
        assert all(r.role in ("user", "assistant") for r in found)


async def test_the_same_users_other_connection_sees_the_turn_in_events(server):
    async with open_agent_client(url(server.port), user_id="u") as phone, \
            open_agent_client(url(server.port), user_id="u") as laptop, \
            open_agent_client(url(server.port), user_id="someone else") as other:
        await laptop.subscribe(AGENT)
        await other.subscribe(AGENT)
        async with laptop.events() as events, other.events() as others:
            seen = []
            laptop.on(Response, seen.append)
            laptop.on("*", lambda e: None)
            result = await phone.chat(AGENT, "from my phone")
            frames = []
            with trio.fail_after(WAIT):
                async for event in events:
                    frames.append(event)
                    if isinstance(event, AgentDone):
                        break
            assert [type(f) for f in frames[:1]] == [AgentThinking]
            assert isinstance(frames[-2], Response) and frames[-2].message == result.response
            assert "".join(f.delta for f in frames if isinstance(f, ResponseChunk)) == result.response
            assert seen == [frames[-2]]
            await other.ping()  # the other user's stream got nothing of it
            with pytest.raises(trio.WouldBlock):
                others.receive_nowait()


async def test_unknown_frames_reach_events_and_never_break_a_call(nursery):
    """A newer server: frames this version does not know, and extra fields on ones it does."""

    async def handler(request):
        try:
            await fake(await request.accept())
        except ConnectionClosed:
            pass

    async def fake(ws):
        await ws.send_message(json.dumps({"type": "connected", "client_id": "c1"}))
        await ws.send_message(json.dumps({"type": "agents", "agents": [{"agent_id": "x"}]}))
        while True:
            frame = json.loads(await ws.get_message())
            rid = frame["request_id"]
            for out in (
                {"type": "agent_thinking", "agent_id": "x", "request_id": rid},
                {"type": "tool_call", "agent_id": "x", "name": "lookup", "request_id": rid},
                {"type": "response_chunk", "agent_id": "x", "delta": "ok", "request_id": rid},
                {"type": "response", "agent_id": "x", "message": "ok", "seq": 9, "usage": {"tokens": 3}, "request_id": rid},
                {"type": "agent_done", "agent_id": "x", "request_id": rid},
            ):
                await ws.send_message(json.dumps(out))
            await ws.send_message(json.dumps({"type": "cancelled", "agent_id": "x"}))

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    port = server.port
    async with open_agent_client(url(port), ping_interval=None) as client:
        async with client.events() as events:
            result = await client.chat("x", "hi")
            assert result.response == "ok" and result.seq == 9 and result.raw["usage"] == {"tokens": 3}
            pushed = await next_event(events, UnknownFrame)
            if pushed.type == "agents":  # sent before events() was open: it may or may not be in the stream
                pushed = await next_event(events, UnknownFrame)
            assert pushed.type == "cancelled" and pushed.data["agent_id"] == "x"


async def test_the_first_connection_failing_is_cannot_connect(server, tmp_path):
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    free_port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(CannotConnect, match=f"cannot connect to ws://127.0.0.1:{free_port}/ws"):
        async with open_agent_client(url(free_port)):
            pass  # pragma: no cover
    with pytest.raises(CannotConnect, match="HTTP 404"):
        async with open_agent_client(f"ws://127.0.0.1:{server.port}/nope"):
            pass  # pragma: no cover


async def test_an_auth_problem_at_the_start_is_an_agent_error(server):
    with pytest.raises(AgentError) as exc:
        async with open_agent_client(url(server.port), token="not-a-token"):
            pass  # pragma: no cover
    assert exc.value.code == "auth_disabled"


# -- reconnection ---------------------------------------------------------------------------------


async def test_a_lost_connection_is_resumed_after_the_last_seq_seen(server, relay):
    fast = dict(backoff_initial=0.01, backoff_max=0.05)
    async with open_agent_client(url(relay.port), user_id="r", **fast) as client, \
            connect(server.port) as other:
        await other.request({"type": "set_user", "user_id": "r"}, "user_set")
        await client.subscribe(AGENT)
        first = await client.chat(AGENT, "before the cut")
        assert client.last_seq(AGENT) == first.seq == 2
        async with client.events() as events:
            relay.hold()
            relay.cut()
            lost = await next_event(events, Disconnected)
            assert lost.attempt == 1 and lost.retry_in is not None and not client.connected
            # while it is away, the same user says something on another connection
            missed = await other.request({"type": "chat", "agent_id": AGENT, "message": "while you were away"}, "agent_done")
            relay.release()
            back = await next_event(events, Reconnected)
            assert back.client_id == client.client_id and client.connected
            said = await next_event(events, UserMessage)
            answered = await next_event(events, Response)
        # the backlog after seq 2: exactly the missed turn (a plain subscribe would give nothing,
        # after_seq 0 would repeat "before the cut" first)
        assert (said.message, said.seq) == ("while you were away", 3)
        assert (answered.message, answered.seq) == (missed[-2]["message"], missed[-2]["seq"])
        assert client.user_id == "r"  # set again on the new connection: its search sees the user's memory
        assert {r.content for r in await client.search_memory(AGENT, "away")} >= {"while you were away"}


async def test_a_chat_cut_off_mid_turn_is_retried_and_answered_once(db_path):
    brain = GatedBrain()
    async with running_server(db_path, [AgentSpec(AGENT, brain)]) as server, trio.open_nursery() as nursery:
        relay = Relay(server.port)
        await nursery.start(relay.run)
        async with open_agent_client(url(relay.port), user_id="once", backoff_initial=0.01) as client:
            await client.subscribe(AGENT)
            async with client.events() as events:
                results = []
                cleared = []

                async def chat():
                    results.append(await client.chat(AGENT, "answer me once"))

                async def clear():
                    with pytest.raises(ConnectionLost, match="may or may not"):
                        await client.clear_memory(AGENT)
                    cleared.append(True)

                nursery.start_soon(chat)
                with trio.fail_after(WAIT):
                    await brain.started.wait()
                nursery.start_soon(clear)  # queued behind the running turn: cut off before its answer
                await wait_until(lambda: server.agents[AGENT].in_flight == 2)
                relay.cut()
                await next_event(events, Reconnected)  # the chat was sent again before this
                brain.gate.set()
                await wait_until(lambda: results and cleared)
        nursery.cancel_scope.cancel()
        assert results[0].response == "gated answer" and results[0].seq == 2
    # one turn in the log; the clear ran once (on the first connection, whose answer was lost)
    assert logged(db_path, "once") == [("user_message", "answer me once"), ("agent_message", "gated answer"), ("memory_cleared", None)]


async def test_the_client_resumes_across_a_restart_of_the_server(db_path, nursery):
    fast = dict(backoff_initial=0.01, backoff_max=0.05)
    first_gone = trio.Event()

    async def first_server(task_status=trio.TASK_STATUS_IGNORED):
        async with running_server(db_path) as server:
            task_status.started(server)
            await server.stopped.wait()
        first_gone.set()

    first = await nursery.start(first_server)
    relay = Relay(first.port)
    await nursery.start(relay.run)
    async with open_agent_client(url(relay.port), user_id=7, **fast) as client:
        await client.subscribe(AGENT)
        before = await client.chat(AGENT, "remember the lighthouse")
        relay.hold()
        async with client.events() as events:
            first.stop()  # graceful: the connection is closed with 1001
            lost = await next_event(events, Disconnected)
            assert "1001" in lost.reason
        with trio.fail_after(WAIT):
            await first_gone.wait()
        async with running_server(db_path) as second:
            async with connect(second.port) as other:
                await other.request({"type": "set_user", "user_id": 7}, "user_set")
                await other.request({"type": "chat", "agent_id": AGENT, "message": "after the restart"}, "agent_done")
            relay.target = second.port
            async with client.events() as events:
                relay.release()
                said = await next_event(events, UserMessage)
                assert said.message == "after the restart" and said.seq == before.seq + 1
            again = await client.chat(AGENT, "and the lighthouse?")
            assert "remember 4 earlier messages" in again.response


async def test_a_half_open_connection_is_noticed_by_the_keepalive(server, relay):
    async with open_agent_client(
        url(relay.port), user_id="k", ping_interval=0.05, ping_timeout=0.3, backoff_initial=0.01
    ) as client, client.events() as events:
        await client.chat(AGENT, "hello")
        relay.freeze()  # nothing passes any more, and nothing is closed either
        lost = await next_event(events, Disconnected)
        assert "no answer to a ping" in lost.reason
        await next_event(events, Reconnected)
        assert (await client.chat(AGENT, "hello again")).seq == 4


async def test_the_client_gives_up_after_max_attempts(server, relay):
    async with open_agent_client(url(relay.port), max_reconnect_attempts=2, backoff_initial=0.01) as client:
        async with client.events() as events:
            relay.close()
            attempts = []
            with trio.fail_after(WAIT):
                async for event in events:  # ends when the client gives up
                    attempts.append((event.attempt, event.retry_in is None))
        assert attempts == [(1, False), (2, False), (3, True)]
        assert not client.connected
        with pytest.raises(ConnectionLost, match="after 2 reconnection attempts"):
            await client.chat(AGENT, "anyone?")
        async with client.events() as late:
            assert [e async for e in late] == []


async def test_without_reconnect_a_lost_connection_ends_the_client(server, relay):
    async with open_agent_client(url(relay.port), reconnect=False) as client:
        relay.cut()
        await wait_until(lambda: not client.connected)
        with pytest.raises(ConnectionLost):
            await client.search_memory(AGENT, "x")


# -- turns of a real model: usage, tool activity, cancel, brain_error --------------------------------


async def test_list_agents_gives_every_agent_with_its_description(db_path):
    specs = [AgentSpec("zeta", EchoBrain(), description="The last letter"), AgentSpec("alpha", EchoBrain())]
    async with running_server(db_path, specs) as server, open_agent_client(url(server.port)) as client:
        assert await client.list_agents() == [AgentInfo("zeta", "The last letter"), AgentInfo("alpha", "")]


async def test_a_model_turn_streams_its_tool_activity_and_returns_usage(db_path):
    replies = (
        tool_calls(("call_1", "remember", {"fact": "Alice drinks green tea"})),
        text("Noted", ", Alice.", usage=(30, 5)),
        tool_calls(("call_2", "search_memory", {"query": "tea"})),
        text("Green tea."),
    )
    async with llm_server(db_path, *replies, brain={"tools": ["remember", "search_memory"]}) as server:
        async with open_agent_client(url(server.port), user_id="alice") as client:
            async with client.stream_chat(LLM_AGENT, "I drink green tea") as stream:
                items = [item async for item in stream.items()]
            call, result, *deltas = items
            assert call == ToolCall(LLM_AGENT, "call_1", "remember", {"fact": "Alice drinks green tea"},
                                    stream.request_id)
            assert isinstance(result, ToolResult) and result.call_id == "call_1" and result.error is None
            assert result.result["remembered"] == "Alice drinks green tea"
            assert "".join(deltas) == "Noted, Alice." and all(isinstance(d, str) for d in deltas)
            done = stream.result
            assert (done.response, done.usage, done.cancelled, done.partial) == ("Noted, Alice.", Usage(30, 5), False, None)
            assert done.tools == (call, result) and stream.tools == [call, result]

            seen, chunks = [], []
            again = await client.chat(LLM_AGENT, "What do I drink?", on_chunk=chunks.append, on_tool=seen.append)
            assert [(type(f), f.tool) for f in seen] == [(ToolCall, "search_memory"), (ToolResult, "search_memory")]
            assert any(r["content"] == "Alice drinks green tea" for r in seen[1].result)
            assert again.tools == tuple(seen) and "".join(chunks) == again.response == "Green tea."
            assert again.usage is None  # the fake reported none for this turn
            # plain iteration yields only the text (tools are still collected)
            assert [type(d) for d in deltas] == [str] * len(deltas)


async def test_cancel_stops_a_stalled_stream_and_the_chat_ends_as_cancelled(db_path):
    replies = (text("Once upon", " a time", stall_after=1), text("Short.", usage=(3, 1)))
    async with llm_server(db_path, *replies) as server:
        async with open_agent_client(url(server.port), user_id="alice") as client:
            async with client.stream_chat(LLM_AGENT, "Tell me a long story") as stream:
                assert await stream.__anext__() == "Once upon"
                with trio.fail_after(WAIT):
                    await server.fake.stalled.wait()
                assert await stream.cancel() == "Once upon"
                assert [d async for d in stream] == []  # the iteration ends
            result = stream.result
            assert result.cancelled and result.partial == result.response == "Once upon" and result.seq is None
            assert result.raw["type"] == "cancelled" and result.usage is None
            with trio.fail_after(WAIT):
                await server.fake.disconnected.wait()  # the HTTP stream to the model was closed
            with pytest.raises(AgentError) as nothing:
                await client.cancel(LLM_AGENT)
            assert nothing.value.code == "nothing_to_cancel"
            after = await client.chat(LLM_AGENT, "A short one then")
            assert (after.response, after.usage, after.cancelled) == ("Short.", Usage(3, 1), False)
    assert [(t, c) for t, c in logged(db_path, "alice")] == [
        ("user_message", "Tell me a long story"), ("turn_ended", None),
        ("user_message", "A short one then"), ("agent_message", "Short."),
    ]


async def test_a_chat_cancelled_from_elsewhere_returns_a_cancelled_result(db_path):
    """`chat()` in one task; an untargeted `cancel` in another task, then from the user's other connection."""
    replies = (text("Part", stall_after=1), text("More", stall_after=1))
    async with llm_server(db_path, *replies) as server:
        async with open_agent_client(url(server.port), user_id="bob") as client, \
                open_agent_client(url(server.port), user_id="bob") as phone:
            outcomes = []
            for canceller in (client, phone):
                results = []
                server.fake.stalled = trio.Event()  # set again by the next stalled reply

                async def chat(results=results):
                    results.append(await client.chat(LLM_AGENT, "go on"))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(chat)
                    with trio.fail_after(WAIT):
                        await server.fake.stalled.wait()
                    partial = await canceller.cancel(LLM_AGENT)
                outcomes.append((partial, results[0].cancelled, results[0].response))
            assert outcomes == [("Part", True, "Part"), ("More", True, "More")]


async def test_a_brain_error_raises_agent_error_and_the_client_goes_on(db_path):
    async with llm_server(db_path, error(503, "overloaded"), text("Back.")) as server:
        async with open_agent_client(url(server.port), user_id="c") as client:
            with pytest.raises(AgentError) as failed:
                await client.chat(LLM_AGENT, "Hello?")
            assert failed.value.code == "brain_error" and "overloaded" in failed.value.message
            assert (await client.chat(LLM_AGENT, "Hello again?")).response == "Back."


async def test_a_turn_being_cancelled_when_the_connection_is_lost_is_not_sent_again(db_path, nursery):
    async with llm_server(db_path, text("Once upon", stall_after=1)) as server:
        relay = Relay(server.port)
        await nursery.start(relay.run)
        agent = server.agents[LLM_AGENT]
        async with open_agent_client(url(relay.port), user_id="d", backoff_initial=0.01) as client, \
                client.events() as events:
            async with client.stream_chat(LLM_AGENT, "Tell me a story") as stream:
                assert await stream.__anext__() == "Once upon"
                relay.freeze()  # the cancel does not get through...
                failures = []

                async def cancel():
                    with pytest.raises(ConnectionLost, match="may or may not have been cancelled"):
                        await stream.cancel()
                    failures.append(True)

                async with trio.open_nursery() as inner:
                    inner.start_soon(cancel)
                    await wait_until(lambda: client._cancels)  # sent (into the frozen relay)
                    relay.cut()  # ...and the connection is lost
                assert failures == [True]
                # the chat ends as cancelled with what was streamed; it is not sent again
                with trio.fail_after(WAIT):
                    result = await stream.wait()
            assert result.cancelled and result.partial == "Once upon" and result.seq is None
            await next_event(events, Reconnected)
            await client.ping()  # a chat sent again on the new connection would be queued before this answer
            assert agent.in_flight == 1  # only the first turn, still stalled on the server
            assert await client.cancel(LLM_AGENT) == "Once upon"  # a cancel on the new connection stops it
        with trio.fail_after(WAIT):
            await server.fake.disconnected.wait()
        assert len(server.fake.requests) == 1
