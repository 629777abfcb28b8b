"""Semantic memory in the actors and the server: the embedding worker (batches off the turn's path, resumed from
its cursor, forgetting drops its queue, failures retried, refused texts, a model change, two writers), the hybrid
`search_memory` with its legs, a chat's message embedded once for its recall and its vector, the server's start
log, /metrics and configuration.

Embedders are fakes (support/embedders.py): `WordEmbedder` in this trio run, `FakeEmbeddings` over real HTTP on
loopback; vectors are made from words, or hand-made for ranking. The real local model is used by
tests/test_embedders.py and the end-to-end test at the bottom."""
from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest
import trio

from agentcast.actors import (
    Agent,
    AgentSpec,
    Audience,
    ConfigError,
    EchoBrain,
    EmbedderChoice,
    EmbeddingWorker,
    FailedOutput,
    Journal,
    OpenAIBrain,
    OpenAIBrainSettings,
    SearchCommand,
    SearchResultsOutput,
    SemanticMemory,
    TurnDoneOutput,
    agent_specs,
    embedder_choice,
)
from agentcast.store import EventLog, UserClearedMemory, UserSaid, verify
from agentcast.transport._config import load_config
from support import connect, running_server, scaled
from support.actors import AT, Recorder, chat
from support.embedders import FakeEmbeddings, WordEmbedder
from support.fake_openai import FakeOpenAI, text
from support.http import get

A = "helper"


def said(text: str, user: str = "ann", agent: str = A) -> UserSaid:
    return UserSaid(agent, user, AT, text)


@asynccontextmanager
async def semantic(tmp_path, embedder, *specs: AgentSpec, batch_size: int = 4, read_ahead: int = 256,
                   start_worker: bool = True):
    """A journal on a fresh log, one embedding worker for every agent of `specs` (default: one echo agent `A`)
    and the agents running with their semantic memory; `s.log` reads the log (its own connection)."""
    specs = specs or (AgentSpec(A, EchoBrain()),)
    path = tmp_path / "s.db"
    writer = EventLog.open(path)
    reader = EventLog.open(path, readonly=True)
    try:
        journal = Journal(writer, lambda: EventLog.open(path, readonly=True))
        worker = EmbeddingWorker(embedder, [s.agent_id for s in specs], journal, batch_size=batch_size,
                                 read_ahead=read_ahead)
        memory = SemanticMemory(embedder, worker)
        audience = Audience()
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            if start_worker:
                await nursery.start(worker.run)
            agents = {}
            for spec in specs:
                agents[spec.agent_id] = Agent(spec, journal, audience, clock=lambda: AT, semantic=memory)
                await nursery.start(agents[spec.agent_id].run)
            yield SimpleNamespace(path=path, journal=journal, worker=worker, agents=agents, log=reader,
                                  nursery=nursery, agent=agents[specs[0].agent_id])
            nursery.cancel_scope.cancel()
    finally:
        reader.close()
        writer.close()


def vectors_of(log: EventLog, user: str, agent: str = A) -> dict[int, int]:
    """seq -> how many vectors the log holds for it, of (agent, user)."""
    counts: dict[int, int] = {}
    for stored in log.stored_vectors():
        if (stored.agent_id, stored.user) == (agent, user):
            for seq in stored.seqs:
                counts[seq] = counts.get(seq, 0) + 1
    return counts


def checked(log: EventLog):
    report = verify(log)
    assert report.ok, report.as_json()
    return report


async def search(agent: Agent, query: str, limit: int = 5, *, user: str = "ann", legs=None, outbox=None):
    outbox = outbox or Recorder()
    agent.submit(SearchCommand(user, query, limit, True, outbox, None, legs))
    with trio.fail_after(10):
        while not (outbox.of(SearchResultsOutput) or outbox.of(FailedOutput)):
            await outbox.wait_for(object, len(outbox.outputs) + 1, timeout=None)
    return (outbox.of(SearchResultsOutput) or outbox.of(FailedOutput))[-1]


# -- the worker -----------------------------------------------------------------------------------------


class CommitsWhileCounting:
    """The journal, except that right after the worker's start counts what is left to embed (before that count
    reaches the worker), one more message is committed: a commit that lands between the count and its use."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.write, self.watch = journal.write, journal.watch
        self.committed_meanwhile = False

    async def read(self, fn):
        counted = []

        class Spy:
            def __init__(self, log):
                self._log = log

            def __getattr__(self, name):
                if name == "count_unembedded":
                    counted.append(name)
                return getattr(self._log, name)

        result = await self._journal.read(lambda log: fn(Spy(log)))
        if counted and not self.committed_meanwhile:
            self.committed_meanwhile = True
            await self._journal.append([said("said while the backlog was counted")])
        return result


async def test_the_backlog_counts_a_message_committed_while_the_start_counts_the_log(tmp_path):
    embedder = WordEmbedder()
    embedder.gate = trio.Event()  # nothing is embedded: the backlog is all there is to see
    path = tmp_path / "s.db"
    with EventLog.open(path) as log:
        log.append([[said(f"said before the start {i}") for i in range(3)]])
    writer = EventLog.open(path)
    try:
        journal = Journal(writer, lambda: EventLog.open(path, readonly=True))
        store = CommitsWhileCounting(journal)
        worker = EmbeddingWorker(embedder, [A], store, batch_size=4)
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            await nursery.start(worker.run)
            await embedder.waiting.wait()  # started, counted, embedding its first batch
            assert store.committed_meanwhile
            assert worker.backlog == 4  # the 3 counted and the one committed after the count
            nursery.cancel_scope.cancel()
    finally:
        writer.close()


async def test_committed_messages_get_one_vector_each_in_batches_off_the_turns_path(tmp_path):
    embedder = WordEmbedder()
    embedder.gate = trio.Event()  # the embedder does not answer yet: turns must not wait for it
    async with semantic(tmp_path, embedder) as s:
        out = Recorder()
        for i in range(6):
            s.agent.submit(chat("ann", f"message number {i}", out))
        await out.wait_for(TurnDoneOutput, 6)  # every turn answered and committed, nothing embedded yet
        assert s.worker.embedded == 0 and vectors_of(s.log, "ann") == {}
        assert s.worker.backlog == 12
        embedder.gate.set()
        await s.worker.caught_up()
        messages = [r for r in s.log.read() if hasattr(r.event, "content")]
        assert vectors_of(s.log, "ann") == {r.seq: 1 for r in messages}
        assert sorted(embedder.texts) == sorted(r.event.content for r in messages)  # each embedded once
        assert all(len(texts) <= 4 and not urgent for texts, urgent in embedder.calls)
        assert s.worker.embedded == 12 and s.worker.backlog == 0 and s.worker.failing is None
        assert s.log.embedding_cursor(A, embedder.name) == s.log.last_seq()
        checked(s.log)


async def test_a_restarted_worker_goes_on_from_its_cursor(tmp_path):
    first = WordEmbedder()
    async with semantic(tmp_path, first, start_worker=False) as s:
        await s.journal.append([said(f"old message {i}") for i in range(10)])
        scope = trio.CancelScope()

        async def run_first() -> None:
            with scope:
                await s.worker.run()

        first.gate = trio.Event()
        s.nursery.start_soon(run_first)
        await first.waiting.wait()
        first.gate.set()  # the first batch of 4 goes through ...
        first.gate = trio.Event()
        first.waiting = trio.Event()
        await first.waiting.wait()  # ... the second waits in the embedder: the worker is stopped there
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        stored = vectors_of(s.log, "ann")
        assert sorted(stored) == [1, 2, 3, 4] and s.log.embedding_cursor(A, first.name) == 4
        await s.journal.append([said(f"new message {i}") for i in range(3)])
        second = WordEmbedder()  # the same model (name): it goes on from seq 4
        worker = EmbeddingWorker(second, [A], s.journal, batch_size=4)
        await s.nursery.start(worker.run)
        await worker.caught_up()
        assert second.texts == [f"old message {i}" for i in range(4, 10)] + [f"new message {i}" for i in range(3)]
        assert vectors_of(s.log, "ann") == {seq: 1 for seq in range(1, 14)}
        checked(s.log)


async def test_a_long_term_clear_drops_the_users_queued_messages_and_the_vector_in_flight(tmp_path):
    embedder = WordEmbedder()
    async with semantic(tmp_path, embedder, batch_size=2, start_worker=False) as s:
        await s.journal.append([said("ann one"), said("bob one", "bob"), said("ann two"), said("bob two", "bob"),
                                said("ann three"), said("bob three", "bob")])
        embedder.gate = trio.Event()
        await s.nursery.start(s.worker.run)
        await embedder.waiting.wait()  # the first batch (ann one, bob one) is being embedded; the rest is queued
        await s.journal.append([UserClearedMemory(A, "ann", AT, True)])
        embedder.gate.set()
        await s.worker.caught_up()
        # ann's queued messages never reached the embedder; the one in flight was embedded but not stored
        assert embedder.texts == ["ann one", "bob one", "bob two", "bob three"]
        assert vectors_of(s.log, "ann") == {}
        assert sorted(vectors_of(s.log, "bob")) == [2, 4, 6]
        checked(s.log)


async def test_a_failing_embedder_is_retried_with_backoff_and_never_stops_the_worker(tmp_path, autojump_clock, caplog):
    caplog.set_level(logging.INFO, "agentcast")
    embedder = WordEmbedder()
    embedder.fail(4)
    async with semantic(tmp_path, embedder) as s:
        await s.journal.append([said("tea please"), said("coffee please")])
        await s.worker.caught_up()
        assert s.worker.failing is None and s.worker.embedded == 2
        assert len(embedder.calls) == 5  # four failures, then the batch
        assert trio.current_time() >= 1 + 2 + 4 + 8  # backoff: 1, 2, 4, 8 seconds
        failures = [r for r in caplog.records if "fails" in r.getMessage()]
        assert len(failures) == 1 and "fails on purpose" in failures[0].getMessage()  # said once, not per try
        assert any("working again" in r.getMessage() for r in caplog.records)
        checked(s.log)


async def test_a_text_the_embedder_refuses_is_kept_without_a_direction(tmp_path, caplog):
    embedder = WordEmbedder()
    embedder.refuse = {"a text the server refuses"}
    async with semantic(tmp_path, embedder) as s:
        await s.journal.append([said("tea time"), said("a text the server refuses"), said("tea again")])
        await s.worker.caught_up()
        assert vectors_of(s.log, "ann") == {1: 1, 2: 1, 3: 1}  # one each: the refused one has no direction
        near = s.log.nearest(A, "ann", embedder.name, embedder.vector_of("a text the server refuses"), 5)
        assert [h.seq for h in near] == [1, 3] or sorted(h.seq for h in near) == [1, 3]  # never the refused one
        assert any("could not be embedded" in r.getMessage() for r in caplog.records)
        found = await search(s.agent, '"refuses"')  # a quoted word is looked for verbatim
        assert 2 in [f.hit.seq for f in found.results]  # by the lexical leg
        checked(s.log)


async def test_an_embedder_refusing_every_text_is_failing_and_its_messages_wait_for_it(tmp_path, autojump_clock):
    """A server that answers 400 to every request (a setting it rejects) must not leave the whole memory without
    directions: the messages keep their place behind the cursor, and are embedded once it accepts texts again."""
    embedder = WordEmbedder()
    embedder.fail(1000, refused=True)
    async with semantic(tmp_path, embedder) as s:
        await s.journal.append([said("tea time"), said("coffee at noon"), said("tea again")])
        # The worker's reads run on threads the mock clock does not see: virtual time may race ahead of it, so
        # the wait is bounded by the real clock (a net against a hang) and not by a count of virtual seconds.
        give_up = time.monotonic() + scaled(30)
        while len(embedder.calls) < 8 and time.monotonic() < give_up:  # it tries again and again, with backoff
            await trio.sleep(1)
        assert len(embedder.calls) >= 8, f"the worker called the embedder {len(embedder.calls)} times in 30 s"
        assert s.worker.failing is not None and "refuses every text" in s.worker.failing
        assert vectors_of(s.log, "ann") == {} and s.log.embedding_cursor(A, embedder.name) == 0
        embedder._failures.clear()  # the server accepts texts again
        await s.worker.caught_up()  # (no trio timeout: the autojump clock would run it out while a thread writes)
        near = s.log.nearest(A, "ann", embedder.name, embedder.vector_of("tea time"), 5)
        assert near and near[0].seq == 1
        assert vectors_of(s.log, "ann") == {1: 1, 2: 1, 3: 1} and s.worker.failing is None
        checked(s.log)


async def test_a_model_change_embeds_the_memory_again(tmp_path, caplog):
    old = WordEmbedder("words-v1")
    async with semantic(tmp_path, old) as s:
        await s.journal.append([said("tea"), said("bus", "bob")])
        await s.worker.caught_up()
        new = WordEmbedder("words-v2")
        worker = EmbeddingWorker(new, [A], s.journal)
        await s.nursery.start(worker.run)
        await worker.caught_up()
        assert sorted(new.texts) == ["bus", "tea"]
        assert [(c.model, c.seq) for c in s.log.embedding_cursors()] == [("words-v2", 2)]
        assert {v.model for v in s.log.stored_vectors()} == {"words-v2"}
        assert any("the 2 vectors of the model before were dropped" in r.getMessage() for r in caplog.records)
        checked(s.log)


class _ReadGate:
    """A log reader whose `unembedded` can be held, armed, after it has read that nothing is left: the worker then
    has an answer of a moment gone by while the test commits more (`read`: that moment came; `go`: let the
    worker have it)."""

    def __init__(self, log: EventLog) -> None:
        self.log, self.armed = log, False
        self.read, self.go = threading.Event(), threading.Event()

    def __getattr__(self, name: str):
        return getattr(self.log, name)

    def unembedded(self, *args):
        found = self.log.unembedded(*args)
        if self.armed and not found.texts:
            self.armed = False
            self.read.set()
            self.go.wait(scaled(10))
        return found


async def test_a_commit_while_the_worker_reads_that_nothing_is_left_is_embedded_before_it_is_caught_up(tmp_path):
    """The worker read "nothing to embed" just before a commit and hears of the commit before it takes that
    answer: it is not caught up (`caught_up` waits), it reads again and embeds the new message."""
    path = tmp_path / "s.db"
    embedder = WordEmbedder()
    writer = EventLog.open(path)
    gates: list[_ReadGate] = []

    def open_reader() -> _ReadGate:
        gates.append(_ReadGate(EventLog.open(path, readonly=True)))
        return gates[-1]

    journal = Journal(writer, open_reader, readers=1)
    worker = EmbeddingWorker(embedder, [A], journal)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            await nursery.start(worker.run)
            await journal.append([said("tea time")])
            await worker.caught_up()
            (gate,) = gates
            gate.armed = True  # the worker's next read that nothing is left holds after reading
            await journal.append([said("coffee at noon")])  # the worker reads it, embeds it, then reads nothing
            assert await trio.to_thread.run_sync(gate.read.wait, scaled(10))
            await journal.append([said("tea again")])  # committed while the worker holds "nothing left"
            gate.go.set()
            with trio.fail_after(scaled(10)):
                await worker.caught_up()
            assert sorted(embedder.texts) == ["coffee at noon", "tea again", "tea time"]
            assert vectors_of(gate.log, "ann") == {1: 1, 2: 1, 3: 1}
            nursery.cancel_scope.cancel()
    finally:
        for gate in gates:
            gate.log.close()
        writer.close()


async def test_two_workers_on_one_log_never_store_a_vector_twice(tmp_path):
    """Two writers embedding the same log (a server and `agentcast embed`): each batch is fenced by the cursor."""
    path = tmp_path / "two.db"
    logs = [EventLog.open(path), EventLog.open(path)]
    try:
        journals = [Journal(log, lambda: EventLog.open(path, readonly=True)) for log in logs]
        embedders = [WordEmbedder(), WordEmbedder()]
        async with trio.open_nursery() as nursery:
            for journal in journals:
                await nursery.start(journal.run)
            await journals[0].append([said(f"message {i}", f"user{i % 3}") for i in range(60)])
            workers = [EmbeddingWorker(e, [A], j, batch_size=3, read_ahead=6) for e, j in zip(embedders, journals)]
            for worker in workers:
                await nursery.start(worker.run)
            for worker in workers:
                await worker.caught_up()
            nursery.cancel_scope.cancel()
        with EventLog.open(path, readonly=True) as reader:
            checked(reader)
            assert sum(len(v.seqs) for v in reader.stored_vectors()) == 60
    finally:
        for log in logs:
            log.close()


# -- searching ------------------------------------------------------------------------------------------

#: Hand-made vectors: facts, chatter and questions whose cosines are known (tests/support/embedders.py).
HAND_MADE = {
    "I drive the number 152 bus.": [1.0, 0.0, 0.0, 0.0],
    "My cat Mia sleeps all day.": [0.0, 1.0, 0.0, 0.0],
    "What's on my schedule tomorrow?": [0.8, 0.0, 0.6, 0.0],
    "What is my job?": [0.92, 0.0, 0.392, 0.0],  # closer to the chatter question (0.97) than to the fact (0.92)
    "Tell me about my pet": [0.1, 0.99, 0.0, 0.0],
    "Which is Mia?": [0.0, 0.0, 0.0, 1.0],
}


async def remembered(s, *texts: str, user: str = "ann") -> None:
    await s.journal.append([said(t, user) for t in texts])
    await s.worker.caught_up()


async def test_search_memory_is_hybrid_and_says_which_legs_ran(tmp_path):
    embedder = WordEmbedder("hand", 4, HAND_MADE)
    async with semantic(tmp_path, embedder) as s:
        await remembered(s, "I drive the number 152 bus.", "My cat Mia sleeps all day.", "What's on my schedule tomorrow?")
        found = await search(s.agent, "Tell me about my pet")  # no word shared with the answer
        assert found.legs == ("lexical", "semantic") and found.results[0].hit.content == "My cat Mia sleeps all day."
        # a question is answered by a statement: the chatter question is demoted below the fact
        job = await search(s.agent, "What is my job?")
        assert job.results[0].hit.content == "I drive the number 152 bus."
        exact = await search(s.agent, "Which is Mia?")  # orthogonal to everything: the exact token decides
        assert exact.results[0].hit.content == "My cat Mia sleeps all day."
        lexical = await search(s.agent, "my cat", legs=("lexical",))
        assert lexical.legs == ("lexical",) and [f.hit.content for f in lexical.results] == [
            "My cat Mia sleeps all day.", "What's on my schedule tomorrow?"]  # BM25 over every word
        only = await search(s.agent, "Tell me about my pet", 1, legs=("semantic",))
        assert only.legs == ("semantic",) and only.results[0].hit.content == "My cat Mia sleeps all day."
        assert only.results[0].hit.score == pytest.approx(0.99, abs=0.02)  # the cosine
        assert not (await search(s.agent, "Tell me about my pet", user="bob")).results  # nobody else's


async def test_a_message_not_embedded_yet_is_found_by_the_lexical_leg(tmp_path):
    embedder = WordEmbedder()
    async with semantic(tmp_path, embedder) as s:
        await remembered(s, "I like tea")
        embedder.gate = trio.Event()  # the worker cannot embed what comes next
        await s.journal.append([said("my dog is called rex")])
        await embedder.waiting.wait()
        found = await search(s.agent, "dog")  # no exact token: only the tail's lexical leg can find it
        assert found.legs == ("lexical", "semantic")
        assert "my dog is called rex" in [f.hit.content for f in found.results]
        embedder.gate.set()


async def test_without_an_embedder_the_search_is_lexical_and_semantic_alone_is_refused(tmp_path):
    from support.actors import running

    async with running(tmp_path, AgentSpec(A, EchoBrain())) as r:
        await r.journal.append([said("I like tea")])
        agent = r.agents[A]
        found = await search(agent, "tea")
        assert found.legs == ("lexical",) and [f.hit.content for f in found.results] == ["I like tea"]
        refused = await search(agent, "tea", legs=("semantic",))
        assert isinstance(refused, FailedOutput) and refused.code == "semantic_unavailable"
        assert "no embedder" in refused.message


async def test_a_failing_query_embedding_falls_back_to_lexical(tmp_path):
    embedder = WordEmbedder()
    async with semantic(tmp_path, embedder) as s:
        await remembered(s, "I like tea")
        embedder.fail(2)
        found = await search(s.agent, "tea")
        assert found.legs == ("lexical",) and found.results[0].hit.content == "I like tea"
        refused = await search(s.agent, "tea", legs=("semantic",))
        assert isinstance(refused, FailedOutput) and refused.code == "semantic_unavailable"
        assert "fails on purpose" in refused.message


async def test_a_chats_message_is_embedded_once_for_its_recall_and_as_its_vector(tmp_path, nursery):
    fake = await FakeOpenAI(text("Noted."), text("You drive the 152.")).start(nursery)
    brain = OpenAIBrain(OpenAIBrainSettings(model="fake-model", base_url=fake.base_url, retries=0, recall=2, memory_window=0))
    vectors = {"I drive the number 152 bus.": [1.0, 0.0, 0.0, 0.0], "What is my job?": [0.9, 0.1, 0.0, 0.0]}
    embedder = WordEmbedder("hand", 4, vectors)
    async with semantic(tmp_path, embedder, AgentSpec(A, brain)) as s:
        out = Recorder()
        s.agent.submit(chat("ann", "I drive the number 152 bus.", out))
        await out.wait_for(TurnDoneOutput)
        await s.worker.caught_up()
        s.agent.submit(chat("ann", "What is my job?", out))
        await out.wait_for(TurnDoneOutput, 2)
        await s.worker.caught_up()
        # the second message was embedded once, urgently, for its recall; the worker stored that vector
        assert embedder.calls.count((["What is my job?"], True)) == 1
        assert embedder.texts.count("What is my job?") == 1
        (question,) = [r.seq for r in s.log.read() if getattr(r.event, "content", None) == "What is my job?"]
        assert vectors_of(s.log, "ann")[question] == 1
        prompt = json.dumps(fake.requests[1]["messages"])
        assert "Recalled from long-term memory" in prompt and "I drive the number 152 bus." in prompt
        checked(s.log)


# -- the server: configuration, start, /metrics -----------------------------------------------------------


def test_embedders_are_configured_per_server_and_per_agent(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[server]\nembedder = "local"\n[agents.a]\n[agents.b]\nembedder = "none"\n'
                      '[agents.c]\nembedder = { kind = "openai", model = "m", dimensions = 8 }\n')
    specs = {s.agent_id: s for s in load_config(config).agents}
    assert specs["a"].embedder == EmbedderChoice("local") and specs["b"].embedder is None
    assert specs["c"].embedder.kind == "openai" and specs["c"].embedder.settings()["dimensions"] == 8
    assert [s.embedder for s in agent_specs(None)] == [None, None, None]  # no [server] embedder: lexical only
    assert embedder_choice("none") is None and embedder_choice("local") == EmbedderChoice("local")


@pytest.mark.parametrize(("toml", "says"), [
    ('[server]\nembedder = "big"', 'server.embedder must be "none", "local" or a table'),
    ('[server]\nembedder = 3', 'server.embedder must be "none", "local" or a table, not int'),
    ('[server]\nembedder = { kind = "torch" }', "server.embedder: kind must be one of 'local', 'openai'"),
    ('[server]\nembedder = { kind = "local", threads = 0 }', "server.embedder: local embedder: threads must be"),
    ('[agents.a]\nembedder = { kind = "openai", model = "m" }', "agents.a.embedder: openai embedder: dimensions is missing"),
    ('[agents.a]\nembedder = { kind = "openai", model = "m", dimensions = 8, api_key_env = "sk-123" }',
     "agents.a.embedder: openai embedder: api_key_env looks like an API key"),
])
def test_bad_embedder_settings_are_one_clear_error(tmp_path, toml, says):
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert says in str(caught.value) and str(caught.value).startswith(str(config))


async def test_the_server_says_at_start_which_search_each_agent_has(db_path, nursery, caplog, monkeypatch):
    fake = await FakeEmbeddings().start(nursery)
    caplog.set_level(logging.INFO, "agentcast")
    monkeypatch.setattr(EmbedderChoice, "missing", lambda self: "the semantic extra is not installed (onnxruntime "
                        "missing): pip install 'agentcast[semantic]'" if self.kind == "local" else None)
    specs = [AgentSpec("plain", EchoBrain()), AgentSpec("local", EchoBrain(), embedder=EmbedderChoice("local")),
             AgentSpec("remote", EchoBrain(), embedder=embedder_choice(fake.settings()))]
    async with running_server(db_path, specs) as server:
        lines = [r.getMessage() for r in caplog.records if "search:" in r.getMessage()]
        assert lines == [
            "agent plain: search: lexical only: no embedder configured",
            "agent local: search: lexical only: the semantic extra is not installed (onnxruntime missing): "
            "pip install 'agentcast[semantic]'",
            f"agent remote: search: hybrid (lexical + semantic, openai fake-words at {fake.base_url}, 32 dimensions)",
        ]
        assert [w.agent_ids for w in server.embedding] == [("remote",)]


async def test_a_server_with_an_openai_embedder_searches_by_meaning(db_path, nursery):
    fake = await FakeEmbeddings().start(nursery)
    choice = embedder_choice(fake.settings())
    specs = [AgentSpec("a", EchoBrain(), embedder=choice), AgentSpec("b", EchoBrain(), embedder=choice),
             AgentSpec("plain", EchoBrain())]
    async with running_server(db_path, specs) as server, connect(server.port) as client:
        (worker,) = server.embedding  # one worker for the agents configured alike
        assert worker.agent_ids == ("a", "b")
        await client.request({"type": "set_user", "user_id": "ann"}, "user_set")
        for agent in ("a", "b", "plain"):
            await client.request({"type": "chat", "agent_id": agent, "message": "my cat sleeps all day"}, "agent_done")
        await worker.caught_up()
        (found,) = await client.request({"type": "search_memory", "agent_id": "a", "query": "cat sleeps",
                                         "request_id": "s1"}, "memory_results")
        assert found["legs"] == ["lexical", "semantic"] and found["request_id"] == "s1"
        assert found["results"][0]["content"] == "my cat sleeps all day"
        (plain,) = await client.request({"type": "search_memory", "agent_id": "plain", "query": "cat"},
                                        "memory_results")
        assert plain["legs"] == ["lexical"]
        (error,) = await client.request({"type": "search_memory", "agent_id": "plain", "query": "cat",
                                         "legs": ["semantic"]}, "error")
        assert error["code"] == "semantic_unavailable"
        (bad,) = await client.request({"type": "search_memory", "agent_id": "a", "query": "cat", "legs": ["bm25"]},
                                      "error")
        assert bad["code"] == "invalid_field" and "legs" in bad["message"]
        metrics = (await get(server.port, "/metrics")).body.decode()
        label = f'embedder="openai fake-words at {fake.base_url}, 32 dimensions"'
        assert f"agentcast_embedded_messages_total{{{label}}} 4.0" in metrics
        assert f"agentcast_embedding_backlog{{{label}}} 0.0" in metrics
        assert f"agentcast_embedding_failing{{{label}}} 0.0" in metrics
        # a's and b's message and answer, each once, and the one search's query
        assert sorted(t for texts in fake.inputs for t in texts) == sorted(
            ["cat sleeps", *["my cat sleeps all day", "You said: my cat sleeps all day\n(I remember 0 earlier "
                             "messages of our conversation.)"] * 2])
    with EventLog.open(db_path, readonly=True) as log:
        checked(log)


# -- end to end with the real local model (the semantic extra, installed in CI with the test extra) ---------


async def test_end_to_end_with_the_real_local_model(db_path, nursery):
    """A server with the local embedder (all-MiniLM-L6-v2, int8, from the extra): facts said in chats are embedded
    by the worker; a reworded question finds its fact through search_memory and through an openai agent's recall,
    whose message is embedded once for both."""
    fake = await FakeOpenAI(text("Noted."), text("Noted."), text("Noted."), text("You drive a bus.")).start(nursery)
    local = EmbedderChoice("local")
    brain = OpenAIBrain(OpenAIBrainSettings(model="fake-model", base_url=fake.base_url, retries=0, recall=1, memory_window=0))
    facts = ["I drive the number 152 bus from Olivos to La Boca.", "My daughter Valentina plays the violin.",
             "Which is the best way to learn a new language?"]
    async with running_server(db_path, [AgentSpec("llm", brain, embedder=local)]) as server, \
            connect(server.port) as client:
        (worker,) = server.embedding
        assert worker.dimensions == 384 and worker.model.startswith("local:")
        await client.request({"type": "set_user", "user_id": "juan"}, "user_set")
        for fact in facts:
            await client.request({"type": "chat", "agent_id": "llm", "message": fact}, "agent_done")
        await worker.caught_up()
        (found,) = await client.request({"type": "search_memory", "agent_id": "llm", "query": "What is my job?",
                                         "limit": 1}, "memory_results")
        assert found["legs"] == ["lexical", "semantic"]
        assert found["results"][0]["content"] == facts[0]  # no word in common with the question
        (exact,) = await client.request({"type": "search_memory", "agent_id": "llm", "query": "How is Valentina?",
                                         "limit": 1}, "memory_results")
        assert exact["results"][0]["content"] == facts[1]
        await client.request({"type": "chat", "agent_id": "llm", "message": "Which instrument does my kid practise?"},
                             "agent_done")
        await worker.caught_up()
        assert facts[1] in json.dumps(fake.requests[-1]["messages"])  # recalled for the model
        assert worker.embedded == 8  # four messages and four answers: the question's vector made once, for its recall
    with EventLog.open(db_path, readonly=True) as log:
        checked(log)
