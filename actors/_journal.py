"""`Journal`: the trio front of the recorder (`store.Recorder`). Group commit for appends, a pool of reader threads.

SQLite work runs in worker threads, never on the event loop. Must not import `transport`.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio

from ..store import Event, Memory, Recorded, Recorder

T = TypeVar("T")


class _Pending:
    """One append (or snapshot) waiting for its commit: the task parked on it is rescheduled with the outcome."""

    __slots__ = ("events", "snapshot", "task", "result", "error")

    def __init__(self, events: Sequence[Event], snapshot: Memory | None, task: trio.lowlevel.Task) -> None:
        self.events = events
        self.snapshot = snapshot
        self.task = task
        self.result: list[Recorded] | None = None
        self.error: BaseException | None = None


def _uncancellable(_: Any) -> trio.lowlevel.Abort:
    """The abort function of a wait that must see its outcome (as if shielded): refuse to abort."""
    return trio.lowlevel.Abort.FAILED


class _Job:
    """`fn(*args)` for the writer thread; `done(job)` is then called on the event loop."""

    __slots__ = ("fn", "args", "done", "task", "result", "error")

    def __init__(self, fn: Callable[..., Any], args: tuple, done: Callable[["_Job"], None], task: Any = None) -> None:
        self.fn = fn
        self.args = args
        self.done = done
        self.task = task  # a task waiting in `run_sync`, or what `done` needs
        self.result: Any = None
        self.error: BaseException | None = None


class _WriterThread:
    """The one thread that runs the writer's SQLite work, job after job, for the life of `Journal.run`.

    A long-lived thread fed by a queue costs the event loop less per commit than `trio.to_thread`
    (no thread cache, limiter, cancel scope or reporting task): the job's outcome comes back with one
    `run_sync_soon` of its `done` callback (which reschedules the waiting tasks).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._work, name="agentcast journal writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.result = job.fn(*job.args)
            except BaseException as exc:  # handed to whoever waits for the job, which raises it
                job.error = exc
            self._token.run_sync_soon(job.done, job)

    def submit(self, job: _Job) -> None:
        """Queue `job`; its `done` runs on the event loop once it has run."""
        self._jobs.put(job)

    async def run_sync(self, fn: Callable[..., T], *args: Any, abandon_on_cancel: bool = False) -> T:
        """`fn(*args)` in the writer thread; waits for it whatever happens (it cannot be cancelled midway).

        With `abandon_on_cancel` (for a job whose outcome nobody must see, such as a health check), a
        cancelled caller stops waiting at once; the job still runs in its turn and its outcome is dropped.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        job = _Job(fn, args, _reschedule_waiter, trio.lowlevel.current_task())
        self._jobs.put(job)

        def abandon(_: Any) -> trio.lowlevel.Abort:
            job.task = None  # `_reschedule_waiter` then has no one to wake
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abandon if abandon_on_cancel else _uncancellable)
        if job.error is not None:
            error, job.error = job.error, None
            try:
                raise error
            finally:
                del error
        return job.result

    def stop(self) -> None:
        """Let the thread end once the jobs queued before are done."""
        self._jobs.put(None)


def _reason(error: BaseException | None) -> str:
    """What a failed commit tells an operator: the store's message (SQLite's "database or disk is full")."""
    return str(error) or type(error).__name__


def _reschedule_waiter(job: _Job) -> None:
    if job.task is not None:  # None: its waiter was cancelled and abandoned it
        trio.lowlevel.reschedule(job.task)


class Journal:
    """Appends events with group commit and runs reads off the event loop.

    Every `append` waiting while a commit is in flight joins the next one: many lanes
    share one transaction (one fsync) instead of paying one each. `run` must be running
    in a nursery for appends to complete.
    """

    def __init__(self, writer: Recorder, open_reader: Callable[[], Recorder], readers: int = 2) -> None:
        self._writer = writer
        self._open_reader = open_reader
        self._readers: list[Recorder] = []
        self._reader_slots = trio.CapacityLimiter(readers)
        self._queue: list[_Pending] = []
        self._wakeup = trio.Event()
        self._thread: _WriterThread | None = None  # while `run` runs
        self._in_flight = False  # a commit is on the writer thread
        self._settled: trio.Event | None = None  # set after each commit while `run` winds down
        self._closed = False
        self.commits = 0
        self.events_appended = 0
        #: Why appends fail (the store's message), from an append that failed until one succeeds; None while
        #: they succeed. A failed commit sets it, a commit that logged something clears it (for /healthz).
        self.failing: str | None = None
        #: Called on the event loop with the events of each commit (see `watch`).
        self._watchers: list[Callable[[Sequence[Recorded]], None]] = []

    def watch(self, callback: Callable[[Sequence[Recorded]], None]) -> None:
        """Call `callback(recorded)` on the event loop after each commit, with the events it logged (one call
        per append, in commit order), before the appends that waited for it return. It must be quick and must
        not raise (an embedding worker notes the messages to embed and the clears that forget some)."""
        self._watchers.append(callback)

    async def write(self, fn: Callable[[Recorder], T]) -> T:
        """Run `fn(writer)` on the writer thread, between group commits (the recorder's writes other than
        appends: an embedding worker's vectors); returns its result or raises its exception. The wait cannot
        be cancelled midway: once queued, it runs, and its outcome is known."""
        if self._closed or self._thread is None:
            raise RuntimeError("the journal is closed")
        return await self._thread.run_sync(fn, self._writer)

    async def append(self, events: Sequence[Event]) -> list[Recorded]:
        """Append `events` (consecutive sequence numbers); returns once they are committed.

        Raises what the store raised if the commit failed (nothing of it is then in the log).
        """
        return await self._enqueue(events, None)

    async def save_snapshot(self, memory: Memory) -> None:
        """Save `memory` as its (agent, user)'s snapshot, with the next group commit."""
        await self._enqueue((), memory)

    async def check_writable(self, wait: float = 0.25) -> None:
        """Raise unless the writer can take the database's write lock (see `Recorder.check_writable`).

        Runs in a worker thread between group commits (it waits for one in flight), never on the event loop.
        """
        if self._closed or self._thread is None:
            raise RuntimeError("the journal is closed")
        await self._thread.run_sync(self._writer.check_writable, wait, abandon_on_cancel=True)

    async def _enqueue(self, events: Sequence[Event], snapshot: Memory | None) -> list[Recorded]:
        if self._closed:
            raise RuntimeError("the journal is closed")
        pending = _Pending(events, snapshot, trio.lowlevel.current_task())
        self._queue.append(pending)
        if not self._in_flight:  # else it goes with the next commit, started when this one is done
            self._wakeup.set()
        # Once queued, the outcome must be known: the wait cannot be cancelled (as if shielded);
        # `_committed` reschedules this task once it has set the recorded events or the store's error.
        await trio.lowlevel.wait_task_rescheduled(_uncancellable)
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit queued appends, each round as one transaction, until cancelled; then close readers."""
        self._thread = _WriterThread()
        task_status.started()
        try:
            while True:
                # Woken by an append while no commit is in flight: by now (the next pass of the run
                # loop) every append of this pass is queued, and they go together. Appends that arrive
                # during a commit go with the next one, which `_committed` starts at once.
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                if self._queue and not self._in_flight:
                    self._dispatch()
        finally:
            self._closed = True
            with trio.CancelScope(shield=True):
                if self._queue and not self._in_flight:  # queued as we were cancelled: still answered
                    self._dispatch()
                while self._in_flight:
                    self._settled = trio.Event()
                    await self._settled.wait()
                self._thread.stop()
                self._thread = None
                for reader in self._readers:
                    reader.close()
                self._readers.clear()

    def _dispatch(self) -> None:
        """Commit everything queued as one transaction, on the writer thread."""
        assert self._thread is not None
        batch, self._queue = self._queue, []
        self._in_flight = True
        self._thread.submit(_Job(self._commit, (batch,), self._committed, batch))

    def _commit(self, batch: list[_Pending]) -> Sequence[list[Recorded] | Exception]:
        """In the writer thread: `batch` as one transaction. If that fails and it held several appends,
        each is tried again in a transaction of its own, so that an append the store cannot write (text
        SQLite cannot bind, say) fails alone instead of failing every lane's append in its commit."""
        try:
            return self._writer.append([p.events for p in batch], [p.snapshot for p in batch if p.snapshot is not None])
        except Exception:
            if len(batch) == 1:
                raise
        outcomes: list[list[Recorded] | Exception] = []
        for p in batch:
            try:
                outcomes.append(self._writer.append([p.events], [p.snapshot] if p.snapshot is not None else [])[0])
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _committed(self, job: _Job) -> None:
        """On the event loop, once a commit returned: answer its appends (the store's error, if it
        failed: then nothing of it is in the log), then start the next commit if appends are waiting."""
        batch: list[_Pending] = job.task
        self._in_flight = False
        if job.error is not None:
            self.failing = _reason(job.error)
            for p in batch:
                p.error = job.error
                trio.lowlevel.reschedule(p.task)
        else:
            self.commits += 1
            failed: Exception | None = None
            logged = False
            watchers = self._watchers
            for p, outcome in zip(batch, job.result, strict=True):
                if isinstance(outcome, Exception):  # it failed alone (see `_commit`)
                    p.error = failed = outcome
                else:
                    self.events_appended += len(outcome)
                    p.result = outcome
                    logged = True
                    if watchers:
                        for watcher in watchers:
                            watcher(outcome)
                trio.lowlevel.reschedule(p.task)
            self.failing = None if logged else _reason(failed)
        if self._queue:
            self._dispatch()
        if self._settled is not None:
            self._settled.set()

    async def read(self, fn: Callable[[Recorder], T]) -> T:
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
