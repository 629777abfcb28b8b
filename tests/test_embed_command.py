"""`agentcast embed`: the backfill of a log's vectors as a real subprocess against a fake OpenAI-compatible
/v1/embeddings server (support/embedders.py) in this process: killed (SIGKILL) in the middle of a batch and run
again, every message ends with exactly one vector, and none was sent to the embedder twice; a progress line;
clear errors."""
from __future__ import annotations

import os
import re
import signal
import sys
import tempfile

import pytest
import trio

from agentcast.store import EventLog, UserSaid, verify
from support import scaled
from support.embedders import FakeEmbeddings
from support.process import CLI, cli

pytestmark = pytest.mark.process

MESSAGES = 200


def write_log(path) -> list[str]:
    texts = [f"message {i} of user {i % 4} about topic {i % 7}" for i in range(MESSAGES)]
    with EventLog.open(path) as log:
        for i in range(0, MESSAGES, 20):
            log.append([[UserSaid("helper", f"user{j % 4}", "2026-12-01T00:00:00.000Z", texts[j])
                         for j in range(i, i + 20)]])
    return texts


def config_for(tmp_path, fake: FakeEmbeddings) -> str:
    path = tmp_path / "agentcast.toml"
    settings = ", ".join(f"{k} = {v!r}".replace("'", '"') for k, v in fake.settings(retries=0).items())
    path.write_text(f"[server]\nembedder = {{ {settings} }}\n[agents.helper]\n[agents.other]\n")
    return str(path)


async def embed(tmp_path, db, config, *, until: trio.Event | None = None) -> tuple[int, str]:
    """Run `agentcast embed`; with `until`, kill it (SIGKILL) once `until` is set and a progress line was
    printed. (exit status, stderr)."""
    with tempfile.TemporaryFile() as err:
        process = await trio.lowlevel.open_process([*CLI, "embed", "--db", str(db), "--config", config,
                                                    "--batch-size", "8", "--progress-every", "0.05"],
                                                   stdout=err, stderr=err)
        with trio.fail_after(scaled(60)):
            if until is not None:
                await until.wait()
                while b"40 embedded of 200" not in os.pread(err.fileno(), 1 << 16, 0):
                    await trio.sleep(0.02)
                process.send_signal(signal.SIGKILL)
            code = await process.wait()
        err.seek(0)
        return code, err.read().decode()


async def test_a_killed_backfill_goes_on_where_it_stopped_and_embeds_every_message_once(tmp_path, nursery):
    db = tmp_path / "log.db"
    texts = write_log(db)
    fake = await FakeEmbeddings(stall_after=5).start(nursery)  # the 6th request waits: the process is killed there
    config = config_for(tmp_path, fake)
    code, err = await embed(tmp_path, db, config, until=fake.stalled)
    assert code == -signal.SIGKILL, err
    assert re.search(r"agentcast embed: helper, other \(openai fake-words at .*\): 40 embedded of 200 \(20\.0%\), "
                     r"[\d,]+ messages/s, about \d+ s left", err), err  # the progress line while it waits
    with EventLog.open(db, readonly=True) as log:
        assert log.embedding_cursor("helper", "openai:fake-words:32") == 40  # five batches of 8, each committed
        assert sum(len(v.seqs) for v in log.stored_vectors()) == 40
        assert verify(log).ok
    fake.stall_after = None
    code, err = await embed(tmp_path, db, config)
    assert code == 0, err
    assert "helper, other (openai fake-words at" in err and "done, 160 messages embedded" in err
    sent = [t for request in fake.inputs for t in request]
    assert sorted(sent) == sorted(texts)  # every message embedded once, across the two runs
    with EventLog.open(db, readonly=True) as log:
        report = verify(log)
        assert report.ok, report.as_json()
        assert sum(len(v.seqs) for v in log.stored_vectors()) == MESSAGES
    code, err = await embed(tmp_path, db, config)  # nothing left to do
    assert code == 0 and "done, 0 messages embedded" in err and len(fake.inputs) == MESSAGES // 8


def test_embed_refuses_what_it_cannot_do(tmp_path):
    missing = cli("embed", "--db", str(tmp_path / "none.db"), "--config", os.devnull, cwd=tmp_path)
    assert missing.returncode == 1 and "no agent has an embedder" in missing.stderr
    config = tmp_path / "c.toml"
    config.write_text('[server]\nembedder = { kind = "openai", model = "m", dimensions = 4 }\n[agents.a]\n')
    absent = cli("embed", "--db", str(tmp_path / "none.db"), "--config", str(config), cwd=tmp_path)
    assert absent.returncode == 1 and "no such database file" in absent.stderr
    assert not (tmp_path / "none.db").exists()
    unknown = cli("embed", "--db", str(tmp_path / "none.db"), "--config", str(config), "--agent", "zed", cwd=tmp_path)
    assert unknown.returncode == 2 and "no agent 'zed'" in unknown.stderr


class _Choice:
    """An embedder choice as `agentcast embed` gets them from a config: `make` returns `embedder`, or raises."""

    def __init__(self, embedder=None, error: Exception | None = None) -> None:
        self.embedder, self.error = embedder, error

    def missing(self):
        return None

    def make(self):
        if self.error is not None:
            raise self.error
        return self.embedder


async def test_embed_ends_with_an_error_when_an_embedder_cannot_be_made(tmp_path, capsys):
    from agentcast.actors import EmbedderUnavailable
    from agentcast.transport import cli as cli_module

    db = tmp_path / "log.db"
    write_log(db)
    with trio.fail_after(scaled(20)):  # it used to print the error and wait for ever on the journal's task
        code = await cli_module._embed_log(str(db), {_Choice(error=EmbedderUnavailable("no model here")): ["helper"]},
                                           8, 0.05)
    assert code == 1 and "embedder: no model here" in capsys.readouterr().err


async def test_embed_gives_up_with_an_error_when_the_embedder_keeps_failing(tmp_path, capsys):
    from agentcast.transport import cli as cli_module
    from support.embedders import WordEmbedder

    db = tmp_path / "log.db"
    write_log(db)
    embedder = WordEmbedder()
    embedder.fail(10**6)  # a refused key, a model server that is down: never a vector
    with trio.fail_after(scaled(20)):
        code = await cli_module._embed_log(str(db), {_Choice(embedder): ["helper"]}, 8, 0.05)
    err = capsys.readouterr().err
    assert code == 1 and "the embedder keeps failing (the fake embedder fails on purpose)" in err
    assert "run agentcast embed again to go on" in err
    with EventLog.open(db) as log:
        assert verify(log).ok
