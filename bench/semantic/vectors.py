#!/usr/bin/env python3
"""Vector blocks in SQLite: bytes per vector and the time to scan one user's vectors (`store._vectors`).

    python bench/semantic/vectors.py [--dimensions 384] [--block 1024] [--fill 40]

Writes blocks of random unit vectors (int8 + scale, the `store._vectors` format) as one BLOB per
(agent, user, block) in a table of a temporary SQLite file, for users holding 200, 1,000 and 10,000
vectors plus `--fill` users of 2,000 (so the file is not only the measured users), then times what a
search does: SELECT the user's blocks, `top_k` (50) over them, plain and centred on the user's mean
(`mean_vector`, computed in the same call). CPU time, p50/p95 of 60 runs, numpy on one thread. The
same for float32 vectors (a matrix product on the BLOB as it is) for comparison. Ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # run from a source tree without installing

import numpy as np  # noqa: E402

from agentcast.store import _vectors  # noqa: E402
from agentcast.store._schema import sqlite3  # noqa: E402

SCHEMA = "CREATE TABLE vector_blocks (agent TEXT, user TEXT, block INTEGER, vectors BLOB, PRIMARY KEY (agent, user, block))"


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1000, ordered[int(0.95 * (len(ordered) - 1))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dimensions", type=int, default=384)
    parser.add_argument("--block", type=int, default=1024, help="vectors per block")
    parser.add_argument("--fill", type=int, default=40, help="more users of 2,000 vectors, not measured")
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    rng = np.random.default_rng(16)
    users = [("u200", 200), ("u1k", 1000), ("u10k", 10_000)] + [(f"fill{i}", 2000) for i in range(args.fill)]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("int8", "float32"):
            path = Path(tmp) / f"{kind}.db"
            db = sqlite3.connect(path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)
            seq = 1
            total = 0
            for user, n in users:
                for b, start in enumerate(range(0, n, args.block)):
                    vectors = rng.standard_normal((min(args.block, n - start), args.dimensions)).astype(np.float32)
                    seqs = list(range(seq, seq + len(vectors)))
                    seq += len(vectors)
                    blob = _vectors.pack(seqs, vectors) if kind == "int8" else vectors.tobytes()
                    db.execute("INSERT INTO vector_blocks VALUES ('agent', ?, ?, ?)", (user, b, blob))
                    total += len(vectors)
                db.commit()
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.close()
            size = path.stat().st_size
            db = sqlite3.connect(path)
            query = rng.standard_normal(args.dimensions).astype(np.float32)
            row = {"vectors": total, "file_bytes": size, "bytes_per_vector": round(size / total, 1),
                   "record_bytes": _vectors.record_size(args.dimensions) if kind == "int8" else 4 * args.dimensions}
            for user, n in users[:3]:
                modes = ("plain", "centred") if kind == "int8" else ("plain",)
                for mode in modes:
                    samples = []
                    for _ in range(args.runs):
                        started = time.process_time()
                        blobs = [r[0] for r in db.execute(
                            "SELECT vectors FROM vector_blocks WHERE agent = 'agent' AND user = ? ORDER BY block", (user,))]
                        if kind == "int8":
                            blocks = [_vectors.unpack(b) for b in blobs]
                            center = _vectors.mean_vector(blocks) if mode == "centred" else None
                            _vectors.top_k(query, blocks, 50, center=center)
                        else:
                            for blob in blobs:
                                scores = np.frombuffer(blob, np.float32).reshape(-1, args.dimensions) @ query
                                np.argpartition(-scores, min(49, len(scores) - 1))[:50]
                        samples.append(time.process_time() - started)
                    p50, p95 = percentiles(samples)
                    row[f"{user} {mode}"] = {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2)}
            db.close()
            results[kind] = row
            print(f"{kind}: {total} vectors of {args.dimensions} dimensions in blocks of {args.block}: file "
                  f"{size / 1e6:.1f} MB = {size / total:.0f} B per vector (a record is {row['record_bytes']} B)")
            for key, value in row.items():
                if isinstance(value, dict):
                    print(f"   {key:14s} SELECT + scan, top 50: p50 {value['p50_ms']:.2f} ms CPU, p95 {value['p95_ms']:.2f} ms")
    print(json.dumps({"results": results, "python": platform.python_version(), "numpy": np.__version__,
                      "load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
