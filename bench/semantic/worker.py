#!/usr/bin/env python3
"""The embedding worker's throughput: messages embedded and stored per CPU-second, the whole path (read from the
log, embed with the local model, write the vectors and the cursor through the journal's writer thread).

    python bench/semantic/worker.py [--messages 3000] [--users 100] [--repeat 2]

For each length distribution, a fresh log of `--messages` messages over `--users` users is appended, then one
`EmbeddingWorker` with the real `LocalEmbedder` (one onnxruntime thread, batches of 32) embeds it from seq 0
until caught up, as a server does for a log it has just been given an embedder for (and as it does live, a
batch at a time). Timed: wall seconds and the process's CPU seconds (every thread: per core). Also timed with a
free embedder (vectors made by numpy, no model), which is the worker's own cost: reading, the int8 rows and
their merges, the transactions.

Distributions (tokens counted with the model's tokenizer, [CLS]/[SEP] included): "chat lines", the labelled
set's messages as they are (bench/semantic/recall_set.json: facts, near misses, chatter); "x3", three of them
joined; "x8", eight joined. Prints one table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run from a source tree without installing

import numpy as np  # noqa: E402
import trio  # noqa: E402

from agentcast.actors import EmbeddingWorker, Journal, LocalEmbedder  # noqa: E402
from agentcast.store import EventLog, UserSaid, verify  # noqa: E402

AGENT = "bench_agent"


class FreeEmbedder:
    """Vectors without a model (random, 384 dimensions): the worker's cost without the embedding's."""

    name = "free:384"
    dimensions = 384

    def __init__(self) -> None:
        self._rng = np.random.default_rng(1)

    async def embed(self, texts, *, urgent: bool = False):
        return self._rng.standard_normal((len(texts), self.dimensions)).astype(np.float32)


def texts_of(kind: str, base: list[str], count: int, rng: random.Random) -> list[str]:
    per = {"chat lines": 1, "x3": 3, "x8": 8}[kind]
    return [" ".join(rng.sample(base, per)) if per > 1 else base[i % len(base)] for i in range(count)]


async def embed_log(db: Path, embedder) -> dict:
    log = EventLog.open(db)
    try:
        journal = Journal(log, lambda: EventLog.open(db, readonly=True))
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            worker = EmbeddingWorker(embedder, [AGENT], journal)
            wall, cpu = time.perf_counter(), time.process_time()
            await nursery.start(worker.run)
            await worker.caught_up()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            nursery.cancel_scope.cancel()
        assert verify(log).ok
    finally:
        log.close()
    return {"messages": worker.embedded, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "per_cpu_second": round(worker.embedded / cpu, 1), "ms_cpu_per_message": round(1000 * cpu / worker.embedded, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each (the best is kept)")
    parser.add_argument("--kinds", default="chat lines,x3,x8")
    args = parser.parse_args()
    data = json.loads((HERE / "recall_set.json").read_text())
    base = [t for u in data["users"] for t in u["facts"] + u.get("near_misses", [])] + data["chatter"]
    local = LocalEmbedder()
    rng = random.Random(16)
    results = {}
    for kind in args.kinds.split(","):
        texts = texts_of(kind, base, args.messages, rng)
        lengths = sorted(len(local._tokenizer.encode(t).ids) for t in texts)
        row = {"tokens": {"min": lengths[0], "median": statistics.median(lengths), "mean": round(statistics.mean(lengths), 1),
                          "p90": lengths[int(0.9 * (len(lengths) - 1))], "max": lengths[-1]}}
        for name, make in (("local", lambda: local), ("free", FreeEmbedder)):
            best = None
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    db = Path(tmp) / "w.db"
                    with EventLog.open(db) as log:
                        for start in range(0, len(texts), 500):
                            log.append([[UserSaid(AGENT, f"user{i % args.users}", "2026-12-01T00:00:00.000Z", texts[i])
                                         for i in range(start, min(start + 500, len(texts)))]])
                    run = trio.run(embed_log, db, make())
                if best is None or run["cpu_s"] < best["cpu_s"]:
                    best = run
            row[name] = best
        results[kind] = row
        t, lo, fr = row["tokens"], row["local"], row["free"]
        print(f"{kind:>10}: tokens median {t['median']:g} mean {t['mean']} p90 {t['p90']} max {t['max']} | "
              f"worker with the local model {lo['per_cpu_second']:,.0f} msg per CPU-second ({lo['ms_cpu_per_message']} ms "
              f"each; wall {lo['messages'] / lo['wall_s']:,.0f} msg/s) | without a model {fr['per_cpu_second']:,.0f} "
              f"msg per CPU-second ({fr['ms_cpu_per_message']} ms each)", flush=True)
    print(json.dumps({"benchmark": "embedding worker", "messages": args.messages, "users": args.users,
                      "results": results, "load_average": os.getloadavg()[0], "python": platform.python_version()}))


if __name__ == "__main__":
    main()
