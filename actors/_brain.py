"""Brains: what an agent thinks with. The `Brain` interface, what a brain yields, and the built-in `echo` brain.

A brain is asynchronous text generation (plus tool calls through `Turn.tools`); must not import
`transport` or write to the store.
"""
from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Protocol, Union

import trio
from attrs import frozen

from ..store import Hit, Memory

if TYPE_CHECKING:
    from ._tools import Toolbox


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
    #: The tools this turn may run, bound to this user's memory (None: no tools).
    tools: "Toolbox | None" = None


@frozen
class ToolCallItem:
    """Yielded by a brain when the model calls a tool, BEFORE the brain runs it: the agent logs the
    call and tells the clients, then the brain goes on (runs it with `turn.tools`)."""

    call_id: str
    tool: str
    #: The model's arguments: a JSON object, or its raw text when that was not valid JSON.
    arguments: object


@frozen
class ToolResultItem:
    """Yielded by a brain once a tool call has returned `result` (any JSON value) or failed with `error`."""

    call_id: str
    tool: str
    result: object = None
    error: str | None = None


@frozen
class UsageItem:
    """Tokens the provider counted for a whole turn (all its requests); yielded at most once, last."""

    prompt_tokens: int
    completion_tokens: int


#: What a brain's `reply` yields: text deltas of the answer, tool calls and results, usage.
BrainItem = Union[str, ToolCallItem, ToolResultItem, UsageItem]


class BrainError(Exception):
    """A brain could not answer; the text is shown to the user."""


class Brain(Protocol):
    """The async interface an agent answers with.

    `reply` yields the answer as text chunks (deltas) as they are produced; the answer is
    their concatenation. A brain that runs tools also yields a `ToolCallItem` before it runs each one
    and a `ToolResultItem` after, and may yield one `UsageItem` last. `recall` is how many long-term
    matches the brain wants in `Turn`. Raise `BrainError` for a failure the user should see.
    A turn can be cancelled at any await: the brain must then stop (and close its connections).

    Optional: `settings()`, every setting as configured (for `agentcast config check`; secrets
    masked), and `startup_warnings()`, what the server should log when it starts serving the brain
    (e.g. an API key's environment variable that is not set).
    """

    recall: int

    def reply(self, turn: Turn) -> AsyncGenerator[BrainItem, None]: ...


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

    def settings(self) -> dict[str, object]:
        return {"delay": self.delay, "chunks": self.chunks}

    @staticmethod
    def answer(turn: Turn) -> str:
        n = turn.memory.long_term_count
        remembered = f"I remember {n} earlier message{'' if n == 1 else 's'} of our conversation."
        return f"You said: {turn.message}\n({remembered})"

    async def reply(self, turn: Turn) -> AsyncGenerator[str, None]:
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


#: The brains a config file can name (`brain.kind`), by name: each a class built from the brain's table.
BRAINS: dict[str, type] = {"echo": EchoBrain}
#: The settings class of the brains built from one settings object (attrs, one field per key of the
#: brain's table), by name; a brain not listed here takes its table's keys as keyword arguments.
BRAIN_SETTINGS: dict[str, type] = {}
