"""The journal's writer thread: what waits for it, and what may stop waiting.

Imports trio, actors and store; stand-ins for the event log block where a real commit could hang.
"""
from __future__ import annotations

import threading

import pytest
import trio

from agentcast.actors import Journal
from support import scaled


class _StuckWriter:
    """An EventLog stand-in whose commit blocks (a stalled fsync, a foreign write lock) until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.in_commit = threading.Event()
        self.committed = threading.Event()  # the stuck commit has returned

    def append(self, batches, snapshots=()):
        self.in_commit.set()
        self.release.wait(scaled(30))
        self.committed.set()
        return [[] for _ in batches]

    def check_writable(self, wait=0.25):
        return None


@pytest.mark.process
async def test_check_writable_can_be_timed_out_while_a_commit_is_stuck():
    """/healthz bounds its check with a timeout ("the database did not answer in time"): the wait for
    the writer thread, behind a commit that hangs, must give way to it (the check is abandoned)."""
    writer = _StuckWriter()
    journal = Journal(writer, lambda: None)
    timer = threading.Timer(scaled(60), writer.release.set)  # so that the test ends even when it fails
    timer.start()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            nursery.start_soon(journal.append, [])
            await trio.to_thread.run_sync(writer.in_commit.wait, scaled(5))
            with trio.move_on_after(0.2) as check:
                await journal.check_writable(0.01)
            # The caller's timeout ended the wait while the commit was still stuck (not the commit's end).
            still_stuck = not writer.committed.is_set()
            writer.release.set()
            nursery.cancel_scope.cancel()
        assert check.cancelled_caught and still_stuck, "check_writable waited for the stuck commit"
    finally:
        timer.cancel()
        writer.release.set()


async def test_an_append_the_store_cannot_write_fails_alone_not_the_others_in_its_commit(tmp_path):
    """Group commit puts many lanes' appends in one transaction; one that SQLite refuses (here text with a
    lone surrogate, which it cannot bind) must not take the others down with it."""
    from agentcast.store import AgentAnswered, EventLog, UserSaid

    path = tmp_path / "a.db"
    log = EventLog.open(path)
    outcome = {}

    async def append(name, events):
        try:
            await journal.append(events)
            outcome[name] = "ok"
        except Exception as exc:
            outcome[name] = type(exc).__name__

    try:
        journal = Journal(log, lambda: EventLog.open(path, readonly=True))
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            async with trio.open_nursery() as lanes:  # queued in the same pass: one commit
                lanes.start_soon(append, "alice", [UserSaid("agent", "alice", "2024-01-01T00:00:00Z", "hello")])
                lanes.start_soon(append, "bob", [AgentAnswered("agent", "bob", "2024-01-01T00:00:00Z", "bad \ud800")])
                lanes.start_soon(append, "carol", [UserSaid("agent", "carol", "2024-01-01T00:00:00Z", "hi")])
            nursery.cancel_scope.cancel()
        assert outcome == {"alice": "ok", "bob": "UnicodeEncodeError", "carol": "ok"}
        logged = list(log.read())  # trio starts the three in no fixed order
        assert sorted(r.event.user for r in logged) == ["alice", "carol"] and [r.seq for r in logged] == [1, 2]
    finally:
        log.close()


async def test_failing_holds_the_stores_reason_from_a_failed_append_until_one_succeeds(tmp_path):
    """What /healthz reports: set by a commit that logged nothing, cleared by one that logged something
    (a commit where one append failed alone and others were logged clears it: the database takes writes)."""
    from agentcast.store import EventLog, UserSaid

    path = tmp_path / "a.db"
    log = EventLog.open(path)
    good = [UserSaid("agent", "alice", "2024-01-01T00:00:00Z", "hello")]
    bad = [UserSaid("agent", "bob", "2024-01-01T00:00:00Z", "bad \ud800")]

    async def append(events):
        try:
            await journal.append(events)
        except UnicodeEncodeError:
            pass

    try:
        journal = Journal(log, lambda: EventLog.open(path, readonly=True))
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            assert journal.failing is None
            await append(bad)
            assert journal.failing is not None and "surrogate" in journal.failing
            await append(bad)
            assert "surrogate" in journal.failing
            async with trio.open_nursery() as lanes:  # one commit: bob's fails alone, alice's is logged
                lanes.start_soon(append, bad)
                lanes.start_soon(append, good)
            assert journal.failing is None and log.last_seq() == 1
            await append(bad)
            await journal.save_snapshot(await journal.read(lambda r: r.memory("agent", "alice")))
            assert journal.failing is None  # a snapshot committed: writes go through
            nursery.cancel_scope.cancel()
    finally:
        log.close()
