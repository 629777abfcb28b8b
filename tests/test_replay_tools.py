"""`agentcast replay` at a point in time, `replay events` (and `--follow`), and `replay verify`.

Most tests build a small log with `EventLog.append` and call the command in-process (fast); the
process tests run the real command next to a real `agentcast serve` (helpers from support/process.py).
"""
from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agentcast.store import AgentAnswered, Cut, EventLog, UserClearedMemory, UserSaid, memory_at, parse_instant, verify
from agentcast.store._schema import sqlite3 as store_sqlite3  # the SQLite the store uses (see `damage`)
from agentcast.store._terms import index_terms, scope_token
from support.process import CLI, EXIT_TIMEOUT, FRAME_TIMEOUT, START_TIMEOUT, cli, connect, unique  # noqa: F401
from agentcast.transport.cli import main


def at(second: float) -> str:
    return datetime.fromtimestamp(1_795_917_600 + second, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: seq 1..9 of the sample log; at(n) = 2026-11-29T02:00:0n.000Z
SAMPLE = [
    UserSaid("my_agent", "u1", at(1), "alpha apples", "r1"),
    AgentAnswered("my_agent", "u1", at(2), "You said: alpha apples", "r1"),
    UserSaid("my_agent", "u2", at(3), "bravo bananas", "r2"),
    UserClearedMemory("my_agent", "u1", at(4), False, "r3"),  # u1: short-term clear
    UserSaid("my_agent", "u1", at(5), "charlie cherries"),
    AgentAnswered("my_agent", "u1", at(6), "You said: charlie cherries"),
    UserClearedMemory("my_agent", "u2", at(7), True),  # u2: long-term clear; erases seq 3's text
    UserSaid("my_agent", "u2", at(8), "delta dates"),
    UserSaid("assistant", "u1", at(9), "echo eggs"),
]


def write_log(path: Path, events, batch: int = 1) -> Path:
    with EventLog.open(path) as log:
        for i in range(0, len(events), batch):
            log.append([events[i:i + batch]])
    return path


@pytest.fixture
def sample(tmp_path) -> Path:
    """The SAMPLE log, with a snapshot of my_agent/u1 (window 3) as of its last event, seq 6."""
    db = write_log(tmp_path / "sample.db", SAMPLE)
    with EventLog.open(db) as log:
        log.append([], snapshots=[log.memory("my_agent", "u1", window=3)])
    return db


def run(capsys, *args: str) -> tuple[int, str, str]:
    """`agentcast ARGS` in this process: (exit status, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse (--help, usage errors)
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def replay(capsys, db: Path, *args: str) -> dict:
    code, out, err = run(capsys, "replay", "--db", str(db), "--json", *args)
    assert code == 0, err
    return json.loads(out)


def one_line_error(err: str, *expected: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentcast: error: "), err
    for text in expected:
        assert text in lines[0], (text, err)
    return lines[0]


# ---------------------------------------------------------------------------------------------
# replay --until-seq / --until-time
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-29T02:21:31.747Z", datetime(2026, 11, 29, 2, 21, 31, 747000, timezone.utc)),
        ("2026-11-29T03:21:31.747+01:00", datetime(2026, 11, 29, 2, 21, 31, 747000, timezone.utc)),
        ("2026-11-28T21:21:31.747-05:00", datetime(2026, 11, 29, 2, 21, 31, 747000, timezone.utc)),
        ("2026-11-29T02:21:31", datetime(2026, 11, 29, 2, 21, 31, tzinfo=timezone.utc)),  # no offset: UTC
        ("2026-11-29", datetime(2026, 11, 29, tzinfo=timezone.utc)),
    ],
)
def test_parse_instant_compares_as_utc(text, expected):
    assert parse_instant(text) == expected
    assert parse_instant(text).utcoffset().total_seconds() == 0


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01T00:00:00Z", "2026-11-29T25:00Z", "1732847091"])
def test_parse_instant_refuses_what_is_not_a_time(text):
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        parse_instant(text)


def _without_erased_text(dump: dict) -> list[dict]:
    """The memories of a dump with the content of erased messages blanked (and their mark dropped)."""
    memories = json.loads(json.dumps(dump["memories"]))
    for memory in memories:
        for message in memory["short_term"] + memory["long_term"]:
            if message.pop("forgotten", False) or message["seq"] in ERASED:
                message["content"] = ""
    return memories


#: The sample's messages whose text the long-term clear at seq 7 erased.
ERASED = {3}


def test_until_seq_is_exactly_the_memory_of_the_log_as_it_was(tmp_path, capsys, sample):
    """For every N, replay --until-seq N of the full log == replay of a log holding only its first N events
    (except the text that a later long-term clear erased, which is marked `forgotten`)."""
    prefix = tmp_path / "prefix.db"
    EventLog.open(prefix).close()
    for n in range(0, len(SAMPLE) + 1):
        if n:
            write_log(prefix, SAMPLE[n - 1:n])
        then = replay(capsys, sample, "--until-seq", str(n))
        really = replay(capsys, prefix)
        assert then["last_seq"] == really["last_seq"] == n
        assert then["until_seq"] == n and then["log_last_seq"] == len(SAMPLE)
        assert _without_erased_text(then) == _without_erased_text(really), n

    beyond = replay(capsys, sample, "--until-seq", "1000")
    assert beyond["memories"] == replay(capsys, sample)["memories"]


def test_until_seq_cuts_the_long_term_messages_and_marks_erased_text(capsys, sample):
    def long_term(dump, agent, user):
        (memory,) = [m for m in dump["memories"] if (m["agent_id"], m["user"]) == (agent, user)]
        return [(m["seq"], m["content"], m.get("forgotten", False)) for m in memory["long_term"]]

    at5 = replay(capsys, sample, "--until-seq", "5")
    assert long_term(at5, "my_agent", "u1") == [(1, "alpha apples", False), (2, "You said: alpha apples", False),
                                                (5, "charlie cherries", False)]
    assert long_term(at5, "my_agent", "u2") == [(3, "", True)]  # said then; erased by the clear at seq 7
    assert [(m["agent_id"], m["user"]) for m in at5["memories"]] == [("my_agent", "u1"), ("my_agent", "u2")]

    now = replay(capsys, sample)
    assert long_term(now, "my_agent", "u2") == [(8, "delta dates", False)]
    assert "until_seq" not in now and "log_last_seq" not in now  # the plain form is unchanged

    code, out, _ = run(capsys, "replay", "--db", str(sample), "--until-seq", "5", "--user", "u2")
    assert code == 0
    assert "as of seq 5" in out and "erased by a later long-term clear" in out and "bravo" not in out


@pytest.mark.parametrize(
    "instant, same_as_seq",
    [
        (at(5), 5),  # inclusive
        ("2026-11-29T03:00:05+01:00", 5),  # an offset: the same instant
        ("2026-11-28T21:00:05.000-05:00", 5),
        ("2026-11-29T02:00:05", 5),  # no offset: UTC
        ("2026-11-29T02:00:05.4999Z", 5),
        ("2026-11-29T02:00:04.999Z", 4),
        ("2026-11-29T02:00:00Z", 0),  # before the first event
        ("2030-01-01T00:00:00Z", 9),
    ],
)
def test_until_time_compares_instants(capsys, sample, instant, same_as_seq):
    by_time = replay(capsys, sample, "--until-time", instant)
    by_seq = replay(capsys, sample, "--until-seq", str(same_as_seq))
    assert by_time["memories"] == by_seq["memories"]
    assert by_time["last_seq"] == same_as_seq
    assert by_time["until_time"] == instant


def test_until_time_selects_events_by_their_own_time(tmp_path):
    """Timestamps need not grow with seq (a command is stamped when it arrives); the cut follows `at`."""
    db = write_log(tmp_path / "skewed.db", [
        UserSaid("a", "u", at(10), "first, stamped late"),
        UserSaid("a", "u", at(5), "second, stamped early"),
    ])
    with EventLog.open(db, readonly=True) as log:
        memory, long_term, _ = memory_at(log, "a", "u", cut=Cut(until_time=parse_instant(at(7))))
    assert [m.content for m in memory.short_term] == ["second, stamped early"]
    assert [m.seq for m in long_term] == [2]


def test_replay_lists_every_clear_of_the_stream_from_the_log_up_to_the_cut(capsys, tmp_path):
    """The memory keeps only the last clear of each kind; replay still shows every clear, read from the log."""
    db = write_log(tmp_path / "clears.db", [
        UserSaid("a", "u", at(1), "one"),
        UserClearedMemory("a", "u", at(2), False),
        UserClearedMemory("a", "u", at(3), True),
        UserSaid("a", "u", at(4), "two"),
        UserClearedMemory("a", "u", at(5), False),
        UserClearedMemory("a", "u", at(6), False),
        UserClearedMemory("a", "other", at(7), True),  # another user's clear is not this stream's
        UserClearedMemory("b", "u", at(8), False),  # nor another agent's
        UserClearedMemory("a", "u", at(9), True),
    ])

    def clears(*args):
        (memory,) = replay(capsys, db, "--agent", "a", "--user", "u", *args)["memories"]
        return [(c["seq"], c["timestamp"], c["long_term"]) for c in memory["clears"]]

    every = [(2, at(2), False), (3, at(3), True), (5, at(5), False), (6, at(6), False), (9, at(9), True)]
    assert clears() == every
    assert clears("--until-seq", "6") == every[:4]
    assert clears("--until-time", at(5)) == every[:3]
    code, out, _ = run(capsys, "replay", "--db", str(db), "--agent", "a", "--user", "u")
    assert code == 0
    lines = out[out.index("  clears:"):].splitlines()[1:6]
    assert [line.split()[0] for line in lines] == ["#2", "#3", "#5", "#6", "#9"]
    assert [line.split()[2] for line in lines] == ["short-term", "long-term", "short-term", "short-term", "long-term"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--until-seq", "-1"), "--until-seq"),
        (("--until-seq", "five"), "'five'"),
        (("--until-seq", "1.5"), "--until-seq"),
        (("--until-seq", str(2**64)), "larger than any sequence number"),
        (("--until-time", "yesterday"), "not an ISO 8601 time: 'yesterday'"),
        (("--until-time", "2026-11-31T00:00:00Z"), "--until-time"),
        (("--until-seq", "3", "--until-time", at(3)), "not both"),
    ],
    ids=["negative-seq", "word-seq", "fraction-seq", "huge-seq", "word-time", "no-such-day", "both"],
)
def test_bad_cut_values_are_one_line_errors(capsys, sample, args, expected):
    code, out, err = run(capsys, "replay", "--db", str(sample), *args)
    assert code != 0 and out == ""
    one_line_error(err, expected)


@pytest.mark.process
def test_bad_value_from_the_real_command(sample):
    result = cli("replay", "--db", str(sample), "--until-seq", "-3", cwd=sample.parent)
    assert result.returncode != 0 and result.stdout == ""
    one_line_error(result.stderr, "--until-seq", "-3")


def test_help_names_all_three_forms(capsys):
    code, out, _ = run(capsys, "replay", "--help")
    assert code == 0
    for text in ("--until-seq N", "--until-time ISO", "`agentcast replay events`", "`agentcast replay verify`"):
        assert text in out
    code, out, _ = run(capsys, "replay", "events", "--help")
    assert code == 0 and "--follow" in out and "--after-seq" in out
    code, out, _ = run(capsys, "replay", "verify", "--help")
    assert code == 0 and "integrity_check" in out


# ---------------------------------------------------------------------------------------------
# replay events
# ---------------------------------------------------------------------------------------------


def events(capsys, db: Path, *args: str) -> list[dict]:
    code, out, err = run(capsys, "replay", "events", "--db", str(db), *args)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_events_prints_every_event_as_one_json_line(capsys, sample):
    found = events(capsys, sample)
    assert [e["seq"] for e in found] == list(range(1, 10))
    assert list(found[0])[:5] == ["seq", "type", "agent_id", "user", "at"]
    assert found[0] | {"command_id": None} == {
        "seq": 1, "type": "user_message", "agent_id": "my_agent", "user": "u1", "at": at(1),
        "content": "alpha apples", "request_id": "r1", "command_id": None,
    }
    assert found[3] == {"seq": 4, "type": "memory_cleared", "agent_id": "my_agent", "user": "u1", "at": at(4),
                        "long_term": False, "request_id": "r3"}
    assert found[2]["content"] == "" and found[2]["redacted"] is True
    assert all("redacted" not in e for e in found if e["seq"] != 3)


@pytest.mark.parametrize(
    "args, seqs",
    [
        (("--after-seq", "4"), [5, 6, 7, 8, 9]),
        (("--after-seq", "9"), []),
        (("--user", "u2"), [3, 7, 8]),
        (("--agent", "assistant"), [9]),
        (("--agent", "my_agent", "--user", "u1", "--after-seq", "2"), [4, 5, 6]),
    ],
)
def test_events_filters(capsys, sample, args, seqs):
    assert [e["seq"] for e in events(capsys, sample, *args)] == seqs


def test_events_reads_in_batches_and_stops_at_the_last_event_committed_when_it_started(capsys, tmp_path):
    db = write_log(tmp_path / "many.db", [UserSaid("a", f"u{i % 3}", at(i), f"m{i}") for i in range(2500)], batch=500)
    assert [e["seq"] for e in events(capsys, db)] == list(range(1, 2501))
    assert [e["content"] for e in events(capsys, db, "--user", "u1", "--after-seq", "2490")] == ["m2491", "m2494", "m2497"]


def test_events_reports_an_undecodable_event_by_seq(capsys, tmp_path, sample):
    db = damage(sample, tmp_path, "UPDATE events SET payload = '{not json' WHERE seq = 5")
    code, out, err = run(capsys, "replay", "events", "--db", str(db))
    assert code != 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [1, 2, 3, 4]  # what came before it
    one_line_error(err, "event 5")
    code, _, err = run(capsys, "replay", "events", "--db", str(sample), "--after-seq", "-1")
    assert code != 0
    one_line_error(err, "--after-seq")


# ---------------------------------------------------------------------------------------------
# replay verify
# ---------------------------------------------------------------------------------------------


def damage(db: Path, tmp_path: Path, *statements: str) -> Path:
    """A copy of the (closed, checkpointed) log `db` with `statements` run on it.

    Uses the sqlite3 module the store uses: the search index is an FTS5 table whose on-disk format
    (secure-delete) an older SQLite cannot write.
    """
    copy = tmp_path / f"damaged-{len(list(tmp_path.glob('damaged-*')))}.db"
    copy.write_bytes(db.read_bytes())
    conn = store_sqlite3.connect(copy, isolation_level=None)
    try:
        for sql in statements:
            conn.execute(sql)
    finally:
        conn.close()
    return copy


def test_verify_a_healthy_log(capsys, sample):
    code, out, err = run(capsys, "replay", "verify", "--db", str(sample))
    assert code == 0, out + err
    assert "9 events (seq 1..9), 3 streams" in out
    assert "events/s" in out and "FAIL" not in out
    assert "1 snapshot equal to the log at its seq" in out
    assert out.strip().endswith("verify: ok")

    code, out, _ = run(capsys, "replay", "verify", "--db", str(sample), "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True
    assert (report["events"], report["last_seq"], report["streams"]) == (9, 9, 3)
    assert [c["name"] for c in report["checks"]] == [
        "sequence", "event types", "payloads", "projection", "search index", "snapshots", "vectors", "integrity"
    ]
    assert report["rebuild"]["seconds"] >= 0 and report["rebuild"]["events_per_second"] >= 0


def test_verify_an_empty_log(capsys, tmp_path):
    db = write_log(tmp_path / "empty.db", [])
    code, out, _ = run(capsys, "replay", "verify", "--db", str(db))
    assert code == 0 and "0 events, 0 streams" in out and "verify: ok" in out


def test_verify_counts_one_event_and_one_stream_in_the_singular(capsys, tmp_path):
    db = write_log(tmp_path / "one.db", SAMPLE[:1])
    code, out, _ = run(capsys, "replay", "verify", "--db", str(db))
    assert code == 0 and out.startswith(f"{db}: 1 event (seq 1..1), 1 stream\n"), out


@pytest.mark.parametrize(
    "statements, check, expected",
    [
        (["DELETE FROM events WHERE seq IN (4, 5, 6)"], "sequence", "missing seq 4-6 (3 events)"),
        (["DELETE FROM events WHERE seq = 2", "DELETE FROM events WHERE seq = 7"], "sequence", "missing seq 2, 7"),
        (["DELETE FROM events WHERE seq = 1"], "sequence", "missing seq 1 (1 event)"),
        (["INSERT INTO events (at, type, agent_id, user, payload) "
          "VALUES ('2026-11-29T02:00:10.000Z', 'bogus', 'my_agent', 'u1', '{}')"],
         "event types", "seq 10: unknown event type 'bogus'"),
        (["UPDATE events SET payload = '{not json' WHERE seq = 8"], "payloads", "seq 8: undecodable user_message payload"),
        (["UPDATE events SET payload = '{\"long_term\": \"yes\"}' WHERE seq = 4"], "payloads", "seq 4: undecodable"),
        ([f"INSERT INTO memory_index (memory_index, rowid, terms) "
          f"VALUES ('delete', 5, '{index_terms(scope_token('my_agent', 'u1'), 'charlie cherries')}')"], "search index",
         "agent 'my_agent' user 'u1': the index holds 3 messages, the projection 4 long-term (missing seq 5)"),
        ([f"INSERT INTO memory_index (rowid, terms) VALUES (3, '{index_terms(scope_token('my_agent', 'u1'), 'bravo')}')"],
         "search index", "unexpected seq 3"),
        (["INSERT INTO memory_index (rowid, terms) VALUES (100, 'snobody snobodyworphan')"], "search index",
         "1 index row belonging to no (agent, user)"),
        (["UPDATE events SET agent_id = 'ghost' WHERE seq = 6"], "search index", "unexpected seq 6"),
        (["UPDATE snapshots SET state = json_set(state, '$.long_term_count', 99)"], "snapshots",
         "the snapshot of agent 'my_agent' user 'u1' (window 3) at seq 6 differs from the log in long_term_count"),
        (["UPDATE snapshots SET state = '{}'"], "snapshots", "at seq 6 is unreadable"),
        (["UPDATE snapshots SET seq = 7"], "snapshots", "the log has no event 7 of that (agent, user)"),
    ],
    ids=["gap", "two-gaps", "first-missing", "unknown-type", "invalid-json", "bad-field", "fts-row-deleted",
         "fts-row-of-cleared", "fts-orphan", "event-moved", "snapshot-wrong", "snapshot-unreadable", "snapshot-seq"],
)
def test_verify_names_what_is_wrong(capsys, tmp_path, sample, statements, check, expected):
    db = damage(sample, tmp_path, *statements)
    code, out, err = run(capsys, "replay", "verify", "--db", str(db))
    assert code == 1, out + err
    assert err == ""
    assert expected in out, out
    assert f"FAIL  {check}" in out, out
    assert "verify: FAILED" in out.strip().splitlines()[-1]

    code, out, _ = run(capsys, "replay", "verify", "--db", str(db), "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    failed = {c["name"]: c for c in report["checks"] if not c["ok"]}
    assert check in failed, report
    assert any(expected in p for p in failed[check]["problems"]), failed[check]


def test_verify_compares_the_two_rebuilds(tmp_path, sample):
    """Rebuild #2 reads each stream through the events_by_stream index: a stale index shows as a disagreement."""
    db = damage(sample, tmp_path, "UPDATE events SET user = 'u1' WHERE seq = 8", "REINDEX events_by_stream")
    with EventLog.open(db, readonly=True) as log:
        report = verify(log)
    assert not report.ok  # the event moved to u1: the index check sees seq 8 where it does not belong
    assert {c.name for c in report.checks if not c.ok} == {"search index"}


def test_verify_of_a_scribbled_file_is_a_report_not_a_traceback(capsys, tmp_path):
    db = write_log(tmp_path / "big.db", [UserSaid("a", f"u{i % 7}", at(i), f"message number {i} " * 20) for i in range(600)],
                   batch=100)
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for offset in range(page * 3, len(data), 7):  # leave the header and schema pages alone
        data[offset] = 0xA5
    db.write_bytes(bytes(data))
    code, out, err = run(capsys, "replay", "verify", "--db", str(db))
    assert code != 0
    assert "Traceback" not in err
    assert "FAIL" in out or err.startswith("agentcast: error: "), (out, err)


# ---------------------------------------------------------------------------------------------
# process tests: --follow next to a real server; signals; a closed stdout
# ---------------------------------------------------------------------------------------------


class Lines:
    """Lines from a subprocess's stdout pipe, read with a deadline (select + os.read)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.buf = b""
        self.lines: list[dict] = []

    def until(self, predicate, timeout: float = FRAME_TIMEOUT) -> list[dict]:
        """Read until some line satisfies `predicate`; returns every line read so far."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not any(predicate(line) for line in self.lines):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no such line within {timeout}s; got {self.lines}"
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                assert chunk, f"the follower exited ({self.proc.poll()}); got {self.lines}"
                self.buf += chunk
                *complete, self.buf = self.buf.split(b"\n")
                self.lines += [json.loads(line) for line in complete]
        return self.lines


def follow(db: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "replay", "events", "--db", str(db), "--follow", *args], cwd=db.parent,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def reap(proc: subprocess.Popen) -> tuple[int, str]:
    """Wait (bounded) for `proc`; its exit status and stderr. Kills it if it does not exit."""
    try:
        _, err = proc.communicate(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=EXIT_TIMEOUT)
        raise
    return proc.returncode, err.decode()


@pytest.mark.process
def test_follow_sees_a_live_servers_chats_and_verify_is_clean(tmp_path, serve):
    db = tmp_path / "agentcast.db"
    server = serve(db)
    first, _ = unique("before the follower")
    second, token = unique("after the follower")

    async def chat(message: str) -> None:
        async with connect(server.url) as c:
            await c.set_user("follow-me")
            await c.chat(message)

    async def forget() -> None:
        async with connect(server.url) as c:
            await c.set_user("follow-me")
            await c.request({"type": "clear_memory", "agent_id": "my_agent", "clear_long_term": True}, "memory_cleared")

    asyncio.run(chat(first))
    follower = follow(db, "--user", "follow-me")
    try:
        lines = Lines(follower)
        lines.until(lambda e: e["type"] == "agent_message")  # it is running and has caught up
        asyncio.run(chat(second))  # made after the follower started
        lines.until(lambda e: e.get("content") == second)
        asyncio.run(forget())
        seen = lines.until(lambda e: e["type"] == "memory_cleared")
        said = [e for e in seen if e["type"] == "user_message"]
        assert [e["content"] for e in said] == [first, second]  # printed before the clear erased them
        assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
        assert all(e["user"] == "follow-me" and e["agent_id"] == "my_agent" for e in seen)

        live = cli("replay", "verify", "--db", str(db), cwd=tmp_path)  # next to the running server
        assert live.returncode == 0, live.stdout + live.stderr
        assert "verify: ok" in live.stdout and "5 events (seq 1..5), 1 stream\n" in live.stdout

        follower.send_signal(signal.SIGTERM)
        code, err = reap(follower)
        assert code == 0 and "Traceback" not in err, err
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(EXIT_TIMEOUT)
    assert server.stop() == 0

    before = cli("replay", "--db", str(db), "--json", "--until-seq", "4", cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    (memory,) = json.loads(before.stdout)["memories"]
    assert [m.get("forgotten") for m in memory["long_term"]] == [True] * 4  # the clear at seq 5 erased them
    assert token not in before.stdout
    after = cli("replay", "verify", "--db", str(db), "--json", cwd=tmp_path)
    assert after.returncode == 0 and json.loads(after.stdout)["ok"] is True


@pytest.mark.process
def test_follow_stops_on_sigint(sample):
    follower = follow(sample)
    try:
        Lines(follower).until(lambda e: e["seq"] == 9)
        follower.send_signal(signal.SIGINT)
        code, err = reap(follower)
        assert code == 0 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(EXIT_TIMEOUT)


@pytest.mark.process
@pytest.mark.parametrize(
    "args", [("events", "--follow"), ("events",), ("--json",)], ids=["events-follow", "events", "replay-json"]
)
def test_a_closed_stdout_ends_replay_quietly(tmp_path, args):
    db = write_log(tmp_path / "long.db", [UserSaid("a", "u", at(i), f"line {i} " + "x" * 200) for i in range(2000)],
                   batch=500)  # ~500 kB of output: more than a pipe holds
    tool, options = (args[0], args[1:]) if args[0] == "events" else ((), args)
    proc = subprocess.Popen(
        [*CLI, "replay", *([tool] if tool else []), "--db", str(db), *options], cwd=tmp_path,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        assert ready and proc.stdout.read1(100).startswith(b'{"seq":1,' if tool else b"{")
        proc.stdout.close()  # like `| head -1`
        code = proc.wait(EXIT_TIMEOUT)
        err = proc.stderr.read().decode()
        assert code == 0 and err == "", err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(EXIT_TIMEOUT)
        proc.stderr.close()
