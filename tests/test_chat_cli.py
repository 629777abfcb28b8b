"""`agentcast chat` end to end: the real command in a pseudo-terminal (and with piped stdin) against a real
`agentcast serve` subprocess on a loopback port with a temporary SQLite file; its `openai` agent talks to the
fake OpenAI-compatible server of tests/support/fake_openai.py (served from a thread).

Output is read with a deadline until the expected text appears; there are no fixed sleeps.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from support import scaled
from support.fake_openai import fake_openai_in_thread, text, tool_calls
from support.process import CLI, EXIT_TIMEOUT

#: Bound on waiting for one piece of output.
DEADLINE = scaled(15.0)

CONFIG = """
[agents.my_agent]
brain = "echo"

[agents.assistant]
brain = "echo"

[agents.slow]
brain = { kind = "echo", delay = 0.8, chunks = 2 }
"""


def _controlling_tty() -> None:  # pragma: no cover - runs in the child
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Chat:
    """`agentcast chat ARGS` in a pseudo-terminal that is its controlling terminal (so ^C and ^D work), as an xterm."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [*CLI, "chat", *args], stdin=slave, stdout=slave, stderr=slave, preexec_fn=_controlling_tty, close_fds=True,
            env={**(os.environ if env is None else env), "TERM": "xterm"},
        )
        os.close(slave)
        self.output = ""
        self._pos = 0  # what expect() has consumed

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def line(self, text: str) -> None:
        self.send(text + "\n")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal (it exited)
            return False
        if not data:
            return False
        self.output += data.decode("utf-8", "replace").replace("\r\n", "\n")
        return True

    def expect(self, pattern: str, timeout: float = DEADLINE) -> re.Match:
        """Wait (bounded) for `pattern` (a regex) in the output after what was matched before; consume it."""
        regex = re.compile(pattern, re.S)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output, self._pos)
            if match:
                self._pos = match.end()
                return match
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {pattern!r} within {timeout}s; output after the last match:\n{self.output[self._pos:]}"
            if not self._read(min(remaining, 0.5)) and not regex.search(self.output, self._pos):
                raise AssertionError(f"the chat exited before {pattern!r}; output:\n{self.output[self._pos:]}")

    def ask(self, text: str, answer: str) -> str:
        """Send a line and wait for the prompt after `answer`; the text in between."""
        self.line(text)
        start = self._pos
        self.expect(answer)
        self.expect(r"you> ")
        return self.output[start:self._pos]

    def wait(self) -> int:
        """The exit status, reading what is left meanwhile (bounded)."""
        deadline = time.monotonic() + EXIT_TIMEOUT
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        while self._read(0):
            if not select.select([self.master], [], [], 0)[0]:
                break
        return self.proc.wait(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(EXIT_TIMEOUT)
        os.close(self.master)


@pytest.fixture
def chat():
    """`chat(*args)` starts `agentcast chat`; every one started is killed at teardown."""
    started: list[Chat] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Chat:
        c = Chat(*args, env=env)
        started.append(c)
        return c

    yield start
    for c in started:
        c.close()


@pytest.fixture
def server(serve, tmp_path):
    config = tmp_path / "agentcast.toml"
    config.write_text(CONFIG)
    return serve(tmp_path / "agentcast.db", "--config", str(config))


@pytest.mark.process
def test_a_whole_session_in_a_terminal(server, chat):
    c = chat("--url", server.url, "--user", "1")
    c.expect(r"Connected to .* as user 1, talking to my_agent\. /help lists the commands\.\nyou> ")

    c.line("My favourite colour is turquoise.")
    c.expect(r"my_agent> You said: My favourite colour is turquoise\.\n\(I remember 0 earlier messages of our conversation\.\)\nyou> ")

    out = c.ask("/search turquoise", r"results for .*conversation")
    assert "2 results for 'turquoise' in my_agent's memory of you:" in out
    assert "1. [short_term] user: My favourite colour is turquoise." in out

    c.ask("/clear", r"Short-term memory of my_agent cleared")
    assert "[long_term] user: My favourite colour is turquoise." in c.ask("/search turquoise", "results for")
    c.ask("/clear-all", r"All memory of my_agent cleared: 2 messages forgotten\.")
    c.ask("/search turquoise", r"No results for 'turquoise' in my_agent's memory of you\.")

    c.ask("/agent ghost", r"\[error\] unknown_agent: No agent with ID 'ghost' exists")
    c.ask("/agent assistant", r"Now talking to assistant\.")
    c.ask("the secret word is marmalade", r"assistant> You said: the secret word is marmalade")

    c.ask("/user other", r"You are now user other\.")  # another user: nothing of user 1
    c.ask("/search marmalade", r"No results for 'marmalade' in assistant's memory of you\.")
    c.ask("hello from other", r"remember 0 earlier messages")
    c.ask("/user 1", r"You are now user 1\.")
    assert "user: the secret word is marmalade" in c.ask("/search marmalade", r"1 result|2 results")

    c.ask("/help", r"/clear-all +forget everything")
    c.ask("/bogus", r"Unknown command: /bogus \(/help lists the commands\)")
    c.ask("/search", r"Usage: /search QUERY")
    c.ask("//not a command", r"assistant> You said: /not a command")
    c.line("/quit")
    assert c.wait() == 0
    assert "Traceback" not in c.output


@pytest.mark.process
def test_answers_stream_as_they_arrive(server, chat):
    c = chat("--url", server.url, "--agent", "slow")
    c.expect(r"talking to slow\..*you> ")
    c.line("stream this")
    c.expect(r"slow> You said: stream")
    # the first half is on the screen while the second is still being written (0.8 s later)
    assert "conversation.)" not in c.output
    c.expect(r"\(I remember 0 earlier messages of our conversation\.\)\nyou> ")


@pytest.mark.process
@pytest.mark.parametrize("key", ["\x04", "\x03"], ids=["ctrl-d", "ctrl-c"])
def test_ctrl_d_and_ctrl_c_leave_cleanly(server, chat, key):
    c = chat("--url", server.url)
    c.expect(r"you> ")
    c.ask("hello", r"You said: hello")
    c.send(key)
    assert c.wait() == 0
    assert "Traceback" not in c.output and "KeyboardInterrupt" not in c.output


@pytest.mark.process
def test_ctrl_c_while_an_answer_streams_cancels_it_and_at_the_prompt_leaves(server, chat):
    c = chat("--url", server.url, "--agent", "slow")
    c.expect(r"you> ")
    c.line("take your time")
    c.expect(r"slow> You said")
    c.send("\x03")  # the first half is on the screen, the second 0.8 s away: cancelled before it
    c.expect(r"\(cancelled\)(\x1b\[0m)?\nyou> ")
    assert "conversation.)" not in c.output
    # the cancelled turn's message is remembered, its partial answer is not an answer
    c.ask("still here?", r"You said: still here\?\n\(I remember 1 earlier message of our conversation\.\)")
    c.send("\x03")
    assert c.wait() == 0
    assert "Traceback" not in c.output


@pytest.mark.process
def test_piped_input_is_read_to_the_end(server):
    script = "hello pipe\n/search pipe\n/agent assistant\n/user 9\nsecond line\n"
    result = subprocess.run(
        [*CLI, "chat", "--url", server.url, "--user", "8"], input=script, capture_output=True, text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "you> " not in out  # no prompts when stdin is not a terminal
    assert "my_agent> You said: hello pipe\n" in out
    assert "1. [short_term] user: hello pipe" in out
    assert "Now talking to assistant.\nYou are now user 9.\nassistant> You said: second line\n" in out
    assert result.stderr == ""


@pytest.mark.process
def test_the_server_going_away_and_coming_back(serve, tmp_path, chat):
    db = tmp_path / "agentcast.db"
    first = serve(db)
    c = chat("--url", first.url, "--user", "5")
    c.expect(r"you> ")
    c.ask("remember the lighthouse", r"remember 0 earlier messages")
    assert first.stop() == 0  # gracefully: the chat's connection is closed with 1001
    c.expect(r"\[connection lost: .*1001.*; reconnecting in [0-9.]+ s \(attempt 1\)\]")
    second = serve(db, "--port", str(first.port))  # the same address again
    c.expect(r"\[reconnected\]")
    c.ask("and now?", r"You said: and now\?\n\(I remember 2 earlier messages of our conversation\.\)")
    c.line("/quit")
    assert c.wait() == 0
    second.stop()


@pytest.mark.process
def test_a_bad_address_or_agent_is_one_clear_line(server, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    for args, expected in (
        (["--url", f"ws://127.0.0.1:{closed}/ws"],
         f"cannot connect to ws://127.0.0.1:{closed}/ws: connection refused: nothing listens there"),
        (["--url", server.url, "--agent", "ghost"], "No agent with ID 'ghost' exists"),
        (["--url", server.url.replace("/ws", "/nope")], "HTTP 404"),
        (["--url", server.url, "--token-env", "AGENTCAST_NO_SUCH_VARIABLE"], "AGENTCAST_NO_SUCH_VARIABLE is not set"),
    ):
        result = subprocess.run(
            [*CLI, "chat", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DEADLINE,
            env={k: v for k, v in os.environ.items() if k != "AGENTCAST_NO_SUCH_VARIABLE"},
        )
        assert result.returncode in (1, 2), result
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("agentcast: error: ") and expected in lines[0], result.stderr


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("pseudo-terminal tests run on Linux")


@pytest.mark.process
def test_the_documented_python_client_example_runs(server, tmp_path):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "clients.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", doc, re.S)
    script = tmp_path / "example.py"
    script.write_text(example.replace("ws://127.0.0.1:5050/ws", server.url))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("my_agent: (no description)\nassistant: (no description)\nslow: (no description)\n"), out
    assert "You said: My favourite colour is turquoise." in out and "(answer committed as event 2)" in out
    assert "You said: What did I just say?\n(I remember 2 earlier messages" in out and "(event 4)" in out
    assert "user      'My favourite colour is turquoise.'" in out
    assert "forgot 4 messages" in out
    assert "error unknown_agent: No agent with ID 'no_such_agent' exists" in out


LLM_CONFIG = """
[agents.gpt]
description = "A model behind a fake OpenAI server"
brain = {{ kind = "openai", model = "fake-model", base_url = "{base_url}", retries = 0, tools = ["remember"] }}

[agents.my_agent]
brain = "echo"
description = "The echo agent"
"""


@pytest.mark.process
def test_a_model_in_the_terminal_tool_calls_usage_cancel_and_agents(serve, tmp_path, chat):
    replies = (
        tool_calls(("call_1", "remember", {"fact": "Alice drinks green tea"})),
        text("Noted, ", "Alice.", usage=(30, 5)),
        text("Once upon", " a time", stall_after=1),
        text("Yes."),
    )
    with fake_openai_in_thread(*replies) as fake:
        config = tmp_path / "agentcast.toml"
        config.write_text(LLM_CONFIG.format(base_url=fake.base_url))
        server = serve(tmp_path / "agentcast.db", "--config", str(config))
        c = chat("--url", server.url, "--agent", "gpt", "--user", "alice")
        c.expect(r"talking to gpt\..*you> ")

        out = c.ask("I drink green tea", r"\[tokens: 30 prompt, 5 completion\]")
        assert re.search(r'\ngpt> (\x1b\[2m)?\[tool remember \{"fact": "Alice drinks green tea"\}\]', out), out
        assert re.search(r'\[result \{"remembered": "Alice drinks green tea", "seq": \d+\}\]', out), out
        assert re.search(r"\ngpt> Noted, Alice\.\n(\x1b\[2m)?\[tokens", out), out

        c.line("Tell me a long story")
        c.expect(r"gpt> Once upon")
        fake.wait("stalled")
        c.send("\x03")
        c.expect(r"\(cancelled\)(\x1b\[0m)?\nyou> ")
        fake.wait("disconnected")  # the model's HTTP stream was closed

        out = c.ask("/agents", r"my_agent +The echo agent")
        assert "2 agents (* the one you talk to):\n  * gpt       A model behind a fake OpenAI server\n" \
               "    my_agent  The echo agent\n" in out, out
        c.ask("Still there?", r"gpt> Yes\.\n")  # the session goes on after the cancel
        c.line("/quit")
        assert c.wait() == 0
    assert "Traceback" not in c.output


# -- line editing, control characters, clear errors ------------------------------------------------------


def logged_messages(db: Path) -> list[str]:
    """The user messages in the log, as `agentcast replay events` prints them (next to the running server)."""
    result = subprocess.run([*CLI, "replay", "events", "--db", str(db)], capture_output=True, text=True,
                            timeout=DEADLINE)
    assert result.returncode == 0, result.stderr
    return [e["content"] for e in map(json.loads, result.stdout.splitlines()) if e["type"] == "user_message"]


LEFT, UP = "\x1b[D", "\x1b[A"


@pytest.mark.process
def test_arrow_keys_edit_the_line_and_recall_history_in_a_terminal(server, chat, tmp_path):
    c = chat("--url", server.url, "--user", "1")
    c.expect(r"you> ")
    c.send("helo" + LEFT)  # the cursor goes back before the o ...
    c.send("l\r")  # ... where the l is put: "hello"
    c.expect(r"my_agent> You said: hello\n\(I remember 0 earlier messages of our conversation\.\)\nyou> ")
    c.send(UP + "\r")  # the line before, again
    c.expect(r"my_agent> You said: hello\n\(I remember 2 earlier messages of our conversation\.\)\nyou> ")
    c.send("/hel\t\r")  # tab completes a /command
    c.expect(r"/clear-all +forget everything.*you> ")
    c.line("/quit")
    assert c.wait() == 0
    assert logged_messages(tmp_path / "agentcast.db") == ["hello", "hello"]
    assert "^[" not in c.output and LEFT not in c.output and UP not in c.output  # no key was echoed as text


#: What an agent might say to take over a terminal: retitle, clear the screen, recolour, ring, overwrite the
#: line, a C1 control sequence introducer; and a tab and a newline, which are kept.
HOSTILE = "\x1b]0;pwned\x07 \x1b[2J\x1b[31mred\x1b[0m\tTAB \x9b6n over\rwrite \x7f"
HOSTILE_SHOWN = "^[]0;pwned^G ^[[2J^[[31mred^[[0m\tTAB \\x9b6n over^Mwrite ^?"


@pytest.mark.process
def test_text_from_an_agent_is_printed_with_its_control_characters_visible(server):
    result = subprocess.run([*CLI, "chat", "--url", server.url, "--user", "4"], input=HOSTILE + "\n/search pwned\n",
                            capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert f"my_agent> You said: {HOSTILE_SHOWN}\n(I remember 0" in result.stdout, result.stdout
    assert f"[short_term] user: {HOSTILE_SHOWN}" in result.stdout  # search results too
    for raw in ("\x1b", "\x07", "\x9b", "\r", "\x7f"):
        assert raw not in result.stdout, repr(raw)


@pytest.mark.process
def test_what_arrives_at_the_prompt_is_printed_visible_in_a_terminal(server, chat):
    import asyncio

    from support.process import connect as ws_connect

    c = chat("--url", server.url, "--user", "6")
    c.expect(r"you> ")
    c.send("half typed")

    async def elsewhere() -> None:  # the same user on another device
        async with ws_connect(server.url) as other:
            await other.set_user(6)
            await other.chat(HOSTILE)

    asyncio.run(elsewhere())
    # printed above the prompt, which comes back with what was typed so far
    c.expect(r"\[my_agent, to you elsewhere\] You said: " + re.escape(HOSTILE_SHOWN) + r"\n\(I remember 0 "
             r"earlier messages of our conversation\.\)\nyou> half typed")
    c.send("\x15/quit\r")  # Ctrl-U clears the typed text
    assert c.wait() == 0
    assert "\x1b]0;" not in c.output and "\x1b[2J" not in c.output and "\x07" not in c.output


@pytest.mark.process
def test_a_url_that_is_not_the_websocket_endpoint_says_what_to_use(server):
    base = server.url.removesuffix("/ws")
    host_port = base.removeprefix("ws://")
    for url, status, expected in (
        (base, 1, f"no WebSocket endpoint at / (HTTP 404); add /ws: --url {base}/ws"),
        (base + "/", 1, f"add /ws: --url {base}/ws"),
        (base + "/chat", 1, f"no WebSocket endpoint at /chat (HTTP 404); agentcast's is /ws: --url {base}/ws"),
        (f"http://{host_port}/ws", 2, f"is not a WebSocket URL: use --url {base}/ws"),
        (host_port, 2, f"is not a WebSocket URL: use --url {base}/ws"),
    ):
        result = subprocess.run([*CLI, "chat", "--url", url], stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=DEADLINE)
        assert result.returncode == status, (url, result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("agentcast: error: ") and expected in lines[0], (url, lines)


@pytest.mark.process
def test_a_chat_without_a_token_on_a_server_with_auth_says_to_pass_token_env(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTCAST_TEST_CHAT_SECRET", "x" * 40)
    server = serve(tmp_path / "agentcast.db", "--auth-secret-env", "AGENTCAST_TEST_CHAT_SECRET")
    for args in ([], ["--user", "9"]):
        result = subprocess.run([*CLI, "chat", "--url", server.url, *args], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=DEADLINE)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("agentcast: error: this server has authentication on"), lines
        assert "--token-env NAME" in lines[0] and "`agentcast token --user ID`" in lines[0]
        assert "{" not in lines[0]  # no protocol text
    # Doing what it says works:
    token = subprocess.run([*CLI, "token", "--user", "9", "--auth-secret-env", "AGENTCAST_TEST_CHAT_SECRET"],
                           capture_output=True, text=True, timeout=DEADLINE, check=True).stdout.strip()
    result = subprocess.run([*CLI, "chat", "--url", server.url, "--token-env", "MY_TOKEN"], input="hi\n",
                            capture_output=True, text=True, timeout=DEADLINE, env={**os.environ, "MY_TOKEN": token})
    assert result.returncode == 0 and "my_agent> You said: hi\n" in result.stdout, result


def test_visible_keeps_text_and_shows_controls():
    from agentcast.transport.client._chat import visible

    assert visible("plain, ünïcode ✓\n\tindented") == "plain, ünïcode ✓\n\tindented"
    assert visible("a\r\nb") == "a\nb"
    assert visible("\x00\x1b\x7f\x85\x9f") == "^@^[^?\\x85\\x9f"
