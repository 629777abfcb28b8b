"""The agentcast wire protocol, sans-IO: the frame classes, `decode` for client frames, `encode` for server frames.

Pure functions over JSON text; must not import trio, trio_websocket, `actors` or `store`.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any, NewType, Optional, Union

import attrs
import cattrs
import orjson
from attrs import frozen
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError
from cattrs.strategies import configure_tagged_union

logger = logging.getLogger("agentcast.protocol")

# -- field types with strict validation ------------------------------------------------

#: Non-empty text (chat messages, search queries).
Text = NewType("Text", str)
#: An agent id: non-empty text of at most MAX_ID_BYTES bytes (UTF-8).
AgentId = NewType("AgentId", str)
#: A client-chosen command id: non-empty text of at most MAX_ID_BYTES bytes (UTF-8).
CommandId = NewType("CommandId", str)
#: A client-chosen request id, echoed in the answers: text of at most MAX_ID_BYTES bytes (UTF-8).
RequestId = NewType("RequestId", str)
#: A search limit: an integer from 1 to MAX_LIMIT.
Limit = NewType("Limit", int)
#: A user id: an integer of at most MAX_ID_BYTES digits (a minus sign counts as one), or non-empty text of
#: at most MAX_ID_BYTES bytes (UTF-8): either way its text form, which keys the user's memory, is at most
#: MAX_ID_BYTES bytes.
UserId = Union[int, str]
#: A log sequence number to resume after: an integer from 0 to MAX_SEQ.
AfterSeq = NewType("AfterSeq", int)
#: An authentication token: non-empty text of at most MAX_TOKEN_BYTES bytes (UTF-8).
Token = NewType("Token", str)
#: The legs a memory search runs: a non-empty list of distinct names from SEARCH_LEGS.
Legs = NewType("Legs", list)

#: The longest id a client may choose (agent, command, request and user ids), in bytes as UTF-8.
MAX_ID_BYTES = 256
MAX_LIMIT = 100
#: The largest sequence number SQLite can hold.
MAX_SEQ = 2**63 - 1
DEFAULT_LIMIT = 5
#: The legs of a memory search: BM25 over the words, cosine over the messages' vectors (when the agent has an embedder).
SEARCH_LEGS = ("lexical", "semantic")
#: The longest token an `auth` frame may carry (4 KiB), in bytes as UTF-8.
MAX_TOKEN_BYTES = 4096
#: The integers a user id may be: their decimal form is at most MAX_ID_BYTES characters.
_USER_INT_MIN, _USER_INT_MAX = -(10 ** (MAX_ID_BYTES - 1)), 10**MAX_ID_BYTES


#: The most characters of a client's value that a log line or an error message shows (see `shown`).
SHOWN_CHARS = 120


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A client's `value` as a log line or an error message may show it: text as it is, anything else as
    JSON; every character that is not printable (control characters, line and paragraph separators, format
    characters such as bidi overrides, lone surrogates: what `repr` escapes) escaped as `repr` writes it
    (`\\n`, `\\x1b`, `\\u2028`), so that a value never starts a log line of its own nor reaches a terminal
    as a control sequence; cut after `limit` characters, then "...[N characters]" says how long it was.

    Every value a client chose (a type, an id, a header, a path) goes through here before it is logged or
    put in an error message. (`actors`, which may not import this, log such values with `%r`: the same
    escaping; the ids they hold are bounded by this module's caps.)
    """
    if type(value) is str:
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):  # an integer too long for str(), a foreign object
            text = f"<{type(value).__name__}>"
    if len(text) <= limit and text.isprintable():
        return text
    head = text[:limit]
    if not head.isprintable():
        head = "".join(c if c.isprintable() else repr(c)[1:-1] for c in head)
    if len(head) > limit or len(text) > limit:
        return f"{head[:limit]}...[{len(text)} characters]"
    return head


class ProtocolError(Exception):
    """A client frame that cannot be accepted; becomes an `error` frame with `code`."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class _FieldError(ValueError):
    """Raised by the structure hooks below; the text completes "Field 'x' ..."."""


# -- client -> server --------------------------------------------------------------------


@frozen
class Ping:
    request_id: RequestId | None = None
    TYPE = "ping"


@frozen
class Auth:
    """Authenticate the connection with a token (when the server has authentication on)."""

    token: Token
    request_id: RequestId | None = None
    TYPE = "auth"


@frozen
class SetUser:
    user_id: UserId
    request_id: RequestId | None = None
    TYPE = "set_user"


@frozen
class Subscribe:
    agent_id: AgentId
    request_id: RequestId | None = None
    #: Resume: first every logged event of the connection's (agent, user) with a greater seq, then live.
    after_seq: Optional[AfterSeq] = None
    TYPE = "subscribe"


@frozen
class Unsubscribe:
    agent_id: AgentId
    request_id: RequestId | None = None
    TYPE = "unsubscribe"


@frozen
class Chat:
    agent_id: AgentId
    message: Text
    request_id: RequestId | None = None
    #: Makes the chat idempotent: a retry with a command_id the log holds is answered from the log.
    command_id: CommandId | None = None
    TYPE = "chat"


@frozen
class SearchMemory:
    agent_id: AgentId
    query: Text
    limit: Limit = DEFAULT_LIMIT
    use_long_term: bool = True
    request_id: RequestId | None = None
    #: The legs to run ("lexical", "semantic"); absent: every leg the agent has.
    legs: Optional[Legs] = None
    TYPE = "search_memory"


@frozen
class ClearMemory:
    agent_id: AgentId
    clear_long_term: bool = False
    request_id: RequestId | None = None
    TYPE = "clear_memory"


# -- client -> server: turns of real models (tool calls, cancellation) ------------------------


@frozen
class Cancel:
    """Cancel the user's running turn on the agent (the one with `request_id`, when given)."""

    agent_id: AgentId
    request_id: RequestId | None = None
    TYPE = "cancel"


Command = Union[Ping, Auth, SetUser, Subscribe, Unsubscribe, Chat, SearchMemory, ClearMemory, Cancel]
COMMAND_TYPES: dict[str, type] = {
    c.TYPE: c for c in (Ping, Auth, SetUser, Subscribe, Unsubscribe, Chat, SearchMemory, ClearMemory, Cancel)
}

# -- server -> client --------------------------------------------------------------------


@frozen
class Connected:
    """The first frame of a connection. `auth`: whether the server has authentication on (then only `auth`
    and `ping` are carried out until the connection authenticates); None when a server did not say."""

    client_id: str
    auth: bool | None = None
    TYPE = "connected"


@frozen
class Pong:
    """The answer to a `ping`; its type on the wire is also "ping", as the seed's clients expect."""

    request_id: str | None = None
    TYPE = "ping"


@frozen
class Authenticated:
    """The connection is authenticated as `user_id` (the token's, same JSON type) until `expires_at` (ISO UTC)."""

    user_id: UserId
    expires_at: str
    request_id: str | None = None
    TYPE = "authenticated"


@frozen
class UserSet:
    user_id: UserId
    request_id: str | None = None
    TYPE = "user_set"


@frozen
class Subscribed:
    agent_id: str
    message: str
    request_id: str | None = None
    #: For a resumed subscription: the `after_seq` it resumes after (its backlog follows).
    after_seq: int | None = None
    TYPE = "subscribed"


@frozen
class Unsubscribed:
    agent_id: str
    message: str
    request_id: str | None = None
    TYPE = "unsubscribed"


@frozen
class AgentThinking:
    agent_id: str
    request_id: str | None = None
    TYPE = "agent_thinking"


@frozen
class ResponseChunk:
    agent_id: str
    delta: str
    request_id: str | None = None
    TYPE = "response_chunk"


@frozen
class Usage:
    """Tokens the model's provider counted for a turn (all its requests together)."""

    prompt_tokens: int
    completion_tokens: int


@frozen
class Response:
    """The agent's whole answer, sent once it is committed to the log as event `seq`."""

    agent_id: str
    message: str
    seq: int
    request_id: str | None = None
    #: When the provider reported it (real models; never for the echo brain).
    usage: Usage | None = None
    TYPE = "response"


@frozen
class UserMessage:
    """A message of the user, committed to the log as event `seq` (in a backlog, and live to resumed subscriptions)."""

    agent_id: str
    message: str
    seq: int
    request_id: str | None = None
    TYPE = "user_message"


@frozen
class AgentDone:
    agent_id: str
    request_id: str | None = None
    TYPE = "agent_done"


@frozen
class MemoryResult:
    role: str
    content: str
    timestamp: str
    score: float
    source: str


@frozen
class MemoryResults:
    agent_id: str
    query: str
    results: list[MemoryResult]
    request_id: str | None = None
    #: The legs that ranked `results` ("lexical", "semantic"); a server that does not say ran "lexical".
    legs: list[str] | None = None
    TYPE = "memory_results"


@frozen
class MemoryCleared:
    agent_id: str
    clear_long_term: bool
    forgotten: int
    seq: int
    request_id: str | None = None
    TYPE = "memory_cleared"


@frozen
class Error:
    code: str
    message: str
    agent_id: str | None = None
    request_id: str | None = None
    TYPE = "error"


# -- server -> client: turns of real models (tool calls, cancellation) ------------------------


@frozen
class ToolCall:
    """The model called `tool` with `arguments` (a JSON object, or the model's raw text if it was
    not JSON); logged before it is sent. Its `tool_result` (same `call_id`) follows."""

    agent_id: str
    call_id: str
    tool: str
    arguments: Any
    request_id: str | None = None
    TYPE = "tool_call"


@frozen
class ToolResult:
    """Tool call `call_id` returned `result` (any JSON value), or failed with `error` (then `result` is absent)."""

    agent_id: str
    call_id: str
    tool: str
    result: Any = None
    error: str | None = None
    request_id: str | None = None
    TYPE = "tool_result"


@frozen
class Cancelled:
    """The turn was cancelled; `partial` is the answer streamed until then (logged as a cancelled turn).
    `agent_done` follows."""

    agent_id: str
    partial: str
    request_id: str | None = None
    TYPE = "cancelled"


ServerFrame = Union[
    Connected, Pong, Authenticated, UserSet, Subscribed, Unsubscribed, AgentThinking, ResponseChunk,
    Response, UserMessage, AgentDone, MemoryResults, MemoryCleared, Error,
    ToolCall, ToolResult, Cancelled,
]

# -- list_agents: which agents exist (issue 7) ------------------------------------------------
# Kept in a block of its own: the unions above are extended here, so the lines listing the original
# frames stay as they were.


@frozen
class ListAgents:
    """Ask which agents the server has."""

    request_id: RequestId | None = None
    TYPE = "list_agents"


@frozen
class AgentInfo:
    agent_id: str
    description: str


@frozen
class AgentList:
    """The answer to `list_agents`: every agent, in the order of the server's configuration."""

    agents: list[AgentInfo]
    request_id: str | None = None
    TYPE = "agents"


Command = Union[Command, ListAgents]
COMMAND_TYPES[ListAgents.TYPE] = ListAgents
ServerFrame = Union[ServerFrame, AgentList]

# -- the converter -----------------------------------------------------------------------


def _text_ok(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800"
        return False
    return True


def utf8_length(value: str) -> int:
    """How many bytes `value` takes as UTF-8, or -1 if it cannot be encoded (a lone surrogate)."""
    if value.isascii():  # a flag of the string: no scan
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return -1


def valid_id(value: object) -> bool:
    """A client-chosen id that may be taken (and echoed): text of at most MAX_ID_BYTES bytes as UTF-8."""
    return type(value) is str and 0 <= utf8_length(value) <= MAX_ID_BYTES


def valid_user_id(value: object) -> bool:
    """A user id: an integer whose decimal form is at most MAX_ID_BYTES characters, or non-empty text of at
    most MAX_ID_BYTES bytes as UTF-8."""
    if type(value) is int:
        return _USER_INT_MIN < value < _USER_INT_MAX
    return type(value) is str and 0 < utf8_length(value) <= MAX_ID_BYTES


def _strict_str(value, _type) -> str:
    if type(value) is not str or not _text_ok(value):
        raise _FieldError("must be a string")
    return value


def _strict_bool(value, _type) -> bool:
    if type(value) is not bool:
        raise _FieldError("must be true or false")
    return value


def _text(value, _type) -> str:
    if type(value) is not str or not value.strip() or not _text_ok(value):
        raise _FieldError("must be a non-empty string")
    return value


def _agent_id(value, _type) -> str:
    if type(value) is not str or not 0 < utf8_length(value) <= MAX_ID_BYTES:
        raise _FieldError(f"must be a non-empty string of at most {MAX_ID_BYTES} bytes (UTF-8)")
    return value


def _request_id(value, _type) -> str:
    # The message never shows the value: echoing a long one back is what the bound is there to prevent.
    if not valid_id(value):
        raise _FieldError(f"must be a string of at most {MAX_ID_BYTES} bytes (UTF-8)")
    return value


def _token(value, _type) -> str:
    # The message never shows the value: a token is a credential.
    if type(value) is not str or not 0 < utf8_length(value) <= MAX_TOKEN_BYTES:
        raise _FieldError(f"must be a non-empty string of at most {MAX_TOKEN_BYTES} bytes (UTF-8)")
    return value


def _limit(value, _type) -> int:
    if type(value) is not int or not 1 <= value <= MAX_LIMIT:
        raise _FieldError(f"must be an integer from 1 to {MAX_LIMIT}")
    return value


def _after_seq(value, _type) -> int:
    # Optional[AfterSeq]: the field may be absent (its default), but not null.
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise _FieldError(f"must be an integer from 0 to {MAX_SEQ}")
    return value


def _legs(value, _type) -> list[str]:
    # Optional[Legs]: the field may be absent (its default), but not null.
    if (type(value) is not list or not value or not all(type(v) is str and v in SEARCH_LEGS for v in value)
            or len(set(value)) != len(value)):
        raise _FieldError(f"must be a non-empty list of distinct legs: {', '.join(map(repr, SEARCH_LEGS))}")
    return value


def _user_id(value, _type) -> int | str:
    if valid_user_id(value):
        return value
    raise _FieldError(f"must be an integer of at most {MAX_ID_BYTES} digits (a minus sign counts as one) "
                      f"or a non-empty string of at most {MAX_ID_BYTES} bytes (UTF-8)")


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(omit_if_default=True)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(Text, _text)
    conv.register_structure_hook(AgentId, _agent_id)
    conv.register_structure_hook(CommandId, _agent_id)
    conv.register_structure_hook(RequestId, _request_id)
    conv.register_structure_hook(Token, _token)
    conv.register_structure_hook(Limit, _limit)
    conv.register_structure_hook(UserId, _user_id)
    conv.register_structure_hook(Optional[AfterSeq], _after_seq)
    conv.register_structure_hook(Optional[Legs], _legs)
    type_of = lambda cls: cls.TYPE  # noqa: E731
    configure_tagged_union(Command, conv, tag_name="type", tag_generator=type_of)
    configure_tagged_union(ServerFrame, conv, tag_name="type", tag_generator=type_of)
    return conv


#: The one converter between wire dicts and frame classes (tagged union on "type").
converter = _make_converter()


#: Per command type tag, its class's structure hook.
_structure_hooks: dict[str, Any] = {}


def decode(data: str | bytes) -> Command:
    """Parse and validate one client frame.

    Returns a command, or raises `ProtocolError` (never another exception) naming what
    is wrong; its `request_id` is the frame's when the frame had a usable one (text of at most
    MAX_ID_BYTES bytes: a longer one is never echoed back). The error's message quotes at most
    SHOWN_CHARS characters of what the client sent.
    """
    if not isinstance(data, str):
        raise ProtocolError("binary_frame", "Binary frames are not supported; send JSON text frames")
    try:
        obj = json.loads(data)
    except RecursionError:
        raise ProtocolError("invalid_json", "Message is not valid JSON: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", f"Message is not valid JSON: {exc}") from None
    except ValueError:  # an integer beyond Python's limit on the digits it reads (4300 by default)
        raise ProtocolError(
            "invalid_json", f"Message has an integer with too many digits to read (a user id has at most {MAX_ID_BYTES})"
        ) from None
    if not isinstance(obj, dict):
        raise ProtocolError("invalid_message", "Message must be a JSON object")
    rid = obj.get("request_id")
    request_id = rid if valid_id(rid) else None
    type_ = obj.get("type")
    if type_ is None:
        raise ProtocolError("missing_type", "Message has no 'type'", request_id)
    if type(type_) is not str or type_ not in COMMAND_TYPES:
        raise ProtocolError("unknown_type", f"Unknown message type: {shown(type_)}", request_id)
    try:
        # The command class's own structure hook, as the tagged union would call it (the "type" key is
        # an extra key, ignored): the union's dispatch is skipped.
        hook = _structure_hooks.get(type_)
        if hook is None:
            hook = _structure_hooks[type_] = converter.get_structure_hook(COMMAND_TYPES[type_])
        return hook(obj, COMMAND_TYPES[type_])
    except ClassValidationError as exc:
        raise _field_problem(exc, type_, request_id) from None
    except (ValueError, TypeError, KeyError, ForbiddenExtraKeysError) as exc:  # pragma: no cover - defensive
        raise ProtocolError("invalid_message", f"Invalid '{type_}' message: {shown(str(exc))}", request_id) from None



def _field_problem(exc: ClassValidationError, type_: str, request_id: str | None) -> ProtocolError:
    for sub in exc.exceptions:
        name = next((getattr(n, "name", None) for n in getattr(sub, "__notes__", ()) if hasattr(n, "name")), None)
        if isinstance(sub, KeyError):
            return ProtocolError("missing_field", f"Field '{name}' is required for '{type_}'", request_id)
        if isinstance(sub, _FieldError):
            return ProtocolError("invalid_field", f"Field '{name}' of '{type_}' {sub}", request_id)
    return ProtocolError("invalid_message", f"Invalid '{type_}' message", request_id)  # pragma: no cover


#: The encoder of server frames (made once: `json.dumps` with options builds a new one per call).
_json_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
#: Per frame class, its unstructure hook (what the tagged union calls after looking the class up).
_unstructure_hooks: dict[type, Any] = {}


def encode(frame: ServerFrame) -> str:
    """The JSON text of one server frame, its "type" tag first (as people read frames in logs).

    Never raises: a frame that cannot be encoded (a tool's arguments or result nested too deep for
    the encoder, a value that is not JSON) is logged and replaced by an `internal_error` frame.
    """
    try:
        return _encode(frame)
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:
        logger.error("a %s frame could not be encoded (%s); sent as an internal_error instead",
                     type(frame).__name__, type(exc).__name__)
        return _encode(Error("internal_error", f"The server could not encode a {getattr(frame, 'TYPE', '')} frame",
                             getattr(frame, "agent_id", None), getattr(frame, "request_id", None)))


def encode_utf8(frame: ServerFrame) -> bytes:
    """The UTF-8 bytes of `encode(frame)`'s JSON (the same object; number formatting may differ),
    as they go on the wire. Never raises.

    orjson writes them directly, about three times as fast as `json` plus `str.encode`. What it
    refuses (a lone surrogate, an integer beyond 64 bits, nesting deeper than 254) takes `encode`'s
    way, a lone surrogate then becoming U+FFFD (UTF-8 cannot carry it).
    """
    try:
        # Copied: orjson's bytes keep the whole buffer it wrote into (4 KiB at least, whatever their
        # length), and frames wait in memory while a slow client reads a batch (0.3 µs a frame).
        return bytes(memoryview(orjson.dumps(_plain(frame))))
    except (orjson.JSONEncodeError, TypeError, ValueError, RecursionError, OverflowError):
        text = encode(frame)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return without_surrogates(text).encode("utf-8")


#: A UTF-16 surrogate code point (in a Python string only ever a lone one).
_SURROGATE = re.compile("[\ud800-\udfff]")


def without_surrogates(text: str) -> str:
    """`text` with each lone surrogate (which UTF-8 cannot encode) replaced by U+FFFD: a safety net, so
    one bad string can never cut a connection off; brains clean their text before it gets here."""
    return _SURROGATE.sub("\ufffd", text)


def _plain(frame: ServerFrame) -> dict:
    """`frame` as the JSON object it is sent as, its "type" tag first (as people read frames in logs)."""
    cls = type(frame)
    hook = _unstructure_hooks.get(cls)
    if hook is None:
        if cls not in SERVER_FRAME_TYPES.values():
            raise TypeError(f"not a server frame: {frame!r}")
        hook = _unstructure_hooks[cls] = converter.get_unstructure_hook(cls)
    return {"type": cls.TYPE, **hook(frame)}


def _encode(frame: ServerFrame) -> str:
    return _json_encoder.encode(_plain(frame))


def json_text(text: str) -> bytes:
    """`text` as the inside of a JSON string (escaped, without its quotes), in UTF-8; a lone surrogate
    (which UTF-8 cannot carry) becomes U+FFFD."""
    try:
        return orjson.dumps(text)[1:-1]  # a slice: a copy of its own size (orjson's bytes keep a 4 KiB buffer)
    except orjson.JSONEncodeError:
        return json.dumps(without_surrogates(text), ensure_ascii=False)[1:-1].encode("utf-8")


class ChunkRun:
    """Adjacent `response_chunk`s of one turn as the one frame they are sent as, merged as they come.

    Deltas produced faster than they can be written travel as one frame; the concatenation of the deltas,
    and the order of everything else, stay the same. The run holds the merged frame's UTF-8 JSON in pieces
    (the deltas' escaped text in one growing buffer), so it holds about as many bytes as it is sent as and
    `size` is exact; `encode()` gives the bytes `encode_utf8` makes of the merged frame.
    """

    __slots__ = ("agent_id", "request_id", "_head", "_deltas", "_tail")

    def __init__(self, chunk: ResponseChunk) -> None:
        self.agent_id = chunk.agent_id
        self.request_id = chunk.request_id
        self._head = b'{"type":"response_chunk","agent_id":"' + json_text(chunk.agent_id) + b'","delta":"'
        rid = chunk.request_id
        self._tail = b'"}' if rid is None else b'","request_id":"' + json_text(rid) + b'"}'
        self._deltas = bytearray(json_text(chunk.delta))

    def continued_by(self, chunk: ResponseChunk) -> bool:
        """True if `chunk` belongs to this run's turn (so that, coming right after it, it joins the run)."""
        return chunk.agent_id == self.agent_id and chunk.request_id == self.request_id

    @property
    def size(self) -> int:
        """Bytes of the merged frame."""
        return len(self._head) + len(self._deltas) + len(self._tail)

    def add(self, delta_text: bytes) -> None:
        """Append a chunk's delta, given as `json_text(delta)` (whose length is what the frame grows by)."""
        self._deltas += delta_text

    def encode(self) -> bytes:
        return b"".join((self._head, self._deltas, self._tail))


def error_frame(error: ProtocolError, agent_id: str | None = None) -> Error:
    """The `error` frame that reports `error` to the client."""
    return Error(error.code, error.message, agent_id, error.request_id)


# -- decoding server frames (for clients) --------------------------------------------------
# Kept apart from the server's side above: the server never calls these. A client must keep
# working when the server is newer than it, so nothing here raises on a frame it does not know.


@frozen
class UnknownFrame:
    """A server frame this version cannot type (a new `type`, or a known one whose fields do not fit).

    `data` is the frame's whole JSON object, so nothing the server said is lost.
    """

    type: str
    data: dict
    request_id: str | None = None


SERVER_FRAME_TYPES: dict[str, type] = {
    c.TYPE: c for c in ServerFrame.__args__  # type: ignore[attr-defined]
}


def decode_server_frame(data: str | bytes | dict) -> ServerFrame | UnknownFrame:
    """The typed frame for one frame the server sent (JSON text or an already parsed object).

    Extra fields of a known frame are ignored, and so are optional ones that do not fit (the raw
    object is still in `UnknownFrame.data` when the frame cannot be typed). Raises `ValueError` only
    for data that is not a JSON object with a string `type`, which no agentcast server sends.
    """
    if isinstance(data, (str, bytes)):
        try:
            obj = json.loads(data)
        except RecursionError:
            raise ValueError("server frame is not valid JSON: nested too deeply") from None
    else:
        obj = data
    if not isinstance(obj, dict) or type(obj.get("type")) is not str:
        raise ValueError("server frame is not a JSON object with a string 'type'")
    rid = obj.get("request_id")
    request_id = rid if type(rid) is str else None
    cls = SERVER_FRAME_TYPES.get(obj["type"])
    if cls is not None:
        # A newer server may give an optional field another shape (a `usage` with other counts): the frame
        # is still typed without that field, so a call waiting for it is answered (`data`-less, but a
        # client keeps the raw object). Only when a required field does not fit is it an `UnknownFrame`.
        optional = [a.name for a in attrs.fields(cls) if a.default is not attrs.NOTHING and a.name in obj]
        for dropped in ([], *([name] for name in optional), optional):
            try:
                return converter.structure({k: v for k, v in obj.items() if k not in dropped}, cls)
            except Exception:  # noqa: BLE001 - a frame of a newer server: keep it untyped, never crash
                pass
    return UnknownFrame(obj["type"], obj, request_id)
