"""`agentcast backup` and `store.backup` (issue 13 §1): a consistent, checked copy of a live log, made while a
real server chats, that finishes although commits land between its steps, and that never leaves a half
copy or overwrites a file it was not asked to."""
from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from agentcast.store import _backup as store_backup
from agentcast.store import BackupError, EventLog, MissingEventLog, NotAnEventLog, TargetExists, UserSaid, backup, verify
from support import scaled
from support.process import (
    FOREIGN_FILES,
    assert_one_line_error,
    cli,
    connect,
    snapshot,
)

#: Steps of the backup during which the test waits for the server to commit something new.
STEPS_WITH_A_COMMIT = 8


def prefill(db: Path, events: int) -> None:
    """A log of `events` messages of 20 users (enough pages for many small backup steps)."""
    with EventLog.open(db) as log:
        for start in range(0, events, 500):
            log.append([[UserSaid("my_agent", f"user{i % 20}", "2026-01-01T00:00:00.000Z", f"message {i} " + "x" * 100)
                         for i in range(start, min(events, start + 500))]])


class Chatter:
    """A client that chats with a server, one turn after another, in a thread of its own, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.done = 0  # turns answered
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Chatter":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(scaled(20))
        assert not self.thread.is_alive(), "the chatting client did not stop"

    def _run(self) -> None:
        try:
            asyncio.run(self._chat())
        except BaseException as exc:  # reported by the test
            self.failure = exc

    async def _chat(self) -> None:
        async with connect(self.url) as c:
            await c.set_user("chatter")
            while not self.stop.is_set():
                await c.chat(f"turn {self.done}")
                self.done += 1


def wait_until(condition, what: str, timeout: float = scaled(10)) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.005)


def leftovers(directory: Path, name: str) -> list[str]:
    """Temporary files of a copy to `name` left in `directory`."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{name}."))


@pytest.mark.process
def test_a_backup_under_a_chatting_server_is_consistent_and_finishes(tmp_path, serve):
    db, copy = tmp_path / "live.db", tmp_path / "copy.db"
    prefill(db, 6000)
    server = serve(db)
    progress: list[tuple[int, int]] = []
    with Chatter(server.url) as chatter, EventLog.open(db, readonly=True) as watcher:
        wait_until(lambda: chatter.done >= 3 or chatter.failure, "three chat turns")

        def step(copied: int, total: int) -> None:
            progress.append((copied, total))
            if len(progress) <= STEPS_WITH_A_COMMIT:  # let the server commit between this step and the next
                seen = watcher.last_seq()
                wait_until(lambda: watcher.last_seq() > seen or chatter.failure, "a commit by the server")

        report = backup(db, copy, progress=step, pages_per_step=16)
    assert chatter.failure is None, repr(chatter.failure)
    assert len(progress) > STEPS_WITH_A_COMMIT + 1  # the copy took many steps, commits landed between them
    copied = [c for c, _ in progress]
    assert copied == sorted(copied), "the copy started again (the source changed under it)"
    assert progress[-1][0] == progress[-1][1] == report.bytes == copy.stat().st_size
    assert server.stop() == 0

    with EventLog.open(db, readonly=True) as live, EventLog.open(copy, readonly=True) as backed_up:
        assert report.last_seq > 6000 and live.last_seq() > report.last_seq + STEPS_WITH_A_COMMIT
        assert report.events == report.last_seq == backed_up.last_seq()
        # the copy is the log as of one moment: exactly its first events, nothing torn
        assert list(backed_up.read()) == list(live.read(until_seq=report.last_seq))
        check = verify(backed_up)
        assert check.ok, check.as_json()
    assert leftovers(tmp_path, "copy.db") == []


@pytest.mark.process
def test_the_backup_command_copies_a_live_log_and_refuses_to_overwrite(tmp_path, serve):
    db, copy = tmp_path / "agentcast.db", tmp_path / "backups" / "copy.db"
    copy.parent.mkdir()
    server = serve(db)
    with Chatter(server.url) as chatter:
        wait_until(lambda: chatter.done >= 5 or chatter.failure, "five chat turns")
        result = cli("backup", "--db", str(db), "--to", str(copy), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # a small log: no progress lines
        line = result.stdout.strip()
        assert line.startswith(f"{db} -> {copy}: ") and "integrity ok" in line, line
        events = int(line.split(": ", 1)[1].split(" events")[0].replace(",", ""))
        assert events >= 10 and f"{copy.stat().st_size:,} bytes" in line

        before = snapshot(copy.parent)
        again = cli("backup", "--db", str(db), "--to", str(copy), cwd=tmp_path)
        assert again.returncode == 1 and again.stdout == ""
        assert_one_line_error(again.stderr, str(copy), "exists", "--force")
        assert snapshot(copy.parent) == before

        forced = cli("backup", "--db", str(db), "--to", str(copy), "--force", cwd=tmp_path)
        assert forced.returncode == 0, forced.stderr
    assert chatter.failure is None, repr(chatter.failure)
    assert server.stop() == 0
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy.db"]  # nothing left of the copying
    verified = cli("replay", "verify", "--db", str(copy), cwd=tmp_path)
    assert verified.returncode == 0 and "verify: ok" in verified.stdout, verified.stdout
    with EventLog.open(copy, readonly=True) as log:
        assert log.last_seq() > events  # the forced copy is the newer one


@pytest.mark.process
@pytest.mark.parametrize("kind", [*FOREIGN_FILES, "missing"])
def test_backup_refuses_a_source_that_is_not_a_log_and_touches_nothing(tmp_path, kind):
    source = tmp_path / "precious.db"
    if kind != "missing":
        FOREIGN_FILES[kind](source)
    before = snapshot(tmp_path)
    result = cli("backup", "--db", str(source), "--to", str(tmp_path / "copy.db"), cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert_one_line_error(result.stderr, str(source))
    assert snapshot(tmp_path) == before
    replay = cli("replay", "--db", str(source), cwd=tmp_path)  # the same error as everywhere else
    assert replay.stderr == result.stderr


@pytest.mark.process
def test_backup_reads_agentcast_db_by_default_and_reports_a_bad_target(tmp_path):
    prefill(tmp_path / "agentcast.db", 10)
    ok = cli("backup", "--to", "copy.db", cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("agentcast.db -> copy.db: 10 events"), ok
    for target, expected in [(tmp_path / "no-such-dir" / "c.db", "no such directory"),
                             (tmp_path, "is a directory"),
                             (tmp_path / "agentcast.db", "is the log being copied")]:
        result = cli("backup", "--to", str(target), "--force", cwd=tmp_path)
        assert result.returncode == 1, result
        assert_one_line_error(result.stderr, expected)


def test_backup_refuses_a_target_with_a_wal_of_its_own(tmp_path):
    prefill(tmp_path / "a.db", 10)
    target = tmp_path / "b.db"
    Path(f"{target}-wal").write_bytes(b"the WAL of another database")
    with pytest.raises(BackupError, match="b.db-wal exists"):
        backup(tmp_path / "a.db", target, replace=True)
    assert not target.exists()


def test_a_failed_backup_leaves_no_partial_copy_and_the_target_as_it_was(tmp_path):
    prefill(tmp_path / "a.db", 3000)
    target = tmp_path / "b.db"
    target.write_bytes(b"the previous backup")

    def interrupted(copied: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backup(tmp_path / "a.db", target, replace=True, progress=interrupted, pages_per_step=8)
    assert target.read_bytes() == b"the previous backup"
    assert leftovers(tmp_path, "b.db") == []
    with pytest.raises(TargetExists):
        backup(tmp_path / "a.db", target)
    with pytest.raises(MissingEventLog):
        backup(tmp_path / "none.db", tmp_path / "c.db")
    with pytest.raises(NotAnEventLog):
        backup(target, tmp_path / "c.db")
    # (a read-only reader of a WAL log may leave the source's -wal/-shm, as `agentcast replay` does)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("a.db-")) == ["a.db", "b.db"]


def test_backup_prints_progress_for_a_big_log(tmp_path, monkeypatch, capsys):
    from agentcast.transport import cli as cli_module

    prefill(tmp_path / "a.db", 3000)
    monkeypatch.setattr(cli_module, "BACKUP_PROGRESS_FROM_BYTES", 100_000)  # "big" for this test
    monkeypatch.setattr(store_backup, "PAGES_PER_STEP", 8)
    assert cli_module.main(["backup", "--db", str(tmp_path / "a.db"), "--to", str(tmp_path / "b.db")]) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines and all(line.startswith("agentcast backup: ") for line in lines), err
    percents = [int(line.split(": ")[1].split("%")[0]) for line in lines]
    assert percents == sorted(set(percents)) and percents[-1] == 100 and len(percents) >= 5, percents
    assert "MiB)" in lines[-1] and "3,000 events" in out

    small = tmp_path / "small.db"
    prefill(small, 10)
    assert cli_module.main(["backup", "--db", str(small), "--to", str(tmp_path / "s.db")]) == 0
    assert capsys.readouterr().err == ""  # under the threshold: no progress lines
    assert os.stat(tmp_path / "s.db").st_mode & 0o777 == 0o600
