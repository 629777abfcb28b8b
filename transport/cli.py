"""The `agentcast` command line: `serve` runs the server, `replay` rebuilds and prints memory from a log.

Argument parsing and printing only; the work is done by `transport.server` and `store`.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from importlib.metadata import PackageNotFoundError, version

import trio
from sqlite_utils.utils import sqlite3

from actors import ConfigError
from store import DEFAULT_WINDOW, EventLog, Memory, MissingEventLog, NotAnEventLog, UndecodableEvent

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

    replay = sub.add_parser(
        "replay",
        help="rebuild memory from an event log and print it",
        description="Rebuild each agent's memory of each user from the event log, read-only, and print it.",
    )
    replay.add_argument("--db", required=True, help="the event log to read (never modified)")
    replay.add_argument("--agent", help="only this agent")
    replay.add_argument("--user", help="only this user (user ids compare as text: 123 and \"123\" are one user)")
    replay.add_argument("--config", help="the server's config file, for each agent's short-term window size")
    replay.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        return _replay(args)
    except Exception as exc:
        problem = _single(exc)  # errors raised inside trio.run arrive wrapped in exception groups
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


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    config = load_config(args.config)
    settings = server_settings(config, host=args.host, port=args.port, db=args.db)
    server = Server(settings, config.agents)
    trio.run(_run_until_signalled, server)
    return 0


async def _run_until_signalled(server: Server) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.run)
            s = server.settings
            print(f"agentcast listening on ws://{s.host}:{port}{WS_PATH} (db {s.db}; agents: {', '.join(server.agents)})",
                  flush=True)
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


# -- replay ----------------------------------------------------------------------------------


def _replay(args: argparse.Namespace) -> int:
    windows = {spec.agent_id: spec.short_term_window for spec in load_config(args.config).agents} if args.config else {}
    with EventLog.open(args.db, readonly=True) as log, log.snapshot():
        memories = []
        for agent_id, user in log.streams():
            if (args.agent is not None and agent_id != args.agent) or (args.user is not None and user != args.user):
                continue
            memory = log.memory(agent_id, user, window=windows.get(agent_id, DEFAULT_WINDOW))
            long_term = [
                _message(r.seq, r.event.role, r.event.content, r.event.at)
                for r in log.read(agent_id=agent_id, user=user, after_seq=memory.long_term_since)
                if hasattr(r.event, "content")
            ]
            memories.append((memory, long_term))
        last_seq = log.last_seq()
    if args.json:
        print(json.dumps({"db": args.db, "last_seq": last_seq, "memories": [_memory_json(m, lt) for m, lt in memories]},
                         ensure_ascii=False, indent=2))
        return 0
    if not memories:
        print(f"{args.db}: no memory" + (" matches" if args.agent or args.user else "") + f" (last seq {last_seq})")
    for memory, long_term in memories:
        _print_memory(memory, long_term)
    return 0


def _message(seq: int, role: str, content: str, at: str) -> dict:
    return {"seq": seq, "role": role, "content": content, "timestamp": at}


def _memory_json(memory: Memory, long_term: list[dict]) -> dict:
    return {
        "agent_id": memory.agent_id,
        "user": memory.user,
        "window": memory.window,
        "short_term": [_message(m.seq, m.role, m.content, m.at) for m in memory.short_term],
        "long_term": long_term,
        "clears": [{"seq": c.seq, "timestamp": c.at, "long_term": c.long_term} for c in memory.clears],
        "last_seq": memory.last_seq,
    }


def _print_memory(memory: Memory, long_term: list[dict]) -> None:
    print(f"agent {memory.agent_id}  user {memory.user}  (last seq {memory.last_seq})")
    print(f"  short-term ({len(memory.short_term)} of {memory.window}):")
    for m in memory.short_term:
        print(f"    #{m.seq:<6} {m.at}  {m.role:<9}  {_one_line(m.content)}")
    print(f"  long-term ({len(long_term)} messages):")
    for m in long_term:
        print(f"    #{m['seq']:<6} {m['timestamp']}  {m['role']:<9}  {_one_line(m['content'])}")
    if memory.clears:
        print("  clears:")
        for c in memory.clears:
            print(f"    #{c.seq:<6} {c.at}  {'long-term (everything)' if c.long_term else 'short-term'}")
    print()


def _one_line(text: str, width: int = 100) -> str:
    flat = text.replace("\n", " ⏎ ")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
