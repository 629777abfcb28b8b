"""`agentcast chat`: an interactive terminal chat built on `transport.client` — answers and tool calls stream as they
arrive, Ctrl-C cancels an answer; /agents, /search, /clear, /clear-all, /agent, /user, /help, /quit; reconnects.

Imports `transport.client` and `transport.protocol` only: never the server side, `actors` or `store`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys

import trio

from .client import (
    AgentClient,
    AgentError,
    CannotConnect,
    ClientError,
    ConnectionLost,
    Disconnected,
    Reconnected,
    open_agent_client,
)
from .protocol import Cancelled, Error, MemoryCleared, Response, ToolCall, ToolResult, UnknownFrame, UserMessage

HELP = """Commands:
  /agents         the agents of the server, with their descriptions
  /search QUERY   search what the agent remembers of you
  /clear          clear the agent's short-term memory of you
  /clear-all      forget everything (short- and long-term)
  /agent NAME     talk to another agent
  /user ID        become another user (123 is a number, anything else text)
  /help           this list
  /quit           leave (Ctrl-D too, and Ctrl-C at the prompt)
Anything else is sent to the agent; start a message with // to send one beginning with /.
Ctrl-C while an answer streams cancels it (what was said so far stays); a second Ctrl-C leaves."""

#: How much of a tool's arguments or result a line shows.
TOOL_TEXT = 200

_INTEGER = re.compile(r"0|-?[1-9][0-9]*")


def user_id(text: str) -> int | str:
    """The user id TEXT means on the command line: a canonical integer (123, -5, not 007) is a JSON integer."""
    return int(text) if _INTEGER.fullmatch(text) else text


class Terminal:
    """Writes to stdout: streamed answers, notices in [brackets], and the prompt when stdin is a terminal."""

    PROMPT = "you> "

    def __init__(self, interactive: bool, color: bool = False) -> None:
        self.interactive = interactive
        #: Whether stdout is a terminal: side notes (tool calls, usage, cancelled) are dimmed.
        self.color = color
        self.at_prompt = False

    def dim(self, text: str) -> str:
        return f"\x1b[2m{text}\x1b[0m" if self.color else text

    def write(self, text: str) -> None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):  # the reader of stdout is gone: nothing to tell it
            pass

    def line(self, text: str) -> None:
        self.write(text + "\n")

    def notice(self, text: str) -> None:
        """A line that may arrive at any time (while the prompt waits for input)."""
        if self.at_prompt:
            self.write("\r" + text + "\n" + self.PROMPT)
        else:
            self.line(text)

    def prompt(self) -> None:
        if self.interactive:
            self.write(self.PROMPT)
            self.at_prompt = True


def run_chat(args: argparse.Namespace) -> int:
    """`agentcast chat`; returns the exit status (0: the user left; 1: cannot connect or gave up)."""
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            print(f"agentcast: error: environment variable {args.token_env} is not set (it should hold a token)",
                  file=sys.stderr)
            return 2
    user = user_id(args.user) if args.user is not None else None
    term = Terminal(sys.stdin.isatty(), sys.stdout.isatty())
    try:
        return trio.run(_chat, args.url, args.agent, user, token, term)
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C is handled inside; this is a second one mid-exit
        term.line("")
        return 0


async def _chat(url: str, agent: str, user: int | str | None, token: str | None, term: Terminal) -> int:
    try:
        async with open_agent_client(url, user_id=user, token=token) as client:
            try:
                await client.subscribe(agent)
            except AgentError as exc:
                print(f"agentcast: error: {exc.message}", file=sys.stderr)
                return 1
            who = f"user {client.user_id}" if client.user_id is not None else "a private user (no --user)"
            term.line(f"Connected to {url} as {who}, talking to {agent}. /help lists the commands.")
            session = _Session(client, term, agent)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.notices)
                nursery.start_soon(_on_sigint, session, nursery)
                await session.loop()
                nursery.cancel_scope.cancel()
            return session.status
    except CannotConnect as exc:
        print(f"agentcast: error: {exc}", file=sys.stderr)
        return 1
    except AgentError as exc:  # refused at the start: a bad --user, a bad token
        print(f"agentcast: error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1


async def _on_sigint(session: _Session, nursery: trio.Nursery) -> None:
    """Ctrl-C: while an answer streams, the first one cancels it; otherwise (at the prompt, or a second one) leave."""
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            stream = session.answering
            if stream is not None and not session.cancelling:
                session.cancelling = True
                nursery.start_soon(session.cancel_answer, stream)
                continue
            session.term.line("")
            nursery.cancel_scope.cancel()
            return


def _shown(value, limit: int = TOOL_TEXT) -> str:
    """`value` (a tool's arguments or result) as one line of at most `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Session:
    def __init__(self, client: AgentClient, term: Terminal, agent: str) -> None:
        self.client = client
        self.term = term
        self.agent = agent
        self.status = 0
        #: The answer streaming now (Ctrl-C cancels it), and whether a cancel was asked for.
        self.answering = None
        self.cancelling = False

    async def loop(self) -> None:
        while True:
            self.term.prompt()
            line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            self.term.at_prompt = False
            if not line:  # Ctrl-D, or the end of piped input
                if self.term.interactive:
                    self.term.line("")
                return
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            try:
                if text.startswith("/") and not text.startswith("//"):
                    if not await self.command(text):
                        return
                else:
                    await self.chat(text[1:] if text.startswith("//") else text)
            except AgentError as exc:
                self.term.line(f"[error] {exc.code}: {exc.message}")
            except ConnectionLost as exc:
                self.term.line(f"agentcast: error: {exc}")
                self.status = 1
                return
            except ClientError as exc:  # pragma: no cover - every client error is one of the above
                self.term.line(f"[error] {exc}")

    async def chat(self, text: str) -> None:
        """Send `text`; show the answer as it streams, tool calls and results on lines of their own, then
        `(cancelled)` or the token usage."""
        term, prefix = self.term, f"{self.agent}> "
        term.write(prefix)
        column0 = False  # the cursor is at the start of a line
        after_tool = False  # the last line was a tool's: the answer goes on after a new prefix
        try:
            async with self.client.stream_chat(self.agent, text) as stream:
                self.answering, self.cancelling = stream, False
                async for item in stream.items():
                    if isinstance(item, str):
                        if after_tool:
                            term.write(prefix)
                            after_tool = False
                        term.write(item)
                        column0 = item.endswith("\n")
                        continue
                    if not column0 and stream.text:  # a tool line right after the bare prefix stays on its line
                        term.write("\n")
                    if isinstance(item, ToolCall):
                        term.line(term.dim(f"[tool {item.tool} {_shown(item.arguments)}]"))
                    elif isinstance(item, ToolResult) and item.error is not None:
                        term.line(term.dim(f"[result {item.tool} failed: {_shown(item.error)}]"))
                    else:
                        term.line(term.dim(f"[result {_shown(item.result)}]"))
                    column0 = after_tool = True
        finally:
            self.answering = None
            if not column0:
                term.write("\n")
                column0 = True
        result = stream.result
        if result is not None and result.cancelled:
            term.line(term.dim("(cancelled)"))
        elif result is not None and result.usage is not None:
            u = result.usage
            term.line(term.dim(f"[tokens: {u.prompt_tokens} prompt, {u.completion_tokens} completion]"))

    async def cancel_answer(self, stream) -> None:
        """Cancel the answer streaming now (Ctrl-C); the chat shows it ends."""
        try:
            await stream.cancel()
        except AgentError as exc:
            if stream.result is None:  # e.g. still queued behind another turn of yours: it cannot be cancelled yet
                self.term.write(self.term.dim(f"\n[cannot cancel: {exc.message}; Ctrl-C again leaves]\n"))
        except ConnectionLost:
            pass  # the chat ends as cancelled, or the session reports the lost connection

    async def command(self, text: str) -> bool:
        """Carry out a /command; False means leave."""
        name, _, rest = text.partition(" ")
        rest = rest.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            self.term.line(HELP)
        elif name == "/agents":
            await self.list_agents()
        elif name == "/search":
            if not rest:
                self.term.line("Usage: /search QUERY")
            else:
                await self.search(rest)
        elif name == "/clear":
            await self.client.clear_memory(self.agent)
            self.term.line(f"Short-term memory of {self.agent} cleared (long-term search still finds older messages).")
        elif name == "/clear-all":
            cleared = await self.client.clear_memory(self.agent, long_term=True)
            n = cleared.forgotten
            self.term.line(f"All memory of {self.agent} cleared: {n} message{'' if n == 1 else 's'} forgotten.")
        elif name == "/agent":
            if not rest:
                self.term.line(f"Usage: /agent NAME (now talking to {self.agent})")
            else:
                await self.switch_agent(rest)
        elif name == "/user":
            if not rest:
                self.term.line(f"Usage: /user ID (now user {self.client.user_id})")
            else:
                now = await self.client.set_user(user_id(rest))
                self.term.line(f"You are now user {now}.")
        else:
            self.term.line(f"Unknown command: {name} (/help lists the commands)")
        return True

    async def list_agents(self) -> None:
        agents = await self.client.list_agents()
        if not agents:  # pragma: no cover - a server always has an agent
            self.term.line("The server has no agents.")
            return
        width = max(len(a.agent_id) for a in agents)
        self.term.line(f"{len(agents)} agent{'' if len(agents) == 1 else 's'} (* the one you talk to):")
        for a in agents:
            mark = "*" if a.agent_id == self.agent else " "
            self.term.line(f"  {mark} {a.agent_id:{width}}  {a.description}".rstrip())

    async def search(self, query: str) -> None:
        results = await self.client.search_memory(self.agent, query, limit=10)
        if not results:
            self.term.line(f"No results for {query!r} in {self.agent}'s memory of you.")
            return
        n = len(results)
        self.term.line(f"{n} result{'' if n == 1 else 's'} for {query!r} in {self.agent}'s memory of you:")
        for i, r in enumerate(results, 1):
            content = r.content.replace("\n", " ⏎ ")
            self.term.line(f"  {i}. [{r.source}] {r.role}: {content}  (score {r.score:.3g}, {r.timestamp})")

    async def switch_agent(self, agent: str) -> None:
        if agent == self.agent:
            self.term.line(f"Already talking to {agent}.")
            return
        await self.client.subscribe(agent)  # unknown_agent raises: we stay with the current one
        old, self.agent = self.agent, agent
        try:
            await self.client.unsubscribe(old)
        except AgentError:  # pragma: no cover - unsubscribing is never an error
            pass
        self.term.line(f"Now talking to {agent}.")

    async def notices(self) -> None:
        """What arrives unasked: reconnections, and turns of this user's other connections."""
        async with self.client.events() as events:
            async for event in events:
                if isinstance(event, Disconnected):
                    if event.retry_in is None:
                        self.term.notice(f"[connection lost: {event.reason}; giving up]")
                    else:
                        self.term.notice(
                            f"[connection lost: {event.reason}; reconnecting in {event.retry_in:.1f} s "
                            f"(attempt {event.attempt})]"
                        )
                elif isinstance(event, Reconnected):
                    self.term.notice("[reconnected]")
                elif isinstance(event, UserMessage):
                    self.term.notice(f"[you, elsewhere, to {event.agent_id}] {event.message}")
                elif isinstance(event, Response):
                    self.term.notice(f"[{event.agent_id}, to you elsewhere] {event.message}")
                elif isinstance(event, Cancelled):
                    self.term.notice(f"[{event.agent_id}, to you elsewhere, cancelled] {event.partial}")
                elif isinstance(event, MemoryCleared):
                    what = "all memory" if event.clear_long_term else "short-term memory"
                    self.term.notice(f"[{what} of {event.agent_id} was cleared elsewhere]")
                elif isinstance(event, Error):
                    self.term.notice(f"[server error] {event.code}: {event.message}")
                elif isinstance(event, UnknownFrame):
                    pass  # a frame of a newer server that this version does not show
