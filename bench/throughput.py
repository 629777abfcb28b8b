#!/usr/bin/env python3
"""Chat throughput against the seed's reference server (issue 5, targets 1-3), in one run.

Runs `../shared/bench/compare.sh` (the seed's FastAPI peer, a bare trio-websocket server and
`agentcast serve`, one at a time, same load generator) when those tools sit beside the project,
then prints the ratios the targets are stated in. Without them it says so and exits 0.

    python bench/throughput.py [--configs "50:200:chat 200:50:chat 1:2000:chat"]

Targets: turns/s at C=50 and C=200 >= 1.0x the seed (first milestone 0.75x) with server CPU per
turn <= the seed's; C=1 p50 latency <= 1.2x the seed's; turns/s at C=50 >= 1.0x the bare server.
Prints one JSON line at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "bench"
BENCH_PY = Path(os.environ.get("BENCH_PY", "/tmp/bench-venv/bin/python"))


def ratios(rows: list[dict]) -> dict:
    """The issue's ratios from compare.sh's JSON lines (keyed by server and connection count)."""
    by = {(r["server"], r["connections"]): r for r in rows if r.get("ok")}

    def get(server: str, c: int, field: str) -> float | None:
        row = by.get((server, c))
        return None if row is None else row[field]

    def cpu_us(server: str, c: int) -> float | None:
        row = by.get((server, c))
        return None if row is None else round(row["server_cpu_s"] / row["requests"] * 1e6)

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else round(a / b, 2)

    out: dict = {}
    for c in (50, 200):
        out[f"c{c}_vs_seed"] = ratio(get("agentcast", c, "req_per_s"), get("seed_fastapi", c, "req_per_s"))
        out[f"c{c}_cpu_us_per_turn"] = {"agentcast": cpu_us("agentcast", c), "seed": cpu_us("seed_fastapi", c)}
    out["c1_p50_vs_seed"] = ratio(get("agentcast", 1, "p50_ms"), get("seed_fastapi", 1, "p50_ms"))
    out["c50_vs_bare"] = ratio(get("agentcast", 50, "req_per_s"), get("raw_trio", 50, "req_per_s"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="50:200:chat 200:50:chat 1:2000:chat")
    args = parser.parse_args()
    compare = SHARED / "compare.sh"
    if not compare.exists():
        print(f"skipped: {compare} is not here (the shared benchmark tools sit beside the project); "
              "the other bench/ scripts need nothing else")
        return 0
    if not BENCH_PY.exists():
        subprocess.run(["bash", str(SHARED / "setup.sh")], check=True)
    agentcast = shutil.which("agentcast")
    command = (f"{agentcast} serve" if agentcast else f"{sys.executable} -m transport serve") + \
        " --port {port} --db {tmpdir}/x.db --log-level warning"
    proc = subprocess.run(["bash", str(compare), command], env={**os.environ, "CONFIGS": args.configs},
                          cwd=ROOT, capture_output=True, text=True)
    sys.stderr.write(proc.stderr)
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rows.append(json.loads(line))
        else:
            print(line)
    result = {"benchmark": "throughput", "ratios": ratios(rows), "runs": rows, "load_average": os.getloadavg()[0]}
    r = result["ratios"]
    print(f"C=50: {r['c50_vs_seed']}x the seed, {r['c50_vs_bare']}x the bare server; "
          f"C=200: {r['c200_vs_seed']}x the seed; C=1 p50: {r['c1_p50_vs_seed']}x the seed's; "
          f"CPU per turn at C=50: {r['c50_cpu_us_per_turn']['agentcast']} µs vs {r['c50_cpu_us_per_turn']['seed']} µs")
    print(json.dumps(result))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
