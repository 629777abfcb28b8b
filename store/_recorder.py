"""The recorder interface: what the rest of agentcast needs from a store of events, whatever the database.

`Recorder` is the narrow interface the actors, the transport and the tools use (append, read a stream,
restore a lane's memory, search, find a retried turn, snapshots, streams, the last seq, health);
`RecorderInspection` is the read side that `agentcast replay` and `replay verify` need beyond it (raw
rows, the search index, saved snapshots, the stored vectors, the database's own integrity check). Message
vectors (semantic memory) are a projection too: written by an embedding worker after the messages are
committed (`add_vectors`, fenced by a per-agent cursor), forgotten with the text they stand for. `store.EventLog` is the
SQLite implementation of both; a new backend implements them and passes tests/support/recorder_contract.py.
Only the recorder's own module touches its database connection.

Typing only (Protocols and the records they exchange). Must not import trio, `actors` or `transport`.
"""
from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol

from attrs import frozen

from ._events import Event, Recorded
from ._memory import DEFAULT_WINDOW, Memory


@frozen
class Hit:
    """A message found by a search; `score` is higher for better matches (BM25 in SQLite)."""

    seq: int
    role: str
    content: str
    at: str
    score: float


@frozen
class Fence:
    """What a writer expects the log to be when its batch is appended: `last_seq` is the newest seq of
    the stream (`agent_id`, `user`), or of the whole log when both are None (0: it holds none yet).

    A writer that is the only one allowed to append to a stream (one lane per (agent, user), on one
    node) fences its appends with the last seq it knows: if another writer appended meanwhile, the
    append is refused (`AppendConflict`) and nothing of it is written.
    """

    last_seq: int
    agent_id: str | None = None
    user: str | None = None

    def __attrs_post_init__(self) -> None:
        if (self.agent_id is None) != (self.user is None):
            raise ValueError("a fence is on a stream (agent_id and user) or on the whole log (neither)")
        if self.last_seq < 0:
            raise ValueError(f"a sequence number is never negative (got {self.last_seq})")

    def __str__(self) -> str:
        where = "the log" if self.agent_id is None else f"the stream of agent {self.agent_id!r} user {self.user!r}"
        return f"{where} ending at seq {self.last_seq}"


class AppendConflict(Exception):
    """An append whose fence did not hold: another writer appended first. Nothing of it was written."""

    def __init__(self, fence: Fence, actual: int) -> None:
        self.fence = fence
        #: The newest seq the fenced stream (or log) actually had.
        self.actual = actual
        where = "the log" if fence.agent_id is None else f"the stream of agent {fence.agent_id!r} user {fence.user!r}"
        super().__init__(f"append refused: {where} ends at seq {actual}, not at {fence.last_seq} as its writer "
                         "expected (another writer appended meanwhile); read the stream again before appending")


class StoredEvent(NamedTuple):
    """An event as stored, undecoded: what `RecorderInspection.rows` gives (its payload may be unreadable).
    A tuple, so that a scan of millions of rows can unpack them as they come."""

    seq: int
    type: str
    agent_id: str
    user: str
    at: str
    payload: str


@frozen
class SavedSnapshot:
    """A saved snapshot as stored: the memory of (agent_id, user) with `window` as of event `seq`
    (`state` is `store.memory_to_json`'s text, perhaps unreadable)."""

    agent_id: str
    user: str
    window: int
    seq: int
    state: str


@frozen
class TextToEmbed:
    """A remembered message whose vector is still to be made: what `Recorder.unembedded` gives."""

    seq: int
    agent_id: str
    user: str
    text: str


@frozen
class Unembedded:
    """The messages after a seq still to be embedded (`texts`, in seq order), and the seq the scan
    reached (`scanned_to`): every message of those agents up to it is in `texts`, or forgotten."""

    texts: tuple[TextToEmbed, ...]
    scanned_to: int


@frozen
class MessageVector:
    """The vector of message `seq` of (agent_id, user), as an embedder made it (any length: only its
    direction is kept). A zero vector stands for a message its embedder refused: it matches nothing."""

    seq: int
    agent_id: str
    user: str
    vector: object  # a sequence of floats (or a 1-D numpy array)


@frozen
class EmbeddingCursor:
    """How far the messages of `agent_id` have vectors of `model` (of `dimensions` numbers): every
    remembered message of the agent with a seq up to `seq` has exactly one, and no other has one."""

    agent_id: str
    model: str
    dimensions: int
    seq: int


@frozen
class StoredVectors:
    """The vectors stored for (agent_id, user) under `model`, undecoded: the seqs they are for, in the order
    stored (a seq twice is a fault), and what could not be read (an empty tuple if nothing)."""

    agent_id: str
    user: str
    model: str
    seqs: tuple[int, ...]
    problems: tuple[str, ...] = ()


class EmbeddingConflict(Exception):
    """Vectors written against an embedding cursor that had moved (another writer embedded the same messages
    first): nothing of that write was stored. Read the cursor again and go on from there."""

    def __init__(self, agent_id: str, model: str, expected: int, actual: int) -> None:
        self.agent_id, self.model, self.expected, self.actual = agent_id, model, expected, actual
        super().__init__(f"vectors of agent {agent_id!r} under model {model!r}: the embedding cursor is at seq "
                         f"{actual}, not at {expected} as the writer expected (another writer embedded meanwhile)")


#: What `Recorder.find_turn` finds: the user message of a chat command, and how its turn ended (its
#: answer, else the latest failed or cancelled try, else None).
FoundTurn = tuple[Recorded, Recorded | None]


class Recorder(Protocol):
    """An append-only log of events and the projections kept with it (the search index, snapshots).

    Synchronous; used by one thread at a time. Sequence numbers are 1, 2, 3, … in commit order, with
    no gaps, never reused. A reader opened on the same log sees every append committed before its read
    began. `tests/support/recorder_contract.py` is the contract every implementation passes.
    """

    def append(
        self,
        batches: Sequence[Sequence[Event]],
        snapshots: Sequence[Memory] = (),
        *,
        fences: Sequence[Fence | None] | None = None,
    ) -> list[list[Recorded]]:
        """Append every batch, in order, in one transaction; the recorded events, batch by batch.

        All or nothing: when this returns all of them are committed, when it raises none is.
        Appending a long-term `UserClearedMemory` forgets, in the same transaction: the text of every
        earlier message and turn activity of its (agent, user), their index entries, the client ids
        of their commands (`command_id`, `request_id`), its snapshots and its message vectors (their seqs and
        types stay).
        `snapshots` are saved with the events (each replaces the one of its agent, user and window).
        `fences[i]`, if given and not None, must hold just before batch `i` is appended, else
        `AppendConflict` is raised.
        """
        ...

    def check_writable(self, wait: float = 0.25) -> None:
        """Raise unless an append could start now (waiting at most `wait` seconds); writes nothing."""
        ...

    def read(
        self,
        *,
        agent_id: str | None = None,
        user: str | None = None,
        after_seq: int = 0,
        until_seq: int | None = None,
        limit: int | None = None,
    ) -> Iterator[Recorded]:
        """The recorded events with `after_seq` < seq <= `until_seq`, in seq order, of one agent and/or
        user if given, at most `limit`; raises `UndecodableEvent` at an event it cannot read. Consume it
        before the next call."""
        ...

    def memory(self, agent_id: str, user: str, *, window: int = DEFAULT_WINDOW, until_seq: int | None = None) -> Memory:
        """The memory of (agent_id, user) folded from its events up to `until_seq` (all of them if None)."""
        ...

    def restore(self, agent_id: str, user: str, *, window: int = DEFAULT_WINDOW) -> tuple[Memory, int]:
        """The current memory of (agent_id, user), from its latest snapshot for `window` plus the events
        after it; and how many events were folded onto that snapshot (all, without one, or for one worth
        saving anew), so that the caller knows when to save another."""
        ...

    def find_turn(self, agent_id: str, user: str, command_id: str) -> FoundTurn | None:
        """The logged turn of the chat command `command_id` of (agent_id, user), or None if the log holds
        none (or a long-term clear forgot it)."""
        ...

    def search(self, agent_id: str, user: str, query: str, limit: int, *, since_seq: int = 0) -> list[Hit]:
        """The best `limit` messages of (agent_id, user)'s long-term memory for `query` (text, never query
        syntax), best first, with seq >= `since_seq`. Never another (agent, user)'s."""
        ...

    def streams(self) -> list[tuple[str, str]]:
        """Every (agent_id, user) that has events, sorted."""
        ...

    # -- semantic memory: message vectors, a projection of the log that an embedding worker keeps ----------

    def embedding_cursor(self, agent_id: str, model: str) -> int:
        """The seq up to which the messages of `agent_id` have vectors of `model` (0: none yet); see
        `EmbeddingCursor`."""
        ...

    def unembedded(self, agent_ids: Collection[str], after_seq: int, limit: int) -> Unembedded:
        """At most `limit` remembered messages (user, agent and fact) of `agent_ids` with seq > `after_seq`, in
        seq order (forgotten ones are not), and how far the scan went: what an embedding worker whose cursor is
        at `after_seq` has to embed next."""
        ...

    def count_unembedded(self, agent_ids: Collection[str], after_seq: int) -> int:
        """How many remembered messages (not forgotten) of `agent_ids` have a seq above `after_seq` (what an
        embedding worker whose cursor is there has left to embed; for its progress)."""
        ...

    def add_vectors(self, model: str, dimensions: int, vectors: Sequence[MessageVector],
                    cursors: Mapping[str, tuple[int, int]]) -> int:
        """Store `vectors` (of `dimensions` numbers, made by `model`) and move each agent's embedding cursor
        (`cursors[agent_id]` = (the seq it is expected at, its new seq)), in one transaction; how many were
        stored. A vector whose message is not (any more) a remembered message of its (agent, user) — forgotten
        meanwhile by a long-term clear — is dropped. If a cursor is not where expected, nothing is stored and
        `EmbeddingConflict` is raised. Every vector's seq must be above its agent's expected cursor and at
        most its new one, and each agent's messages in that range must all be given (that is the cursor's
        promise)."""
        ...

    def drop_vectors(self, agent_id: str, *, keep_model: str | None = None) -> int:
        """Delete the vectors and embedding cursors of `agent_id` under every model but `keep_model` (a model
        change: they are not comparable with the new model's); how many vectors went."""
        ...

    def nearest(self, agent_id: str, user: str, model: str, vector: Sequence[float], limit: int, *,
                since_seq: int = 0, centred: bool = False) -> list[Hit]:
        """The `limit` messages of (agent_id, user) whose `model` vectors are closest to `vector` by cosine
        (the score), best first, with seq >= `since_seq`. With `centred`, the cosines are taken after the mean
        of the (agent, user)'s vectors is subtracted from each and from `vector` (what all of a memory shares
        then stops counting), if it has at least `store._vectors.CENTRE_FROM` vectors. Never another (agent,
        user)'s. A vector of zeros (a message its embedder refused) is never among them."""
        ...


    def last_seq(self) -> int:
        """The seq of the newest event, 0 for an empty log."""
        ...

    def storage_bytes(self) -> int:
        """Bytes the log takes in its storage (for the metrics)."""
        ...

    def snapshot(self) -> AbstractContextManager[object]:
        """Within this block, every read sees the log as of one moment."""
        ...

    def close(self) -> None:
        """Release the log; further calls fail."""
        ...


class RecorderInspection(Recorder, Protocol):
    """The read side that `agentcast replay` and `replay verify` need beyond `Recorder`."""

    #: Where the log is, as a person names it (a file's path).
    path: str

    def rows(
        self,
        *,
        agent_id: str | None = None,
        user: str | None = None,
        after_seq: int = 0,
        until_seq: int | None = None,
        types: Collection[str] | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> Iterator[StoredEvent]:
        """The stored events, undecoded, with `after_seq` < seq <= `until_seq` (of one agent and/or user,
        of these types), in seq order (newest first if `descending`), at most `limit`."""
        ...

    def first_seq(self) -> int:
        """The seq of the oldest event, 0 for an empty log."""
        ...

    def indexed_seqs(self, agent_id: str, user: str) -> set[int]:
        """The seqs of the messages of (agent_id, user) that the search index holds."""
        ...

    def index_size(self) -> int:
        """How many messages the search index holds, of every (agent, user)."""
        ...

    def saved_snapshots(self) -> list[SavedSnapshot] | None:
        """Every saved snapshot, by agent, user and window; None for a log that has no place for them."""
        ...

    def embedding_cursors(self) -> list[EmbeddingCursor]:
        """Every embedding cursor, by agent and model."""
        ...

    def stored_vectors(self) -> Iterator[StoredVectors]:
        """The vectors stored, per (agent, user, model), undecoded enough to name their seqs; consume it
        before the next call."""
        ...

    def integrity_problems(self) -> list[str]:
        """What the database's own check finds wrong with its storage (nothing: an empty list)."""
        ...
