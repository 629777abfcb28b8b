"""The `openai` brain against the fake OpenAI-compatible server (support/fake_openai.py): the prompt, streaming,
tool calls, usage, every failure, retries (autojump clock) and cancellation closing the HTTP stream."""
from __future__ import annotations

import json

import pytest
import trio

from agentcast.actors import BrainError, OpenAIBrain, OpenAIBrainSettings, ToolCallItem, ToolResultItem, UsageItem
from agentcast.actors._http11 import IDLE_CONNECTION_SECONDS
from agentcast.actors._openai import END_OF_BODY_WAIT
from agentcast.store import Hit, Memory, Message
from support import scaled
from support.fake_openai import FakeOpenAI, Reply, chunk, error, text, tool_calls, usage_chunk
from support.llm import FakeMemory, brain_for, items_of, turn_for


@pytest.fixture
async def fake(nursery):
    return await FakeOpenAI().start(nursery)


# -- the happy path --------------------------------------------------------------------------


async def test_tokens_stream_as_deltas_and_usage_comes_last(fake):
    fake.script(text("Hel", "lo", " world", usage=(12, 3)))
    items = await items_of(brain_for(fake), turn_for(brain_for(fake)))
    assert items == ["Hel", "lo", " world", UsageItem(12, 3)]
    request = fake.requests[0]
    assert request["model"] == "fake-model" and request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert "tools" not in request and "temperature" not in request


async def test_no_usage_block_means_no_usage_item(fake):
    fake.script(text("just text"))
    assert await items_of(brain_for(fake), turn_for(brain_for(fake))) == ["just text"]


async def test_the_prompt_is_system_then_recalled_then_window_then_the_message(fake):
    fake.script(text("ok"))
    brain = brain_for(fake, system_prompt="Be brief.", memory_window=2, recall=2, temperature=0.2, max_tokens=50)
    window = (
        Message(1, "user", "old question", "t1"),
        Message(2, "assistant", "old answer", "t2"),
        Message(3, "fact", "likes green tea", "t3"),
        Message(4, "user", "", "t4"),  # erased by a long-term clear: never sent
    )
    memory = Memory("a", "u", short_term=window, long_term_count=9, last_seq=9)
    recalled = (Hit(3, "fact", "likes green tea", "t3", 2.0), Hit(0, "user", "my cat is Tom", "t0", 1.0))
    await items_of(brain, turn_for(brain, "What do I like?", memory, recalled))
    request = fake.requests[0]
    assert (request["temperature"], request["max_tokens"]) == (0.2, 50)
    messages = request["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    # recalled memory, labelled, without what the window already holds
    assert messages[1]["role"] == "system" and "Recalled from long-term memory" in messages[1]["content"]
    assert "my cat is Tom" in messages[1]["content"] and "green tea" not in messages[1]["content"]
    # the last memory_window (2) messages of the window: the fact and the erased one (skipped)
    assert messages[2] == {"role": "system", "content": "A fact you remembered about the user: likes green tea"}
    assert messages[3:] == [{"role": "user", "content": "What do I like?"}]


async def test_the_api_key_comes_from_the_environment_and_never_shows(fake, monkeypatch):
    monkeypatch.setenv("FAKE_OPENAI_KEY", "sk-secret-123")
    fake.script(text("ok"), error(401, "Incorrect API key provided: sk-secret-123"))
    brain = brain_for(fake, api_key_env="FAKE_OPENAI_KEY")
    await items_of(brain, turn_for(brain))
    assert fake.headers[0]["authorization"] == "Bearer sk-secret-123"
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert "sk-secret-123" not in str(caught.value) and "HTTP 401" in str(caught.value)
    assert "***" in str(caught.value)
    assert "sk-secret" not in repr(brain) and "sk-secret" not in repr(vars(brain))


async def test_an_unset_key_variable_is_a_clear_brain_error_and_no_request(fake, monkeypatch):
    monkeypatch.delenv("FAKE_OPENAI_KEY", raising=False)
    brain = brain_for(fake, api_key_env="FAKE_OPENAI_KEY")
    with pytest.raises(BrainError, match="FAKE_OPENAI_KEY"):
        await items_of(brain, turn_for(brain))
    assert fake.requests == []


# -- tools -----------------------------------------------------------------------------------


async def test_several_tool_calls_in_one_round_run_in_order_and_the_model_continues(fake):
    fake.script(
        tool_calls(("call_a", "remember", {"fact": "likes green tea"}), ("call_b", "current_time", {}), usage=(20, 5)),
        text("Noted!", usage=(40, 2)),
    )
    brain = brain_for(fake, tools=["remember", "current_time"])
    memory = FakeMemory()
    items = await items_of(brain, turn_for(brain, memory_access=memory))
    assert [type(i).__name__ for i in items] == ["ToolCallItem", "ToolResultItem", "ToolCallItem", "ToolResultItem", "str", "UsageItem"]
    assert items[0] == ToolCallItem("call_a", "remember", {"fact": "likes green tea"})
    assert items[1] == ToolResultItem("call_a", "remember", {"remembered": "likes green tea", "seq": 1})
    assert items[2] == ToolCallItem("call_b", "current_time", {})
    assert items[3].error is None and items[3].result["utc"].endswith("Z")
    assert items[4:] == ["Noted!", UsageItem(60, 7)]  # usage summed over both requests
    assert memory.facts == ["likes green tea"]
    first, second = fake.requests
    assert [t["function"]["name"] for t in first["tools"]] == ["remember", "current_time"]
    assert first["tools"][0]["function"]["parameters"]["required"] == ["fact"]
    # the second request carries the calls and their results
    assistant, result_a, result_b = second["messages"][-3:]
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_a", "call_b"]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"fact": "likes green tea"}
    assert result_a == {"role": "tool", "tool_call_id": "call_a",
                        "content": json.dumps({"remembered": "likes green tea", "seq": 1})}
    assert result_b["tool_call_id"] == "call_b"


async def test_bad_tool_calls_become_tool_errors_the_model_sees(fake):
    fake.script(
        tool_calls(("c1", "search_memory", "{not json"), ("c2", "no_such_tool", {}), ("c3", "search_memory", {"q": 1})),
        text("Sorry."),
    )
    brain = brain_for(fake, tools=["search_memory"])
    items = await items_of(brain, turn_for(brain))
    results = [i for i in items if isinstance(i, ToolResultItem)]
    assert [r.call_id for r in results] == ["c1", "c2", "c3"]
    assert results[0].error == "the arguments are not valid JSON"
    assert items[0] == ToolCallItem("c1", "search_memory", "{not json")  # the raw text, as the model sent it
    assert "no tool 'no_such_tool'" in results[1].error
    assert "invalid arguments for search_memory" in results[2].error
    sent = [m for m in fake.requests[1]["messages"] if m["role"] == "tool"]
    assert [json.loads(m["content"]) for m in sent] == [{"error": r.error} for r in results]
    assert items[-1] == "Sorry."


async def test_tool_rounds_are_bounded_and_the_last_round_offers_no_tools(fake):
    fake.script(
        tool_calls(("c1", "current_time", {})),
        tool_calls(("c2", "current_time", {})),
        text("It is late."),
    )
    brain = brain_for(fake, tools=["current_time"], max_tool_rounds=2)
    items = await items_of(brain, turn_for(brain))
    assert items[-1] == "It is late."
    assert ["tools" in r for r in fake.requests] == [True, True, False]


async def test_a_model_that_calls_tools_past_the_bound_fails_clearly(fake):
    fake.script(tool_calls(("c1", "current_time", {})), tool_calls(("c2", "current_time", {})))
    brain = brain_for(fake, tools=["current_time"], max_tool_rounds=1)
    with pytest.raises(BrainError, match="kept calling tools after 1 round"):
        await items_of(brain, turn_for(brain))


# -- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (error(401, "Invalid key"), "refused the API key (HTTP 401): Invalid key"),
        (error(404, "The model `nope` does not exist"), "not found: is the model 'fake-model' served at"),
        (error(400, "context too long"), "refused the request (HTTP 400): context too long"),
        (Reply(chunks=["{not json"]), "malformed stream from the model server: not JSON"),
        (Reply(chunks=[chunk("partial")], done=False), "ended before the answer was complete"),
        (Reply(chunks=[{"error": {"message": "overloaded mid-way"}}]), "reported an error: overloaded mid-way"),
        (Reply(chunks=[{"choices": "nope"}]), "'choices' is not a list"),
        (Reply(body='{"choices": []}', content_type="application/json"), "malformed stream"),
        (text(), "the model gave an empty answer"),
        (Reply(chunks=[chunk("Hel"), chunk("lo")], cut_after=1), "closed the connection in the middle of the answer"),
    ],
)
async def test_failures_are_brain_errors_with_the_providers_reason(fake, reply, says):
    fake.script(reply)
    brain = brain_for(fake, retries=0)
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert says in str(caught.value)
    assert len(fake.requests) == 1


async def test_connection_refused_is_retried_then_a_clear_error(autojump_clock):
    with trio.socket.socket() as probe:  # a port nobody listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    brain = OpenAIBrain(OpenAIBrainSettings(model="m", base_url=f"http://127.0.0.1:{port}/v1", retries=2, retry_backoff=1.0))
    started = trio.current_time()
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert "could not connect to the model server at http://127.0.0.1" in str(caught.value)
    assert "(after 3 tries)" in str(caught.value)
    assert trio.current_time() - started == pytest.approx(3.0)  # 1 s, then 2 s of backoff


@pytest.mark.parametrize("status", [429, 500, 502, 503])
async def test_429_and_5xx_before_the_first_token_are_retried_with_backoff(fake, autojump_clock, status):
    fake.script(error(status, "slow down"), error(status, "slow down"), text("finally"))
    brain = brain_for(fake, retries=2, retry_backoff=0.5)
    started = trio.current_time()
    assert await items_of(brain, turn_for(brain)) == ["finally"]
    assert len(fake.requests) == 3
    assert trio.current_time() - started == pytest.approx(1.5)  # 0.5 s, then 1 s


async def test_retry_after_is_honoured_and_retries_are_bounded(fake, autojump_clock):
    fake.script(error(429, "wait", retry_after="7"), error(429, "still no", retry_after="7"))
    brain = brain_for(fake, retries=1)
    started = trio.current_time()
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert str(caught.value) == "the model server is rate limiting us (HTTP 429): still no (after 2 tries)"
    assert trio.current_time() - started == pytest.approx(7.0)
    assert len(fake.requests) == 2


async def test_nothing_is_retried_once_text_has_streamed(fake):
    fake.script(Reply(chunks=[chunk("Hel"), chunk("lo")], cut_after=1), text("should not be asked for"))
    brain = brain_for(fake, retries=3)
    got = []
    with pytest.raises(BrainError):
        async for item in brain.reply(turn_for(brain)):
            got.append(item)
    assert got == ["Hel"] and len(fake.requests) == 1


async def test_a_stalled_stream_times_out_and_the_connection_is_closed(fake, autojump_clock):
    fake.script(text("Hel", "lo", stall_after=1))
    brain = brain_for(fake, timeout=5)
    got = []
    started = trio.current_time()
    with pytest.raises(BrainError, match=r"sent nothing for 5 s \(timeout\)"):
        async for item in brain.reply(turn_for(brain)):
            got.append(item)
    assert got == ["Hel"] and trio.current_time() - started == pytest.approx(5.0)
    with trio.fail_after(1):
        await fake.disconnected.wait()


async def test_cancelling_the_turn_closes_the_http_stream_at_once(fake):
    fake.script(text("Hel", "lo", stall_after=1))
    brain = brain_for(fake)
    got = []
    with trio.CancelScope() as scope:
        async for item in brain.reply(turn_for(brain)):
            got.append(item)
            await fake.stalled.wait()
            scope.cancel()
    assert got == ["Hel"] and scope.cancelled_caught
    with trio.fail_after(scaled(1)):
        await fake.disconnected.wait()


# -- connections -----------------------------------------------------------------------------


async def test_turns_of_a_brain_share_one_connection_when_each_answer_is_read_to_its_end(fake):
    fake.script(text("one"), text("two"), text("three", usage=(1, 1)))
    brain = brain_for(fake)
    answers = [await items_of(brain, turn_for(brain, f"turn {n}")) for n in range(3)]
    assert answers == [["one"], ["two"], ["three", UsageItem(1, 1)]]
    assert fake.connection_of == [0, 0, 0]


async def test_turns_running_at_once_each_have_a_connection_of_their_own(fake):
    fake.script(*(text("a", "b") for _ in range(6)))
    brain = brain_for(fake)
    answers = []

    async def one(n: int) -> None:
        answers.append(await items_of(brain, turn_for(brain, f"turn {n}")))

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(one, n)
    assert answers == [["a", "b"]] * 3 and sorted(fake.connection_of) == [0, 1, 2]
    async with trio.open_nursery() as nursery:  # then they serve the next turns again
        for n in range(3):
            nursery.start_soon(one, n)
    assert sorted(fake.connection_of[3:]) == [0, 1, 2]


async def test_a_connection_idle_past_the_keep_alive_is_not_used_again(fake, autojump_clock):
    fake.script(text("one"), text("two"), text("three"))
    brain = brain_for(fake)
    await items_of(brain, turn_for(brain))
    await trio.sleep(IDLE_CONNECTION_SECONDS / 2)
    await items_of(brain, turn_for(brain))
    await trio.sleep(IDLE_CONNECTION_SECONDS + 0.1)
    await items_of(brain, turn_for(brain))
    assert fake.connection_of == [0, 0, 1]


async def test_a_connection_idle_past_the_keep_alive_is_closed_without_waiting_for_another_turn(fake, autojump_clock):
    """A burst of turns leaves its connections idle: each is closed once it has been idle past the keep-alive,
    not held (a descriptor each) until the agent's next turn."""
    fake.script(text("one"), text("two"))
    brain = brain_for(fake)
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(items_of, brain, turn_for(brain))
    assert sorted(fake.connection_of) == [0, 1] and fake.closed_by_client == 0
    await trio.sleep(IDLE_CONNECTION_SECONDS * 2)
    await trio.testing.wait_all_tasks_blocked()
    assert fake.closed_by_client == 2


async def test_a_cancelled_turn_does_not_leave_its_connection_to_the_next(fake):
    fake.script(text("Hel", "lo", stall_after=1), text("again"))
    brain = brain_for(fake)
    with trio.CancelScope() as scope:
        async for _ in brain.reply(turn_for(brain)):
            await fake.stalled.wait()
            scope.cancel()
    with trio.fail_after(scaled(1)):
        await fake.disconnected.wait()
    assert await items_of(brain, turn_for(brain)) == ["again"]
    assert fake.connection_of == [0, 1]


async def test_a_body_that_goes_on_after_done_ends_the_turn_within_the_wait_and_is_closed(fake, autojump_clock):
    fake.script(text("Hel", "lo", linger_after_done=True), text("next"))
    brain = brain_for(fake)
    started = trio.current_time()
    assert await items_of(brain, turn_for(brain)) == ["Hel", "lo"]
    assert trio.current_time() - started == pytest.approx(END_OF_BODY_WAIT)
    with trio.fail_after(1):
        await fake.disconnected.wait()
    assert await items_of(brain, turn_for(brain)) == ["next"]
    assert fake.connection_of == [0, 1]


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"model": ""}, "model must be the model's name"),
        ({"model": "m", "base_url": "localhost:11434"}, "base_url must be an http:// or https:// URL"),
        ({"model": "m", "api_key_env": "sk-abc123"}, "looks like an API key"),
        ({"model": "m", "temperature": 3}, "temperature must be a number from 0 to 2"),
        ({"model": "m", "max_tokens": 0}, "max_tokens must be an integer >= 1"),
        ({"model": "m", "timeout": 0}, "timeout must be a number of seconds above 0"),
        ({"model": "m", "memory_window": -1}, "memory_window must be an integer from 0 to 1000"),
        ({"model": "m", "recall": True}, "recall must be an integer from 0 to 50"),
        ({"model": "m", "tools": ["nope"]}, "unknown tool 'nope'"),
        ({"model": "m", "tools": "remember"}, "tools must be a list of tool names"),
        ({"model": "m", "tools": ["remember", "remember"]}, "listed twice"),
        ({"model": "m", "tools": ["json:nope"]}, "cannot be imported"),
        ({"model": "m", "tools": ["json:dumps"]}, "is not a Tool"),
        ({"model": "m", "max_tool_rounds": 100}, "max_tool_rounds must be an integer from 0 to 32"),
    ],
)
def test_bad_brain_settings_are_refused_saying_which_and_why(options, says):
    with pytest.raises(ValueError) as caught:
        OpenAIBrain(OpenAIBrainSettings(**options))
    assert says in str(caught.value)


def test_an_unusual_usage_chunk_is_ignored_not_fatal():
    # usage with non-integer counts (some servers) is ignored rather than failing the turn
    brain = OpenAIBrain(OpenAIBrainSettings(model="m"))
    from agentcast.actors._openai import _Round

    result = _Round()
    assert brain._chunk(json.dumps(usage_chunk(1, 2) | {"usage": {"prompt_tokens": "x"}}), result, None) == []
    assert result.usage is None


def test_a_chunk_json_takes_but_orjson_refuses_is_read_as_json_reads_it():
    # orjson parses the usual chunk; NaN, which it refuses, is read by json as before
    brain = OpenAIBrain(OpenAIBrainSettings(model="m"))
    from agentcast.actors._openai import _Round

    result = _Round()
    assert brain._chunk('{"choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": NaN}]}', result, None) == ["x"]
