#!/usr/bin/env python3
"""Memory search on a big log with vectors: lexical, the vector leg alone, and hybrid including the query's
embedding with the local model, for random users of a 1,000,000-message, 1,000-user log.

    python bench/semantic/search.py [--messages 1000000] [--users 1000] [--heavy 10000] [--queries 300] [--db PATH]

Builds the log with bench/search.py's builder (Zipf-like text, `EventLog.append`), plus one user with `--heavy`
messages of their own; then stores one vector per message with `EventLog.add_vectors` (the embedding worker's
write path: int8 rows per (agent, user), merged as it merges them), `--vector-batch` messages a call. The vectors
are random unit vectors of the local model's 384 dimensions (the scan's cost does not depend on what they say;
embedding a million messages with the real model would take hours here) stored under the local model's name, so
that the real model's query vectors are scanned against them. `--db` keeps the built log and reuses it.

Timed, on a read-only connection, per query (wall and CPU time of this process, milliseconds):

- lexical: `store.search_memory` without a vector (what `search_memory` does without an embedder: BM25 with
  the whole query), with bench/search.py's "sentence" queries (a chat message, as a turn's recall searches);
- vector leg: `EventLog.nearest(..., 50, centred=True)`, the semantic leg's read and scan;
- hybrid: the query embedded with `LocalEmbedder` (one onnxruntime thread) + `store.search_memory` with both
  legs (the vector leg, BM25 over the exact tokens, BM25 over what is not embedded); the queries are questions
  of the labelled set (recall_set.json) with two words of the log's vocabulary, a name and a number added, so
  that every leg runs (their length in tokens is printed);
- the heavy user's vector leg and hybrid search, separately.

Prints p50/p95/p99 per kind, bytes per vector, and one JSON line. Targets (issue 16): lexical p95 <= 10 ms,
hybrid p95 <= 25 ms including the query's embedding.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the scan on one core, as in a reader thread of the server

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run from a source tree without installing

import numpy as np  # noqa: E402

from agentcast.actors import LocalEmbedder  # noqa: E402
from agentcast.store import EventLog, MessageVector, QueryVector, UserSaid, search_memory  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_search", HERE.parent / "search.py")
lexical_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lexical_bench)
percentiles = lexical_bench.percentiles  # the same p50/p95/p99 as bench/search.py's

AGENT = lexical_bench.AGENT
LIMIT = 5
HEAVY = "heavy"


def add_heavy(path: Path, messages: int, seed: int) -> None:
    rng = random.Random(seed)
    words = lexical_bench.vocabulary(random.Random(seed))
    cum, total = [], 0.0
    for rank in range(1, len(words) + 1):
        total += 1.0 / rank
        cum.append(total)
    with EventLog.open(path) as log:
        for start in range(0, messages, 5000):
            texts = lexical_bench.sentences(rng, words, min(5000, messages - start), cum)
            log.append([[UserSaid(AGENT, HEAVY, "2026-01-02T00:00:00.000Z", t) for t in texts]])


def store_vectors(path: Path, model: str, dimensions: int, batch: int, seed: int) -> float:
    """One random unit vector per message not embedded yet, written through `add_vectors`, `batch` at a time."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    with EventLog.open(path) as log:
        cursor = log.embedding_cursor(AGENT, model)
        done = 0
        while True:
            found = log.unembedded([AGENT], cursor, batch)
            vectors = rng.standard_normal((len(found.texts), dimensions)).astype(np.float32)
            log.add_vectors(model, dimensions, [MessageVector(t.seq, t.agent_id, t.user, v)
                                                for t, v in zip(found.texts, vectors)], {AGENT: (cursor, found.scanned_to)})
            cursor = found.scanned_to
            done += len(found.texts)
            print(f"\rvectors stored: {done:,}", end="", file=sys.stderr, flush=True)
            if len(found.texts) < batch:
                break
    print(file=sys.stderr)
    return time.perf_counter() - started


def timed(fn) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--heavy", type=int, default=10_000, help="messages of one more user")
    parser.add_argument("--queries", type=int, default=300, help="timed queries of each kind")
    parser.add_argument("--vector-batch", type=int, default=20_000, help="vectors per add_vectors call when building")
    parser.add_argument("--db", help="reuse this log (built here first if absent, and kept)")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    tmp = None
    if args.db:
        db = Path(args.db)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="agentcast-bench-")
        db = Path(tmp.name) / "semantic.db"
    embedder = LocalEmbedder()
    built = {}
    if not db.exists():
        built["events_seconds"] = round(lexical_bench.build(db, args.messages, args.users, args.seed), 1)
        add_heavy(db, args.heavy, args.seed + 7)
    size_before = os.path.getsize(db)
    with EventLog.open(db, readonly=True) as log:
        missing = log.count_unembedded([AGENT], log.embedding_cursor(AGENT, embedder.name))
    if missing:
        built["vectors_seconds"] = round(store_vectors(db, embedder.name, embedder.dimensions, args.vector_batch,
                                                       args.seed), 1)
    EventLog.open(db).close()  # a writable open truncates the WAL: the size below is the file's
    rng = random.Random(args.seed + 1)
    words = lexical_bench.vocabulary(random.Random(args.seed))
    cum, total = [], 0.0
    for rank in range(1, len(words) + 1):
        total += 1.0 / rank
        cum.append(total)
    results: dict[str, dict] = {}
    with EventLog.open(db, readonly=True) as log:
        vectors = sum(count for (count,) in log._conn.execute("SELECT count FROM vector_blocks"))
        rows = log._conn.execute("SELECT count(*) FROM vector_blocks").fetchone()[0]
        vector_bytes = log._conn.execute("SELECT sum(length(block)) FROM vector_blocks").fetchone()[0]
        (users,) = log._conn.execute("SELECT count(DISTINCT user) FROM events WHERE user != ?", (HEAVY,)).fetchone()

        def sentence() -> str:
            return lexical_bench.sentences(rng, words, 1, cum)[0]

        questions = [q["q"] for u in json.loads((HERE / "recall_set.json").read_text())["users"] for q in u["questions"]]

        def with_exact() -> str:
            """A question of the labelled set, with a word of the log's vocabulary, a name and a number: every leg of
            the hybrid search runs (the exact tokens' BM25 finds the name and the number in no message)."""
            zipf = rng.choices(words[200:2_000], k=2)
            return f"{rng.choice(questions)} {' '.join(zipf)} {rng.choice(['Lena', 'Tomas', 'Mia'])} {rng.randint(1, 28)}"

        for _ in range(20):  # warm the page cache and the model
            log.search(AGENT, f"user{rng.randrange(users)}", "the and you", LIMIT)
            embedder.embed_sync([sentence()])

        def run(kind: str, make_query, search, user_of=lambda: f"user{rng.randrange(users)}") -> None:
            walls, cpus = [], []
            for _ in range(args.queries):
                user, query = user_of(), make_query()
                wall, cpu, _ = timed(lambda: search(user, query))
                walls.append(wall)
                cpus.append(cpu)
            results[kind] = {"wall": percentiles(walls), "cpu": percentiles(cpus)}
            w, c = results[kind]["wall"], results[kind]["cpu"]
            print(f"{kind:>30}: wall p50 {w['p50']:6.2f}  p95 {w['p95']:6.2f}  p99 {w['p99']:6.2f} ms | "
                  f"CPU p50 {c['p50']:6.2f}  p95 {c['p95']:6.2f} ms")

        def vector_leg(user: str, query: str) -> object:
            q = rng_vectors.standard_normal(embedder.dimensions)
            return log.nearest(AGENT, user, embedder.name, q, 50, centred=True)

        def hybrid(user: str, query: str) -> object:
            (vector,) = embedder.embed_sync([query])
            return search_memory(log, AGENT, user, query, LIMIT, semantic=QueryVector(embedder.name, vector))

        rng_vectors = np.random.default_rng(args.seed + 2)
        run("lexical (sentence)", sentence, lambda u, q: search_memory(log, AGENT, u, q, LIMIT))
        run("query embedding alone", with_exact, lambda u, q: embedder.embed_sync([q]))
        lengths = sorted(len(embedder._tokenizer.encode(with_exact()).ids) for _ in range(200))
        results["hybrid query tokens"] = {"median": statistics.median(lengths), "p90": lengths[179], "max": lengths[-1]}
        print(f"{'hybrid queries':>30}: tokens median {statistics.median(lengths):g}, p90 {lengths[179]}, max {lengths[-1]}")
        run("vector leg (read + scan)", sentence, vector_leg)
        run("hybrid incl. query embedding", with_exact, hybrid)
        run(f"vector leg, {args.heavy:,}-message user", sentence, vector_leg, lambda: HEAVY)
        run(f"hybrid, {args.heavy:,}-message user", with_exact, hybrid, lambda: HEAVY)
    print(f"{vectors:,} vectors in {rows:,} rows: {vector_bytes / vectors:.1f} B per vector in their blocks; the file "
          f"{os.path.getsize(db) / 2**20:,.0f} MiB ({(os.path.getsize(db) - size_before) / 2**20:+,.0f} MiB for the "
          "vectors when built here)" if vectors else "no vectors")
    print(json.dumps({
        "benchmark": "semantic search", "users": users, "vectors": vectors, "rows": rows,
        "bytes_per_vector": round(vector_bytes / vectors, 1) if vectors else None, "db_bytes": os.path.getsize(db),
        "queries_per_kind": args.queries, "ms": results, "built": built,
        "targets_p95_ms": {"lexical": 10, "hybrid": 25},
        "load_average": os.getloadavg()[0], "python": platform.python_version(),
    }))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
