#!/usr/bin/env python3
"""Chat turns through the actors alone (no transport): `Agents` with echo brains, the real `Journal`
and a SQLite log in a temporary directory; U users each send T chats one after the other.

Prints the turns, wall and CPU seconds, and CPU µs per turn. Made to be run under callgrind to count
the event loop's instructions per turn, A/B, with the difference of two turn counts cancelling the
start-up (imports, opening the log):

    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=/tmp/cg.%p \\
        python bench/agent_turns.py --users 50 --turns 40
    # the main thread's total ("summary:" of /tmp/cg.PID-01), for --turns 40 and --turns 80:
    # (I80 - I40) / (50 * 40) instructions per turn

    python bench/agent_turns.py [--users 50] [--turns 40] [--embedder none|free|local]

`--embedder` gives the agent semantic memory, as `[server] embedder` does: an `EmbeddingWorker` embeds every
message after its commit while the turns run. "free" makes its vectors with numpy (no model: what the
worker's reads, writes and the journal's per-commit call add to the event loop); "local" runs the local model
(the semantic extra) in its worker thread. The echo brain does not recall, so no turn waits for a vector; the
worker is left to finish after the turns, outside the timing.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout this script is in

from agentcast.actors import (  # noqa: E402
    Agents, AgentSpec, Audience, ChatCommand, EchoBrain, EmbeddingWorker, Journal, SemanticMemory, TurnDoneOutput)
from agentcast.store import EventLog  # noqa: E402

AT = "2026-01-01T00:00:00.000Z"


class FreeEmbedder:
    """Vectors without a model (rows of one random matrix, 384 dimensions, made once): the worker's own cost."""

    name = "free:384"
    dimensions = 384

    def __init__(self) -> None:
        import numpy as np

        self._vectors = np.random.default_rng(1).standard_normal((1024, self.dimensions)).astype(np.float32)

    async def embed(self, texts, *, urgent: bool = False):
        return self._vectors[: len(texts)]


def make_embedder(kind: str):
    if kind == "free":
        return FreeEmbedder()
    if kind == "local":
        from agentcast.actors import LocalEmbedder

        return LocalEmbedder()
    return None


class Outbox:
    """Counts a user's finished turns and wakes the user at each."""

    def __init__(self) -> None:
        self.done = trio.Event()

    def deliver(self, output) -> None:
        if type(output) is TurnDoneOutput:
            self.done.set()


async def user(agents: Agents, name: str, turns: int) -> None:
    agent = agents["my_agent"]
    outbox = Outbox()
    for i in range(turns):
        outbox.done = trio.Event()
        agent.submit(ChatCommand(name, f"message {i} from {name}: hello there", AT, outbox))
        await outbox.done.wait()


async def run(args, db: Path) -> dict:
    log = EventLog.open(db)
    try:
        journal = Journal(log, lambda: EventLog.open(db, readonly=True))
        embedder = make_embedder(args.embedder)
        worker = None if embedder is None else EmbeddingWorker(embedder, ["my_agent"], journal)
        semantic = None if worker is None else {"my_agent": SemanticMemory(embedder, worker)}
        agents = Agents([AgentSpec("my_agent", EchoBrain())], journal, Audience(), clock=lambda: AT, semantic=semantic)
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            if worker is not None:
                await nursery.start(worker.run)
            await nursery.start(agents.run)
            wall, cpu = time.perf_counter(), time.process_time()
            async with trio.open_nursery() as users:
                for u in range(args.users):
                    users.start_soon(user, agents, f"user{u}", args.turns)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if worker is not None:
                await worker.caught_up()
            nursery.cancel_scope.cancel()
    finally:
        log.close()
    turns = args.users * args.turns
    return {"turns": turns, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "cpu_us_per_turn": round(cpu / turns * 1e6, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--turns", type=int, default=40, help="turns per user")
    parser.add_argument("--embedder", choices=("none", "free", "local"), default="none",
                        help="the agent's embedder: none (lexical memory), free (vectors without a model), local")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentcast-bench-") as tmp:
        out = trio.run(run, args, Path(tmp) / "turns.db")
    print(json.dumps({"benchmark": "agent_turns", "users": args.users, "embedder": args.embedder, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
