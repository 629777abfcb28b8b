"""`Journal`: the trio front of the event log. Group commit for appends, a pool of reader threads.

SQLite work runs in worker threads, never on the event loop. Must not import `transport`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

from store import Event, EventLog, Memory, Recorded

T = TypeVar("T")


class _Pending:
    __slots__ = ("events", "snapshot", "done", "result", "error")

    def __init__(self, events: Sequence[Event], snapshot: Memory | None = None) -> None:
        self.events = events
        self.snapshot = snapshot
        self.done = trio.Event()
        self.result: list[Recorded] | None = None
        self.error: BaseException | None = None


class Journal:
    """Appends events with group commit and runs reads off the event loop.

    Every `append` waiting while a commit is in flight joins the next one: many lanes
    share one transaction (one fsync) instead of paying one each. `run` must be running
    in a nursery for appends to complete.
    """

    def __init__(self, writer: EventLog, open_reader: Callable[[], EventLog], readers: int = 2) -> None:
        self._writer = writer
        self._open_reader = open_reader
        self._readers: list[EventLog] = []
        self._reader_slots = trio.CapacityLimiter(readers)
        self._queue: list[_Pending] = []
        self._wakeup = trio.Event()
        self._writer_limiter = trio.CapacityLimiter(1)
        self._closed = False
        self.commits = 0
        self.events_appended = 0

    async def append(self, events: Sequence[Event]) -> list[Recorded]:
        """Append `events` (consecutive sequence numbers); returns once they are committed.

        Raises what the store raised if the commit failed (nothing of it is then in the log).
        """
        return await self._enqueue(_Pending(events))

    async def save_snapshot(self, memory: Memory) -> None:
        """Save `memory` as its (agent, user)'s snapshot, with the next group commit."""
        await self._enqueue(_Pending((), memory))

    async def check_writable(self, wait: float = 0.25) -> None:
        """Raise unless the writer can take the database's write lock (see `EventLog.check_writable`).

        Runs in a worker thread between group commits (it waits for one in flight), never on the event loop.
        """
        if self._closed:
            raise RuntimeError("the journal is closed")
        await trio.to_thread.run_sync(self._writer.check_writable, wait, limiter=self._writer_limiter)

    async def _enqueue(self, pending: _Pending) -> list[Recorded]:
        if self._closed:
            raise RuntimeError("the journal is closed")
        self._queue.append(pending)
        self._wakeup.set()
        with trio.CancelScope(shield=True):  # once queued, the outcome must be known
            await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit queued appends, each round as one transaction, until cancelled; then close readers."""
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                batch, self._queue = self._queue, []
                with trio.CancelScope(shield=True):
                    await self._commit(batch)
        finally:
            self._closed = True
            with trio.CancelScope(shield=True):
                if self._queue:  # appends queued as we were cancelled still get their answer
                    batch, self._queue = self._queue, []
                    await self._commit(batch)
                for reader in self._readers:
                    reader.close()
                self._readers.clear()

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            results = await trio.to_thread.run_sync(
                self._writer.append,
                [p.events for p in batch],
                [p.snapshot for p in batch if p.snapshot is not None],
                limiter=self._writer_limiter,
            )
        except Exception as exc:
            for p in batch:
                p.error = exc
                p.done.set()
            return
        self.commits += 1
        for p, recorded in zip(batch, results, strict=True):
            self.events_appended += len(recorded)
            p.result = recorded
            p.done.set()

    async def read(self, fn: Callable[[EventLog], T]) -> T:
        """Run `fn(reader)` on a read-only connection in a worker thread; returns its result."""
        async with self._reader_slots:
            reader = self._readers.pop() if self._readers else None
            try:
                if reader is None:
                    reader = await trio.to_thread.run_sync(self._open_reader)
                return await trio.to_thread.run_sync(fn, reader)
            finally:
                if reader is not None:
                    self._readers.append(reader)
