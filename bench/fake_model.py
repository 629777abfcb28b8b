#!/usr/bin/env python3
"""A fake OpenAI-compatible model server for the streaming benchmark (`bench/streaming.py`): answers every
POST .../chat/completions with a Chat Completions stream of N deltas, DELAY seconds before each, as a model
generating at a steady rate would; then the finish chunk, the usage chunk and `data: [DONE]`.

The answer echoes the last message as the `echo` brain does ("You said: ..."), cut into N pieces, so the
openai brain's turns carry the same text as the echo agent's. HTTP/1.1 with keep-alive and a chunked body,
as OpenAI serves it. Built for being cheap, not for being strict (the tests' fake, tests/support/fake_openai.py,
is the strict one): asyncio protocols (uvloop when importable), one timer per stream step, so that it takes
little of the CPU the server under test shares with it. Standard library only (uvloop optional).

    python bench/fake_model.py [--port 0] [--deltas 10] [--delay 0.03]

Prints `listening on PORT` once it accepts connections; stops on SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n")
BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 11\r\nconnection: close\r\n\r\nbad request"


def split_chunks(text: str, n: int) -> list[str]:
    """`text` cut at spaces into at most `n` pieces (the echo brain's way, so both carry the same deltas)."""
    size = max(1, -(-len(text) // n))
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        space = text.find(" ", end)
        end = len(text) if space == -1 or len(pieces) == n - 1 else space + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def sse_chunk(payload: dict | str) -> bytes:
    """One SSE event in one HTTP chunk."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    event = f"data: {data}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(event), event)


def delta_chunk(text: str | None, finish: str | None = None) -> bytes:
    delta = {} if text is None else {"content": text}
    return sse_chunk({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": "fake-model",
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


class Stream(asyncio.Protocol):
    """One client connection: requests one after another (keep-alive), each answered by a timed stream."""

    def __init__(self, server: "FakeModel") -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.busy = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections += 1

    def connection_lost(self, exc) -> None:
        self.server.connections -= 1
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self.next_request()

    def next_request(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if len(self.buffer) < end + 4 + length:
            return
        body, self.buffer = self.buffer[end + 4:end + 4 + length], self.buffer[end + 4 + length:]
        try:
            messages = json.loads(body)["messages"]
            text = str(messages[-1]["content"])
        except (ValueError, KeyError, IndexError, TypeError):
            self.transport.write(BAD)
            self.transport.close()
            return
        self.server.requests += 1
        answer = f"You said: {text}\n(I remember 0 earlier messages of our conversation.)"
        self.busy = True
        self.transport.write(HEAD)
        self.step(split_chunks(answer, self.server.deltas), 0, len(text.split()))

    def step(self, pieces: list[str], n: int, prompt_words: int) -> None:
        """Send piece `n` after the delay (the last one with the end of the stream), then take the next request."""
        server = self.server
        if n < len(pieces):
            self.timer = server.loop.call_later(server.delay, self.send, pieces, n, prompt_words)
            return

    def send(self, pieces: list[str], n: int, prompt_words: int) -> None:
        self.timer = None
        if self.transport is None:
            return
        data = delta_chunk(pieces[n])
        if n + 1 == len(pieces):
            usage = {"prompt_tokens": prompt_words, "completion_tokens": len(pieces),
                     "total_tokens": prompt_words + len(pieces)}
            data += (delta_chunk(None, "stop")
                     + sse_chunk({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [], "usage": usage})
                     + sse_chunk("[DONE]") + b"0\r\n\r\n")
            self.transport.write(data)
            self.busy = False
            self.next_request()
            return
        self.transport.write(data)
        self.step(pieces, n + 1, prompt_words)


class FakeModel:
    def __init__(self, deltas: int, delay: float) -> None:
        self.deltas = deltas
        self.delay = delay
        self.connections = 0
        self.requests = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, port: int) -> None:
        self.loop = asyncio.get_running_loop()
        server = await self.loop.create_server(lambda: Stream(self), "127.0.0.1", port, backlog=4096)
        print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()
        print(f"served {self.requests} requests", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--deltas", type=int, default=10)
    ap.add_argument("--delay", type=float, default=0.03)
    a = ap.parse_args()
    fake = FakeModel(a.deltas, a.delay)
    try:
        import uvloop
    except ImportError:
        asyncio.run(fake.serve(a.port))
    else:
        uvloop.run(fake.serve(a.port))


if __name__ == "__main__":
    main()
