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

With `--deltas N --delay S` a chat is answered the way issue 17's streaming benchmark needs (workload B of
`../shared/bench/streaming/`): N response_chunk frames, S seconds before each (agentcast's shared timer: the cheapest sleep for many
sleepers), each in its own socket write (`os.write`, no checkpoint), then response and agent_done together: the least a trio server does per streamed turn. With
`--model URL` (a server like bench/fake_model.py, e.g. http://127.0.0.1:PORT/v1) the pieces come from the
model instead of a sleep: one kept-alive HTTP/1.1 connection per client connection, a POST per chat, each
socket read's SSE events cut by hand and each event's JSON parsed (`json.loads`): the least the `openai`
brain's path does per streamed turn.

    python bench/floor.py --port {port} --db {db} --deltas 10 --delay 0.03     # streaming floor, echo
    python bench/floor.py --port {port} --db {db} --model http://127.0.0.1:PORT/v1

Trust it on loopback only: it skips what a real server must check (sizes, UTF-8, control frames
other than close and ping, fragments).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import os
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source tree without installing

from agentcast.actors import Journal, utc_now  # noqa: E402
from agentcast.actors._brain import sleep as shared_sleep  # noqa: E402  (the cheapest sleep for many sleepers)
from agentcast.actors._brain import split_chunks  # noqa: E402  (the echo brain's pieces)
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
    if head.startswith(b"GET /healthz "):  # a benchmark's readiness check
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        return None
    key = next((line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")), None)
    if key is None:
        return None
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    return bytearray(rest)


class Model:
    """One kept-alive connection to an OpenAI-compatible server (`--model`), opened at the first chat."""

    def __init__(self, url: str) -> None:
        host_port, _, path = url.removeprefix("http://").partition("/")
        self.host, _, port = host_port.partition(":")
        self.port = int(port or 80)
        self.path = "/" + path.rstrip("/") + "/chat/completions"
        self.stream: trio.SocketStream | None = None

    async def pieces(self, text: str):
        """Yield the text of each delta the model streams for `text`."""
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
        body = _dumps({"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": text}]}).encode()
        await self.stream.send_all(
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        buf = b""
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("the model closed the connection")
            buf += data
            # each SSE event is one HTTP chunk: "SIZE\r\ndata: ...\n\n\r\n"; the head and chunk sizes are skipped
            while (end := buf.find(b"\n\n")) >= 0:
                event, buf = buf[:end], buf[end + 2:]
                at = event.find(b"data: ")
                if at < 0:
                    continue
                data = event[at + 6:]
                if data == b"[DONE]":
                    if not buf.endswith(b"0\r\n\r\n"):  # the body's last chunk: read it, so the connection is reusable
                        while not buf.endswith(b"0\r\n\r\n"):
                            buf += await self.stream.receive_some(65536)
                    return
                for choice in json.loads(data)["choices"]:
                    content = choice["delta"].get("content")
                    if content:
                        yield content


def serve(store: Journal | EventLog | None, deltas: int = 0, delay: float = 0.0, model_url: str | None = None):
    streaming = bool(deltas or model_url)

    async def connection(stream: trio.SocketStream) -> None:
        model = Model(model_url) if model_url else None
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
                    if kind == "chat" and streaming:
                        await stream.send_all(b"".join(out))
                        out = []
                        await stream_turn(stream, store, model, user, agent, str(msg.get("message")), deltas, delay)
                    elif kind == "chat":
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


async def stream_turn(stream: trio.SocketStream, store: Journal | EventLog | None, model: Model | None, user: str,
                      agent: str, text: str, deltas: int, delay: float) -> None:
    """One streamed chat: agent_thinking, each piece in its own write as it comes, then the user's message and
    the answer committed together (as agentcast logs a turn: the message with its first event) and response +
    agent_done in one write."""
    rid = f"r{next(_ids)}"
    said = UserSaid(agent, user, utc_now(), text, rid)
    await stream.send_all(frame(_dumps({"type": "agent_thinking", "agent_id": agent, "request_id": rid})))
    answer = []
    if model is not None:
        pieces = model.pieces(text)
    else:
        async def sleeping():
            for piece in split_chunks(f"You said: {text}", deltas):
                await shared_sleep(delay)
                yield piece
        pieces = sleeping()
    fd = stream.socket.fileno()
    async for piece in pieces:
        answer.append(piece)
        data = frame(_dumps({"type": "response_chunk", "agent_id": agent, "content": piece, "request_id": rid}))
        try:  # straight to the socket (no checkpoint, no wait): what the socket does not take goes the usual way
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            await stream.send_all(data[sent:])
    content = "".join(answer)
    if store is not None:
        events = [said, AgentAnswered(agent, user, utc_now(), content, rid)]
        store.append([events]) if isinstance(store, EventLog) else await store.append(events)
    await stream.send_all(frame(_dumps({"type": "response", "agent_id": agent, "message": content, "request_id": rid}))
                          + frame(_dumps({"type": "agent_done", "agent_id": agent, "request_id": rid})))


async def main(host: str, port: int, db: str | None, inline: bool, deltas: int = 0, delay: float = 0.0,
               model: str | None = None) -> None:
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
        await trio.serve_listeners(serve(store, deltas, delay, model), listeners)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5052)
    p.add_argument("--db", help="make each chat durable in this event log (created if absent)")
    p.add_argument("--inline", action="store_true",
                   help="with --db: commit each chat on the event loop (no writer thread, no group commit)")
    p.add_argument("--deltas", type=int, default=0, help="stream each answer in this many pieces (one write each)")
    p.add_argument("--delay", type=float, default=0.0, help="with --deltas: seconds before each piece")
    p.add_argument("--model", help="stream each answer from this OpenAI-compatible base URL (http only)")
    p.add_argument("--config", help="ignored (for ../shared/bench/streaming's command line)")
    a = p.parse_args()
    try:
        trio.run(main, a.host, a.port, a.db, a.inline, a.deltas, a.delay, a.model)
    except KeyboardInterrupt:
        pass
