"""A connection's outbound queue alone (`transport._outbox.FrameOutbox`, no socket): its bounds count each
frame's UTF-8 bytes plus a fixed overhead until it is written, for the connection and for the whole server;
holds keep the writer waiting until a release, and every release lets the queue go."""
from __future__ import annotations

import pytest
import trio
import trio.testing

from agentcast.transport import protocol as p
from agentcast.transport._outbox import FRAME_OVERHEAD, FrameOutbox, OutboxBudget
from agentcast.transport._settings import ServerSettings

EMOJI = "\U0001F600"


def size_of(frame) -> int:
    return len(p.encode_utf8(frame)) + FRAME_OVERHEAD


def outbox(*, frames: int = 1024, bytes_: int = 1 << 20, budget: OutboxBudget | None = None) -> FrameOutbox:
    settings = ServerSettings(outbox_size=frames, outbox_bytes=bytes_)
    return FrameOutbox(settings, budget if budget is not None else OutboxBudget(settings.outbox_bytes_total))


class Holder:
    """A connection as the budget sees it: closing it drops its queue."""

    def __init__(self, queue: FrameOutbox) -> None:
        self.queue = queue
        self.evicted = False

    @property
    def held_bytes(self) -> int:
        return self.queue.held_bytes

    def evict(self) -> None:
        self.evicted = True
        self.queue.close(drop=True)


def test_the_bytes_bound_counts_utf8_as_encoded_and_the_overhead_of_each_frame():
    frames = [p.Pong("\x01" * 40), p.Pong(EMOJI * 64), p.Pong("é" * 128), p.Pong("plain")]
    queue = outbox(bytes_=sum(size_of(f) for f in frames))
    assert all(queue.put(f) for f in frames)
    assert queue.held_bytes == queue.budget.held == sum(size_of(f) for f in frames)
    assert size_of(frames[0]) - FRAME_OVERHEAD > 40 * 6  # "\u0001" is 6 bytes of JSON: counted as sent
    assert not queue.put(p.Pong(""))  # one byte past the bound: refused, nothing counted
    assert len(queue.queued) == 4 and queue.held_bytes == sum(size_of(f) for f in frames)


def test_the_frames_bound_and_a_frame_bigger_than_the_bytes_bound_alone():
    queue = outbox(frames=3, bytes_=100)
    big = p.Pong("x" * 500)
    assert queue.put(big)  # nothing else held: taken
    assert not queue.put(p.Pong("y"))  # anything more passes the bytes bound
    queue = outbox(frames=3)
    assert all(queue.put(p.Pong(str(n))) for n in range(3))
    assert not queue.put(p.Pong("3"))


def test_chunks_of_one_turn_merge_into_one_frame_counted_exactly():
    queue = outbox(frames=2)
    queue.put(p.ResponseChunk("a", "Hel", "r"))
    queue.put(p.ResponseChunk("a", "lo ☕", "r"))  # joins the run: not a frame more
    queue.put(p.ResponseChunk("b", "other", "r"))
    assert not queue.put(p.Pong("r"))  # two frames queued: the bound
    assert queue.put(p.ResponseChunk("b", " agent", "r"))  # a run grows past the frames bound
    merged = [p.ResponseChunk("a", "Hello ☕", "r"), p.ResponseChunk("b", "other agent", "r")]
    assert [e.encode() for e in queue.queued] == [p.encode_utf8(f) for f in merged]
    assert queue.held_bytes == sum(size_of(f) for f in merged)


def test_past_the_servers_cap_the_queues_holding_the_most_are_dropped_first():
    pong = size_of(p.Pong("r" * 200))
    budget = OutboxBudget(100 * pong)
    big, small = Holder(outbox(budget=budget)), Holder(outbox(budget=budget))
    budget.connections = [big, small]
    for _ in range(60):
        big.queue.put(p.Pong("r" * 200))
    for _ in range(40):
        small.queue.put(p.Pong("r" * 200))
    assert budget.held == 100 * pong and not big.evicted
    assert small.queue.put(p.Pong("r" * 200))
    assert big.evicted and not small.evicted and big.queue.held_bytes == 0 and budget.held == 41 * pong
    # When the queue taking the frame is the one that holds the most, the frame goes with its queue.
    budget.connections = [small]
    for _ in range(59):  # 100 pongs: at the cap
        small.queue.put(p.Pong("r" * 200))
    assert not small.evicted
    assert small.queue.put(p.Pong("r" * 200))
    assert small.evicted and small.queue.closed and budget.held == 0 and not small.queue.queued


async def test_the_writer_takes_everything_queued_at_once_and_the_bytes_count_until_written():
    queue = outbox()
    for n in range(3):
        queue.put(p.Pong(str(n)))
    frames, size, more = await queue.take(piece=1 << 16, more=False)
    assert [f for f in frames] == [p.encode_utf8(p.Pong(str(n))) for n in range(3)] and not more
    assert not queue.queued and queue.held_bytes == queue.budget.held == size == 3 * size_of(p.Pong("0"))
    queue.written(size)
    assert queue.held_bytes == queue.budget.held == 0


async def test_more_than_a_piece_is_taken_a_piece_at_a_time():
    queue = outbox()
    for n in range(10):
        queue.put(p.Pong(f"{n:03d}"))
    one = size_of(p.Pong("000"))
    frames, size, more = await queue.take(piece=3 * one, more=False)
    assert len(frames) == 3 and size == 3 * one and more
    assert len(queue.queued) == 7 and queue.held_bytes == 10 * one  # taken but not written: still counted


async def test_a_held_queue_waits_for_a_release_and_every_release_lets_it_go(autojump_clock):
    queue = outbox()
    taken = []

    async def writer():
        more = False
        while (batch := await queue.take(piece=1 << 16, more=more)) is not None:
            frames, size, more = batch
            taken.append([bytes(f) if type(f) is bytes else f.encode() for f in frames])
            queue.written(size)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        queue.hold()
        queue.put(p.Pong("a"))
        queue.hold()  # a second holder (another lane)
        queue.put(p.Pong("b"))
        await trio.testing.wait_all_tasks_blocked()
        assert taken == []  # held
        queue.release()  # one of two holds released: the queue goes anyway
        await trio.testing.wait_all_tasks_blocked()
        assert taken == [[p.encode_utf8(p.Pong("a")), p.encode_utf8(p.Pong("b"))]]
        queue.put(p.Pong("c"))  # still held by the other: waits for its release
        await trio.testing.wait_all_tasks_blocked()
        assert len(taken) == 1
        queue.close(drop=False)  # a close does not wait for holds: what is queued is drained, then the writer ends
    assert taken[1:] == [[p.encode_utf8(p.Pong("c"))]]
    assert queue.held_bytes == 0
    assert queue.put(p.Pong("late")) and not queue.queued  # closed: the frame is dropped, not refused


async def test_a_dropped_queue_ends_the_writer_and_frees_its_bytes():
    queue = outbox()
    queue.hold()
    queue.put(p.Pong("a"))
    queue.close(drop=True)
    assert queue.held_bytes == queue.budget.held == 0
    assert await queue.take(piece=1 << 16, more=False) is None


async def test_room_is_waited_for_until_the_writer_takes_frames(autojump_clock):
    queue = outbox(frames=4)
    for n in range(3):
        queue.put(p.Pong(str(n)))
    assert queue.crowded()  # more than half of the frames bound
    waited = trio.Event()

    async def wait():
        await queue.wait_for_room()
        waited.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert not waited.is_set()
        await queue.take(piece=1 << 16, more=False)
    assert waited.is_set() and not queue.crowded()


@pytest.mark.parametrize("bound", ["frames", "bytes"])
def test_crowded_is_past_half_of_either_bound_and_never_once_closed(bound):
    pong = size_of(p.Pong("x"))
    queue = outbox(frames=4, bytes_=1 << 20) if bound == "frames" else outbox(bytes_=4 * pong)
    queue.put(p.Pong("x"))
    queue.put(p.Pong("x"))
    assert not queue.crowded()
    queue.put(p.Pong("x"))
    assert queue.crowded()
    queue.close(drop=False)
    assert not queue.crowded()


async def test_a_direct_writes_rest_counts_until_written_and_is_taken_first_even_while_held():
    queue = outbox()
    taken: list = []

    async def writer():
        while (got := await queue.take(1 << 20, False)) is not None:
            taken.append(got)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert queue.idle()
        queue.hold()
        assert not queue.idle()
        queue.kept(100)  # a frame written directly left 100 bytes for the writer
        assert queue.held_bytes == queue.budget.held == 100 + FRAME_OVERHEAD
        await trio.testing.wait_all_tasks_blocked()
        assert taken == [([], 100 + FRAME_OVERHEAD, False)]  # taken at once, though the queue is held
        assert not queue.idle()  # being written
        queue.written(100 + FRAME_OVERHEAD)
        assert queue.held_bytes == queue.budget.held == 0
        queue.release()
        await trio.testing.wait_all_tasks_blocked()
        assert queue.idle()
        queue.close(drop=False)
