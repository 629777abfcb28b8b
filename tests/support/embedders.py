"""Embedders for the tests: `WordEmbedder`, in the test's own trio run (vectors made from the words of a text, or
hand-made; failures, refusals and a gate on demand), and `FakeEmbeddings`, the same served as an OpenAI-compatible
`/v1/embeddings` endpoint on loopback (real HTTP, h11), for servers in this process or in another.

Deterministic: a text's vector depends on its words only. Reaches nothing outside.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import h11
import trio

from agentcast.actors import EmbedderError

#: The default length of the vectors.
DIMENSIONS = 32


def word_vector(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """A bag of the words of `text`, hashed into `dimensions` signed buckets: texts that share words are close,
    texts that share none are nearly orthogonal. Never all zeros (an empty text gets a bucket of its own)."""
    vector = [0.0] * dimensions
    for word in re.findall(r"\w+", text.casefold()) or [""]:
        digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
        vector[digest[0] % dimensions] += 1.0 if digest[1] & 1 else -1.0
    if not any(vector):
        vector[0] = 1.0
    return vector


class WordEmbedder:
    """An `actors.Embedder` in this trio run: `vector_of(text)` (by default `word_vector`, or the hand-made
    `vectors[text]` when given). `texts` lists every text embedded, in order; `calls` each call's texts and whether
    it was urgent. `fail(n, refused=...)` makes the next n calls raise `EmbedderError`; `refuse` names texts it
    always refuses (as a server answering 400 would); with `gate` set, each call waits for it (`waiting` is set
    when one does)."""

    def __init__(self, name: str = "words:32", dimensions: int = DIMENSIONS,
                 vectors: Mapping[str, Sequence[float]] | None = None) -> None:
        self.name = name
        self.dimensions = dimensions
        self._vectors = dict(vectors or {})
        self.texts: list[str] = []
        self.calls: list[tuple[list[str], bool]] = []
        self._failures: deque[bool] = deque()
        self.refuse: set[str] = set()
        self.gate: trio.Event | None = None
        self.waiting = trio.Event()

    def vector_of(self, text: str) -> list[float]:
        if text in self._vectors:
            return list(self._vectors[text])
        return word_vector(text, self.dimensions)

    def fail(self, times: int = 1, *, refused: bool = False) -> None:
        self._failures.extend([refused] * times)

    async def embed(self, texts: Sequence[str], *, urgent: bool = False) -> list[list[float]]:
        texts = list(texts)
        self.calls.append((texts, urgent))
        if self.gate is not None and not urgent:
            self.waiting.set()
            await self.gate.wait()
        await trio.lowlevel.checkpoint()
        if self._failures:
            refused = self._failures.popleft()
            raise EmbedderError("the fake embedder fails on purpose" + (" (refused)" if refused else ""),
                                refused=refused)
        refused_texts = [t for t in texts if t in self.refuse]
        if refused_texts:
            raise EmbedderError(f"the fake embedder refuses {refused_texts[0]!r}", refused=True)
        self.texts.extend(texts)
        return [self.vector_of(t) for t in texts]


class FakeEmbeddings:
    """`WordEmbedder`'s vectors served as an OpenAI-compatible `POST /v1/embeddings` on loopback. `inputs` holds the
    texts of each request answered; `statuses` (a deque) makes the next requests answer with those HTTP statuses
    instead; with `stall_after` = N, the request after N answered ones gets no answer (`stalled` is set) until its
    client goes."""

    def __init__(self, dimensions: int = DIMENSIONS, vector_of: Callable[[str], list[float]] | None = None, *,
                 stall_after: int | None = None) -> None:
        self.dimensions = dimensions
        self.vector_of = vector_of or functools.partial(word_vector, dimensions=dimensions)
        self.inputs: list[list[str]] = []
        self.statuses: deque[int] = deque()
        self.stall_after = stall_after
        self.stalled = trio.Event()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def settings(self, **more) -> dict:
        """An `embedder` table (TOML) for a server using this fake."""
        return {"kind": "openai", "model": "fake-words", "dimensions": self.dimensions, "base_url": self.base_url,
                "retry_backoff": 0.1, **more}

    async def start(self, nursery: trio.Nursery) -> "FakeEmbeddings":
        listeners = await nursery.start(functools.partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                body = await self._read(conn, stream)
                if body is None:
                    return
                if self.stall_after is not None and len(self.inputs) >= self.stall_after:
                    self.stalled.set()
                    while await stream.receive_some(65536):  # no answer, until the client goes
                        pass
                    return
                status, answer = self._answer(body)
                data = json.dumps(answer).encode()
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
                    ("content-type", "application/json"), ("content-length", str(len(data)))])))
                await stream.send_all(conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await stream.aclose()

    @staticmethod
    async def _read(conn: h11.Connection, stream: trio.SocketStream) -> bytes | None:
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return None
                conn.receive_data(data)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return body
            elif isinstance(event, h11.ConnectionClosed):
                return None

    def _answer(self, body: bytes) -> tuple[int, dict]:
        texts = json.loads(body)["input"]
        if self.statuses:
            status = self.statuses.popleft()
            return status, {"error": {"message": f"the fake answers {status} on purpose", "type": "fake"}}
        self.inputs.append(texts)
        return 200, {"object": "list", "model": "fake-words", "data": [
            {"object": "embedding", "index": i, "embedding": self.vector_of(t)} for i, t in enumerate(texts)]}
