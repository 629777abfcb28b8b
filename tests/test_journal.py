"""The journal's writer thread: what waits for it, and what may stop waiting.

Imports trio, actors and store; stand-ins for the event log block where a real commit could hang.
"""
from __future__ import annotations

import threading

import trio

from actors import Journal


class _StuckWriter:
    """An EventLog stand-in whose commit blocks (a stalled fsync, a foreign write lock) until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.in_commit = threading.Event()

    def append(self, batches, snapshots=()):
        self.in_commit.set()
        self.release.wait(10)
        return [[] for _ in batches]

    def check_writable(self, wait=0.25):
        return None


async def test_check_writable_can_be_timed_out_while_a_commit_is_stuck():
    """/healthz bounds its check with a timeout ("the database did not answer in time"): the wait for
    the writer thread, behind a commit that hangs, must give way to it (the check is abandoned)."""
    writer = _StuckWriter()
    journal = Journal(writer, lambda: None)
    timer = threading.Timer(3.0, writer.release.set)  # so that the test ends even when it fails
    timer.start()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            nursery.start_soon(journal.append, [])
            await trio.to_thread.run_sync(writer.in_commit.wait, 5)
            start = trio.current_time()
            with trio.move_on_after(0.2):
                await journal.check_writable(0.01)
            waited = trio.current_time() - start
            writer.release.set()
            nursery.cancel_scope.cancel()
        assert waited < 1.0, f"check_writable ignored its caller's 0.2 s timeout: returned after {waited:.2f} s"
    finally:
        timer.cancel()
        writer.release.set()
