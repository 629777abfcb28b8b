"""GET /healthz (is the database writable?) and GET /metrics (Prometheus text) on a real server with a
real SQLite file: the status follows the database's write lock, and the numbers follow the traffic."""
from __future__ import annotations

import json

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from agentcast.actors import AgentSpec, EchoBrain, Journal
from agentcast.store import EventLog
from agentcast.store._schema import sqlite3 as store_sqlite3  # the SQLite the store uses
from support import GatedBrain, connect, running_server
from support.http import get

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)

AGENT = "my_agent"


async def health(port: int) -> tuple[int, dict]:
    reply = await get(port, "/healthz")
    assert reply.headers["content-type"] == "application/json" and reply.headers["cache-control"] == "no-store"
    return reply.status, json.loads(reply.body)


async def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of GET /metrics, by (name, sorted labels); parsing it is part of the test."""
    reply = await get(port, "/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def chat(message: str, rid: str | None = None) -> dict:
    frame = {"type": "chat", "agent_id": AGENT, "message": message}
    return frame | ({"request_id": rid} if rid else {})


# -- /healthz -------------------------------------------------------------------------------------


async def test_healthz_is_200_while_the_database_takes_writes_and_503_while_it_cannot(server):
    status, body = await health(server.port)
    assert status == 200 and body["status"] == "ok" and body["db"] == "writable"
    other = store_sqlite3.connect(server.settings.db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock (a backup, a stuck tool)
        status, body = await health(server.port)
        assert status == 503 and body["status"] == "unavailable" and body["db"] == "not writable"
        assert "locked" in body["reason"]
        other.execute("ROLLBACK")
    finally:
        other.close()
    status, body = await health(server.port)
    assert status == 200 and body["db"] == "writable"
    async with connect(server.port) as c:  # and the writer still commits: the check changed nothing
        frames = await c.request(chat("after the lock"), "agent_done")
        assert frames[-2]["type"] == "response"
    assert (await get(server.port, "/healthz", "HEAD")).status == 200


async def test_healthz_is_503_from_a_failed_append_until_one_succeeds(server):
    """A full disk lets the write lock be taken but no commit through: /healthz reports the failing appends."""
    journal = server.journal
    writer = journal._writer._conn  # the server's own writer connection, used on the journal's writer thread only

    async def on_writer(sql: str):
        return await journal._thread.run_sync(lambda: writer.execute(sql).fetchone())

    (pages,) = await on_writer("PRAGMA page_count")
    await on_writer(f"PRAGMA max_page_count={pages}")  # the file may not grow: SQLite's "database or disk is full"
    async with connect(server.port) as c:
        frames = await c.request(chat("x" * 30_000, "full"), "agent_done")
        assert [f["code"] for f in frames if f["type"] == "error"] == ["agent_error"]
        status, body = await health(server.port)
        assert status == 503 and body["status"] == "unavailable" and body["db"] == "not writable"
        assert "database or disk is full" in body["reason"]
        assert (await scrape(server.port))[("agentcast_appends_failing", ())] == 1
        await on_writer("PRAGMA max_page_count=4294967294")  # room again: still 503 until an append succeeds
        assert (await health(server.port))[0] == 503
        frames = await c.request(chat("small again", "ok"), "agent_done")
        assert frames[-2]["type"] == "response"
        status, body = await health(server.port)
        assert status == 200 and body["db"] == "writable"
        assert (await scrape(server.port))[("agentcast_appends_failing", ())] == 0


def test_check_writable_writes_nothing_and_keeps_the_busy_timeout(db_path):
    with EventLog.open(db_path) as log:
        (before,) = log._conn.execute("PRAGMA busy_timeout").fetchone()
        log.check_writable(0.01)
        assert log._conn.execute("PRAGMA busy_timeout").fetchone() == (before,)
        assert log.last_seq() == 0 and not log._conn.in_transaction
        other = store_sqlite3.connect(db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(store_sqlite3.OperationalError, match="locked"):
            log.check_writable(0.01)
        other.execute("ROLLBACK")
        other.close()
        assert log._conn.execute("PRAGMA busy_timeout").fetchone() == (before,)
        log.check_writable(0.01)


async def test_a_closed_journal_is_not_writable(db_path):
    log = EventLog.open(db_path)
    journal = Journal(log, lambda: EventLog.open(db_path, readonly=True))
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        await journal.check_writable()
        nursery.cancel_scope.cancel()
    with pytest.raises(RuntimeError, match="closed"):
        await journal.check_writable()
    log.close()


# -- /metrics ---------------------------------------------------------------------------------------


async def test_metrics_parse_and_move_after_a_chat(server):
    before = await scrape(server.port)
    assert before[("agentcast_turns_total", (("agent_id", AGENT),))] == 0
    assert before[("agentcast_turn_duration_seconds_count", (("agent_id", AGENT),))] == 0
    assert before[("agentcast_mailbox_depth", (("agent_id", AGENT),))] == 0
    assert before[("agentcast_events_appended_total", ())] == 0
    assert before[("agentcast_connections", ())] == 0
    assert before[("agentcast_database_bytes", ())] > 0
    async with connect(server.port) as c:
        await c.request({"type": "set_user", "user_id": "metered"}, "user_set")
        await c.request(chat("count me", "m1"), "agent_done")
        await c.send({"type": "chat", "agent_id": "ghost", "message": "hello?"})
        assert (await c.recv())["code"] == "unknown_agent"
        during = await scrape(server.port)
    assert during[("agentcast_connections", ())] == 1
    assert during[("agentcast_turns_total", (("agent_id", AGENT),))] == 1
    assert during[("agentcast_turns_total", (("agent_id", "assistant"),))] == 0
    assert during[("agentcast_turn_duration_seconds_count", (("agent_id", AGENT),))] == 1
    assert during[("agentcast_turn_duration_seconds_sum", (("agent_id", AGENT),))] > 0
    assert during[("agentcast_turn_duration_seconds_bucket", (("agent_id", AGENT), ("le", "+Inf")))] == 1
    assert during[("agentcast_errors_total", (("code", "unknown_agent"),))] == 1
    assert during[("agentcast_events_appended_total", ())] == 2  # the user's message and the answer
    assert during[("agentcast_commits_total", ())] >= 1
    assert during[("agentcast_database_bytes", ())] >= before[("agentcast_database_bytes", ())]
    assert during[("agentcast_http_requests_total", (("route", "/metrics"), ("status", "200")))] == 1
    assert during[("agentcast_lanes", (("agent_id", AGENT),))] == 1


async def test_mailbox_depth_counts_the_commands_waiting_at_scrape_time(db_path):
    brain = GatedBrain()
    async with running_server(db_path, [AgentSpec(AGENT, brain)]) as server, connect(server.port) as c:
        for i in range(3):
            await c.send(chat(f"queued {i}", str(i)))
        await brain.started.wait()
        samples = await scrape(server.port)
        assert samples[("agentcast_mailbox_depth", (("agent_id", AGENT),))] == 3
        brain.gate.set()
        done = 0
        while done < 3:
            done += (await c.recv())["type"] == "agent_done"
        samples = await scrape(server.port)
        assert samples[("agentcast_mailbox_depth", (("agent_id", AGENT),))] == 0
        assert samples[("agentcast_turns_total", (("agent_id", AGENT),))] == 3
        assert samples[("agentcast_turn_duration_seconds_count", (("agent_id", AGENT),))] == 3


async def test_a_turn_seen_by_subscribers_is_counted_once(db_path):
    brain = GatedBrain()
    brain.gate.set()
    async with running_server(db_path, [AgentSpec(AGENT, brain)]) as server:
        async with connect(server.port) as phone, connect(server.port) as laptop, connect(server.port) as tablet:
            for c in (phone, laptop, tablet):
                await c.request({"type": "set_user", "user_id": "alice"}, "user_set")
            for c in (laptop, tablet):
                await c.request({"type": "subscribe", "agent_id": AGENT}, "subscribed")
            await phone.request(chat("hello"), "agent_done")
            await phone.request(chat("fail please"), "agent_done")
            for c in (laptop, tablet):  # both saw both turns
                assert [f["type"] for f in await c.recv_until("agent_done")][-2:] == ["response", "agent_done"]
                assert [f.get("code") for f in await c.recv_until("agent_done")][-2] == "brain_error"
            samples = await scrape(server.port)
    assert samples[("agentcast_turns_total", (("agent_id", AGENT),))] == 2
    assert samples[("agentcast_turn_duration_seconds_count", (("agent_id", AGENT),))] == 2
    assert samples[("agentcast_errors_total", (("code", "brain_error"),))] == 1


async def test_each_server_counts_its_own(tmp_path):
    specs = [AgentSpec(AGENT, EchoBrain())]
    async with running_server(str(tmp_path / "a.db"), specs) as a, running_server(str(tmp_path / "b.db"), specs) as b:
        async with connect(a.port) as c:
            await c.request(chat("only on a"), "agent_done")
        assert (await scrape(a.port))[("agentcast_turns_total", (("agent_id", AGENT),))] == 1
        assert (await scrape(b.port))[("agentcast_turns_total", (("agent_id", AGENT),))] == 0


async def test_refused_handshakes_are_counted_by_status(db_path):
    from support import handshake

    async with running_server(db_path, allow_origins=["https://ok.example"], max_connections=1) as server:
        assert (await handshake(server.port, "Origin: https://evil.example")).startswith(b"HTTP/1.1 403")
        assert (await handshake(server.port, path="/elsewhere")).startswith(b"HTTP/1.1 404")
        async with connect(server.port):
            assert (await handshake(server.port)).startswith(b"HTTP/1.1 503")
        samples = await scrape(server.port)
    for status in ("403", "404", "503"):
        assert samples[("agentcast_handshakes_refused_total", (("status", status),))] == 1, status
