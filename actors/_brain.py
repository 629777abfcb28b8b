"""Brains: what an agent thinks with. The `Brain` interface and the built-in `echo` brain.

A brain is pure asynchronous text generation; must not import `transport` or touch the store.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import trio
from attrs import frozen

from store import Hit, Memory


@frozen
class Turn:
    """What a brain is given to answer one message."""

    agent_id: str
    user: str
    message: str
    #: The user's memory before this message: short-term window, long-term count.
    memory: Memory
    #: The best long-term matches for `message` (as many as the brain's `recall` asks).
    recalled: Sequence[Hit] = ()


class BrainError(Exception):
    """A brain could not answer; the text is shown to the user."""


class Brain(Protocol):
    """The async interface an agent answers with.

    `reply` yields the answer as text chunks (deltas) as they are produced; the answer is
    their concatenation. `recall` is how many long-term matches the brain wants in `Turn`.
    Raise `BrainError` for a failure the user should see.
    """

    recall: int

    def reply(self, turn: Turn) -> AsyncIterator[str]: ...


class EchoBrain:
    """Deterministic: repeats the message and says how much it remembers, in several chunks.

    `delay` (seconds, default 0) is waited before each chunk, to make streaming visible.
    """

    recall = 0

    def __init__(self, delay: float = 0.0, chunks: int = 4) -> None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not (0 <= delay < 3600):
            raise ValueError("echo brain: delay must be a number of seconds from 0 to 3600")
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            raise ValueError("echo brain: chunks must be an integer >= 1")
        self.delay = delay
        self.chunks = chunks

    @staticmethod
    def answer(turn: Turn) -> str:
        n = turn.memory.long_term_count
        remembered = f"I remember {n} earlier message{'' if n == 1 else 's'} of our conversation."
        return f"You said: {turn.message}\n({remembered})"

    async def reply(self, turn: Turn) -> AsyncIterator[str]:
        for piece in split_chunks(self.answer(turn), self.chunks):
            if self.delay:
                await trio.sleep(self.delay)
            yield piece


def split_chunks(text: str, n: int) -> list[str]:
    """`text` cut at spaces into at most `n` non-empty pieces whose concatenation is `text`."""
    size = max(1, -(-len(text) // n))
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        space = text.find(" ", end)
        end = len(text) if space == -1 or len(pieces) == n - 1 else space + 1
        pieces.append(text[start:end])
        start = end
    return pieces


BRAINS = {"echo": EchoBrain}
