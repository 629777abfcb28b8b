"""Semantic memory in the actors: `EmbeddingWorker`, the one task that keeps the message vectors of the agents
sharing an embedder (a projection of the log), and `SemanticMemory`, how those agents search with it (a
query's vector, the hybrid search, a chat's recall).

Vectors are never made inside a commit nor on the event loop. The worker reads the messages after its cursor
from the log (woken by the journal after each commit that logged messages of its agents; at start it goes on
from where the log says it stopped), embeds them in batches (the local embedder in a worker thread, a remote
one over HTTP), and writes each batch's vectors with its cursor in one transaction on the journal's writer
thread (`Recorder.add_vectors`, fenced by the cursor: another writer embedding the same log is seen, not
doubled). A chat whose brain recalls embeds its message once, for its search, and hands that vector to the
worker (`EmbeddingWorker.expect`), which stores it instead of embedding the message again. A long-term clear
drops the worker's queued messages of that user, and the write checks again that each message is still
remembered. A failing embedder is retried with backoff (a text it refuses alone is stored as a vector with no
direction, found by the lexical search only); the worker never stops the server.

Must not import `transport`.
"""
from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import trio

from ..store import (
    LEXICAL,
    SEMANTIC,
    EmbeddingConflict,
    MessageVector,
    QueryVector,
    Recorded,
    Recorder,
    RememberedMessage,
    SearchResult,
    TextToEmbed,
    UserClearedMemory,
    search_memory,
)

from ._embedders import Embedder, EmbedderError

logger = logging.getLogger("agentcast.actors.semantic")
T = TypeVar("T")

#: Messages read from the log at a time; they are embedded and written `batch_size` at a time.
READ_AHEAD = 256
#: Seconds before trying again after a failure (doubling each time, up to MAX_BACKOFF).
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
#: Vectors of chat messages (made for their recall) kept for the worker, at most: beyond, the oldest go (the
#: worker then embeds that message itself).
EXPECTED_MAX = 4096
#: Seconds between progress lines while a worker catches up on a backlog.
PROGRESS_EVERY = 30.0
#: Seconds between two log lines about a failing query embedding.
QUERY_FAILURE_LOG_EVERY = 60.0


class Store(Protocol):
    """What the worker needs of the journal (`actors.Journal`): reads on a reader, writes on the writer thread,
    and a call after each commit."""

    async def read(self, fn: Callable[[Recorder], T]) -> T: ...

    async def write(self, fn: Callable[[Recorder], T]) -> T: ...

    def watch(self, callback: Callable[[Sequence[Recorded]], None]) -> None: ...


class SearchUnavailable(Exception):
    """A search asked for the semantic leg alone, and it cannot run (no embedder, or it failed); the text says why."""


#: What the worker embeds to tell a text the embedder refuses from an embedder that refuses everything.
PROBE_TEXT = "hello"


class EmbeddingWorker:
    """Keeps the vectors of the messages of `agent_ids` under `embedder`'s model, from the log's start.

    `run` must be running (in a nursery started after the journal's, stopped before it). `embedded` counts the
    vectors stored since it started, `backlog` the messages it knows are still to embed, `failing` says why
    embedding fails (None while it succeeds).
    """

    def __init__(self, embedder: Embedder, agent_ids: Sequence[str], journal: Store, *, batch_size: int = 32,
                 read_ahead: int = READ_AHEAD, label: str | None = None) -> None:
        if not agent_ids:
            raise ValueError("an embedding worker works for at least one agent")
        self.embedder = embedder
        self.model = embedder.name
        self.dimensions = embedder.dimensions
        self.agent_ids = tuple(sorted(set(agent_ids)))
        self._agents = frozenset(self.agent_ids)
        self._journal = journal
        self.batch_size = batch_size
        self.read_ahead = read_ahead
        #: The model, as logs and /metrics name it.
        self.label = label or self.model
        self.embedded = 0
        self.backlog = 0
        self.failing: str | None = None
        self._cursors: dict[str, int] = {}
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._started = False
        #: (agent_id, user) -> the seq of its latest long-term clear, while messages before it may be queued
        self._forgotten: dict[tuple[str, str], int] = {}
        #: (agent_id, user, text) -> the vector a chat's recall made for that message
        self._expected: collections.OrderedDict[tuple[str, str, str], Any] = collections.OrderedDict()
        #: While the start counts the log: (last seq, messages) of each commit seen meanwhile (None otherwise)
        self._commits_while_counting: list[tuple[int, int]] | None = None

    # -- on the event loop: what the journal and the lanes tell it -----------------------------------

    def committed(self, recorded: Sequence[Recorded]) -> None:
        """The journal's call after a commit (`Journal.watch`): messages of its agents to embed, and long-term
        clears, whose user's queued messages are dropped. Quick; never raises."""
        messages = 0
        agents = self._agents
        for rec in recorded:
            event = rec.event
            if event.agent_id not in agents:
                continue
            if isinstance(event, RememberedMessage):
                messages += 1
            elif isinstance(event, UserClearedMemory) and event.long_term:
                self._forgotten[(event.agent_id, event.user)] = rec.seq
                for key in [k for k in self._expected if k[0] == event.agent_id and k[1] == event.user]:
                    del self._expected[key]
        if messages:
            self.backlog += messages
            if self._commits_while_counting is not None:
                self._commits_while_counting.append((recorded[-1].seq, messages))
            self._wake.set()
            if self._idle.is_set():
                self._idle = trio.Event()

    def expect(self, agent_id: str, user: str, text: str, vector: Any) -> None:
        """`vector` is the vector of the message `text` that `user` is saying to `agent_id` (made for the
        chat's recall): the worker stores it for that message instead of embedding the text again."""
        if agent_id not in self._agents:
            return
        expected = self._expected
        expected[(agent_id, user, text)] = vector
        expected.move_to_end((agent_id, user, text))
        while len(expected) > EXPECTED_MAX:
            expected.popitem(last=False)

    @property
    def cursor(self) -> int:
        """The seq up to which every message of its agents has its vector (0 before it has read its cursors)."""
        return min(self._cursors.values()) if self._cursors else 0

    async def caught_up(self) -> None:
        """Return once the worker has embedded every message committed so far (that it was told of)."""
        await self._idle.wait()

    # -- the task ---------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Embed what the log holds after the cursor, then each commit's messages, until cancelled."""
        journal = self._journal
        if not self._started:
            self._started = True
            journal.watch(self.committed)  # first: nothing committed after the reads below is missed
        task_status.started()
        backoff = FIRST_BACKOFF
        last_progress = time.monotonic()
        starting = True
        while True:
            try:
                if starting:
                    await self._start()
                    starting = False
                # Cleared before the read: a commit the read may not see sets it again, and then the worker is
                # not caught up (below), however old the read's "nothing left" is.
                if self._wake.is_set():
                    self._wake = trio.Event()
                progressed = await self._step()
            except EmbeddingConflict as exc:  # another writer (`agentcast embed`?) embedded meanwhile
                logger.info("embedding (%s): %s; going on from there", self.label, exc)
                starting = True  # the cursors read again (and the backlog counted) inside the try above
                continue
            except Exception as exc:  # the store failed (a full disk?): tried again later, the server goes on
                self._failed(f"{type(exc).__name__}: {exc}", backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = FIRST_BACKOFF
            if progressed:
                if self.backlog and time.monotonic() - last_progress >= PROGRESS_EVERY:
                    last_progress = time.monotonic()
                    logger.info("embedding (%s): %d vectors stored, about %d messages still to embed", self.label,
                                self.embedded, self.backlog)
                continue
            if self._wake.is_set():
                continue  # a commit came while the step read: read again
            if self.backlog:
                logger.info("embedding (%s): caught up, %d vectors stored since start", self.label, self.embedded)
            self.backlog = 0
            self._forgotten.clear()  # what is read from now on was committed after those clears
            self._idle.set()
            await self._wake.wait()

    def _read_cursors(self, log: Recorder) -> dict[str, int]:
        return {agent_id: log.embedding_cursor(agent_id, self.model) for agent_id in self.agent_ids}

    async def _start(self) -> None:
        """A model change drops the agents' vectors of other models (the log is embedded again); then the
        cursors, and how many messages are left to embed."""
        journal, model = self._journal, self.model
        for agent_id in self.agent_ids:
            dropped = await journal.write(lambda log: log.drop_vectors(agent_id, keep_model=model))  # awaited at once
            if dropped:
                logger.warning("agent %s: the embedding model is now %s; the %d vectors of the model before were "
                               "dropped and its memory is embedded again", agent_id, self.label, dropped)
        self._cursors = await journal.read(self._read_cursors)
        start = min(self._cursors.values())

        def count(log: Recorder) -> tuple[int, int]:
            with log.snapshot():
                return log.count_unembedded(self.agent_ids, start), log.last_seq()

        # Commits land while the count is read: those after its snapshot are added to it, not lost.
        self._commits_while_counting = []
        try:
            counted, upto = await journal.read(count)
            self.backlog = counted + sum(n for last, n in self._commits_while_counting if last > upto)
        finally:
            self._commits_while_counting = None
        if self.backlog:
            logger.info("embedding (%s): %d messages of %s to embed (their search is lexical until then)",
                        self.label, self.backlog, ", ".join(self.agent_ids))

    async def _step(self) -> bool:
        """Embed and store the next messages after the cursor (up to `read_ahead`); False if there were none."""
        start = min(self._cursors.values())
        found = await self._journal.read(lambda log: log.unembedded(self.agent_ids, start, self.read_ahead))
        if found.scanned_to <= start:
            return False
        texts = [t for t in found.texts if t.seq > self._cursors[t.agent_id]]
        batches = [texts[i:i + self.batch_size] for i in range(0, len(texts), self.batch_size)] or [[]]
        for number, batch in enumerate(batches):
            upto = found.scanned_to if number == len(batches) - 1 else batch[-1].seq
            wanted = [t for t in batch if self._forgotten.get((t.agent_id, t.user), 0) < t.seq]
            vectors = await self._vectors_of(wanted)
            moves = {agent_id: (cursor, max(cursor, upto)) for agent_id, cursor in self._cursors.items()}
            stored = await self._journal.write(
                lambda log: log.add_vectors(self.model, self.dimensions, vectors, moves))  # awaited at once
            self._cursors = {agent_id: new for agent_id, (_, new) in moves.items()}
            self.embedded += stored
            self.backlog = max(0, self.backlog - len(batch))
        return True

    async def _vectors_of(self, texts: list[TextToEmbed]) -> list[MessageVector]:
        """The vectors of `texts`: those a chat's recall made already, the others embedded (in one call)."""
        expected = self._expected
        known = {t.seq: expected.pop((t.agent_id, t.user, t.text)) for t in texts
                 if (t.agent_id, t.user, t.text) in expected}
        missing = [t for t in texts if t.seq not in known]
        made = await self._embed([t.text for t in missing]) if missing else []
        known.update((t.seq, vector) for t, vector in zip(missing, made))
        return [MessageVector(t.seq, t.agent_id, t.user, known[t.seq]) for t in texts]

    async def _embed(self, texts: list[str]) -> list[Any]:
        """The vectors of `texts`, trying again (with backoff) while the embedder fails; a text it refuses alone,
        while it embeds others, gets a vector of zeros (no direction: it matches nothing, the lexical search still
        finds its message). An embedder that refuses every text (a configuration the server rejects) is failing,
        not refusing: the texts wait, with their cursor, until it works again."""
        backoff = FIRST_BACKOFF
        while True:
            try:
                vectors = list(await self.embedder.embed(texts))
            except EmbedderError as exc:
                if not exc.refused:
                    self._failed(str(exc), backoff)
                elif (kept := await self._embed_refused(texts, str(exc), backoff)) is not None:
                    return kept
            except Exception as exc:  # the embedder's own failure (a local model's): as if it refused the texts
                if (kept := await self._embed_refused(texts, f"{type(exc).__name__}: {exc}", backoff)) is not None:
                    return kept
            else:
                if self.failing is not None:
                    logger.info("embedding (%s): working again", self.label)
                    self.failing = None
                return vectors
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _embed_refused(self, texts: list[str], reason: str, backoff: float) -> list[Any] | None:
        """The vectors of refused `texts`, halved until the refused ones are alone; None if the embedder refuses
        a text known to be harmless too (`PROBE_TEXT`): then it refuses everything, and is failing."""
        if len(texts) > 1:
            half = len(texts) // 2
            return await self._embed(texts[:half]) + await self._embed(texts[half:])
        try:
            await self.embedder.embed([PROBE_TEXT])
        except Exception as exc:
            self._failed(f"it refuses every text ({reason}; and {exc})", backoff)
            return None
        logger.warning("embedding (%s): a message could not be embedded (%s); it is stored without a vector and "
                       "found by the lexical search only", self.label, reason)
        return [[0.0] * self.dimensions]

    def _failed(self, reason: str, backoff: float) -> None:
        if self.failing != reason:
            logger.warning("embedding (%s) fails: %s; trying again in %g s (and on, with backoff up to %g s); "
                           "the search stays lexical for what is not embedded", self.label, reason, backoff,
                           MAX_BACKOFF)
        self.failing = reason


class SemanticMemory:
    """How the agents sharing one embedder search: the query's vector (made at once, beside the worker's
    batches), the hybrid search on a reader, and the worker that keeps the vectors."""

    def __init__(self, embedder: Embedder, worker: EmbeddingWorker) -> None:
        self.embedder = embedder
        self.worker = worker
        self._last_failure_log = -QUERY_FAILURE_LOG_EVERY

    async def query_vector(self, text: str) -> tuple[QueryVector | None, str | None]:
        """The vector of a search's query (None and why, if the embedder fails: the search is then lexical)."""
        try:
            (vector,) = await self.embedder.embed([text], urgent=True)
        except Exception as exc:  # EmbedderError, or a local model's own failure
            reason = str(exc) if isinstance(exc, EmbedderError) else type(exc).__name__
            now = time.monotonic()
            if now - self._last_failure_log >= QUERY_FAILURE_LOG_EVERY:
                self._last_failure_log = now
                logger.warning("embedding a search query (%s) failed: %s; searches are lexical until it works",
                               self.worker.label, reason)
            return None, reason
        return QueryVector(self.embedder.name, vector), None

    async def search(self, journal: Store, agent_id: str, user: str, query: str, limit: int, *, since_seq: int = 0,
                     legs: Sequence[str] | None = None, said: bool = False) -> SearchResult:
        """`legs` of the search (both when None) over (agent_id, user)'s memory. Without the query's vector the
        lexical leg runs alone, or `SearchUnavailable` if only the semantic one was asked for. With `said`, the
        query is the message the user is saying: its vector goes to the worker, to be stored for it."""
        lexical = legs is None or LEXICAL in legs
        if legs is not None and SEMANTIC not in legs:
            return await journal.read(lambda log: search_memory(log, agent_id, user, query, limit, since_seq=since_seq))
        vector, why = await self.query_vector(query)
        if vector is None:
            if not lexical:
                raise SearchUnavailable(f"the semantic search failed: {why}")
            return await journal.read(lambda log: search_memory(log, agent_id, user, query, limit, since_seq=since_seq))
        if said:
            self.worker.expect(agent_id, user, query, vector.vector)
        return await journal.read(lambda log: search_memory(log, agent_id, user, query, limit, since_seq=since_seq,
                                                            semantic=vector, lexical=lexical))
