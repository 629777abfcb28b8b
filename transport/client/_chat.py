"""`agentcast chat`: an interactive terminal chat built on `agentcast.transport.client` — answers and tool calls stream as they
arrive, Ctrl-C cancels an answer; /agents, /search, /clear, /clear-all, /agent, /user, /help, /quit; reconnects.
In a terminal, lines are edited with readline (arrow keys, history of the session); whatever the server sends
is printed with its control characters made visible, never passed raw to the terminal.

Imports `agentcast.transport.client` and `agentcast.transport.protocol` only: never the server side, `actors` or `store`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from urllib.parse import urlsplit, urlunsplit

import trio

from ._client import (
    AgentClient,
    AgentError,
    CannotConnect,
    ClientError,
    ConnectionLost,
    Disconnected,
    Reconnected,
    open_agent_client,
)
from ..protocol import Cancelled, Error, MemoryCleared, Response, ToolCall, ToolResult, UnknownFrame, UserMessage

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


#: Control characters (C0 but newline and tab, DEL, C1): never sent raw to the terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _control_shown(match: re.Match) -> str:
    code = ord(match.group())
    if code < 0x20:
        return "^" + chr(code + 0x40)  # ESC is ^[, BEL ^G, CR ^M (caret notation, as `cat -v`)
    return "^?" if code == 0x7F else f"\\x{code:02x}"


def visible(text: str) -> str:
    """`text` safe to print on a terminal: newlines and tabs kept (CR LF as a newline), every other control
    character made visible (ESC as ^[, BEL as ^G, DEL as ^?, a C1 control such as CSI as \\x9b), so that text
    from an agent or another user can neither move the cursor, recolour, retitle or clear the screen, nor hide
    what it says."""
    text = text.replace("\r\n", "\n")
    return _CONTROL.sub(_control_shown, text) if _CONTROL.search(text) else text


class Terminal:
    """Writes to stdout: streamed answers, notices in [brackets], and the prompt when stdin is a terminal.
    Every text goes through `visible`; only the terminal's own styling (dimming) is written raw."""

    PROMPT = "you> "

    def __init__(self, interactive: bool, color: bool = False, reader: LineReader | None = None) -> None:
        self.interactive = interactive
        #: Whether stdout is a terminal: side notes (tool calls, usage, cancelled) are dimmed.
        self.color = color
        self.reader = reader
        self.at_prompt = False

    def _raw(self, text: str) -> None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):  # the reader of stdout is gone: nothing to tell it
            pass

    def write(self, text: str, *, dim: bool = False) -> None:
        shown = visible(text)
        self._raw(f"\x1b[2m{shown}\x1b[0m" if dim and self.color and shown else shown)

    def line(self, text: str, *, dim: bool = False) -> None:
        self.write(text, dim=dim)
        self._raw("\n")

    def notice(self, text: str) -> None:
        """A line that may arrive at any time (while the prompt waits for input): printed above the prompt,
        which is drawn again with what was typed so far."""
        if self.at_prompt:
            typed = self.reader.typed() if self.reader is not None else ""
            self._raw("\r" + ("\x1b[K" if self.color else "") + visible(text) + "\n" + self.PROMPT + visible(typed))
        else:
            self.line(text)


class LineReader:
    """Reads the lines typed: with readline's line editing and the session's history when stdin is a terminal
    (arrow keys move and recall, they never end up in a message), else plain lines (a pipe, a file).

    `read` blocks: it runs in a worker thread. Nothing is saved to disk (no history file)."""

    def __init__(self, interactive: bool) -> None:
        self.readline = None
        self._saved_tty = None
        if not interactive:
            return
        try:
            import readline  # noqa: PLC0415 - only for a terminal; absent on some platforms
            import termios  # noqa: PLC0415
        except ImportError:  # pragma: no cover - no readline here: the terminal's own line editing
            return
        self.readline = readline
        try:
            self._saved_tty = termios.tcgetattr(sys.stdin.fileno())
        except (termios.error, OSError, ValueError):  # pragma: no cover
            self._saved_tty = None
        readline.set_completer_delims(" \t")
        readline.set_completer(self._complete)
        if "libedit" in (readline.__doc__ or ""):  # pragma: no cover - macOS's readline
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")

    def read(self, prompt: str) -> str:
        """The next line, ending in a newline; "" at the end of input (Ctrl-D)."""
        if self.readline is None:
            if prompt:
                sys.stdout.write(prompt)
                sys.stdout.flush()
            return sys.stdin.readline()
        try:
            return input(prompt) + "\n"
        except EOFError:
            return ""

    def typed(self) -> str:
        """What is typed on the prompt's line so far."""
        return self.readline.get_line_buffer() if self.readline is not None else ""

    def restore(self) -> None:
        """Give the terminal back as it was (a read abandoned at exit leaves readline's settings on it)."""
        if self._saved_tty is not None:
            import termios  # noqa: PLC0415

            try:
                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved_tty)
            except (termios.error, OSError, ValueError):  # pragma: no cover
                pass

    def _complete(self, text: str, state: int) -> str | None:
        """Tab completes the /commands (and nothing else: no file names in a chat)."""
        matches = [c for c in COMMANDS if c.startswith(text)] if text.startswith("/") else []
        return matches[state] if state < len(matches) else None


#: The /commands, for tab completion.
COMMANDS = ("/agents", "/search ", "/clear", "/clear-all", "/agent ", "/user ", "/help", "/quit")


def run_chat(args: argparse.Namespace) -> int:
    """`agentcast chat`; returns the exit status (0: the user left; 1: cannot connect or gave up)."""
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            print(f"agentcast: error: environment variable {args.token_env} is not set (it should hold a token)",
                  file=sys.stderr)
            return 2
    problem = url_problem(args.url)
    if problem is not None:
        _error(problem)
        return 2
    user = user_id(args.user) if args.user is not None else None
    interactive = sys.stdin.isatty()
    reader = LineReader(interactive)
    term = Terminal(interactive, sys.stdout.isatty(), reader)
    try:
        return trio.run(_chat, args.url, args.agent, user, token, term, reader)
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C is handled inside; this is a second one mid-exit
        term.line("")
        return 0
    finally:
        reader.restore()


def _error(text: str) -> None:
    print(f"agentcast: error: {visible(text)}", file=sys.stderr)


def url_problem(url: str) -> str | None:
    """What is wrong with `--url` before trying it (not a ws:// or wss:// URL), with the URL to use instead."""
    parts = urlsplit(url)
    if parts.scheme in ("ws", "wss") and parts.netloc:
        return None
    if parts.scheme in ("http", "https") and parts.netloc:
        scheme, rest = ("ws" if parts.scheme == "http" else "wss"), url.split("://", 1)[1]
    else:
        scheme, rest = "ws", url.split("://", 1)[-1]
    suggestion = urlsplit(f"{scheme}://{rest}")
    if suggestion.path in ("", "/"):
        suggestion = suggestion._replace(path=WS_PATH)
    return f"--url {url!r} is not a WebSocket URL: use --url {urlunsplit(suggestion)}"


#: agentcast's WebSocket endpoint.
WS_PATH = "/ws"


def _no_endpoint(url: str) -> str:
    """What to say when `url` got HTTP 404: the server has no WebSocket endpoint at its path; agentcast's is /ws."""
    parts = urlsplit(url)
    fixed = urlunsplit(parts._replace(path=WS_PATH, query="", fragment=""))
    what = "add /ws" if parts.path in ("", "/") else "agentcast's is /ws"
    return (f"cannot connect to {url}: the server has no WebSocket endpoint at {parts.path or '/'} (HTTP 404); "
            f"{what}: --url {fixed}")


#: The hint for a chat refused because the server has authentication on and no token was given.
AUTH_HINT = ("this server has authentication on: pass --token-env NAME, NAME being an environment variable that "
             "holds your token (`agentcast token --user ID` makes one where the server's secret is set)")


async def _chat(url: str, agent: str, user: int | str | None, token: str | None, term: Terminal,
                reader: LineReader) -> int:
    try:
        async with open_agent_client(url, user_id=user, token=token) as client:
            try:
                await client.subscribe(agent)
            except AgentError as exc:
                _error(AUTH_HINT if exc.code == "unauthenticated" and token is None else exc.message)
                return 1
            who = f"user {client.user_id}" if client.user_id is not None else "a private user (no --user)"
            term.line(f"Connected to {url} as {who}, talking to {agent}. /help lists the commands.")
            session = _Session(client, term, agent, reader)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.notices)
                nursery.start_soon(_on_sigint, session, nursery)
                await session.loop()
                nursery.cancel_scope.cancel()
            return session.status
    except CannotConnect as exc:
        if exc.status == 404 and urlsplit(url).path != WS_PATH:
            _error(_no_endpoint(url))
        else:
            _error(str(exc))
        return 1
    except AgentError as exc:  # refused at the start: a bad --user, a bad token
        if exc.code == "unauthenticated" and token is None:
            _error(AUTH_HINT)
        else:
            _error(f"{exc.code}: {exc.message}")
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
    """`value` (a tool's arguments or result) as one line of at most `limit` characters (printed through
    `visible` like everything else)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Session:
    def __init__(self, client: AgentClient, term: Terminal, agent: str, reader: LineReader) -> None:
        self.client = client
        self.term = term
        self.agent = agent
        self.reader = reader
        self.status = 0
        #: The answer streaming now (Ctrl-C cancels it), and whether a cancel was asked for.
        self.answering = None
        self.cancelling = False

    async def loop(self) -> None:
        while True:
            prompt = self.term.PROMPT if self.term.interactive else ""
            self.term.at_prompt = self.term.interactive
            line = await trio.to_thread.run_sync(self.reader.read, prompt, abandon_on_cancel=True)
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
                        term.line(f"[tool {item.tool} {_shown(item.arguments)}]", dim=True)
                    elif isinstance(item, ToolResult) and item.error is not None:
                        term.line(f"[result {item.tool} failed: {_shown(item.error)}]", dim=True)
                    else:
                        term.line(f"[result {_shown(item.result)}]", dim=True)
                    column0 = after_tool = True
        finally:
            self.answering = None
            if not column0:
                term.write("\n")
                column0 = True
        result = stream.result
        if result is not None and result.cancelled:
            term.line("(cancelled)", dim=True)
        elif result is not None and result.usage is not None:
            u = result.usage
            term.line(f"[tokens: {u.prompt_tokens} prompt, {u.completion_tokens} completion]", dim=True)

    async def cancel_answer(self, stream) -> None:
        """Cancel the answer streaming now (Ctrl-C); the chat shows it ends."""
        try:
            await stream.cancel()
        except AgentError as exc:
            if stream.result is None:  # e.g. still queued behind another turn of yours: it cannot be cancelled yet
                self.term.write("\n")
                self.term.line(f"[cannot cancel: {exc.message}; Ctrl-C again leaves]", dim=True)
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
