#!/usr/bin/env python3
"""Server memory per idle connection: a real `agentcast serve` holding N open, idle WebSocket clients.

Starts the server as a subprocess (its open-file limit raised for it alone, `max_connections`
above N), opens N connections from this process, each past `connected`, `set_user` (one user
per connection) and `subscribe`, then lets them sit. Reads the server's memory before and after
(VmRSS from /proc/PID/status, PSS from /proc/PID/smaps_rollup), prints KiB per connection, checks
the server still answers a chat with all of them open, and prints one JSON line.
Target (issue 5): 10,000 connections at <= 30 KiB each.

    python bench/idle.py [--connections 10000] [--settle 5] [--no-subscribe]

Everything runs on loopback. The baseline is taken after one connection has come and gone (so
the first connection's one-off allocations are not counted against the others).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import trio
from trio_websocket import open_websocket_url

from _serve import agentcast_serve, raise_fd_limit  # bench/_serve.py (scripts run from bench/)


def memory_kib(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0].lower()] = int(line.split()[1])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            out["pss"] = int(line.split()[1])
    return out


async def request(ws, frame: dict, until: str) -> dict:
    await ws.send_message(json.dumps(frame))
    while True:
        reply = json.loads(await ws.get_message())
        if reply["type"] == "error":
            raise RuntimeError(f"error frame {reply}")
        if reply["type"] == until:
            return reply


async def hold(url: str, n: int, subscribe: bool, opened: list, limiter: trio.CapacityLimiter,
               release: trio.Event) -> None:
    await limiter.acquire()  # held for the handshake only
    held = True
    try:
        async with open_websocket_url(url, message_queue_size=4) as ws:
            assert json.loads(await ws.get_message())["type"] == "connected"
            await request(ws, {"type": "set_user", "user_id": f"idle-{n}"}, "user_set")
            if subscribe:
                await request(ws, {"type": "subscribe", "agent_id": "my_agent"}, "subscribed")
            limiter.release()
            held = False
            opened.append(n)
            await release.wait()
    finally:
        if held:
            limiter.release()


async def chat_once(url: str) -> float:
    async with open_websocket_url(url) as ws:
        json.loads(await ws.get_message())
        await request(ws, {"type": "set_user", "user_id": "asker"}, "user_set")
        t = time.perf_counter()
        await request(ws, {"type": "chat", "agent_id": "my_agent", "message": "are you still there?"}, "agent_done")
        return time.perf_counter() - t


async def run(args, url: str, pid: int) -> dict:
    await chat_once(url)  # warm-up: one connection and one turn, then gone
    await trio.sleep(1)
    before = memory_kib(pid)
    opened: list[int] = []
    release = trio.Event()
    limiter = trio.CapacityLimiter(args.concurrency)
    out: dict = {}
    async with trio.open_nursery() as nursery:
        t = time.perf_counter()
        for n in range(args.connections):
            nursery.start_soon(hold, url, n, not args.no_subscribe, opened, limiter, release)
        while len(opened) < args.connections:
            await trio.sleep(0.2)
            if time.perf_counter() - t > args.open_timeout:
                raise RuntimeError(f"only {len(opened)} of {args.connections} connections opened")
        out["open_seconds"] = round(time.perf_counter() - t, 1)
        await trio.sleep(args.settle)
        after = memory_kib(pid)
        with trio.fail_after(30):
            out["chat_with_all_open_ms"] = round(await chat_once(url) * 1000, 1)
        release.set()
    n = args.connections
    out.update({
        "rss_before_kib": before["vmrss"], "rss_after_kib": after["vmrss"],
        "pss_before_kib": before["pss"], "pss_after_kib": after["pss"],
        "rss_kib_per_connection": round((after["vmrss"] - before["vmrss"]) / n, 2),
        "pss_kib_per_connection": round((after["pss"] - before["pss"]) / n, 2),
    })
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait with all open before measuring")
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight at once")
    parser.add_argument("--open-timeout", type=float, default=600.0)
    parser.add_argument("--no-subscribe", action="store_true", help="only connected + set_user")
    args = parser.parse_args()
    raise_fd_limit()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.connections + 100:
        sys.exit(f"the open-file limit is {soft}: too low for {args.connections} client sockets")
    with tempfile.TemporaryDirectory(prefix="agentcast-bench-") as tmp:
        with agentcast_serve(Path(tmp), "idle", f"[server]\nmax_connections = {args.connections + 100}\n") as served:
            out = trio.run(run, args, served.url, served.proc.pid)
    result = {
        "benchmark": "idle", "connections": args.connections, "subscribed": not args.no_subscribe, **out,
        "target_kib_per_connection": 30, "ok": out["rss_kib_per_connection"] <= 30,
        "server_exit": served.proc.returncode, "load_average": os.getloadavg()[0], "python": platform.python_version(),
    }
    print(f"{args.connections} idle connections: {result['rss_kib_per_connection']} KiB RSS "
          f"({result['pss_kib_per_connection']} KiB PSS) each; a chat with all open took "
          f"{result['chat_with_all_open_ms']} ms")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
