"""What a client's command asks for: `dispatch` maps a decoded wire command to one action for its connection.

Owns the checks that need nothing but the command and what the connection knows (the agent exists,
text fields within their lengths, `set_user` under authentication names the token's user) and the
actors' command each wire command becomes. Pure: no I/O, no state changed, nothing awaited; it raises
`protocol.ProtocolError` to refuse. The connection carries the action out (`Connection._carry_out`). The
actions are attrs classes with slots, not frozen ones, which are slower to make: one is made per command.
Imports the protocol and the actors' commands; must not import trio, trio-websocket or the store.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Union

from attrs import define

from .. import actors
from ..actors import Agent, Outbox

from . import protocol as p
from ._settings import ServerSettings


@define
class Reply:
    """Answer with `frame` (nothing else to do)."""

    frame: p.ServerFrame | p.AgentList  # (protocol.ServerFrame includes AgentList, by a redefinition mypy does not follow)


@define
class Submit:
    """Submit `command` to `agent` (a chat, a search, a clear)."""

    agent: Agent
    command: actors.ChatCommand | actors.SearchCommand | actors.ClearCommand


@define
class Resume:
    """Submit the resume `command` to `agent`, then subscribe to `agent_id`, held until the backlog is delivered."""

    agent: Agent
    agent_id: str
    command: actors.ResumeCommand


@define
class CancelTurn:
    """Cancel the user's running turn on `agent` (straight to the agent, not through its mailbox)."""

    agent: Agent
    request_id: str | None


@define
class Authenticate:
    """Authenticate the connection with `token`."""

    token: str
    request_id: str | None


@define
class SwitchUser:
    """Make `user_id` the connection's user (authentication off)."""

    user_id: int | str
    request_id: str | None


@define
class Subscribe:
    """Subscribe live to `agent_id` under the connection's user."""

    agent_id: str
    request_id: str | None


@define
class Unsubscribe:
    """Drop the subscription to `agent_id`."""

    agent_id: str
    request_id: str | None


Action = Union[Reply, Submit, Resume, CancelTurn, Authenticate, SwitchUser, Subscribe, Unsubscribe]


def dispatch(cmd: p.Command, user: str, origin: Outbox, agents: Mapping[str, Agent], settings: ServerSettings,
             clock: Callable[[], str], auth_on: bool) -> Action:
    """The action that carries out `cmd` for a connection of `user` (its outbox `origin`), or raise
    `ProtocolError` to refuse it. `clock` stamps chats and clears; `auth_on` says whether the token decides the user."""
    match cmd:
        case p.Chat(agent_id, message, rid, command_id):
            check_length("message", message, settings.max_chat_chars, rid)
            return Submit(agent_of(agents, agent_id, rid),
                          actors.ChatCommand(user, message, clock(), origin, rid, command_id))
        case p.Ping(rid):
            return Reply(p.Pong(rid))
        case p.ListAgents(rid):
            return Reply(p.AgentList([p.AgentInfo(agent.agent_id, agent.spec.description) for agent in agents.values()],
                                     rid))
        case p.SearchMemory(agent_id, query, limit, use_long_term, rid, legs):
            check_length("query", query, settings.max_query_chars, rid)
            return Submit(agent_of(agents, agent_id, rid), actors.SearchCommand(
                user, query, limit, use_long_term, origin, rid, None if legs is None else tuple(legs)))
        case p.ClearMemory(agent_id, long_term, rid):
            return Submit(agent_of(agents, agent_id, rid), actors.ClearCommand(user, long_term, clock(), origin, rid))
        case p.Cancel(agent_id, rid):
            return CancelTurn(agent_of(agents, agent_id, rid), rid)
        case p.Auth(token, rid):
            return Authenticate(token, rid)
        case p.SetUser(user_id, rid) if auth_on:
            # With auth on the token decides the user: set_user may only name that same user.
            if str(user_id) != user:
                raise p.ProtocolError(
                    "forbidden", f"This connection is authenticated as user {p.shown(user)}; set_user may name only it", rid
                )
            return Reply(p.UserSet(user_id, rid))
        case p.SetUser(user_id, rid):
            return SwitchUser(user_id, rid)
        case p.Subscribe(agent_id, rid, after_seq):
            agent = agent_of(agents, agent_id, rid)
            if after_seq is None:
                return Subscribe(agent_id, rid)
            # Resume: the agent sends `subscribed` and the backlog from this user's lane, then makes the
            # held subscription live (see actors.ResumeCommand); until then it hears nothing new.
            return Resume(agent, agent_id, actors.ResumeCommand(user, after_seq, origin, rid))
        case p.Unsubscribe(agent_id, rid):
            agent_of(agents, agent_id, rid)
            return Unsubscribe(agent_id, rid)
    raise AssertionError(f"no action for {type(cmd).__name__}")  # pragma: no cover - every command is matched


def agent_of(agents: Mapping[str, Agent], agent_id: str, request_id: str | None) -> Agent:
    """The agent `agent_id`, or `unknown_agent`."""
    agent = agents.get(agent_id)
    if agent is None:
        raise p.ProtocolError("unknown_agent", f"No agent with ID '{p.shown(agent_id)}' exists", request_id)
    return agent


def check_length(field: str, text: str, limit: int, request_id: str | None) -> None:
    """Refuse (`too_long`) a text field of more than `limit` characters."""
    if len(text) > limit:
        raise p.ProtocolError("too_long", f"Field '{field}' is longer than {limit} characters", request_id)
