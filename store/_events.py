"""The events of the log: what was recorded, one class per event type, each declared once.

An event type is a frozen attrs class: its stored `TYPE` (never changes: it is on disk), its fields
after the three every event has (`agent_id`, `user`, `at`), and its kind, the base class that says
how memory folds it (`store._memory.Projection`):

- `RememberedMessage` (with its `role`): a message of memory. It joins the short-term window, counts
  in long-term memory and is indexed for search; a long-term clear erases its text.
- `UserClearedMemory`: a clear of the short-term window, or of everything.
- `TurnActivity`: what a turn did besides answering (a tool call, its result, a turn that ended
  without an answer): logged and replayed, folded only as a new version of memory. A long-term
  clear erases the user's words in it (each class's `erase`); replay shows it as a line (`shown`).

From the fields alone come the payload codec (the JSON of the fields but those three, None left out:
byte for byte `json.dumps(..., ensure_ascii=False, separators=(",", ":"))`) and its checks when a
row is read back. The `Event` union names every type: code that dispatches over events matches on
it exhaustively (`match` + `typing.assert_never`), so a type added here and not handled somewhere
fails type checking (tests/test_types.py) instead of being skipped.

Must not import trio, `actors` or `transport`.
"""
from __future__ import annotations

import json
import typing
from json.encoder import encode_basestring as _quote  # the string encoder of ensure_ascii=False
from typing import Any, ClassVar, NamedTuple, Union

import attrs
from attrs import frozen

#: The fields every event has, stored as columns of their own rather than in the payload.
HEAD_FIELDS = ("agent_id", "user", "at")

#: The payload of a message whose text was forgotten (a long-term clear came after it).
REDACTED = '{"content":"","redacted":true}'


class UndecodableEvent(ValueError):
    """A row of the log whose type or payload this version cannot read."""


class PayloadField(NamedTuple):
    """One field of an event's payload: its name, the JSON types a stored value may have (None: any),
    and its default (`required` when the payload must hold it). A tuple: every row read unpacks them."""

    name: str
    #: the Python types of the JSON values it may hold, or None for any JSON value
    types: frozenset[type] | None
    #: what a value of another type is not ("a string"), for the error
    expected: str
    required: bool
    default: object = None


#: The JSON types a stored value of each field annotation may have (an annotation not listed here is
#: refused when the class is registered: a new field type needs its entry).
_CHECKS: dict[str, tuple[frozenset[type] | None, str]] = {
    "str": (frozenset({str}), "a string"),
    "bool": (frozenset({bool}), "a boolean"),
    "str | None": (frozenset({str, type(None)}), "a string"),
    "object": (None, "a JSON value"),
}

#: A payload field that is absent.
_ABSENT = object()


@frozen
class BaseEvent:
    """What every event has: whose stream it belongs to (`agent_id`, `user`) and when (`at`, ISO 8601 UTC)."""

    agent_id: str
    user: str
    at: str

    #: The event's type as stored (the `type` column): fixed forever once logged.
    TYPE: ClassVar[str]
    #: The payload's fields, derived from the class's own attrs fields when it is registered (`_register`).
    PAYLOAD_FIELDS: ClassVar[tuple[PayloadField, ...]] = ()

    def payload(self) -> str:
        """The JSON text stored for this event (see `payload_of`)."""
        return json.dumps(self.body(), ensure_ascii=False, separators=(",", ":"))

    def body(self) -> dict[str, object]:
        """The payload as a dict: every payload field that is not None, in declaration order."""
        body: dict[str, object] = {}
        for f in self.PAYLOAD_FIELDS:
            value = getattr(self, f.name)
            if value is not None:
                body[f.name] = value
        return body

    @classmethod
    def decode(cls, agent_id: str, user: str, at: str, body: object) -> Any:
        """The event of this type with these columns and payload `body` (parsed JSON); raises
        `KeyError`/`TypeError` for a payload it cannot be (see `event_from_row`)."""
        return cls(agent_id, user, at, *cls.payload_values(body))

    @classmethod
    def payload_values(cls, body: object) -> list[object]:
        """The values of the payload fields in `body` (parsed JSON), checked, defaults filled in; raises
        `KeyError`/`TypeError` for a payload this type cannot have."""
        if type(body) is not dict:
            raise TypeError("the payload is not a JSON object")
        values = []
        get = body.get
        for name, types, expected, required, default in cls.PAYLOAD_FIELDS:
            value = get(name, _ABSENT)
            if value is _ABSENT:
                if required:
                    raise KeyError(name)
                value = default
            elif types is not None and type(value) not in types:
                raise TypeError(f"{name} is not {expected}")
            values.append(value)
        return values

    @classmethod
    def redacted_payload(cls, payload: str) -> str:
        """This event's stored `payload` once a later long-term clear forgot the user's words in it
        (unchanged for an event that holds none of them)."""
        return payload

    @classmethod
    def is_redacted(cls, payload: str) -> bool:
        """True if `payload` is one that a long-term clear redacted."""
        return False


# -- messages: what memory is made of -------------------------------------------------------------


@frozen
class RememberedMessage(BaseEvent):
    """The kind of the events that are messages of memory: each has a `content` and a `role`.

    Folded into the short-term window and the long-term count, indexed for search; a long-term
    clear replaces the payload of every earlier one by REDACTED (no text, no client ids).
    """

    content: str

    #: The message's role in memory and in search results: "user", "assistant" or "fact".
    role: ClassVar[str]
    #: Set at registration: the payload fields are those `payload` spells out (content, request_id, command_id).
    SPELLED_OUT: ClassVar[bool] = False

    def payload(self) -> str:
        # Spelled out (one runs for every appended message), byte for byte what `BaseEvent.payload` makes
        # (tests/test_store.py compares them); a message class with other fields takes the general way.
        if not self.SPELLED_OUT:
            return BaseEvent.payload(self)
        text = '{"content":' + _quote(self.content)
        request_id = getattr(self, "request_id", None)
        if request_id is not None:
            text += ',"request_id":' + _quote(request_id)
        command_id = getattr(self, "command_id", None)
        if command_id is not None:
            text += ',"command_id":' + _quote(command_id)
        return text + "}"

    @classmethod
    def redacted_payload(cls, payload: str) -> str:
        return REDACTED

    @classmethod
    def is_redacted(cls, payload: str) -> bool:
        return payload == REDACTED


@frozen
class UserSaid(RememberedMessage):
    """A user said `content` to an agent."""

    request_id: str | None = None
    #: The client's id for the chat command, if it gave one (a retry with it is not appended again).
    command_id: str | None = None

    TYPE = "user_message"
    role = "user"


@frozen
class AgentAnswered(RememberedMessage):
    """An agent answered a user with `content`."""

    request_id: str | None = None
    #: The chat command this answers, if it had a `command_id` (how a retry finds its answer).
    command_id: str | None = None

    TYPE = "agent_message"
    role = "assistant"


@frozen
class FactRemembered(RememberedMessage):
    """An agent stored a fact about the user in long-term memory (the `remember` tool).

    A message of role "fact": it joins the short-term window, the long-term count and the search
    index like the user's and the agent's messages, and a long-term clear forgets it with them.
    """

    request_id: str | None = None

    TYPE = "fact_remembered"
    role = "fact"


# -- clears ---------------------------------------------------------------------------------------


@frozen
class UserClearedMemory(BaseEvent):
    """A user cleared an agent's memory of them: the short-term window only, or everything
    (`long_term`: then the text of every earlier message and turn activity of theirs is erased)."""

    long_term: bool
    request_id: str | None = None

    TYPE = "memory_cleared"

    def payload(self) -> str:  # spelled out, as a message's is
        text = '{"long_term":true' if self.long_term else '{"long_term":false'
        if self.request_id is not None:
            text += ',"request_id":' + _quote(self.request_id)
        return text + "}"


# -- a turn's activity: logged, replayed by `agentcast replay`, but not part of memory --------------


@frozen
class TurnActivity(BaseEvent):
    """The kind of the events of what a turn did besides answering: logged and replayed (never
    re-run), folded only as a new version of memory, not indexed.

    A long-term clear erases the user's words in them (`erase`), and the ids the client chose
    (`request_id`, `command_id`), and marks them `"redacted": true`; what is left (call ids, tool
    names, outcomes, reasons) says *that* something happened."""

    @classmethod
    def erase(cls, body: dict[str, Any]) -> None:
        """Take the user's words out of the parsed payload `body`, in place."""
        raise NotImplementedError

    def shown(self) -> tuple[str, str]:
        """How `agentcast replay` shows this event: a label ("tool call") and its text."""
        raise NotImplementedError

    @classmethod
    def redacted_payload(cls, payload: str) -> str:
        body = json.loads(payload)
        body.pop("request_id", None)
        body.pop("command_id", None)
        cls.erase(body)
        body["redacted"] = True
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def is_redacted(cls, payload: str) -> bool:
        body = json.loads(payload)
        return type(body) is dict and body.get("redacted") is True


@frozen
class ToolCalled(TurnActivity):
    """During a turn, the model called tool `tool` with `arguments` (a JSON object, or the model's
    raw text when it was not valid JSON). Logged before the tool runs and before any client sees it."""

    call_id: str
    tool: str
    arguments: object = None
    request_id: str | None = None

    TYPE = "tool_called"

    @classmethod
    def erase(cls, body: dict[str, Any]) -> None:
        body["arguments"] = {}

    def shown(self) -> tuple[str, str]:
        return "tool call", f"{self.tool}  {json.dumps(self.arguments, ensure_ascii=False)}  [{self.call_id}]"


@frozen
class ToolReturned(TurnActivity):
    """The tool of call `call_id` returned `result` (any JSON value), or failed with `error`."""

    call_id: str
    tool: str
    result: object = None
    error: str | None = None
    request_id: str | None = None

    TYPE = "tool_returned"

    @classmethod
    def erase(cls, body: dict[str, Any]) -> None:
        body.pop("result", None)
        if body.get("error") is not None:
            body["error"] = ""

    def shown(self) -> tuple[str, str]:
        outcome = f"error: {self.error}" if self.error is not None else json.dumps(self.result, ensure_ascii=False)
        return "tool result", f"{self.tool}  {outcome}  [{self.call_id}]"


#: The outcomes of a turn that ended without an answer (`TurnEnded.outcome`).
CANCELLED, FAILED = "cancelled", "failed"


@frozen
class TurnEnded(TurnActivity):
    """A turn ended without an answer: `cancelled` (by the user, an interrupting chat or a
    disconnect) or `failed` (the brain's `reason`); `partial` is the text streamed before that."""

    outcome: str
    partial: str = ""
    reason: str = ""
    request_id: str | None = None
    #: The chat command of the turn, if it had a `command_id` (how a retry finds that it was cancelled).
    command_id: str | None = None

    TYPE = "turn_ended"

    @classmethod
    def erase(cls, body: dict[str, Any]) -> None:
        body["partial"] = ""

    def shown(self) -> tuple[str, str]:
        partial = f"partial answer: {json.dumps(self.partial, ensure_ascii=False)}"
        return self.outcome, partial if self.outcome != FAILED else f"{self.reason}  ({partial})"


#: Every event type. Matching on an `Event` with a case for each (or for each kind) and `assert_never`
#: after them is how events are dispatched; a type added here is then handled everywhere or fails type checking.
Event = Union[UserSaid, AgentAnswered, UserClearedMemory, FactRemembered, ToolCalled, ToolReturned, TurnEnded]


def _register(cls: type[BaseEvent]) -> type[BaseEvent]:
    """Check `cls`'s declarations and derive its payload fields from its attrs fields."""
    kinds = [kind for kind in (RememberedMessage, UserClearedMemory, TurnActivity) if issubclass(cls, kind)]
    if len(kinds) != 1:
        raise TypeError(f"{cls.__name__}: an event is of exactly one kind (a message, a clear or turn activity)")
    if not isinstance(cls.__dict__.get("TYPE"), str):
        raise TypeError(f"{cls.__name__}: an event type declares its stored TYPE")
    fields = []
    for a in attrs.fields(cls):
        if a.name in HEAD_FIELDS:
            continue
        annotation = a.type if isinstance(a.type, str) else getattr(a.type, "__name__", repr(a.type))
        if annotation not in _CHECKS:
            raise TypeError(f"{cls.__name__}.{a.name}: no check for a stored {annotation!r} (add one to _CHECKS)")
        types, expected = _CHECKS[annotation]
        required = a.default is attrs.NOTHING
        fields.append(PayloadField(a.name, types, expected, required, None if required else a.default))
    cls.PAYLOAD_FIELDS = tuple(fields)
    if issubclass(cls, RememberedMessage):
        if not isinstance(cls.__dict__.get("role"), str):
            raise TypeError(f"{cls.__name__}: a message declares its role")
        names = tuple(f.name for f in fields)
        cls.SPELLED_OUT = names in (("content",), ("content", "request_id"), ("content", "request_id", "command_id"))
    if issubclass(cls, TurnActivity) and ("erase" not in cls.__dict__ or "shown" not in cls.__dict__):
        raise TypeError(f"{cls.__name__}: turn activity declares what forgetting erases and how replay shows it")
    return cls


#: The event classes by stored type.
EVENT_TYPES: dict[str, type[BaseEvent]] = {}
for _cls in typing.get_args(Event):
    _register(_cls)
    if _cls.TYPE in EVENT_TYPES:
        raise TypeError(f"two event types are stored as {_cls.TYPE!r}")
    EVENT_TYPES[_cls.TYPE] = _cls
del _cls

#: The stored types of the messages of memory (short-term window, long-term count, search index), and their roles.
ROLE_OF_TYPE: dict[str, str] = {
    t: cls.role for t, cls in EVENT_TYPES.items() if issubclass(cls, RememberedMessage)
}
#: The stored types of a turn's activity: logged and replayed, not part of memory.
ACTIVITY_TYPES = frozenset(t for t, cls in EVENT_TYPES.items() if issubclass(cls, TurnActivity))


@frozen
class Recorded:
    """An event as the log holds it: with its sequence number, unique and increasing."""

    seq: int
    event: Event


def payload_of(event: Event) -> str:
    """The JSON payload stored for `event`: its fields but the columns (agent_id, user, at), None left out.

    Exactly `json.dumps(body, ensure_ascii=False, separators=(",", ":"))`: spelled out for the
    messages and clears (it runs for every appended message), `json.dumps` itself for the
    others (see `_payload_by_dumps`).
    """
    return event.payload()


def _payload_by_dumps(event: Event) -> str:
    """`payload_of` the general way, for every type: the reference the spelled-out cases must match byte for byte."""
    return BaseEvent.payload(event)


def redacted_payload(type_: str, payload: str) -> str:
    """The payload of an event of `type_` once a long-term clear forgot its text.

    Messages become REDACTED; a tool call keeps its call id and tool name but loses its
    arguments; a tool result loses its result and error; an ended turn loses its partial answer
    (its outcome and reason stay). None keeps the ids its client chose (`request_id`,
    `command_id`): they are the client's text too, and a retry must not find a forgotten turn.
    Other events (clears, unknown types) are returned unchanged.
    """
    cls = EVENT_TYPES.get(type_)
    return payload if cls is None else cls.redacted_payload(payload)


def is_redacted(type_: str, payload: str) -> bool:
    """True if the stored event (`type_`, `payload`) is one whose text a long-term clear erased."""
    cls = EVENT_TYPES.get(type_)
    return cls is not None and cls.is_redacted(payload)


def check_payload(type_: str, payload: str) -> None:
    """Raise `UndecodableEvent` unless `event_from_row` can read a row of `type_` with `payload` (cheaper:
    no event is made; for passes that must know that every row is readable, and need few of the events)."""
    cls = EVENT_TYPES.get(type_)
    if cls is None:
        raise UndecodableEvent(f"unknown event type {type_!r}")
    try:
        cls.payload_values(json.loads(payload))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UndecodableEvent(f"undecodable {type_} payload: {exc}") from None


def event_from_row(type_: str, agent_id: str, user: str, at: str, payload: str) -> Event:
    """Rebuild an event from its stored columns; raises `UndecodableEvent` when it cannot."""
    cls = EVENT_TYPES.get(type_)
    if cls is None:
        raise UndecodableEvent(f"unknown event type {type_!r}")
    try:
        event: Event = cls.decode(agent_id, user, at, json.loads(payload))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UndecodableEvent(f"undecodable {type_} payload: {exc}") from None
    return event
