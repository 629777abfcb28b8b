"""A resumed subscription's backlog: the (agent, user)'s logged events after a seq, replayed to one outbox as
the live turns' outputs carried them, at the pace the client reads, then the subscription made live.

Owns the replay of one logged event as outputs (`replayed`, exhaustive over the event types), the paging
of the log (BACKLOG_PAGE events at a time) and the hand-over from backlog to live stream. Runs in the
user's lane (`Agent._serve_lane`). Imports the store's events and the actors' messages and journal; must not
import `transport`.
"""
from __future__ import annotations

from typing import assert_never

from ..store import (
    CANCELLED,
    AgentAnswered,
    FactRemembered,
    Memory,
    Recorded,
    Recorder,
    ToolCalled,
    ToolReturned,
    TurnEnded,
    UserClearedMemory,
    UserSaid,
    fold,
)

from ._audience import Audience
from ._journal import Journal
from ._messages import (
    FailedOutput,
    MemoryClearedOutput,
    Output,
    ResumeCommand,
    ResumedOutput,
    ToolCallOutput,
    ToolResultOutput,
    TurnCancelledOutput,
    TurnDoneOutput,
    TurnResponseOutput,
    UserMessageOutput,
    is_live,
)

#: Events read from the log at a time for a resumed subscription's backlog (never the whole history at once).
BACKLOG_PAGE = 500


async def deliver_backlog(agent_id: str, journal: Journal, audience: Audience, window: int, cmd: ResumeCommand) -> None:
    """Deliver to the origin `ResumedOutput`, then the (agent, user)'s logged events after
    `cmd.after_seq` in seq order (short-term windows of `window` messages), then make its held subscription a tail.

    This runs in the user's lane, and the lane is the only writer of the user's events: until
    it returns, nothing of the user is committed, so the backlog meets the live stream with
    no gap and no duplicate. The backlog is read BACKLOG_PAGE events at a time on the
    journal's readers, and before each output it waits for room in the origin's queue (a
    `LiveOutbox`), so neither the lane nor the connection holds the whole history.

    The backlog stops as soon as the subscription is dropped (an unsubscribe, a switch of the
    connection's user, its end): nothing of it is delivered after that, wherever it was.
    """
    user, origin = cmd.user, cmd.origin
    if not audience.subscribed(agent_id, user, origin):
        return  # withdrawn (unsubscribed, switched user, disconnected) before it started
    room = origin.room if is_live(origin) else None
    memory: Memory | None = None  # as of the previous event; read only once a long-term clear needs it
    backlog = audience.backlog(agent_id, user, origin)
    try:
        origin.deliver(ResumedOutput(agent_id, cmd.after_seq, cmd.request_id))
        after = cmd.after_seq
        while True:
            page = await journal.read(lambda log: read_page(log, agent_id, user, after))  # awaited at once
            for rec in page:
                event = rec.event
                if isinstance(event, UserClearedMemory) and event.long_term and memory is None:
                    before = rec.seq - 1
                    memory = await journal.read(  # awaited at once: `before` is this event's
                        lambda log: log.memory(agent_id, user, window=window, until_seq=before)
                    )
                outputs = replayed(agent_id, rec, memory)
                if memory is not None:
                    memory = fold(memory, rec)
                for output in outputs:
                    if room is not None:
                        await room()
                    if backlog.withdrawn:  # checked after every wait: the rest is not wanted
                        return
                    origin.deliver(output)
            if len(page) < BACKLOG_PAGE or backlog.withdrawn:
                break
            after = page[-1].seq
    except BaseException:
        audience.release(agent_id, user, origin)  # no live stream after an incomplete backlog
        raise
    finally:
        audience.end_backlog(agent_id, user, origin, backlog)
    if not backlog.withdrawn:
        audience.tail(agent_id, user, origin)


def read_page(log: Recorder, agent_id: str, user: str, after_seq: int) -> list[Recorded]:
    """Up to BACKLOG_PAGE events of (agent_id, user) after `after_seq`; the read ends with the call."""
    return list(log.read(agent_id=agent_id, user=user, after_seq=after_seq, limit=BACKLOG_PAGE))


def replayed(agent_id: str, rec: Recorded, memory: Memory | None) -> tuple[Output, ...]:
    """The outputs that replay one logged event in a backlog, as the live turn's frames carried it.

    A user message, an answer, a clear, a tool call or result, and a turn that ended without an answer
    (`TurnCancelledOutput`, or `FailedOutput` `brain_error`, then `TurnDoneOutput`). A remembered fact gives
    none: live, a client saw it as the `remember` tool's call and result, which are replayed from their
    own events (docs/protocol.md). A message whose text a later long-term clear erased gives none (the
    clear itself is replayed); a tool call's arguments, a result or a partial answer it erased are
    replayed empty. `memory` is the memory before `rec`, when known (a long-term clear's `forgotten`)."""
    event, rid = rec.event, rec.event.request_id
    match event:
        case UserSaid():
            return (UserMessageOutput(agent_id, event.content, rec.seq, rid),) if event.content else ()
        case AgentAnswered():
            return (TurnResponseOutput(agent_id, event.content, rec.seq, rid),) if event.content else ()
        case FactRemembered():
            return ()
        case UserClearedMemory():
            forgotten = memory.long_term_count if event.long_term and memory is not None else 0
            return (MemoryClearedOutput(agent_id=agent_id, long_term=event.long_term, forgotten=forgotten,
                                        seq=rec.seq, request_id=rid),)
        case ToolCalled():
            return (ToolCallOutput(agent_id, event.call_id, event.tool, event.arguments, rid),)
        case ToolReturned():
            return (ToolResultOutput(agent_id, event.call_id, event.tool, event.result, event.error, rid),)
        case TurnEnded():
            if event.outcome == CANCELLED:
                return TurnCancelledOutput(agent_id, event.partial, rid), TurnDoneOutput(agent_id, rid)
            return (FailedOutput(agent_id, "brain_error", event.reason or "The agent could not answer", rid),
                    TurnDoneOutput(agent_id, rid))
        case _:
            assert_never(event)
