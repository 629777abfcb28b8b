#!/usr/bin/env python3
"""Sustained append throughput of the event log under concurrent lanes, through the real `Journal`
(group commit in a worker thread), with turns appended as the agent appends them.

Each lane is one user's agent lane: it appends a turn — its UserSaid and the AgentAnswered
answering it, in one `Journal.append`, as a chat turn does (`actors._turn.TurnRunner`) — waits for the commit, and appends
the next, for --seconds. Prints, per lane count: events/s, commits, mean events per commit and the
commit's p50/p99 latency (the store's `append` call in the writer thread), the process's CPU per
event and the part of it the writer thread spends in those calls, then one JSON line.
Target (issue 5): >= 20,000 events/s.

    python bench/append.py [--lanes 50,200,1000] [--seconds 10] [--synchronous NORMAL]

Each lane count gets a fresh log in a temporary directory; `--keep DIR` keeps them (to check
with `agentcast replay verify --db DIR/append-LANES.db`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source tree without installing

from agentcast.actors import Journal  # noqa: E402
from agentcast.store import AgentAnswered, EventLog, UserSaid  # noqa: E402
from agentcast.store._schema import sqlite3  # noqa: E402

AGENT = "my_agent"
WORDS = ("the and you to of a i it is that in my for me what on this with your have be do are was not "
         "can about but so just like how know weather tomorrow garden recipe train ticket meeting "
         "birthday present music piano lesson holiday budget").split()


class TimedLog:
    """The writer `EventLog`, with each `append` (one transaction) timed."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self.latencies: list[float] = []
        self.cpu: list[float] = []  # the writer thread's CPU time of each `append`

    def append(self, batches, snapshots=()):
        t, c = time.perf_counter(), time.thread_time()
        try:
            return self._log.append(batches, snapshots)
        finally:
            self.cpu.append(time.thread_time() - c)
            self.latencies.append(time.perf_counter() - t)


def texts(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choices(WORDS, k=rng.randint(5, 25))) for _ in range(n)]


async def run(db: Path, lanes: int, seconds: float, synchronous: str) -> dict:
    log = EventLog.open(db, synchronous=synchronous)
    timed = TimedLog(log)
    journal = Journal(timed, lambda: EventLog.open(db, readonly=True))
    rng = random.Random(lanes)
    said, answers = texts(rng, 1000), texts(rng, 1000)
    stop = trio.Event()
    turns = 0

    async def lane(n: int) -> None:
        nonlocal turns
        user = f"user{n}"
        i = 0
        while not stop.is_set():
            at = "2026-01-01T00:00:00.000Z"
            rid = f"r{n}-{i}"
            await journal.append([
                UserSaid(AGENT, user, at, said[(n + i) % 1000], rid, rid),
                AgentAnswered(AGENT, user, at, answers[(n * 7 + i) % 1000], rid, rid),
            ])
            turns += 1
            i += 1

    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        async with trio.open_nursery() as lanes_nursery:
            for n in range(lanes):
                lanes_nursery.start_soon(lane, n)
            await trio.sleep(0.5)  # warm-up: every lane has appended, the file has grown a little
            events0, commits0, lat0 = journal.events_appended, journal.commits, len(timed.latencies)
            cpu0, t0 = time.process_time(), time.perf_counter()
            await trio.sleep(seconds)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            events, commits = journal.events_appended - events0, journal.commits - commits0
            lat = sorted(timed.latencies[lat0:])
            writer_cpu = sum(timed.cpu[lat0:])
            stop.set()
        nursery.cancel_scope.cancel()
    log.close()

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else 0.0

    return {
        "lanes": lanes,
        "seconds": round(elapsed, 2),
        "events_per_s": round(events / elapsed),
        "commits": commits,
        "events_per_commit": round(events / max(commits, 1), 1),
        "commit_p50_ms": pct(0.5),
        "commit_p99_ms": pct(0.99),
        "cpu_per_event_us": round(cpu / max(events, 1) * 1e6, 1),
        "writer_cpu_per_event_us": round(writer_cpu / max(events, 1) * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", default="50,200,1000", help="comma-separated lane counts, one run each")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    parser.add_argument("--keep", help="keep the logs in this directory")
    args = parser.parse_args()
    out = []
    with tempfile.TemporaryDirectory(prefix="agentcast-bench-") as tmp:
        where = Path(args.keep or tmp)
        where.mkdir(parents=True, exist_ok=True)
        for lanes in (int(x) for x in args.lanes.split(",")):
            db = where / f"append-{lanes}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            r = trio.run(run, db, lanes, args.seconds, args.synchronous)
            out.append(r)
            print(f"{lanes:>5} lanes: {r['events_per_s']:>7,} events/s  {r['commits']:>6} commits  "
                  f"{r['events_per_commit']:>6} events/commit  commit p50 {r['commit_p50_ms']} ms "
                  f"p99 {r['commit_p99_ms']} ms  {r['cpu_per_event_us']} µs CPU/event "
                  f"({r['writer_cpu_per_event_us']} in the writer's appends)")
    print(json.dumps({
        "benchmark": "append",
        "synchronous": args.synchronous,
        "runs": out,
        "min_events_per_s": min(r["events_per_s"] for r in out),
        "target_events_per_s": 20_000,
        "load_average": os.getloadavg()[0],
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }))


if __name__ == "__main__":
    main()
