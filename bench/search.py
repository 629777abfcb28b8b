#!/usr/bin/env python3
"""How fast a memory search is on a big log: `EventLog.search` scoped to one user, 1,000,000 messages
across 1,000 users, with rare, common ("the and you"), mixed and whole-sentence queries.

Builds the log (or reuses one with --db; a new --db path is built and kept), then times the very
call the server makes for `search_memory` with `use_long_term` (and for a chat's recall: the whole
message as the query) on a read-only connection, for random users. Prints p50/p95/p99/max per kind
of query, then one JSON line. Target (issue 5): p95 <= 10 ms for every kind.

    python bench/search.py [--messages 1000000] [--users 1000] [--queries 300] [--db PATH]

The text is drawn from a Zipf-like vocabulary (rank r has weight 1/r): the commonest words ("the",
"and", "you", ...) are in most messages, the rarest in a handful. Building uses the store's own
append path (`EventLog.append`, 20,000 events per transaction), so the file is exactly what a
server writes; `agentcast replay verify --db PATH` checks it.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source tree without installing

from agentcast.store import AgentAnswered, EventLog, UserSaid  # noqa: E402
from agentcast.store._schema import sqlite3  # noqa: E402

AGENT = "my_agent"
BATCH = 20_000  # events per append (one transaction)
#: The commonest words, most frequent first; the rest of the vocabulary is made-up words.
COMMON = ("the and you to of a i it is that in my for me what on this with your have be do are "
          "was not can about but so just like how know at if we they all would think get from "
          "there one when out will as an or time".split())
VOCABULARY = 30_000
RECALL = 5  # hits a search asks for (the default `search_memory` limit and the agent's recall)


def vocabulary(rng: random.Random) -> list[str]:
    """COMMON, then made-up pronounceable words (distinct), VOCABULARY in all."""
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    words = list(COMMON)
    seen = set(words)
    while len(words) < VOCABULARY:
        w = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def sentences(rng: random.Random, words: list[str], count: int, cum: list[float]) -> list[str]:
    """`count` messages of 4..24 words drawn Zipf-like from `words`."""
    lengths = [rng.randint(4, 24) for _ in range(count)]
    drawn = rng.choices(words, cum_weights=cum, k=sum(lengths))
    out, i = [], 0
    for n in lengths:
        out.append(" ".join(drawn[i:i + n]))
        i += n
    return out


def build(path: Path, messages: int, users: int, seed: int) -> float:
    """Fill `path` with `messages` messages (user message + answer turns, round-robin over users)."""
    rng = random.Random(seed)
    words = vocabulary(rng)
    cum, total = [], 0.0
    for rank in range(1, len(words) + 1):
        total += 1.0 / rank
        cum.append(total)
    started = time.perf_counter()
    with EventLog.open(path) as log:
        written = 0
        while written < messages:
            n = min(BATCH, messages - written)
            texts = sentences(rng, words, n, cum)
            batch = []
            for k, text in enumerate(texts):
                i = written + k
                turn = i // 2
                user = f"user{turn % users}"
                at = f"2026-01-01T{(turn // 3600) % 24:02d}:{(turn // 60) % 60:02d}:{turn % 60:02d}.{i % 1000:03d}Z"
                if i % 2 == 0:
                    batch.append(UserSaid(AGENT, user, at, text))
                else:
                    batch.append(AgentAnswered(AGENT, user, at, text))
            log.append([batch])
            written += n
            print(f"\rbuilt {written:,} messages", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return time.perf_counter() - started


def percentiles(samples: list[float]) -> dict:
    s = sorted(samples)

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))], 2)

    return {"n": len(s), "p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": round(s[-1], 2),
            "mean": round(statistics.fmean(s), 2)}


def queries(rng: random.Random, words: list[str], kind: str, cum: list[float]) -> str:
    if kind == "rare":  # a word from the long tail
        return rng.choice(words[5_000:])
    if kind == "medium":
        return rng.choice(words[200:2_000])
    if kind == "common":
        return "the and you"
    if kind == "common_one":
        return "the"
    if kind == "mixed":  # two common words, two from the middle, one rare
        return " ".join([rng.choice(COMMON[:10]), rng.choice(COMMON[10:]), rng.choice(words[200:2_000]),
                         rng.choice(words[200:2_000]), rng.choice(words[5_000:])])
    if kind == "sentence":  # a chat message, as a turn's recall searches with it
        return sentences(rng, words, 1, cum)[0]
    raise ValueError(kind)


KINDS = ("rare", "medium", "common", "common_one", "mixed", "sentence")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--queries", type=int, default=300, help="timed queries of each kind")
    parser.add_argument("--db", help="reuse this log (built here first if absent, and kept)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args()
    tmp = None
    if args.db:
        db = Path(args.db)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="agentcast-bench-")
        db = Path(tmp.name) / "search.db"
    build_seconds = None
    if not db.exists():
        build_seconds = build(db, args.messages, args.users, args.seed)
    else:
        EventLog.open(db).close()  # migrate a log built by an older version, as `agentcast serve` would
    rng = random.Random(args.seed + 1)
    words = vocabulary(random.Random(args.seed))
    cum, total = [], 0.0
    for rank in range(1, len(words) + 1):
        total += 1.0 / rank
        cum.append(total)
    results = {}
    with EventLog.open(db, readonly=True) as log:
        (messages,) = log._conn.execute(
            "SELECT count(*) FROM events WHERE type IN ('user_message', 'agent_message')").fetchone()
        (users,) = log._conn.execute("SELECT count(DISTINCT user) FROM events").fetchone()
        for _ in range(20):  # warm the page cache
            log.search(AGENT, f"user{rng.randrange(users)}", "the and you", RECALL)
        for kind in args.kinds.split(","):
            samples, hits = [], 0
            for _ in range(args.queries):
                user = f"user{rng.randrange(users)}"
                q = queries(rng, words, kind, cum)
                t = time.perf_counter()
                found = log.search(AGENT, user, q, RECALL)
                samples.append((time.perf_counter() - t) * 1000)
                hits += len(found)
            results[kind] = percentiles(samples) | {"hits_per_query": round(hits / args.queries, 2)}
            r = results[kind]
            print(f"{kind:>11}: p50 {r['p50']:7.2f} ms  p95 {r['p95']:7.2f} ms  p99 {r['p99']:7.2f} ms  "
                  f"max {r['max']:7.2f} ms  ({r['hits_per_query']} hits/query)")
    worst = max(r["p95"] for r in results.values())
    print(json.dumps({
        "benchmark": "search",
        "messages": messages,
        "users": users,
        "queries_per_kind": args.queries,
        "ms": results,
        "worst_p95_ms": worst,
        "target_p95_ms": 10,
        "ok": worst <= 10,
        "build_seconds": None if build_seconds is None else round(build_seconds, 1),
        "db_bytes": os.path.getsize(db),
        "load_average": os.getloadavg()[0],
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
