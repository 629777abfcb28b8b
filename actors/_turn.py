"""A chat turn, run: `TurnRunner` drives an agent's brain on a user's message and tells the turn's recipients.

Owns what happens inside a `ChatCommand` once its lane takes it: the recipients fixed at its start, a
retry answered from the log, the brain driven (its chunks, tool calls and results delivered as they come,
tool calls logged before the brain resumes), how the turn ends (answered, failed or cancelled; logged with
the user's message, then `TurnResponseOutput` or its failure, then `TurnDoneOutput`), the turns whose brain
runs (for `Agent.cancel`), and what a turn's tools may reach of memory (`TurnMemory`). Imports trio, the
store's events and the actors' messages; must not import `transport`.
"""
from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING

import trio
from attrs import define, field, frozen

from ..store import (
    CANCELLED,
    FAILED,
    LEXICAL,
    AgentAnswered,
    Event,
    FactRemembered,
    Hit,
    Memory,
    Recorded,
    SearchResult,
    ToolCalled,
    ToolReturned,
    TurnEnded,
    UserSaid,
    fold_all,
    search_memory,
)

from ._audience import Audience, Recipients
from ._brain import BrainError, ToolCallItem, ToolResultItem, Turn, UsageItem
from ._journal import Journal
from ._lanes import Lane
from ._messages import (
    AgentCommand,
    ChatCommand,
    FailedOutput,
    Outbox,
    ResumeCommand,
    SearchCommand,
    ToolCallOutput,
    ToolResultOutput,
    TurnCancelledOutput,
    TurnChunkOutput,
    TurnDoneOutput,
    TurnResponseOutput,
    TurnStartedOutput,
    UserMessageOutput,
    is_live,
)
from ._semantic import SearchUnavailable, SemanticMemory
from ._tools import ToolContext, Toolbox

if TYPE_CHECKING:
    from ._agent import AgentSpec

logger = logging.getLogger("agentcast.actors")


@define(eq=False)
class RunningTurn:
    """A user's chat turn while its brain runs: cancelling `scope` (its lane's) stops it (and closes its HTTP stream)."""

    scope: trio.CancelScope
    request_id: str | None
    origin: Outbox
    #: Outboxes other than `origin` that cancelled it: each gets its end, whether it hears the turn or not.
    cancellers: list[Outbox] = field(factory=list)


class TurnLog:
    """The events of one chat turn, appended in order. The user's message goes with the first
    append (a tool call, a remembered fact, or the end of the turn), so nothing of a turn is
    ever logged before the message that caused it."""

    def __init__(self, runner: TurnRunner, recipients: Recipients, said: UserSaid | None) -> None:
        self._runner = runner
        self._recipients = recipients
        self._said = said
        self.recorded: list[Recorded] = []

    async def append(self, events: Sequence[Event]) -> list[Recorded]:
        """Append `events` (after the user's message, the first time); returns their records once committed."""
        batch = [self._said, *events] if self._said is not None else list(events)
        recorded = await self._runner.append(self._recipients, batch)
        self._said = None  # only once committed: after a failed append, the next one carries it again
        self.recorded.extend(recorded)
        return recorded[len(recorded) - len(events):]


@frozen
class TurnMemory:
    """The user's memory as the turn's tools reach it (`actors._tools.MemoryAccess`): bound to
    the turn's agent and user, so a tool can neither read nor write anyone else's."""

    runner: TurnRunner
    user: str
    request_id: str | None
    log: TurnLog

    async def search(self, query: str, limit: int) -> Sequence[Hit]:
        return (await self.runner.memory_search(self.user, query, limit)).hits

    async def remember(self, fact: str) -> int:
        event = FactRemembered(self.runner.agent_id, self.user, self.runner._clock(), fact, self.request_id)
        (rec,) = await self.log.append([event])
        return rec.seq


#: The toolbox of a brain that has no tools: it never reaches a context (see `Toolbox.run`).
NO_TOOLS = Toolbox((), None)  # type: ignore[arg-type]


class Chat:
    """A chat turn under way: what its brain said so far, and how it is to end."""

    __slots__ = ("cmd", "recipients", "running", "log", "deltas", "usage", "failure")

    def __init__(self, cmd: ChatCommand, recipients: Recipients, running: RunningTurn, log: TurnLog) -> None:
        self.cmd = cmd
        self.recipients = recipients
        self.running = running
        self.log = log
        self.deltas: list[str] = []
        self.usage: UsageItem | None = None
        self.failure: str | None = None


class TurnRunner:
    """Runs one agent's chat turns (each in its user's lane), and knows the turns whose brain runs."""

    __slots__ = ("agent_id", "spec", "_journal", "_audience", "_clock", "semantic", "running")

    def __init__(self, spec: AgentSpec, journal: Journal, audience: Audience, clock: Callable[[], str],
                 semantic: SemanticMemory | None = None) -> None:
        self.agent_id = spec.agent_id
        self.spec = spec
        self._journal = journal
        self._audience = audience
        self._clock = clock
        #: The semantic side of the agent's memory search (None: lexical only).
        self.semantic = semantic
        #: Per user: the turn whose brain is running.
        self.running: dict[str, RunningTurn] = {}

    async def memory_search(self, user: str, query: str, limit: int, *, since_seq: int = 0,
                            legs: Sequence[str] | None = None, said: bool = False) -> SearchResult:
        """Search `user`'s memory: hybrid with an embedder (`SemanticMemory.search`), else lexical; `legs` (None:
        every leg the agent has) and `said` (the query is the user's new message) as `SemanticMemory.search` takes
        them. What a `search_memory` command, a brain's recall and the `search_memory` tool ask."""
        semantic, agent_id = self.semantic, self.agent_id
        if semantic is not None:
            return await semantic.search(self._journal, agent_id, user, query, limit, since_seq=since_seq, legs=legs,
                                         said=said)
        if legs is not None and LEXICAL not in legs:
            raise SearchUnavailable(f"Agent '{agent_id}' has no embedder: its memory is searched lexically only "
                                    "(ask for legs [\"lexical\"], or leave legs out)")
        return await self._journal.read(lambda log: search_memory(log, agent_id, user, query, limit, since_seq=since_seq))

    def fail(self, command: AgentCommand, code: str, message: str) -> None:
        """Tell `command`'s recipients it failed (`FailedOutput`, then `TurnDoneOutput` for a chat)."""
        recipients = self.recipients(command)
        recipients.deliver(FailedOutput(self.agent_id, code, message, command.request_id))
        if isinstance(command, ChatCommand):
            recipients.deliver(TurnDoneOutput(self.agent_id, command.request_id))

    def recipients(self, command: AgentCommand) -> Recipients:
        """Who gets `command`'s outputs: its origin alone for a search or a resume, else its subscribers too."""
        if isinstance(command, (SearchCommand, ResumeCommand)):
            return Recipients(self._audience, self.agent_id, command.user, command.origin, [])
        return self._audience.recipients(self.agent_id, command.user, command.origin)

    async def append(self, recipients: Recipients, events: list) -> list[Recorded]:
        """Append `events`; once they are committed, tell tail subscribers the user's messages among them."""
        recorded = await self._journal.append(events)
        for rec in recorded:
            if isinstance(rec.event, UserSaid):
                recipients.deliver_to_tails(UserMessageOutput(self.agent_id, rec.event.content, rec.seq, rec.event.request_id))
        return recorded

    async def chat(self, lane: Lane, cmd: ChatCommand, scope: trio.CancelScope) -> Memory:
        """Carry out a chat turn in `lane` (whose cancel scope is `scope`); returns the memory after it.

        A cancel (of `scope`) stops the brain: then this raises `Cancelled` with the chat in
        `lane.interrupted`, and `Agent._run_lane` ends it once out of the cancelled scope."""
        memory = lane.memory
        assert memory is not None
        agent_id, rid = self.agent_id, cmd.request_id
        recipients = self.recipients(cmd)
        recipients.deliver(TurnStartedOutput(agent_id, rid))
        logged = None  # a retry: the turn of this command_id as the log has it
        command_id = cmd.command_id
        if command_id is not None:
            logged = await self._journal.read(lambda log: log.find_turn(agent_id, cmd.user, command_id))
            ending = logged[1] if logged is not None else None
            if ending is not None and answered_from_log(agent_id, ending, rid, recipients):
                return memory
        running = RunningTurn(scope, rid, cmd.origin)
        origin = cmd.origin
        if self.spec.cancel_on_disconnect and is_live(origin) and origin.gone:
            scope.cancel()  # its asker left while it was queued
        # The user's message is logged once, even if the turn fails, is cancelled or is retried.
        said = None if logged is not None else UserSaid(agent_id, cmd.user, cmd.at, cmd.message, rid, cmd.command_id)
        chat = Chat(cmd, recipients, running, TurnLog(self, recipients, said))
        self.running[cmd.user] = running
        try:
            await self.think(memory, chat)
            if scope.cancel_called:
                # Cancelled after the brain's last checkpoint (or it had none): take the cancel now,
                # so that this turn too ends cancelled, outside the cancelled scope.
                await trio.lowlevel.checkpoint()
        except BaseException:  # Cancelled, or an exception group holding it (a nursery in the brain)
            if scope.cancel_called:
                lane.interrupted = chat
            raise
        finally:
            if self.running.get(cmd.user) is running:
                del self.running[cmd.user]
        return await self.end_chat(memory, chat)

    async def think(self, memory: Memory, chat: Chat) -> None:
        """Run the brain on `chat`: deliver its chunks and tool frames as they come, log its tool
        calls; its failure (never raised, but for cancellation) goes to `chat.failure`."""
        cmd, recipients, turn_log = chat.cmd, chat.recipients, chat.log
        agent_id, rid = self.agent_id, cmd.request_id
        brain = self.spec.brain
        try:
            recalled: Sequence[Hit] = ()
            if brain.recall and memory.long_term_count:
                recalled = (await self.memory_search(cmd.user, cmd.message, brain.recall, said=True)).hits
            tools = getattr(brain, "tools", ())
            # A brain without tools gets the agent's empty toolbox (it only ever answers "no such tool").
            toolbox = Toolbox(tools, ToolContext(
                agent_id, cmd.user, TurnMemory(self, cmd.user, rid, turn_log))) if tools else NO_TOOLS
            turn = Turn(agent_id, cmd.user, cmd.message, memory, recalled, toolbox)
            async with aclosing(brain.reply(turn)) as items:
                async for item in items:
                    if isinstance(item, str):
                        if item:
                            chat.deltas.append(item)
                            recipients.deliver(TurnChunkOutput(agent_id, item, rid))
                    elif isinstance(item, ToolCallItem):
                        await turn_log.append([ToolCalled(
                            agent_id, cmd.user, self._clock(), item.call_id, item.tool, item.arguments, rid)])
                        recipients.deliver(ToolCallOutput(agent_id, item.call_id, item.tool, item.arguments, rid))
                    elif isinstance(item, ToolResultItem):
                        await turn_log.append([ToolReturned(
                            agent_id, cmd.user, self._clock(), item.call_id, item.tool, item.result,
                            item.error, rid)])
                        recipients.deliver(ToolResultOutput(
                            agent_id, item.call_id, item.tool, item.result, item.error, rid))
                    elif isinstance(item, UsageItem):
                        chat.usage = item
            if not chat.deltas:
                chat.failure = "The agent gave an empty answer"
        except BrainError as exc:
            chat.failure = str(exc) or "The agent could not answer"
        except Exception as exc:  # its kind and stack, not its text: that may quote a header (a key) or a URL
            logger.error("agent %s: brain failed: %s (message withheld)\n%s", agent_id, type(exc).__name__,
                         "".join(traceback.format_tb(exc.__traceback__)).rstrip())
            chat.failure = "The agent failed while answering"

    async def end_chat(self, memory: Memory, chat: Chat) -> Memory:
        """Log how `chat` ended (answered, failed or cancelled), tell its recipients; the memory after it.

        The recipients hold what the turn delivered in this step (from a brain that answered at once:
        the `agent_thinking` and every chunk) while the ending commits, so that it goes out with the
        ending's frames in one socket write instead of two. What earlier steps delivered has gone
        already: only the brain's last burst waits, and for no longer than the ending's own frames. (A
        connection that also hears another lane, of another agent, may meanwhile have that lane's
        frames wait too: one commit at most, as every release lets the queue go; see `Outbox`.)
        """
        cmd, recipients, turn_log, running = chat.cmd, chat.recipients, chat.log, chat.running
        agent_id, rid = self.agent_id, cmd.request_id
        partial = "".join(chat.deltas)
        held = recipients.hold()
        try:
            if running.scope.cancel_called:  # accepted cancels are answered so even if the brain finished meanwhile
                await turn_log.append([TurnEnded(agent_id, cmd.user, self._clock(), CANCELLED, partial, "", rid,
                                                 cmd.command_id)])
                for output in (TurnCancelledOutput(agent_id, partial, rid), TurnDoneOutput(agent_id, rid)):
                    recipients.deliver(output, also=running.cancellers)
            elif chat.failure is not None:
                await turn_log.append([TurnEnded(agent_id, cmd.user, self._clock(), FAILED, partial, chat.failure,
                                                 rid, cmd.command_id)])
                recipients.deliver(FailedOutput(agent_id, "brain_error", chat.failure, rid))
                recipients.deliver(TurnDoneOutput(agent_id, rid))
            else:
                answer = AgentAnswered(agent_id, cmd.user, self._clock(), partial, rid, cmd.command_id)
                (answer_rec,) = await turn_log.append([answer])
                recipients.deliver(TurnResponseOutput(agent_id, answer.content, answer_rec.seq, rid, chat.usage))
                recipients.deliver(TurnDoneOutput(agent_id, rid))
        finally:
            recipients.release(held)
        return fold_all(memory, turn_log.recorded)



def answered_from_log(agent_id: str, ending: Recorded, rid: str | None, recipients: Recipients) -> bool:
    """Answer a retried chat from how its logged turn ended, if that settles it: an answer is given
    again (same seq), a cancellation again (`TurnCancelledOutput`, never re-run: that would pay for the
    answer the user stopped). False for a failed turn: that one is run again."""
    event = ending.event
    if isinstance(event, AgentAnswered):
        recipients.deliver(TurnChunkOutput(agent_id, event.content, rid))
        recipients.deliver(TurnResponseOutput(agent_id, event.content, ending.seq, rid))
    elif isinstance(event, TurnEnded) and event.outcome == CANCELLED:
        recipients.deliver(TurnCancelledOutput(agent_id, event.partial, rid))
    else:
        return False
    recipients.deliver(TurnDoneOutput(agent_id, rid))
    return True
