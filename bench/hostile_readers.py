#!/usr/bin/env python3
"""Clients that never read: a real `agentcast serve` flooded by N of them, the server's memory, and the
chat turns of a well-behaved user meanwhile.

Each attacker (its own process, raw TCP) does the WebSocket handshake, then sends frames in a loop and
never reads another byte (a small receive buffer, so the kernel holds little for it); when the server
closes it, it connects again. What it sends (`--attack`):

  ping       {"type":"ping","request_id":"<R bytes>"} (R = `--rid-bytes`, default 65,000: the issue's
             reproduction, refused since ids are at most 256 bytes; 256 is the longest the server accepts)
  bigping    a ping with a 256-byte request_id and an extra key that pads the frame to `--frame-bytes`
             (default 65,536, the largest frame the server takes): accepted, answered with a pong
  tiny       {"type":"ping"} (15 bytes), many to a write: each answered with a pong
  chat       set_user once, then chats of `--chat-chars` 4-byte characters (the echo agent answers each
             with the message twice: chunks and response)
  pong       unsolicited WebSocket pongs of 125 bytes (control frames: never answered, never a message)
  fragments  a text message begun (FIN clear) and continued by empty continuation frames, never finished:
             nothing to answer, and the message never grows toward max_message_size

With `--auth` the server has authentication on and the attackers never authenticate (a `ping` is
allowed before `auth`); the well-behaved user authenticates with a token.

The well-behaved user runs chat turns one after another on its own connection (after `--warmup` turns):
for `--seconds` before the attack (idle), then as long under attack. Printed: its turn latency p50/p99
idle and under attack, the server's RSS (VmRSS sampled every 20 ms; VmHWM, the kernel's peak) before and
during, how many times the attackers were closed, how fast their sockets took their bytes, the server's CPU
use under attack, and one JSON line.

    python bench/hostile_readers.py [--attackers 8] [--attack ping] [--rid-bytes 65000] [--auth]
        [--seconds 20] [--warmup 300] [--server-setting outbox_bytes_total=67108864 ...]

Everything runs on loopback; the attackers stop with the run.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio
from trio_websocket import open_websocket_url

from _serve import agentcast_serve, raise_fd_limit  # bench/_serve.py (scripts run from bench/)

SECRET_ENV = "AGENTCAST_BENCH_SECRET"
SECRET = "hostile-readers-bench-secret-0123456789abcdef"

HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def client_frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """A masked frame (text by default) whose mask key is 0 (the payload goes as is)."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


#: What each attack sends again and again is repeated to about this many bytes per `sendall`.
SEND_BYTES = 65536


def attack_frames(args, n: int) -> tuple[bytes, bytes]:
    """(what to send once after the handshake, what to send again and again)."""
    if args.attack == "ping":
        rid = "r" * args.rid_bytes
        frame = client_frame(json.dumps({"type": "ping", "request_id": rid}).encode())
    elif args.attack == "bigping":
        empty = len(json.dumps({"type": "ping", "request_id": "r" * 256, "pad": ""}).encode())
        frame = client_frame(json.dumps({"type": "ping", "request_id": "r" * 256,
                                         "pad": "p" * (args.frame_bytes - empty)}).encode())
    elif args.attack == "tiny":
        frame = client_frame(b'{"type":"ping"}')
    elif args.attack == "pong":
        frame = client_frame(b"p" * 125, opcode=0xA)
    elif args.attack == "fragments":
        return client_frame(b"", fin=False), client_frame(b"", opcode=0x0, fin=False) * (SEND_BYTES // 6)
    else:
        first = client_frame(json.dumps({"type": "set_user", "user_id": f"attacker-{n}"}).encode())
        message = "\U0001F600" * args.chat_chars
        frame = client_frame(json.dumps({"type": "chat", "agent_id": "my_agent", "message": message},
                                        ensure_ascii=False).encode())
        return first, frame
    return b"", frame * max(1, SEND_BYTES // len(frame))


def send_all(sock: socket.socket, data: bytes, stop) -> None:
    """`sock.sendall(data)`, given up when `stop` is set (the server may not be reading: a paced connection)."""
    view = memoryview(data)
    while view and not stop.is_set():
        try:
            view = view[sock.send(view):]
        except TimeoutError:
            continue


def attacker(port: int, args, n: int, closes, sent, stop) -> None:
    """Connect, handshake, send forever without reading; connect again whenever the server hangs up."""
    first, again = attack_frames(args, n)
    while not stop.is_set():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(0.2)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(HANDSHAKE)
            head = b""
            while b"\r\n\r\n" not in head:
                try:
                    data = sock.recv(1)  # byte by byte: not one byte of the frames after the head is read
                except TimeoutError:
                    if stop.is_set():
                        return
                    continue
                if not data:
                    raise ConnectionError("closed during the handshake")
                head += data
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
            send_all(sock, first, stop)
            while not stop.is_set():
                send_all(sock, again, stop)
                with sent.get_lock():
                    sent.value += len(again)
        except OSError:
            with closes.get_lock():
                closes.value += 1
            time.sleep(0.01)
        finally:
            sock.close()


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, status_kib(self.pid)["vmrss"])
            time.sleep(0.02)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0].lower()] = int(line.split()[1])
    return out


async def user_turns(url: str, token: str | None, *, count: int | None = None, seconds: float | None = None,
                     first: trio.Event | None = None) -> list[float]:
    """A well-behaved user's chat turns, one after another: each one's seconds from chat to agent_done."""
    latencies: list[float] = []
    async with open_websocket_url(url) as ws:
        async def request(frame: dict, until: str) -> None:
            await ws.send_message(json.dumps(frame))
            while True:
                reply = json.loads(await ws.get_message())
                if reply["type"] == "error":
                    raise RuntimeError(f"the well-behaved user got an error: {reply}")
                if reply["type"] == until:
                    return

        json.loads(await ws.get_message())
        if token is not None:
            await request({"type": "auth", "token": token}, "authenticated")
        else:
            await request({"type": "set_user", "user_id": "well-behaved"}, "user_set")
        end = time.perf_counter() + seconds if seconds is not None else None
        while (count is None or len(latencies) < count) and (end is None or time.perf_counter() < end):
            t = time.perf_counter()
            await request({"type": "chat", "agent_id": "my_agent", "message": "how are you today?"}, "agent_done")
            latencies.append(time.perf_counter() - t)
            if first is not None:
                first.set()
    return latencies


def percentiles(latencies: list[float]) -> dict:
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"turns": len(latencies), "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2),
            "max_ms": round(max(latencies) * 1000, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attackers", type=int, default=8)
    parser.add_argument("--attack", choices=["ping", "bigping", "tiny", "chat", "pong", "fragments"], default="ping")
    parser.add_argument("--rid-bytes", type=int, default=65_000, help="request_id length of the pings")
    parser.add_argument("--frame-bytes", type=int, default=65536, help="frame size of the bigping attack")
    parser.add_argument("--chat-chars", type=int, default=8000, help="4-byte characters per chat (attack chat)")
    parser.add_argument("--auth", action="store_true", help="authentication on; the attackers never authenticate")
    parser.add_argument("--seconds", type=float, default=20.0, help="the user's turns are measured this long idle, then under attack")
    parser.add_argument("--warmup", type=int, default=300, help="the user's turns before it is measured")
    parser.add_argument("--server-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a [server] line for the config (TOML value)")
    args = parser.parse_args()
    raise_fd_limit()
    config = "[server]\n" + "".join(f"{s.split('=', 1)[0].strip()} = {s.split('=', 1)[1].strip()}\n"
                                     for s in args.server_setting)
    token = None
    if args.auth:
        os.environ[SECRET_ENV] = SECRET
        config += f'auth_secret_env = "{SECRET_ENV}"\n'
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from agentcast.transport._auth import mint
        token = mint(SECRET.encode(), "well-behaved", int(time.time()) + 3600)
    ctx = multiprocessing.get_context("spawn")
    closes = ctx.Value("i", 0)
    sent = ctx.Value("q", 0)  # bytes the attackers' sockets took (whole sends of `again`)
    stop = ctx.Event()
    with tempfile.TemporaryDirectory(prefix="agentcast-bench-") as tmp:
        with agentcast_serve(Path(tmp), "hostile", config) as served:
            pid = served.proc.pid
            trio.run(lambda: user_turns(served.url, token, count=args.warmup))
            idle = trio.run(lambda: user_turns(served.url, token, seconds=args.seconds))
            before = status_kib(pid)
            sampler = RssSampler(pid)
            sampler.start()
            attackers = [ctx.Process(target=attacker, args=(served.port, args, n, closes, sent, stop), daemon=True)
                         for n in range(args.attackers)]
            for proc in attackers:
                proc.start()
            time.sleep(1.0)  # the queues fill
            cpu, wall, sent_before = cpu_seconds(pid), time.perf_counter(), sent.value
            under = trio.run(lambda: user_turns(served.url, token, seconds=args.seconds))
            cpu, wall, sent_during = cpu_seconds(pid) - cpu, time.perf_counter() - wall, sent.value - sent_before
            stop.set()
            sampler.running = False
            sampler.join()
            after = status_kib(pid)
            for proc in attackers:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
    result = {
        "benchmark": "hostile_readers", "attack": args.attack, "attackers": args.attackers, "auth": args.auth,
        "rid_bytes": args.rid_bytes if args.attack == "ping" else None,
        "frame_bytes": args.frame_bytes if args.attack == "bigping" else None,
        "chat_chars": args.chat_chars if args.attack == "chat" else None,
        "server_settings": args.server_setting, "seconds": args.seconds,
        "idle": percentiles(idle), "under_attack": percentiles(under),
        "rss_before_kib": before["vmrss"], "rss_peak_sampled_kib": sampler.peak, "vmhwm_kib": after["vmhwm"],
        "attacker_closes": closes.value, "server_cpu_share": round(cpu / wall, 2),
        "attack_bytes_per_second": round(sent_during / wall),
        "load_average": os.getloadavg()[0], "python": platform.python_version(),
    }
    result["p99_ratio"] = round(result["under_attack"]["p99_ms"] / result["idle"]["p99_ms"], 2)
    print(f"{args.attackers} attackers ({args.attack}{', auth on' if args.auth else ''}): server RSS "
          f"{before['vmrss'] / 1024:.1f} MiB before, peak {max(sampler.peak, after['vmhwm']) / 1024:.1f} MiB "
          f"(VmHWM); {closes.value} attacker connections closed; the attackers sent {sent_during / wall / 2**20:.2f} MiB/s; "
          f"the server used {cpu / wall:.0%} of a CPU meanwhile")
    print(f"well-behaved user: idle p50 {result['idle']['p50_ms']} ms p99 {result['idle']['p99_ms']} ms; under attack "
          f"p50 {result['under_attack']['p50_ms']} ms p99 {result['under_attack']['p99_ms']} ms "
          f"({result['p99_ratio']}x idle p99, {result['under_attack']['turns']} turns)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
