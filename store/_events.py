"""The events of the log: small immutable records of what happened, and how they are stored.

Must not import trio, `actors` or `transport`.
"""
from __future__ import annotations

import json
from json.encoder import encode_basestring as _quote  # the string encoder of ensure_ascii=False
from typing import Union

from attrs import frozen


@frozen
class UserMessage:
    """A user said something to an agent."""

    agent_id: str
    user: str
    at: str
    content: str
    request_id: str | None = None

    #: The client's id for the chat command, if it gave one (a retry with it is not appended again).
    command_id: str | None = None

    TYPE = "user_message"
    role = "user"


@frozen
class AgentMessage:
    """An agent answered a user."""

    agent_id: str
    user: str
    at: str
    content: str
    request_id: str | None = None
    #: The chat command this answers, if it had a `command_id` (how a retry finds its answer).
    command_id: str | None = None

    TYPE = "agent_message"
    role = "assistant"


@frozen
class MemoryCleared:
    """A user cleared an agent's memory of them: short-term only, or everything."""

    agent_id: str
    user: str
    at: str
    long_term: bool
    request_id: str | None = None

    TYPE = "memory_cleared"


@frozen
class FactRemembered:
    """An agent stored a fact about the user in long-term memory (the `remember` tool).

    A message of role "fact": it joins the short-term window, the long-term count and the search
    index like the user's and the agent's messages, and a long-term clear forgets it with them.
    """

    agent_id: str
    user: str
    at: str
    content: str
    request_id: str | None = None

    TYPE = "fact_remembered"
    role = "fact"


# -- a turn's activity: logged, replayed by `agentcast replay`, but not part of memory --------


@frozen
class ToolCalled:
    """During a turn, the model called tool `tool` with `arguments` (a JSON object, or the model's
    raw text when it was not valid JSON). Logged before the tool runs and before any client sees it."""

    agent_id: str
    user: str
    at: str
    call_id: str
    tool: str
    arguments: object
    request_id: str | None = None

    TYPE = "tool_called"


@frozen
class ToolReturned:
    """The tool of call `call_id` returned `result` (any JSON value), or failed with `error`."""

    agent_id: str
    user: str
    at: str
    call_id: str
    tool: str
    result: object = None
    error: str | None = None
    request_id: str | None = None

    TYPE = "tool_returned"


#: The outcomes of a turn that ended without an answer (`TurnEnded.outcome`).
CANCELLED, FAILED = "cancelled", "failed"


@frozen
class TurnEnded:
    """A turn ended without an answer: `cancelled` (by the user, an interrupting chat or a
    disconnect) or `failed` (the brain's `reason`); `partial` is the text streamed before that."""

    agent_id: str
    user: str
    at: str
    outcome: str
    partial: str = ""
    reason: str = ""
    request_id: str | None = None
    #: The chat command of the turn, if it had a `command_id` (how a retry finds that it was cancelled).
    command_id: str | None = None

    TYPE = "turn_ended"


Event = Union[UserMessage, AgentMessage, MemoryCleared, FactRemembered, ToolCalled, ToolReturned, TurnEnded]
EVENT_TYPES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (UserMessage, AgentMessage, MemoryCleared, FactRemembered, ToolCalled, ToolReturned, TurnEnded)
}
#: The event types that are remembered messages (short-term window, long-term count, search index), by role.
ROLE_OF_TYPE: dict[str, str] = {cls.TYPE: cls.role for cls in (UserMessage, AgentMessage, FactRemembered)}
#: The event types of a turn's activity: logged and replayed, but not part of memory.
ACTIVITY_TYPES = frozenset(cls.TYPE for cls in (ToolCalled, ToolReturned, TurnEnded))


def is_message(event: Event) -> bool:
    """True for an event that is a remembered message (it has a `role` and a `content`)."""
    return event.TYPE in ROLE_OF_TYPE


@frozen
class Recorded:
    """An event as the log holds it: with its sequence number, unique and increasing."""

    seq: int
    event: Event


class UndecodableEvent(ValueError):
    """A row of the log whose type or payload this version cannot read."""


#: The payload of a message event whose text was forgotten (a long-term clear came after it).
REDACTED = '{"content":"","redacted":true}'


def payload_of(event: Event) -> str:
    """The JSON payload stored for `event`: everything but the columns the log indexes.

    Exactly `json.dumps(body, ensure_ascii=False, separators=(",", ":"))`: spelled out for the
    messages and clears (it runs for every appended message), `json.dumps` itself for the
    others (a turn's activity, see `_payload_by_dumps`).
    """
    if isinstance(event, MemoryCleared):
        text = '{"long_term":true' if event.long_term else '{"long_term":false'
    elif event.TYPE in ROLE_OF_TYPE:
        text = '{"content":' + _quote(event.content)
    else:
        return _payload_by_dumps(event)
    if event.request_id is not None:
        text += ',"request_id":' + _quote(event.request_id)
    command_id = getattr(event, "command_id", None)
    if command_id is not None:
        text += ',"command_id":' + _quote(command_id)
    return text + "}"


def _payload_by_dumps(event: Event) -> str:
    """`payload_of` the general way: the body as a dict, then `json.dumps` (the reference the
    spelled-out cases must match byte for byte)."""
    body: dict[str, object] = {}
    if isinstance(event, MemoryCleared):
        body["long_term"] = event.long_term
    elif event.TYPE in ACTIVITY_TYPES:
        for name in _ACTIVITY_FIELDS[event.TYPE]:
            value = getattr(event, name)
            if value is not None:
                body[name] = value
    else:
        body["content"] = event.content
    if event.request_id is not None:
        body["request_id"] = event.request_id
    if getattr(event, "command_id", None) is not None:
        body["command_id"] = event.command_id
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


#: The payload fields of each activity event (besides request_id), and the type each must have.
_ACTIVITY_FIELDS: dict[str, dict[str, type | tuple[type, ...] | None]] = {
    "tool_called": {"call_id": str, "tool": str, "arguments": None},
    "tool_returned": {"call_id": str, "tool": str, "result": None, "error": (str, type(None))},
    "turn_ended": {"outcome": str, "partial": str, "reason": str},
}


def redacted_payload(type_: str, payload: str) -> str:
    """The payload of an event of `type_` once a long-term clear forgot its text.

    Messages become REDACTED; a tool call keeps its call id and tool name but loses its
    arguments; a tool result loses its result and error; an ended turn loses its partial answer
    (its outcome and reason stay). None keeps the ids its client chose (`request_id`,
    `command_id`): they are the client's text too, and a retry must not find a forgotten turn.
    Other events are returned unchanged.
    """
    if type_ in ROLE_OF_TYPE:
        return REDACTED
    if type_ not in ACTIVITY_TYPES:
        return payload
    body = json.loads(payload)
    body.pop("request_id", None)
    body.pop("command_id", None)
    if type_ == "tool_called":
        body["arguments"] = {}
    elif type_ == "tool_returned":
        body.pop("result", None)
        if body.get("error") is not None:
            body["error"] = ""
    else:
        body["partial"] = ""
    body["redacted"] = True
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def payload_from_row(type_: str, payload: str) -> dict:
    """The checked JSON payload of a stored event; raises `UndecodableEvent` when it cannot be read.

    Cheaper than `event_from_row` (no event object): for passes that only need to know every
    row is readable and need the events themselves for a few rows.
    """
    cls = EVENT_TYPES.get(type_)
    if cls is None:
        raise UndecodableEvent(f"unknown event type {type_!r}")
    try:
        body = json.loads(payload)
        if cls is MemoryCleared:
            if type(body["long_term"]) is not bool:
                raise TypeError("long_term is not a boolean")
        elif type_ in ACTIVITY_TYPES:
            for name, types in _ACTIVITY_FIELDS[type_].items():
                if types is not None and name in body and not isinstance(body[name], types):
                    raise TypeError(f"{name} is not a string")
            for name in ("outcome",) if type_ == "turn_ended" else ("call_id", "tool"):
                if name not in body:
                    raise KeyError(name)
        elif type(body["content"]) is not str:
            raise TypeError("content is not a string")
        request_id = body.get("request_id")
        if request_id is not None and type(request_id) is not str:
            raise TypeError("request_id is not a string")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UndecodableEvent(f"undecodable {type_} payload: {exc}") from None
    return body


def event_from_row(type_: str, agent_id: str, user: str, at: str, payload: str) -> Event:
    """Rebuild an event from its stored columns; raises `UndecodableEvent` when it cannot."""
    body = payload_from_row(type_, payload)
    request_id = body.get("request_id")
    if type_ == "memory_cleared":
        return MemoryCleared(agent_id, user, at, body["long_term"], request_id)
    if type_ == "user_message":
        return UserMessage(agent_id, user, at, body["content"], request_id, body.get("command_id"))
    if type_ == "agent_message":
        return AgentMessage(agent_id, user, at, body["content"], request_id, body.get("command_id"))
    if type_ == "fact_remembered":
        return FactRemembered(agent_id, user, at, body["content"], request_id)
    if type_ == "tool_called":
        return ToolCalled(agent_id, user, at, body["call_id"], body["tool"], body.get("arguments"), request_id)
    if type_ == "tool_returned":
        return ToolReturned(agent_id, user, at, body["call_id"], body["tool"], body.get("result"), body.get("error"),
                            request_id)
    return TurnEnded(agent_id, user, at, body["outcome"], body.get("partial", ""), body.get("reason", ""), request_id,
                     body.get("command_id"))
