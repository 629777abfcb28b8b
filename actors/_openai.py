"""The `openai` brain: any OpenAI-compatible Chat Completions endpoint (OpenAI, Ollama, vLLM, llama.cpp
server, LM Studio), streamed as Server-Sent Events, with tool calls.

HTTP/1.1 through `_http11` (a client of its own over trio streams, with its connections kept alive), the body's
events split by `_sse.SSESplitter`. Must not import `transport` or write to the store; the API key is read from
the environment, never kept in config.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import AsyncGenerator, Awaitable, Sequence
from contextlib import aclosing
from urllib.parse import urlsplit

import orjson
import trio
from typing import TypeVar

from attrs import define, field, frozen

from . import _http11
from .. import __version__
from ._sse import SSEError, SSESplitter
from ._brain import BRAIN_SETTINGS, BRAINS, BrainError, BrainItem, ToolCallItem, ToolResultItem, Turn, UsageItem
from ._endpoint import (  # noqa: F401  (the helpers shared with the openai embedder, under their names here)
    MAX_ERROR_BODY,
    MAX_REASON_CHARS,
    MAX_RETRY_DELAY,
    RETRYABLE_STATUSES,
    Endpoint,
    api_key,
    error_body,
    http_failure,
    is_number as _number,
    looks_like_a_key,
    reason_of as _reason_of,
    reason_of_body as _reason_of_body,
    retry_after as _retry_after,
    shared_ssl_context as _shared_ssl_context,
)
from ._tools import Tool, ToolOutcome, resolve_tools

logger = logging.getLogger("agentcast.actors.openai")
T = TypeVar("T")

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

#: Put between the text of two requests of a turn (text before tool calls, text after them).
ROUND_SEPARATOR = "\n\n"
#: A UTF-16 surrogate code point: in a Python string only ever a lone one (json.loads joins valid pairs).
_SURROGATE = re.compile("[\ud800-\udfff]")


def without_lone_surrogates(value):
    """`value` (parsed JSON) with every lone surrogate in its strings replaced by U+FFFD.

    JSON text may escape one ("\\ud800"), and a string holding it cannot be encoded as UTF-8: not
    in a frame, not in the log. Model text and tool results pass through here before either.
    """
    if isinstance(value, str):
        return value if value.isascii() else _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [without_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {without_lone_surrogates(k): without_lone_surrogates(v) for k, v in value.items()}
    return value


#: The longest tool call arguments (JSON text) a model may send; the rest is dropped and the call fails.
MAX_TOOL_ARGUMENTS_CHARS = 65_536
#: How deep a tool call's arguments may nest (objects and arrays); deeper is an error for the model.
MAX_TOOL_ARGUMENTS_DEPTH = 32
#: The longest tool name kept from the stream (real names have at most 64 characters).
MAX_TOOL_NAME_CHARS = 256

#: How long the end of a body is waited for once `data: [DONE]` has come (`Response.finish`).
END_OF_BODY_WAIT = 1.0


#: The most bytes read past `data: [DONE]` while waiting for the end of the body (`Response.finish`).
END_OF_BODY_BYTES = 65_536


class _Retry(Exception):
    """This try failed before the first token in a way another try may not (internal)."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


@define
class _PendingCall:
    """A tool call as its pieces arrive in the stream (OpenAI streams the arguments in fragments)."""

    call_id: str = ""
    name: str = ""
    arguments: str = ""
    too_long: bool = False  # the arguments went past MAX_TOOL_ARGUMENTS_CHARS (the rest was dropped)


@define
class _Round:
    """What one streamed request gave besides its text deltas."""

    calls: dict[int, _PendingCall] = field(factory=dict)
    usage: tuple[int, int] | None = None
    finished: bool = False  # a finish_reason or [DONE] arrived: the stream was complete


def _check(condition: bool, what: str, setting: str) -> None:
    if not condition:
        raise ValueError(f"openai brain: {setting} must be {what}")


@frozen
class OpenAIBrainSettings:
    """Everything an `OpenAIBrain` is configured with: the `[agents.ID.brain]` table of the config file,
    key for key (`kind = "openai"` aside), with the same defaults. Checked when made: a bad value raises
    `ValueError` saying which setting and what it must be (the config file's loader reports it as a
    `ConfigError` naming the agent)."""

    #: The model's name, as the endpoint knows it.
    model: str
    #: The endpoint's base URL (`/chat/completions` is added); credentials and query are kept, never shown.
    base_url: str = "https://api.openai.com/v1"
    #: The NAME of the environment variable that holds the API key (never the key).
    api_key_env: str | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    #: 0 to 2; None: the endpoint's default.
    temperature: float | None = None
    #: The most tokens an answer may take; None: the endpoint's default.
    max_tokens: int | None = None
    #: Seconds for connecting and for each wait for data.
    timeout: float = 60.0
    #: Messages of the short-term window sent with each message.
    memory_window: int = 20
    #: Long-term matches recalled for each message.
    recall: int = 3
    #: Tools the model may call, by name (`search_memory`, `remember`, `current_time`) or `module:name`.
    tools: Sequence[str] = ()
    #: Rounds of tool calls in one turn.
    max_tool_rounds: int = 4
    #: Tries again of a request that failed before its first token.
    retries: int = 2
    #: Seconds before the first try again, doubling each time.
    retry_backoff: float = 1.0
    #: Ask the endpoint for the token usage of each turn.
    include_usage: bool = True
    #: Seconds a whole turn may take.
    turn_timeout: float = 300.0
    #: Characters an answer may have.
    max_answer_chars: int = 200_000
    #: Tool calls in one round.
    max_tool_calls: int = 16

    def __attrs_post_init__(self) -> None:
        _check(isinstance(self.model, str) and bool(self.model.strip()), "the model's name (a non-empty string)", "model")
        _check(isinstance(self.base_url, str) and self.base_url.startswith(("http://", "https://")),
               "an http:// or https:// URL (e.g. http://localhost:11434/v1)", "base_url")
        _check(self.api_key_env is None or (isinstance(self.api_key_env, str) and self.api_key_env.strip() != ""),
               "the NAME of the environment variable that holds the key (the key itself never goes in config)",
               "api_key_env")
        if looks_like_a_key(self.api_key_env):
            raise ValueError("openai brain: api_key_env looks like an API key; give the NAME of the environment "
                             "variable that holds it instead (e.g. api_key_env = \"OPENAI_API_KEY\")")
        _check(isinstance(self.system_prompt, str), "a string", "system_prompt")
        _check(self.temperature is None or (_number(self.temperature) and 0 <= self.temperature <= 2), "a number from 0 to 2",
               "temperature")
        _check(self.max_tokens is None or (type(self.max_tokens) is int and self.max_tokens >= 1), "an integer >= 1", "max_tokens")
        _check(_number(self.timeout) and 0 < self.timeout <= 3600, "a number of seconds above 0 (at most 3600)", "timeout")
        _check(type(self.memory_window) is int and 0 <= self.memory_window <= 1000, "an integer from 0 to 1000",
               "memory_window")
        _check(type(self.recall) is int and 0 <= self.recall <= 50, "an integer from 0 to 50", "recall")
        _check(isinstance(self.tools, (list, tuple)), "a list of tool names", "tools")
        _check(type(self.max_tool_rounds) is int and 0 <= self.max_tool_rounds <= 32, "an integer from 0 to 32",
               "max_tool_rounds")
        _check(type(self.retries) is int and 0 <= self.retries <= 10, "an integer from 0 to 10", "retries")
        _check(_number(self.retry_backoff) and 0 <= self.retry_backoff <= MAX_RETRY_DELAY,
               f"a number of seconds from 0 to {MAX_RETRY_DELAY:g}", "retry_backoff")
        _check(type(self.include_usage) is bool, "true or false", "include_usage")
        _check(_number(self.turn_timeout) and 0 < self.turn_timeout <= 86_400, "a number of seconds above 0 (at most 86400)",
               "turn_timeout")
        _check(type(self.max_answer_chars) is int and self.max_answer_chars >= 1, "an integer >= 1", "max_answer_chars")
        _check(type(self.max_tool_calls) is int and 1 <= self.max_tool_calls <= 128, "an integer from 1 to 128",
               "max_tool_calls")
        # Numbers kept as floats, tools as a tuple (the settings are immutable and hashable).
        for name in ("timeout", "retry_backoff", "turn_timeout"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "tools", tuple(self.tools))


class OpenAIBrain:
    """Answers with a model behind an OpenAI-compatible `/chat/completions` endpoint, streaming.

    The prompt is: the system prompt; the best `recall` long-term matches for the new message
    (labelled as recalled memory); the last `memory_window` messages of the short-term window;
    the new message. Each token delta is yielded as it arrives. When the model calls tools (at
    most `max_tool_rounds` rounds a turn), each call is yielded as a `ToolCallItem`, run with
    `turn.tools`, yielded as a `ToolResultItem`, and the model goes on with the results.

    Failures raise `BrainError` with the provider's reason. A request that fails before its first
    token (connection refused, HTTP 408/409/429/5xx) is tried again up to `retries` times, after
    `retry_backoff` seconds doubling each time (or what Retry-After says, at most a minute);
    nothing is retried once text has streamed. `timeout` bounds connecting and each wait for
    data. Cancelling the turn closes the HTTP connection at once, so the provider stops.
    """

    def __init__(self, settings: OpenAIBrainSettings) -> None:
        """A brain configured by `settings` (checked when they were made); the tools they name are resolved
        here (a name that is not a tool raises `ValueError`)."""
        try:
            self.tools: tuple[Tool, ...] = resolve_tools(settings.tools)
        except ValueError as exc:
            raise ValueError(f"openai brain: tools: {exc}") from None
        #: As configured.
        self.config = settings
        self.model = settings.model
        self._endpoint = Endpoint(settings.base_url, "/chat/completions")
        #: As configured (credentials and query included): only ever used to send requests.
        self.base_url = self._endpoint.base_url
        self._url = self._endpoint.url
        #: `base_url` without credentials or query: what errors, logs and repr show.
        self.shown_url = self._endpoint.shown_url
        self.api_key_env = settings.api_key_env
        self.system_prompt = settings.system_prompt
        self.temperature = settings.temperature
        self.max_tokens = settings.max_tokens
        self.timeout = settings.timeout
        self.memory_window = settings.memory_window
        self.recall = settings.recall
        self.max_tool_rounds = settings.max_tool_rounds
        self.retries = settings.retries
        self.retry_backoff = settings.retry_backoff
        self.include_usage = settings.include_usage
        self.turn_timeout = settings.turn_timeout
        self.max_answer_chars = settings.max_answer_chars
        self.max_tool_calls = settings.max_tool_calls
        self._ssl_context = _shared_ssl_context()
        # made here, off the event loop: it reads the proxy settings of the environment, once per brain
        self._client = _http11.Client(self._url, timeout=self.timeout, ssl_context=self._ssl_context,
                                      user_agent=f"agentcast/{__version__}")

    def startup_warnings(self) -> list[str]:
        """What the server logs (naming the agent) when it starts serving this brain: an `api_key_env`
        that is not set. Only a server that will call the model asks; reading a config does not."""
        if self.api_key_env and not os.environ.get(self.api_key_env):
            return [f"openai brain (model {self.model}): the environment variable {self.api_key_env} (api_key_env) "
                    "is not set; its turns will fail until it is"]
        return []

    def settings(self) -> dict[str, object]:
        """Every setting as configured (defaults included), for `agentcast config check`: the key never (it
        is not kept here), `base_url` with its password and query values masked."""
        return {
            "model": self.model, "base_url": self._endpoint.masked_url(),
            "api_key_env": self.api_key_env, "system_prompt": self.system_prompt, "temperature": self.temperature,
            "max_tokens": self.max_tokens, "timeout": self.timeout, "memory_window": self.memory_window,
            "recall": self.recall, "tools": list(self.config.tools), "max_tool_rounds": self.max_tool_rounds,
            "retries": self.retries, "retry_backoff": self.retry_backoff, "include_usage": self.include_usage,
            "turn_timeout": self.turn_timeout, "max_answer_chars": self.max_answer_chars,
            "max_tool_calls": self.max_tool_calls,
        }

    def __repr__(self) -> str:  # never the key (it is not even kept here), nor the URL's credentials or query
        return f"OpenAIBrain(model={self.model!r}, base_url={self.shown_url!r}, api_key_env={self.api_key_env!r})"

    @property
    def url(self) -> str:
        """The endpoint requests go to (with the credentials and query of `base_url`: never shown)."""
        return self._url

    def _scrub(self, text: str, key: str | None) -> str:
        """`text` with the API key and `base_url`'s credentials and query (should anything echo them) masked."""
        return self._endpoint.scrub(text, key)

    # -- the prompt ----------------------------------------------------------------------

    def prompt(self, turn: Turn) -> list[dict]:
        """The messages sent for `turn`: system prompt, recalled memory, short-term window, the new message."""
        messages: list[dict] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        window = turn.memory.short_term[-self.memory_window:] if self.memory_window else ()
        in_window = {m.seq for m in window}
        recalled = [h for h in turn.recalled if h.seq not in in_window and h.content][: self.recall]
        if recalled:
            lines = "\n".join(f"- ({h.at}, {h.role}) {h.content}" for h in recalled)
            messages.append({"role": "system", "content": "Recalled from long-term memory of earlier conversations "
                             f"with this user (may or may not be relevant):\n{lines}"})
        for m in window:
            if not m.content:  # erased by a long-term clear
                continue
            if m.role == "fact":
                messages.append({"role": "system", "content": f"A fact you remembered about the user: {m.content}"})
            else:
                messages.append({"role": m.role, "content": m.content})
        messages.append({"role": "user", "content": turn.message})
        return messages

    def _body(self, messages: list[dict], offer_tools: bool) -> dict:
        body: dict[str, object] = {"model": self.model, "messages": messages, "stream": True}
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if offer_tools:
            body["tools"] = [t.openai_schema() for t in self.tools]
        return body

    # -- a turn --------------------------------------------------------------------------

    def _api_key(self) -> str | None:
        return api_key(self.api_key_env, BrainError)

    async def reply(self, turn: Turn) -> AsyncGenerator[BrainItem, None]:
        key = self._api_key()
        messages = self.prompt(turn)
        prompt_tokens = completion_tokens = 0
        counted = False
        rounds = chars = 0
        answer = ""  # the end of the answer so far (enough to see how it ends)
        deadline = trio.current_time() + self.turn_timeout
        # An answer read to its end leaves its connection open for a next request (`_http11.Pool`); one that is
        # not, as when the turn is cancelled, closes it, so that the provider stops generating it (and being
        # paid for it).
        while True:
            offer_tools = bool(self.tools) and rounds < self.max_tool_rounds
            result = _Round()
            body = _json_bytes(self._body(messages, offer_tools))
            said: list[str] = []  # this round's text
            async with aclosing(self._stream(body, result, key, deadline)) as deltas:
                async for delta in deltas:
                    if not said and answer and not answer[-1].isspace() and not delta[0].isspace():
                        delta = ROUND_SEPARATOR + delta  # text after tool calls: a new paragraph
                    if len(delta) > self.max_answer_chars - chars:  # the rest is not generated (closed)
                        if self.max_answer_chars > chars:
                            yield delta[: self.max_answer_chars - chars]
                        raise BrainError(f"the answer went past {self.max_answer_chars} characters "
                                         "(max_answer_chars)")
                    chars += len(delta)
                    said.append(delta)
                    answer = (answer + delta)[-1:]
                    yield delta
            if result.usage is not None:
                counted = True
                prompt_tokens += result.usage[0]
                completion_tokens += result.usage[1]
            if not result.calls:
                break
            if not offer_tools:
                raise BrainError(f"the model kept calling tools after {self.max_tool_rounds} rounds")
            rounds += 1
            calls = [result.calls[i] for i in sorted(result.calls)]
            for n, call in enumerate(calls):
                call.call_id = call.call_id or f"call_{rounds}_{n}"
            # the text the model wrote before calling (if any) goes back with the calls
            messages.append({"role": "assistant", "content": "".join(said).strip() or None, "tool_calls": [
                {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ]})
            for call in calls:
                arguments, problem = _arguments_of(call)
                yield ToolCallItem(call.call_id, call.name, arguments)
                if problem is not None:
                    outcome = ToolOutcome(error=problem)
                elif turn.tools is None:
                    outcome = ToolOutcome(error="no tools are available in this turn")
                else:
                    outcome = await self._within(deadline, turn.tools.run(call.name, arguments))
                    outcome = ToolOutcome(without_lone_surrogates(outcome.result), without_lone_surrogates(outcome.error))
                yield ToolResultItem(call.call_id, call.name, outcome.result, outcome.error)
                messages.append({"role": "tool", "tool_call_id": call.call_id, "content": outcome.for_model()})
        if not answer:
            raise BrainError("the model gave an empty answer")
        if counted:
            yield UsageItem(prompt_tokens, completion_tokens)

    async def _within(self, deadline: float, awaitable: Awaitable[T]) -> T:
        """`await awaitable`, or raise `BrainError` if the turn's deadline (`turn_timeout`) comes first.

        Each wait of a turn is bounded so (never a cancel scope around a `yield`): the per-read
        `timeout` alone cannot stop a provider that keeps the stream alive without answering.
        """
        with trio.move_on_at(deadline):
            return await awaitable
        raise BrainError(f"the model took longer than {self.turn_timeout:g} s to answer (turn_timeout)")

    async def _stream(self, body: bytes, result: _Round, key: str | None, deadline: float) -> AsyncGenerator[str, None]:
        """One request: yields its text deltas, fills `result`; tries again before the first token."""
        attempt = 0
        while True:
            try:
                async for delta in self._try(body, result, key, deadline):
                    yield delta
                return
            except _Retry as retry:
                if attempt >= self.retries:
                    tries = f" (after {attempt + 1} tries)" if attempt else ""
                    raise BrainError(retry.reason + tries) from None
                delay = self.retry_backoff * 2**attempt if retry.delay is None else retry.delay
                attempt += 1
                logger.info("openai brain (model %s): %s; try %d in %.1f s", self.model, retry.reason, attempt + 1, delay)
                await self._within(deadline, trio.sleep(min(delay, MAX_RETRY_DELAY)))

    async def _try(self, body: bytes, result: _Round, key: str | None, deadline: float) -> AsyncGenerator[str, None]:
        streamed = False
        headers = b"Accept: text/event-stream\r\nCache-Control: no-store\r\n"
        if key:  # checked by `api_key`: printable ASCII without spaces
            headers += b"Authorization: Bearer %s\r\n" % key.encode("ascii")
        response = None
        try:
            response = await self._client.post(headers, body, deadline)
            if response.status != 200:
                raise await self._http_error(response, key)
            content_type = response.headers.get("content-type", "")
            if "text/event-stream" not in content_type.partition(";")[0]:
                raise SSEError(f"its Content-Type is {content_type!r}, not 'text/event-stream'")
            # The body's reads as they come (decoded only if it has a content encoding), split into events here.
            read = response.read
            splitter = SSESplitter()
            while True:
                piece = await read()
                if not piece:
                    break
                for data in splitter.feed(piece):
                    data = data.strip()
                    if not data:
                        continue
                    if data == "[DONE]":
                        result.finished = True
                        # read on to the body's end, so that its connection serves the next request
                        await response.finish(END_OF_BODY_BYTES, END_OF_BODY_WAIT)
                        break
                    for delta in self._chunk(data, result, key):
                        streamed = True
                        yield delta
                else:
                    continue
                break
        except _http11.UnsupportedProxy as exc:
            raise BrainError(f"the request to the model server failed: {exc}") from None
        except _http11.ProxyError as exc:  # its text never names the proxy's URL (nor its credentials)
            raise _Retry(f"could not reach the model server at {self.shown_url} through the proxy ({exc})") from None
        except _http11.ConnectError as exc:
            raise _Retry(f"could not connect to the model server at {self.shown_url}: {self._scrub(str(exc), key)}") from None
        except _http11.SendError as exc:  # while sending the request: nothing streamed yet
            raise _Retry(f"could not send the request to the model server at {self.shown_url} ({exc})") from None
        except _http11.ReadTimeout:
            raise BrainError(f"the model server sent nothing for {self.timeout:g} s (timeout)") from None
        except _http11.DeadlineReached:
            raise BrainError(f"the model took longer than {self.turn_timeout:g} s to answer (turn_timeout)") from None
        except SSEError as exc:
            raise BrainError(f"malformed stream from the model server: {self._scrub(str(exc), key)}") from None
        except _http11.ProtocolError as exc:
            if not streamed and not result.calls:
                raise _Retry(f"the model server closed the connection: {self._scrub(str(exc), key)}") from None
            if isinstance(exc, (_http11.ReadError, _http11.CutOff)):
                raise BrainError("the model server closed the connection in the middle of the answer") from None
            raise BrainError(f"the model server's answer broke off in the middle: {self._scrub(str(exc), key)}") from None
        except _http11.DecodingError as exc:  # its text is the client's own
            raise BrainError(f"the model server's answer could not be decoded: {exc}") from None
        finally:
            if response is not None:
                response.close()  # unless read to its end: the connection is closed, the provider stops
        if not result.finished:
            raise BrainError("malformed stream from the model server: it ended before the answer was complete")

    def _chunk(self, data: str, result: _Round, key: str | None) -> list[str]:
        """The text deltas of one streamed chunk; tool call pieces and usage go into `result`."""
        try:
            if "\\ud" in data or "\\uD" in data:  # an escaped surrogate: maybe a lone one (orjson refuses it)
                chunk = without_lone_surrogates(json.loads(data))
            else:
                try:
                    chunk = orjson.loads(data)  # about 3.5x as fast as json.loads on a chunk
                except orjson.JSONDecodeError:  # what orjson refuses and json takes (NaN, Infinity)
                    chunk = json.loads(data)
        except (ValueError, RecursionError):
            raise BrainError(f"malformed stream from the model server: not JSON: {self._scrub(data[:200], key)!r}") from None
        if not isinstance(chunk, dict):
            raise BrainError("malformed stream from the model server: a chunk is not a JSON object")
        if chunk.get("error") is not None:
            raise BrainError(f"the model server reported an error: {self._scrub(_reason_of(chunk)[:MAX_REASON_CHARS], key)}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if type(p) is int and type(c) is int:
                result.usage = (p, c)
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise BrainError("malformed stream from the model server: 'choices' is not a list")
        deltas = []
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # only the first choice is used (n = 1)
            if choice.get("finish_reason"):
                result.finished = True
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise BrainError("malformed stream from the model server: 'delta' is not an object")
            content = delta.get("content")
            if isinstance(content, str) and content:
                deltas.append(content)
            calls = delta.get("tool_calls") or []
            if not isinstance(calls, list):
                raise BrainError("malformed stream from the model server: 'tool_calls' is not a list")
            for piece in calls:
                if not isinstance(piece, dict):
                    raise BrainError("malformed stream from the model server: a tool call is not an object")
                index = piece.get("index", len(result.calls))
                if type(index) is not int:
                    raise BrainError("malformed stream from the model server: a tool call's index is not an integer")
                if index not in result.calls and len(result.calls) >= self.max_tool_calls:
                    raise BrainError(f"the model called more than {self.max_tool_calls} tools at once (max_tool_calls)")
                call = result.calls.setdefault(index, _PendingCall())
                if isinstance(piece.get("id"), str) and piece["id"]:
                    call.call_id = piece["id"]
                function = piece.get("function") or {}
                if isinstance(function.get("name"), str):
                    call.name = (call.name + function["name"])[:MAX_TOOL_NAME_CHARS]
                if isinstance(function.get("arguments"), str) and function["arguments"]:
                    room = MAX_TOOL_ARGUMENTS_CHARS - len(call.arguments)
                    call.too_long = call.too_long or len(function["arguments"]) > room
                    call.arguments += function["arguments"][:room]
        return deltas

    async def _http_error(self, response: _http11.Response, key: str | None) -> Exception:
        """The exception for a non-200 answer: `_Retry` for the retryable ones, else `BrainError`."""
        status = response.status
        if 300 <= status < 400:  # never followed: the request (its API key) goes only where base_url says
            location = urlsplit(response.headers.get("location", ""))
            where = f" to {location.scheme}://{location.hostname}" if location.scheme and location.hostname else ""
            return BrainError(self._scrub(
                f"the model server redirected the request{where} (HTTP {status}); redirects are not followed: set "
                "base_url to the URL it points to", key))
        reason = self._scrub(_reason_of_body(await error_body(response)), key)
        text = http_failure(status, reason, server="the model server",
                            missing=f"is the model {self.model!r} served at {self.shown_url}?")
        if status in RETRYABLE_STATUSES:
            return _Retry(text, _retry_after(response))
        return BrainError(text)


def _json_bytes(body: dict) -> bytes:
    """`body` as JSON (UTF-8); a lone surrogate, which orjson refuses, escaped by the stdlib's encoder."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode("ascii")


def _arguments_of(call: _PendingCall) -> tuple[object, str | None]:
    """A tool call's arguments as parsed JSON, or (its raw text, why it cannot be run)."""
    if call.too_long:
        return call.arguments, f"the arguments are longer than {MAX_TOOL_ARGUMENTS_CHARS} characters"
    if not call.arguments.strip():
        return {}, None
    try:
        arguments = json.loads(call.arguments)
    except RecursionError:  # nested deeper than the parser goes
        return call.arguments, f"the arguments are nested more than {MAX_TOOL_ARGUMENTS_DEPTH} levels deep"
    except ValueError:
        return call.arguments, "the arguments are not valid JSON"
    if _depth_over(arguments, MAX_TOOL_ARGUMENTS_DEPTH):
        return call.arguments, f"the arguments are nested more than {MAX_TOOL_ARGUMENTS_DEPTH} levels deep"
    return arguments, None


def _depth_over(value: object, limit: int) -> bool:
    """True if `value` (parsed JSON) nests objects and arrays more than `limit` deep (without recursion)."""
    level = [value]
    for _ in range(limit):
        level = [v for c in level if isinstance(c, (dict, list)) for v in (c.values() if isinstance(c, dict) else c)]
        if not level:
            return False
    return any(isinstance(v, (dict, list)) for v in level)


BRAINS["openai"] = OpenAIBrain
BRAIN_SETTINGS["openai"] = OpenAIBrainSettings
