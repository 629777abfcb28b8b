"""Crash test (issue 3): the real `agentcast serve`, under concurrent chats, is killed with SIGKILL at random moments
and restarted on the same log; every turn a client saw answered is logged once and whole, and the log verifies."""
from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from websockets.exceptions import WebSocketException

from agentcast.store import EventLog, verify
from support import scaled
from support.process import cli, connect, write_config

#: Every test here runs a real process (see support/process.py).
pytestmark = pytest.mark.process

#: Kill-and-restart rounds; a last, clean round then retries what is left and stops the server gracefully.
ROUNDS = 4
#: A round's kill comes after this many agent_done frames (drawn per round), plus a random 0-50 ms.
KILL_AFTER_DONE = (10, 120)
KILL_DELAY = (0.0, 0.05)
#: New chats per connection in the last, clean round.
FINAL_CHATS = 2
#: Bound on a round's load (it normally takes well under a second).
ROUND_TIMEOUT = scaled(20.0)
#: Set to replay a failing run's random choices (the kill moments).
SEED_VARIABLE = "AGENTCAST_CRASH_SEED"

#: my_agent answers at once; assistant streams its answer in 4 chunks 2 ms apart, so that kills also land mid-stream.
AGENTS = """
[agents.my_agent]
brain = "echo"

[agents.assistant]
brain = { kind = "echo", delay = 0.002, chunks = 4 }
"""


@dataclass(frozen=True)
class Slot:
    """One client connection of the load, reopened each round: its user, its agent, what it does."""

    user: int | str | None  # what set_user sends; None: the connection stays its own private user
    agent: str
    subscribe: bool = False  # also hears the turns of the user's other connections to the agent
    commands: bool = False  # its chats carry command_ids, and it retries the unanswered ones after a restart


SLOTS = (
    Slot("alice", "my_agent", commands=True),
    Slot("alice", "my_agent", subscribe=True),
    Slot("alice", "assistant", commands=True),
    Slot(42, "my_agent", commands=True),
    Slot("42", "my_agent", subscribe=True),  # the same user as 42
    Slot("bob", "my_agent"),
    Slot("bob", "assistant", commands=True),
    Slot("carol", "assistant", commands=True),
    Slot("carol", "assistant", subscribe=True),
    Slot("dave", "my_agent", commands=True),
    Slot("erin", "assistant"),
    Slot(None, "my_agent"),
)

#: What a connection sees when the server dies under it (or before it answers).
DEATH = (OSError, EOFError, WebSocketException)  # TimeoutError is an OSError


@dataclass
class Chat:
    """One chat message a client sent (once, or again as retries), and what clients saw of its turn."""

    text: str
    slot: int
    agent: str
    user: str  # as the log has it (text; a private user's client_id)
    command_id: str | None
    rids: list[str] = field(default_factory=list)  # one request_id per attempt
    seq: int | None = None  # from a response frame
    message: str | None = None
    done: bool = False  # some client saw its agent_done (after its response)


class Load:
    """The chats of every round and the problems found while running them."""

    def __init__(self) -> None:
        self.chats: list[Chat] = []
        self.by_rid: dict[str, Chat] = {}
        self.by_text: dict[str, Chat] = {}
        self.problems: list[str] = []
        self.round = 0
        self.final = False
        self.kill_sent = False
        self.round_done = 0
        self.threshold = 0
        self.reached: asyncio.Event | None = None
        self.retries = 0
        self.retried_done = 0

    def new_chat(self, slot: int, user: str, n: int) -> Chat:
        spec = SLOTS[slot]
        text = f"round {self.round} conn {slot} chat {n}: remember me"
        cid = f"cmd-r{self.round}-c{slot}-n{n}" if spec.commands else None
        chat = Chat(text, slot, spec.agent, user, cid)
        self.chats.append(chat)
        self.by_text[text] = chat
        return chat

    def new_rid(self, chat: Chat) -> str:
        rid = f"r{self.round}-c{chat.slot}-{len(self.by_rid)}"
        chat.rids.append(rid)
        self.by_rid[rid] = chat
        return rid

    def retries_for(self, slot: int) -> list[Chat]:
        """A slot's command chats nobody saw answered, and its latest answered one (to be answered from the log)."""
        mine = [c for c in self.chats if c.slot == slot and c.command_id is not None]
        pending = [c for c in mine if not c.done]
        answered = [c for c in mine if c.done]
        return pending + answered[-1:]

    def observe(self, frame: dict, where: str) -> None:
        """Record what `frame` says about its turn (whichever connection it came on)."""
        rid = frame.get("request_id")
        kind = frame.get("type")
        if kind not in ("agent_thinking", "response_chunk", "response", "agent_done", "error"):
            return
        chat = self.by_rid.get(rid)
        if chat is None:
            self.problems.append(f"{where}: a {kind} frame for an unknown request_id: {frame}")
            return
        if kind == "error":
            self.problems.append(f"{where}: error for {chat.text!r}: {frame}")
        elif kind == "response":
            if frame.get("agent_id") != chat.agent or not frame["message"].startswith(f"You said: {chat.text}\n"):
                self.problems.append(f"{where}: a response that is not the answer to {chat.text!r}: {frame}")
            if chat.seq is None:
                chat.seq, chat.message = frame["seq"], frame["message"]
            elif (chat.seq, chat.message) != (frame["seq"], frame["message"]):
                self.problems.append(
                    f"{where}: {chat.text!r} answered twice differently: seq {chat.seq} {chat.message!r}, "
                    f"then seq {frame['seq']} {frame['message']!r}"
                )
        elif kind == "agent_done":
            if chat.seq is None:
                self.problems.append(f"{where}: agent_done before any response for {chat.text!r}")
            chat.done = True
            self.round_done += 1
            if self.reached is not None and self.round_done >= self.threshold:
                self.reached.set()


async def _turn(c, load: Load, chat: Chat, where: str) -> None:
    """Send one attempt of `chat` and read (observing every frame) until its agent_done."""
    rid = load.new_rid(chat)
    frame = {"type": "chat", "agent_id": chat.agent, "message": chat.text, "request_id": rid}
    if chat.command_id is not None:
        frame["command_id"] = chat.command_id
    await c.send(frame)
    seen: list[str] = []
    chunks: list[str] = []
    while True:
        got = await c.recv()
        load.observe(got, where)
        if got.get("request_id") != rid:
            continue  # another connection's turn (a subscription), already observed
        seen.append(got["type"])
        if got["type"] == "response_chunk":
            chunks.append(got["delta"])
        elif got["type"] == "response" and "".join(chunks) != got["message"]:
            load.problems.append(f"{where}: chunks {chunks!r} do not add up to the response {got['message']!r}")
        elif got["type"] == "agent_done":
            if seen[0] != "agent_thinking" or seen.count("response") != 1 or seen[-2:] != ["response", "agent_done"]:
                load.problems.append(f"{where}: unexpected frames for {chat.text!r}: {seen}")
            return


async def _connection(url: str, load: Load, slot: int) -> None:
    """One client: connect, set the user, maybe subscribe, retry, then chat one message after another.

    Ends when the server dies under it (expected once the kill is sent), or after FINAL_CHATS in the last round.
    """
    spec = SLOTS[slot]
    where = f"round {load.round} conn {slot}"
    try:
        async with connect(url) as c:
            user = c.hello["client_id"] if spec.user is None else str(spec.user)
            if spec.user is not None:
                await c.set_user(spec.user)
            if spec.subscribe:
                await c.request({"type": "subscribe", "agent_id": spec.agent}, "subscribed")
            for chat in load.retries_for(slot):
                load.retries += 1
                load.retried_done += chat.done
                await _turn(c, load, chat, f"{where} retry")
            n = 0
            while not (load.final and n == FINAL_CHATS):
                await _turn(c, load, load.new_chat(slot, user, n), where)
                n += 1
    except DEATH as exc:
        if not load.kill_sent:
            load.problems.append(f"{where}: the connection failed while the server was up: {exc!r}")
    except Exception as exc:  # an assertion of the test_cli client helpers; reported, not raised, so the round ends
        load.problems.append(f"{where}: {exc!r}")


async def _round(server, load: Load, rng: random.Random) -> None:
    """Run every slot's connection against `server`; unless this is the last round, SIGKILL it mid-load."""
    load.kill_sent = False
    load.round_done = 0
    load.reached = asyncio.Event()
    load.threshold = rng.randint(*KILL_AFTER_DONE)
    delay = rng.uniform(*KILL_DELAY)
    everyone = asyncio.gather(*(_connection(server.url, load, slot) for slot in range(len(SLOTS))))
    if load.final:
        await asyncio.wait_for(everyone, ROUND_TIMEOUT)
        return
    reached = asyncio.ensure_future(load.reached.wait())
    try:
        await asyncio.wait({reached, everyone}, timeout=ROUND_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not reached.done():
            load.problems.append(f"round {load.round}: {load.threshold} agent_done frames never came")
        else:
            await asyncio.sleep(delay)
    finally:
        reached.cancel()
        load.kill_sent = True
        server.signal(signal.SIGKILL)
    await asyncio.wait_for(everyone, ROUND_TIMEOUT)  # every connection ends once the server is gone


def _expected_answer(text: str, earlier: int) -> str:
    """The echo brain's answer to `text` from a memory of `earlier` messages (see actors/_brain.py)."""
    return f"You said: {text}\n(I remember {earlier} earlier message{'' if earlier == 1 else 's'} of our conversation.)"


def _check_log(db: Path, load: Load, *, final: bool) -> dict[str, int]:
    """Check the log (the server stopped) against what the clients saw; problems go to `load.problems`."""
    problems = load.problems
    with EventLog.open(db, readonly=True) as log:
        with log.snapshot():
            events = list(log.read())
        report = verify(log)  # in a read transaction of its own
    if not report.ok:
        problems.append(f"store.verify: {[(c.name, c.summary, c.problems[:5]) for c in report.checks if not c.ok]}")
    # The stdlib's SQLite, read-only, on the log as the server left it (after a kill: with its WAL, not checkpointed).
    conn = sqlite3.connect("file:" + quote(str(db.resolve())) + "?mode=ro", uri=True)
    try:
        integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    finally:
        conn.close()
    if integrity != ["ok"]:
        problems.append(f"PRAGMA integrity_check: {integrity[:10]}")
    if last != len(events):
        problems.append(f"the stdlib's SQLite sees last seq {last}, EventLog {len(events)} events")

    seqs = [rec.seq for rec in events]
    if seqs != list(range(1, len(seqs) + 1)):
        problems.append(f"seqs are not 1..{len(seqs)} without gaps: {seqs[:50]}...")

    # The log must be whole turns: each user_message directly followed by its agent_message.
    turns: dict[str, list[tuple]] = defaultdict(list)
    stream_messages: Counter = Counter()
    i = 0
    while i < len(events):
        said = events[i].event
        if said.TYPE != "user_message":
            problems.append(f"seq {events[i].seq}: a {said.TYPE} that does not follow its user_message: {said}")
            i += 1
            continue
        answer = events[i + 1] if i + 1 < len(events) else None
        if (
            answer is None
            or answer.event.TYPE != "agent_message"
            or (answer.event.agent_id, answer.event.user) != (said.agent_id, said.user)
        ):
            problems.append(f"seq {events[i].seq}: a user_message without its agent_message at seq +1: {said}")
            i += 1
            continue
        stream = (said.agent_id, said.user)
        turns[said.content].append((events[i].seq, said, answer.seq, answer.event, stream_messages[stream]))
        stream_messages[stream] += 2
        i += 2

    for text, logged in turns.items():
        chat = load.by_text.get(text)
        if chat is None:
            problems.append(f"a logged user_message no client sent: {text!r}")
            continue
        if len(logged) != 1:
            problems.append(f"{text!r} is logged {len(logged)} times, at seqs {[t[0] for t in logged]}")
        seq, said, answer_seq, answer, earlier = logged[0]
        if (said.agent_id, said.user) != (chat.agent, chat.user):
            problems.append(f"{text!r} logged for {(said.agent_id, said.user)}, sent as {(chat.agent, chat.user)}")
        if said.command_id != chat.command_id:
            problems.append(f"{text!r} logged with command_id {said.command_id!r}, sent with {chat.command_id!r}")
        if said.request_id not in chat.rids or answer.request_id != said.request_id:
            problems.append(f"{text!r}: request_ids {said.request_id!r}/{answer.request_id!r}, sent {chat.rids}")
        if answer.content != _expected_answer(text, earlier):
            problems.append(f"seq {answer_seq}: {answer.content!r} is not the answer from {earlier} earlier messages")

    unanswered_committed = 0
    for chat in load.chats:
        logged = turns.get(chat.text, [])
        if chat.done or chat.seq is not None:  # a response is only sent after the turn's commit
            if not logged:
                problems.append(f"{chat.text!r} was answered (seq {chat.seq}, done={chat.done}) but is not in the log")
            elif (logged[0][2], logged[0][3].content) != (chat.seq, chat.message):
                problems.append(
                    f"{chat.text!r}: a client saw seq {chat.seq} {chat.message!r}, "
                    f"the log has seq {logged[0][2]} {logged[0][3].content!r}"
                )
        elif logged:
            unanswered_committed += 1
        if final and chat.command_id is not None and not chat.done:
            problems.append(f"{chat.text!r} ({chat.command_id}) was retried but never answered")
    return {"events": len(events), "unanswered_but_committed": unanswered_committed}


def test_sigkill_under_concurrent_chats_loses_and_duplicates_no_turn(tmp_path, serve):
    seed = int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(2**32))
    print(f"crash test seed: {seed} (rerun with {SEED_VARIABLE}={seed})")
    rng = random.Random(seed)
    db = tmp_path / "agentcast.db"
    config = write_config(tmp_path / "agents.toml", AGENTS)
    load = Load()

    def fail_if_problems(when: str) -> None:
        if load.problems:
            shown = "\n  ".join(load.problems[:25])
            more = f"\n  ... and {len(load.problems) - 25} more" if len(load.problems) > 25 else ""
            raise AssertionError(f"seed {seed}, {when}: {len(load.problems)} problems:\n  {shown}{more}")

    for number in range(1, ROUNDS + 2):
        load.round, load.final = number, number == ROUNDS + 1
        server = serve(db, "--config", config)
        asyncio.run(_round(server, load, rng))
        code, expected = (server.stop(), 0) if load.final else (server.wait(), -signal.SIGKILL)
        if code != expected or "Traceback" in server.stderr:
            tail = server.stderr[-4000:]
            load.problems.insert(0, f"the server exited with {code} (expected {expected}); its log ends:\n{tail}")
        try:  # also when the load went wrong: what the log holds helps to tell why
            stats = _check_log(db, load, final=load.final)
        except Exception as exc:
            load.problems.append(f"the log could not be checked: {exc!r}")
        fail_if_problems(f"round {number} (after {'the graceful stop' if load.final else 'the kill'})")
        if number >= ROUNDS:  # store.verify (in _check_log) has checked every crashed log; the command, the last two
            result = cli("replay", "verify", "--db", str(db), cwd=tmp_path)
            assert result.returncode == 0 and "verify: ok" in result.stdout, (
                f"seed {seed}, round {number}: replay verify failed:\n{result.stdout}{result.stderr}"
            )
        done = sum(c.done for c in load.chats)
        how = "graceful stop" if load.final else f"kill after {load.threshold} agent_done"
        print(f"round {number} ({how}): {len(load.chats)} chats sent, {done} answered, {stats['events']} events, "
              f"{stats['unanswered_but_committed']} committed but unanswered")

    assert sum(c.done for c in load.chats) >= ROUNDS * KILL_AFTER_DONE[0]
    assert load.retried_done > 0 and load.retries > load.retried_done, (load.retries, load.retried_done)
