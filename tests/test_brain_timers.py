"""The echo brain's timer (`actors._brain.sleep`): one system task wakes every sleeper at its deadline, in
deadline order, an earlier deadline moves the wake-up, a cancelled
sleep raises Cancelled at once and leaves the others. Mock clock (autojump): exact times, no real sleeps."""
from __future__ import annotations

from contextlib import aclosing

import trio

from agentcast.actors import EchoBrain
from agentcast.actors._brain import Turn, sleep, sleep_until, split_chunks
from agentcast.store import Memory


async def test_sleepers_wake_at_their_deadlines_in_order(autojump_clock):
    woke: list[tuple[float, str]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await sleep(seconds)
        woke.append((trio.current_time(), name))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for name, seconds in [("c", 3.0), ("a", 1.0), ("b1", 2.0), ("b2", 2.0), ("z", 0.0), ("b3", 2.0)]:
            nursery.start_soon(sleeper, name, seconds)
            await trio.testing.wait_all_tasks_blocked()  # each asleep before the next
    # by deadline; those due together wake in one scheduler pass, in an order trio does not promise
    assert [round(at - start, 9) for at, _ in woke] == [0.0, 1.0, 2.0, 2.0, 2.0, 3.0]
    assert [name for _, name in woke][:2] == ["z", "a"] and woke[-1][1] == "c"
    assert sorted(name for _, name in woke[2:5]) == ["b1", "b2", "b3"]


async def test_an_earlier_deadline_moves_the_wake_up(autojump_clock):
    woke: dict[str, float] = {}

    async def sleeper(name: str, seconds: float) -> None:
        await sleep(seconds)
        woke[name] = trio.current_time()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper, "long", 10.0)
        await trio.testing.wait_all_tasks_blocked()  # the timer task waits for the 10 s deadline
        await trio.sleep(0.5)
        nursery.start_soon(sleeper, "short", 1.0)
    assert {name: round(at - start, 9) for name, at in woke.items()} == {"short": 1.5, "long": 10.0}


async def test_a_cancelled_sleep_raises_at_once_and_leaves_the_others(autojump_clock):
    woke: dict[str, float] = {}
    cancelled_at: list[float] = []

    async def sleeper(name: str, seconds: float) -> None:
        await sleep(seconds)
        woke[name] = trio.current_time()

    async def cancelled() -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            try:
                await sleep(1.0)
            finally:
                cancelled_at.append(trio.current_time())
        assert scope.cancelled_caught

    scopes: list[trio.CancelScope] = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancelled)
        nursery.start_soon(sleeper, "after", 1.0)
        nursery.start_soon(sleeper, "later", 2.0)
        await trio.sleep(0.25)
        scopes[0].cancel()
    assert [round(at - start, 9) for at in cancelled_at] == [0.25]
    assert {name: round(at - start, 9) for name, at in woke.items()} == {"after": 1.0, "later": 2.0}
    with trio.CancelScope() as scope:  # a sleep in a scope already cancelled does not wait
        scope.cancel()
        await sleep(5.0)
    assert round(trio.current_time() - start, 9) == 2.0


async def test_the_echo_brain_streams_a_chunk_after_each_delay(autojump_clock):
    brain = EchoBrain(delay=0.03, chunks=5)
    turn = Turn("a", "u", "one two three four five six seven eight nine ten", Memory("a", "u"))
    start = trio.current_time()
    seen = [(round(trio.current_time() - start, 9), piece) async for piece in brain.reply(turn)]
    assert [at for at, _ in seen] == [round(0.03 * n, 9) for n in range(1, len(seen) + 1)]
    assert len(seen) == len(split_chunks(EchoBrain.answer(turn), 5)) > 1
    assert "".join(piece for _, piece in seen) == EchoBrain.answer(turn)


async def test_sleepers_due_within_the_same_millisecond_wake_together_at_its_end(autojump_clock):
    woke: dict[str, float] = {}

    async def sleeper(name: str, seconds: float) -> None:
        await sleep(seconds)
        woke[name] = trio.current_time()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for name, seconds in [("a", 1.0002), ("b", 1.0007), ("c", 1.001), ("d", 1.0012)]:
            nursery.start_soon(sleeper, name, seconds)
    # a, b and c share one wake-up (the end of the millisecond; never before a deadline), d the next one
    assert {name: round(at - start, 9) for name, at in woke.items()} == {"a": 1.001, "b": 1.001, "c": 1.001, "d": 1.002}


async def test_a_chunk_taken_late_does_not_push_the_later_ones_back(autojump_clock):
    # a model generating at a steady rate: chunk n is due n * delay after the turn began, however long the
    # one taking the chunks took over the one before
    brain = EchoBrain(delay=0.03, chunks=4)
    turn = Turn("a", "u", "one two three four five six seven eight", Memory("a", "u"))
    start = trio.current_time()
    seen = []
    async with aclosing(brain.reply(turn)) as pieces:
        async for _ in pieces:
            seen.append(round(trio.current_time() - start, 9))
            await trio.sleep(0.01)  # a busy recipient
    assert len(seen) == len(split_chunks(EchoBrain.answer(turn), 4)) >= 3
    assert seen == [round(0.03 * n, 9) for n in range(1, len(seen) + 1)]


async def test_a_sleep_until_a_time_gone_by_returns_at_once_yet_is_a_checkpoint(autojump_clock):
    start = trio.current_time()
    await sleep_until(start - 1.0)
    assert trio.current_time() == start
    with trio.CancelScope() as scope:
        scope.cancel()
        await sleep_until(start - 1.0)
        raise AssertionError("not reached: the sleep is a checkpoint")
    assert scope.cancelled_caught
