"""What an agent is asked (commands) and what it says back (outputs), as immutable records.

Names say the layer: a command's name ends in `Command`, an output's in `Output` (the events they
lead to are the store's, named as facts: `UserSaid`; the wire frames that carry outputs are the
transport's, named after their wire type: `protocol.UserMessage`). No I/O here; must not import `transport`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeGuard, Union

from attrs import frozen

from ..store import Hit

from ._brain import UsageItem


class Outbox(Protocol):
    """Where an agent's outputs for one connection go: all that an agent needs of an outbox.

    `deliver` never blocks and never raises: a connection that cannot keep up handles
    that itself (it is closed), so an agent never waits on a slow client.
    """

    def deliver(self, output: "Output") -> None: ...


class LiveOutbox(Outbox, Protocol):
    """The outbox of a client's connection (the transport's `Connection` implements it): besides `deliver`,
    it says when nobody will read it any more, it can keep what it is given to send it with what follows,
    and it says when it has room. An agent uses these where an outbox has them (`is_live`); an outbox
    with `deliver` alone (a test's, a benchmark's) gets the outputs all the same.
    """

    @property
    def gone(self) -> bool:
        """True once nobody will read the outbox: an agent then skips its queued searches (turns and
        clears still run: they change the user's memory), and may cancel its turns (`cancel_on_disconnect`)."""
        ...

    def hold(self) -> None:
        """Until the matching `release`, the outbox may keep what it is given instead of sending it, to send
        it with what follows (an agent holds a turn's recipients while its ending commits). Several lanes
        may hold an outbox at once."""
        ...

    def release(self) -> None:
        """End one `hold` (called once for each, whatever happens); each release lets what is held go, so
        nothing waits longer than one holder's commit."""
        ...

    async def room(self) -> None:
        """Return once the outbox has room again (or never will: it is closing); time-bounded. A backlog
        (`ResumeCommand`) waits for it before each output, so a long history flows at the pace the client
        reads it instead of overflowing it."""
        ...


#: The members an outbox's class must have to be a `LiveOutbox` (besides `deliver`).
_LIVE_MEMBERS = tuple(name for name in vars(LiveOutbox) if not name.startswith("_"))
#: Per outbox class: whether it is a `LiveOutbox` (decided once per class, as cheap as a `hasattr` after).
_live_classes: dict[type, bool] = {}


def is_live(outbox: Outbox) -> TypeGuard[LiveOutbox]:
    """True if `outbox` is a `LiveOutbox` (its class has every member of it)."""
    kind = type(outbox)
    live = _live_classes.get(kind)
    if live is None:
        live = _live_classes[kind] = all(hasattr(kind, name) for name in _LIVE_MEMBERS)
    return live


# -- commands: each is for one (agent, user) lane and answers to `origin` ------------------


@frozen
class ChatCommand:
    user: str
    message: str
    at: str
    origin: Outbox
    request_id: str | None = None
    command_id: str | None = None


@frozen
class SearchCommand:
    user: str
    query: str
    limit: int
    use_long_term: bool
    origin: Outbox
    request_id: str | None = None
    #: The legs to run ("lexical", "semantic"); None: every leg the agent has.
    legs: tuple[str, ...] | None = None


@frozen
class ClearCommand:
    user: str
    long_term: bool
    at: str
    origin: Outbox
    request_id: str | None = None


@frozen
class ResumeCommand:
    """Subscribe `origin` to the (agent, user) from the log on: `ResumedOutput`, then every logged event
    of the (agent, user) with a seq above `after_seq` (the backlog, in seq order), then the live
    stream. Carried out in the user's lane, so that nothing of the user is committed between the
    backlog and the live stream (no gap, no duplicate). The origin must already be subscribed,
    held (`Audience.subscribe(..., held=True)`); a resume whose subscription is gone does nothing."""

    user: str
    after_seq: int
    origin: Outbox
    request_id: str | None = None


AgentCommand = Union[ChatCommand, SearchCommand, ClearCommand, ResumeCommand]

# -- outputs ---------------------------------------------------------------------------------


@frozen
class TurnStartedOutput:
    agent_id: str
    request_id: str | None


@frozen
class TurnChunkOutput:
    agent_id: str
    delta: str
    request_id: str | None


@frozen
class TurnResponseOutput:
    """The whole answer; `seq` is its committed event."""

    agent_id: str
    message: str
    seq: int
    request_id: str | None
    #: Tokens the provider counted for the turn, when it reported them.
    usage: UsageItem | None = None


@frozen
class FailedOutput:
    """A command that could not be carried out; a failed chat turn is still followed by `TurnDoneOutput`."""

    agent_id: str
    code: str
    message: str
    request_id: str | None


@frozen
class TurnDoneOutput:
    agent_id: str
    request_id: str | None


@frozen
class Found:
    """One search result: a hit and whether it is in the short-term window."""

    hit: Hit
    source: str  # "short_term" or "long_term"


@frozen
class SearchResultsOutput:
    agent_id: str
    query: str
    results: Sequence[Found]
    request_id: str | None
    #: The legs that ranked the results ("lexical", "semantic").
    legs: tuple[str, ...] = ("lexical",)


@frozen
class MemoryClearedOutput:
    agent_id: str
    long_term: bool
    #: Messages whose text was erased from the log (all of long-term memory; 0 for short-term).
    forgotten: int
    seq: int
    request_id: str | None


@frozen
class UserMessageOutput:
    """A user's message, committed as event `seq`: in a backlog, and live to resumed subscribers."""

    agent_id: str
    message: str
    seq: int
    request_id: str | None


@frozen
class ResumedOutput:
    """A resumed subscription starts: its backlog (the events after `after_seq`) follows, then the live stream."""

    agent_id: str
    after_seq: int
    request_id: str | None


# -- outputs of a turn with tools, and of a cancelled turn -------------------------------------


@frozen
class ToolCallOutput:
    """The model called a tool (already logged); its result follows as `ToolResultOutput`."""

    agent_id: str
    call_id: str
    tool: str
    arguments: object
    request_id: str | None


@frozen
class ToolResultOutput:
    """A tool call returned `result` (any JSON value) or failed with `error` (already logged)."""

    agent_id: str
    call_id: str
    tool: str
    result: object
    error: str | None
    request_id: str | None


@frozen
class TurnCancelledOutput:
    """A turn was cancelled; `partial` is what it had streamed (logged as a cancelled turn). `TurnDoneOutput` follows."""

    agent_id: str
    partial: str
    request_id: str | None


Output = Union[
    TurnStartedOutput, TurnChunkOutput, TurnResponseOutput, FailedOutput, TurnDoneOutput, SearchResultsOutput, MemoryClearedOutput, UserMessageOutput, ResumedOutput,
    ToolCallOutput, ToolResultOutput, TurnCancelledOutput,
]
