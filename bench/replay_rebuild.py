"""How fast `agentcast replay verify` rebuilds memory: events folded per second over a whole log.

Builds a log of EVENTS events (default 200,000) in a temporary directory with `EventLog.append`
in batches, then runs `store.rebuild_all` — the one-pass rebuild that `verify` times — on a
read-only connection, RUNS times, and prints one JSON line (the median run, and the whole verify).

    python bench/replay_rebuild.py [--events 200000] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source tree without installing

from agentcast.store import AgentAnswered, EventLog, UserClearedMemory, UserSaid, rebuild_all, verify  # noqa: E402
from agentcast.store._schema import sqlite3  # noqa: E402

AGENTS = ("my_agent", "assistant", "multi_user_agent", "helper")
USERS = 250  # 4 agents x 250 users = 1,000 (agent, user) streams
BATCH = 1000  # events per append (one transaction)
WORDS = "the quick brown fox jumps over a lazy dog while my favourite colour is turquoise and tea is hot".split()


def build(path: Path, events: int) -> None:
    """`events` events: turns (a user message and its answer) round-robin over the streams; every
    1,000th event is a short-term clear and every 50,000th a long-term one (which redacts and re-indexes)."""
    with EventLog.open(path) as log:
        written = 0
        while written < events:
            batch = []
            while len(batch) < BATCH and written + len(batch) < events:
                n = written + len(batch)
                agent, user = AGENTS[n % len(AGENTS)], f"user{(n // len(AGENTS)) % USERS}"
                second = f"2026-11-29T{(n // 3600) % 24:02d}:{(n // 60) % 60:02d}:{n % 60:02d}.{n % 1000:03d}Z"
                text = " ".join(WORDS[(n + i) % len(WORDS)] for i in range(12)) + f" #{n}"
                if n and n % 50_000 == 0:
                    batch.append(UserClearedMemory(agent, user, second, True))
                elif n and n % 1000 == 0:
                    batch.append(UserClearedMemory(agent, user, second, False))
                elif n % 2 == 0:
                    batch.append(UserSaid(agent, user, second, text, f"r{n}"))
                else:
                    batch.append(AgentAnswered(agent, user, second, "You said: " + text, f"r{n}"))
            log.append([batch])
            written += len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentcast-bench-") as tmp:
        db = Path(tmp) / "bench.db"
        started = time.perf_counter()
        build(db, args.events)
        build_seconds = time.perf_counter() - started
        runs = []
        with EventLog.open(db, readonly=True) as log:
            for _ in range(args.runs):
                with log.snapshot():
                    rebuilt = rebuild_all(log)
                assert rebuilt.events == args.events and not rebuilt.gaps, rebuilt
                runs.append(rebuilt.seconds)
            started = time.perf_counter()
            report = verify(log)
            verify_seconds = time.perf_counter() - started
        seconds = statistics.median(runs)
        print(json.dumps({
            "benchmark": "replay_rebuild",
            "events": rebuilt.events,
            "streams": len(rebuilt.memories),
            "runs": args.runs,
            "rebuild_seconds": round(seconds, 3),
            "events_per_second": round(rebuilt.events / seconds),
            "verify_seconds": round(verify_seconds, 3),
            "verify_ok": report.ok,
            "build_seconds": round(build_seconds, 1),
            "db_bytes": os.path.getsize(db),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
        }))


if __name__ == "__main__":
    main()
