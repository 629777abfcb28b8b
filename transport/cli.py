"""The `agentcast` command line: `serve` runs the server; `replay` rebuilds and prints memory from a log
(now or at any earlier point), `replay events` prints or follows the raw events, `replay verify` checks a log;
`token` mints an authentication token; `chat` is a terminal chat client (in `transport._chat`).

Argument parsing and printing only; the work is done by `transport.server` and `store`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import select
import signal
import sys
import time
from importlib.metadata import PackageNotFoundError, version

import trio
from sqlite_utils.utils import sqlite3

from actors import ConfigError
from store import (
    DEFAULT_WINDOW,
    Clear,
    Cut,
    EventLog,
    Memory,
    Message,
    MissingEventLog,
    NotAnEventLog,
    UndecodableEvent,
    VerifyReport,
    activity_at,
    clears_at,
    event_fields,
    events_after,
    last_seq_at,
    memory_at,
    parse_instant,
    verify,
)

from ._auth import Authenticator, exposure_warning, parse_ttl, secret_from_env, valid_user_id
from ._config import load_config, server_settings
from .server import WS_PATH, Server

logger = logging.getLogger("agentcast")


def _version() -> str:
    try:
        return version("agentcast")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentcast", description="A real-time WebSocket server for AI agents.")
    parser.add_argument("--version", action="version", version=f"agentcast {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server", description="Run the agentcast server until SIGINT or SIGTERM.")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 5050; 0 picks a free one)")
    serve.add_argument("--db", help="the event log, a SQLite file; created if absent (default agentcast.db)")
    serve.add_argument("--config", help="a TOML file with [server] settings and [agents.ID] tables")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--auth-secret-env", metavar="NAME",
        help="turn token authentication on, with the secret (at least 32 bytes) in environment variable NAME",
    )
    serve.add_argument(
        "--allow-origin", metavar="URL", action="append", dest="allow_origins",
        help="a browser Origin that may connect, e.g. https://chat.example.com (repeatable; others get HTTP 403; "
        "default: every origin)",
    )
    serve.add_argument("--certfile", help="serve wss:// (TLS) with this PEM certificate chain")
    serve.add_argument("--keyfile", help="the certificate's private key (PEM), unless --certfile holds it")

    token = sub.add_parser(
        "token", help="mint an authentication token",
        description="Print a token for --user, valid for --ttl, signed with the secret in an environment variable "
        "(the one the server's --auth-secret-env names). The token goes to stdout, alone.",
    )
    token.add_argument(
        "--user", required=True,
        help="the user id; an integer such as 123 becomes a JSON integer, anything else a string",
    )
    token.add_argument("--user-string", action="store_true", help="make the user id a string even if it is all digits")
    token.add_argument("--ttl", default="1h", help="how long the token is valid: 30s, 15m, 1h, 7d (default 1h)")
    token.add_argument(
        "--secret-env", metavar="NAME",
        help=f"the environment variable holding the secret (default: the config's auth_secret_env, else {DEFAULT_SECRET_ENV})",
    )
    token.add_argument("--config", help="the server's config file, for its auth_secret_env")

    chat = sub.add_parser(
        "chat", help="chat with an agent in the terminal",
        description="An interactive chat with a running server: answers and tool calls stream as they arrive; "
        "Ctrl-C during an answer cancels it. Commands: /agents, /search QUERY, /clear, /clear-all, /agent NAME, "
        "/user ID, /help, /quit. Reads lines from stdin (a terminal or a pipe); reconnects if the server goes away.",
    )
    chat.add_argument("--url", default="ws://127.0.0.1:5050/ws", help="the server (default ws://127.0.0.1:5050/ws)")
    chat.add_argument("--agent", default="my_agent", help="the agent to talk to first (default my_agent)")
    chat.add_argument("--user", help="the user id; an integer such as 123 becomes a JSON integer, anything else a string")
    chat.add_argument("--token-env", metavar="NAME", help="authenticate with the token in environment variable NAME")

    replay = sub.add_parser(
        "replay",
        help="rebuild memory from an event log and print it; `replay events`, `replay verify`",
        description="Rebuild each agent's memory of each user from the event log, read-only, and print it: "
        "as it is now, or as it was at --until-seq N or --until-time ISO.",
        usage=REPLAY_USAGE,
        epilog="Also: `agentcast replay events --help` (print or follow the raw events) and "
        "`agentcast replay verify --help` (check a log). All three only read the log; "
        "a server may be writing to it.",
    )
    replay.add_argument("--db", required=True, help="the event log to read (never modified)")
    replay.add_argument("--agent", help="only this agent")
    replay.add_argument("--user", help="only this user (user ids compare as text: 123 and \"123\" are one user)")
    replay.add_argument("--config", help="the server's config file, for each agent's short-term window size")
    replay.add_argument("--json", action="store_true", help="print machine-readable JSON")
    replay.add_argument("--until-seq", metavar="N", help="memory as it was after event N (events with seq <= N)")
    replay.add_argument(
        "--until-time", metavar="ISO",
        help="memory as of an ISO 8601 time, e.g. 2026-11-29T02:21:31Z or ...+01:00 (events whose time is <= it; "
        "no offset means UTC)",
    )
    return parser


#: The environment variable `agentcast token` reads the secret from when nothing names one.
DEFAULT_SECRET_ENV = "AGENTCAST_AUTH_SECRET"

#: The subcommands of `replay` (`agentcast replay events ...`); anything else after `replay` is the plain form.
REPLAY_TOOLS = ("events", "verify")

REPLAY_USAGE = """
  agentcast replay --db DB [--agent A] [--user U] [--config C] [--json] [--until-seq N | --until-time ISO]
  agentcast replay events --db DB [--agent A] [--user U] [--after-seq N] [--follow]
  agentcast replay verify --db DB [--json]"""


def _replay_tools_parser() -> argparse.ArgumentParser:
    """`agentcast replay events|verify ...` (parsed from the word after `replay`)."""
    parser = argparse.ArgumentParser(prog="agentcast replay", usage=REPLAY_USAGE)
    tools = parser.add_subparsers(dest="tool", required=True, metavar="{events,verify}")

    events = tools.add_parser(
        "events",
        help="print the raw events",
        description="Print the log's events in seq order, one JSON object per line: seq, type, agent_id, user, at "
        "and the event's own fields (content, long_term, request_id). Read-only; a server may be writing the log.",
    )
    events.add_argument("--db", required=True, help="the event log to read (never modified)")
    events.add_argument("--agent", help="only this agent's events")
    events.add_argument("--user", help="only this user's events")
    events.add_argument("--after-seq", metavar="N", default="0", help="only events with seq > N (default 0: all)")
    events.add_argument(
        "--follow", action="store_true",
        help="keep printing new events as they are committed, until SIGINT/SIGTERM (or stdout is closed)",
    )

    check = tools.add_parser(
        "verify",
        help="check a log",
        description="Check the log: seqs 1..last without holes, every event type known and payload decodable, "
        "the memory rebuilt twice the same, the search index agreeing with it, SQLite's integrity_check. "
        "Exit 0 when all is well, 1 with a report of what is wrong. Read-only.",
    )
    check.add_argument("--db", required=True, help="the event log to check (never modified)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


class BadArgument(Exception):
    """A command-line value that parses but means nothing (a negative seq, an unreadable time)."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) >= 2 and argv[0] == "replay" and argv[1] in REPLAY_TOOLS:
        args = _replay_tools_parser().parse_args(argv[1:])
        args.command = "replay " + args.tool
    else:
        args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "token":
            return _token(args)
        if args.command == "chat":
            from ._chat import run_chat  # the client side: loaded only for this command

            return run_chat(args)
        if args.command == "replay events":
            return _replay_events(args)
        if args.command == "replay verify":
            return _replay_verify(args)
        return _replay(args)
    except Exception as exc:
        problem = _single(exc)  # errors raised inside trio.run arrive wrapped in exception groups
        if isinstance(problem, BrokenPipeError) and args.command.startswith("replay"):
            return _stdout_gone()  # e.g. `agentcast replay ... | head`: the reader has all it wanted
        if isinstance(problem, BadArgument):
            print(f"agentcast: error: {problem}", file=sys.stderr)
            return 2
        if isinstance(problem, (ConfigError, NotAnEventLog, MissingEventLog, UndecodableEvent)):
            print(f"agentcast: error: {problem}", file=sys.stderr)
            return 1
        if isinstance(problem, sqlite3.DatabaseError):
            print(f"agentcast: error: the database is damaged or unreadable: {problem}", file=sys.stderr)
            return 1
        if isinstance(problem, OSError):
            where = f": {problem.filename}" if problem.filename else ""
            print(f"agentcast: error: {problem.strerror or problem}{where}", file=sys.stderr)
            return 1
        raise


def _single(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups (else `exc` itself)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


# -- serve -----------------------------------------------------------------------------------


def setup_logging(level: str) -> None:
    """The server's logging: `level` and up to stderr; httpx and httpcore only from WARNING, whatever
    `level`, as they log each request's full URL (which may hold a base_url's credentials or query)."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _serve(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    config = load_config(args.config)
    settings = server_settings(
        config, host=args.host, port=args.port, db=args.db, auth_secret_env=args.auth_secret_env,
        allow_origins=args.allow_origins, certfile=args.certfile, keyfile=args.keyfile,
    )
    server = Server(settings, config.agents)  # reads the secret: unset or short is a ConfigError here
    warning = exposure_warning(settings.host, server.auth is not None)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    trio.run(_run_until_signalled, server)
    return 0


async def _run_until_signalled(server: Server) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.run)
            s = server.settings
            print(f"agentcast listening on {server.scheme}://{s.host}:{port}{WS_PATH} "
                  f"(db {s.db}; agents: {', '.join(server.agents)})", flush=True)
            web = "https" if server.scheme == "wss" else "http"
            print(f"chat page: {web}://{s.host}:{port}/  health: /healthz  metrics: /metrics", flush=True)
            nursery.start_soon(_handle_signals, signals, server, nursery.cancel_scope)
            await server.stopped.wait()
            nursery.cancel_scope.cancel()


async def _handle_signals(signals, server: Server, scope: trio.CancelScope) -> None:
    """First signal: graceful shutdown. Second: stop now."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if server.stopping:
            logger.warning("%s again: stopping now", name)
            scope.cancel()
            return
        logger.info("%s: shutting down gracefully (send it again to stop now)", name)
        server.stop()


# -- token -----------------------------------------------------------------------------------

_INTEGER = re.compile(r"0|-?[1-9][0-9]*")


def token_user(text: str, *, as_string: bool = False) -> int | str:
    """The user id `agentcast token --user TEXT` means: an integer written canonically (123, -5, not 007)
    is a JSON integer, unless `as_string`; anything else is a string."""
    user: int | str = int(text) if not as_string and _INTEGER.fullmatch(text) else text
    if not valid_user_id(user):
        raise BadArgument("--user needs an integer or a non-empty string of at most 256 characters")
    return user


def _token(args: argparse.Namespace) -> int:
    user = token_user(args.user, as_string=args.user_string)
    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as exc:
        raise BadArgument(f"--ttl: {exc}") from None
    name = args.secret_env
    if name is None and args.config:
        name = server_settings(load_config(args.config)).auth_secret_env
    auth = Authenticator(secret_from_env(name or DEFAULT_SECRET_ENV))
    print(auth.mint(user, ttl), flush=True)
    return 0


# -- replay ----------------------------------------------------------------------------------


def _seq_value(option: str, text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise BadArgument(f"{option} needs a sequence number (an integer >= 0), not {text!r}") from None
    if value < 0:
        raise BadArgument(f"{option} needs a sequence number (an integer >= 0), not {value}")
    if value > MAX_SEQ:
        raise BadArgument(f"{option} {value} is larger than any sequence number can be ({MAX_SEQ})")
    return value


#: SQLite's largest integer, so the largest seq there can be.
MAX_SEQ = 2**63 - 1


def _cut(args: argparse.Namespace) -> Cut:
    if args.until_seq is not None and args.until_time is not None:
        raise BadArgument("give --until-seq or --until-time, not both")
    if args.until_seq is not None:
        return Cut(until_seq=_seq_value("--until-seq", args.until_seq))
    if args.until_time is not None:
        try:
            return Cut(until_time=parse_instant(args.until_time))
        except ValueError as exc:
            raise BadArgument(f"--until-time: {exc}") from None
    return Cut()


def _replay(args: argparse.Namespace) -> int:
    cut = _cut(args)  # before opening anything: a bad value is a usage error
    windows = {spec.agent_id: spec.short_term_window for spec in load_config(args.config).agents} if args.config else {}
    with EventLog.open(args.db, readonly=True) as log, log.snapshot():
        memories = []
        for agent_id, user in log.streams():
            if (args.agent is not None and agent_id != args.agent) or (args.user is not None and user != args.user):
                continue
            memory, long_term, forgotten = memory_at(
                log, agent_id, user, window=windows.get(agent_id, DEFAULT_WINDOW), cut=cut
            )
            if memory.last_seq == 0:  # nothing of this (agent, user) yet at the cut
                continue
            activity = [_activity(r) for r in activity_at(log, agent_id, user, cut=cut)]
            clears = clears_at(log, agent_id, user, cut=cut)
            memories.append((memory, [_message(m, forgotten) for m in long_term], forgotten, activity, clears))
        last_seq = last_seq_at(log, cut)
        log_last_seq = log.last_seq() if not cut.everything else last_seq
    as_of = {}
    if cut.until_seq is not None:
        as_of = {"until_seq": cut.until_seq}
    elif cut.until_time is not None:
        as_of = {"until_time": args.until_time}
    if args.json:
        extra = {**as_of, "log_last_seq": log_last_seq} if as_of else {}
        print(json.dumps({"db": args.db, "last_seq": last_seq, **extra,
                          "memories": [{**_memory_json(m, lt, forgotten, clears), "activity": activity}
                                       for m, lt, forgotten, activity, clears in memories]},
                         ensure_ascii=False, indent=2))
        return 0
    if as_of:
        point = f"seq {cut.until_seq}" if cut.until_seq is not None else f"{args.until_time} ({_utc(cut)})"
        print(f"{args.db} as of {point}: last seq then {last_seq} (the log's last seq is now {log_last_seq})\n")
    if not memories:
        print(f"{args.db}: no memory" + (" matches" if args.agent or args.user else "") + f" (last seq {last_seq})")
    for memory, long_term, forgotten, activity, clears in memories:
        _print_memory(memory, long_term, forgotten, activity, clears)
    return 0


def _utc(cut: Cut) -> str:
    return cut.until_time.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _message(m: Message, forgotten: frozenset[int] = frozenset()) -> dict:
    out = {"seq": m.seq, "role": m.role, "content": m.content, "timestamp": m.at}
    if m.seq in forgotten:
        out["forgotten"] = True  # its text was erased by a later long-term clear
    return out


def _memory_json(memory: Memory, long_term: list[dict], forgotten: frozenset[int] = frozenset(),
                 clears: list[Clear] = ()) -> dict:
    return {
        "agent_id": memory.agent_id,
        "user": memory.user,
        "window": memory.window,
        "short_term": [_message(m, forgotten) for m in memory.short_term],
        "long_term": long_term,
        "clears": [{"seq": c.seq, "timestamp": c.at, "long_term": c.long_term} for c in clears],
        "last_seq": memory.last_seq,
    }


FORGOTTEN = "⟨text erased by a later long-term clear⟩"


def _activity(recorded) -> dict:
    """A tool call or result, or an ended turn, as replay's JSON shows it (`event_fields`; `redacted`
    when a long-term clear erased its text)."""
    fields = event_fields(recorded)
    del fields["agent_id"], fields["user"]
    return fields


def _activity_line(a: dict) -> str:
    if a["type"] == "tool_called":
        what = ("tool call", f"{a['tool']}  {json.dumps(a['arguments'], ensure_ascii=False)}  [{a['call_id']}]")
    elif a["type"] == "tool_returned":
        outcome = f"error: {a['error']}" if a["error"] is not None else json.dumps(a["result"], ensure_ascii=False)
        what = ("tool result", f"{a['tool']}  {outcome}  [{a['call_id']}]")
    else:
        partial = f"partial answer: {json.dumps(a['partial'], ensure_ascii=False)}"
        what = (a["outcome"], partial if a["outcome"] != "failed" else f"{a['reason']}  ({partial})")
    return f"    #{a['seq']:<6} {a['at']}  {what[0]:<10} {_one_line(what[1], 160)}"


def _print_memory(memory: Memory, long_term: list[dict], forgotten: frozenset[int] = frozenset(),
                  activity: list[dict] = (), clears: list[Clear] = ()) -> None:
    print(f"agent {memory.agent_id}  user {memory.user}  (last seq {memory.last_seq})")
    print(f"  short-term ({len(memory.short_term)} of {memory.window}):")
    for m in memory.short_term:
        text = FORGOTTEN if m.seq in forgotten else _one_line(m.content)
        print(f"    #{m.seq:<6} {m.at}  {m.role:<9}  {text}")
    print(f"  long-term ({len(long_term)} messages):")
    for m in long_term:
        text = FORGOTTEN if m.get("forgotten") else _one_line(m["content"])
        print(f"    #{m['seq']:<6} {m['timestamp']}  {m['role']:<9}  {text}")
    if clears:
        print("  clears:")
        for c in clears:
            print(f"    #{c.seq:<6} {c.at}  {'long-term (everything)' if c.long_term else 'short-term'}")
    if activity:
        print("  turn activity (tool calls and results, cancelled and failed turns; from the log, nothing re-run):")
        for a in activity:
            print(_activity_line(a))
    print()


def _one_line(text: str, width: int = 100) -> str:
    flat = text.replace("\n", " ⏎ ")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# -- replay events ---------------------------------------------------------------------------

#: How long `replay events --follow` waits between polls of the log when nothing is new.
FOLLOW_POLL_SECONDS = 0.2
#: Events read (and printed) per read transaction.
EVENTS_BATCH = 1000


class _Stopped(BaseException):
    """SIGINT or SIGTERM arrived while following the log."""


def _raise_stopped(signum, frame) -> None:
    raise _Stopped(signum)


def _replay_events(args: argparse.Namespace) -> int:
    after = _seq_value("--after-seq", args.after_seq)
    if not args.follow:
        try:
            with EventLog.open(args.db, readonly=True) as log:
                # The events up to the last one committed now. Batch by batch, each its own short read
                # transaction: a slow reader of stdout never holds a transaction open on the log.
                last = log.last_seq()
                while batch := events_after(
                    log, after, agent_id=args.agent, user=args.user, until_seq=last, limit=EVENTS_BATCH
                ):
                    _write_events(batch)
                    after = batch[-1]["seq"]
        except BrokenPipeError:
            return _stdout_gone()
        return 0
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with EventLog.open(args.db, readonly=True) as log:
            while True:
                # Outside a snapshot each call is its own short read transaction: it sees every commit made
                # before it, and holds nothing that could keep the server's checkpoints from finishing.
                batch = events_after(log, after, agent_id=args.agent, user=args.user, limit=EVENTS_BATCH)
                if batch:
                    _write_events(batch)
                    after = batch[-1]["seq"]
                    if len(batch) == EVENTS_BATCH:
                        continue
                if _stdout_closed():
                    return _stdout_gone()
                time.sleep(FOLLOW_POLL_SECONDS)
    except _Stopped:
        return 0
    except BrokenPipeError:
        return _stdout_gone()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _write_events(batch) -> None:
    sys.stdout.write("".join(json.dumps(fields, ensure_ascii=False, separators=(",", ":")) + "\n" for fields in batch))
    sys.stdout.flush()


def _stdout_closed() -> bool:
    """Whether stdout is a pipe (or terminal) whose other end is gone, so that nothing printed can arrive."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # not a real file (e.g. captured)
        return False
    if not hasattr(select, "poll"):  # pragma: no cover - not on Linux/macOS
        return False
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR and POLLHUP are reported whatever is asked for
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _stdout_gone() -> int:
    """The reader of stdout went away: stop quietly (the interpreter's last flush must not fail either)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, ValueError, OSError):
        pass
    return 0


# -- replay verify ---------------------------------------------------------------------------


def _replay_verify(args: argparse.Namespace) -> int:
    with EventLog.open(args.db, readonly=True) as log:
        report = verify(log)
    if args.json:
        print(json.dumps(report.as_json(), ensure_ascii=False, indent=2))
    else:
        _print_report(report)
    return 0 if report.ok else 1


def _print_report(report: VerifyReport) -> None:
    span = f" (seq {report.first_seq}..{report.last_seq})" if report.events else ""
    print(f"{report.path}: {report.events} events{span}, {report.streams} streams")
    print(f"rebuild: {report.rebuild_seconds:.3f} s, {report.events_per_second:,.0f} events/s")
    for check in report.checks:
        print(f"  {'ok  ' if check.ok else 'FAIL'}  {check.name:<13} {check.summary}")
        for problem in check.problems:
            print(f"          {_one_line(problem, 160)}")
    if report.ok:
        print("verify: ok")
    else:
        failed = [c.name for c in report.checks if not c.ok]
        n = report.problem_count
        print(f"verify: FAILED, {n} problem{'s' if n != 1 else ''} ({', '.join(failed)})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
