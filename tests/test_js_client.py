"""The JavaScript client (transport/static/agentcast.js) run under Node against a real server: chunk streaming,
request_id correlation, reconnect with resume and safe resend, auth and 1008. Imports support, never transport internals."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import trio

from agentcast.actors import AgentSpec, EchoBrain
from agentcast.store import EventLog
from support import GatedBrain, connect, running_server, scaled, token_for

CLIENT = Path(__file__).resolve().parent.parent / "transport" / "static" / "agentcast.js"


def node_command() -> list[str] | None:
    """`node` with a global WebSocket (Node 22+, or Node 20.10+ with --experimental-websocket)."""
    node = shutil.which("node")
    if node is None:
        return None
    probe = "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
    for flags in ([], ["--experimental-websocket"]):
        if subprocess.run([node, *flags, "-e", probe], capture_output=True).returncode == 0:
            return [node, "--no-warnings", *flags]
    return None


NODE = node_command()
pytestmark = [
    pytest.mark.process,
    pytest.mark.transport,  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)
    pytest.mark.skipif(NODE is None, reason="needs Node.js 20.10+ on PATH (global WebSocket, or --experimental-websocket)"),
]
#: Bound on waiting for one event of a Node script (and for it to end).
EVENT_TIMEOUT = scaled(10)

# Shared by every scenario: `emit(obj)` prints one JSON line for the test; `line()` waits for the
# test's next line on stdin.
PRELUDE = """
import { AgentcastClient, AgentcastError } from %s;
import readline from "node:readline";
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\\n");
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const line = async () => (await lines.next()).value;
process.on("unhandledRejection", (err) => { emit({ event: "crash", error: String(err && err.stack || err) }); process.exit(1); });
const url = process.argv[2];
"""


class Node:
    """A Node process running one scenario script: JSON lines out, plain lines in."""

    def __init__(self, proc: trio.Process):
        self.proc = proc
        self.buffer = b""
        self.seen: list[dict] = []

    async def next(self, timeout: float = EVENT_TIMEOUT) -> dict:
        with trio.fail_after(timeout):
            while b"\n" not in self.buffer:
                chunk = await self.proc.stdout.receive_some()
                if not chunk:
                    err = await self.proc.stderr.receive_some() if self.proc.stderr else b""
                    raise AssertionError(f"node exited early; stderr: {err.decode(errors='replace')}")
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\n", 1)
        event = json.loads(raw)
        assert event.get("event") != "crash", event["error"]
        self.seen.append(event)
        return event

    async def expect(self, name: str, timeout: float = EVENT_TIMEOUT) -> dict:
        """The next event called `name` (the ones before it are kept in `seen`)."""
        while True:
            event = await self.next(timeout)
            if event["event"] == name:
                return event

    async def finish(self, nursery, timeout: float = EVENT_TIMEOUT) -> None:
        """Wait for the script to end well, then stop whatever else runs in `nursery` (the proxy)."""
        with trio.fail_after(timeout):
            code = await self.proc.wait()
        assert code == 0, (await self.proc.stderr.receive_some()).decode(errors="replace")
        nursery.cancel_scope.cancel()

    async def tell(self, text: str = "go") -> None:
        await self.proc.stdin.send_all(text.encode() + b"\n")


async def run_node(nursery, tmp_path, script: str, *urls: str) -> Node:
    path = tmp_path / "scenario.mjs"
    path.write_text(PRELUDE % json.dumps(CLIENT.as_uri()) + script + "\nprocess.exit(0);\n")
    proc = await nursery.start(
        lambda task_status: trio.run_process(
            [*NODE, str(path), *urls], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            check=False, task_status=task_status,
        )
    )
    return Node(proc)


class Proxy:
    """A TCP proxy in front of the server that the test can cut, refuse and freeze (a dead network)."""

    def __init__(self, target: int):
        self.target = target
        self.accepting = True
        self.connections = 0  # TCP connections accepted so far (refused ones included)
        self.flowing = trio.Event()
        self.flowing.set()
        self.scopes: set[trio.CancelScope] = set()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _pump(self, source, sink, scope):
        try:
            while data := await source.receive_some():
                await self.flowing.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()  # one side hung up: hang up the other

    async def _handle(self, downstream):
        self.connections += 1
        async with downstream:
            if not self.accepting:
                return
            async with await trio.open_tcp_stream("127.0.0.1", self.target) as upstream:
                with trio.CancelScope() as scope:
                    self.scopes.add(scope)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, downstream, upstream, scope)
                        nursery.start_soon(self._pump, upstream, downstream, scope)
                self.scopes.discard(scope)

    def cut(self, *, refuse: bool) -> None:
        """Drop every connection at once (no close frame); with `refuse`, turn new ones away too."""
        self.accepting = not refuse
        for scope in list(self.scopes):
            scope.cancel()

    def freeze(self) -> None:
        """Stop forwarding bytes while keeping the connections open."""
        self.flowing = trio.Event()


async def test_chat_streams_chunks_and_answers_each_call_by_request_id(db_path, tmp_path):
    specs = [AgentSpec(a, EchoBrain(delay=0.005, chunks=4)) for a in ("my_agent", "assistant")]
    script = """
const client = new AgentcastClient(url, { userId: "ada" });
await client.connect();
const chunks = { my_agent: [], assistant: [] };
const [one, two] = await Promise.all([
  client.chat("my_agent", "first question", { onChunk: (d) => chunks.my_agent.push(d) }),
  client.chat("assistant", "second question", { onChunk: (d) => chunks.assistant.push(d) }),
]);
emit({ event: "answers", one, two, chunks });
const results = await client.searchMemory("my_agent", "first question", { limit: 3, useLongTerm: false });
emit({ event: "search", results });
const errors = await Promise.all([
  client.chat("ghost", "hello?").catch((e) => [e instanceof AgentcastError, e.code, e.frame.agent_id]),
  client.searchMemory("my_agent", "").catch((e) => [e instanceof AgentcastError, e.code]),
  client.searchMemory("my_agent", "first", { legs: ["semantic"] }).catch((e) => [e instanceof AgentcastError, e.code]),
]);
emit({ event: "errors", errors });
const cleared = await client.clearMemory("my_agent", { clearLongTerm: true });
emit({ event: "cleared", cleared });
client.close();
"""
    async with running_server(db_path, specs) as server, trio.open_nursery() as nursery:
        node = await run_node(nursery, tmp_path, script, f"ws://127.0.0.1:{server.port}/ws")
        answers = await node.expect("answers")
        for key, agent, text in (("one", "my_agent", "first question"), ("two", "assistant", "second question")):
            answer = answers[key]
            assert answer["type"] == "response" and answer["agent_id"] == agent
            assert answer["message"].startswith(f"You said: {text}") and isinstance(answer["seq"], int)
            assert len(answers["chunks"][agent]) >= 2 and "".join(answers["chunks"][agent]) == answer["message"]
        search = await node.expect("search")
        assert [r["content"] for r in search["results"]][:1] == ["first question"]
        errors = await node.expect("errors")
        assert errors["errors"] == [[True, "unknown_agent", "ghost"], [True, "invalid_field"],
                                    [True, "semantic_unavailable"]]  # legs were sent: this agent has no embedder
        cleared = await node.expect("cleared")
        assert cleared["cleared"]["forgotten"] == 2 and cleared["cleared"]["clear_long_term"] is True
        await node.finish(nursery)


async def test_reconnect_resumes_after_the_last_seq_and_resends_a_chat_in_flight(db_path, tmp_path):
    gated = GatedBrain()
    specs = [AgentSpec("my_agent", EchoBrain()), AgentSpec("slow", gated)]
    script = """
const client = new AgentcastClient(url, { userId: "bob", initialDelay: 10, maxDelay: 50, pingInterval: 0, connectTimeout: 500 });
const logged = [];
client.on("state", (s) => emit({ event: "state", state: s.state }));
for (const type of ["user_message", "response"]) {
  client.on(type, (f) => logged.push([f.type, f.message, f.seq]));
}
await client.connect();
await client.subscribe("my_agent", { afterSeq: 0 });
const first = await client.chat("my_agent", "before the cut");
emit({ event: "answered", seq: first.seq });
await line();  // the test cut the connection, chatted as bob elsewhere, and let us back in
const after = await client.chat("my_agent", "after the cut");
emit({ event: "after", seq: after.seq, logged });
const slow = client.chat("slow", "in flight when cut");
emit({ event: "sent" });
const answer = await slow;
emit({ event: "slow", message: answer.message, seq: answer.seq });
client.close();
"""
    async with running_server(db_path, specs) as server, trio.open_nursery() as nursery:
        proxy = Proxy(server.port)
        port = await nursery.start(proxy.serve)
        node = await run_node(nursery, tmp_path, script, f"ws://127.0.0.1:{port}/ws")
        first = (await node.expect("answered"))["seq"]

        proxy.cut(refuse=True)
        assert (await node.expect("state"))["state"] == "reconnecting"
        async with connect(server.port) as other:  # bob on another device, meanwhile
            await other.request({"type": "set_user", "user_id": "bob"}, "user_set")
            missed = (await other.request({"type": "chat", "agent_id": "my_agent", "message": "while away"},
                                          "agent_done"))[-2]
        proxy.accepting = True
        await node.tell()
        after = await node.expect("after")
        # Seen once each: live before the cut, the backlog (resumed after `first`), live again.
        assert [(t, seq) for t, _, seq in after["logged"]] == [
            ("user_message", first - 1), ("response", first),
            ("user_message", missed["seq"] - 1), ("response", missed["seq"]),
            ("user_message", after["seq"] - 1), ("response", after["seq"]),
        ]
        assert [m for t, m, _ in after["logged"] if t == "user_message"] == [
            "before the cut", "while away", "after the cut"]
        assert after["logged"][3][1] == missed["message"]

        # Cut while a turn runs: the server finishes and logs it; the client sends the chat again
        # with the same command_id on reconnect and gets the logged answer, not a second turn.
        await node.expect("sent")
        with trio.fail_after(EVENT_TIMEOUT):
            await gated.started.wait()
        proxy.cut(refuse=True)
        assert (await node.expect("state"))["state"] == "reconnecting"
        gated.gate.set()
        proxy.accepting = True
        slow = await node.expect("slow")
        assert slow["message"] == "gated answer"
        await node.finish(nursery)
    with EventLog.open(db_path, readonly=True) as log:
        turns = [r.event for r in log.read(user="bob") if getattr(r.event, "content", None) == "in flight when cut"]
    assert len(turns) == 1


async def test_a_silent_connection_is_dropped_by_the_keepalive_and_reconnected(db_path, tmp_path):
    script = """
const client = new AgentcastClient(url, { initialDelay: 10, maxDelay: 50, pingInterval: 50, pingTimeout: 150, connectTimeout: 500 });
client.on("state", (s) => emit({ event: "state", state: s.state, reason: s.reason ?? null }));
await client.connect();
emit({ event: "open" });
await line();
const answer = await client.chat("my_agent", "still there?");
emit({ event: "answered", message: answer.message });
client.close();
"""
    async with running_server(db_path) as server, trio.open_nursery() as nursery:
        proxy = Proxy(server.port)
        port = await nursery.start(proxy.serve)
        node = await run_node(nursery, tmp_path, script, f"ws://127.0.0.1:{port}/ws")
        await node.expect("open")
        proxy.freeze()
        proxy.accepting = False
        state = await node.expect("state")
        assert state == {"event": "state", "state": "reconnecting", "reason": "keepalive timeout"}
        proxy.cut(refuse=False)
        proxy.flowing.set()
        await node.expect("state")  # open again
        await node.tell()
        assert (await node.expect("answered"))["message"].startswith("You said: still there?")
        await node.finish(nursery)


async def test_the_example_in_docs_clients_md_runs(db_path, tmp_path):
    docs = (CLIENT.parent.parent.parent / "docs" / "clients.md").read_text()
    example = next(b for b in re.findall(r"```js\n(.*?)```", docs, re.S) if "./agentcast.js" in b)
    script = tmp_path / "chat.mjs"
    script.write_text(example.replace('"./agentcast.js"', json.dumps(CLIENT.as_uri())))
    async with running_server(db_path) as server:
        env = {**os.environ, "AGENTCAST_URL": f"ws://127.0.0.1:{server.port}/ws"}
        with trio.fail_after(scaled(20)):
            done = await trio.run_process([*NODE, str(script)], env=env, capture_stdout=True, capture_stderr=True)
    out = done.stdout.decode()
    assert out.startswith("You said: My favourite colour is turquoise.") and "(seq 2)" in out, out
    assert "short_term user: My favourite colour is turquoise." in out
    assert out.rstrip().endswith("my_agent, assistant, multi_user_agent")
    assert done.stderr.decode().split() == ["[connecting]", "[open]", "[closed]"]


async def test_with_auth_on_a_refused_token_is_not_kept_and_1008_stops_until_a_new_token(db_path, tmp_path, monkeypatch):
    """The server closes an unauthenticated connection with 1008 after `auth_timeout`: the client does not
    reconnect with no (or a refused) token, and `auth(token)` opens it again, `auth` before `set_user`."""
    monkeypatch.setenv("AGENTCAST_JS_TEST_SECRET", "j" * 40)  # (tokens: support.token_for)
    script = """
const client = new AgentcastClient(url, { userId: "ann", initialDelay: 10, maxDelay: 50, pingInterval: 0 });
client.on("state", (s) => emit({ event: "state", state: s.state, code: s.code ?? null }));
client.on("error", (f) => emit({ event: "error", code: f.code }));
await client.connect();
const refused = await client.auth("not.valid").catch((e) => e.code);
emit({ event: "refused", code: refused, kept: client.options.token ?? null });
await line();  // the server has closed the connection (1008)
emit({ event: "timer", timer: client._timer });
const token = await line();
const answer = await client.auth(token);
emit({ event: "authenticated", user: answer.user_id, kept: client.options.token === token });
const chat = await client.chat("my_agent", "signed in");
emit({ event: "answered", message: chat.message });
client.close();
"""
    async with running_server(db_path, auth_secret_env="AGENTCAST_JS_TEST_SECRET", auth_timeout=0.3) as server, \
            trio.open_nursery() as nursery:
        node = await run_node(nursery, tmp_path, script, f"ws://127.0.0.1:{server.port}/ws")
        assert (await node.expect("refused")) == {"event": "refused", "code": "invalid_token", "kept": None}
        assert (await node.expect("state")) == {"event": "state", "state": "closed", "code": 1008}
        await node.tell()
        assert (await node.expect("timer"))["timer"] is None  # no reconnect scheduled
        await node.tell(token_for(b"j" * 40, "ann"))
        assert (await node.expect("authenticated")) == {"event": "authenticated", "user": "ann", "kept": True}
        assert (await node.expect("answered"))["message"].startswith("You said: signed in")
        await node.finish(nursery)
    # before the 1008: the first connection's set_user was unauthenticated; after: no such error
    codes = [e.get("code") for e in node.seen if e["event"] == "error"]
    assert codes == ["unauthenticated", "invalid_token"]
    states = [e["state"] for e in node.seen if e["event"] == "state"]
    assert states == ["connecting", "open", "closed", "connecting", "open"]


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_connect_rejects_after_one_failed_attempt_unless_asked_to_retry(db_path, tmp_path):
    script = """
const refused = new AgentcastClient(url, { initialDelay: 10, maxDelay: 40, pingInterval: 0 });
const states = [];
refused.on("state", (s) => states.push(s.state));
const error = await refused.connect().then(() => null, (e) => e);
emit({ event: "rejected", error: error && [error instanceof AgentcastError, error.code, error.message], states,
       state: refused.state, timer: refused._timer });
const chat = await refused.chat("my_agent", "hello?").then(() => null, (e) => e.code);
emit({ event: "chat", code: chat, states });

await line();  // the test points the proxy's port at nothing
const patient = new AgentcastClient(process.argv[3], { initialDelay: 10, maxDelay: 40, pingInterval: 0 });
patient.on("state", (s) => emit({ event: "state", state: s.state, attempt: s.attempt ?? null, delay: s.delay ?? null }));
const opened = patient.connect({ retry: true });
await line();  // the server is there now
await opened;
emit({ event: "open", state: patient.state });
patient.close();
"""
    async with running_server(db_path) as server, trio.open_nursery() as nursery:
        proxy = Proxy(server.port)
        proxy.accepting = False  # takes the TCP connection and drops it: a failed handshake
        port = await nursery.start(proxy.serve)
        dead = f"ws://127.0.0.1:{closed_port()}/ws"
        node = await run_node(nursery, tmp_path, script, dead, f"ws://127.0.0.1:{port}/ws")
        rejected = await node.expect("rejected")
        ok, code, message = rejected["error"]
        assert ok and code == "cannot_connect" and message.startswith(f"Cannot connect to {dead}"), rejected
        assert rejected["states"] == ["connecting", "closed"] and rejected["state"] == "closed"
        assert rejected["timer"] is None  # and no attempt scheduled
        # a call made while closed tries again, once: refused the same way, it fails the same way
        assert (await node.expect("chat")) == {
            "event": "chat", "code": "cannot_connect", "states": ["connecting", "closed", "connecting", "closed"]}

        await node.tell()
        attempts = []
        while len(attempts) < 3:  # each attempt is told, with its number and delay
            state = await node.expect("state")
            if state["state"] == "reconnecting":
                attempts.append(state)
        assert [s["attempt"] for s in attempts] == [1, 2, 3]
        assert all(0 < s["delay"] <= 40 for s in attempts)
        assert proxy.connections >= 3
        proxy.accepting = True
        await node.tell()
        assert (await node.expect("open"))["state"] == "open"
        await node.finish(nursery)


async def test_the_example_in_docs_clients_md_says_when_there_is_no_server(tmp_path):
    docs = (CLIENT.parent.parent.parent / "docs" / "clients.md").read_text()
    example = next(b for b in re.findall(r"```js\n(.*?)```", docs, re.S) if "./agentcast.js" in b)
    script = tmp_path / "chat.mjs"
    script.write_text(example.replace('"./agentcast.js"', json.dumps(CLIENT.as_uri())))
    url = f"ws://127.0.0.1:{closed_port()}/ws"
    with trio.fail_after(scaled(20)):
        done = await trio.run_process([*NODE, str(script)], env={**os.environ, "AGENTCAST_URL": url},
                                      capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 1 and done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert lines[:2] == ["[connecting]", "[closed]"] and len(lines) == 3, lines
    assert lines[2].startswith(f"Cannot connect to {url}: "), lines
