"""Admission to an agent: how many commands it holds (queued or running), per user, per connection and in
all, and the refusals (`Busy`) that keep each within its bound, so that memory stays bounded and nothing
is dropped silently.

Owns those counts and the `idle` event (no command held); it never queues or runs anything. Imports trio
(the event) and the actors' messages; must not import `transport` or the store.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ._messages import AgentCommand, ChatCommand, Outbox

if TYPE_CHECKING:
    from ._agent import AgentSpec


class Busy(Exception):
    """The agent (or this user's lane in it) has as many commands as it may hold."""


class Admission:
    """The commands an agent holds, counted, against its spec's `mailbox_size`, `lane_size`,
    `connection_size` and `on_busy = "reject"`."""

    __slots__ = ("_spec", "in_flight", "_pending", "_per_origin", "_chats", "idle")

    def __init__(self, spec: AgentSpec) -> None:
        self._spec = spec
        #: Commands queued or running, all users together.
        self.in_flight = 0
        self._pending: dict[str, int] = {}  # per user: commands queued or running
        self._per_origin: dict[Outbox, int] = {}  # per connection: commands queued or running
        self._chats: dict[str, int] = {}  # per user: chats queued or running
        #: Set while no command is queued or running (replaced when one is admitted).
        self.idle = trio.Event()
        self.idle.set()

    def admit(self, command: AgentCommand) -> bool:
        """Count `command` until it is `finished`, or raise `Busy` if it may not be taken on now. Returns
        whether it is a chat."""
        spec, user, origin = self._spec, command.user, command.origin
        pending = self._pending.get(user, 0)
        if self.in_flight >= spec.mailbox_size and pending:  # a user with nothing queued always gets a turn
            raise Busy(f"Agent '{spec.agent_id}' is busy ({spec.mailbox_size} commands queued); try again shortly")
        if pending >= spec.lane_size:
            raise Busy(f"Agent '{spec.agent_id}' has {spec.lane_size} of your commands queued; try again shortly")
        from_origin = self._per_origin.get(origin, 0)
        if from_origin >= spec.connection_size:
            raise Busy(f"Agent '{spec.agent_id}' has {spec.connection_size} commands of this connection "
                       "queued; wait for their answers")
        is_chat = isinstance(command, ChatCommand)
        if is_chat:
            chats = self._chats.get(user, 0)
            if chats and spec.on_busy == "reject":
                raise Busy(f"Agent '{spec.agent_id}' is still answering your previous message; wait for its "
                           "agent_done (or cancel it) and send again")
            self._chats[user] = chats + 1
        self._pending[user] = pending + 1
        self._per_origin[origin] = from_origin + 1
        self.in_flight += 1
        if self.idle.is_set():
            self.idle = trio.Event()
        return is_chat

    def finished(self, command: AgentCommand) -> bool:
        """`command` is done (carried out or failed): counted no more. True if its user has nothing left."""
        user, origin = command.user, command.origin
        left = self._pending[user] - 1
        if left:
            self._pending[user] = left
        else:
            del self._pending[user]
        left_from_origin = self._per_origin[origin] - 1
        if left_from_origin:
            self._per_origin[origin] = left_from_origin
        else:
            del self._per_origin[origin]
        if isinstance(command, ChatCommand):
            chats = self._chats[user] - 1
            if chats:
                self._chats[user] = chats
            else:
                del self._chats[user]
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()
        return not left
