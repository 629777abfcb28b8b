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


Event = Union[UserMessage, AgentMessage, MemoryCleared]
MessageEvent = Union[UserMessage, AgentMessage]
EVENT_TYPES: dict[str, type] = {cls.TYPE: cls for cls in (UserMessage, AgentMessage, MemoryCleared)}


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

    Exactly `json.dumps(body, ensure_ascii=False, separators=(",", ":"))`, spelled out: it runs
    for every appended event.
    """
    if isinstance(event, MemoryCleared):
        text = '{"long_term":true' if event.long_term else '{"long_term":false'
    else:
        text = '{"content":' + _quote(event.content)
    if event.request_id is not None:
        text += ',"request_id":' + _quote(event.request_id)
    command_id = getattr(event, "command_id", None)
    if command_id is not None:
        text += ',"command_id":' + _quote(command_id)
    return text + "}"


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
    return AgentMessage(agent_id, user, at, body["content"], request_id, body.get("command_id"))
