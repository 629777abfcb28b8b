"""Hardening of real agents (the `openai` brain, tools, cancel, the turn log): secrets stay out of errors and
logs, hostile or broken providers and tools end a turn cleanly, and every accepted cancel is answered."""
from __future__ import annotations

import json
import logging
import sqlite3
import ssl
import sys

import pytest
import trio

from agentcast.actors import (AgentSpec, ConfigError, FailedOutput, OpenAIBrain, OpenAIBrainSettings, ToolCallItem, ToolResultItem, TurnCancelledOutput, TurnDoneOutput,
                    TurnResponseOutput, agent_specs)
from agentcast.actors._brain import BrainError
from agentcast.actors._tools import CurrentTimeArgs, Tool, ToolContext, ToolError, Toolbox
from agentcast.transport.cli import setup_logging
from support import llm_server, running_server, scaled
from support.actors import Recorder, chat as actor_chat, logged, running
from support.fake_openai import FakeOpenAI, Reply, chunk, error, in_chunk, sse_event, sse_head, text, tool_calls
from support.llm import AGENT, brain_for, chat, items_of, turn_for, user

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)


@pytest.fixture
async def fake(nursery):
    return await FakeOpenAI().start(nursery)


# -- provider errors --------------------------------------------------------------------------------------


async def test_an_in_stream_provider_error_is_bounded(fake):
    fake.script(Reply(chunks=[{"error": {"message": "x" * 100_000}}]))
    brain = brain_for(fake, retries=0)
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    # cut like the reason of an HTTP error (it goes into the error frame and the log)
    assert len(str(caught.value)) < 1000, len(str(caught.value))




# -- tool call arguments: size and depth --------------------------------------------------------------------


@pytest.mark.parametrize("depth", [33, 500, 5000])  # 5000 is past what json.loads can parse at all
async def test_too_deeply_nested_tool_arguments_are_a_tool_error_the_model_sees(fake, depth):
    deep = "[" * depth + "]" * depth
    fake.script(tool_calls(("c1", "current_time", deep)), text("Sorry."))
    brain = brain_for(fake, tools=["current_time"])
    items = await items_of(brain, turn_for(brain))
    assert items[0] == ToolCallItem("c1", "current_time", deep)  # the raw text: shown and logged as it came
    assert items[1] == ToolResultItem("c1", "current_time", None, "the arguments are nested more than 32 levels deep")
    assert items[-1] == "Sorry."
    assert "nested more than 32" in fake.requests[1]["messages"][-1]["content"]


async def test_tool_arguments_nested_up_to_the_limit_are_parsed(fake):
    arguments = json.loads('{"a":' * 31 + "[1]" + "}" * 31)  # 32 levels
    fake.script(tool_calls(("c1", "current_time", arguments)), text("Ok."))
    brain = brain_for(fake, tools=["current_time"])
    items = await items_of(brain, turn_for(brain))
    assert items[0] == ToolCallItem("c1", "current_time", arguments)
    assert "nested" not in (items[1].error or "")  # current_time itself refuses the unknown field


async def test_oversized_tool_arguments_are_cut_and_a_tool_error(fake):
    huge = json.dumps({"city": "x" * 100_000})
    fake.script(tool_calls(("c1", "current_time", huge), pieces=50), text("Too long, sorry."))
    brain = brain_for(fake, tools=["current_time"])
    items = await items_of(brain, turn_for(brain))
    assert len(items[0].arguments) == 65_536 and huge.startswith(items[0].arguments)
    assert items[1].error == "the arguments are longer than 65536 characters"
    assert items[-1] == "Too long, sorry."


async def test_deeply_nested_tool_arguments_end_the_turn_normally_for_the_client(db_path):
    nested = {"x": json.loads("[" * 500 + "]" * 500)}
    replies = (tool_calls(("c1", "current_time", nested)), text("Done."))
    async with llm_server(db_path, *replies, brain={"tools": ["current_time"]}) as server:
        async with user(server) as alice:
            frames = await alice.request(chat("go", "r1"), "agent_done")
    kinds = [f["type"] for f in frames if f["type"] != "response_chunk"]
    assert kinds == ["agent_thinking", "tool_call", "tool_result", "response", "agent_done"], frames
    assert "nested more than 32" in frames[2]["error"]


class DeepArgumentsBrain:
    """A brain (not the openai one) whose tool call's arguments nest deeper than a frame can be encoded."""

    recall = 0

    async def reply(self, turn):
        yield ToolCallItem("c1", "deep", {"x": json.loads("[" * 500 + "]" * 500)})
        yield ToolResultItem("c1", "deep", "ok")
        yield "Done."


async def test_a_frame_that_cannot_be_encoded_is_an_error_frame_and_the_connection_goes_on(db_path):
    async with running_server(db_path, [AgentSpec(AGENT, DeepArgumentsBrain())]) as server:
        async with user(server) as alice:
            frames = await alice.request(chat("go", "r1"), "agent_done")
            kinds = [f["type"] for f in frames if f["type"] != "response_chunk"]
            assert kinds == ["agent_thinking", "error", "tool_result", "response", "agent_done"], frames
            assert frames[1]["code"] == "internal_error" and frames[1]["request_id"] == "r1"
            again = await alice.request(chat("again", "r2"), "agent_done")
            assert again[-2]["type"] == "response"


# -- every accepted cancel is answered ------------------------------------------------------------------


class ShieldedCleanupBrain:
    """Streams a delta, then does uncancellable cleanup (as httpcore does when it closes a connection:
    `AsyncShieldCancellation`) and returns. `in_cleanup` is set while the cleanup waits on `release`."""

    recall = 0

    def __init__(self):
        self.in_cleanup = trio.Event()
        self.release = trio.Event()

    async def reply(self, turn):
        yield "partial"
        with trio.CancelScope(shield=True):
            self.in_cleanup.set()
            await self.release.wait()


async def test_an_accepted_cancel_is_always_answered(tmp_path):
    brain = ShieldedCleanupBrain()
    async with running(tmp_path, AgentSpec("a", brain)) as w:
        agent, asker, phone = w.agents["a"], Recorder("asker"), Recorder("phone")
        agent.submit(actor_chat("u", "hi", asker, "r1"))
        with trio.fail_after(scaled(5)):
            await brain.in_cleanup.wait()
        agent.cancel("u", None, phone)  # accepted: no NothingToCancel
        brain.release.set()
        await asker.wait_for(TurnDoneOutput)
        await agent.wait_idle()
        # the phone's cancel was accepted, so the turn ends cancelled (with all it said) for everyone
        assert [type(o) for o in phone.outputs] == [TurnCancelledOutput, TurnDoneOutput], phone.outputs
        assert asker.of(TurnCancelledOutput)[0].partial == "partial" and not asker.of(TurnResponseOutput)


async def test_a_canceller_subscribed_after_the_turn_began_hears_its_end(db_path):
    async with llm_server(db_path, text("Slow", stall_after=1)) as server:
        async with user(server) as alice:
            await alice.send(chat("Go", "mine"))
            await alice.recv_until("response_chunk")
            async with user(server, subscribe=True) as new_tab:  # e.g. a tab opened during the answer
                await new_tab.send({"type": "cancel", "agent_id": AGENT})
                assert [f["type"] for f in await alice.recv_until("agent_done")] == ["cancelled", "agent_done"]
                # the turn's recipients were fixed when it began: the new tab hears its end as a canceller
                frames = await new_tab.recv_until("agent_done", timeout=2)
                assert [f["type"] for f in frames] == ["cancelled", "agent_done"]


# -- the turn log ----------------------------------------------------------------------------------------


class ToolFirstBrain:
    recall = 0

    async def reply(self, turn):
        yield ToolCallItem("c1", "current_time", {})
        yield "answer"


async def test_a_failed_first_append_never_leaves_turn_events_without_their_message(tmp_path):
    async with running(tmp_path, AgentSpec("a", ToolFirstBrain())) as w:
        writer = w.journal._writer
        real_append, calls = writer.append, []

        def flaky_append(*args, **kwargs):  # the database is locked once (e.g. another writer), then fine
            calls.append(1)
            if len(calls) == 1:
                raise sqlite3.OperationalError("database is locked")
            return real_append(*args, **kwargs)

        writer.append = flaky_append
        out = Recorder()
        w.agents["a"].submit(actor_chat("u", "hello", out, "r1"))
        await out.wait_for(TurnDoneOutput)
        await w.agents["a"].wait_idle()
    types = [r.event.TYPE for r in logged(w.path)]
    # "nothing of a turn is ever logged before the message that caused it" (_TurnLog's docstring)
    assert not types or types[0] == "user_message", types


# -- the event loop --------------------------------------------------------------------------------------


async def test_starting_turns_loads_no_tls_settings_and_imports_nothing_on_the_event_loop(db_path, monkeypatch):
    # A turn's HTTP client is made on the event loop: loading a CA bundle (or importing httpcore) there would
    # stall every connection and agent of the server, so the TLS settings are made once, beforehand.
    loads: list[str] = []
    original_load = ssl.SSLContext.load_verify_locations

    def counted_load(self, *args, **kwargs):
        loads.append("load_verify_locations")
        return original_load(self, *args, **kwargs)

    async with llm_server(db_path, text("One."), text("Two."), text("Three.")) as server:
        async with user(server) as alice:
            await alice.request(chat("m0", "r0"), "agent_done")  # whatever a first turn imports, once
            monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted_load)
            modules = set(sys.modules)
            for n in (1, 2):
                await alice.request(chat(f"m{n}", f"r{n}"), "agent_done")
            imported = sorted(set(sys.modules) - modules)
    assert loads == [] and imported == [], (loads, imported)


# -- configuration ---------------------------------------------------------------------------------------


def test_a_custom_tool_module_that_fails_at_import_is_a_config_error(tmp_path, monkeypatch):
    (tmp_path / "broken_tools_module.py").write_text("raise RuntimeError('missing dependency')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="broken_tools_module"):
        agent_specs({"a": {"brain": {"kind": "openai", "model": "m", "tools": ["broken_tools_module:weather"]}}})




# -- secrets: the API key, credentials in base_url ---------------------------------------------------------


async def test_base_url_credentials_never_reach_the_error_text():
    with trio.socket.socket() as s:  # a port nobody listens on
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    brain = OpenAIBrain(OpenAIBrainSettings(model="m", base_url=f"http://proxyuser:s3cret-pass@127.0.0.1:{port}/v1", retries=0))
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert "s3cret-pass" not in str(caught.value), str(caught.value)  # this text is the error frame's message
    assert "s3cret-pass" not in repr(brain)


async def test_base_url_credentials_and_query_are_used_but_never_shown(fake):
    fake.script(error(404, "no such model"))
    base_url = fake.base_url.replace("http://", "http://proxyuser:s3cret-pass@") + "?api-version=2024&key=k3y-in-query"
    brain = OpenAIBrain(OpenAIBrainSettings(model="m", base_url=base_url, retries=0))
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert fake.targets == ["/v1/chat/completions?api-version=2024&key=k3y-in-query"]
    assert fake.headers[0]["authorization"].startswith("Basic ")  # the URL's credentials, as basic auth
    assert f"served at http://127.0.0.1:{fake.port}/v1?" in str(caught.value), str(caught.value)
    assert "s3cret" not in str(caught.value) + repr(brain) and "k3y" not in str(caught.value) + repr(brain)


def test_the_server_keeps_httpx_from_logging_request_urls():
    setup_logging("info")
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("httpcore").getEffectiveLevel() >= logging.WARNING


async def test_an_api_key_with_a_trailing_newline_is_used_without_it(db_path, monkeypatch):
    monkeypatch.setenv("AGENTCAST_TEST_API_KEY", "sk-test-SECRET-123\n")  # e.g. a Kubernetes secret made from a file
    async with llm_server(db_path, text("Hi."), brain={"api_key_env": "AGENTCAST_TEST_API_KEY"}) as server:
        async with user(server) as alice:
            frames = await alice.request(chat("hi", "r1"), "agent_done")
        assert server.fake.headers[0]["authorization"] == "Bearer sk-test-SECRET-123"
    assert frames[-2]["message"] == "Hi."


@pytest.mark.parametrize("bad_key", ["sk-test-SECRET-123\nX-Injected: 1", "sk-test-SECRET-123\x1b", "sk-test-SECRET-123 é"])
async def test_an_unusable_api_key_is_a_clear_error_that_never_quotes_it(db_path, monkeypatch, caplog, bad_key):
    monkeypatch.setenv("AGENTCAST_TEST_API_KEY", bad_key)
    async with llm_server(db_path, text("never sent"), brain={"api_key_env": "AGENTCAST_TEST_API_KEY"}) as server:
        async with user(server) as alice:
            frames = await alice.request(chat("hi", "r1"), "agent_done")
        assert server.fake.requests == []
    assert frames[-2]["code"] == "brain_error" and "AGENTCAST_TEST_API_KEY" in frames[-2]["message"]
    assert "sk-test-SECRET-123" not in json.dumps(frames)
    assert "sk-test-SECRET-123" not in caplog.text


# -- bounds on a whole turn: time, answer length, tool calls ----------------------------------------------


async def test_a_provider_that_keeps_the_stream_alive_without_answering_hits_turn_timeout(fake, autojump_clock):
    fake.script(Reply(chunks=[chunk("Thinking")], keepalive=5.0))  # an SSE comment every 5 s, forever
    brain = brain_for(fake, timeout=10, turn_timeout=120)
    got, started = [], trio.current_time()
    with pytest.raises(BrainError, match=r"took longer than 120 s to answer \(turn_timeout\)"):
        async for item in brain.reply(turn_for(brain)):
            got.append(item)
    assert got == ["Thinking"] and trio.current_time() - started == pytest.approx(120)
    with trio.fail_after(30):  # (virtual time) the fake notices when a keepalive finds the connection closed
        await fake.disconnected.wait()  # the stream was closed: the provider stops generating


async def test_turn_timeout_ends_the_turn_as_a_brain_error_with_its_partial_logged(fake, tmp_path, autojump_clock):
    fake.script(Reply(chunks=[chunk("Thinking")], keepalive=5.0))
    async with running(tmp_path, AgentSpec("a", brain_for(fake, turn_timeout=60))) as w:
        out = Recorder()
        w.agents["a"].submit(actor_chat("u", "go", out, "r1"))
        await out.wait_for(TurnDoneOutput, timeout=None)  # the journal's threads let an autojump clock race a fail_after
    (failed,) = out.of(FailedOutput)
    assert failed.code == "brain_error" and "turn_timeout" in failed.message
    ended = logged(w.path)[-1].event
    assert (ended.TYPE, ended.outcome, ended.partial) == ("turn_ended", "failed", "Thinking")
    assert "turn_timeout" in ended.reason


async def test_an_answer_longer_than_max_answer_chars_is_cut_and_a_brain_error(fake):
    fake.script(text("x" * 60, "y" * 60, "never sent"))
    brain = brain_for(fake, max_answer_chars=100)
    got = []
    with pytest.raises(BrainError, match=r"went past 100 characters \(max_answer_chars\)"):
        async for item in brain.reply(turn_for(brain)):
            got.append(item)
    assert got == ["x" * 60, "y" * 40]


async def test_more_tool_calls_in_one_round_than_max_tool_calls_is_a_brain_error(fake):
    fake.script(tool_calls(*((f"c{n}", "current_time", {}) for n in range(5))))
    brain = brain_for(fake, tools=["current_time"], max_tool_calls=4)
    with pytest.raises(BrainError, match=r"more than 4 tools at once \(max_tool_calls\)"):
        await items_of(brain, turn_for(brain))


@pytest.mark.parametrize("setting, value", [("turn_timeout", 0), ("turn_timeout", True), ("max_answer_chars", 0),
                                            ("max_tool_calls", 0), ("max_tool_calls", 129)])
def test_bounds_of_a_turn_are_checked_in_config(setting, value):
    with pytest.raises(ConfigError, match=setting):
        agent_specs({"a": {"brain": {"kind": "openai", "model": "m", setting: value}}})


# -- text the model writes alongside tool calls -------------------------------------------------------------


async def test_text_streamed_with_tool_calls_goes_back_to_the_model_and_joins_the_answer(fake):
    calling = tool_calls(("c1", "current_time", {}))
    fake.script(Reply(chunks=[chunk("Let me check"), chunk(" the time."), *calling.chunks]), text("It is 04:30."))
    brain = brain_for(fake, tools=["current_time"])
    items = await items_of(brain, turn_for(brain))
    text_items = [i for i in items if isinstance(i, str)]
    assert "".join(text_items) == "Let me check the time.\n\nIt is 04:30."
    assistant = fake.requests[1]["messages"][-2]
    assert assistant["role"] == "assistant" and assistant["content"] == "Let me check the time."
    assert assistant["tool_calls"][0]["id"] == "c1"


async def test_a_tool_round_without_text_sends_no_content_and_adds_no_separator(fake):
    fake.script(tool_calls(("c1", "current_time", {})), text("It is 04:30."))
    brain = brain_for(fake, tools=["current_time"])
    items = await items_of(brain, turn_for(brain))
    assert [i for i in items if isinstance(i, str)] == ["It is 04:30."]
    assert fake.requests[1]["messages"][-2]["content"] is None


# -- every kind of HTTP failure is a clear brain_error; those before the request was sent are retried -------


async def test_a_request_the_server_resets_before_reading_is_retried_as_not_sent(fake):
    fake.script(text("Made it."))
    fake.reset_connections = 1  # the first connection is reset before the request is read
    brain = brain_for(fake, retries=1, retry_backoff=0)  # (no autojump clock: it could jump while bytes are in flight)
    # a request bigger than the socket buffers: the reset comes while it is being written
    assert await items_of(brain, turn_for(brain, "x" * 16_000_000)) == ["Made it."]
    assert len(fake.requests) == 1


async def test_a_connection_closed_before_any_answer_is_retried(fake, autojump_clock):
    fake.script(Reply(raw=[]), text("Made it."))  # the request read, then the connection closed: no answer
    brain = brain_for(fake, retries=1)
    assert await items_of(brain, turn_for(brain)) == ["Made it."]
    assert len(fake.requests) == 2


RESET = Reply(raw=[sse_head() + in_chunk(sse_event(chunk("Hel")))], end="reset")
BROKEN_GZIP = Reply(raw=[sse_head("Content-Encoding: gzip") + in_chunk(b"this is not gzip") + b"0\r\n\r\n"])
BAD_CHUNK_SIZE = Reply(raw=[sse_head() + b"zz\r\n" + sse_event(chunk("Hel"))])
ENDLESS_HEAD = Reply(raw=[b"HTTP/1.1 200 OK\r\n" + b"X-Padding: " + b"p" * 70_000 + b"\r\n"], end="stall")
NOT_HTTP = Reply(raw=[b"SSH-2.0-OpenSSH_9.6\r\n\r\n"])


@pytest.mark.parametrize("replies, says", [
    ([RESET], "the model server closed the connection in the middle of the answer"),
    ([BROKEN_GZIP], "the model server's answer could not be decoded: broken content encoding"),
    ([BAD_CHUNK_SIZE] * 2, "the model server closed the connection: a bad chunk size: b'zz' (after 2 tries)"),
    ([ENDLESS_HEAD] * 2, "the model server closed the connection: a response head longer than 65536 bytes (after 2 tries)"),
    ([NOT_HTTP] * 2, "the model server closed the connection: not an HTTP/1.1 status line"),
], ids=["reset mid-body", "broken gzip", "bad chunk size", "endless head", "not http"])
async def test_every_http_failure_is_a_clear_brain_error(fake, autojump_clock, replies, says):
    fake.script(*replies)
    brain = brain_for(fake, retries=1)
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert says in str(caught.value)


async def test_a_request_the_server_never_takes_is_a_clear_brain_error(fake):
    fake.reset_connections = 2
    brain = brain_for(fake, retries=1, retry_backoff=0, base_url=fake.base_url.replace("http://", "http://user:pw@"))
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain, "x" * 16_000_000))
    assert "could not send the request to the model server at http://127.0.0.1" in str(caught.value)
    assert "(after 2 tries)" in str(caught.value) and "pw@" not in str(caught.value)


async def test_a_tool_error_text_is_bounded():
    def loud(ctx, args):
        raise ToolError("e" * 100_000)

    toolbox = Toolbox([Tool("loud", "fails at length", CurrentTimeArgs, loud)], ToolContext("a", "u", None))
    outcome = await toolbox.run("loud", {})
    assert len(outcome.error) <= 2001 and outcome.error.startswith("eee")
