"""The outbound queue of one connection (`FrameOutbox`) and the server-wide bound on all of them (`OutboxBudget`).

Owns the frames queued for a client, encoded, and their bounds counted in bytes: what is queued or being
written, per connection and for the whole server; the holds that keep the writer waiting; the wake-ups of
the writer task and of those waiting for room. No I/O: the connection writes what it takes from here.
Imports trio (to park the writer) and the protocol; must not import trio-websocket, the actors or the store.
"""
from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

import outcome
import trio

from . import protocol as p
from ._settings import ServerSettings

#: Bytes counted for each queued frame beyond its encoded JSON: what holding it costs (a bytes object's
#: header, the queue's slot) and its WebSocket header; so that many tiny frames count too.
FRAME_OVERHEAD = 64

#: The queue holds each frame as its UTF-8 JSON (`protocol.encode_utf8`), or a run of chunks still open to
#: merging (`protocol.ChunkRun`, only ever the last entry while it is open).
Entry = bytes | p.ChunkRun


def counted(entry: Entry) -> int:
    """Bytes an entry of the queue counts for (`FRAME_OVERHEAD` included)."""
    return (len(entry) if type(entry) is bytes else entry.size) + FRAME_OVERHEAD  # type: ignore[union-attr]


class Holder(Protocol):
    """What the budget closes to make room: a connection, with the bytes its queue holds."""

    @property
    def held_bytes(self) -> int: ...

    def evict(self) -> None: ...


class OutboxBudget:
    """The bytes held by the outbound queues of all of a server's connections (queued or being written),
    and the cap on them (`outbox_bytes_total`). Owned by the server, shared by its connections.

    A frame that would take the total past the cap first closes (1013, their queues dropped) the
    connections that hold the most, until the total is at most TRIM_TO of the cap: one client or a
    few that stop reading cannot make the server hold more than the cap, however many connections they
    open; and since trimming goes that far below the cap, the scan it takes runs once per quarter of the cap.
    """

    __slots__ = ("cap", "held", "connections")

    #: How far a trim takes the total down, as a fraction of the cap.
    TRIM_TO = 0.75

    def __init__(self, cap: int, connections: Collection[Holder] = ()) -> None:
        #: The most bytes all queues may hold together.
        self.cap = cap
        #: The bytes they hold now.
        self.held = 0
        #: The connections to close when the total would pass the cap (the server's open connections).
        self.connections = connections

    def make_room(self, size: int) -> None:
        """Close the connections holding the most until `size` more bytes fit under the cap, and the total
        is at most TRIM_TO of it (or no connection holds anything that closing it would free at once)."""
        target = min(self.cap - size, int(self.cap * self.TRIM_TO))
        holders = sorted((c for c in self.connections if c.held_bytes), key=_held_bytes, reverse=True)
        for conn in holders:
            if self.held <= target:
                break
            conn.evict()


def _held_bytes(conn: Holder) -> int:
    return conn.held_bytes


class FrameOutbox:
    """A connection's outbound queue: encoded frames, bounded in frames (`outbox_size`) and in bytes
    (`outbox_bytes`: each frame's UTF-8 plus `FRAME_OVERHEAD`, counted from `put` until `written`, also in
    the server's `OutboxBudget`), taken by one writer task.

    `put` refuses (returns False) a frame past a bound: the client is not reading, and its connection
    closes it. `hold`/`release` keep the writer from taking the queue meanwhile, so that what is queued
    between goes out in one write. Once `close`d the queue takes no more frames; the writer still takes what
    is queued unless it was dropped (`drop`).
    """

    __slots__ = ("_entries", "held_bytes", "budget", "_settings", "_writer", "_drained", "_holds", "closed", "_kept")

    def __init__(self, settings: ServerSettings, budget: OutboxBudget) -> None:
        #: The frames not yet taken by the writer (None while empty).
        self._entries: list[Entry] | None = None
        #: Bytes counted for the frames queued or being written (`counted`), also in `budget.held`.
        self.held_bytes = 0
        self.budget = budget
        self._settings = settings
        self._writer: trio.lowlevel.Task | None = None  # the writer, while it waits for frames
        #: Set (and dropped) each time the writer takes queued frames; made only when someone waits for room.
        self._drained: trio.Event | None = None
        self._holds = 0  # `hold`s not yet released: `put` does not wake the writer meanwhile
        #: True once the connection is closing or gone: the queue takes no more frames.
        self.closed = False
        #: Bytes counted for the rest of a frame written directly (`kept`), until the writer has written it.
        self._kept = 0

    @property
    def queued(self) -> list[Entry]:
        """The frames not yet taken by the writer (a list the queue keeps: read it, do not change it)."""
        return self._entries if self._entries is not None else []

    # -- queueing ------------------------------------------------------------------------------

    def put(self, frame: p.ServerFrame | p.AgentList) -> bool:
        """Queue `frame`, encoded; False if it would pass the queue's bounds (the frame is not queued: the
        client is not reading). A closed queue drops the frame (True: nothing more to do).

        A `response_chunk` right behind another of the same turn joins its run (one frame,
        `protocol.ChunkRun`). A frame bigger than `outbox_bytes` alone is taken while nothing else is held.
        Past the server's `outbox_bytes_total`, the connections holding the most are closed first
        (`OutboxBudget.make_room`); if that closes this one, the frame is dropped with its queue."""
        if self.closed:
            return True  # closing or gone; what it missed is in the log
        entries = self._entries
        run = None
        entry: Entry
        if type(frame) is p.ResponseChunk:
            last = entries[-1] if entries is not None else None
            if type(last) is p.ChunkRun and last.continued_by(frame):
                run, entry = last, p.json_text(frame.delta)
                size = len(entry)
            else:
                entry = p.ChunkRun(frame)
                size = entry.size + FRAME_OVERHEAD
        else:
            entry = p.encode_utf8(frame)  # type: ignore[arg-type]  # (ServerFrame includes AgentList: see protocol.py)
            size = len(entry) + FRAME_OVERHEAD
        held = self.held_bytes
        settings = self._settings
        if (run is None and entries is not None and len(entries) >= settings.outbox_size
                or held and held + size > settings.outbox_bytes):
            return False
        budget = self.budget
        if budget.held + size > budget.cap:
            budget.make_room(size)
            if self.closed:
                return True  # this connection held the most: closed, its queue dropped
        if run is not None:
            run.add(entry)  # type: ignore[arg-type]
        elif entries is None:
            self._entries = [entry]
        else:
            entries.append(entry)
        self.held_bytes += size
        budget.held += size
        if not self._holds:
            self._wake_writer()
        return True

    def idle(self) -> bool:
        """True while the writer waits with nothing to write: nothing is queued, held, being written or
        kept, and the queue is open. Then a frame may be written at once by whoever has it (`kept`), and
        still comes after everything queued before it and before everything queued after it."""
        return self._writer is not None and self._entries is None and not self._holds and not self.closed

    def kept(self, size: int) -> None:
        """A frame written directly while the queue was `idle` left `size` bytes the socket did not take,
        kept by the stream for the writer to write before anything else: counted in the bounds (with
        `FRAME_OVERHEAD`) until then; the writer is woken to write them."""
        size += FRAME_OVERHEAD
        budget = self.budget
        self._kept += size
        self.held_bytes += size
        budget.held += size
        if budget.held > budget.cap:
            budget.make_room(0)
        self._wake_writer()

    def hold(self) -> None:
        """Keep queued frames from the writer until a `release`. A close does not wait for it."""
        self._holds += 1

    def release(self) -> None:
        """End one `hold`. The writer then takes the queue even if other holds remain: a frame waits
        for one holder at most."""
        self._holds -= 1
        writer = self._writer
        if writer is not None and self._entries is not None:
            self._writer = None
            trio.lowlevel.reschedule(writer, outcome.Value(True))  # others wake it with None

    def release_taking(self, piece: int) -> tuple[list[Entry], int] | None:
        """End one `hold` as `release` does, but where `release` would wake a writer that waits with nothing
        kept, to take at most `piece` bytes of frames, take them here instead, for the caller to write at once
        (the frames, and the bytes they count: held until `written`). None if there was nothing to take so
        (the writer is busy, and takes them when it comes back; or it was woken as by `release`)."""
        self._holds -= 1
        writer, entries = self._writer, self._entries
        if writer is None or entries is None:
            return None
        if self._kept or self.closed or self.held_bytes > piece:
            self._writer = None
            trio.lowlevel.reschedule(writer, outcome.Value(True))
            return None
        self._entries = None
        self._wake_room()
        return entries, self.held_bytes

    # -- the writer's side ------------------------------------------------------------------------

    async def take(self, piece: int, more: bool) -> tuple[list[Entry], int, bool] | None:
        """Wait for frames (and while the queue is held, for a release too, unless `more`: the last take
        left frames queued); take them: the frames, the bytes they count (still held until `written`), and
        whether frames were left queued. A direct write's rest (`kept`) is taken at once, held or not, with
        the frames queued (maybe none): the stream writes it before them. At most about `piece` bytes of
        frames are taken at once (at least one frame). None once the queue is closed and drained (or dropped).

        One task at a time may take (the connection's writer)."""
        released = more
        while not self._kept and (self._entries is None or (self._holds and not released and not self.closed)):
            if self._entries is None and self.closed:
                return None
            self._writer = trio.lowlevel.current_task()
            released = await trio.lowlevel.wait_task_rescheduled(self._abort_wait)
        # A direct write's rest (`kept`) goes first, whatever holds the queue; the stream writes it before the frames.
        kept, self._kept = self._kept, 0
        frames = self._entries
        taken = self.held_bytes  # nothing is being written now: all of it is queued (or kept)
        if frames is None:
            frames, more = [], False
        elif taken <= piece:
            self._entries = None
            more = False
        else:
            frames, taken = self._take_piece(frames, piece)
            taken += kept
            more = self._entries is not None
        self._wake_room()
        return frames, taken, more

    def _take_piece(self, entries: list[Entry], piece: int) -> tuple[list[Entry], int]:
        """Take the first frames of the queue, about `piece` bytes of them (at least one); and the bytes they count."""
        size = 0
        n = 0
        for n, entry in enumerate(entries, 1):
            size += counted(entry)
            if size >= piece:
                break
        if n == len(entries):
            self._entries = None
            return entries, size
        taken = entries[:n]
        del entries[:n]
        return taken, size

    def written(self, size: int) -> None:
        """`size` bytes the writer took are written: no longer held."""
        self._release_bytes(size)
        self._wake_room()

    # -- room -------------------------------------------------------------------------------------

    def crowded(self) -> bool:
        """True while the queue is more than half full (in frames or in bytes) and not closed."""
        if self.closed:
            return False
        frames = len(self._entries) if self._entries is not None else 0
        settings = self._settings
        return frames * 2 > settings.outbox_size or self.held_bytes * 2 > settings.outbox_bytes

    async def wait_for_room(self) -> None:
        """Return once the queue is not `crowded` (the writer took frames, or it closed). Not bounded in time."""
        while self.crowded():
            if self._drained is None:
                self._drained = trio.Event()
            await self._drained.wait()

    # -- the end ----------------------------------------------------------------------------------

    def close(self, *, drop: bool) -> None:
        """Take no more frames; with `drop`, drop those queued (not those being written: they count until
        written). Wakes the writer (it ends once drained) and whoever waits for room."""
        self.closed = True
        if drop:
            self.drop()
        self._wake_writer()
        self._wake_room()

    def drop(self) -> None:
        """Drop the frames not yet taken by the writer (what it is writing stays counted until written)."""
        entries = self._entries
        if entries is not None:
            self._entries = None
            self._release_bytes(sum(counted(entry) for entry in entries))

    def end(self) -> None:
        """The writer has ended: closed, and nothing is held any more (queued or taken)."""
        self.closed = True
        self._entries = None
        self._kept = 0
        self._release_bytes(self.held_bytes)
        self._wake_writer()
        self._wake_room()

    def _release_bytes(self, size: int) -> None:
        """`size` bytes counted in the queue are no longer held (written or dropped)."""
        self.held_bytes -= size
        self.budget.held -= size

    # -- wake-ups -----------------------------------------------------------------------------------

    def _wake_room(self) -> None:
        drained = self._drained
        if drained is not None:
            self._drained = None
            drained.set()

    def _wake_writer(self) -> None:
        writer = self._writer
        if writer is not None:
            self._writer = None
            trio.lowlevel.reschedule(writer)

    def _abort_wait(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._writer = None
        return trio.lowlevel.Abort.SUCCEEDED
