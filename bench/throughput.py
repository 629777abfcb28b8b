#!/usr/bin/env python3
"""Chat throughput against the seed's reference server (issue 5, targets 1-3), in one run.

Runs `../shared/bench/compare.sh` (the seed's FastAPI peer, a bare trio-websocket server and
`agentcast serve`, one at a time, same load generator) when those tools sit beside the project,
then prints the ratios the targets are stated in. Without them it says so and exits 0.

    python bench/throughput.py [--configs "50:200:chat 200:50:chat 1:2000:chat"]

Targets: turns/s at C=50 and C=200 >= 1.0x the seed (first milestone 0.75x) with server CPU per
turn <= the seed's; C=1 p50 latency <= 1.2x the seed's; turns/s at C=50 >= 1.0x the bare server.
Prints one JSON line at the end.

With `--floor`, the same ratios for `bench/floor.py` too (the least a trio server can do per turn),
each in a run of its own with the seed and the bare server: alone, with the durable store (the
journal's writer thread and group commit, as agentcast), and with the store committed on the
event loop (`--inline`). They bound what any server on this stack can reach on this machine.
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


def ratios(rows: list[dict], server: str = "agentcast") -> dict:
    """The issue's ratios for `server` from compare.sh's JSON lines (keyed by server and connection count)."""
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
        out[f"c{c}_vs_seed"] = ratio(get(server, c, "req_per_s"), get("seed_fastapi", c, "req_per_s"))
        out[f"c{c}_cpu_us_per_turn"] = {server: cpu_us(server, c), "seed": cpu_us("seed_fastapi", c)}
    out["c1_p50_vs_seed"] = ratio(get(server, 1, "p50_ms"), get("seed_fastapi", 1, "p50_ms"))
    out["c50_vs_bare"] = ratio(get(server, 50, "req_per_s"), get("raw_trio", 50, "req_per_s"))
    return out


def compare(command: str, configs: str, name: str) -> tuple[list[dict], int]:
    """compare.sh's JSON lines for the seed, the bare server and `command`, the last named `name`
    (compare.sh names it after its program); its table goes to stdout."""
    proc = subprocess.run(["bash", str(SHARED / "compare.sh"), command], env={**os.environ, "CONFIGS": configs},
                          cwd=ROOT, capture_output=True, text=True)
    sys.stderr.write(proc.stderr)
    program = Path(command.split()[0]).name
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            if row["server"] == program:
                row["server"] = name
            rows.append(row)
        else:
            print(line)
    return rows, proc.returncode


def summary(r: dict, server: str) -> str:
    return (f"C=50: {r['c50_vs_seed']}x the seed, {r['c50_vs_bare']}x the bare server; "
            f"C=200: {r['c200_vs_seed']}x the seed; C=1 p50: {r['c1_p50_vs_seed']}x the seed's; "
            f"CPU per turn at C=50: {r['c50_cpu_us_per_turn'][server]} µs vs {r['c50_cpu_us_per_turn']['seed']} µs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="50:200:chat 200:50:chat 1:2000:chat")
    parser.add_argument("--floor", action="store_true", help="also measure bench/floor.py (three more runs)")
    args = parser.parse_args()
    if not (SHARED / "compare.sh").exists():
        print(f"skipped: {SHARED / 'compare.sh'} is not here (the shared benchmark tools sit beside the project); "
              "the other bench/ scripts need nothing else")
        return 0
    if not BENCH_PY.exists():
        subprocess.run(["bash", str(SHARED / "setup.sh")], check=True)
    agentcast = shutil.which("agentcast")
    command = (f"{agentcast} serve" if agentcast else f"{sys.executable} -m transport serve") + \
        " --port {port} --db {tmpdir}/x.db --log-level warning"
    rows, status = compare(command, args.configs, "agentcast")
    result = {"benchmark": "throughput", "ratios": ratios(rows), "runs": rows, "load_average": os.getloadavg()[0]}
    print(summary(result["ratios"], "agentcast"))
    if args.floor:
        floor = f"{sys.executable} {ROOT / 'bench' / 'floor.py'} --port {{port}}"
        result["floor"] = {}
        for variant, extra in (("transport", ""), ("store", " --db {tmpdir}/x.db"), ("inline", " --db {tmpdir}/x.db --inline")):
            rows, rc = compare(floor + extra, args.configs, "floor")
            status = status or rc
            r = ratios(rows, "floor")
            result["floor"][variant] = {"ratios": r, "runs": rows}
            print(f"floor ({variant}): " + summary(r, "floor"))
    print(json.dumps(result))
    return status


if __name__ == "__main__":
    sys.exit(main())
