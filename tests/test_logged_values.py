"""Client-chosen values in log lines and error messages (`transport.protocol.shown`): control characters
escaped (a newline cannot forge a log line), every value cut to SHOWN_CHARS characters (a flood of huge
values cannot fill the disk with log), on a real server over loopback, before authentication too."""
from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support import connect, running_server
from support.http import exchange
from agentcast.transport.protocol import SHOWN_CHARS, ProtocolError, decode, shown

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)

AGENT = "my_agent"
#: A line a client would like to see in the server's log.
FORGED = "\n2025-01-01 00:00:00 INFO agentcast.transport: close client=admin user=root code=1000"


def log_lines(caplog) -> list[str]:
    """Every line the captured records would write (their messages; tracebacks aside)."""
    return [line for record in caplog.records for line in record.getMessage().split("\n")]


def assert_no_forged_line(caplog) -> None:
    lines = log_lines(caplog)
    assert not any(line.startswith("2025-01-01") for line in lines), lines
    for record in caplog.records:  # (a traceback is not part of the message)
        assert record.getMessage().isprintable(), record.getMessage()


# -- shown -------------------------------------------------------------------------------------------


def test_shown_escapes_what_is_not_printable_and_cuts_long_values():
    assert shown("alice") == "alice" and shown(42) == "42" and shown(["ping"]) == '["ping"]' and shown(None) == "null"
    assert shown("a\nb\r\tc") == "a\\nb\\r\\tc"
    assert shown("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"  # no terminal escape sequence reaches the log
    assert shown("a\u2028b\x85c\u202ed\ud800") == "a\\u2028b\\x85c\\u202ed\\ud800"  # line separators, bidi, surrogate
    assert shown("é ü ☕") == "é ü ☕"
    assert shown("x" * SHOWN_CHARS) == "x" * SHOWN_CHARS
    assert shown("x" * 70_000) == "x" * SHOWN_CHARS + "...[70000 characters]"
    assert shown("\n" * 70_000) == "\\n" * (SHOWN_CHARS // 2) + "...[70000 characters]"
    assert shown("abcdef", 3) == "abc...[6 characters]"
    assert shown(10**5000) == "<int>"  # too long for str(): no exception either


@given(st.one_of(st.text(), st.integers(), st.lists(st.text(max_size=5), max_size=50)), st.integers(1, 200))
def test_shown_is_printable_and_bounded_whatever_the_value(value, limit):
    text = shown(value, limit)
    assert text.isprintable()
    assert len(text) <= limit + len("...[] characters]") + 20


def test_decode_errors_show_at_most_the_cut_form():
    for type_ in ("bad" + FORGED, "t" * 60_000, ["x" * 60_000]):
        try:
            decode(json.dumps({"type": type_}))
        except ProtocolError as exc:
            assert exc.code == "unknown_type"
            assert exc.message.isprintable() and len(exc.message) < 200, exc.message
        else:
            raise AssertionError("decoded")


# -- on a real server ----------------------------------------------------------------------------------


async def test_a_newline_in_a_clients_values_forges_no_log_line_and_the_error_frames_show_it_escaped(db_path, caplog):
    caplog.set_level(logging.DEBUG, logger="agentcast")
    async with running_server(db_path, allow_origins=["https://chat.example.com"]) as server:
        async with connect(server.port) as c:
            await c.send({"type": "dance" + FORGED, "request_id": "r1"})
            error = await c.recv()
            assert error["code"] == "unknown_type" and "\n" not in error["message"]
            assert error["message"].startswith("Unknown message type: dance\\n2025-01-01")
            await c.request({"type": "set_user", "user_id": "mallory" + FORGED}, "user_set")
            await c.send({"type": "chat", "agent_id": "ghost" + FORGED, "message": "hi"})
            error = await c.recv()
            assert error["code"] == "unknown_agent" and "\n" not in error["message"], error
            assert error["message"].startswith("No agent with ID 'ghost\\n2025")
        # the Origin of a refused handshake, a request path: header bytes the client chose
        origin = "https://evil.example\x85\x1b[2J".encode("latin-1")
        reply = await exchange(server.port, b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                               b"Origin: " + origin + b"\r\n\r\n")
        assert reply.status == 403
        reply = await exchange(server.port, b"GET /" + b"p" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.status == 404
        reply = await exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\x01bad" + b"h" * 5000 + b": v\r\n\r\n")
        assert reply.status == 400 and len(reply.body) < 400
    assert_no_forged_line(caplog)
    lines = log_lines(caplog)
    assert any("user=mallory\\n2025-01-01" in line for line in lines), lines
    assert any("Origin https://evil.example\\x85\\x1b[2J" in line for line in lines), lines
    assert max(len(line) for line in lines) < 600, max(lines, key=len)


async def test_a_lane_failure_logs_the_users_id_escaped(db_path, caplog):
    caplog.set_level(logging.INFO, logger="agentcast")
    async with running_server(db_path) as server:
        journal = server.journal
        writer = journal._writer._conn
        (pages,) = await journal._thread.run_sync(lambda: writer.execute("PRAGMA page_count").fetchone())
        await journal._thread.run_sync(writer.execute, f"PRAGMA max_page_count={pages}")  # every append fails
        async with connect(server.port) as c:
            await c.request({"type": "set_user", "user_id": "mallory" + FORGED}, "user_set")
            frames = await c.request({"type": "chat", "agent_id": AGENT, "message": "x" * 30_000}, "agent_done")
            assert [f["code"] for f in frames if f["type"] == "error"] == ["agent_error"]
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage() and r.name == "agentcast.actors"]
    assert failures and all("\n" not in m for m in failures), failures
    assert_no_forged_line(caplog)


async def test_a_flood_of_huge_unknown_types_writes_a_bounded_log(db_path, caplog, monkeypatch):
    """200 frames, each with a 60,000-character type, logged and answered before authentication: a few hundred
    bytes each at most. (12 MB of input: the input budget is off, or reading it would outlast `auth_timeout`.)"""
    caplog.set_level(logging.DEBUG, logger="agentcast")
    monkeypatch.setenv("AGENTCAST_TEST_SECRET", "s" * 32)
    async with running_server(db_path, auth_secret_env="AGENTCAST_TEST_SECRET", input_bytes_per_second=0) as server:
        async with connect(server.port) as c:
            for i in range(200):
                await c.send({"type": f"{i:03d}" + "t" * 60_000})
            errors = [await c.recv() for _ in range(200)]
    assert all(e["code"] == "unknown_type" and len(e["message"]) < 200 for e in errors)
    logged = sum(len(r.getMessage()) for r in caplog.records)
    assert logged < 200 * 400, f"{logged} characters of log for 200 frames"
