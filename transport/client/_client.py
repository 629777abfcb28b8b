"""A trio client for agentcast: `open_agent_client(url)` yields an `AgentClient` that chats (streaming chunks, tool
activity, usage, cancellation), lists agents, searches and clears memory, with typed frames and reconnection.

Imports trio, trio_websocket and `agentcast.transport.protocol` only: never the server side
(`agentcast.transport.server`, `_connection`, ...), `actors` or `store`.
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import random
import ssl
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, Union

import trio
from attrs import frozen
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from ..protocol import (
    AgentDone,
    AgentInfo,
    AgentList,
    AgentThinking,
    Authenticated,
    Cancelled,
    Connected,
    Error,
    MemoryCleared,
    MemoryResult,
    MemoryResults,
    Pong,
    Response,
    ResponseChunk,
    ServerFrame,
    Subscribed,
    ToolCall,
    ToolResult,
    Unsubscribed,
    UnknownFrame,
    Usage,
    UserSet,
    decode_server_frame,
)

__all__ = [
    "DEFAULT_URL", "AgentClient", "AgentError", "AgentInfo", "CannotConnect", "ChatResult", "ChatStream",
    "ClientError", "ConnectionLost", "Disconnected", "Event", "Reconnected", "ToolCall", "ToolResult", "Usage",
    "frame_type", "open_agent_client",
]

logger = logging.getLogger("agentcast.client")

DEFAULT_URL = "ws://127.0.0.1:5050/ws"

#: Commands that may be sent again after the connection carrying them was lost: repeating them changes nothing
#: (a chat is made idempotent by its `command_id`). A `clear_memory` cut off mid-way fails with `ConnectionLost`.
#: A chat whose turn the client asked to cancel is never sent again (see `AgentClient.cancel`).
RETRY_SAFE = frozenset({"ping", "auth", "set_user", "subscribe", "unsubscribe", "chat", "search_memory", "list_agents"})
#: How many finished request ids are remembered, so that their late frames (an `agent_done`) are dropped.
FINISHED_MEMORY = 4096


# -- errors -----------------------------------------------------------------------------------


class ClientError(Exception):
    """Base of the client's exceptions."""


class AgentError(ClientError):
    """The server answered a command with an `error` frame (`code` is stable snake_case, see docs/protocol.md)."""

    def __init__(self, code: str, message: str, agent_id: str | None = None, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.agent_id = agent_id
        self.request_id = request_id

    @classmethod
    def from_frame(cls, frame: Error) -> AgentError:
        return cls(frame.code, frame.message, frame.agent_id, frame.request_id)


class ConnectionLost(ClientError):
    """The connection is gone and the client gave up (or was closed), or a command that is not safe to repeat
    (`clear_memory`) was cut off before its answer: it may or may not have been carried out."""


class CannotConnect(ConnectionLost):
    """The first connection could not be opened (refused, timed out, not an agentcast server).

    `status` is the HTTP status when the server refused the WebSocket handshake (404: no WebSocket endpoint
    at the URL's path), else None."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# -- events of the client itself --------------------------------------------------------------


@frozen
class Disconnected:
    """The connection was lost (or a reconnection attempt failed): `attempt` is the attempt that comes next,
    in `retry_in` seconds; `retry_in` is None when the client gives up."""

    reason: str
    attempt: int
    retry_in: float | None
    TYPE = "disconnected"


@frozen
class Reconnected:
    """A new connection is open and restored: authenticated, user set, subscriptions resumed, cut-off commands
    sent again."""

    client_id: str
    attempts: int
    TYPE = "reconnected"


#: What `events()` and `on()` deliver: a server frame (typed, or `UnknownFrame`), or the client's own events.
Event = Union[ServerFrame, UnknownFrame, Disconnected, Reconnected]


def frame_type(event: Any) -> str:
    """The wire `type` of a frame or event ("response", "ping", "disconnected", or an unknown frame's own)."""
    return event.type if isinstance(event, UnknownFrame) else event.TYPE


#: What `ChatStream.items()` yields: a text delta, or a tool call or result of the turn as it happens.
ChatItem = Union[str, ToolCall, ToolResult]


@frozen
class ChatResult:
    """A finished chat turn: the agent's whole answer `response`, committed to the log as event `seq`.

    `usage` is the provider's token count (None when it reported none, and always for the echo brain);
    `tools` the turn's `ToolCall` and `ToolResult` frames in the order they came. A cancelled turn has
    `cancelled` True, `response` (also `partial`) the answer streamed until then and `seq` None (nothing was
    committed as an answer). `raw` is the last frame as the server sent it (`response`, or `cancelled`).
    """

    agent_id: str
    response: str
    seq: int | None
    command_id: str
    raw: dict
    usage: Usage | None = None
    tools: tuple[ToolCall | ToolResult, ...] = ()
    cancelled: bool = False

    @property
    def partial(self) -> str | None:
        """For a cancelled turn, the answer streamed until it was cancelled; None otherwise."""
        return self.response if self.cancelled else None


# -- requests -----------------------------------------------------------------------------------


class _Request:
    """One command waiting for its answer: the frames carrying one of its request ids arrive on a channel."""

    def __init__(self, frame: dict) -> None:
        self.frame = frame
        self.ids: list[str] = []
        #: The connection generation it was last sent on (None: never sent).
        self.sent_gen: int | None = None
        #: False: never sent again after a lost connection, even if its type is in RETRY_SAFE.
        self.retry = True
        #: A chat: its turn was asked to be cancelled (so it is never sent again).
        self.cancel_requested = False
        #: A chat: the request id its turn started under (its last `agent_thinking`), the one to cancel.
        self.running_id: str | None = None
        self.send, self.receive = trio.open_memory_channel(math.inf)

    @property
    def request_id(self) -> str:
        return self.ids[-1]

    def wire(self) -> str:
        return json.dumps({**self.frame, "request_id": self.request_id}, ensure_ascii=False)

    def fail(self, exc: BaseException) -> None:
        try:
            self.send.send_nowait(exc)
        except trio.ClosedResourceError:  # pragma: no cover - already finished
            pass

    async def next(self) -> tuple[Any, dict]:
        item = await self.receive.receive()
        if isinstance(item, BaseException):
            raise item
        return item


class _CutOffCancelled:
    """Delivered to a chat whose turn was being cancelled when the connection was lost: it is not sent again,
    and ends as cancelled with what was streamed."""


class _PendingCancel:
    """A `cancel` waiting for its outcome. Its answer is told apart by the `ping` sent right behind it: the server
    handles a connection's frames in order and refuses a `cancel` at once, so an `error` for it comes before the
    pong; after the pong the cancel was accepted, and the turn's `cancelled` is awaited."""

    def __init__(self, agent_id: str, target: str | None, ping_id: str) -> None:
        self.agent_id = agent_id
        self.target = target
        self.ping_id = ping_id
        self.accepted = False
        self.error: Error | None = None
        self.cancelled: Cancelled | None = None
        self.lost: ConnectionLost | None = None
        self.settled = trio.Event()

    def matches(self, frame: Any) -> bool:
        rid = frame.request_id
        if self.target is not None and rid not in (self.target, None):
            return False
        return getattr(frame, "agent_id", None) in (self.agent_id, None)

    def see(self, frame: Any) -> bool:
        """Note `frame` if it tells this cancel's outcome; True if it was its answer alone (not to route on)."""
        if self.settled.is_set():
            return False
        if isinstance(frame, Pong) and frame.request_id == self.ping_id:
            self.accepted = True
            return False
        if not self.accepted:
            if isinstance(frame, Error) and frame.code != "brain_error" and self.matches(frame):
                self.error = frame
                self.settled.set()
                return True
            return False
        if isinstance(frame, Cancelled) and frame.agent_id == self.agent_id and self.matches(frame):
            self.cancelled = frame
            self.settled.set()
        elif isinstance(frame, AgentDone) and frame.agent_id == self.agent_id and self.matches(frame):
            self.settled.set()  # the turn ended otherwise (it finished just as the cancel came)
        return False

    def lose(self, exc: ConnectionLost) -> None:
        if not self.settled.is_set():
            self.lost = exc
            self.settled.set()


class ChatStream:
    """The answer to one chat as it streams: `async for delta in stream` yields the text as it arrives;
    afterwards `stream.result` is the `ChatResult`. `async for item in stream.items()` yields the same deltas
    and, in between, the turn's `ToolCall` and `ToolResult` frames as they happen (`stream.tools` collects
    them either way). An `error` frame (e.g. `brain_error`) raises `AgentError`. `await stream.cancel()`
    cancels the turn: the iteration then ends and `result.cancelled` is True.

    After a reconnection the chat is sent again with its `command_id`; text already yielded is not yielded
    again. Should the new attempt's answer differ from what was streamed (a brain cut off before anything was
    committed answers anew), the stream goes on with a newline and the new answer from its start, and
    `restarts` counts it; `result.response` is always the committed answer.
    """

    def __init__(self, client: AgentClient, request: _Request, agent_id: str, command_id: str) -> None:
        self._client = client
        self._request = request
        self.agent_id = agent_id
        self.command_id = command_id
        self.result: ChatResult | None = None
        self.restarts = 0
        #: The turn's tool calls and results so far, in order.
        self.tools: list[ToolCall | ToolResult] = []
        self._streamed = ""
        self._attempt_id: str | None = None
        self._attempt_text = ""
        self._tail_done = False

    @property
    def request_id(self) -> str:
        """The wire request id of the turn (the attempt that started running, else the last one sent)."""
        return self._request.running_id or self._request.request_id

    @property
    def text(self) -> str:
        """The answer as streamed so far."""
        return self._streamed

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> str:
        while True:
            item = await self._next_item()
            if isinstance(item, str):
                return item

    def items(self) -> AsyncIterator[ChatItem]:
        """`async for item in stream.items()`: the deltas (str) and the turn's tool activity (`ToolCall`,
        `ToolResult`) in arrival order."""
        return _Items(self)

    async def cancel(self) -> str:
        """Cancel this turn (see `AgentClient.cancel`); returns the partial answer."""
        return await self._client.cancel(self.agent_id, request_id=self.request_id)

    async def _next_item(self) -> ChatItem:
        while True:
            if self.result is not None:
                if not self._tail_done:
                    self._tail_done = True
                    tail = "" if self.result.cancelled else self._advance(self.result.response)
                    if tail:
                        return tail
                raise StopAsyncIteration
            frame, raw = await self._request.next()
            if isinstance(frame, ResponseChunk):
                if frame.request_id != self._attempt_id:
                    self._attempt_id, self._attempt_text = frame.request_id, ""
                self._attempt_text += frame.delta
                delta = self._advance(self._attempt_text)
                if delta:
                    return delta
            elif isinstance(frame, (ToolCall, ToolResult)):
                self.tools.append(frame)
                return frame
            elif isinstance(frame, Response):
                self.result = ChatResult(
                    frame.agent_id, frame.message, frame.seq, self.command_id, raw, frame.usage, tuple(self.tools)
                )
            elif isinstance(frame, Cancelled):
                self.result = ChatResult(
                    frame.agent_id, frame.partial, None, self.command_id, raw, None, tuple(self.tools), True
                )
            elif isinstance(frame, _CutOffCancelled):
                partial = self._streamed
                raw = {"type": "cancelled", "agent_id": self.agent_id, "partial": partial}
                self.result = ChatResult(self.agent_id, partial, None, self.command_id, raw, None, tuple(self.tools), True)
            elif isinstance(frame, Error):
                raise AgentError.from_frame(frame)
            # agent_thinking, user_message, agent_done and frames this version does not know: nothing to yield

    def _advance(self, text: str) -> str:
        """What of `text` (the answer so far) has not been yielded yet."""
        done = self._streamed
        if text.startswith(done):
            self._streamed = text
            return text[len(done):]
        if done.startswith(text):  # a retry catching up with what was already streamed
            return ""
        self.restarts += 1
        self._streamed = text
        return "\n" + text

    async def wait(self) -> ChatResult:
        """Read the rest of the answer (without yielding it) and return the result."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result


class _Items:
    """The iterator of `ChatStream.items()`."""

    def __init__(self, stream: ChatStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _Items:
        return self

    async def __anext__(self) -> ChatItem:
        return await self._stream._next_item()


# -- the client ---------------------------------------------------------------------------------


class AgentClient:
    """A connection to an agentcast server that survives reconnections. Get one from `open_agent_client`.

    Every method may be called from several tasks at once; answers are matched to commands by `request_id`.
    While the connection is down, calls wait for the reconnection (wrap them in `trio.fail_after` to bound
    that); after the client gives up they raise `ConnectionLost`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        user_id: int | str | None = None,
        token: str | Callable[[], str | Awaitable[str]] | None = None,
        reconnect: bool = True,
        max_reconnect_attempts: int | None = 10,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float = 20.0,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        max_message_size: int = 16 * 1024 * 1024,
    ) -> None:
        self.url = url
        #: The user of the connection (as last confirmed by `user_set`, or given to `open_agent_client`).
        self.user_id = user_id
        #: The server's id for the current connection (from its `connected` frame).
        self.client_id: str | None = None
        #: The `authenticated` answer to the last `auth`, if any.
        self.authenticated: Authenticated | None = None
        self._token = token
        self._reconnect = reconnect
        self._max_attempts = max_reconnect_attempts
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._max_message_size = max_message_size
        #: agent -> the after_seq it was subscribed with (None: a plain subscription).
        self._subscriptions: dict[str, int | None] = {}
        self._last_seq: dict[str, int] = {}
        self._by_id: dict[str, _Request] = {}
        self._open: dict[int, _Request] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._cancels: list[_PendingCancel] = []
        self._cancel_sending = trio.Lock()
        self._listeners: set[trio.MemorySendChannel] = set()
        self._callbacks: dict[str, list[Callable[[Any], None]]] = {}
        self._ws = None
        self._generation = 0
        self._ready = trio.Event()
        self._closed: Callable[[], ClientError] | None = None
        self._fatal: ClientError | None = None
        self._lost_reason: str | None = None
        self._stopping = False

    # -- state ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a connection is open and restored right now."""
        return self._ready.is_set() and self._closed is None

    @property
    def subscriptions(self) -> list[str]:
        return list(self._subscriptions)

    def last_seq(self, agent_id: str) -> int | None:
        """The highest `seq` seen of `agent_id` (the point a reconnection resumes its subscription after)."""
        return self._last_seq.get(agent_id)

    # -- commands -----------------------------------------------------------------------------

    async def ping(self) -> float:
        """Send a `ping` frame and return the round trip in seconds."""
        start = trio.current_time()
        await self._call({"type": "ping"}, Pong)
        return trio.current_time() - start

    async def authenticate(self, token: str) -> Authenticated:
        """Authenticate (or refresh) the connection with `token`; reconnections use it too."""
        frame, _ = await self._call({"type": "auth", "token": token}, Authenticated)
        self._token = token
        self.authenticated = frame
        self.user_id = frame.user_id
        return frame

    async def set_user(self, user_id: int | str) -> int | str:
        """Make `user_id` the user of the connection (and of every reconnection); returns it as the server echoed it."""
        frame, _ = await self._call({"type": "set_user", "user_id": user_id}, UserSet)
        self.user_id = frame.user_id
        return frame.user_id

    async def subscribe(self, agent_id: str, after_seq: int | None = None) -> Subscribed:
        """Receive the turns of `agent_id` made by this user's other connections (in `events()`).

        With `after_seq`, first the user's logged events of the agent after it (0: all). Either way, after a
        reconnection the subscription resumes after the last `seq` seen of the agent, so nothing is missed.
        """
        if after_seq is not None:
            self._last_seq[agent_id] = after_seq  # deliver the backlog asked for, even if some was seen
        frame, _ = await self._call(_without_none(type="subscribe", agent_id=agent_id, after_seq=after_seq), Subscribed)
        self._subscriptions[agent_id] = after_seq
        return frame

    async def unsubscribe(self, agent_id: str) -> Unsubscribed:
        frame, _ = await self._call({"type": "unsubscribe", "agent_id": agent_id}, Unsubscribed)
        self._subscriptions.pop(agent_id, None)
        return frame

    async def chat(
        self,
        agent_id: str,
        message: str,
        *,
        on_chunk: Callable[[str], Any] | None = None,
        on_tool: Callable[[ToolCall | ToolResult], Any] | None = None,
        command_id: str | None = None,
    ) -> ChatResult:
        """Send `message` to `agent_id` and return the committed answer; `on_chunk(delta)` (sync or async)
        sees the text as it streams, `on_tool(frame)` each `ToolCall` and `ToolResult` as it happens.
        Raises `AgentError` (e.g. `unknown_agent`, `brain_error`, `busy`). A turn cancelled meanwhile (by
        `cancel`, here or on another connection of the user) returns a result with `cancelled` True."""
        async with self.stream_chat(agent_id, message, command_id=command_id) as stream:
            async for item in stream.items():
                callback = on_chunk if isinstance(item, str) else on_tool
                if callback is not None:
                    result = callback(item)
                    if inspect.isawaitable(result):
                        await result
        assert stream.result is not None
        return stream.result

    @asynccontextmanager
    async def stream_chat(
        self, agent_id: str, message: str, *, command_id: str | None = None
    ) -> AsyncIterator[ChatStream]:
        """`async with client.stream_chat(agent, text) as stream: async for delta in stream: ...`

        The chat carries a `command_id` (a new uuid unless given), so a retry after a lost connection is
        answered from the log instead of running the turn twice. Leaving the block early stops listening
        (the turn still completes on the server).
        """
        command_id = command_id or uuid.uuid4().hex
        request = self._open_request({"type": "chat", "agent_id": agent_id, "message": message, "command_id": command_id})
        try:
            await self._transmit(request)
            yield ChatStream(self, request, agent_id, command_id)
        finally:
            self._finish(request)

    async def search_memory(
        self, agent_id: str, query: str, *, include_long_term: bool = True, limit: int = 5,
        legs: Sequence[str] | None = None,
    ) -> list[MemoryResult]:
        """The user's messages to and from `agent_id` that best match `query`, best first. `legs`: the legs of the
        search to run, "lexical" and/or "semantic" (default: every leg the agent has)."""
        command: dict = {"type": "search_memory", "agent_id": agent_id, "query": query, "limit": limit,
                         "use_long_term": include_long_term}
        if legs is not None:
            command["legs"] = list(legs)
        frame, _ = await self._call(command, MemoryResults)
        return frame.results

    async def clear_memory(self, agent_id: str, *, long_term: bool = False) -> MemoryCleared:
        """Empty the short-term memory of `agent_id` (`long_term=True`: forget everything)."""
        frame, _ = await self._call(
            {"type": "clear_memory", "agent_id": agent_id, "clear_long_term": long_term}, MemoryCleared
        )
        return frame

    async def list_agents(self) -> list[AgentInfo]:
        """Every agent of the server, as `AgentInfo(agent_id, description)`, in the order of its configuration."""
        frame, _ = await self._call({"type": "list_agents"}, AgentList)
        return frame.agents

    async def cancel(self, agent_id: str, request_id: str | None = None) -> str:
        """Cancel the user's running turn on `agent_id` (only the one with wire `request_id`, when given, e.g.
        `stream.request_id`; `stream.cancel()` does that) and return its partial answer. The turn may be this
        client's chat (it then ends as cancelled), or one of the user's other connections.

        Raises `AgentError` `nothing_to_cancel` when no such turn is running (a chat still queued behind another
        turn has not started, so it cannot be cancelled yet), also when the turn ended before the cancel reached
        it. A cancel is never sent again after a lost connection: it raises `ConnectionLost`, and a chat of this
        client whose turn was being cancelled is not sent again either — it ends as cancelled with what was
        streamed.
        """
        own = self._by_id.get(request_id) if request_id is not None else None
        if own is not None and own.frame.get("type") != "chat":
            own = None
        ping = self._open_request({"type": "ping"})
        ping.retry = False
        waiter = _PendingCancel(agent_id, request_id, ping.request_id)
        flagged: list[_Request] = []  # chats marked as being cancelled: never sent again
        try:
            async with self._cancel_sending:
                while True:
                    await self._ready.wait()
                    if self._closed is not None:
                        raise self._closed()
                    ws = self._ws
                    if ws is not None:
                        break
                    await trio.sleep(0)  # pragma: no cover - ready implies a connection
                for chat in self._open.values():
                    if not chat.cancel_requested and (chat is own or (
                            request_id is None and chat.running_id is not None
                            and chat.frame.get("type") == "chat" and chat.frame["agent_id"] == agent_id)):
                        chat.cancel_requested = True
                        flagged.append(chat)
                self._cancels.append(waiter)
                ping.sent_gen = self._generation
                frame = _without_none(type="cancel", agent_id=agent_id, request_id=request_id)
                try:
                    await ws.send_message(json.dumps(frame, ensure_ascii=False))
                    await ws.send_message(ping.wire())
                except ConnectionClosed:
                    waiter.lose(ConnectionLost(_CANCEL_CUT_OFF))
            await waiter.settled.wait()
        finally:
            if waiter in self._cancels:
                self._cancels.remove(waiter)
            self._finish(ping)
        if waiter.error is not None:
            for chat in flagged:  # refused: those turns go on, and are retried as usual
                chat.cancel_requested = False
            raise AgentError.from_frame(waiter.error)
        if waiter.lost is not None:
            raise waiter.lost
        if waiter.cancelled is None:
            raise AgentError("nothing_to_cancel", "The turn ended before the cancel reached it", agent_id, request_id)
        return waiter.cancelled.partial

    # -- pushed frames ------------------------------------------------------------------------

    @asynccontextmanager
    async def events(self, max_buffer: int = 1000) -> AsyncIterator[trio.MemoryReceiveChannel]:
        """`async with client.events() as events: async for event in events: ...`

        Every frame that is not the answer to one of this client's own commands (the turns of the same user's
        other connections, resumed backlogs, errors without a request) plus `Disconnected` and `Reconnected`.
        A logged event (one with a `seq`) is delivered once even if the server sends it again. The iteration
        ends when the client closes. A reader more than `max_buffer` events behind loses events (logged).
        """
        send, receive = trio.open_memory_channel(max_buffer)
        if self._closed is None:
            self._listeners.add(send)
        else:
            send.close()
        try:
            yield receive
        finally:
            self._listeners.discard(send)
            send.close()
            receive.close()

    def on(self, type_: str | type, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Call `callback(event)` (a plain function, run in the client's reader: keep it short) for each event
        `events()` would deliver of `type_` (a wire type such as "user_message", a frame class, or "*").
        Returns a function that removes the callback."""
        key = type_ if isinstance(type_, str) else type_.TYPE
        callbacks = self._callbacks.setdefault(key, [])
        callbacks.append(callback)

        def remove() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return remove

    # -- requests -----------------------------------------------------------------------------

    def _open_request(self, frame: dict) -> _Request:
        request = _Request(frame)
        self._new_attempt(request)
        self._open[id(request)] = request
        if self._closed is not None:
            request.fail(self._closed())
        return request

    def _new_attempt(self, request: _Request) -> None:
        rid = uuid.uuid4().hex
        request.ids.append(rid)
        self._by_id[rid] = request

    def _finish(self, request: _Request) -> None:
        self._open.pop(id(request), None)
        for rid in request.ids:
            self._by_id.pop(rid, None)
            self._finished[rid] = None
        while len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)
        request.send.close()

    async def _call(self, frame: dict, answer: type, *, now: bool = False) -> tuple[Any, dict]:
        """Send `frame` and wait for its answer of class `answer`; an `error` answer raises `AgentError`."""
        request = self._open_request(frame)
        try:
            await self._transmit(request, now=now)
            while True:
                got, raw = await request.next()
                if isinstance(got, answer):
                    return got, raw
                if isinstance(got, Error):
                    raise AgentError.from_frame(got)
        finally:
            self._finish(request)

    async def _transmit(self, request: _Request, *, now: bool = False) -> None:
        """Send `request` on the current connection once it is ready (`now`: while restoring it). If the
        connection is lost first, the restoration of the next one sends it."""
        while True:
            if not now:
                await self._ready.wait()
            if self._closed is not None:
                raise self._closed()
            if request.sent_gen == self._generation:  # the restoration sent it
                return
            ws = self._ws
            if ws is None:  # pragma: no cover - ready implies a connection
                await trio.sleep(0)
                continue
            request.sent_gen = self._generation
            try:
                await ws.send_message(request.wire())
            except ConnectionClosed:
                if now:
                    raise
                # Lost: the restoration of the next connection sends it again (or fails it if not safe to).
            return

    # -- connection ---------------------------------------------------------------------------

    async def _run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep a connection open: connect, restore, read; on loss, reconnect with backoff until it gives up."""
        attempts = 0
        started = False
        while True:
            reason = "connection closed"
            self._lost_reason = None
            try:
                async with open_websocket_url(
                    self.url, self._ssl_context, connect_timeout=self._connect_timeout, disconnect_timeout=1.0,
                    max_message_size=self._max_message_size,
                ) as ws:
                    with trio.fail_after(self._connect_timeout):
                        hello = decode_server_frame(await ws.get_message())
                    if not isinstance(hello, Connected):
                        raise _NotAgentcast(f"the server's first frame was {frame_type(hello)!r}, not 'connected'")
                    self._generation += 1
                    self.client_id = hello.client_id
                    self._ws = ws
                    failure = await self._serve(ws, task_status if not started else None, attempts)
                    if failure is not None:
                        if not started:
                            raise failure
                        self._fatal = failure
                    elif self._ready.is_set():
                        started, attempts = True, 0
                    reason = self._lost_reason or "connection closed"
            except (HandshakeError, OSError, ConnectionClosed, trio.TooSlowError, _NotAgentcast, ValueError) as exc:
                if not started:
                    raise CannotConnect(f"cannot connect to {self.url}: {_describe(exc)}",
                                        getattr(exc, "status_code", None)) from None
                reason = self._lost_reason or _describe(exc)
            finally:
                self._ws = None
                if self._ready.is_set():
                    self._ready = trio.Event()
                self._lost()
            if self._stopping:
                return
            if self._fatal is not None:
                fatal = self._fatal
                self._shutdown(lambda fatal=fatal: AgentError(fatal.code, fatal.message) if isinstance(fatal, AgentError) else ConnectionLost(str(fatal)))
                return
            attempts += 1
            if not self._reconnect or (self._max_attempts is not None and attempts > self._max_attempts):
                self._push(Disconnected(reason, attempts, None))
                tried = f" after {attempts - 1} reconnection attempts" if self._reconnect else ""
                message = f"connection to {self.url} lost{tried}: {reason}"
                self._shutdown(lambda message=message: ConnectionLost(message))
                return
            delay = min(self._backoff_max, self._backoff_initial * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)
            self._push(Disconnected(reason, attempts, delay))
            await trio.sleep(delay)

    async def _serve(self, ws, task_status, attempts: int) -> ClientError | None:
        """Restore the new connection, then read it until it is lost; returns a failure that ends the client."""
        failure: ClientError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader, ws, nursery.cancel_scope)
            if self._ping_interval:
                nursery.start_soon(self._heartbeat, ws, nursery.cancel_scope)
            try:
                await self._restore(nursery)
            except ConnectionClosed as exc:  # lost while restoring: try again
                self._lost_reason = self._lost_reason or _describe(exc)
                nursery.cancel_scope.cancel()
            except (AgentError, _TokenProblem) as exc:
                failure = exc if isinstance(exc, AgentError) else ConnectionLost(str(exc))
                nursery.cancel_scope.cancel()
            else:
                self._ready.set()
                if task_status is not None:
                    task_status.started()
                else:
                    self._push(Reconnected(self.client_id or "", attempts))
                await trio.sleep_forever()
        return failure

    async def _restore(self, nursery: trio.Nursery) -> None:
        """Authenticate, set the user, resume the subscriptions and send the cut-off commands again."""
        gen = self._generation
        wanted = self.user_id
        if self._token is not None:
            token = self._token
            if callable(token):
                try:
                    token = token()
                    if inspect.isawaitable(token):
                        token = await token
                except Exception as exc:  # noqa: BLE001 - the caller's token function
                    raise _TokenProblem(f"the token function failed: {exc!r}") from None
            frame, _ = await self._call({"type": "auth", "token": token}, Authenticated, now=True)
            self.authenticated = frame
            self.user_id = frame.user_id
        if wanted is not None and (self.authenticated is None or str(self.authenticated.user_id) != str(wanted)):
            frame, _ = await self._call({"type": "set_user", "user_id": wanted}, UserSet, now=True)
            self.user_id = frame.user_id
        for agent_id, after in list(self._subscriptions.items()):
            # Sent now, answered later: a resume waits in the user's queue behind running turns, and the
            # cut-off commands below must not wait for it (the server keeps the order of a connection's frames).
            seen = self._last_seq.get(agent_id)
            resume = after if seen is None else seen
            request = self._open_request(_without_none(type="subscribe", agent_id=agent_id, after_seq=resume))
            await self._transmit(request, now=True)
            nursery.start_soon(self._resumed, request, agent_id)
        for request in list(self._open.values()):
            if request.sent_gen == gen:
                continue
            if request.cancel_requested and request.sent_gen is not None:
                continue  # ended as cancelled when the connection was lost (see `_lost`)
            if request.sent_gen is not None and (request.frame["type"] not in RETRY_SAFE or not request.retry):
                request.fail(ConnectionLost(
                    f"the connection was lost before the answer to {request.frame['type']}; it may or may not "
                    "have been carried out"
                ))
                continue
            if request.sent_gen is not None:
                self._new_attempt(request)  # a fresh request_id: a backlog's frames keep the old one
            request.sent_gen = gen
            await self._ws.send_message(request.wire())

    async def _resumed(self, request: _Request, agent_id: str) -> None:
        """Wait for the answer to a resuming `subscribe` sent by `_restore`."""
        try:
            while True:
                got, _ = await request.next()
                if isinstance(got, Subscribed):
                    return
                if isinstance(got, Error):  # e.g. the agent no longer exists after a restart with another config
                    logger.warning("could not resume the subscription to %s: %s", agent_id, got.message)
                    self._subscriptions.pop(agent_id, None)
                    return
        except ClientError:
            return
        finally:
            self._finish(request)

    async def _reader(self, ws, scope: trio.CancelScope) -> None:
        try:
            while True:
                self._dispatch(await ws.get_message())
        except ConnectionClosed as exc:
            self._lost_reason = self._lost_reason or _describe(exc)
        finally:
            scope.cancel()

    async def _heartbeat(self, ws, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(self._ping_interval)
            with trio.move_on_after(self._ping_timeout) as timeout:
                try:
                    await ws.ping()
                except ConnectionClosed:
                    return
            if timeout.cancelled_caught:
                self._lost_reason = f"no answer to a ping within {self._ping_timeout:g} s"
                scope.cancel()
                return

    def _dispatch(self, text: str | bytes) -> None:
        try:
            raw = json.loads(text)
            frame = decode_server_frame(raw)
        except (ValueError, RecursionError) as exc:
            logger.warning("ignoring a frame that is not a JSON object with a type: %s", exc)
            return
        rid = frame.request_id
        for waiter in list(self._cancels):
            if waiter.see(frame):
                return  # the answer to a cancel
        agent_id = raw.get("agent_id")
        seq = raw.get("seq")
        logged = type(seq) is int and type(agent_id) is str
        request = self._by_id.get(rid) if rid is not None else None
        if request is not None:
            if isinstance(frame, AgentThinking):
                request.running_id = rid
            if logged:
                self._note_seq(agent_id, seq)
            try:
                request.send.send_nowait((frame, raw))
            except trio.ClosedResourceError:  # pragma: no cover - finished meanwhile
                pass
            return
        if logged:
            if seq <= self._last_seq.get(agent_id, -1):
                return  # seen already (a retried answer, or a backlog repeating what came live)
            self._note_seq(agent_id, seq)
        elif rid is not None and rid in self._finished:
            return  # the tail of a finished command (an agent_done after its response)
        self._push(frame)

    def _note_seq(self, agent_id: str, seq: int) -> None:
        if seq > self._last_seq.get(agent_id, -1):
            self._last_seq[agent_id] = seq

    def _push(self, event: Any) -> None:
        for send in list(self._listeners):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                logger.warning("an events() reader is too far behind; dropped a %s event", frame_type(event))
            except (trio.ClosedResourceError, trio.BrokenResourceError):  # its reader is gone
                self._listeners.discard(send)
        for key in (frame_type(event), "*"):
            for callback in list(self._callbacks.get(key, ())):
                try:
                    callback(event)
                except Exception:
                    logger.exception("an on(%r) callback failed", key)

    def _lost(self) -> None:
        """The connection is gone: pending cancels fail, and chats whose turn was being cancelled end as cancelled
        (they are never sent again)."""
        for waiter in list(self._cancels):
            waiter.lose(ConnectionLost(_CANCEL_CUT_OFF))
        for request in list(self._open.values()):
            if request.cancel_requested and request.sent_gen is not None:
                try:
                    request.send.send_nowait((_CutOffCancelled(), {}))
                except trio.ClosedResourceError:  # pragma: no cover - finished meanwhile
                    pass

    def _shutdown(self, error: Callable[[], ClientError]) -> None:
        """No more connections: every waiting call and every later one raises `error()`, `events()` ends."""
        self._lost()
        self._closed = error
        for request in list(self._open.values()):
            request.fail(error())
        for send in list(self._listeners):
            send.close()
        self._listeners.clear()
        self._ready.set()

    async def _close(self) -> None:
        self._stopping = True
        ws = self._ws
        if ws is not None:
            with trio.move_on_after(1.0):
                try:
                    await ws.aclose()
                except Exception:  # noqa: BLE001 - closing a connection that may be half gone
                    pass
        self._shutdown(lambda: ConnectionLost("the client is closed"))


_CANCEL_CUT_OFF = ("the connection was lost before the answer to cancel; the turn may or may not have been "
                   "cancelled (a chat of this client that was being cancelled ends as cancelled)")


class _NotAgentcast(Exception):
    """The WebSocket opened but its first frame was not `connected`."""


class _TokenProblem(Exception):
    """The token function raised."""


def _without_none(**fields) -> dict:
    return {k: v for k, v in fields.items() if v is not None}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        if reason is None:
            return "connection closed"
        text = f"closed by the server with {reason.code}" if reason.code is not None else "connection closed"
        if getattr(reason, "name", None):
            text += f" ({reason.name})"
        return text + (f": {reason.reason}" if reason.reason else "")
    if isinstance(exc, HandshakeError):
        cause = exc.__cause__ or exc.__context__
        if cause is not None and not isinstance(cause, HandshakeError):
            return _describe(cause)
        status = getattr(exc, "status_code", None)
        if status is not None:
            body = (getattr(exc, "body", None) or b"").decode("utf-8", "replace").strip().splitlines()
            said = "".join(c for c in body[0][:200] if c.isprintable()) if body else ""
            return f"the server refused the WebSocket with HTTP {status}" + (f" ({said})" if said else "")
        return type(exc).__name__
    if isinstance(exc, OSError):
        tried = exc.__cause__.exceptions if isinstance(exc.__cause__, BaseExceptionGroup) else (exc,)
        if all(isinstance(e, ConnectionRefusedError) for e in tried):  # trio tried every address of the host
            return "connection refused: nothing listens there (is the server running, on that host and port?)"
        return exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return str(exc) or type(exc).__name__


@asynccontextmanager
async def open_agent_client(url: str = DEFAULT_URL, **options: Any) -> AsyncIterator[AgentClient]:
    """`async with open_agent_client("ws://127.0.0.1:5050/ws", user_id=123) as client: ...`

    Connects (raising `CannotConnect` if the first connection fails), authenticates with `token` and sets
    `user_id` if given, and keeps the connection up in a background task owned by this block: on loss it
    reconnects with exponential backoff and jitter (`backoff_initial`, `backoff_max`, at most
    `max_reconnect_attempts` in a row; `reconnect=False` never does), authenticates and sets the user again,
    resumes each subscription after the last `seq` seen, and sends cut-off commands again (a chat by its
    `command_id`, so it is answered once). `ping_interval` seconds between keepalive pings (None: off); no
    pong within `ping_timeout` counts as a lost connection. Leaving the block closes the connection.
    """
    client = AgentClient(url, **options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client._run)
            try:
                yield client
            finally:
                await client._close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        single = _single(group)
        if single is group:
            raise
        raise single from None


def _single(exc: BaseException) -> BaseException:
    """The one exception that is not `trio.Cancelled` inside nested exception groups (else `exc`)."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        if len(inner) != 1:
            return exc
        exc = inner[0]
    return exc
