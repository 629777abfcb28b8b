"""The `agentcast` command line: `serve` runs the server; `replay` rebuilds and prints memory from a log
(now or at any earlier point), `replay events` prints or follows the raw events, `replay verify` checks a log;
`backup` copies a (live) log; `embed` embeds a log's messages for semantic search (a resumable backfill);
`token` mints an authentication token; `chat` is a terminal chat client (in `agentcast.transport.client._chat`);
`config check` validates a config file and prints the effective settings, `config example` prints the commented
example.

One vocabulary: a flag that several commands take (--db, --config, --agent, --user, --json, --auth-secret-env,
--log-level) is defined once in `FLAGS`, and every command is an entry of `COMMANDS` naming the ones it takes.
A new command is a function (parsed arguments -> exit status) and an entry there.

Argument parsing and printing only; the work is done by `store` (the replay and verify reports: printed here),
`transport._config` and `transport.server`. Only `serve` and `embed` load trio, only `chat` the client
side, and only a command that reads a config file the actors (for its agents): `replay` and `backup` read a
log with the store alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import re
import select
import signal
import sys
import time
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from sqlite_utils.utils import sqlite3

from ..store import (
    Cut,
    EventLog,
    MissingEventLog,
    NotAnEventLog,
    ReplayReport,
    StreamReplay,
    UndecodableEvent,
    VerifyReport,
    events_after,
    parse_instant,
    replay,
    verify,
)

if TYPE_CHECKING:
    from ._config import Config
    from .server import Server

logger = logging.getLogger("agentcast")


def _version() -> str:
    try:
        return version("agentcast")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


# -- one vocabulary of flags -------------------------------------------------------------------

#: The event log every command uses when neither --db nor the config's server.db names one.
DEFAULT_DB = "agentcast.db"

#: The environment variable `agentcast token` reads the secret from when nothing names one.
DEFAULT_SECRET_ENV = "AGENTCAST_AUTH_SECRET"

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclasses.dataclass(frozen=True)
class Flag:
    """A flag of the common vocabulary: spelled, shown and parsed the same in every command that takes it."""

    names: tuple[str, ...]
    #: argparse keyword arguments; `help` is the default meaning (a command may say more, or set a default).
    options: Mapping[str, Any]


#: The flags that mean the same thing in every command (a command picks the ones it needs; all take --log-level).
FLAGS: dict[str, Flag] = {
    "config": Flag(("--config",), {
        "metavar": "FILE",
        "help": "the TOML config file: [server] settings and [agents.ID] tables "
                "(`agentcast config example` prints one with every setting)",
    }),
    "db": Flag(("--db",), {
        "metavar": "FILE",
        "help": f"the event log, a SQLite file (default: the config's server.db, else {DEFAULT_DB})",
    }),
    "agent": Flag(("--agent",), {"metavar": "ID", "help": "only this agent"}),
    "user": Flag(("--user",), {
        "metavar": "ID",
        "help": "only this user (user ids compare as text: 123 and \"123\" are one user)",
    }),
    "json": Flag(("--json",), {"action": "store_true", "help": "print JSON instead of text"}),
    "auth_secret_env": Flag(("--auth-secret-env",), {
        "metavar": "NAME",
        "help": "the environment variable holding the token secret (at least 32 bytes)",
    }),
    "log_level": Flag(("--log-level",), {
        "metavar": "LEVEL", "type": str.lower, "choices": LOG_LEVELS, "default": "info",
        "help": "what is logged to stderr: debug, info, warning or error (any case; default info)",
    }),
}


@dataclasses.dataclass(frozen=True)
class Command:
    """An `agentcast` command: its words ("replay events"), what `agentcast --help` and its own --help say, the
    common flags it takes (with what differs here: help, default, required), its own flags, and what runs it."""

    name: str
    help: str
    description: str
    run: Callable[[argparse.Namespace], int]
    flags: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    own_flags: Callable[[argparse.ArgumentParser], None] | None = None
    epilog: str | None = None


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs keep their line breaks; option help is wrapped."""


def command_parser(command: Command) -> argparse.ArgumentParser:
    """The parser of one command: `prog` is its whole name (`agentcast replay events`), its own flags first,
    then the common ones it takes, then --log-level."""
    parser = argparse.ArgumentParser(
        prog=f"agentcast {command.name}", description=command.description, epilog=command.epilog,
        formatter_class=_HelpFormatter,
    )
    if command.own_flags is not None:
        command.own_flags(parser)
    common = parser.add_argument_group("common options (the same meaning in every agentcast command)")
    for name, here in {**command.flags, "log_level": {}}.items():
        flag = FLAGS[name]
        common.add_argument(*flag.names, **{**flag.options, **here})
    return parser


def _top_help() -> str:
    width = max(len(name) for name in COMMANDS) + 2
    lines = [
        "usage: agentcast COMMAND [options]",
        "",
        "A real-time WebSocket server for AI agents.",
        "",
        "commands:",
        *(f"  {name:<{width}}{command.help}" for name, command in COMMANDS.items()),
        "",
        "`agentcast COMMAND --help` shows a command's options. A flag means the same in every command that",
        f"takes it: --db FILE (default {DEFAULT_DB}), --config FILE, --agent ID, --user ID, --json,",
        "--auth-secret-env NAME, --log-level LEVEL (every command). `agentcast --version` prints the version.",
    ]
    return "\n".join(lines)


def _group_help(group: str) -> str:
    names = [name for name in COMMANDS if name.startswith(group + " ")]
    width = max(len(name) for name in names) + 2
    return "\n".join([f"usage: agentcast {group} {{{','.join(n.split()[1] for n in names)}}} [options]", "",
                      "commands:", *(f"  {n:<{width}}{COMMANDS[n].help}" for n in names), "",
                      f"`agentcast {group} COMMAND --help` shows a command's options."])


def _usage_error(message: str) -> int:
    print(f"agentcast: error: {message}", file=sys.stderr)
    return 2


def _without_command(argv: list[str]) -> int:
    """`agentcast` with no command, or one that is not a command: help, the version, or a usage error."""
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0
    if argv[0] == "--version":
        print(f"agentcast {_version()}")
        return 0
    commands = ", ".join(dict.fromkeys(name.split()[0] for name in COMMANDS))
    groups = {name.split()[0] for name in COMMANDS if " " in name}
    if argv[0] in groups:
        if len(argv) == 1 or argv[1] in ("-h", "--help"):
            print(_group_help(argv[0]))
            return 0
        names = ", ".join(name for name in COMMANDS if name.startswith(argv[0] + " "))
        return _usage_error(f"unknown command 'agentcast {argv[0]} {argv[1]}' (choose from: {names})")
    if argv[0].startswith("-"):
        return _usage_error(f"the command comes first: agentcast COMMAND [options] (commands: {commands}; "
                            "`agentcast --help` says more)")
    return _usage_error(f"unknown command {argv[0]!r} (commands: {commands}; `agentcast --help` says more)")


def _find_command(argv: list[str]) -> tuple[Command | None, list[str]]:
    """The command `argv` starts with (two words before one: `replay events` before `replay`) and its arguments."""
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in COMMANDS:
        return COMMANDS[f"{argv[0]} {argv[1]}"], argv[2:]
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]], argv[1:]
    return None, argv


class BadArgument(Exception):
    """A command-line value that parses but means nothing (a negative seq, an unreadable time)."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command, rest = _find_command(argv)
    try:
        if command is None:
            return _without_command(argv)
        args = command_parser(command).parse_args(rest)  # --help prints here
    except BrokenPipeError:
        return _stdout_gone()  # e.g. `agentcast --help | head -3`
    args.command = command.name
    setup_logging(args.log_level)
    try:
        return command.run(args)
    except Exception as exc:
        problem = _single(exc)  # errors raised inside trio.run arrive wrapped in exception groups
        if isinstance(problem, BrokenPipeError) and args.command != "serve":
            return _stdout_gone()  # e.g. `agentcast replay ... | head`: the reader has all it wanted
        if isinstance(problem, BadArgument):
            print(f"agentcast: error: {problem}", file=sys.stderr)
            return 2
        if isinstance(problem, (NotAnEventLog, MissingEventLog, UndecodableEvent)) or _is_config_error(problem):
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


def _is_config_error(exc: BaseException) -> bool:
    """True for the actors' `ConfigError` (looked up only if the actors were loaded: nothing else raises it)."""
    config = sys.modules.get("agentcast.actors._config")
    return config is not None and isinstance(exc, config.ConfigError)


def _db(args: argparse.Namespace, config: Config | None = None) -> str:
    """The event log a command uses: --db, else the config's server.db (`config`, else --config's), else agentcast.db."""
    if args.db is not None:
        return args.db
    if config is None and getattr(args, "config", None) is not None:
        from ._config import load_config

        config = load_config(args.config)
    if config is None:
        return DEFAULT_DB
    from ._config import server_settings

    return server_settings(config).db


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
    import trio

    from ._auth import exposure_warning
    from ._config import load_config, server_settings
    from .server import Server

    config = load_config(args.config)
    settings = server_settings(
        config, host=args.host, port=args.port, db=args.db, auth_secret_env=args.auth_secret_env,
        allow_origins=args.allow_origins, certfile=args.certfile, keyfile=args.keyfile,
    )
    server = Server(settings, config.agents)  # reads the secret: unset or short is a ConfigError here
    warning = exposure_warning(settings.host, server.auth is not None)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    # What is loaded by now (modules, the configuration) lives as long as the process: frozen out of the
    # garbage collector's scans, so that a full collection, which holds up the event loop, goes over what
    # serving makes and not over everything imported too.
    gc.freeze()
    trio.run(_run_until_signalled, server)
    return 0


async def _run_until_signalled(server: Server) -> None:
    import trio

    from .server import WS_PATH

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.run)
            s = server.settings
            print(f"agentcast listening on {server.scheme}://{s.host}:{port}{WS_PATH} "
                  f"(db {s.db}; agents: {', '.join(server.agents or {})})", flush=True)
            web = "https" if server.scheme == "wss" else "http"
            print(f"chat page: {web}://{s.host}:{port}/  health: /healthz  metrics: /metrics", flush=True)
            nursery.start_soon(_handle_signals, signals, server, nursery.cancel_scope)
            await server.stopped.wait()
            nursery.cancel_scope.cancel()


async def _handle_signals(signals, server: Server, scope) -> None:
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
    from ._auth import MAX_USER_ID_BYTES, valid_user_id

    user: int | str = int(text) if not as_string and _INTEGER.fullmatch(text) else text
    if not valid_user_id(user):
        raise BadArgument(f"--user needs an integer of at most {MAX_USER_ID_BYTES} digits (a minus sign counts as one) "
                          f"or a non-empty string of at most {MAX_USER_ID_BYTES} bytes (UTF-8)")
    return user


def _token(args: argparse.Namespace) -> int:
    from ._auth import Authenticator, parse_ttl, secret_from_env
    from ._config import load_config, server_settings

    user = token_user(args.user, as_string=args.user_string)
    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as exc:
        raise BadArgument(f"--ttl: {exc}") from None
    name = args.auth_secret_env
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
    config = None
    if args.config:
        from ._config import load_config

        config = load_config(args.config)
    windows = {spec.agent_id: spec.short_term_window for spec in config.agents} if config else {}
    args.db = _db(args, config)
    with EventLog.open(args.db, readonly=True) as log:
        report = replay(log, cut=cut, windows=windows, agent_id=args.agent, user=args.user,
                        until_time_text=args.until_time)
    if args.json:
        print(json.dumps(report.as_json(), ensure_ascii=False, indent=2))
        return 0
    _print_replay(report, filtered=bool(args.agent or args.user))
    return 0


#: How replay shows a message whose text a later long-term clear erased.
FORGOTTEN = "⟨text erased by a later long-term clear⟩"


def _print_replay(report: ReplayReport, *, filtered: bool) -> None:
    cut = report.cut
    if not cut.everything:
        point = f"seq {cut.until_seq}" if cut.until_seq is not None else f"{report.until_time_text} ({_utc(cut)})"
        print(f"{report.path} as of {point}: last seq then {report.last_seq} (the log's last seq is now "
              f"{report.log_last_seq})\n")
    if not report.streams:
        print(f"{report.path}: no memory" + (" matches" if filtered else "") + f" (last seq {report.last_seq})")
    for stream in report.streams:
        _print_stream(stream)


def _utc(cut: Cut) -> str:
    assert cut.until_time is not None
    return cut.until_time.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _print_stream(stream: StreamReplay) -> None:
    memory = stream.memory
    print(f"agent {memory.agent_id}  user {memory.user}  (last seq {memory.last_seq})")
    print(f"  short-term ({len(memory.short_term)} of {memory.window}):")
    for m in memory.short_term:
        text = FORGOTTEN if m.seq in stream.forgotten else _one_line(m.content)
        print(f"    #{m.seq:<6} {m.at}  {m.role:<9}  {text}")
    print(f"  long-term ({len(stream.long_term)} messages):")
    for m in stream.long_term:
        text = FORGOTTEN if m.seq in stream.forgotten else _one_line(m.content)
        print(f"    #{m.seq:<6} {m.at}  {m.role:<9}  {text}")
    if stream.clears:
        print("  clears:")
        for c in stream.clears:
            print(f"    #{c.seq:<6} {c.at}  {'long-term (everything)' if c.long_term else 'short-term'}")
    if stream.activity:
        print("  turn activity (tool calls and results, cancelled and failed turns; from the log, nothing re-run):")
        for seq, at, label, text in stream.activity_lines():
            print(f"    #{seq:<6} {at}  {label:<10} {_one_line(text, 160)}")
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
    args.db = _db(args)
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
    args.db = _db(args)
    with EventLog.open(args.db, readonly=True) as log:
        report = verify(log)
    if args.json:
        print(json.dumps(report.as_json(), ensure_ascii=False, indent=2))
    else:
        _print_report(report)
    return 0 if report.ok else 1


def _count(n: int, noun: str) -> str:
    """`n` and the noun, plural unless `n` is 1: "1 stream", "0 streams", "2,000 events"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _print_report(report: VerifyReport) -> None:
    span = f" (seq {report.first_seq}..{report.last_seq})" if report.events else ""
    print(f"{report.path}: {_count(report.events, 'event')}{span}, {_count(report.streams, 'stream')}")
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


# -- config check, config example -------------------------------------------------------------


def _config_check(args: argparse.Namespace) -> int:
    from ._config import effective_settings, load_config, search_of

    config = load_config(args.config)  # a file that is not valid is a ConfigError: one line, exit 1
    effective = effective_settings(config)
    if args.json:
        print(json.dumps({"config": args.config, **effective}, ensure_ascii=False, indent=2))
        return 0
    source = f"{args.config} is valid" if args.config else "no --config: the built-in defaults"
    print(f"# {source}. The effective settings (defaults + file; flags of `agentcast serve` override [server]):")
    print("\n[server]")
    for key, value in effective["server"].items():
        note = _secret_env_note(value) if key == "auth_secret_env" and value else ""
        print(_toml_line(key, value, note))
    searches = {spec.agent_id: search_of(spec) for spec in config.agents}
    for agent_id, agent in effective["agents"].items():
        print(f"\n[agents.{_toml_key(agent_id)}]")
        print(f"# search: {searches[agent_id]}")
        for key, value in agent.items():
            if key != "brain":
                print(_toml_line(key, value))
        for key, value in agent["brain"].items():
            note = _env_note(value) if key == "api_key_env" and value else ""
            print(_toml_line(f"brain.{_toml_key(key)}", value, note))
    return 0


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


#: What a setting that is not set (None) means, where saying so helps.
_UNSET_MEANS = {
    "auth_secret_env": "authentication off", "certfile": "plain ws://, no TLS", "keyfile": "in certfile, if any",
    "brain.api_key_env": "no key is sent", "brain.temperature": "the provider's", "brain.max_tokens": "the provider's",
}


def _toml_line(key: str, value: object, note: str = "") -> str:
    """`key = value` in TOML (JSON's strings, numbers, booleans and arrays are TOML's); a value that is not set
    (None) as a comment."""
    if value is None:
        means = _UNSET_MEANS.get(key)
        return f"# {key}: not set" + (f" ({means})" if means else "")
    return f"{key} = {_toml_value(value)}" + (f"  # {note}" if note else "")


def _toml_value(value: object) -> str:
    """`value` in TOML: a table inline (`{ key = value, ... }`); strings, numbers, booleans and arrays as in JSON."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None) + " }"
    return json.dumps(value, ensure_ascii=False)


def _env_note(name: str) -> str:
    """Whether environment variable `name` is set here (its value is never read out)."""
    return "set in this environment" if os.environ.get(name) else "not set in this environment"


def _secret_env_note(name: str) -> str:
    """Whether the auth secret in `name` would be accepted here (the message never holds the value)."""
    from ..actors import ConfigError
    from ._auth import secret_from_env

    try:
        secret_from_env(name)
    except ConfigError as exc:
        return f"in this environment: {str(exc).removeprefix('auth secret: ')}"
    return "set in this environment (value not shown)"


def _config_example(args: argparse.Namespace) -> int:
    from ._config import example_config

    sys.stdout.write(example_config())
    sys.stdout.flush()
    return 0


# -- the commands ------------------------------------------------------------------------------


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default: the config's server.host, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: the config's, else 5050; 0 picks a free one)")
    parser.add_argument(
        "--allow-origin", metavar="URL", action="append", dest="allow_origins",
        help="a browser Origin that may connect, e.g. https://chat.example.com (repeatable; others get HTTP 403; "
        "default: every origin)",
    )
    parser.add_argument("--certfile", metavar="FILE", help="serve wss:// (TLS) with this PEM certificate chain")
    parser.add_argument("--keyfile", metavar="FILE", help="the certificate's private key (PEM), unless --certfile holds it")


def _token_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user-string", action="store_true", help="make the user id a string even if it is all digits")
    parser.add_argument("--ttl", default="1h", help="how long the token is valid: 30s, 15m, 1h, 7d (default 1h)")
    parser.add_argument("--secret-env", dest="auth_secret_env", help=argparse.SUPPRESS)  # the old spelling


def _chat_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="ws://127.0.0.1:5050/ws", help="the server's WebSocket endpoint, ending in /ws "
                        "(default ws://127.0.0.1:5050/ws)")
    parser.add_argument("--token-env", metavar="NAME", help="authenticate with the token in environment variable NAME "
                        "(needed when the server has authentication on; `agentcast token` makes one)")


def _replay_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--until-seq", metavar="N", help="memory as it was after event N (events with seq <= N)")
    parser.add_argument(
        "--until-time", metavar="ISO",
        help="memory as of an ISO 8601 time, e.g. 2026-11-29T02:21:31Z or ...+01:00 (events whose time is <= it; "
        "no offset means UTC)",
    )


def _replay_events_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--after-seq", metavar="N", default="0", help="only events with seq > N (default 0: all)")
    parser.add_argument(
        "--follow", action="store_true",
        help="keep printing new events as they are committed, until SIGINT/SIGTERM (or stdout is closed)",
    )


def _chat(args: argparse.Namespace) -> int:
    from .client._chat import run_chat  # the client side: loaded only for this command

    return run_chat(args)


# -- backup ----------------------------------------------------------------------------------

#: `backup` prints its progress (to stderr) for a log of at least this many bytes, every 10%.
BACKUP_PROGRESS_FROM_BYTES = 64 * 1024 * 1024


def _backup_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", required=True, metavar="FILE", help="the copy to write (a new file)")
    parser.add_argument("--force", action="store_true", help="replace --to if it exists")


def _backup(args: argparse.Namespace) -> int:
    from ..store import BackupError, TargetExists, backup

    shown = [0]  # the last tenth of the copy reported

    def progress(copied: int, total: int) -> None:
        tenth = copied * 10 // total if total else 10
        if total >= BACKUP_PROGRESS_FROM_BYTES and tenth > shown[0]:
            shown[0] = tenth
            print(f"agentcast backup: {tenth * 10}% ({copied / 2**20:.1f} of {total / 2**20:.1f} MiB)",
                  file=sys.stderr, flush=True)

    try:
        report = backup(_db(args), args.to, replace=args.force, progress=progress)
    except TargetExists as exc:
        print(f"agentcast: error: {exc}; give --force to replace it", file=sys.stderr)
        return 1
    except BackupError as exc:
        print(f"agentcast: error: {exc}", file=sys.stderr)
        return 1
    print(f"{report.source} -> {report.target}: {report.events:,} events (last seq {report.last_seq}), "
          f"{report.bytes:,} bytes, in {report.seconds:.1f} s; the copy checked: integrity ok", flush=True)
    return 0


# -- embed -------------------------------------------------------------------------------------

#: Seconds between two progress lines of `agentcast embed` (and one when it is done).
EMBED_PROGRESS_EVERY = 2.0


def _embed_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="messages embedded and written at a time (default 32): a kill loses at most one batch")
    parser.add_argument("--progress-every", type=float, default=EMBED_PROGRESS_EVERY, metavar="SECONDS",
                        help=f"seconds between progress lines on stderr (default {EMBED_PROGRESS_EVERY:g})")


def _embed(args: argparse.Namespace) -> int:
    from ..actors import ConfigError
    from ._config import load_config

    config = load_config(args.config)
    db = _db(args, config)
    if not 1 <= args.batch_size <= 4096:
        raise BadArgument(f"--batch-size must be an integer from 1 to 4096, not {args.batch_size}")
    if not 0 < args.progress_every < 86_400:
        raise BadArgument(f"--progress-every must be a number of seconds above 0, not {args.progress_every}")
    specs = [spec for spec in config.agents if args.agent is None or spec.agent_id == args.agent]
    if args.agent is not None and not specs:
        raise BadArgument(f"no agent {args.agent!r} in the config ({', '.join(s.agent_id for s in config.agents)})")
    groups: dict = {}
    for spec in specs:
        if spec.embedder is not None:
            groups.setdefault(spec.embedder, []).append(spec.agent_id)
    if not groups:
        raise ConfigError("no agent has an embedder: set [server] embedder (or an agent's) in the config given with "
                          "--config; `agentcast embed` embeds the log with the embedders the server would use")
    EventLog.open(db, readonly=True).close()  # an agentcast log that exists (never created here)
    import trio

    return trio.run(_embed_log, db, groups, args.batch_size, args.progress_every)


#: How many progress intervals in a row the embedder may fail before `agentcast embed` gives up (exit 1).
EMBED_FAILING_INTERVALS = 3


async def _embed_log(db: str, groups: dict, batch_size: int, every: float) -> int:
    """Embed the log at `db` for each group of agents (by embedder), until every message is; progress on stderr.
    0 once done; 1 if an embedder cannot be made or keeps failing (what was embedded by then is kept)."""
    import trio

    from ..actors import EmbedderUnavailable, EmbeddingWorker, Journal

    code = 0
    log = EventLog.open(db)
    try:
        journal = Journal(log, lambda: EventLog.open(db, readonly=True))
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            for choice, agent_ids in groups.items():
                why = choice.missing()
                if why is not None:
                    print(f"agentcast embed: {', '.join(agent_ids)}: skipped: {why}", file=sys.stderr, flush=True)
                    continue
                try:
                    embedder = await trio.to_thread.run_sync(choice.make)
                except (EmbedderUnavailable, ValueError) as exc:
                    print(f"agentcast: error: {', '.join(agent_ids)}: embedder: {exc}", file=sys.stderr, flush=True)
                    code = 1
                    break
                label = getattr(embedder, "describe", lambda: embedder.name)()
                worker = EmbeddingWorker(embedder, agent_ids, journal, batch_size=batch_size, label=label)
                if not await _embed_with(worker, nursery, every):
                    code = 1
                    break
            nursery.cancel_scope.cancel()  # the journal's task
    finally:
        log.close()
    return code


async def _embed_with(worker, nursery, every: float) -> bool:
    """Run `worker` until it has embedded everything (True), printing its progress every `every` seconds; False
    (and an error line) once its embedder has failed for EMBED_FAILING_INTERVALS progress lines in a row."""
    import trio

    agents = ", ".join(worker.agent_ids)
    scope = trio.CancelScope()

    async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await worker.run(task_status=task_status)

    started = time.monotonic()
    await nursery.start(run)
    total = None
    failing_for = 0
    while True:
        with trio.move_on_after(every):
            await worker.caught_up()
            break
        if total is None and worker.backlog:
            total = worker.backlog + worker.embedded
        rate = worker.embedded / max(time.monotonic() - started, 1e-9)
        left = f", about {_duration(worker.backlog / rate)} left" if rate > 0 and worker.backlog else ""
        failing = f"; failing: {worker.failing}" if worker.failing else ""
        print(f"agentcast embed: {agents} ({worker.label}): {worker.embedded:,} embedded"
              + (f" of {total:,} ({100 * worker.embedded / total:.1f}%)" if total else "")
              + f", {rate:,.0f} messages/s{left}{failing}", file=sys.stderr, flush=True)
        failing_for = failing_for + 1 if worker.failing else 0
        if failing_for >= EMBED_FAILING_INTERVALS:
            scope.cancel()
            print(f"agentcast: error: {agents} ({worker.label}): the embedder keeps failing ({worker.failing}); "
                  f"{worker.embedded:,} messages were embedded and kept: run agentcast embed again to go on",
                  file=sys.stderr, flush=True)
            return False
    scope.cancel()
    seconds = time.monotonic() - started
    print(f"agentcast embed: {agents} ({worker.label}): done, {worker.embedded:,} messages embedded in {seconds:.1f} s; "
          f"their messages have their vectors up to seq {worker.cursor:,}", file=sys.stderr, flush=True)
    return True


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


_READ_ONLY_DB = {"help": f"the event log to read, never modified (default: the config's server.db, else {DEFAULT_DB})"}
_SERVER_CONFIG = {"help": "the server's config file (for server.db, and each agent's short-term window size)"}

#: Every command, in the order `agentcast --help` lists them. A new one is an entry here (and its function).
COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command(
        "serve", "run the server", "Run the agentcast server until SIGINT or SIGTERM.", _serve,
        flags={"config": {}, "db": {"help": "the event log, a SQLite file, created if absent (default: the config's "
                                            f"server.db, else {DEFAULT_DB})"},
               "auth_secret_env": {"help": "turn token authentication on, with the secret (at least 32 bytes) in "
                                           "environment variable NAME (default: the config's server.auth_secret_env; "
                                           "none: authentication off)"}},
        own_flags=_serve_flags,
    ),
    Command(
        "chat", "chat with an agent in the terminal",
        "An interactive chat with a running server: answers and tool calls stream as they arrive; Ctrl-C during an\n"
        "answer cancels it. Commands: /agents, /search QUERY, /clear, /clear-all, /agent NAME, /user ID, /help, /quit.\n"
        "Reads lines from stdin (in a terminal with line editing and history); reconnects if the server goes away.",
        _chat,
        flags={"agent": {"default": "my_agent", "help": "the agent to talk to first (default my_agent)"},
               "user": {"help": "who you are: 123 is the JSON number 123, anything else a string (default: a private "
                                "user of this connection)"}},
        own_flags=_chat_flags,
    ),
    Command(
        "token", "mint an authentication token",
        "Print a token for --user, valid for --ttl, signed with the secret in an environment variable\n"
        "(the one the server's --auth-secret-env names). The token goes to stdout, alone.",
        _token,
        flags={"user": {"required": True, "help": "the user id: 123 is the JSON number 123, anything else a string"},
               "auth_secret_env": {"help": "the environment variable holding the secret, as for serve (default: the "
                                           f"config's server.auth_secret_env, else {DEFAULT_SECRET_ENV})"},
               "config": {"help": "the server's config file, for its server.auth_secret_env"}},
        own_flags=_token_flags,
    ),
    Command(
        "replay", "rebuild memory from an event log and print it",
        "Rebuild each agent's memory of each user from the event log, read-only, and print it: as it is now, or as\n"
        "it was at --until-seq N or --until-time ISO.",
        _replay,
        flags={"db": _READ_ONLY_DB, "config": _SERVER_CONFIG, "agent": {}, "user": {}, "json": {}},
        own_flags=_replay_flags,
        epilog="Also: `agentcast replay events` prints (or follows) the raw events, `agentcast replay verify` checks\n"
        "a log. All three only read the log; a server may be writing to it.",
    ),
    Command(
        "replay events", "print or follow the raw events of a log",
        "Print the log's events in seq order, one JSON object per line: seq, type, agent_id, user, at and the\n"
        "event's own fields (content, long_term, request_id). Read-only; a server may be writing the log.",
        _replay_events,
        flags={"db": _READ_ONLY_DB, "config": _SERVER_CONFIG, "agent": {"help": "only this agent's events"},
               "user": {"help": "only this user's events (123 and \"123\" are one user)"}},
        own_flags=_replay_events_flags,
    ),
    Command(
        "replay verify", "check a log",
        "Check the log: seqs 1..last without holes, every event type known and payload decodable, the memory\n"
        "rebuilt twice the same, the search index agreeing with it, SQLite's integrity_check. Exit 0 when all is\n"
        "well, 1 with a report of what is wrong. Read-only.",
        _replay_verify,
        flags={"db": _READ_ONLY_DB, "config": _SERVER_CONFIG, "json": {"help": "print the report as JSON"}},
    ),
    Command(
        "backup", "copy a log, also while a server writes to it",
        "Copy the event log --db to --to as of one moment, through SQLite's online backup API: consistent while a\n"
        "server writes to the log, without stopping it (unlike cp, see docs/operations.md). The copy is written\n"
        "beside --to, checked (integrity, agentcast log, the same events) and renamed into place only when complete.",
        _backup,
        flags={"db": {"help": f"the event log to copy (default: the config's server.db, else {DEFAULT_DB})"},
               "config": {"help": "the server's config file (for server.db)"}},
        own_flags=_backup_flags,
    ),
    Command(
        "embed", "embed a log's messages for semantic search (backfill)",
        "Embed every message of the event log that has no vector yet, with the embedders the config gives the\n"
        "agents (the ones `agentcast serve` would use), and stop. Resumable: each batch is written with the cursor\n"
        "it moves, so a run that is stopped or killed goes on where it stopped when run again. A server embeds\n"
        "what it logs by itself (and an old log from where it stands, in the background): this command does a\n"
        "backfill ahead of time. Safe while a server writes the log: both write through SQLite's lock and each\n"
        "batch is fenced by the cursor, so no message is stored twice. Progress goes to stderr.",
        _embed,
        flags={"config": {"help": "the server's config file (its embedders, and server.db)"},
               "db": {"help": f"the event log to embed, which must exist (default: the config's server.db, else "
                              f"{DEFAULT_DB})"},
               "agent": {"help": "only this agent's messages"}},
        own_flags=_embed_flags,
    ),
    Command(
        "config check", "validate a config file and print the effective settings",
        "Validate a config file as `agentcast serve --config` would, then print every setting it gives (defaults\n"
        "included) as TOML, secrets masked: environment variables are shown by name, never their values.\n"
        "Exit 0 if it is valid, 1 with what is wrong. It calls no model and opens no database.",
        _config_check,
        flags={"config": {"help": "the file to check (default: none, i.e. the built-in defaults serve uses without one)"},
               "json": {"help": "print the effective settings as JSON"}},
    ),
    Command(
        "config example", "print a commented example config with every setting",
        "Print a commented example config: every [server] and agent setting with its default, and agents with\n"
        "the openai brain for OpenAI, Ollama and vLLM. `agentcast config example > agentcast.toml` to start one.",
        _config_example,
    ),
)}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
