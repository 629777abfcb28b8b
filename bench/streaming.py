#!/usr/bin/env python3
"""Concurrent token streams (issue 17): agentcast beside the LangGraph dev server, with the echo brain and
with the openai brain against a fake model server streaming at the same rate, in one run.

Drives `../shared/bench/streaming/stream_compare.py` (its `setup.sh` first: the peer's and the load client's
venvs), one server at a time, alternating: per concurrency C and per run, the peer (workload B: 10 deltas 30 ms
apart), then each code tree given with `--code` (default: the installed agentcast), with each brain:

- `echo`: agent `slow` of the comparison's own agentcast.toml (the echo brain, `delay = 0.03`, `chunks = 10`);
- `openai`: agent `slow` with the openai brain against `bench/fake_model.py` (started here, in its own
  process, so its CPU is not counted as the server's), which streams the same 10 pieces 30 ms apart over
  HTTP/1.1 chunked SSE: the real brain's path (HTTP read, SSE parse, delta). `recall = 0` and
  `memory_window = 0`, so that a turn costs the stream and not a search or a longer prompt.

    python bench/streaming.py RESULTS.jsonl [--cs 50,200,500] [--runs 1] [--brains echo,openai] [--no-peer]
        [--code A=/path/to/tree --code B=/path/to/other] [--duration 20] [--floor]

`--floor` adds, per brain, `bench/floor.py`'s streaming floor (code `floor`): a minimal trio server making each
turn durable through the real Journal and streaming it with the cheapest primitives (see its docstring), the
measuring stick for how far agentcast's own work per turn is from the least a trio server does.
`--code NAME=DIR` runs agentcast from the source tree DIR (a checkout of this repository) through PYTHONPATH,
for A/B runs of two versions alternated in the same minutes. Appends one JSON line per run to RESULTS (the
load client's fields, see the comparison's README, plus `code`, `brain`, `ideal_pct`: turns/s as a percentage
of C / 0.3 s, and `fake_model_cpu_s`) and prints a table at the end. The machine's load average is in
`load_before` / `load_after`: on a shared machine, compare rows of the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The comparison's folder: `shared/bench/streaming` beside the checkout (or beside the folder of worktrees).
COMPARE = Path(os.environ.get("STREAM_COMPARE_DIR") or next(
    (d for d in (ROOT.parent / "shared" / "bench" / "streaming", ROOT.parent.parent / "shared" / "bench" / "streaming")
     if d.exists()), ROOT.parent / "shared" / "bench" / "streaming"))
STREAM_BENCH = Path(os.environ.get("STREAM_BENCH", "/tmp/stream-bench"))
#: The turn's shape in workload B: DELTAS deltas, DELAY seconds before each.
DELTAS, DELAY = 10, 0.03

OPENAI_CONFIG = """\
[agents.slow]
description = "the openai brain against bench/fake_model.py (10 deltas, 30 ms before each)"
brain = {{ kind = "openai", model = "fake-model", base_url = "http://127.0.0.1:{port}/v1", recall = 0, memory_window = 0, retries = 0 }}
"""


def process_cpu(pid: int) -> float:
    """utime + stime of process `pid` (seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FakeModelServer:
    """`bench/fake_model.py` in a process of its own (the load client's venv's Python, for uvloop, if there)."""

    def __init__(self, workdir: Path) -> None:
        python = STREAM_BENCH / "cl-venv" / "bin" / "python"
        self.proc = subprocess.Popen(
            [str(python if python.exists() else sys.executable), str(ROOT / "bench" / "fake_model.py"),
             "--deltas", str(DELTAS), "--delay", str(DELAY)],
            stdout=subprocess.PIPE, stderr=open(workdir / "fake_model.log", "w"), text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            raise SystemExit(f"bench/fake_model.py did not start: {line!r} (see {workdir / 'fake_model.log'})")
        self.port = int(line.split()[-1])

    def cpu(self) -> float:
        return process_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def code_trees(specs: list[str], workdir: Path) -> dict[str, str | None]:
    """NAME -> a PYTHONPATH under which `agentcast` is that tree (None: the installed agentcast)."""
    if not specs:
        return {"installed": None}
    trees: dict[str, str | None] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        tree = Path(directory).resolve()
        if not sep or not (tree / "transport" / "cli.py").exists():
            raise SystemExit(f"--code {spec!r}: give NAME=DIR, DIR a checkout of agentcast (with transport/cli.py)")
        path = workdir / "code" / name
        path.mkdir(parents=True, exist_ok=True)
        link = path / "agentcast"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(tree)
        trees[name] = str(path)
    return trees


def agentcast_command(pythonpath: str | None, config: str) -> str:
    """The `--agentcast` command for stream_compare.py (it splits it at spaces)."""
    env = f"env PYTHONPATH={pythonpath} " if pythonpath else ""
    return f"{env}{sys.executable} -m agentcast.transport serve --port {{port}} --db {{db}} --config {config}"


#: The `code` of the rows of bench/floor.py (`--floor`).
FLOOR = "floor"


def floor_command(brain: str, model_port: int | None) -> str:
    """The `--agentcast` command that serves bench/floor.py's streaming floor for `brain` instead."""
    source = f"--model http://127.0.0.1:{model_port}/v1" if brain == "openai" else f"--deltas {DELTAS} --delay {DELAY}"
    return f"{sys.executable} {ROOT / 'bench' / 'floor.py'} --port {{port}} --db {{db}} {source}"


def compare(rows_file: Path, c: int, run: int, only: str, label: str, duration: float,
            command: str | None) -> dict:
    """One run of stream_compare.py (workload B, concurrency `c`, server `only`); its JSON row."""
    out = rows_file.with_suffix(".one")
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(COMPARE / "stream_compare.py"), str(out), "B", str(c), "--runs", "1",
           "--only", only, "--duration", str(duration), f"--label={label}"]
    if command is not None:
        cmd += ["--agentcast", command]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    row = json.loads(out.read_text().splitlines()[-1])
    row["run"] = run
    return row


def server_name(row: dict) -> str:
    if row.get("server") == "lg":
        return "LangGraph"
    return "bench/floor.py" if row.get("code") == FLOOR else "agentcast"


def summary(rows: list[dict]) -> str:
    head = ("| C | server | code | brain | turns/s | % of ideal | TTFT p99 ms | gap beyond 30 ms p99 | "
            "server CPU ms/turn | errors | load before |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        lines.append(
            f"| {r.get('c')} | {server_name(r)} | {r.get('code', '')} | "
            f"{r.get('brain', '')} | {r.get('turns_per_s')} | {r.get('ideal_pct')} | {r.get('ttft_p99_ms')} | "
            f"{r.get('gap_excess_p99_ms')} | {r.get('server_cpu_ms_per_turn')} | "
            f"{r.get('errors', r.get('fatal'))} | {r['load_before'][0]} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--cs", default="50,200,500")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--brains", default="echo,openai")
    ap.add_argument("--no-peer", action="store_true", help="agentcast only (no LangGraph dev server)")
    ap.add_argument("--code", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--floor", action="store_true",
                    help="also run bench/floor.py's streaming floor with each brain (the least a trio server does per turn)")
    a = ap.parse_args()
    if not (COMPARE / "stream_compare.py").exists():
        raise SystemExit(f"no {COMPARE}/stream_compare.py: set STREAM_COMPARE_DIR to the comparison's folder")
    if not (STREAM_BENCH / "cl-venv").exists():
        raise SystemExit(f"run {COMPARE}/setup.sh first (it makes the venvs under {STREAM_BENCH})")
    brains = [b for b in a.brains.split(",") if b]
    unknown = set(brains) - {"echo", "openai"}
    if unknown:
        raise SystemExit(f"--brains: unknown {sorted(unknown)}; choose from echo, openai")
    workdir = Path(tempfile.mkdtemp(prefix="streaming-bench-"))
    trees = code_trees(a.code, workdir)
    fake = FakeModelServer(workdir) if "openai" in brains else None
    configs = {"echo": str(COMPARE / "agentcast.toml")}
    if fake is not None:
        (workdir / "openai.toml").write_text(OPENAI_CONFIG.format(port=fake.port))
        configs["openai"] = str(workdir / "openai.toml")
    rows: list[dict] = []
    try:
        for c in [int(x) for x in a.cs.split(",")]:
            for run in range(1, a.runs + 1):
                plan = [("lg", None, None)] if not a.no_peer else []
                plan += [("ac", name, brain) for name in trees for brain in brains]
                plan += [("ac", FLOOR, brain) for brain in brains] if a.floor else []
                for only, name, brain in plan:
                    label = "" if only == "lg" else f"-{name}-{brain}"
                    if only == "lg":
                        command = None
                    elif name == FLOOR:
                        command = floor_command(brain, fake.port if fake is not None else None)
                    else:
                        command = agentcast_command(trees[name], configs[brain])
                    fake_cpu = fake.cpu() if fake is not None and brain == "openai" else None
                    row = compare(a.results, c, run, only, label, a.duration, command)
                    if fake_cpu is not None:
                        row["fake_model_cpu_s"] = round(fake.cpu() - fake_cpu, 2)
                    row.update(code=name, brain=brain or "echo_slow (peer)")
                    if row.get("turns_per_s") is not None:
                        row["ideal_pct"] = round(100 * row["turns_per_s"] / (c / (DELTAS * DELAY)), 1)
                    rows.append(row)
                    with open(a.results, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps({k: row.get(k) for k in (
                        "tag", "turns_per_s", "ideal_pct", "ttft_p99_ms", "gap_excess_p99_ms", "server_cpu_ms_per_turn",
                        "errors", "load_before")}), flush=True)
    finally:
        if fake is not None:
            fake.stop()
    print(summary(rows))


if __name__ == "__main__":
    main()
