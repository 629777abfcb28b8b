#!/usr/bin/env python3
"""The floor under targets 1-3 of issue 5: the least a trio server can do per chat turn, with and without
agentcast's durable store. Not agentcast: a measuring stick, served for `wsload.py` / `compare.sh`.

Each connection is one trio task that reads the socket, cuts WebSocket frames by hand (no wsproto, no
trio-websocket, no second task, no lanes, no validation), `json.loads` each message and answers a
chat with agent_thinking, response_chunk, response and agent_done written in ONE `send_all`. Just
enough of the handshake and of the protocol for wsload (connected, set_user, subscribe, ping, chat).

With `--db PATH` a chat is also made durable the way agentcast does it, before any frame of it is
sent: its UserSaid and AgentAnswered go through the real `actors.Journal` (group commit on the
writer thread) into the real `store.EventLog` (events table, its indexes, the FTS5 search index).
That is a lower bound for agentcast: every turn must do at least this much. With `--inline` too, each
chat is committed by itself on the event loop (no thread hand-offs, no group commit; it blocks the
loop, which a real server must not): the least latency a durable turn can have here.

    python bench/floor.py --port 5052                  # transport floor
    python bench/floor.py --port 5052 --db /tmp/f.db   # transport floor + durable store
    python bench/floor.py --port 5052 --db /tmp/f.db --inline
    ../shared/bench/compare.sh 'python bench/floor.py --port {port} --db {tmpdir}/x.db'

Trust it on loopback only: it skips what a real server must check (sizes, UTF-8, control frames
other than close and ping, fragments).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source tree without installing

from agentcast.actors import Journal, utc_now  # noqa: E402
from agentcast.store import AgentAnswered, EventLog, UserSaid  # noqa: E402

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ids = itertools.count(1)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def frame(text: str) -> bytes:
    """One unmasked, final text frame (server to client)."""
    data = text.encode()
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + data
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + data


def cut_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Remove the complete (masked, client to server) frames at the start of `buf`; (opcode, payload) each."""
    out = []
    while len(buf) >= 2:
        opcode, n, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, at = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, at = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < at + 4 + n:
            break
        mask = buf[at:at + 4]
        masked = int.from_bytes(buf[at + 4:at + 4 + n], "little")
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
        out.append((opcode, (masked ^ key).to_bytes(n, "little")))
        del buf[:at + 4 + n]
    return out


async def handshake(stream: trio.SocketStream) -> bytearray | None:
    """Read the upgrade request and answer 101; what the client sent after it, or None if it was not one."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data or len(buf) > 16384:
            return None
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    key = next((line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")), None)
    if key is None:
        return None
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    return bytearray(rest)


def serve(store: Journal | EventLog | None):
    async def connection(stream: trio.SocketStream) -> None:
        try:
            buf = await handshake(stream)
            if buf is None:
                return
            user = "anonymous"
            await stream.send_all(frame(_dumps({"type": "connected", "client_id": f"client_{next(_ids)}"})))
            while True:
                out = []
                for opcode, payload in cut_frames(buf):
                    if opcode == 0x8:  # close: echo it and stop
                        await stream.send_all(b"\x88\x02\x03\xe8")
                        return
                    if opcode == 0x9:  # ping: pong
                        out.append(bytes((0x8A, len(payload))) + payload)
                        continue
                    msg = json.loads(payload)
                    kind, agent = msg.get("type"), msg.get("agent_id")
                    if kind == "chat":
                        text = str(msg.get("message"))
                        rid = f"r{next(_ids)}"
                        if store is not None:
                            at = utc_now()
                            events = [UserSaid(agent, user, at, text, rid), AgentAnswered(agent, user, at, text, rid)]
                            if isinstance(store, EventLog):  # --inline: commit on the event loop itself
                                store.append([events])
                            else:
                                await store.append(events)
                        out += [frame(_dumps({"type": "agent_thinking", "agent_id": agent, "request_id": rid})),
                                frame(_dumps({"type": "response_chunk", "agent_id": agent, "content": text,
                                              "request_id": rid})),
                                frame(_dumps({"type": "response", "agent_id": agent, "message": text,
                                              "request_id": rid})),
                                frame(_dumps({"type": "agent_done", "agent_id": agent, "request_id": rid}))]
                    elif kind == "set_user":
                        user = str(msg.get("user_id"))
                        out.append(frame(_dumps({"type": "user_set", "user_id": msg.get("user_id")})))
                    elif kind == "subscribe":
                        out.append(frame(_dumps({"type": "subscribed", "agent_id": agent})))
                    elif kind == "ping":
                        out.append(frame('{"type":"ping"}'))
                    else:
                        out.append(frame(_dumps({"type": "error", "message": f"unknown type {kind!r}"})))
                if out:
                    await stream.send_all(b"".join(out))
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
        except Exception:  # a reset, or input it does not handle (it is no real server): drop the connection, go on
            return
        finally:
            await trio.aclose_forcefully(stream)

    return connection


async def main(host: str, port: int, db: str | None, inline: bool) -> None:
    async with trio.open_nursery() as nursery:
        store: Journal | EventLog | None = None
        if db is not None and inline:
            store = EventLog.open(db)
        elif db is not None:
            store = Journal(EventLog.open(db), lambda: EventLog.open(db, readonly=True))
            await nursery.start(store.run)
        listeners = await trio.open_tcp_listeners(port, host=host)
        print(f"floor: ws://{host}:{listeners[0].socket.getsockname()[1]}/ws"
              f"{' with the store in ' + db if db else ' (no store)'}", flush=True)
        await trio.serve_listeners(serve(store), listeners)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5052)
    p.add_argument("--db", help="make each chat durable in this event log (created if absent)")
    p.add_argument("--inline", action="store_true",
                   help="with --db: commit each chat on the event loop (no writer thread, no group commit)")
    a = p.parse_args()
    try:
        trio.run(main, a.host, a.port, a.db, a.inline)
    except KeyboardInterrupt:
        pass
