"""Real agents' brains in the tests: a user of `support.server.llm_server`'s `openai` agent (`user`,
`chat` frames for `AGENT`), and the `openai` brain on its own against the fake OpenAI-compatible
server (`brain_for`, a `Turn` from `turn_for`, its items from `items_of`, `FakeMemory`)."""
from __future__ import annotations

from contextlib import asynccontextmanager

from agentcast.actors import OpenAIBrain, OpenAIBrainSettings, ToolContext, Toolbox, Turn
from agentcast.store import Hit, Memory

from .server import LLM_AGENT, connect

AGENT = LLM_AGENT


@asynccontextmanager
async def user(server, user_id="alice", subscribe=False):
    async with connect(server.port) as client:
        await client.request({"type": "set_user", "user_id": user_id}, "user_set")
        if subscribe:
            await client.request({"type": "subscribe", "agent_id": AGENT}, "subscribed")
        yield client


def chat(message, request_id=None, **extra):
    frame = {"type": "chat", "agent_id": AGENT, "message": message, **extra}
    if request_id is not None:
        frame["request_id"] = request_id
    return frame


class FakeMemory:
    """`MemoryAccess` for brain tests: remembers facts in a list, finds them by word."""

    def __init__(self):
        self.facts: list[str] = []

    async def search(self, query, limit):
        words = set(query.lower().split())
        found = [f for f in self.facts if words & set(f.lower().split())]
        return [Hit(i + 1, "fact", f, "2026-01-01T00:00:00.000Z", 1.0) for i, f in enumerate(found[:limit])]

    async def remember(self, fact):
        self.facts.append(fact)
        return len(self.facts)


def turn_for(brain, message="Hi there", memory=None, recalled=(), memory_access=None):
    memory = memory or Memory("a", "u")
    toolbox = Toolbox(brain.tools, ToolContext("a", "u", memory_access or FakeMemory()))
    return Turn("a", "u", message, memory, recalled, toolbox)


async def items_of(brain, turn):
    return [item async for item in brain.reply(turn)]


def brain_for(fake, **options):
    options.setdefault("retry_backoff", 0.5)
    options.setdefault("base_url", fake.base_url)
    return OpenAIBrain(OpenAIBrainSettings(model="fake-model", **options))
