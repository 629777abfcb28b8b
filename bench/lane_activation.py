#!/usr/bin/env python3
"""How long activating a lane takes: rebuilding one user's memory from a 100,000-event history,
without a snapshot (a full fold) and from a snapshot with up to SNAPSHOT_EVERY events after it.

    python bench/lane_activation.py [--events 100000] [--runs 20]

Prints one JSON line (milliseconds, median of the runs). Target (issue 3): < 20 ms with snapshots.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from agentcast.actors._agent import SNAPSHOT_EVERY
from agentcast.store import AgentAnswered, EventLog, UserSaid


def timed(fn, runs):
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(samples), 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "lane.db"
        log = EventLog.open(db)
        turns = args.events // 2
        t = time.perf_counter()
        for start in range(0, turns, 1000):
            log.append([[UserSaid("a", "long", "2026-01-01T00:00:00.000Z", f"message {i} about the weather"),
                         AgentAnswered("a", "long", "2026-01-01T00:00:00.000Z", f"You said: message {i}")]
                        for i in range(start, min(turns, start + 1000))])
        fill_s = time.perf_counter() - t
        reader = EventLog.open(db, readonly=True)
        full = timed(lambda: reader.restore("a", "long"), max(3, args.runs // 4))
        # A lane snapshots every SNAPSHOT_EVERY events: the worst case folds just under that many.
        behind = SNAPSHOT_EVERY - 2
        snap = reader.memory("a", "long", until_seq=reader.last_seq() - behind)
        log.append([], snapshots=[snap])
        worst = timed(lambda: reader.restore("a", "long"), args.runs)
        memory, folded = reader.restore("a", "long")
        assert folded == behind and memory == reader.memory("a", "long")
        print(json.dumps({
            "events": turns * 2, "fill_events_per_s": round(turns * 2 / fill_s),
            "activate_full_fold_ms": full, "activate_from_snapshot_ms": worst,
            "folded_after_snapshot": folded, "snapshot_every": SNAPSHOT_EVERY,
        }))
        reader.close()
        log.close()


if __name__ == "__main__":
    main()
