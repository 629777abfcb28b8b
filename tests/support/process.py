"""The real `agentcast` command in a subprocess, for the process tests: `agentcast serve` on a free
loopback port (`start_serve`, `ServeProcess`; the `serve` fixture of conftest.py kills each at teardown),
one-shot commands (`cli`, `replay_json`), their bounds (`START_TIMEOUT`, `EXIT_TIMEOUT`, `FRAME_TIMEOUT`,
scaled by AGENTCAST_TEST_TIMEOUT_SCALE), files a server must refuse (`FOREIGN_FILES`), and a JSON client
over the `websockets` (asyncio) library, driven by `asyncio.run` (`connect`, `Client`)."""
from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import websockets

from .timeouts import scaled

CLI = [sys.executable, "-m", "agentcast.transport.cli"]
#: Bound on waiting for the "listening" line, and on one-shot commands.
START_TIMEOUT = scaled(15.0)
#: Bound on waiting for a server to exit after a signal.
EXIT_TIMEOUT = scaled(10.0)
#: Bound on waiting for one frame from the server.
FRAME_TIMEOUT = scaled(5.0)
LISTENING = re.compile(r"^agentcast listening on ws://127\.0\.0\.1:(?P<port>\d+)/ws \(db (?P<db>.*); agents: (?P<agents>.*)\)$")
SQLITE_HEADER = b"SQLite format 3\x00"


class DidNotStart(Exception):
    """`agentcast serve` exited before printing its "listening" line."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"agentcast serve exited with {returncode}; stderr:\n{stderr}")
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class ServeProcess:
    """A running `agentcast serve`; its stderr goes to an unnamed temporary file (read with pread)."""

    def __init__(self, proc: subprocess.Popen, err, line: str) -> None:
        self.proc = proc
        self._err = err
        self.line = line
        match = LISTENING.match(line)
        assert match, f"unexpected first line on stdout: {line!r}"
        self.port = int(match["port"])
        self.agents = match["agents"].split(", ")
        self.url = f"ws://127.0.0.1:{self.port}/ws"

    @property
    def stderr(self) -> str:
        fd = self._err.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_for_log(self, text: str, timeout: float = FRAME_TIMEOUT) -> None:
        """Poll stderr (bounded) until it contains `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            assert self.proc.poll() is None, f"the server exited before logging {text!r}:\n{self.stderr}"
            assert time.monotonic() < deadline, f"the server did not log {text!r} within {timeout}s:\n{self.stderr}"
            time.sleep(0.02)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int:
        """SIGTERM, then the exit status."""
        self.signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        """Make sure the process is gone and its files are closed (idempotent)."""
        try:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(EXIT_TIMEOUT)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()
            self._err.close()


def _first_line(proc: subprocess.Popen, timeout: float) -> str | None:
    """The first stdout line, or None at EOF (the process ended); raises TimeoutError after `timeout`."""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"agentcast serve printed no 'listening' line within {timeout}s (got {buf!r})")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 1)  # a byte at a time: what follows the line stays in the pipe for the test
            if not chunk:
                return None
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


def start_serve(db: Path | str, *args: str, cwd: Path | None = None) -> ServeProcess:
    """Start `agentcast serve --port 0 --db DB ARGS` and wait (bounded) until it listens.

    Raises `DidNotStart` if it exits first; on any failure the process is killed.
    """
    err = tempfile.TemporaryFile()
    cmd = [*CLI, "serve", "--host", "127.0.0.1", "--port", "0", "--db", str(db), *args]
    try:
        proc = subprocess.Popen(cmd, cwd=cwd or Path(db).parent, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    except BaseException:
        err.close()
        raise
    try:
        line = _first_line(proc, START_TIMEOUT)
        if line is None:
            returncode = proc.wait(EXIT_TIMEOUT)
            fd = err.fileno()
            stderr = os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")
            raise DidNotStart(returncode, "", stderr)
        return ServeProcess(proc, err, line)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait(EXIT_TIMEOUT)
        proc.stdout.close()
        err.close()
        raise


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a one-shot `agentcast ARGS` (bounded) and return its result."""
    return subprocess.run(
        [*CLI, *args], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=START_TIMEOUT
    )


def replay_json(db: Path, *args: str) -> dict:
    result = cli("replay", "--db", str(db), "--json", *args, cwd=db.parent)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def replay_json_many(db: Path, *arg_lists: tuple[str, ...]) -> list[dict]:
    """`replay --json` once per argument list, the processes side by side (bounded; all reaped)."""
    procs = []
    try:
        for args in arg_lists:
            procs.append(subprocess.Popen(
                [*CLI, "replay", "--db", str(db), "--json", *args], cwd=db.parent,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=START_TIMEOUT)
            assert proc.returncode == 0 and "Traceback" not in err, err
            results.append(json.loads(out))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def assert_one_line_error(stderr: str, *expected: str) -> str:
    """stderr is exactly one `agentcast: error: ...` line containing every `expected`, and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("agentcast: error: "), stderr
    for text in expected:
        assert text in lines[0], (text, stderr)
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every path under `directory` with its bytes (None for a directory)."""
    return {
        str(p.relative_to(directory)): (None if p.is_dir() else p.read_bytes()) for p in sorted(directory.rglob("*"))
    }


def write_config(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


class Client:
    """JSON frames over a real WebSocket (the `websockets` asyncio client)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.hello: dict = {}

    async def send(self, frame: dict | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = FRAME_TIMEOUT) -> dict:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def request(self, frame: dict | str, until: str) -> list[dict]:
        """Send `frame`; the frames up to and including the first of type `until` (an unexpected error fails)."""
        await self.send(frame)
        frames = []
        while True:
            frames.append(await self.recv())
            if frames[-1]["type"] == until:
                return frames
            assert frames[-1]["type"] != "error", frames

    async def set_user(self, user_id: int | str) -> None:
        frames = await self.request({"type": "set_user", "user_id": user_id}, "user_set")
        assert frames[-1]["user_id"] == user_id

    async def chat(self, message: str, agent_id: str = "my_agent") -> dict:
        """One turn: agent_thinking, chunks, response, agent_done; returns the response frame."""
        frames = await self.request({"type": "chat", "agent_id": agent_id, "message": message}, "agent_done")
        types = [f["type"] for f in frames]
        assert types[0] == "agent_thinking" and types.count("response") == 1, types
        response = frames[types.index("response")]
        assert response["agent_id"] == agent_id and message in response["message"], response
        chunks = "".join(f["delta"] for f in frames if f["type"] == "response_chunk")
        assert chunks == response["message"]
        return response

    async def search(self, query: str, agent_id: str = "my_agent") -> list[dict]:
        frames = await self.request({"type": "search_memory", "agent_id": agent_id, "query": query}, "memory_results")
        return frames[-1]["results"]


@asynccontextmanager
async def connect(url: str):
    """A `Client` whose `connected` frame is already read into `.hello`."""
    async with websockets.connect(url, open_timeout=FRAME_TIMEOUT, close_timeout=FRAME_TIMEOUT) as ws:
        client = Client(ws)
        client.hello = await client.recv()
        assert client.hello["type"] == "connected" and client.hello["client_id"], client.hello
        yield client


def unique(prefix: str) -> tuple[str, str]:
    """A message containing a fresh token, and the token (one FTS word)."""
    token = "tok" + uuid.uuid4().hex
    return f"{prefix} {token}", token


def _make_not_sqlite(path: Path) -> None:
    path.write_bytes(b"not a database")


def _make_foreign_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('somebody else''s data')")
    conn.commit()
    conn.close()


FOREIGN_FILES = {"not-sqlite": _make_not_sqlite, "foreign-sqlite": _make_foreign_sqlite}

