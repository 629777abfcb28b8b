#!/usr/bin/env python3
"""A bounded soak run against a real `agentcast serve`: many well-behaved clients chatting,
searching and clearing, mixed with misbehaving ones (garbage, oversize frames, floods, clients
that stop reading, clients that vanish mid-handshake). Prints one JSON line:

  errors        error frames or failures seen by well-behaved clients (must be 0)
  turns_acked   chat turns well-behaved clients got agent_done for
  turns_logged  user messages of well-behaved users in the log (must equal turns_acked)
  rss_start_kib / rss_end_kib   server memory after start-up and at the end of the run

    python bench/soak.py [--connections 500] [--seconds 60] [--bad 0.2] [--rate-limit 10]

The server runs with the rate limit docs/security.md recommends for an internet-facing deployment
(10 frames/s per connection); `--rate-limit 0` turns it off to see an unprotected server flooded.

Everything runs on loopback; the load is bounded in time and count and stops by itself.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from _serve import agentcast_serve, raise_fd_limit  # bench/_serve.py (scripts run from bench/)

from agentcast.store import EventLog


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Tally:
    def __init__(self):
        self.acked = 0
        self.errors: list[str] = []
        self.bad_runs = 0


async def good_client(url, n, deadline, tally, rng, rate_limit):
    """A well-behaved client: one request at a time, paced under the server's `rate_limit` (frames/s)."""
    user = f"good-{n}"
    pause = 1.1 / rate_limit if rate_limit else 0.0
    try:
        async with open_websocket_url(url) as ws:

            async def request(frame, until):
                await ws.send_message(json.dumps(frame))
                while True:
                    with trio.fail_after(30):
                        reply = json.loads(await ws.get_message())
                    if reply["type"] == "error":
                        raise RuntimeError(f"{user}: error frame {reply}")
                    if reply["type"] == until and reply.get("request_id", frame.get("request_id")) == frame.get("request_id"):
                        return reply

            json.loads(await ws.get_message())  # connected
            await request({"type": "set_user", "user_id": user}, "user_set")
            i = 0
            while trio.current_time() < deadline:
                i += 1
                roll = rng.random()
                if roll < 0.7:
                    await request({"type": "chat", "agent_id": "my_agent", "message": f"{user} says {i}",
                                   "request_id": f"c{i}"}, "agent_done")
                    tally.acked += 1
                elif roll < 0.9:
                    await request({"type": "search_memory", "agent_id": "my_agent", "query": f"says {i - 1}",
                                   "request_id": f"s{i}"}, "memory_results")
                elif roll < 0.95:
                    await request({"type": "ping", "request_id": f"p{i}"}, "ping")
                else:
                    await request({"type": "clear_memory", "agent_id": "my_agent", "request_id": f"x{i}"},
                                  "memory_cleared")
                await trio.sleep(max(pause, rng.uniform(0, 0.05)))
    except Exception as exc:  # any failure of a well-behaved client counts
        tally.errors.append(f"{user}: {type(exc).__name__}: {exc}")


async def bad_client(url, host, port, n, deadline, tally, rng):
    kinds = ["garbage", "oversize", "flood", "no_read", "vanish", "binary"]
    while trio.current_time() < deadline:
        kind = rng.choice(kinds)
        tally.bad_runs += 1
        try:
            if kind == "vanish":  # half a handshake, then gone
                with trio.move_on_after(2):
                    stream = await trio.open_tcp_stream(host, port)
                    await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
                    await stream.aclose()
                continue
            async with open_websocket_url(url) as ws:
                with trio.move_on_after(rng.uniform(1, 5)):
                    if kind == "garbage":
                        for _ in range(50):
                            await ws.send_message(rng.choice(["{", "[]", '{"type":"nope"}', "null", "\ud7ff" * 3,
                                                              '{"type":"chat","agent_id":"my_agent","message":5}']))
                    elif kind == "binary":
                        await ws.send_message(os.urandom(64))
                    elif kind == "oversize":
                        await ws.send_message("x" * (200 * 1024))
                    elif kind == "flood":
                        for i in range(200):
                            await ws.send_message(json.dumps({"type": "chat", "agent_id": "my_agent",
                                                              "message": f"flood {n} {i}"}))
                    elif kind == "no_read":
                        for _ in range(50):
                            await ws.send_message(json.dumps({"type": "search_memory", "agent_id": "my_agent",
                                                              "query": "flood", "limit": 100}))
                        await trio.sleep(10)
        except (ConnectionClosed, HandshakeError, OSError, trio.TooSlowError):
            pass


async def run(args, url, host, port) -> Tally:
    tally = Tally()
    rng = random.Random(args.seed)
    deadline = trio.current_time() + args.seconds
    n_bad = int(args.connections * args.bad)
    async with trio.open_nursery() as nursery:
        for n in range(args.connections - n_bad):
            nursery.start_soon(good_client, url, n, deadline, tally, random.Random(rng.random()), args.rate_limit)
            await trio.sleep(0.002)
        for n in range(n_bad):
            nursery.start_soon(bad_client, url, host, port, n, deadline, tally, random.Random(rng.random()))
    return tally


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--connections", type=int, default=500)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--bad", type=float, default=0.2, help="share of misbehaving clients")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate-limit", type=float, default=10.0,
                   help="the server's rate_limit, frames/s per connection (docs/security.md recommends 10; 0: off)")
    args = p.parse_args()
    raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp:
        with agentcast_serve(Path(tmp), "soak", f"[server]\nrate_limit = {args.rate_limit}\n", stop_timeout=30) as served:
            host, port, url, db = "127.0.0.1", served.port, served.url, served.db
            time.sleep(0.5)
            rss_start = rss_kib(served.proc.pid)
            t = time.perf_counter()
            tally = trio.run(run, args, url, host, port)
            elapsed = time.perf_counter() - t
            rss_end = rss_kib(served.proc.pid)
        with EventLog.open(db, readonly=True) as log:
            logged = sum(1 for r in log.read() if r.event.TYPE == "user_message" and r.event.user.startswith("good-"))
    out = {
        "connections": args.connections, "seconds": round(elapsed, 1), "bad_share": args.bad,
        "rate_limit": args.rate_limit,
        "errors": len(tally.errors), "turns_acked": tally.acked, "turns_logged": logged,
        "bad_client_runs": tally.bad_runs, "rss_start_kib": rss_start, "rss_end_kib": rss_end,
        "server_exit": served.proc.returncode,
    }
    print(json.dumps(out), flush=True)
    for e in tally.errors[:10]:
        print("soak:", e, file=sys.stderr)
    return 0 if not tally.errors and tally.acked == logged else 1


if __name__ == "__main__":
    sys.exit(main())
