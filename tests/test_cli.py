"""Process-level tests of the `agentcast` command: the real server in a subprocess, on loopback, with a SQLite file.

Durability across kill -9, graceful shutdown on SIGTERM/SIGINT, restarts, refused files and configs, replay and logs.
"""
from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import socket
import time
from pathlib import Path

import pytest
import websockets

from support.process import (
    FOREIGN_FILES,
    FRAME_TIMEOUT,
    SQLITE_HEADER,
    START_TIMEOUT,
    DidNotStart,
    _make_foreign_sqlite,
    _make_not_sqlite,
    assert_one_line_error,
    cli,
    connect,
    replay_json,
    replay_json_many,
    snapshot,
    start_serve,
    unique,
    write_config,
)

#: Every test here runs a real process (see support/process.py).
pytestmark = pytest.mark.process


# ---------------------------------------------------------------------------------------------
# Helpers of this file (the shared ones, for the real `agentcast` process, are in support/process.py)
# ---------------------------------------------------------------------------------------------


def contents(messages: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in messages]


def only_memory(dump: dict, agent_id: str, user: str) -> dict:
    found = [m for m in dump["memories"] if (m["agent_id"], m["user"]) == (agent_id, user)]
    assert len(found) == 1, dump
    return found[0]


# ---------------------------------------------------------------------------------------------
# 1. kill -9 durability
# ---------------------------------------------------------------------------------------------


def test_serve_names_the_chat_page_and_it_answers(tmp_path, serve):
    import urllib.request

    server = serve(tmp_path / "agentcast.db")
    fd = server.proc.stdout.fileno()
    deadline = time.monotonic() + START_TIMEOUT
    out = b""
    while b"chat page:" not in out or not out.endswith(b"\n"):
        assert time.monotonic() < deadline, f"no 'chat page' line on stdout: {out!r}"
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            out += os.read(fd, 4096)
    line = out.decode().splitlines()[-1]
    url = re.match(r"^chat page: (http://127\.0\.0\.1:\d+/) ", line)[1]
    assert url == f"http://127.0.0.1:{server.port}/"
    with urllib.request.urlopen(url, timeout=FRAME_TIMEOUT) as page:
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
        assert b"agentcast" in page.read()
    assert server.stop() == 0


def test_sigkill_after_agent_done_loses_nothing(tmp_path, serve):
    db = tmp_path / "agentcast.db"
    message, token = unique("please remember")
    server = serve(db)

    async def before_crash() -> dict:
        async with connect(server.url) as c:
            await c.set_user(7)
            return await c.chat(message)

    response = asyncio.run(before_crash())
    server.signal(signal.SIGKILL)
    assert server.wait() == -signal.SIGKILL

    # Read-only replay of the crashed log (its WAL not checkpointed) already has the turn, and changes nothing.
    wal = Path(f"{db}-wal")
    before = db.read_bytes(), wal.read_bytes()
    crashed = only_memory(replay_json(db), "my_agent", "7")
    assert contents(crashed["long_term"]) == [("user", message), ("assistant", response["message"])]
    assert (db.read_bytes(), wal.read_bytes()) == before

    restarted = serve(db)

    async def after_crash() -> tuple[list[dict], list[dict]]:
        async with connect(restarted.url) as c:
            await c.set_user(7)
            mine = await c.search(token)
            await c.set_user(8)
            return mine, await c.search(token)

    mine, someone_elses = asyncio.run(after_crash())
    assert ("user", message) in [(r["role"], r["content"]) for r in mine], mine
    assert someone_elses == []
    assert restarted.stop() == 0

    dump = replay_json(db)
    memory = only_memory(dump, "my_agent", "7")
    expected = [("user", message), ("assistant", response["message"])]
    assert contents(memory["short_term"]) == expected
    assert contents(memory["long_term"]) == expected
    assert memory["short_term"][1]["seq"] == memory["long_term"][1]["seq"] == response["seq"]
    assert dump["last_seq"] == response["seq"]


# ---------------------------------------------------------------------------------------------
# 2. graceful shutdown
# ---------------------------------------------------------------------------------------------

SLOW_AGENT = """
[agents.my_agent]
brain = { kind = "echo", delay = 0.15, chunks = 4 }
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_running_turn_then_closes_with_1001_and_exits_0(tmp_path, serve, sig):
    db = tmp_path / "agentcast.db"
    server = serve(db, "--config", write_config(tmp_path / "slow.toml", SLOW_AGENT))
    message, _ = unique("a turn in flight")

    async def scenario():
        async with connect(server.url) as c:
            await c.set_user("u1")
            await c.send({"type": "chat", "agent_id": "my_agent", "message": message})
            assert (await c.recv())["type"] == "agent_thinking"
            server.signal(sig)  # the turn is running (it takes ~0.6 s)
            frames = []
            while True:
                try:
                    frames.append(await c.recv())
                except websockets.ConnectionClosed as exc:
                    return c.hello["client_id"], frames, exc.rcvd

    client_id, frames, close = asyncio.run(scenario())
    types = [f["type"] for f in frames]
    assert "response" in types and types[-1] == "agent_done", types
    response = frames[types.index("response")]
    assert close is not None and close.code == 1001, close
    assert server.wait() == 0  # on its own, within EXIT_TIMEOUT

    wal = Path(f"{db}-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "the WAL was not checkpointed on shutdown"
    memory = only_memory(replay_json(db), "my_agent", "u1")
    assert contents(memory["long_term"]) == [("user", message), ("assistant", response["message"])]

    log = server.stderr
    assert "Traceback" not in log
    assert re.search(rf"close client={client_id} user=u1 code=1001\b", log), log
    assert f"{signal.Signals(sig).name}: shutting down gracefully" in log


def test_second_signal_stops_without_waiting_for_the_turn(tmp_path, serve):
    config = """
[server]
shutdown_grace = 600.0

[agents.my_agent]
brain = { kind = "echo", delay = 300.0, chunks = 4 }
"""
    server = serve(tmp_path / "agentcast.db", "--config", write_config(tmp_path / "slower.toml", config))

    async def scenario():
        async with connect(server.url) as c:
            await c.send({"type": "chat", "agent_id": "my_agent", "message": "a twenty minute turn"})
            assert (await c.recv())["type"] == "agent_thinking"
            server.signal(signal.SIGTERM)
            server.wait_for_log("SIGTERM: shutting down gracefully")  # trio coalesces a signal not yet read
            server.signal(signal.SIGTERM)
            # Exits within EXIT_TIMEOUT, far less than the turn (20 minutes) or the grace (10 minutes) would take.
            assert server.wait() == 0

    asyncio.run(scenario())
    assert "SIGTERM again: stopping now" in server.stderr
    assert replay_json(tmp_path / "agentcast.db")["last_seq"] == 0  # the turn never ended, so nothing of it was logged


# ---------------------------------------------------------------------------------------------
# 3. restart; user ids 123 and "123" are one user
# ---------------------------------------------------------------------------------------------


def test_memory_survives_restart_and_int_and_str_user_ids_are_one_user(tmp_path, serve):
    db = tmp_path / "agentcast.db"
    first_message, token = unique("numbers are users too")
    server = serve(db)

    async def as_int_user():
        async with connect(server.url) as c:
            await c.set_user(123)
            await c.chat(first_message)

    asyncio.run(as_int_user())
    assert server.stop() == 0

    restarted = serve(db)

    async def as_str_user():
        async with connect(restarted.url) as c:
            await c.set_user("123")
            found = await c.search(token)
            return found, await c.chat("what do you remember")

    found, response = asyncio.run(as_str_user())
    assert ("user", first_message) in [(r["role"], r["content"]) for r in found], found
    assert "I remember 2 earlier messages" in response["message"], response
    assert restarted.stop() == 0

    dump = replay_json(db, "--user", "123")
    assert [(m["agent_id"], m["user"]) for m in dump["memories"]] == [("my_agent", "123")]
    said = [m["content"] for m in dump["memories"][0]["long_term"] if m["role"] == "user"]
    assert said == [first_message, "what do you remember"]


# ---------------------------------------------------------------------------------------------
# 4. database files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FOREIGN_FILES)
def test_serve_refuses_a_file_that_is_not_an_agentcast_log_and_leaves_it_alone(tmp_path, serve, kind):
    data = tmp_path / "data"
    data.mkdir()
    db = data / "precious.db"
    FOREIGN_FILES[kind](db)
    before = snapshot(data)

    with pytest.raises(DidNotStart) as excinfo:
        serve(db, cwd=tmp_path)

    assert excinfo.value.returncode != 0
    assert_one_line_error(excinfo.value.stderr, str(db))
    assert snapshot(data) == before  # byte-for-byte, and no -wal/-shm/-journal left behind


def test_serve_creates_a_missing_db(tmp_path, serve):
    db = tmp_path / "fresh.db"
    server = serve(db)
    assert db.is_file() and db.read_bytes()[:16] == SQLITE_HEADER
    assert str(db) in server.line
    assert server.stop() == 0
    assert replay_json(db) == {"db": str(db), "last_seq": 0, "memories": []}


def test_serve_reports_a_db_in_a_missing_directory(tmp_path, serve):
    db = tmp_path / "no-such-dir" / "agentcast.db"
    with pytest.raises(DidNotStart) as excinfo:
        serve(db, cwd=tmp_path)
    assert excinfo.value.returncode != 0
    assert_one_line_error(excinfo.value.stderr, str(db))
    assert not db.parent.exists()


def test_serve_reports_a_port_in_use_in_one_line_and_creates_no_db(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", "--host", "127.0.0.1", "--port", str(port), "--db", str(tmp_path / "a.db"), cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"agentcast: error: cannot listen on 127.0.0.1:{port}: address already in use "
                             "(is another agentcast running? choose another port)\n")
    assert os.listdir(tmp_path) == []  # the port is taken before the database is opened: no a.db


def _missing(directory: Path) -> Path:
    return directory / "missing.db"


def _not_sqlite(directory: Path) -> Path:
    _make_not_sqlite(directory / "text.db")
    return directory / "text.db"


def _foreign(directory: Path) -> Path:
    _make_foreign_sqlite(directory / "foreign.db")
    return directory / "foreign.db"


def _directory(directory: Path) -> Path:
    (directory / "a-directory.db").mkdir()
    return directory / "a-directory.db"


@pytest.mark.parametrize("make", [_missing, _not_sqlite, _foreign, _directory], ids=lambda f: f.__name__.strip("_"))
def test_replay_refuses_what_is_not_a_log_without_touching_anything(tmp_path, make):
    db = make(tmp_path)
    before = snapshot(tmp_path)
    result = cli("replay", "--db", str(db), cwd=tmp_path)
    assert result.returncode != 0
    assert result.stdout == ""
    assert_one_line_error(result.stderr, str(db))
    assert snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def populated_db(tmp_path_factory) -> Path:
    """A log written by a real server: alice with two agents; bob with one, and a short-term clear."""
    db = tmp_path_factory.mktemp("populated") / "agentcast.db"
    server = start_serve(db)
    try:

        async def fill():
            async with connect(server.url) as alice, connect(server.url) as bob:
                await alice.set_user("alice")
                await bob.set_user("bob")
                await alice.chat("alice asks my_agent about apples")
                await alice.chat("alice asks the assistant about bananas", agent_id="assistant")
                await bob.chat("bob talks about cherries")
                frames = await bob.request({"type": "clear_memory", "agent_id": "my_agent"}, "memory_cleared")
                assert frames[-1]["clear_long_term"] is False
                await bob.chat("bob again about dates")

        asyncio.run(fill())
        assert server.stop() == 0
    finally:
        server.kill()
    return db


def test_replay_filters_by_agent_and_user(populated_db):
    before = populated_db.read_bytes()
    cases = {
        (): [("assistant", "alice"), ("my_agent", "alice"), ("my_agent", "bob")],
        ("--agent", "my_agent"): [("my_agent", "alice"), ("my_agent", "bob")],
        ("--user", "alice"): [("assistant", "alice"), ("my_agent", "alice")],
        ("--agent", "assistant", "--user", "alice"): [("assistant", "alice")],
        ("--agent", "assistant", "--user", "bob"): [],
        ("--user", "bob"): [("my_agent", "bob")],
    }
    dumps = dict(zip(cases, replay_json_many(populated_db, *cases), strict=True))
    for args, expected in cases.items():
        assert [(m["agent_id"], m["user"]) for m in dumps[args]["memories"]] == expected, args

    bob = only_memory(dumps[("--user", "bob")], "my_agent", "bob")
    assert [m["content"] for m in bob["short_term"] if m["role"] == "user"] == ["bob again about dates"]
    assert [m["content"] for m in bob["long_term"] if m["role"] == "user"] == ["bob talks about cherries", "bob again about dates"]
    assert [c["long_term"] for c in bob["clears"]] == [False]
    assert populated_db.read_bytes() == before, "replay modified the log"


def test_replay_text_shows_short_term_long_term_and_clears(populated_db):
    result = cli("replay", "--db", str(populated_db), "--user", "bob", cwd=populated_db.parent)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "agent my_agent  user bob" in out
    assert re.search(r"short-term \(2 of \d+\):", out), out
    assert "long-term (4 messages):" in out
    assert "clears:" in out
    assert "bob again about dates" in out and "bob talks about cherries" in out
    assert "alice" not in out

    nothing = cli("replay", "--db", str(populated_db), "--agent", "nobody", cwd=populated_db.parent)
    assert nothing.returncode == 0
    assert "no memory matches" in nothing.stdout


# ---------------------------------------------------------------------------------------------
# 5. config
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[server\nport = 1\n", "bad.toml"),
        ('[agents.helper]\nbrain = "gpt-9000"\n', "unknown brain 'gpt-9000'"),
        ('[server]\ncolour = "blue"\n', "unknown setting server.colour"),
    ],
    ids=["invalid-toml", "unknown-brain", "unknown-setting"],
)
def test_serve_refuses_a_bad_config(tmp_path, text, expected):
    config = write_config(tmp_path / "bad.toml", text)
    db = tmp_path / "agentcast.db"
    result = cli("serve", "--port", "0", "--db", str(db), "--config", config, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stdout == ""
    assert_one_line_error(result.stderr, expected)
    assert not db.exists()


def test_serve_with_a_custom_agent(tmp_path, serve):
    config = write_config(tmp_path / "helper.toml", '[agents.helper]\nbrain = "echo"\ndescription = "helps"\n')
    server = serve(tmp_path / "agentcast.db", "--config", config)
    assert server.agents == ["helper"]

    async def scenario():
        async with connect(server.url) as c:
            subscribed = await c.request({"type": "subscribe", "agent_id": "helper"}, "subscribed")
            assert subscribed[-1]["agent_id"] == "helper"
            response = await c.chat("hello helper", agent_id="helper")
            await c.send({"type": "chat", "agent_id": "my_agent", "message": "anyone there?"})
            return response, await c.recv()

    response, refused = asyncio.run(scenario())
    assert response["message"].startswith("You said: hello helper")
    assert refused["type"] == "error" and refused["code"] == "unknown_agent", refused
    assert "my_agent" in refused["message"]


# ---------------------------------------------------------------------------------------------
# 6. logs
# ---------------------------------------------------------------------------------------------


def test_logs_name_each_connection_and_errors_name_client_and_user(tmp_path, serve):
    server = serve(tmp_path / "agentcast.db")

    async def scenario():
        async with connect(server.url) as first:
            await first.set_user("log-user")
            await first.send({"type": "chat", "agent_id": "ghost", "message": "hi"})
            assert (await first.recv())["code"] == "unknown_agent"
        async with connect(server.url) as second:
            await second.send("{not json")
            assert (await second.recv())["code"] == "invalid_json"
        return first.hello["client_id"], second.hello["client_id"]

    first_id, second_id = asyncio.run(scenario())
    assert server.stop() == 0  # so every close line is written
    lines = server.stderr.splitlines()
    assert "Traceback" not in server.stderr

    for client_id in (first_id, second_id):
        mentions = [line for line in lines if client_id in line]
        assert len([line for line in mentions if f"open client={client_id} " in line]) == 1, mentions
        assert len([line for line in mentions if f"close client={client_id} " in line]) == 1, mentions

    assert any(f"close client={first_id} user=log-user code=1000" in line for line in lines), lines
    errors = [line for line in lines if "error=" in line]
    assert any(f"client={first_id} user=log-user error=unknown_agent" in line for line in errors), errors
    assert any(f"client={second_id} user={second_id} error=invalid_json" in line for line in errors), errors


def test_replay_of_a_damaged_log_is_a_clear_error(tmp_path, populated_db):
    db = tmp_path / "damaged.db"
    data = bytearray(populated_db.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    for offset in range(page, len(data), 7):  # scribble over every page after the header page
        data[offset] = 0xA5
    db.write_bytes(bytes(data))
    result = cli("replay", "--db", str(db), cwd=tmp_path)
    assert result.returncode != 0
    assert_one_line_error(result.stderr, "damaged")
