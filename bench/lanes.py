#!/usr/bin/env python3
"""Server memory under a stream of new users with big messages: resident lanes and their windows.

Issue 13's reproduction: a real `agentcast serve` (echo agents, no auth), and C connections that
each, over and over, `set_user` to a user never seen before and send one chat of N emoji (4 bytes
each in UTF-8: 16,000 of them is a 64,000-byte message, about the largest frame the default
`max_message_size` takes), waiting for `agent_done`. Every turn leaves a new user's lane with a
short-term window of two big messages (the chat and its echo). Reads the server's VmRSS before
(after a warm-up turn) and after, and its `agentcast_lanes` gauge from /metrics, and prints one
JSON line.

    python bench/lanes.py [--connections 3] [--seconds 60] [--emoji 16000] [--server 'max_lanes = 1000']

`--server` adds lines to the server's `[server]` table (e.g. to try other lane bounds).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import trio
from trio_websocket import open_websocket_url

from _serve import agentcast_serve  # bench/_serve.py (scripts run from bench/)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def lanes_gauge(port: int) -> int:
    """The sum of `agentcast_lanes` over the agents, from the server's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("agentcast_lanes{")))


async def request(ws, frame: dict, until: str) -> None:
    await ws.send_message(json.dumps(frame, ensure_ascii=False))
    while True:
        reply = json.loads(await ws.get_message())
        if reply["type"] == "error":
            raise RuntimeError(f"error frame: {reply['code']}: {reply['message'][:200]}")
        if reply["type"] == until:
            return


async def switcher(url: str, n: int, message: str, deadline: float, turns: list[int]) -> None:
    async with open_websocket_url(url, max_message_size=4 * 1024 * 1024) as ws:
        json.loads(await ws.get_message())  # connected
        i = 0
        while time.monotonic() < deadline:
            await request(ws, {"type": "set_user", "user_id": f"newcomer-{n}-{i}"}, "user_set")
            await request(ws, {"type": "chat", "agent_id": "my_agent", "message": message}, "agent_done")
            turns[n] += 1
            i += 1


async def run(args, url: str, port: int, pid: int) -> dict:
    message = "\N{GRINNING FACE}" * args.emoji
    async with open_websocket_url(url, max_message_size=4 * 1024 * 1024) as ws:  # warm-up: one turn
        json.loads(await ws.get_message())
        await request(ws, {"type": "chat", "agent_id": "my_agent", "message": message}, "agent_done")
    await trio.sleep(1)
    before = rss_kib(pid)
    turns = [0] * args.connections
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for n in range(args.connections):
            nursery.start_soon(switcher, url, n, message, started + args.seconds, turns)
    seconds = time.monotonic() - started
    after = rss_kib(pid)
    lanes = await trio.to_thread.run_sync(lanes_gauge, port)
    return {
        "turns": sum(turns), "seconds": round(seconds, 1), "turns_per_s": round(sum(turns) / seconds, 1),
        "rss_before_mib": round(before / 1024, 1), "rss_after_mib": round(after / 1024, 1),
        "rss_added_mib": round((after - before) / 1024, 1), "lanes_after": lanes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--emoji", type=int, default=16_000, help="emoji per chat message (4 UTF-8 bytes each)")
    parser.add_argument("--server", default="", help="extra lines for the [server] table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentcast-bench-") as tmp:
        with agentcast_serve(Path(tmp), "lanes", f"[server]\n{args.server}\n") as served:
            out = trio.run(run, args, served.url, served.port, served.proc.pid)
    result = {"benchmark": "lanes", "connections": args.connections, "emoji": args.emoji, "server": args.server,
              **out, "load_average": os.getloadavg()[0], "python": platform.python_version()}
    print(f"{out['turns']} new users in {out['seconds']} s over {args.connections} connections: server RSS "
          f"{out['rss_before_mib']} -> {out['rss_after_mib']} MiB (+{out['rss_added_mib']}), {out['lanes_after']} lanes resident")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
