#!/usr/bin/env python3
"""Recall of memory search on the labelled set (recall_set.json): lexical (today's `EventLog.search`),
vector-only and hybrid (reciprocal rank fusion), and the local embedder's throughput.

    python bench/semantic/recall.py [--set PATH] [--misses] [--repeat 3]

Needs the semantic extra (`pip install -e '.[semantic]'`). Every user's memory (20 facts, the
user's near misses, 50 chatter lines, in a fixed shuffled order) is appended as `UserSaid`
events to a real `EventLog` in a temporary SQLite file; the messages are embedded with the
default `LocalEmbedder` (one onnxruntime thread) and packed per user into one vector block
(`store._vectors`, int8). Each question is then ranked within its own user's memory by:

- lexical: `EventLog.search` with the question as it is (BM25 over an OR of its words);
- vector: cosine top-k over the user's block (and over the float32 vectors, for reference), also
  centred on the mean of the user's vectors (`store._vectors.mean_vector`, `top_k(center=)`);
- hybrid: RRF (k=60) of the vector ranking and `EventLog.search` given one of three lexical
  inputs: every word (the question as it is), the words left after dropping stopwords, or only
  the exact tokens (names, numbers, codes; `store._fusion.exact_terms`), which is what
  `store._fusion.lexical_query` gives; with plain and with centred vectors;
- shipped: `store.search_memory` itself, over the vectors stored with `EventLog.add_vectors` (the
  int8 rows the embedding worker writes): what `search_memory` and a chat's recall rank with; and the
  same without its question demotion (`store._search.QUESTION_DEMOTION` set to 0), to show what it adds.

Reworded R@5 is also given per half of the users (odd and even numbers): a setting chosen by looking at
one half is judged on the other.

Prints recall@1 and recall@5 per kind of question ("reworded": no content word shared with the
answer; "exact": a name, number or code shared), then the embedder's throughput: messages per
CPU-second (the process's CPU time, all threads: per core) for the set's own messages and for
longer ones made by joining them, with each stream's length distribution in tokens, best of
--repeat runs. Ends with one JSON line of every figure.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run from a source tree without installing

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's scan on one core, as in the server's worker

from agentcast.actors._embedders import LocalEmbedder  # noqa: E402
from agentcast.store import EventLog, MessageVector, QueryVector, UserSaid, search_memory  # noqa: E402
from agentcast.store._fusion import content_terms, exact_terms, lexical_query, reciprocal_rank_fusion  # noqa: E402
from agentcast.store import _search, _vectors  # noqa: E402

AGENT = "bench_agent"
DEPTH = 50  # how many results each leg gives the fusion
AT = "2026-12-01T12:00:00.000Z"
#: The ranking agentcast ships: `store.search_memory` over the vectors stored by `EventLog.add_vectors`.
SHIPPED = "agentcast search_memory (hybrid, as shipped)"


def load_memories(log: EventLog, data: dict, seed: int) -> dict[str, dict]:
    """Append every user's memory to `log`; per user: seqs and texts in log order, and the seq of each fact."""
    rng = random.Random(seed)
    chatter = data.get("chatter", data.get("distractors", []))  # the research note's set calls them distractors
    memories = {}
    for user in data["users"]:
        items = ([("fact", i, t) for i, t in enumerate(user["facts"])]
                 + [("near", i, t) for i, t in enumerate(user.get("near_misses", []))]
                 + [("chatter", i, t) for i, t in enumerate(chatter)])
        rng.shuffle(items)
        recorded = log.append([[UserSaid(AGENT, user["user"], AT, text) for _, _, text in items]])[0]
        memories[user["user"]] = {
            "seqs": [r.seq for r in recorded],
            "texts": [text for _, _, text in items],
            "fact_seq": {i: r.seq for (kind, i, _), r in zip(items, recorded) if kind == "fact"},
        }
    return memories


def token_lengths(embedder: LocalEmbedder, texts: list[str]) -> list[int]:
    return [len(embedder._tokenizer.encode(t).ids) for t in texts]  # with [CLS] and [SEP], as the model sees them


def distribution(lengths: list[int]) -> str:
    ordered = sorted(lengths)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return (f"{len(lengths)} messages, tokens min {ordered[0]} / median {statistics.median(ordered):g} / "
            f"mean {statistics.mean(ordered):.1f} / p90 {p90} / max {ordered[-1]}")


def throughput(embedder: LocalEmbedder, texts: list[str], repeat: int) -> dict:
    """Messages per CPU-second embedding `texts` in one call (as a worker catching up would), best of `repeat`."""
    best_cpu = best_wall = float("inf")
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        embedder.embed_sync(texts)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    lengths = token_lengths(embedder, texts)
    return {"messages": len(texts), "cpu_s": round(best_cpu, 3), "wall_s": round(best_wall, 3),
            "per_cpu_second": round(len(texts) / best_cpu, 1), "ms_cpu_per_message": round(1000 * best_cpu / len(texts), 2),
            "tokens_mean": round(statistics.mean(lengths), 1), "tokens_median": statistics.median(lengths),
            "distribution": distribution(lengths)}


def joined(texts: list[str], per: int, rng: random.Random) -> list[str]:
    """Longer messages: `per` of `texts` joined, as many as there are texts."""
    return [" ".join(rng.sample(texts, per)) for _ in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", type=Path, default=HERE / "recall_set.json")
    parser.add_argument("--misses", action="store_true", help="list the questions each ranker misses at 5")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs (the best is kept)")
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    data = json.loads(args.set.read_text())

    cpu = time.process_time()
    embedder = LocalEmbedder()
    load_cpu = time.process_time() - cpu
    print(f"embedder {embedder.name} ({embedder.dimensions} dimensions, {embedder.threads} thread), "
          f"loaded in {load_cpu:.2f} s CPU (imports, sha256 of both files, session)")

    with tempfile.TemporaryDirectory() as tmp:
        log = EventLog.open(Path(tmp) / "recall.db")
        memories = load_memories(log, data, args.seed)

        # embed every memory (this is also the throughput run on the set's own messages)
        all_texts = [t for m in memories.values() for t in m["texts"]]
        rates = {"set": throughput(embedder, all_texts, args.repeat)}
        rng = random.Random(args.seed)
        rates["joined x3"] = throughput(embedder, joined(all_texts, 3, rng), args.repeat)
        rates["joined x8"] = throughput(embedder, joined(all_texts, 8, rng), args.repeat)

        blocks, floats = {}, {}
        stored = []
        for user, memory in memories.items():
            vectors = embedder.embed_sync(memory["texts"])
            blocks[user] = _vectors.pack(memory["seqs"], vectors)
            floats[user] = (memory["seqs"], vectors)
            stored.extend(MessageVector(seq, AGENT, user, v) for seq, v in zip(memory["seqs"], vectors))
        # the vectors stored as the embedding worker stores them, for the shipped search (`search_memory`)
        log.add_vectors(embedder.name, embedder.dimensions, stored, {AGENT: (0, log.last_seq())})

        questions = [(u["user"], q) for u in data["users"] for q in u["questions"]]
        query_cpu = []
        query_vectors = []
        for _, q in questions:
            cpu = time.process_time()
            query_vectors.append(embedder.embed_sync([q["q"]])[0])
            query_cpu.append(time.process_time() - cpu)

        def lexical(user: str, text: str) -> list[int]:
            return [hit.seq for hit in log.search(AGENT, user, text, DEPTH)] if text.strip() else []

        centers = {user: _vectors.mean_vector([block]) for user, block in blocks.items()}

        def vector(u, v, centred=False):
            return [s for s, _ in _vectors.top_k(v, [blocks[u]], DEPTH, center=centers[u] if centred else None)]

        rankers = {
            "lexical (EventLog.search)": lambda u, q, v: lexical(u, q),
            "vector (int8 blocks)": lambda u, q, v: vector(u, v),
            "vector (int8 blocks), centred on the user's mean": lambda u, q, v: vector(u, v, True),
            "vector (float32, reference)": lambda u, q, v: [
                floats[u][0][i] for i in sorted(range(len(floats[u][0])), key=lambda i: -float(floats[u][1][i] @ v))][:DEPTH],
        }

        def hybrid(gate, weight=1.0, centred=False):
            def rank(u, q, v):
                return [s for s, _ in reciprocal_rank_fusion([vector(u, v, centred), lexical(u, gate(q))], [1.0, weight])]
            return rank

        rankers["hybrid RRF, lexical: every word"] = hybrid(lambda q: q)
        rankers["hybrid RRF, lexical: every word, weight 0.5"] = hybrid(lambda q: q, 0.5)
        rankers["hybrid RRF, lexical: stopwords dropped"] = hybrid(lambda q: " ".join(content_terms(q)))
        rankers["hybrid RRF, lexical: stopwords dropped, weight 0.5"] = hybrid(lambda q: " ".join(content_terms(q)), 0.5)
        rankers["hybrid RRF, lexical: exact tokens only (lexical_query)"] = hybrid(lexical_query)
        rankers["hybrid RRF, centred vectors, lexical: stopwords dropped"] = hybrid(
            lambda q: " ".join(content_terms(q)), centred=True)
        rankers["hybrid RRF, centred vectors, lexical: exact tokens only"] = hybrid(lexical_query, centred=True)
        rankers["hybrid RRF, centred vectors, lexical: exact tokens only, weight 2"] = hybrid(lexical_query, 2.0, True)

        def shipped(u, q, v):
            found = search_memory(log, AGENT, u, q, DEPTH, semantic=QueryVector(embedder.name, v))
            return [hit.seq for hit in found.hits]

        rankers[SHIPPED] = shipped

        def shipped_without_demotion(u, q, v):
            demotion, _search.QUESTION_DEMOTION = _search.QUESTION_DEMOTION, 0.0
            try:
                return shipped(u, q, v)
            finally:
                _search.QUESTION_DEMOTION = demotion

        rankers["agentcast search_memory without the question demotion"] = shipped_without_demotion

        results = {}
        misses = {}
        scan_cpu = []
        for name, ranker in rankers.items():
            for (user, q), v in zip(questions, query_vectors):
                target = memories[user]["fact_seq"][q["fact"]]
                cpu = time.process_time()
                ranking = ranker(user, q["q"], v)
                if name == SHIPPED:
                    scan_cpu.append(time.process_time() - cpu)
                top = ranking[:5]
                results.setdefault(name, {}).setdefault(q["kind"], []).append((target in top[:1], target in top))
                if q["kind"] == "reworded":
                    half = "odd" if int("".join(c for c in user if c.isdigit()) or 0) % 2 else "even"
                    results[name].setdefault(f"reworded {half}", []).append((target in top[:1], target in top))
                if target not in top:
                    texts = dict(zip(memories[user]["seqs"], memories[user]["texts"]))
                    rank = ranking.index(target) + 1 if target in ranking else None
                    misses.setdefault(name, []).append(f"[{q['kind']}] {user} {q['q']!r}: rank {rank}, "
                                                       f"top {texts[top[0]] if top else '-'!r}")
        log.close()

    counts = {k: sum(q["kind"] == k for _, q in questions) for k in ("reworded", "exact")}
    print(f"\nset: {len(data['users'])} users x 20 facts, {sum(len(u.get('near_misses', [])) for u in data['users'])} near "
          f"misses, {len(data.get('chatter', data.get('distractors', [])))} chatter lines in every memory ({len(all_texts) // len(memories)} messages a user); "
          f"{counts['reworded']} reworded and {counts['exact']} exact questions\n")
    print("| ranker | reworded R@1 | reworded R@5 | R@5 odd users | R@5 even users | exact R@1 | exact R@5 |\n"
          "|---|---|---|---|---|---|---|")
    table = {}
    for name, kinds in results.items():
        row = {}
        for kind in ("reworded", "exact", "reworded odd", "reworded even"):
            hits = kinds.get(kind)
            if not hits:
                continue
            row[f"{kind}_r1"] = round(sum(a for a, _ in hits) / len(hits), 3)
            row[f"{kind}_r5"] = round(sum(b for _, b in hits) / len(hits), 3)
        table[name] = row
        print(f"| {name} | {row['reworded_r1']:.3f} | {row['reworded_r5']:.3f} | {row.get('reworded odd_r5', 0):.3f} | "
              f"{row.get('reworded even_r5', 0):.3f} | {row['exact_r1']:.3f} | {row['exact_r5']:.3f} |")
    if args.misses:
        for name, lines in misses.items():
            print(f"\nmissed at 5 by {name}:")
            for line in lines:
                print("  " + line)

    print("\nembedding throughput, local embedder, 1 onnxruntime thread, batches of "
          f"{embedder.batch_size} sorted by length (best of {args.repeat}):")
    for name, r in rates.items():
        print(f"  {name}: {r['per_cpu_second']:.0f} messages per CPU-second ({r['ms_cpu_per_message']:.2f} ms CPU each, "
              f"{r['cpu_s']:.2f} s CPU / {r['wall_s']:.2f} s wall); {r['distribution']}")
    ordered = sorted(query_cpu)
    print(f"one question embedded alone: p50 {1000 * statistics.median(ordered):.2f} ms CPU, "
          f"p95 {1000 * ordered[int(0.95 * (len(ordered) - 1))]:.2f} ms; hybrid ranking (scan + search + fusion) "
          f"p50 {1000 * statistics.median(scan_cpu):.2f} ms CPU (search_memory: two BM25 searches, the scan, fusion)")
    print(json.dumps({"recall": table, "throughput": rates, "query_embed_ms_p50": round(1000 * statistics.median(ordered), 2),
                      "load_cpu_s": round(load_cpu, 2), "python": platform.python_version(),
                      "load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
